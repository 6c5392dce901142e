//! The metadata journal: two header slots and a ring of transactions.
//!
//! A transaction is a run of whole sectors at a 4 KiB-aligned lsn in the
//! ring: a 40-byte header (magic, crc32c, lsn, length, record count, fs id,
//! data length, data crc32c) then the records, padded to sectors, then
//! its *data area* (the bytes of its `Journaled` records, padded). It is
//! committed by writing a journal header whose
//! `end` lies past it; headers alternate between two slots by `seq`, so a
//! torn header write leaves the previous one intact. Readers trust only
//! `[start, end)` of the newest valid header. A small transaction is also
//! copied into its header (inline commit), so the ring and header writes
//! can be issued together; readers then take the newest transaction from
//! the header and only older ones from the ring; the inline transaction's
//! data area is only in the ring, so its crc guards the header (a header
//! whose inline transaction's data is torn is not trusted).

use crate::device::BlockDevice;
use crate::encoding::{le32, le64, put32, put64, Dec, Enc};
use crate::error::FsError;
use crate::record::{Lsn, Op};
use crate::superblock::{Superblock, HEADER_OFF, RING_OFF, SECTOR};

const JH_MAGIC: &[u8; 8] = b"PIKAFSJH";
const TX_MAGIC: u32 = u32::from_le_bytes(*b"PJTX");
pub(crate) const TX_HDR: usize = 40;

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
    /// Bytes in the data area of the inline transaction (unpadded; 0 when
    /// none or no inline transaction). The area follows the transaction's
    /// ring copy of its records.
    pub inline_data: u32,
}

impl JournalHeader {
    /// Where the ring part of the journal ends (the inline transaction,
    /// if any, starts).
    pub(crate) fn ring_end(&self) -> Lsn {
        if self.inline_len == 0 {
            self.end
        } else {
            self.end
                - txn_len(self.inline_len as usize - TX_HDR)
                - data_area_len(self.inline_data as usize)
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
        put32(&mut b, 56, self.inline_data);
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
            inline_data: le32(b, 56),
        };
        let il = h.inline_len as usize;
        let sane = h.start <= h.end
            && h.end - h.start <= sb.ring_size
            && h.ckpt_slot < 2
            && h.start.is_multiple_of(SECTOR)
            && (if il == 0 {
                h.inline_data == 0
            } else {
                (TX_HDR..=INLINE_MAX).contains(&il)
                    && le32(b, INLINE_OFF + 32) == h.inline_data
                    && txn_len(il - TX_HDR) + data_area_len(h.inline_data as usize)
                        <= h.end - h.start
            });
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

/// Parses the header's inline transaction, with its data area read from
/// the ring (right after where its ring copy of the records sits). The
/// outer error is a device error; the inner one says the transaction is
/// not whole: a `Mismatch` when its data area fails its crc (torn, or
/// not yet landed, or overwritten by a later lap).
///
/// # Errors
/// Device errors.
pub(crate) fn inline_txns(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    h: &JournalHeader,
    inline: &[u8],
) -> Result<Result<Vec<ParsedTxn>, TxnError>, FsError> {
    if inline.is_empty() {
        return Ok(Ok(Vec::new()));
    }
    let ring_end = h.ring_end();
    let mut buf = pad_frame(inline);
    if h.inline_data > 0 {
        let area = data_area_len(h.inline_data as usize);
        buf.extend_from_slice(&read_ring(dev, sb, ring_end + buf.len() as u64, area)?);
    }
    Ok(parse_txns(sb, &buf, ring_end))
}

/// Whether the header's inline transaction is trusted: [`verified_inline`]
/// found it whole.
#[cfg(test)]
pub(crate) fn verify_guard(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    h: &JournalHeader,
    inline: &[u8],
) -> Result<bool, FsError> {
    Ok(verified_inline(dev, sb, h, inline)?.is_some())
}

/// Checks the guards of the header's inline transaction and returns it
/// parsed when it is trusted (`None` when not): its data area in the
/// ring must match its crc (journaled data goes out with the header), and
/// every range named by its `Op::DataCrc` records must hold the bytes it
/// was written with (guarded data goes out with the header). A
/// transaction whose writes went out concurrently with its header is
/// trusted only then (see `crate::pending`).
///
/// # Errors
/// Device errors, or [`FsError::Corrupt`] when the inline frame does not
/// parse.
pub(crate) fn verified_inline(
    dev: &dyn BlockDevice,
    sb: &Superblock,
    h: &JournalHeader,
    inline: &[u8],
) -> Result<Option<Vec<ParsedTxn>>, FsError> {
    let txns = match inline_txns(dev, sb, h, inline)? {
        Ok(t) => t,
        Err(TxnError::Mismatch { .. }) => return Ok(None),
        Err(TxnError::Corrupt(e)) => return Err(e),
    };
    for (_, ops) in &txns {
        for op in ops {
            if let Op::DataCrc { ranges } = op {
                for &(off, len, crc) in ranges {
                    if crc32c::crc32c(&dev.read_at(off, len as usize)?) != crc {
                        return Ok(None);
                    }
                }
            }
        }
    }
    Ok(Some(txns))
}

/// The newest header as far as it can be trusted, with its inline frame:
/// when the data guarded by the inline transaction is not (yet) all on
/// the device, the header without that transaction (`end` = its start).
/// Returns whether it was cut.
///
/// # Errors
/// As [`read_header_full`] and [`verified_inline`].
pub(crate) fn read_trusted_header(
    dev: &dyn BlockDevice,
    sb: &Superblock,
) -> Result<(JournalHeader, Vec<u8>, bool), FsError> {
    let (h, inline, cut, _) = read_trusted_header_parsed(dev, sb)?;
    Ok((h, inline, cut))
}

/// [`read_trusted_header`] plus the parsed inline transaction (empty
/// when there is none).
///
/// # Errors
/// As [`read_trusted_header`].
pub(crate) fn read_trusted_header_parsed(
    dev: &dyn BlockDevice,
    sb: &Superblock,
) -> Result<(JournalHeader, Vec<u8>, bool, Vec<ParsedTxn>), FsError> {
    let (h, inline) = read_header_full(dev, sb)?;
    if let Some(tail) = verified_inline(dev, sb, &h, &inline)? {
        return Ok((h, inline, false, tail));
    }
    let cut = JournalHeader {
        end: h.ring_end(),
        inline_len: 0,
        inline_data: 0,
        ..h
    };
    Ok((cut, Vec::new(), true, Vec::new()))
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

/// Encodes a transaction of `ops` at `lsn` as it sits in the ring: the
/// frame padded to whole sectors, then the data area (the bytes of its
/// `Journaled` records in order, padded).
pub(crate) fn encode_txn(sb: &Superblock, lsn: Lsn, ops: &[Op]) -> Vec<u8> {
    let mut e = Enc(vec![0u8; TX_HDR]);
    let mut data_len = 0usize;
    let mut data_crc = 0u32;
    for op in ops {
        op.encode(&mut e);
        if let Op::Journaled { data, .. } = op {
            data_len += data.len();
            data_crc = crc32c::crc32c_append(data_crc, data);
        }
    }
    let mut b = e.0;
    let len = b.len() - TX_HDR;
    put32(&mut b, 0, TX_MAGIC);
    put64(&mut b, 8, lsn);
    put32(&mut b, 16, len as u32);
    put32(&mut b, 20, ops.len() as u32);
    put64(&mut b, 24, sb.fs_id());
    put32(&mut b, 32, data_len as u32);
    put32(&mut b, 36, data_crc);
    let crc = crc32c::crc32c(&b[8..]);
    put32(&mut b, 4, crc);
    b.resize(b.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
    if data_len > 0 {
        b.reserve(data_area_len(data_len) as usize);
        for op in ops {
            if let Op::Journaled { data, .. } = op {
                b.extend_from_slice(data);
            }
        }
        b.resize(b.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
    }
    b
}

/// Size of a transaction's records on the ring (its data area follows).
pub(crate) fn txn_len(ops_bytes: usize) -> u64 {
    ((TX_HDR + ops_bytes) as u64).div_ceil(SECTOR) * SECTOR
}

/// Size on the ring of a data area holding `bytes` journaled bytes.
pub(crate) fn data_area_len(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(SECTOR) * SECTOR
}

/// A parsed transaction: its end lsn and records (`Journaled` ones with
/// their bytes).
pub(crate) type ParsedTxn = (Lsn, Vec<Op>);

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
) -> Result<Vec<ParsedTxn>, TxnError> {
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
        let data_len = le32(rest, 32) as usize;
        let frame = txn_len(len) as usize;
        let total = frame as u64 + data_area_len(data_len);
        if total > rest.len() as u64 {
            return Err(mismatch(format!(
                "data area of {data_len} bytes runs past the committed end"
            )));
        }
        let area = &rest[frame..frame + data_len];
        if crc32c::crc32c(area) != le32(rest, 36) {
            return Err(mismatch("data area crc mismatch".into()));
        }
        let nops = le32(rest, 20);
        let mut d = Dec::new(&rest[TX_HDR..TX_HDR + len], "journal transaction");
        let mut ops = Vec::with_capacity(nops.min(1 << 16) as usize);
        let mut used = 0usize;
        for _ in 0..nops {
            let mut op = Op::decode(&mut d).map_err(TxnError::Corrupt)?;
            if let Op::Journaled { len, data, .. } = &mut op {
                let n = *len as usize;
                if used + n > data_len {
                    return Err(TxnError::Corrupt(FsError::corrupt(format!(
                        "journaled data at lsn {lsn} exceeds its data area"
                    ))));
                }
                *data = area[used..used + n].to_vec();
                used += n;
            }
            ops.push(op);
        }
        d.finish().map_err(TxnError::Corrupt)?;
        if used != data_len {
            return Err(TxnError::Corrupt(FsError::corrupt(format!(
                "transaction at lsn {lsn} has {data_len} data bytes, its records name {used}"
            ))));
        }
        let total = total as usize;
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
            inline_data: 0,
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
            inline_data: 0,
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

    /// A transaction with journaled data: the header inlines its records,
    /// the ring holds records and data; the header is trusted only when
    /// the data area is whole, and a ring read returns the bytes.
    #[test]
    fn journaled_data_rides_in_the_ring_and_guards_the_header() {
        let sb = sb();
        let dev = CrashDevice::new(8 << 20);
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let ops = vec![
            op(1),
            Op::Journaled {
                dev_off: 1 << 20,
                len: 5000,
                data: data.clone(),
            },
            Op::Journaled {
                dev_off: 7,
                len: 3,
                data: vec![9, 8, 7],
            },
        ];
        // Near the ring's end, so the data area wraps.
        let lsn = sb.ring_size * 2 - SECTOR;
        let t = encode_txn(&sb, lsn, &ops);
        assert_eq!(t.len() as u64, SECTOR + data_area_len(5003));
        let frame = txn_frame(&t);
        let h = JournalHeader {
            seq: 5,
            start: lsn,
            end: lsn + t.len() as u64,
            ckpt_slot: 0,
            inline_len: frame.len() as u32,
            inline_data: 5003,
        };
        assert_eq!(h.ring_end(), lsn);
        write_header(&dev, &sb, &h, frame).unwrap();
        // The header landed, the ring did not: not trusted.
        assert!(!verify_guard(&dev, &sb, &h, frame).unwrap());
        let (cut, inline, was_cut) = read_trusted_header(&dev, &sb).unwrap();
        assert!(was_cut && inline.is_empty() && cut.end == lsn && cut.inline_data == 0);
        // The records landed but the data is torn: still not trusted.
        write_ring(&dev, &sb, lsn, &t[..SECTOR as usize]).unwrap();
        assert!(!verify_guard(&dev, &sb, &h, frame).unwrap());
        write_ring(&dev, &sb, lsn, &t).unwrap();
        assert!(verify_guard(&dev, &sb, &h, frame).unwrap());
        let (got, inline, was_cut) = read_trusted_header(&dev, &sb).unwrap();
        assert!(!was_cut);
        assert_eq!(got, h);
        let want = vec![(h.end, ops.clone())];
        assert_eq!(
            inline_txns(&dev, &sb, &got, &inline).unwrap().unwrap(),
            want
        );
        // Read back from the ring (as after the next header), wrapping.
        let buf = read_ring(&dev, &sb, lsn, t.len() as u64).unwrap();
        assert_eq!(parse_txns(&sb, &buf, lsn).unwrap(), want);
        // A damaged data byte is a mismatch, never data.
        let mut bad = buf.clone();
        bad[SECTOR as usize + 10] ^= 1;
        assert!(matches!(
            parse_txns(&sb, &bad, lsn),
            Err(TxnError::Mismatch { .. })
        ));
    }
}
