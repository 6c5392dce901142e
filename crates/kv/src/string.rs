//! String commands. A string lives inline in its metadata record (see
//! `encoding.rs`), so every string command is one meta get and at most one
//! meta put.

use bytes::Bytes;

use crate::command::{
    data_spec, format_f64, is, parse_f64, parse_i64, CommandSpec, DENYOOM, FAST, READONLY, WRITE,
};
use crate::encoding::{KeyType, Meta};
use crate::error::CmdError;
use crate::resp::Reply;
use crate::txn::Txn;

/// Redis's `proto-max-bulk-len`: the largest string SETRANGE/APPEND may make.
pub const MAX_STRING_LEN: usize = 512 * 1024 * 1024;

const fn spec(
    name: &'static str,
    arity: i32,
    flags: u32,
    keys: (i32, i32, i32),
    f: crate::command::DataFn,
    summary: &'static str,
) -> CommandSpec {
    data_spec("string", name, arity, flags, keys, f, summary)
}

const W: u32 = WRITE | DENYOOM;
const R: u32 = READONLY;

pub(crate) const COMMANDS: &[CommandSpec] = &[
    spec(
        "get",
        2,
        R | FAST,
        (1, 1, 1),
        get,
        "Returns the string value of a key.",
    ),
    spec(
        "set",
        -3,
        W,
        (1, 1, 1),
        set,
        "Sets the string value of a key.",
    ),
    spec(
        "setnx",
        3,
        W | FAST,
        (1, 1, 1),
        setnx,
        "Set the value of a key only when the key doesn't exist.",
    ),
    spec(
        "setex",
        4,
        W,
        (1, 1, 1),
        setex,
        "Sets the value and expiration time of a key in seconds.",
    ),
    spec(
        "psetex",
        4,
        W,
        (1, 1, 1),
        psetex,
        "Sets the value and expiration time of a key in milliseconds.",
    ),
    spec(
        "getset",
        3,
        W | FAST,
        (1, 1, 1),
        getset,
        "Returns the previous value of a key after setting it.",
    ),
    spec(
        "getdel",
        2,
        WRITE | FAST,
        (1, 1, 1),
        getdel,
        "Returns the value of a key after deleting it.",
    ),
    spec(
        "getex",
        -2,
        WRITE | FAST,
        (1, 1, 1),
        getex,
        "Returns the value of a key after setting its expiration time.",
    ),
    spec(
        "mget",
        -2,
        R | FAST,
        (1, -1, 1),
        mget,
        "Atomically returns the values of one or more keys.",
    ),
    spec(
        "mset",
        -3,
        W,
        (1, -1, 2),
        mset,
        "Atomically sets the values of one or more keys.",
    ),
    spec(
        "msetnx",
        -3,
        W,
        (1, -1, 2),
        msetnx,
        "Sets the values of keys only when none of them exist.",
    ),
    spec(
        "incr",
        2,
        W | FAST,
        (1, 1, 1),
        incr,
        "Increments the integer value of a key by one.",
    ),
    spec(
        "decr",
        2,
        W | FAST,
        (1, 1, 1),
        decr,
        "Decrements the integer value of a key by one.",
    ),
    spec(
        "incrby",
        3,
        W | FAST,
        (1, 1, 1),
        incrby,
        "Increments the integer value of a key by a number.",
    ),
    spec(
        "decrby",
        3,
        W | FAST,
        (1, 1, 1),
        decrby,
        "Decrements a number from the integer value of a key.",
    ),
    spec(
        "incrbyfloat",
        3,
        W | FAST,
        (1, 1, 1),
        incrbyfloat,
        "Increment the floating point value of a key by a number.",
    ),
    spec(
        "append",
        3,
        W | FAST,
        (1, 1, 1),
        append,
        "Appends a string to the value of a key.",
    ),
    spec(
        "strlen",
        2,
        R | FAST,
        (1, 1, 1),
        strlen,
        "Returns the length of a string value.",
    ),
    spec(
        "getrange",
        4,
        R,
        (1, 1, 1),
        getrange,
        "Returns a substring of the string stored at a key.",
    ),
    spec(
        "substr",
        4,
        R,
        (1, 1, 1),
        getrange,
        "Returns a substring from a string value.",
    ),
    spec(
        "setrange",
        4,
        W,
        (1, 1, 1),
        setrange,
        "Overwrites a part of a string value with another by an offset.",
    ),
    spec(
        "setbit",
        4,
        W,
        (1, 1, 1),
        setbit,
        "Sets or clears the bit at offset of the string value.",
    ),
    spec(
        "getbit",
        3,
        R | FAST,
        (1, 1, 1),
        getbit,
        "Returns a bit value by offset.",
    ),
    spec(
        "bitcount",
        -2,
        R,
        (1, 1, 1),
        bitcount,
        "Counts the number of set bits in a string.",
    ),
    spec(
        "bitpos",
        -3,
        R,
        (1, 1, 1),
        bitpos,
        "Finds the first set or clear bit in a string.",
    ),
];

/// The string at `key` with its record, `None` if absent.
fn get_string(t: &Txn<'_>, key: &[u8]) -> Result<Option<Meta>, CmdError> {
    t.get_meta_typed(key, KeyType::String)
}

fn get(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    Ok(Reply::opt_bulk(get_string(t, &a[1])?.map(|m| m.payload)))
}

/// Expiry options shared by SET and GETEX.
enum ExpireOpt {
    None,
    At(u64),
    KeepTtl,
    Persist,
}

/// Parses `EX|PX|EXAT|PXAT <n>` at `a[i]`, returning the absolute ms.
fn parse_expire_arg(t: &Txn<'_>, kw: &[u8], val: &[u8], cmd: &str) -> Result<u64, CmdError> {
    let n = parse_i64(val)?;
    let invalid = || CmdError::msg(format!("ERR invalid expire time in '{cmd}' command"));
    if n <= 0 {
        return Err(invalid());
    }
    let now = t.now_ms() as i64;
    let ms = if is(kw, "ex") {
        n.checked_mul(1000).and_then(|v| v.checked_add(now))
    } else if is(kw, "px") {
        n.checked_add(now)
    } else if is(kw, "exat") {
        n.checked_mul(1000)
    } else {
        Some(n)
    };
    ms.map(|v| v as u64).ok_or_else(invalid)
}

fn set(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let (key, val) = (&a[1], &a[2]);
    let (mut nx, mut xx, mut want_get) = (false, false, false);
    let mut exp = ExpireOpt::None;
    let mut i = 3;
    while i < a.len() {
        let o = &a[i];
        let has_exp = !matches!(exp, ExpireOpt::None);
        if is(o, "nx") && !xx {
            nx = true;
        } else if is(o, "xx") && !nx {
            xx = true;
        } else if is(o, "get") {
            want_get = true;
        } else if is(o, "keepttl") && !has_exp {
            exp = ExpireOpt::KeepTtl;
        } else if (is(o, "ex") || is(o, "px") || is(o, "exat") || is(o, "pxat"))
            && !has_exp
            && i + 1 < a.len()
        {
            exp = ExpireOpt::At(parse_expire_arg(t, o, &a[i + 1], "set")?);
            i += 1;
        } else {
            return Err(CmdError::Syntax);
        }
        i += 1;
    }
    // A plain SET (or SET EX/PX/...) overwrites whatever is there, of any
    // type: it needs no read. Skipping it is the biggest CPU saving of the
    // SET path (a memtable/SST lookup per command).
    let needs_old = nx || xx || want_get || matches!(exp, ExpireOpt::KeepTtl);
    let old = if needs_old { t.get_meta(key)? } else { None };
    if want_get {
        if let Some(m) = &old {
            if m.kind != KeyType::String {
                return Err(CmdError::WrongType);
            }
        }
    }
    let old_val = || Reply::opt_bulk(old.as_ref().map(|m| m.payload.clone()));
    if (nx && old.is_some()) || (xx && old.is_none()) {
        return Ok(if want_get { old_val() } else { Reply::Nil });
    }
    let expire_ms = match exp {
        ExpireOpt::At(ms) => ms,
        ExpireOpt::KeepTtl => old.as_ref().map_or(0, |m| m.expire_ms),
        _ => 0,
    };
    if expire_ms != 0 && expire_ms <= t.now_ms() {
        // Already expired (e.g. PXAT in the past): Redis deletes the key.
        t.delete_key(key);
    } else {
        t.put_meta(key, &Meta::string(val.to_vec(), expire_ms));
    }
    Ok(if want_get { old_val() } else { Reply::ok() })
}

fn setnx(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    if t.get_meta(&a[1])?.is_some() {
        return Ok(Reply::Int(0));
    }
    t.put_meta(&a[1], &Meta::string(a[2].to_vec(), 0));
    Ok(Reply::Int(1))
}

fn setex_common(t: &mut Txn<'_>, a: &[Bytes], kw: &str, cmd: &str) -> Result<Reply, CmdError> {
    let at = parse_expire_arg(t, kw.as_bytes(), &a[2], cmd)?;
    t.put_meta(&a[1], &Meta::string(a[3].to_vec(), at));
    Ok(Reply::ok())
}

fn setex(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    setex_common(t, a, "ex", "setex")
}

fn psetex(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    setex_common(t, a, "px", "psetex")
}

fn getset(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let old = get_string(t, &a[1])?;
    t.put_meta(&a[1], &Meta::string(a[2].to_vec(), 0));
    Ok(Reply::opt_bulk(old.map(|m| m.payload)))
}

fn getdel(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let old = get_string(t, &a[1])?;
    if old.is_some() {
        t.delete_key(&a[1]);
    }
    Ok(Reply::opt_bulk(old.map(|m| m.payload)))
}

fn getex(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let mut exp = ExpireOpt::None;
    let mut i = 2;
    while i < a.len() {
        let o = &a[i];
        let free = matches!(exp, ExpireOpt::None);
        if (is(o, "ex") || is(o, "px") || is(o, "exat") || is(o, "pxat")) && free && i + 1 < a.len()
        {
            exp = ExpireOpt::At(parse_expire_arg(t, o, &a[i + 1], "getex")?);
            i += 1;
        } else if is(o, "persist") && free {
            exp = ExpireOpt::Persist;
        } else {
            return Err(CmdError::Syntax);
        }
        i += 1;
    }
    let Some(mut m) = get_string(t, &a[1])? else {
        return Ok(Reply::Nil);
    };
    let val = m.payload.clone();
    match exp {
        ExpireOpt::At(ms) if ms <= t.now_ms() => t.delete_key(&a[1]),
        ExpireOpt::At(ms) => {
            m.expire_ms = ms;
            t.put_meta(&a[1], &m);
        }
        ExpireOpt::Persist if m.expire_ms != 0 => {
            m.expire_ms = 0;
            t.put_meta(&a[1], &m);
        }
        _ => {}
    }
    Ok(Reply::bulk(val))
}

fn mget(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let mut out = Vec::with_capacity(a.len() - 1);
    for k in &a[1..] {
        out.push(match t.get_meta(k)? {
            Some(m) if m.kind == KeyType::String => Reply::bulk(m.payload),
            _ => Reply::Nil,
        });
    }
    Ok(Reply::Array(out))
}

fn check_pairs(a: &[Bytes]) -> Result<(), CmdError> {
    if a.len().is_multiple_of(2) {
        return Err(CmdError::Arity(
            String::from_utf8_lossy(&a[0]).to_ascii_lowercase(),
        ));
    }
    Ok(())
}

fn mset(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    check_pairs(a)?;
    for kv in a[1..].chunks(2) {
        t.put_meta(&kv[0], &Meta::string(kv[1].to_vec(), 0));
    }
    Ok(Reply::ok())
}

fn msetnx(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    check_pairs(a)?;
    for kv in a[1..].chunks(2) {
        if t.get_meta(&kv[0])?.is_some() {
            return Ok(Reply::Int(0));
        }
    }
    for kv in a[1..].chunks(2) {
        t.put_meta(&kv[0], &Meta::string(kv[1].to_vec(), 0));
    }
    Ok(Reply::Int(1))
}

/// Adds `by` to the integer at `key`, keeping its TTL.
fn incr_by(t: &mut Txn<'_>, key: &[u8], by: i64) -> Result<Reply, CmdError> {
    let old = get_string(t, key)?;
    let (cur, exp) = match &old {
        Some(m) => (parse_i64(&m.payload)?, m.expire_ms),
        None => (0, 0),
    };
    let n = cur.checked_add(by).ok_or(CmdError::Overflow)?;
    t.put_meta(key, &Meta::string(n.to_string().into_bytes(), exp));
    Ok(Reply::Int(n))
}

fn incr(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    incr_by(t, &a[1], 1)
}

fn decr(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    incr_by(t, &a[1], -1)
}

fn incrby(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let by = parse_i64(&a[2])?;
    incr_by(t, &a[1], by)
}

fn decrby(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let by = parse_i64(&a[2])?;
    let neg = by
        .checked_neg()
        .ok_or_else(|| CmdError::msg("ERR decrement would overflow"))?;
    incr_by(t, &a[1], neg)
}

fn incrbyfloat(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let by = parse_f64(&a[2])?;
    let old = get_string(t, &a[1])?;
    let (cur, exp) = match &old {
        Some(m) => (parse_f64(&m.payload)?, m.expire_ms),
        None => (0.0, 0),
    };
    let n = cur + by;
    if !n.is_finite() {
        return Err(CmdError::msg("ERR increment would produce NaN or Infinity"));
    }
    let s = format_f64(n);
    t.put_meta(&a[1], &Meta::string(s.clone().into_bytes(), exp));
    Ok(Reply::bulk(s))
}

fn too_big() -> CmdError {
    CmdError::msg("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
}

fn append(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let mut m = get_string(t, &a[1])?.unwrap_or_else(|| Meta::string(Vec::new(), 0));
    if m.payload.len() + a[2].len() > MAX_STRING_LEN {
        return Err(too_big());
    }
    m.payload.extend_from_slice(&a[2]);
    t.put_meta(&a[1], &m);
    Ok(Reply::Int(m.payload.len() as i64))
}

fn strlen(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    Ok(Reply::Int(
        get_string(t, &a[1])?.map_or(0, |m| m.payload.len() as i64),
    ))
}

/// Redis 7's GETRANGE index normalization; `None` = empty result.
fn byte_range(start: i64, end: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    if start < 0 && end < 0 && start > end {
        return None;
    }
    let mut s = if start < 0 { len + start } else { start };
    let mut e = if end < 0 { len + end } else { end };
    s = s.max(0);
    e = e.max(0);
    if e >= len {
        e = len - 1;
    }
    if s > e || len == 0 {
        return None;
    }
    Some((s as usize, e as usize))
}

fn getrange(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let (start, end) = (parse_i64(&a[2])?, parse_i64(&a[3])?);
    let Some(m) = get_string(t, &a[1])? else {
        return Ok(Reply::bulk(Bytes::new()));
    };
    Ok(match byte_range(start, end, m.payload.len()) {
        Some((s, e)) => Reply::bulk(m.payload[s..=e].to_vec()),
        None => Reply::bulk(Bytes::new()),
    })
}

fn setrange(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let off = parse_i64(&a[2])?;
    if off < 0 {
        return Err(CmdError::msg("ERR offset is out of range"));
    }
    let off = off as usize;
    let val = &a[3];
    let old = get_string(t, &a[1])?;
    if val.is_empty() {
        return Ok(Reply::Int(old.map_or(0, |m| m.payload.len() as i64)));
    }
    if off + val.len() > MAX_STRING_LEN {
        return Err(too_big());
    }
    let mut m = old.unwrap_or_else(|| Meta::string(Vec::new(), 0));
    if m.payload.len() < off + val.len() {
        m.payload.resize(off + val.len(), 0);
    }
    m.payload[off..off + val.len()].copy_from_slice(val);
    t.put_meta(&a[1], &m);
    Ok(Reply::Int(m.payload.len() as i64))
}

fn bit_offset(b: &[u8]) -> Result<usize, CmdError> {
    let err = || CmdError::msg("ERR bit offset is not an integer or out of range");
    let v = parse_i64(b).map_err(|_| err())?;
    // Redis caps bit offsets at 2^32 (512 MiB strings).
    if !(0..(MAX_STRING_LEN as i64) * 8).contains(&v) {
        return Err(err());
    }
    Ok(v as usize)
}

fn setbit(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let off = bit_offset(&a[2])?;
    let on = match a[3].as_ref() {
        b"1" => true,
        b"0" => false,
        _ => return Err(CmdError::msg("ERR bit is not an integer or out of range")),
    };
    let mut m = get_string(t, &a[1])?.unwrap_or_else(|| Meta::string(Vec::new(), 0));
    let byte = off / 8;
    if m.payload.len() <= byte {
        m.payload.resize(byte + 1, 0);
    }
    let mask = 0x80u8 >> (off % 8);
    let old = m.payload[byte] & mask != 0;
    if on {
        m.payload[byte] |= mask;
    } else {
        m.payload[byte] &= !mask;
    }
    t.put_meta(&a[1], &m);
    Ok(Reply::Int(old as i64))
}

fn getbit(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let off = bit_offset(&a[2])?;
    let Some(m) = get_string(t, &a[1])? else {
        return Ok(Reply::Int(0));
    };
    let bit = m
        .payload
        .get(off / 8)
        .is_some_and(|b| b & (0x80 >> (off % 8)) != 0);
    Ok(Reply::Int(bit as i64))
}

fn bit_at(v: &[u8], i: usize) -> bool {
    v[i / 8] & (0x80 >> (i % 8)) != 0
}

/// Parses the optional `start end [BYTE|BIT]` of BITCOUNT/BITPOS into a
/// bit range `[lo, hi]` (inclusive), `None` = empty.
fn bit_range(
    a: &[Bytes],
    from: usize,
    len_bytes: usize,
    end_optional: bool,
) -> Result<(Option<(usize, usize)>, bool), CmdError> {
    let mut bit_unit = false;
    let n = a.len() - from;
    if n == 0 {
        return Ok(((len_bytes > 0).then(|| (0, len_bytes * 8 - 1)), false));
    }
    if n == 1 && !end_optional {
        return Err(CmdError::Syntax);
    }
    if n > 3 {
        return Err(CmdError::Syntax);
    }
    if n == 3 {
        if is(&a[from + 2], "bit") {
            bit_unit = true;
        } else if !is(&a[from + 2], "byte") {
            return Err(CmdError::Syntax);
        }
    }
    let start = parse_i64(&a[from])?;
    let end_given = n >= 2;
    let end = if end_given {
        parse_i64(&a[from + 1])?
    } else {
        i64::MAX
    };
    let total = if bit_unit { len_bytes * 8 } else { len_bytes };
    let end = if end_given { end } else { total as i64 - 1 };
    let Some((s, e)) = byte_range(start, end, total) else {
        return Ok((None, end_given));
    };
    Ok((
        Some(if bit_unit { (s, e) } else { (s * 8, e * 8 + 7) }),
        end_given,
    ))
}

fn bitcount(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let m = get_string(t, &a[1])?;
    let v = m.map(|m| m.payload).unwrap_or_default();
    let (range, _) = bit_range(a, 2, v.len(), false)?;
    let Some((lo, hi)) = range else {
        return Ok(Reply::Int(0));
    };
    let mut n = 0i64;
    let mut i = lo;
    while i <= hi {
        if i % 8 == 0 && i + 7 <= hi {
            n += v[i / 8].count_ones() as i64;
            i += 8;
        } else {
            n += bit_at(&v, i) as i64;
            i += 1;
        }
    }
    Ok(Reply::Int(n))
}

fn bitpos(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let want = match a[2].as_ref() {
        b"1" => true,
        b"0" => false,
        _ => return Err(CmdError::msg("ERR The bit argument must be 1 or 0.")),
    };
    let m = get_string(t, &a[1])?;
    let Some(m) = m else {
        return Ok(Reply::Int(if want { -1 } else { 0 }));
    };
    let v = m.payload;
    let (range, end_given) = bit_range(a, 3, v.len(), true)?;
    let Some((lo, hi)) = range else {
        return Ok(Reply::Int(-1));
    };
    for i in lo..=hi {
        if bit_at(&v, i) == want {
            return Ok(Reply::Int(i as i64));
        }
    }
    // Looking for a clear bit past an all-ones string with no explicit end:
    // Redis answers the first bit after the string.
    if !want && !end_given {
        return Ok(Reply::Int(((hi / 8) + 1) as i64 * 8));
    }
    Ok(Reply::Int(-1))
}

#[cfg(test)]
mod tests {
    use super::byte_range;

    #[test]
    fn byte_range_matches_redis_getrange() {
        // "This is a string" (16 bytes) examples from the Redis docs.
        assert_eq!(byte_range(0, 3, 16), Some((0, 3)));
        assert_eq!(byte_range(-3, -1, 16), Some((13, 15)));
        assert_eq!(byte_range(0, -1, 16), Some((0, 15)));
        assert_eq!(byte_range(10, 100, 16), Some((10, 15)));
        assert_eq!(byte_range(5, 3, 16), None);
        assert_eq!(byte_range(-1, -5, 16), None);
        assert_eq!(byte_range(0, 0, 0), None);
        assert_eq!(byte_range(-100, 1, 16), Some((0, 1)));
        assert_eq!(byte_range(i64::MIN, i64::MAX, 4), Some((0, 3)));
    }
}
