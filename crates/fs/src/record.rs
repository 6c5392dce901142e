//! Journal records: the logical metadata operations a transaction carries.
//! Applying the same records to the same state gives the same state on
//! every host (the RW at commit time, the RW at recovery, every RO).

use crate::allocator::Run;
use crate::encoding::{Dec, Enc};
use crate::error::FsError;

/// Inode number; 1 is the root directory.
pub type Ino = u64;
/// Journal position in bytes since mkfs (monotonic; the ring offset is
/// `lsn % ring_size`).
pub type Lsn = u64;

/// Inode kind. Only files have data blocks; a symlink keeps its target
/// in the inode; FIFOs, sockets and devices are names with attributes
/// (a device's number is `Stat::rdev`), their IO never reaches the fs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    pub(crate) fn code(self) -> u8 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
            Kind::Fifo => 4,
            Kind::Socket => 5,
            Kind::CharDev => 6,
            Kind::BlockDev => 7,
        }
    }
    pub(crate) fn from_code(c: u8) -> Result<Kind, FsError> {
        match c {
            1 => Ok(Kind::File),
            2 => Ok(Kind::Dir),
            3 => Ok(Kind::Symlink),
            4 => Ok(Kind::Fifo),
            5 => Ok(Kind::Socket),
            6 => Ok(Kind::CharDev),
            7 => Ok(Kind::BlockDev),
            _ => Err(FsError::corrupt(format!("unknown inode kind {c}"))),
        }
    }
    /// The `S_IFMT` bits of this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            Kind::File => libc::S_IFREG,
            Kind::Dir => libc::S_IFDIR,
            Kind::Symlink => libc::S_IFLNK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
            Kind::CharDev => libc::S_IFCHR,
            Kind::BlockDev => libc::S_IFBLK,
        }
    }
    /// The kind of an `S_IFMT` value (`mknod`'s mode), if any.
    pub fn from_type_bits(mode: u32) -> Option<Kind> {
        [
            Kind::File,
            Kind::Dir,
            Kind::Symlink,
            Kind::Fifo,
            Kind::Socket,
            Kind::CharDev,
            Kind::BlockDev,
        ]
        .into_iter()
        .find(|k| k.type_bits() == mode & libc::S_IFMT)
    }
}

/// Attribute changes of one [`Op::SetAttr`]; `None` keeps the value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// Permission bits (`07777`); the kind never changes.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Nanoseconds since the Unix epoch.
    pub atime: Option<u64>,
    pub mtime: Option<u64>,
}

impl SetAttr {
    /// True when nothing would change.
    pub fn is_empty(&self) -> bool {
        *self == SetAttr::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// A new inode `name` in `parent`: `mode` holds the permission bits
    /// (07777), `rdev` a device's number, `target` a symlink's target.
    Create {
        parent: Ino,
        name: String,
        ino: Ino,
        kind: Kind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
        target: Vec<u8>,
        time: u64,
    },
    /// Another name for the existing non-directory `ino`.
    Link {
        ino: Ino,
        parent: Ino,
        name: String,
        time: u64,
    },
    /// chmod / chown / utimens; ctime becomes `ctime`.
    SetAttr { ino: Ino, attr: SetAttr, ctime: u64 },
    /// Removes `name` from `parent`: a file becomes an orphan, an (empty)
    /// directory is deleted.
    Remove {
        parent: Ino,
        name: String,
        time: u64,
    },
    /// Moves an entry; an existing destination file becomes an orphan, an
    /// existing empty destination directory is deleted.
    Rename {
        src_parent: Ino,
        src_name: String,
        dst_parent: Ino,
        dst_name: String,
        time: u64,
    },
    /// Maps logical blocks `logical..` of `ino` to the runs, in order.
    Map {
        ino: Ino,
        logical: u64,
        runs: Vec<Run>,
    },
    /// Sets size and mtime (a write or fallocate grew the file); blocks
    /// past the size (preallocation) stay mapped.
    SetSize { ino: Ino, size: u64, mtime: u64 },
    /// Sets size and mtime and moves every block past the new end,
    /// preallocated ones included, to the pending-free list.
    Truncate { ino: Ino, size: u64, mtime: u64 },
    /// Deletes an orphan and frees its blocks.
    FreeOrphan { ino: Ino },
    /// Frees pending blocks released at or before `upto`.
    ReleasePending { upto: Lsn },
    /// The data region now has `data_blocks` blocks.
    Grow { data_blocks: u64 },
    /// CRC32C of each device range `(offset, len, crc)` written together
    /// with this transaction's header rather than before it. No effect on
    /// the metadata: readers check it before trusting the newest
    /// transaction (see `journal::verified_inline`).
    DataCrc { ranges: Vec<(u64, u32, u32)> },
    /// Data journaled with its transaction (ext4 `data=journal` for small
    /// writes): `len` bytes for device offset `dev_off`. The bytes are
    /// not in the record but in the transaction's data area, right after
    /// its records in the ring (in record order, covered by the
    /// transaction's data crc); `data` holds them once parsed. No effect
    /// on the metadata: readers overlay the bytes until the RW has
    /// written them home (before a checkpoint moves `start` past them).
    Journaled {
        dev_off: u64,
        len: u32,
        data: Vec<u8>,
    },
}

impl Op {
    pub(crate) fn encode(&self, e: &mut Enc) {
        match self {
            Op::Create {
                parent,
                name,
                ino,
                kind,
                mode,
                uid,
                gid,
                rdev,
                target,
                time,
            } => {
                e.u8(1);
                e.u64(*parent);
                e.str(name);
                e.u64(*ino);
                e.u8(kind.code());
                e.u32(*mode);
                e.u32(*uid);
                e.u32(*gid);
                e.u64(*rdev);
                e.bytes(target);
                e.u64(*time);
            }
            Op::Link {
                ino,
                parent,
                name,
                time,
            } => {
                e.u8(11);
                e.u64(*ino);
                e.u64(*parent);
                e.str(name);
                e.u64(*time);
            }
            Op::SetAttr { ino, attr, ctime } => {
                e.u8(12);
                e.u64(*ino);
                let flags = u8::from(attr.mode.is_some())
                    | u8::from(attr.uid.is_some()) << 1
                    | u8::from(attr.gid.is_some()) << 2
                    | u8::from(attr.atime.is_some()) << 3
                    | u8::from(attr.mtime.is_some()) << 4;
                e.u8(flags);
                e.u32(attr.mode.unwrap_or(0));
                e.u32(attr.uid.unwrap_or(0));
                e.u32(attr.gid.unwrap_or(0));
                e.u64(attr.atime.unwrap_or(0));
                e.u64(attr.mtime.unwrap_or(0));
                e.u64(*ctime);
            }
            Op::Remove { parent, name, time } => {
                e.u8(2);
                e.u64(*parent);
                e.str(name);
                e.u64(*time);
            }
            Op::Rename {
                src_parent,
                src_name,
                dst_parent,
                dst_name,
                time,
            } => {
                e.u8(3);
                e.u64(*src_parent);
                e.str(src_name);
                e.u64(*dst_parent);
                e.str(dst_name);
                e.u64(*time);
            }
            Op::Map { ino, logical, runs } => {
                e.u8(4);
                e.u64(*ino);
                e.u64(*logical);
                e.u64(runs.len() as u64);
                for (s, c) in runs {
                    e.u64(*s);
                    e.u64(*c);
                }
            }
            Op::SetSize { ino, size, mtime } => {
                e.u8(5);
                e.u64(*ino);
                e.u64(*size);
                e.u64(*mtime);
            }
            Op::Truncate { ino, size, mtime } => {
                e.u8(9);
                e.u64(*ino);
                e.u64(*size);
                e.u64(*mtime);
            }
            Op::FreeOrphan { ino } => {
                e.u8(6);
                e.u64(*ino);
            }
            Op::ReleasePending { upto } => {
                e.u8(7);
                e.u64(*upto);
            }
            Op::Grow { data_blocks } => {
                e.u8(8);
                e.u64(*data_blocks);
            }
            Op::DataCrc { ranges } => {
                e.u8(10);
                e.u64(ranges.len() as u64);
                for (off, len, crc) in ranges {
                    e.u64(*off);
                    e.u32(*len);
                    e.u32(*crc);
                }
            }
            Op::Journaled { dev_off, len, .. } => {
                e.u8(13);
                e.u64(*dev_off);
                e.u32(*len);
            }
        }
    }

    pub(crate) fn decode(d: &mut Dec<'_>) -> Result<Op, FsError> {
        Ok(match d.u8()? {
            1 => Op::Create {
                parent: d.u64()?,
                name: d.string()?,
                ino: d.u64()?,
                kind: Kind::from_code(d.u8()?)?,
                mode: d.u32()?,
                uid: d.u32()?,
                gid: d.u32()?,
                rdev: d.u64()?,
                target: d.bytes()?.to_vec(),
                time: d.u64()?,
            },
            11 => Op::Link {
                ino: d.u64()?,
                parent: d.u64()?,
                name: d.string()?,
                time: d.u64()?,
            },
            12 => {
                let ino = d.u64()?;
                let flags = d.u8()?;
                if flags & !0x1f != 0 {
                    return Err(FsError::corrupt(format!("setattr flags {flags:#x}")));
                }
                let (mode, uid, gid) = (d.u32()?, d.u32()?, d.u32()?);
                let (atime, mtime) = (d.u64()?, d.u64()?);
                let on = |bit: u8| flags & (1 << bit) != 0;
                Op::SetAttr {
                    ino,
                    attr: SetAttr {
                        mode: on(0).then_some(mode),
                        uid: on(1).then_some(uid),
                        gid: on(2).then_some(gid),
                        atime: on(3).then_some(atime),
                        mtime: on(4).then_some(mtime),
                    },
                    ctime: d.u64()?,
                }
            }
            2 => Op::Remove {
                parent: d.u64()?,
                name: d.string()?,
                time: d.u64()?,
            },
            3 => Op::Rename {
                src_parent: d.u64()?,
                src_name: d.string()?,
                dst_parent: d.u64()?,
                dst_name: d.string()?,
                time: d.u64()?,
            },
            4 => {
                let ino = d.u64()?;
                let logical = d.u64()?;
                let n = d.count(16)?;
                let mut runs = Vec::with_capacity(n);
                for _ in 0..n {
                    runs.push((d.u64()?, d.u64()?));
                }
                Op::Map { ino, logical, runs }
            }
            5 => Op::SetSize {
                ino: d.u64()?,
                size: d.u64()?,
                mtime: d.u64()?,
            },
            6 => Op::FreeOrphan { ino: d.u64()? },
            7 => Op::ReleasePending { upto: d.u64()? },
            8 => Op::Grow {
                data_blocks: d.u64()?,
            },
            9 => Op::Truncate {
                ino: d.u64()?,
                size: d.u64()?,
                mtime: d.u64()?,
            },
            10 => {
                let n = d.count(16)?;
                let mut ranges = Vec::with_capacity(n);
                for _ in 0..n {
                    ranges.push((d.u64()?, d.u32()?, d.u32()?));
                }
                Op::DataCrc { ranges }
            }
            13 => Op::Journaled {
                dev_off: d.u64()?,
                len: d.u32()?,
                // Filled from the transaction's data area by the parser.
                data: Vec::new(),
            },
            t => return Err(FsError::corrupt(format!("unknown journal record type {t}"))),
        })
    }

    /// Encoded size, for bounding transactions.
    pub(crate) fn encoded_len(&self) -> usize {
        let mut e = Enc::default();
        self.encode(&mut e);
        e.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_roundtrip() {
        let ops = vec![
            Op::Create {
                parent: 1,
                name: "a".into(),
                ino: 2,
                kind: Kind::File,
                mode: 0o644,
                uid: 1,
                gid: 2,
                rdev: 0,
                target: Vec::new(),
                time: 5,
            },
            Op::Create {
                parent: 1,
                name: "l".into(),
                ino: 3,
                kind: Kind::Symlink,
                mode: 0o777,
                uid: 0,
                gid: 0,
                rdev: 0,
                target: b"../x/y".to_vec(),
                time: 5,
            },
            Op::Create {
                parent: 1,
                name: "c".into(),
                ino: 4,
                kind: Kind::CharDev,
                mode: 0o600,
                uid: 0,
                gid: 0,
                rdev: (1 << 8) | 3,
                target: Vec::new(),
                time: 5,
            },
            Op::Link {
                ino: 2,
                parent: 5,
                name: "a2".into(),
                time: 6,
            },
            Op::SetAttr {
                ino: 2,
                attr: SetAttr {
                    mode: Some(0o4755),
                    uid: None,
                    gid: Some(65534),
                    atime: Some(1),
                    mtime: None,
                },
                ctime: 7,
            },
            Op::SetAttr {
                ino: 2,
                attr: SetAttr::default(),
                ctime: 8,
            },
            Op::Remove {
                parent: 1,
                name: "b".into(),
                time: 6,
            },
            Op::Rename {
                src_parent: 1,
                src_name: "x".into(),
                dst_parent: 3,
                dst_name: "y".into(),
                time: 7,
            },
            Op::Map {
                ino: 2,
                logical: 4,
                runs: vec![(10, 2), (20, 1)],
            },
            Op::SetSize {
                ino: 2,
                size: 99,
                mtime: 8,
            },
            Op::Truncate {
                ino: 2,
                size: 9,
                mtime: 9,
            },
            Op::FreeOrphan { ino: 9 },
            Op::ReleasePending { upto: 4096 },
            Op::Grow { data_blocks: 77 },
            Op::DataCrc {
                ranges: vec![(1 << 40, 4096, 0xdead_beef), (7, 1, 0)],
            },
            Op::Journaled {
                dev_off: 1 << 33,
                len: 0,
                data: Vec::new(),
            },
        ];
        let mut e = Enc::default();
        for op in &ops {
            e.u32(op.encoded_len() as u32);
            op.encode(&mut e);
        }
        let mut d = Dec::new(&e.0, "test");
        for op in &ops {
            assert_eq!(d.u32().unwrap() as usize, op.encoded_len());
            assert_eq!(&Op::decode(&mut d).unwrap(), op);
        }
        d.finish().unwrap();
        let mut bad = Dec::new(&[99u8], "test");
        assert!(Op::decode(&mut bad).is_err());
    }
}
