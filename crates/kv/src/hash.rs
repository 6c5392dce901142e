//! Hash commands. A hash is a metadata record (`size` = field count) plus one
//! `data` sub-key per field: `sub_key(db, key, version, field)` → value.
//! This module is the worked example for adding a collection type (see
//! `HANDOFF.md`).

use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::command::{
    data_spec, format_f64, parse_f64, parse_i64, CommandSpec, DENYOOM, FAST, READONLY, WRITE,
};
use crate::encoding::{KeyType, Meta};
use crate::error::CmdError;
use crate::keyspace::{parse_cursor, parse_scan_opts};
use crate::pattern::glob_match;
use crate::resp::Reply;
use crate::txn::{Rows, Txn};

const fn spec(
    name: &'static str,
    arity: i32,
    flags: u32,
    f: crate::command::DataFn,
    summary: &'static str,
) -> CommandSpec {
    data_spec("hash", name, arity, flags, (1, 1, 1), f, summary)
}

const W: u32 = WRITE | DENYOOM | FAST;
const R: u32 = READONLY;

pub(crate) const COMMANDS: &[CommandSpec] = &[
    spec(
        "hset",
        -4,
        W,
        hset,
        "Creates or modifies the value of a field in a hash.",
    ),
    spec("hmset", -4, W, hmset, "Sets the values of multiple fields."),
    spec(
        "hsetnx",
        4,
        W,
        hsetnx,
        "Sets the value of a field in a hash only when the field doesn't exist.",
    ),
    spec(
        "hget",
        3,
        R | FAST,
        hget,
        "Returns the value of a field in a hash.",
    ),
    spec(
        "hmget",
        -3,
        R | FAST,
        hmget,
        "Returns the values of all fields in a hash.",
    ),
    spec(
        "hdel",
        -3,
        WRITE | FAST,
        hdel,
        "Deletes one or more fields and their values from a hash.",
    ),
    spec(
        "hexists",
        3,
        R | FAST,
        hexists,
        "Determines whether a field exists in a hash.",
    ),
    spec(
        "hlen",
        2,
        R | FAST,
        hlen,
        "Returns the number of fields in a hash.",
    ),
    spec(
        "hstrlen",
        3,
        R | FAST,
        hstrlen,
        "Returns the length of the value of a field.",
    ),
    spec("hkeys", 2, R, hkeys, "Returns all fields in a hash."),
    spec("hvals", 2, R, hvals, "Returns all values in a hash."),
    spec(
        "hgetall",
        2,
        R,
        hgetall,
        "Returns all fields and values in a hash.",
    ),
    spec(
        "hincrby",
        4,
        W,
        hincrby,
        "Increments the integer value of a field in a hash by a number.",
    ),
    spec(
        "hincrbyfloat",
        4,
        W,
        hincrbyfloat,
        "Increments the floating point value of a field by a number.",
    ),
    spec(
        "hrandfield",
        -2,
        R,
        hrandfield,
        "Returns one or more random fields from a hash.",
    ),
    spec(
        "hscan",
        -3,
        R,
        hscan,
        "Iterates over fields and values of a hash.",
    ),
];

fn hash(t: &Txn<'_>, key: &[u8]) -> Result<Option<Meta>, CmdError> {
    t.get_meta_typed(key, KeyType::Hash)
}

/// Sets field/value pairs; returns how many fields were new.
fn set_pairs(t: &mut Txn<'_>, a: &[Bytes]) -> Result<i64, CmdError> {
    if !a.len().is_multiple_of(2) {
        return Err(CmdError::Arity(
            String::from_utf8_lossy(&a[0]).to_ascii_lowercase(),
        ));
    }
    let key = &a[1];
    let mut m = t.get_or_new_collection(key, KeyType::Hash)?;
    let mut added = 0;
    for fv in a[2..].chunks(2) {
        if t.get_sub(key, m.version, &fv[0])?.is_none() {
            added += 1;
            m.size += 1;
        }
        t.put_sub(key, m.version, &fv[0], fv[1].to_vec());
    }
    if added > 0 {
        t.put_meta(key, &m);
    }
    Ok(added)
}

fn hset(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    Ok(Reply::Int(set_pairs(t, a)?))
}

fn hmset(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    set_pairs(t, a)?;
    Ok(Reply::ok())
}

fn hsetnx(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let mut m = t.get_or_new_collection(&a[1], KeyType::Hash)?;
    if t.get_sub(&a[1], m.version, &a[2])?.is_some() {
        return Ok(Reply::Int(0));
    }
    m.size += 1;
    t.put_sub(&a[1], m.version, &a[2], a[3].to_vec());
    t.put_meta(&a[1], &m);
    Ok(Reply::Int(1))
}

fn hget(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let Some(m) = hash(t, &a[1])? else {
        return Ok(Reply::Nil);
    };
    Ok(Reply::opt_bulk(t.get_sub(&a[1], m.version, &a[2])?))
}

fn hmget(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let m = hash(t, &a[1])?;
    let mut out = Vec::with_capacity(a.len() - 2);
    for f in &a[2..] {
        out.push(match &m {
            Some(m) => Reply::opt_bulk(t.get_sub(&a[1], m.version, f)?),
            None => Reply::Nil,
        });
    }
    Ok(Reply::Array(out))
}

fn hdel(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let Some(mut m) = hash(t, &a[1])? else {
        return Ok(Reply::Int(0));
    };
    let mut n = 0;
    for f in &a[2..] {
        if t.get_sub(&a[1], m.version, f)?.is_some() {
            t.delete_sub(&a[1], m.version, f);
            n += 1;
        }
    }
    if n > 0 {
        m.size = m.size.saturating_sub(n);
        t.put_or_delete_collection(&a[1], &m);
    }
    Ok(Reply::Int(n as i64))
}

fn hexists(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let Some(m) = hash(t, &a[1])? else {
        return Ok(Reply::Int(0));
    };
    Ok(Reply::Int(
        t.get_sub(&a[1], m.version, &a[2])?.is_some() as i64
    ))
}

fn hlen(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    Ok(Reply::Int(hash(t, &a[1])?.map_or(0, |m| m.size as i64)))
}

fn hstrlen(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let Some(m) = hash(t, &a[1])? else {
        return Ok(Reply::Int(0));
    };
    Ok(Reply::Int(
        t.get_sub(&a[1], m.version, &a[2])?
            .map_or(0, |v| v.len() as i64),
    ))
}

/// All `(field, value)` pairs of the hash at `key`.
fn all(t: &Txn<'_>, key: &[u8]) -> Result<Rows, CmdError> {
    match hash(t, key)? {
        Some(m) => t.scan_subs(key, m.version, None, usize::MAX, false),
        None => Ok(Vec::new()),
    }
}

fn hkeys(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    Ok(Reply::Array(
        all(t, &a[1])?
            .into_iter()
            .map(|(f, _)| Reply::bulk(f))
            .collect(),
    ))
}

fn hvals(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    Ok(Reply::Array(
        all(t, &a[1])?
            .into_iter()
            .map(|(_, v)| Reply::bulk(v))
            .collect(),
    ))
}

fn hgetall(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let mut out = Vec::new();
    for (f, v) in all(t, &a[1])? {
        out.push(Reply::bulk(f));
        out.push(Reply::bulk(v));
    }
    Ok(Reply::Array(out))
}

fn hincrby(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let by = parse_i64(&a[3])?;
    let mut m = t.get_or_new_collection(&a[1], KeyType::Hash)?;
    let cur = match t.get_sub(&a[1], m.version, &a[2])? {
        Some(v) => parse_i64(&v).map_err(|_| CmdError::msg("ERR hash value is not an integer"))?,
        None => {
            m.size += 1;
            t.put_meta(&a[1], &m);
            0
        }
    };
    let n = cur.checked_add(by).ok_or(CmdError::Overflow)?;
    t.put_sub(&a[1], m.version, &a[2], n.to_string().into_bytes());
    Ok(Reply::Int(n))
}

fn hincrbyfloat(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let by = parse_f64(&a[3])?;
    let mut m = t.get_or_new_collection(&a[1], KeyType::Hash)?;
    let old = t.get_sub(&a[1], m.version, &a[2])?;
    let cur = match &old {
        Some(v) => parse_f64(v).map_err(|_| CmdError::msg("ERR hash value is not a float"))?,
        None => 0.0,
    };
    let n = cur + by;
    if !n.is_finite() {
        return Err(CmdError::msg("ERR increment would produce NaN or Infinity"));
    }
    if old.is_none() {
        m.size += 1;
        t.put_meta(&a[1], &m);
    }
    let s = format_f64(n);
    t.put_sub(&a[1], m.version, &a[2], s.clone().into_bytes());
    Ok(Reply::bulk(s))
}

fn hrandfield(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let with_values = match a.len() {
        2 | 3 => false,
        4 if crate::command::is(&a[3], "withvalues") => true,
        _ => return Err(CmdError::Syntax),
    };
    if a.len() == 2 {
        let fields = all(t, &a[1])?;
        return Ok(match fields.choose(&mut rand::thread_rng()) {
            Some((f, _)) => Reply::bulk(f.clone()),
            None => Reply::Nil,
        });
    }
    let count = parse_i64(&a[2])?;
    if !(-(i64::MAX / 2)..=i64::MAX / 2).contains(&count) {
        return Err(CmdError::msg("ERR value is out of range"));
    }
    let fields = all(t, &a[1])?;
    let mut rng = rand::thread_rng();
    let picked: Vec<&(Vec<u8>, Vec<u8>)> = if fields.is_empty() || count == 0 {
        Vec::new()
    } else if count > 0 {
        let n = (count as usize).min(fields.len());
        fields.choose_multiple(&mut rng, n).collect()
    } else {
        (0..count.unsigned_abs())
            .map(|_| &fields[rng.gen_range(0..fields.len())])
            .collect()
    };
    let mut out = Vec::new();
    for (f, v) in picked {
        out.push(Reply::bulk(f.clone()));
        if with_values {
            out.push(Reply::bulk(v.clone()));
        }
    }
    Ok(Reply::Array(out))
}

fn hscan(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let cursor = parse_cursor(&a[2])?;
    let o = parse_scan_opts(a, 3, false, true)?;
    let Some(m) = hash(t, &a[1])? else {
        return Ok(Reply::Array(vec![Reply::bulk("0"), Reply::Array(vec![])]));
    };
    // The resume point is the next field, tagged with the hash's version
    // so a cursor from an older generation restarts.
    let from = t.engine().cursors().resume_member(cursor, m.version);
    let rows = t.scan_subs(&a[1], m.version, from.as_deref(), o.count + 1, false)?;
    let more = rows.len() > o.count;
    let mut out = Vec::new();
    for (f, v) in rows.iter().take(o.count) {
        if let Some(p) = &o.pattern {
            if !glob_match(p, f) {
                continue;
            }
        }
        out.push(Reply::bulk(f.clone()));
        if !o.novalues {
            out.push(Reply::bulk(v.clone()));
        }
    }
    let next = if more {
        t.engine()
            .cursors()
            .save_member(m.version, &rows[o.count].0)
    } else {
        0
    };
    Ok(Reply::Array(vec![
        Reply::bulk(next.to_string()),
        Reply::Array(out),
    ]))
}
