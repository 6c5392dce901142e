//! The metadata journal: two header slots and a ring of transactions.
//!
//! A transaction is a run of whole sectors at a 4 KiB-aligned lsn in the
//! ring: a 32-byte header (magic, crc32c, lsn, length, record count, fs id)
//! then the records. It is committed by writing a journal header whose
//! `end` lies past it; headers alternate between two slots by `seq`, so a
//! torn header write leaves the previous one intact. Readers trust only
//! `[start, end)` of the newest valid header. A small transaction is also
//! copied into its header (inline commit), so the ring and header writes
//! can be issued together; readers then take the newest transaction from
//! the header and only older ones from the ring.

use crate::device::BlockDevice;
use crate::encoding::{le32, le64, put32, put64, Dec, Enc};
use crate::error::FsError;
use crate::record::{Lsn, Op};
use crate::superblock::{Superblock, HEADER_OFF, RING_OFF, SECTOR};

const JH_MAGIC: &[u8; 8] = b"PIKAFSJH";
const TX_MAGIC: u32 = u32::from_le_bytes(*b"PJTX");
pub(crate) const TX_HDR: usize = 32;

/// Where a header keeps its inline copy of the newest transaction.
const INLINE_OFF: usize = 64;
/// Largest transaction frame (unpadded) a header can carry inline.
pub(crate) const INLINE_MAX: usize = 4092 - INLINE_OFF;

/// The commit point of the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JournalHeader {
    /// Bumped on every header write; selects the slot (`seq % 2`).
    pub seq: u64,
    /// Lsn of the checkpoint in `ckpt_slot`; replay starts here.
    pub start: Lsn,
    /// Committed end: every transaction below it is durable.
    pub end: Lsn,
    pub ckpt_slot: u32,
    /// Length of the header's inline copy of the transaction that ends at
    /// `end` (0: none). With it, the header and the ring write of that
    /// transaction are issued together: the header alone makes it durable,
    /// and the ring copy is complete before the next commit starts.
    pub inline_len: u32,
}

impl JournalHeader {
    /// Where the ring part of the journal ends (the inline transaction,
    /// if any, starts).
    pub(crate) fn ring_end(&self) -> Lsn {
        if self.inline_len == 0 {
            self.end
        } else {
            self.end - txn_len(self.inline_len as usize - TX_HDR)
        }
    }

    pub(crate) fn encode(&self, sb: &Superblock, inline: &[u8]) -> Vec<u8> {
        assert_eq!(inline.len(), self.inline_len as usize, "inline length");
        let mut b = vec![0u8; SECTOR as usize];
        b[0..8].copy_from_slice(JH_MAGIC);
        b[8..24].copy_from_slice(&sb.uuid);
        put64(&mut b, 24, self.seq);
        put64(&mut b, 32, self.start);
        put64(&mut b, 40, self.end);
        put32(&mut b, 48, self.ckpt_slot);
        put32(&mut b, 52, self.inline_len);
        b[INLINE_OFF..INLINE_OFF + inline.len()].copy_from_slice(inline);
        let crc = crc32c::crc32c(&b[..4092]);
        put32(&mut b, 4092, crc);
        b
    }

    fn decode(b: &[u8], sb: &Superblock) -> Option<(JournalHeader, Vec<u8>)> {
        if &b[0..8] != JH_MAGIC
            || b[8..24] != sb.uuid
            || crc32c::crc32c(&b[..4092]) != le32(b, 4092)
        {
            return None;
        }
        let h = JournalHeader {
            seq: le64(b, 24),
            start: le64(b, 32),
            end: le64(b, 40),
            ckpt_slot: le32(b, 48),
            inline_len: le32(b, 52),
        };
        let il = h.inline_len as usize;
        let sane = h.start <= h.end
            && h.end - h.start <= sb.ring_size
            && h.ckpt_slot < 2
            && h.start.is_multiple_of(SECTOR)
            && (il == 0
                || ((TX_HDR..=INLINE_MAX).contains(&il)
                    && txn_len(il - TX_HDR) <= h.end - h.start));
        sane.then(|| (h, b[INLINE_OFF..INLINE_OFF + il].to_vec()))
    }
}

/// Reads both header slots and returns the newest valid one.
///
/// # Errors
/// [`FsError::Corrupt`] when neither slot is valid; device errors.
pub(crate) fn read_header(
    dev: &dyn BlockDevice,
    sb: &Superblock,
) -> Result<JournalHeader, FsError> {
    Ok(read_header_full(dev, sb)?.0)
}

/// [`read_header`] plus the header's inline transaction frame.
pub(crate) fn read_header_full(
    dev: &dyn BlockDevice,
    sb: &Superblock,
) -> Result<(JournalHeader, Vec<u8>), FsError> {
    let b = dev.read_at(HEADER_OFF, 2 * SECTOR as usize)?;
    let a = JournalHeader::decode(&b[..SECTOR as usize], sb);
    let c = JournalHeader::decode(&b[SECTOR as usize..], sb);
    match (a, c) {
        (Some(x), Some(y)) => Ok(if x.0.seq >= y.0.seq { x } else { y }),
        (Some(x), None) | (None, Some(x)) => Ok(x),
        (None, None) => Err(FsError::corrupt("both journal headers are invalid")),
    }
}

/// Writes `h` (with its inline transaction frame) into its slot: the one
/// atomic sector write that commits.
pub(crate) fn write_header(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    h: &JournalHeader,
    inline: &[u8],
) -> Result<(), FsError> {
    let (off, b) = header_write(sb, h, inline);
    dev.write_at(off, &b)?;
    Ok(())
}

/// The device write that commits `h`: its slot's offset and bytes.
pub(crate) fn header_write(sb: &Superblock, h: &JournalHeader, inline: &[u8]) -> (u64, Vec<u8>) {
    (HEADER_OFF + (h.seq % 2) * SECTOR, h.encode(sb, inline))
}

/// Checks the data guard of the header's inline transaction: every range
/// named by its `Op::DataCrc` records must hold the bytes it was written
/// with. A transaction whose data went out concurrently with its header
/// is trusted only then (see `crate::pending`).
///
/// # Errors
/// Device errors, or [`FsError::Corrupt`] when the inline frame does not
/// parse.
pub(crate) fn verify_guard(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    h: &JournalHeader,
    inline: &[u8],
) -> Result<bool, FsError> {
    if inline.is_empty() {
        return Ok(true);
    }
    let txns = parse_txns(sb, &pad_frame(inline), h.ring_end())?;
    for (_, ops) in &txns {
        for op in ops {
            if let Op::DataCrc { ranges } = op {
                for &(off, len, crc) in ranges {
                    if crc32c::crc32c(&dev.read_at(off, len as usize)?) != crc {
                        return Ok(false);
                    }
                }
            }
        }
    }
    Ok(true)
}

/// The newest header as far as it can be trusted, with its inline frame:
/// when the data guarded by the inline transaction is not (yet) all on
/// the device, the header without that transaction (`end` = its start).
/// Returns whether it was cut.
///
/// # Errors
/// As [`read_header_full`] and [`verify_guard`].
pub(crate) fn read_trusted_header(
    dev: &dyn BlockDevice,
    sb: &Superblock,
) -> Result<(JournalHeader, Vec<u8>, bool), FsError> {
    let (h, inline) = read_header_full(dev, sb)?;
    if verify_guard(dev, sb, &h, &inline)? {
        return Ok((h, inline, false));
    }
    let cut = JournalHeader {
        end: h.ring_end(),
        inline_len: 0,
        ..h
    };
    Ok((cut, Vec::new(), true))
}

/// The unpadded frame of an encoded transaction (what a header inlines).
pub(crate) fn txn_frame(txn: &[u8]) -> &[u8] {
    &txn[..TX_HDR + le32(txn, 16) as usize]
}

/// The inline frame padded to sectors, exactly as it sits in the ring.
pub(crate) fn pad_frame(frame: &[u8]) -> Vec<u8> {
    let mut padded = frame.to_vec();
    padded.resize(padded.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
    padded
}

/// Encodes a transaction of `ops` at `lsn`, padded to whole sectors.
pub(crate) fn encode_txn(sb: &Superblock, lsn: Lsn, ops: &[Op]) -> Vec<u8> {
    let mut e = Enc(vec![0u8; TX_HDR]);
    for op in ops {
        op.encode(&mut e);
    }
    let mut b = e.0;
    let len = b.len() - TX_HDR;
    put32(&mut b, 0, TX_MAGIC);
    put64(&mut b, 8, lsn);
    put32(&mut b, 16, len as u32);
    put32(&mut b, 20, ops.len() as u32);
    put64(&mut b, 24, sb.fs_id());
    let crc = crc32c::crc32c(&b[8..]);
    put32(&mut b, 4, crc);
    b.resize(b.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
    b
}

/// Size of a transaction on the ring.
pub(crate) fn txn_len(ops_bytes: usize) -> u64 {
    ((TX_HDR + ops_bytes) as u64).div_ceil(SECTOR) * SECTOR
}

/// Why a transaction in a ring image was not accepted.
#[derive(Debug)]
pub(crate) enum TxnError {
    /// Not the transaction expected at this lsn: never written, torn, or
    /// overwritten by a later lap of the ring.
    Mismatch { lsn: Lsn, why: String },
    /// The frame checks out but its records do not decode: corruption.
    Corrupt(FsError),
}

impl From<TxnError> for FsError {
    fn from(e: TxnError) -> FsError {
        match e {
            TxnError::Mismatch { lsn, why } => {
                FsError::corrupt(format!("committed journal transaction at lsn {lsn}: {why}"))
            }
            TxnError::Corrupt(e) => e,
        }
    }
}

/// Parses the transactions in `buf`, which holds the ring bytes of
/// `[start, start + buf.len())`. Returns each transaction's end lsn and
/// records.
pub(crate) fn parse_txns(
    sb: &Superblock,
    buf: &[u8],
    start: Lsn,
) -> Result<Vec<(Lsn, Vec<Op>)>, TxnError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < buf.len() {
        let lsn = start + at as u64;
        let mismatch = |why: String| TxnError::Mismatch { lsn, why };
        let rest = &buf[at..];
        if rest.len() < TX_HDR {
            return Err(mismatch("shorter than a transaction header".into()));
        }
        if le32(rest, 0) != TX_MAGIC {
            return Err(mismatch("bad magic".into()));
        }
        if le64(rest, 8) != lsn || le64(rest, 24) != sb.fs_id() {
            return Err(mismatch(format!(
                "holds lsn {} of fs {:#x}",
                le64(rest, 8),
                le64(rest, 24)
            )));
        }
        let len = le32(rest, 16) as usize;
        if TX_HDR + len > rest.len() {
            return Err(mismatch(format!(
                "length {len} runs past the committed end"
            )));
        }
        if crc32c::crc32c(&rest[8..TX_HDR + len]) != le32(rest, 4) {
            return Err(mismatch("crc mismatch".into()));
        }
        let nops = le32(rest, 20);
        let mut d = Dec::new(&rest[TX_HDR..TX_HDR + len], "journal transaction");
        let mut ops = Vec::with_capacity(nops.min(1 << 16) as usize);
        for _ in 0..nops {
            ops.push(Op::decode(&mut d).map_err(TxnError::Corrupt)?);
        }
        d.finish().map_err(TxnError::Corrupt)?;
        let total = txn_len(len) as usize;
        at += total;
        out.push((start + at as u64, ops));
    }
    Ok(out)
}

/// Writes `buf` at ring position `lsn`, wrapping at the ring's end.
pub(crate) fn write_ring(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    lsn: Lsn,
    buf: &[u8],
) -> Result<(), FsError> {
    for (off, piece) in ring_writes(sb, lsn, buf) {
        dev.write_at(off, piece)?;
    }
    Ok(())
}

/// The device writes that put `buf` at ring position `lsn` (two when it
/// wraps at the ring's end).
pub(crate) fn ring_writes<'a>(sb: &Superblock, lsn: Lsn, buf: &'a [u8]) -> Vec<(u64, &'a [u8])> {
    let pos = lsn % sb.ring_size;
    let first = (buf.len() as u64).min(sb.ring_size - pos) as usize;
    let mut out = vec![(RING_OFF + pos, &buf[..first])];
    if first < buf.len() {
        out.push((RING_OFF, &buf[first..]));
    }
    out
}

/// Reads ring bytes `[lsn, lsn + len)`, wrapping at the ring's end.
pub(crate) fn read_ring(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    lsn: Lsn,
    len: u64,
) -> Result<Vec<u8>, FsError> {
    let pos = lsn % sb.ring_size;
    let first = len.min(sb.ring_size - pos);
    let mut buf = dev.read_at(RING_OFF + pos, first as usize)?;
    if first < len {
        buf.extend_from_slice(&dev.read_at(RING_OFF, (len - first) as usize)?);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::CrashDevice;
    use crate::record::Kind;
    use crate::superblock::MkfsOptions;

    fn sb() -> Superblock {
        let opts = MkfsOptions {
            block_size: Some(65536),
            journal_size: Some(65536),
            checkpoint_size: Some(65536),
        };
        Superblock::layout(8 << 20, &opts, [3; 16], 0).unwrap()
    }

    fn op(i: u64) -> Op {
        Op::Create {
            parent: 1,
            name: format!("f{i}"),
            ino: i + 2,
            kind: Kind::File,
            mode: 0,
            uid: 0,
            gid: 0,
            rdev: 0,
            target: Vec::new(),
            time: i,
        }
    }

    #[test]
    fn txns_wrap_and_parse() {
        let sb = sb();
        let dev = CrashDevice::new(8 << 20);
        // Start near the ring's end so the second transaction wraps.
        let start = sb.ring_size * 3 - SECTOR;
        let t1 = encode_txn(&sb, start, &[op(1)]);
        let big: Vec<Op> = (0..300).map(op).collect();
        let t2 = encode_txn(&sb, start + t1.len() as u64, &big);
        assert!(t2.len() > SECTOR as usize);
        write_ring(&dev, &sb, start, &t1).unwrap();
        write_ring(&dev, &sb, start + t1.len() as u64, &t2).unwrap();
        let len = (t1.len() + t2.len()) as u64;
        let buf = read_ring(&dev, &sb, start, len).unwrap();
        let txns = parse_txns(&sb, &buf, start).unwrap();
        assert_eq!(txns.len(), 2);
        assert_eq!(txns[0], (start + SECTOR, vec![op(1)]));
        assert_eq!(txns[1].0, start + len);
        assert_eq!(txns[1].1, big);
        // The same bytes read as an earlier lap are refused: lsn mismatch.
        let lap = parse_txns(&sb, &buf, start - sb.ring_size);
        assert!(matches!(lap, Err(TxnError::Mismatch { .. })));
    }

    #[test]
    fn torn_txn_is_a_mismatch() {
        let sb = sb();
        let big: Vec<Op> = (0..300).map(op).collect();
        let mut t = encode_txn(&sb, 0, &big);
        // Tear: the second sector still holds older bytes.
        for b in &mut t[SECTOR as usize..2 * SECTOR as usize] {
            *b = 0xAA;
        }
        assert!(matches!(
            parse_txns(&sb, &t, 0),
            Err(TxnError::Mismatch { .. })
        ));
    }

    #[test]
    fn newest_valid_header_wins() {
        let sb = sb();
        let dev = CrashDevice::new(8 << 20);
        assert!(read_header(&dev, &sb).is_err());
        let h1 = JournalHeader {
            seq: 1,
            start: 0,
            end: 4096,
            ckpt_slot: 0,
            inline_len: 0,
        };
        // h2 carries its transaction inline.
        let t = encode_txn(&sb, 4096, &[op(7)]);
        let frame = txn_frame(&t);
        let h2 = JournalHeader {
            seq: 2,
            start: 0,
            end: 8192,
            ckpt_slot: 0,
            inline_len: frame.len() as u32,
        };
        write_header(&dev, &sb, &h1, &[]).unwrap();
        write_header(&dev, &sb, &h2, frame).unwrap();
        let (got, inline) = read_header_full(&dev, &sb).unwrap();
        assert_eq!(got, h2);
        assert_eq!(got.ring_end(), 4096);
        assert_eq!(pad_frame(&inline), t);
        assert_eq!(
            parse_txns(&sb, &pad_frame(&inline), got.ring_end()).unwrap(),
            vec![(8192, vec![op(7)])]
        );
        // A torn (garbled) newest slot falls back to the previous header.
        dev.write_at(HEADER_OFF, &[0x55; 100]).unwrap();
        assert_eq!(read_header(&dev, &sb).unwrap(), h1);
    }
}
