//! Generic key commands (DEL, TYPE, EXPIRE, RENAME, SCAN, ...).
//!
//! Everything here works from the metadata record alone, so it serves every
//! data type, including ones added later: DEL/EXPIRE touch only the record
//! (O(1)), TYPE and `SCAN ... TYPE` read its type byte, and RENAME copies
//! the record plus the members under its version prefix to a new version.

use bytes::Bytes;
use rand::Rng;

use crate::command::{data_spec, is, parse_i64, CommandSpec, FAST, READONLY, WRITE};
use crate::encoding::{meta_key, prefix_end, sub_prefix, KeyType, Meta};
use crate::error::CmdError;
use crate::pattern::glob_match;
use crate::resp::Reply;
use crate::txn::{decode_meta_row, Space, Txn};

const fn spec(
    name: &'static str,
    arity: i32,
    flags: u32,
    keys: (i32, i32, i32),
    f: crate::command::DataFn,
    summary: &'static str,
) -> CommandSpec {
    data_spec("generic", name, arity, flags, keys, f, summary)
}

const R: u32 = READONLY;

pub(crate) const COMMANDS: &[CommandSpec] = &[
    spec("del", -2, WRITE, (1, -1, 1), del, "Deletes one or more keys."),
    spec("unlink", -2, WRITE | FAST, (1, -1, 1), del, "Asynchronously deletes one or more keys."),
    spec("exists", -2, R | FAST, (1, -1, 1), exists, "Determines whether one or more keys exist."),
    spec("touch", -2, R | FAST, (1, -1, 1), exists, "Returns the number of existing keys out of those specified after updating the time they were last accessed."),
    spec("type", 2, R | FAST, (1, 1, 1), key_type, "Determines the type of value stored at a key."),
    spec("rename", 3, WRITE, (1, 2, 1), rename, "Renames a key and overwrites the destination."),
    spec("renamenx", 3, WRITE | FAST, (1, 2, 1), renamenx, "Renames a key only when the target key name doesn't exist."),
    spec("expire", -3, WRITE | FAST, (1, 1, 1), expire, "Sets the expiration time of a key in seconds."),
    spec("pexpire", -3, WRITE | FAST, (1, 1, 1), pexpire, "Sets the expiration time of a key in milliseconds."),
    spec("expireat", -3, WRITE | FAST, (1, 1, 1), expireat, "Sets the expiration time of a key to a Unix timestamp."),
    spec("pexpireat", -3, WRITE | FAST, (1, 1, 1), pexpireat, "Sets the expiration time of a key to a Unix milliseconds timestamp."),
    spec("ttl", 2, R | FAST, (1, 1, 1), ttl, "Returns the expiration time in seconds of a key."),
    spec("pttl", 2, R | FAST, (1, 1, 1), pttl, "Returns the expiration time in milliseconds of a key."),
    spec("expiretime", 2, R | FAST, (1, 1, 1), expiretime, "Returns the expiration time of a key as a Unix timestamp."),
    spec("pexpiretime", 2, R | FAST, (1, 1, 1), pexpiretime, "Returns the expiration time of a key as a Unix milliseconds timestamp."),
    spec("persist", 2, WRITE | FAST, (1, 1, 1), persist, "Removes the expiration time of a key."),
    spec("scan", -2, R, (0, 0, 0), scan, "Iterates over the key names in the database."),
    spec("keys", 2, R, (0, 0, 0), keys, "Returns all key names that match a pattern."),
    spec("randomkey", 1, R, (0, 0, 0), randomkey, "Returns a random key name from the database."),
    spec("dbsize", 1, R | FAST, (0, 0, 0), dbsize, "Returns the number of keys in the database."),
    spec("flushdb", -1, WRITE, (0, 0, 0), flushdb, "Remove all keys from the current database."),
    spec("flushall", -1, WRITE, (0, 0, 0), flushall, "Removes all keys from all databases."),
];

fn del(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let mut n = 0;
    for k in &a[1..] {
        if t.get_meta(k)?.is_some() {
            t.delete_key(k);
            n += 1;
        }
    }
    Ok(Reply::Int(n))
}

fn exists(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let mut n = 0;
    for k in &a[1..] {
        if t.get_meta(k)?.is_some() {
            n += 1;
        }
    }
    Ok(Reply::Int(n))
}

fn key_type(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    Ok(Reply::Status(
        t.get_meta(&a[1])?.map_or("none", |m| m.kind.name()).into(),
    ))
}

/// Moves `src` to `dst` (overwriting it) in any type: the record is copied;
/// a collection's members are copied under a fresh version of `dst`.
fn move_key(t: &mut Txn<'_>, src: &[u8], dst: &[u8], mut m: Meta) -> Result<(), CmdError> {
    if m.kind.is_collection() {
        let old_version = m.version;
        let new_version = t.engine().next_version();
        let prefix = sub_prefix(t.db, src, old_version);
        let end = prefix_end(&prefix);
        let rows = t.scan_raw(Space::Data, &prefix, end.as_deref(), usize::MAX, false)?;
        for (k, v) in rows {
            let member = &k[prefix.len()..];
            t.put_sub(dst, new_version, member, v);
        }
        m.version = new_version;
    }
    t.delete_key(src);
    t.put_meta(dst, &m);
    Ok(())
}

fn rename(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let m = t.get_meta(&a[1])?.ok_or(CmdError::NoSuchKey)?;
    if a[1] != a[2] {
        move_key(t, &a[1], &a[2], m)?;
    }
    Ok(Reply::ok())
}

fn renamenx(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let m = t.get_meta(&a[1])?.ok_or(CmdError::NoSuchKey)?;
    if t.get_meta(&a[2])?.is_some() {
        return Ok(Reply::Int(0));
    }
    if a[1] != a[2] {
        move_key(t, &a[1], &a[2], m)?;
    }
    Ok(Reply::Int(1))
}

/// EXPIRE/PEXPIRE/EXPIREAT/PEXPIREAT: `unit_ms` scales the argument;
/// `relative` adds now.
fn expire_generic(
    t: &mut Txn<'_>,
    a: &[Bytes],
    unit_ms: i64,
    relative: bool,
) -> Result<Reply, CmdError> {
    let cmd = String::from_utf8_lossy(&a[0]).to_ascii_lowercase();
    let n = parse_i64(&a[2])?;
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for o in &a[3..] {
        if is(o, "nx") {
            nx = true;
        } else if is(o, "xx") {
            xx = true;
        } else if is(o, "gt") {
            gt = true;
        } else if is(o, "lt") {
            lt = true;
        } else {
            return Err(CmdError::msg(format!(
                "ERR Unsupported option {}",
                String::from_utf8_lossy(o)
            )));
        }
    }
    if nx && (xx || gt || lt) {
        return Err(CmdError::msg(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(CmdError::msg(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    let invalid = || CmdError::msg(format!("ERR invalid expire time in '{cmd}' command"));
    let mut when = n.checked_mul(unit_ms).ok_or_else(invalid)?;
    if relative {
        when = when.checked_add(t.now_ms() as i64).ok_or_else(invalid)?;
    }
    let Some(mut m) = t.get_meta(&a[1])? else {
        return Ok(Reply::Int(0));
    };
    let cur = m.expire_ms;
    // No TTL counts as an infinite one for GT/LT.
    let skip = (nx && cur != 0)
        || (xx && cur == 0)
        || (gt && (cur == 0 || when <= cur as i64))
        || (lt && cur != 0 && when >= cur as i64);
    if skip {
        return Ok(Reply::Int(0));
    }
    if when <= t.now_ms() as i64 {
        t.delete_key(&a[1]);
    } else {
        m.expire_ms = when as u64;
        t.put_meta(&a[1], &m);
    }
    Ok(Reply::Int(1))
}

fn expire(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    expire_generic(t, a, 1000, true)
}

fn pexpire(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    expire_generic(t, a, 1, true)
}

fn expireat(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    expire_generic(t, a, 1000, false)
}

fn pexpireat(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    expire_generic(t, a, 1, false)
}

/// TTL family: `-2` missing, `-1` no expiry.
fn ttl_generic(t: &Txn<'_>, key: &[u8], f: impl Fn(u64, u64) -> i64) -> Result<Reply, CmdError> {
    Ok(Reply::Int(match t.get_meta(key)? {
        None => -2,
        Some(m) if m.expire_ms == 0 => -1,
        Some(m) => f(m.expire_ms, t.now_ms()),
    }))
}

fn ttl(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    ttl_generic(t, &a[1], |e, now| {
        ((e.saturating_sub(now) + 500) / 1000) as i64
    })
}

fn pttl(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    ttl_generic(t, &a[1], |e, now| e.saturating_sub(now) as i64)
}

fn expiretime(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    ttl_generic(t, &a[1], |e, _| (e / 1000) as i64)
}

fn pexpiretime(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    ttl_generic(t, &a[1], |e, _| e as i64)
}

fn persist(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    match t.get_meta(&a[1])? {
        Some(mut m) if m.expire_ms != 0 => {
            m.expire_ms = 0;
            t.put_meta(&a[1], &m);
            Ok(Reply::Int(1))
        }
        _ => Ok(Reply::Int(0)),
    }
}

/// Parsed `MATCH` / `COUNT` / `TYPE` / `NOVALUES` options of the SCAN family.
pub struct ScanOpts {
    pub pattern: Option<Bytes>,
    pub count: usize,
    pub kind: Option<Option<KeyType>>,
    pub novalues: bool,
}

/// Parses SCAN-family options from `a[from..]`. `TYPE` only when
/// `allow_type`, `NOVALUES` only when `allow_novalues`.
///
/// # Errors
/// `Syntax` on unknown options or a count < 1; `NotInteger` on a bad count.
pub fn parse_scan_opts(
    a: &[Bytes],
    from: usize,
    allow_type: bool,
    allow_novalues: bool,
) -> Result<ScanOpts, CmdError> {
    let mut o = ScanOpts {
        pattern: None,
        count: 10,
        kind: None,
        novalues: false,
    };
    let mut i = from;
    while i < a.len() {
        let has_val = i + 1 < a.len();
        if is(&a[i], "match") && has_val {
            o.pattern = Some(a[i + 1].clone());
            i += 2;
        } else if is(&a[i], "count") && has_val {
            let c = parse_i64(&a[i + 1])?;
            if c < 1 {
                return Err(CmdError::Syntax);
            }
            o.count = c as usize;
            i += 2;
        } else if allow_type && is(&a[i], "type") && has_val {
            // Unknown type names match nothing, as in Redis.
            o.kind = Some(KeyType::from_name(&a[i + 1]));
            i += 2;
        } else if allow_novalues && is(&a[i], "novalues") {
            o.novalues = true;
            i += 1;
        } else {
            return Err(CmdError::Syntax);
        }
    }
    Ok(o)
}

/// Parses a SCAN cursor argument.
///
/// # Errors
/// `ERR invalid cursor`.
pub fn parse_cursor(b: &[u8]) -> Result<u64, CmdError> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| CmdError::msg("ERR invalid cursor"))
}

fn scan(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let cursor = parse_cursor(&a[1])?;
    let o = parse_scan_opts(a, 2, true, false)?;
    let db_lo = vec![t.db];
    let db_hi = vec![t.db + 1];
    let start = t
        .engine()
        .cursors()
        .resume(cursor)
        .filter(|r| r.first() == Some(&t.db))
        .unwrap_or_else(|| db_lo.clone());
    // Examine `count` records (+1 to learn whether more follow).
    let rows = t.scan_raw(Space::Meta, &start, Some(&db_hi), o.count + 1, false)?;
    let more = rows.len() > o.count;
    let now = t.now_ms();
    let mut keys = Vec::new();
    for (k, v) in rows.iter().take(o.count) {
        let (key, m) = decode_meta_row(k, v)?;
        if m.is_expired(now) {
            continue;
        }
        if let Some(p) = &o.pattern {
            if !glob_match(p, &key) {
                continue;
            }
        }
        if let Some(kind) = o.kind {
            if kind != Some(m.kind) {
                continue;
            }
        }
        keys.push(Reply::bulk(key));
    }
    let next = if more {
        t.engine().cursors().save(rows[o.count].0.clone())
    } else {
        0
    };
    Ok(Reply::Array(vec![
        Reply::bulk(next.to_string()),
        Reply::Array(keys),
    ]))
}

/// The literal prefix of a glob (before its first special character).
fn literal_prefix(p: &[u8]) -> &[u8] {
    let end = p
        .iter()
        .position(|c| matches!(c, b'*' | b'?' | b'[' | b'\\'))
        .unwrap_or(p.len());
    &p[..end]
}

/// Live keys of the txn's db whose names start with `prefix`, passing `f`.
fn for_each_key(
    t: &Txn<'_>,
    prefix: &[u8],
    mut f: impl FnMut(Vec<u8>, &Meta) -> bool,
) -> Result<(), CmdError> {
    const BATCH: usize = 1024;
    let lo = meta_key(t.db, prefix);
    let hi = prefix_end(&lo);
    let mut start = lo;
    let now = t.now_ms();
    loop {
        let rows = t.scan_raw(Space::Meta, &start, hi.as_deref(), BATCH, false)?;
        let n = rows.len();
        for (k, v) in &rows {
            let (key, m) = decode_meta_row(k, v)?;
            if !m.is_expired(now) && !f(key, &m) {
                return Ok(());
            }
        }
        if n < BATCH {
            return Ok(());
        }
        let mut next = rows[n - 1].0.clone();
        next.push(0);
        start = next;
    }
}

fn keys(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let pat = &a[1];
    let mut out = Vec::new();
    for_each_key(t, literal_prefix(pat), |k, _| {
        if glob_match(pat, &k) {
            out.push(Reply::bulk(k));
        }
        true
    })?;
    Ok(Reply::Array(out))
}

/// Counts live keys in the txn's db: `(keys, keys with a TTL)`. O(n).
pub fn count_keys(t: &Txn<'_>) -> Result<(u64, u64), CmdError> {
    let (mut n, mut e) = (0, 0);
    for_each_key(t, b"", |_, m| {
        n += 1;
        if m.expire_ms != 0 {
            e += 1;
        }
        true
    })?;
    Ok((n, e))
}

fn dbsize(t: &mut Txn<'_>, _a: &[Bytes]) -> Result<Reply, CmdError> {
    Ok(Reply::Int(count_keys(t)?.0 as i64))
}

fn randomkey(t: &mut Txn<'_>, _a: &[Bytes]) -> Result<Reply, CmdError> {
    // Seek to a random point and take the next live key, wrapping once.
    // Biased towards keys after sparse regions; Redis's is not uniform
    // either.
    let mut probe = vec![t.db];
    let mut rng = rand::thread_rng();
    for _ in 0..4 {
        probe.push(rng.gen());
    }
    let hi = vec![t.db + 1];
    let lo = vec![t.db];
    for (from, to) in [(probe.clone(), hi), (lo, probe)] {
        let mut start = from;
        loop {
            let rows = t.scan_raw(Space::Meta, &start, Some(&to), 256, false)?;
            for (k, v) in &rows {
                let (key, m) = decode_meta_row(k, v)?;
                if !m.is_expired(t.now_ms()) {
                    return Ok(Reply::bulk(key));
                }
            }
            match rows.last() {
                Some((k, _)) if rows.len() == 256 => {
                    let mut n = k.clone();
                    n.push(0);
                    start = n;
                }
                _ => break,
            }
        }
    }
    Ok(Reply::Nil)
}

fn flush_mode(a: &[Bytes]) -> Result<(), CmdError> {
    match a.len() {
        1 => Ok(()),
        2 if is(&a[1], "async") || is(&a[1], "sync") => Ok(()),
        _ => Err(CmdError::Syntax),
    }
}

fn flushdb(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    flush_mode(a)?;
    let db = t.db;
    t.flush(Some(db));
    Ok(Reply::ok())
}

fn flushall(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    flush_mode(a)?;
    t.flush(None);
    Ok(Reply::ok())
}

#[cfg(test)]
mod tests {
    use super::literal_prefix;

    #[test]
    fn literal_prefix_stops_at_glob_chars() {
        assert_eq!(literal_prefix(b"user:*"), b"user:");
        assert_eq!(literal_prefix(b"a?b"), b"a");
        assert_eq!(literal_prefix(b"plain"), b"plain");
        assert_eq!(literal_prefix(b"\\*x"), b"");
    }
}
