//! The on-disk encoding of Redis keys in RocksDB (byte diagrams in
//! `docs/kv.md`).
//!
//! Two column families:
//! - `meta`: one record per Redis key, `db | key` → [`Meta`]. Strings keep
//!   their value inline here; collections keep type, expiry, version, size
//!   and type-specific extra bytes.
//! - `data`: one record per collection member,
//!   `db | key len (u32 BE) | key | version (u64 BE) | member` → value.
//!
//! A collection's members are only those whose version equals the version in
//! its live metadata record, so DEL/EXPIRE/overwrite of a big collection is
//! O(1): the metadata record changes and the compaction filter reclaims the
//! stale members later. Integers are big-endian so RocksDB's bytewise order
//! is numeric order.

use crate::error::DecodeError;

/// Number of logical databases (`SELECT 0..15`).
pub const DBS: u8 = 16;

/// Column family of metadata records.
pub const CF_META: &str = "meta";
/// Column family of collection members.
pub const CF_DATA: &str = "data";

/// The Redis type of a key, as stored in byte 0 of its metadata record.
/// The numbers are part of the on-disk format: never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KeyType {
    String = 1,
    Hash = 2,
    List = 3,
    Set = 4,
    ZSet = 5,
}

impl KeyType {
    pub fn from_byte(b: u8) -> Option<KeyType> {
        Some(match b {
            1 => KeyType::String,
            2 => KeyType::Hash,
            3 => KeyType::List,
            4 => KeyType::Set,
            5 => KeyType::ZSet,
            _ => return None,
        })
    }

    /// The name `TYPE` answers and `SCAN ... TYPE` matches.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::String => "string",
            KeyType::Hash => "hash",
            KeyType::List => "list",
            KeyType::Set => "set",
            KeyType::ZSet => "zset",
        }
    }

    pub fn from_name(name: &[u8]) -> Option<KeyType> {
        let lower = name.to_ascii_lowercase();
        Some(match lower.as_slice() {
            b"string" => KeyType::String,
            b"hash" => KeyType::Hash,
            b"list" => KeyType::List,
            b"set" => KeyType::Set,
            b"zset" => KeyType::ZSet,
            _ => return None,
        })
    }

    /// Whether members live as sub-keys in the `data` column family.
    pub fn is_collection(self) -> bool {
        self != KeyType::String
    }
}

/// A decoded metadata record.
///
/// Layout (all integers big-endian):
/// ```text
/// string:     type u8 | expire_ms u64 | value bytes...
/// collection: type u8 | expire_ms u64 | version u64 | size u64 | extra bytes...
/// ```
/// `expire_ms` is an absolute Unix time in milliseconds, 0 = no expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub kind: KeyType,
    pub expire_ms: u64,
    /// Collections only: the member generation (see module doc).
    pub version: u64,
    /// Collections only: the number of members.
    pub size: u64,
    /// Strings: the value. Collections: type-specific extra state (e.g. a
    /// list's head/tail indices); empty for hashes.
    pub payload: Vec<u8>,
}

const STRING_HEADER: usize = 1 + 8;
const COLLECTION_HEADER: usize = 1 + 8 + 8 + 8;

impl Meta {
    pub fn string(value: Vec<u8>, expire_ms: u64) -> Meta {
        Meta {
            kind: KeyType::String,
            expire_ms,
            version: 0,
            size: 0,
            payload: value,
        }
    }

    pub fn collection(kind: KeyType, version: u64) -> Meta {
        Meta {
            kind,
            expire_ms: 0,
            version,
            size: 0,
            payload: Vec::new(),
        }
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expire_ms != 0 && self.expire_ms <= now_ms
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out;
        if self.kind.is_collection() {
            out = Vec::with_capacity(COLLECTION_HEADER + self.payload.len());
            out.push(self.kind as u8);
            out.extend_from_slice(&self.expire_ms.to_be_bytes());
            out.extend_from_slice(&self.version.to_be_bytes());
            out.extend_from_slice(&self.size.to_be_bytes());
        } else {
            out = Vec::with_capacity(STRING_HEADER + self.payload.len());
            out.push(self.kind as u8);
            out.extend_from_slice(&self.expire_ms.to_be_bytes());
        }
        out.extend_from_slice(&self.payload);
        out
    }

    /// # Errors
    /// The record is truncated or has an unknown type byte (a corrupt or
    /// newer on-disk format: never guessed at).
    pub fn decode(raw: &[u8]) -> Result<Meta, DecodeError> {
        let (&t, rest) = raw.split_first().ok_or(DecodeError::Truncated)?;
        let kind = KeyType::from_byte(t).ok_or(DecodeError::UnknownType(t))?;
        let expire_ms = be_u64(rest, 0)?;
        if kind.is_collection() {
            Ok(Meta {
                kind,
                expire_ms,
                version: be_u64(rest, 8)?,
                size: be_u64(rest, 16)?,
                payload: rest[24..].to_vec(),
            })
        } else {
            Ok(Meta::string(rest[8..].to_vec(), expire_ms))
        }
    }

    /// Only the header fields the compaction filter needs, without copying
    /// the payload.
    pub fn peek(raw: &[u8]) -> Result<(KeyType, u64, u64), DecodeError> {
        let (&t, rest) = raw.split_first().ok_or(DecodeError::Truncated)?;
        let kind = KeyType::from_byte(t).ok_or(DecodeError::UnknownType(t))?;
        let expire_ms = be_u64(rest, 0)?;
        let version = if kind.is_collection() {
            be_u64(rest, 8)?
        } else {
            0
        };
        Ok((kind, expire_ms, version))
    }
}

fn be_u64(b: &[u8], at: usize) -> Result<u64, DecodeError> {
    let s = b.get(at..at + 8).ok_or(DecodeError::Truncated)?;
    Ok(u64::from_be_bytes(s.try_into().expect("slice of 8")))
}

/// `db | key`: the metadata record's key.
pub fn meta_key(db: u8, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(db);
    k.extend_from_slice(key);
    k
}

/// Splits a metadata key into `(db, key)`.
pub fn split_meta_key(raw: &[u8]) -> Option<(u8, &[u8])> {
    let (&db, key) = raw.split_first()?;
    Some((db, key))
}

/// `db | key len | key | version`: the common prefix of every member of one
/// collection generation. Iterate `[sub_prefix, prefix_end(sub_prefix))`.
pub fn sub_prefix(db: u8, key: &[u8], version: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 4 + key.len() + 8);
    k.push(db);
    k.extend_from_slice(&(key.len() as u32).to_be_bytes());
    k.extend_from_slice(key);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// `sub_prefix | member`: one member's key in the `data` column family.
pub fn sub_key(db: u8, key: &[u8], version: u64, member: &[u8]) -> Vec<u8> {
    let mut k = sub_prefix(db, key, version);
    k.extend_from_slice(member);
    k
}

/// A decoded `data` key.
#[derive(Debug, PartialEq, Eq)]
pub struct SubKey<'a> {
    pub db: u8,
    pub key: &'a [u8],
    pub version: u64,
    pub member: &'a [u8],
}

/// # Errors
/// The key is shorter than its declared key length plus version.
pub fn split_sub_key(raw: &[u8]) -> Result<SubKey<'_>, DecodeError> {
    let (&db, rest) = raw.split_first().ok_or(DecodeError::Truncated)?;
    let len = rest.get(..4).ok_or(DecodeError::Truncated)?;
    let len = u32::from_be_bytes(len.try_into().expect("slice of 4")) as usize;
    let key = rest.get(4..4 + len).ok_or(DecodeError::Truncated)?;
    let version = be_u64(rest, 4 + len)?;
    Ok(SubKey {
        db,
        key,
        version,
        member: &rest[4 + len + 8..],
    })
}

/// The smallest byte string greater than every string starting with
/// `prefix`, or `None` when there is none (all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_meta_round_trips_with_binary_value() {
        let m = Meta::string(vec![0, 255, b'\r', b'\n'], 1_700_000_000_123);
        let raw = m.encode();
        assert_eq!(raw[0], 1);
        assert_eq!(raw.len(), 9 + 4);
        assert_eq!(Meta::decode(&raw).unwrap(), m);
        assert_eq!(
            Meta::peek(&raw).unwrap(),
            (KeyType::String, 1_700_000_000_123, 0)
        );
    }

    #[test]
    fn collection_meta_round_trips_with_extra() {
        let mut m = Meta::collection(KeyType::List, 42);
        m.size = 7;
        m.expire_ms = 5;
        m.payload = vec![1, 2, 3];
        let raw = m.encode();
        assert_eq!(raw.len(), 25 + 3);
        assert_eq!(Meta::decode(&raw).unwrap(), m);
        assert_eq!(Meta::peek(&raw).unwrap(), (KeyType::List, 5, 42));
    }

    #[test]
    fn corrupt_meta_is_an_error() {
        assert_eq!(Meta::decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(Meta::decode(&[9; 30]), Err(DecodeError::UnknownType(9)));
        assert_eq!(Meta::decode(&[2, 0, 0]), Err(DecodeError::Truncated));
    }

    #[test]
    fn sub_key_round_trips_and_sorts_by_version_then_member() {
        let k = sub_key(3, b"k\x00ey", 9, b"field");
        let s = split_sub_key(&k).unwrap();
        assert_eq!(
            s,
            SubKey {
                db: 3,
                key: b"k\x00ey",
                version: 9,
                member: b"field"
            }
        );
        // A key that is a prefix of another never shares its members' range.
        let a = sub_prefix(0, b"a", 1);
        let ab = sub_key(0, b"ab", 1, b"");
        assert!(!ab.starts_with(&a));
        assert!(sub_key(0, b"k", 1, b"z") < sub_key(0, b"k", 2, b"a"));
        assert!(split_sub_key(&k[..k.len() - 6]).is_err());
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }
}
