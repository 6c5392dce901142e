//! Set commands. A set is a metadata record (`size` = member count) plus one
//! `data` sub-key per member with an empty value:
//! `sub_key(db, key, version, member)` → `""`.
//!
//! Costs: SADD/SREM/SISMEMBER are O(1) row operations per member.
//! Intersections walk the smallest set in pages and probe the others by
//! point lookups. SPOP/SRANDMEMBER and unions/differences read whole sets
//! (O(n) in the set size, like SMEMBERS).

use std::collections::BTreeSet;

use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::command::{data_spec, is, parse_i64, CommandSpec, DENYOOM, FAST, READONLY, WRITE};
use crate::encoding::{KeyType, Meta};
use crate::error::CmdError;
use crate::keyspace::{parse_cursor, parse_scan_opts};
use crate::pattern::glob_match;
use crate::resp::Reply;
use crate::txn::Txn;

const fn spec(
    name: &'static str,
    arity: i32,
    flags: u32,
    keys: (i32, i32),
    f: crate::command::DataFn,
    summary: &'static str,
) -> CommandSpec {
    data_spec("set", name, arity, flags, (keys.0, keys.1, 1), f, summary)
}

const W: u32 = WRITE | DENYOOM | FAST;
const R: u32 = READONLY;
const ONE: (i32, i32) = (1, 1);
const ALL: (i32, i32) = (1, -1);

pub(crate) const COMMANDS: &[CommandSpec] = &[
    spec("sadd", -3, W, ONE, sadd, "Adds one or more members to a set. Creates the key if it doesn't exist."),
    spec("srem", -3, WRITE | FAST, ONE, srem, "Removes one or more members from a set. Deletes the set if the last member was removed."),
    spec("sismember", 3, R | FAST, ONE, sismember, "Determines whether a member belongs to a set."),
    spec("smismember", -3, R | FAST, ONE, smismember, "Determines whether multiple members belong to a set."),
    spec("smembers", 2, R, ONE, smembers, "Returns all members of a set."),
    spec("scard", 2, R | FAST, ONE, scard, "Returns the number of members in a set."),
    spec("spop", -2, WRITE | FAST, ONE, spop, "Returns one or more random members from a set after removing them. Deletes the set if the last member was popped."),
    spec("srandmember", -2, R, ONE, srandmember, "Get one or multiple random members from a set"),
    spec("smove", 4, WRITE | FAST, (1, 2), smove, "Moves a member from one set to another."),
    spec("sinter", -2, R, ALL, sinter, "Returns the intersect of multiple sets."),
    spec("sunion", -2, R, ALL, sunion, "Returns the union of multiple sets."),
    spec("sdiff", -2, R, ALL, sdiff, "Returns the difference of multiple sets."),
    spec("sinterstore", -3, WRITE | DENYOOM, ALL, sinterstore, "Stores the intersect of multiple sets in a key."),
    spec("sunionstore", -3, WRITE | DENYOOM, ALL, sunionstore, "Stores the union of multiple sets in a key."),
    spec("sdiffstore", -3, WRITE | DENYOOM, ALL, sdiffstore, "Stores the difference of multiple sets in a key."),
    spec("sintercard", -3, R, (2, 2), sintercard, "Returns the number of members of the intersect of multiple sets."),
    spec("sscan", -3, R, ONE, sscan, "Iterates over members of a set."),
];

/// Rows fetched per page when walking a set.
const PAGE: usize = 512;

fn set(t: &Txn<'_>, key: &[u8]) -> Result<Option<Meta>, CmdError> {
    t.get_meta_typed(key, KeyType::Set)
}

/// Every member of the set at `key` (empty when absent).
fn members(t: &Txn<'_>, key: &[u8]) -> Result<Vec<Vec<u8>>, CmdError> {
    match set(t, key)? {
        Some(m) => Ok(t
            .scan_subs(key, m.version, None, usize::MAX, false)?
            .into_iter()
            .map(|(k, _)| k)
            .collect()),
        None => Ok(Vec::new()),
    }
}

fn sadd(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let key = &a[1];
    let mut m = t.get_or_new_collection(key, KeyType::Set)?;
    let mut added = 0;
    for mem in &a[2..] {
        if t.get_sub(key, m.version, mem)?.is_none() {
            t.put_sub(key, m.version, mem, Vec::new());
            m.size += 1;
            added += 1;
        }
    }
    if added > 0 {
        t.put_meta(key, &m);
    }
    Ok(Reply::Int(added))
}

fn srem(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let key = &a[1];
    let Some(mut m) = set(t, key)? else {
        return Ok(Reply::Int(0));
    };
    let mut n = 0;
    for mem in &a[2..] {
        if t.get_sub(key, m.version, mem)?.is_some() {
            t.delete_sub(key, m.version, mem);
            n += 1;
        }
    }
    if n > 0 {
        m.size = m.size.saturating_sub(n);
        t.put_or_delete_collection(key, &m);
    }
    Ok(Reply::Int(n as i64))
}

fn sismember(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let Some(m) = set(t, &a[1])? else {
        return Ok(Reply::Int(0));
    };
    Ok(Reply::Int(
        t.get_sub(&a[1], m.version, &a[2])?.is_some() as i64
    ))
}

fn smismember(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let m = set(t, &a[1])?;
    let mut out = Vec::with_capacity(a.len() - 2);
    for mem in &a[2..] {
        let hit = match &m {
            Some(m) => t.get_sub(&a[1], m.version, mem)?.is_some(),
            None => false,
        };
        out.push(Reply::Int(hit as i64));
    }
    Ok(Reply::Array(out))
}

fn smembers(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    Ok(Reply::Array(
        members(t, &a[1])?.into_iter().map(Reply::bulk).collect(),
    ))
}

fn scard(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    Ok(Reply::Int(set(t, &a[1])?.map_or(0, |m| m.size as i64)))
}

fn spop(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    if a.len() > 3 {
        return Err(CmdError::Syntax);
    }
    let count = match a.get(2) {
        Some(c) => {
            let c = parse_i64(c)
                .map_err(|_| CmdError::msg("ERR value is out of range, must be positive"))?;
            if c < 0 {
                return Err(CmdError::msg("ERR value is out of range, must be positive"));
            }
            Some(c as usize)
        }
        None => None,
    };
    let key = &a[1];
    let Some(mut m) = set(t, key)? else {
        return Ok(if count.is_some() {
            Reply::Array(vec![])
        } else {
            Reply::Nil
        });
    };
    let all = members(t, key)?;
    let n = count.unwrap_or(1).min(all.len());
    let picked: Vec<Vec<u8>> = all
        .choose_multiple(&mut rand::thread_rng(), n)
        .cloned()
        .collect();
    for p in &picked {
        t.delete_sub(key, m.version, p);
    }
    if !picked.is_empty() {
        m.size = m.size.saturating_sub(picked.len() as u64);
        t.put_or_delete_collection(key, &m);
    }
    Ok(match count {
        None => Reply::opt_bulk(picked.into_iter().next()),
        Some(_) => Reply::Array(picked.into_iter().map(Reply::bulk).collect()),
    })
}

fn srandmember(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    if a.len() > 3 {
        return Err(CmdError::Syntax);
    }
    let count = match a.get(2) {
        Some(c) => {
            let c = parse_i64(c)?;
            if !(-(i64::MAX / 2)..=i64::MAX / 2).contains(&c) {
                return Err(CmdError::msg("ERR value is out of range"));
            }
            Some(c)
        }
        None => None,
    };
    let all = members(t, &a[1])?;
    let mut rng = rand::thread_rng();
    let Some(count) = count else {
        return Ok(Reply::opt_bulk(all.choose(&mut rng).cloned()));
    };
    if all.is_empty() || count == 0 {
        return Ok(Reply::Array(vec![]));
    }
    let out: Vec<Reply> = if count > 0 {
        let n = (count as usize).min(all.len());
        all.choose_multiple(&mut rng, n)
            .map(|m| Reply::bulk(m.clone()))
            .collect()
    } else {
        (0..count.unsigned_abs())
            .map(|_| Reply::bulk(all[rng.gen_range(0..all.len())].clone()))
            .collect()
    };
    Ok(Reply::Array(out))
}

fn smove(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let (src, dst, mem) = (&a[1], &a[2], &a[3]);
    let s = set(t, src)?;
    let d = set(t, dst)?;
    let Some(mut s) = s else {
        return Ok(Reply::Int(0));
    };
    if t.get_sub(src, s.version, mem)?.is_none() {
        return Ok(Reply::Int(0));
    }
    if src == dst {
        return Ok(Reply::Int(1));
    }
    t.delete_sub(src, s.version, mem);
    s.size = s.size.saturating_sub(1);
    t.put_or_delete_collection(src, &s);
    let mut d = match d {
        Some(d) => d,
        None => t.get_or_new_collection(dst, KeyType::Set)?,
    };
    if t.get_sub(dst, d.version, mem)?.is_none() {
        t.put_sub(dst, d.version, mem, Vec::new());
        d.size += 1;
        t.put_meta(dst, &d);
    }
    Ok(Reply::Int(1))
}

/// The intersection of the sets at `keys`, stopping after `limit` members.
/// Type-checks every key first (WRONGTYPE wins over an empty result).
fn inter(t: &Txn<'_>, keys: &[Bytes], limit: usize) -> Result<Vec<Vec<u8>>, CmdError> {
    let mut metas = Vec::with_capacity(keys.len());
    for k in keys {
        metas.push(set(t, k)?);
    }
    let mut sets: Vec<(&Bytes, Meta)> = Vec::with_capacity(keys.len());
    for (k, m) in keys.iter().zip(metas) {
        match m {
            Some(m) => sets.push((k, m)),
            None => return Ok(Vec::new()),
        }
    }
    // Walk the smallest set, probe the others.
    sets.sort_by_key(|(_, m)| m.size);
    let (first, rest) = sets.split_first().expect("at least one key by arity");
    let mut out = Vec::new();
    let mut from: Option<Vec<u8>> = None;
    'pages: loop {
        let rows = t.scan_subs(first.0, first.1.version, from.as_deref(), PAGE + 1, false)?;
        let more = rows.len() > PAGE;
        for (mem, _) in rows.iter().take(PAGE) {
            let mut in_all = true;
            for (k, m) in rest {
                if t.get_sub(k, m.version, mem)?.is_none() {
                    in_all = false;
                    break;
                }
            }
            if in_all {
                out.push(mem.clone());
                if out.len() >= limit {
                    break 'pages;
                }
            }
        }
        if !more {
            break;
        }
        from = Some(rows[PAGE].0.clone());
    }
    Ok(out)
}

fn union(t: &Txn<'_>, keys: &[Bytes]) -> Result<Vec<Vec<u8>>, CmdError> {
    let mut acc = BTreeSet::new();
    for k in keys {
        acc.extend(members(t, k)?);
    }
    Ok(acc.into_iter().collect())
}

fn diff(t: &Txn<'_>, keys: &[Bytes]) -> Result<Vec<Vec<u8>>, CmdError> {
    for k in keys {
        set(t, k)?;
    }
    let mut acc: BTreeSet<Vec<u8>> = members(t, &keys[0])?.into_iter().collect();
    for k in &keys[1..] {
        if acc.is_empty() {
            break;
        }
        for m in members(t, k)? {
            acc.remove(&m);
        }
    }
    Ok(acc.into_iter().collect())
}

fn reply_members(v: Vec<Vec<u8>>) -> Reply {
    Reply::Array(v.into_iter().map(Reply::bulk).collect())
}

fn sinter(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    Ok(reply_members(inter(t, &a[1..], usize::MAX)?))
}

fn sunion(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    Ok(reply_members(union(t, &a[1..])?))
}

fn sdiff(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    Ok(reply_members(diff(t, &a[1..])?))
}

/// Replaces `dst` (of any type) with a set of `members`; deletes it when
/// empty. Returns the new cardinality.
///
/// # Errors
/// RocksDB failure reading `dst`.
pub(crate) fn store_set(
    t: &mut Txn<'_>,
    dst: &[u8],
    members: Vec<Vec<u8>>,
) -> Result<i64, CmdError> {
    if members.is_empty() {
        if t.get_meta(dst)?.is_some() {
            t.delete_key(dst);
        }
        return Ok(0);
    }
    // A fresh version: whatever `dst` held becomes stale and is reclaimed
    // by the compaction filter.
    let mut m = Meta::collection(KeyType::Set, t.engine().next_version());
    for mem in &members {
        t.put_sub(dst, m.version, mem, Vec::new());
    }
    m.size = members.len() as u64;
    t.put_meta(dst, &m);
    Ok(m.size as i64)
}

fn sinterstore(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let r = inter(t, &a[2..], usize::MAX)?;
    Ok(Reply::Int(store_set(t, &a[1], r)?))
}

fn sunionstore(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let r = union(t, &a[2..])?;
    Ok(Reply::Int(store_set(t, &a[1], r)?))
}

fn sdiffstore(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let r = diff(t, &a[2..])?;
    Ok(Reply::Int(store_set(t, &a[1], r)?))
}

/// Parses `numkeys key... [rest]` as SINTERCARD/ZUNIONSTORE-style
/// commands take it: returns the keys and the index after them.
///
/// # Errors
/// Redis's numkeys errors.
pub(crate) fn numkeys(a: &[Bytes], at: usize, zero_msg: &str) -> Result<(usize, usize), CmdError> {
    let n = parse_i64(&a[at]).map_err(|_| CmdError::msg(zero_msg))?;
    if n <= 0 {
        return Err(CmdError::msg(zero_msg));
    }
    let n = n as usize;
    if n > a.len() - at - 1 {
        return Err(CmdError::msg(
            "ERR Number of keys can't be greater than number of args",
        ));
    }
    Ok((at + 1, at + 1 + n))
}

fn sintercard(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let (from, to) = numkeys(a, 1, "ERR numkeys should be greater than 0")?;
    let mut limit = usize::MAX;
    let mut i = to;
    while i < a.len() {
        if is(&a[i], "limit") && i + 1 < a.len() {
            let l = parse_i64(&a[i + 1])?;
            if l < 0 {
                return Err(CmdError::msg("ERR LIMIT can't be negative"));
            }
            if l > 0 {
                limit = l as usize;
            }
            i += 2;
        } else {
            return Err(CmdError::Syntax);
        }
    }
    Ok(Reply::Int(inter(t, &a[from..to], limit)?.len() as i64))
}

fn sscan(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let cursor = parse_cursor(&a[2])?;
    let o = parse_scan_opts(a, 3, false, false)?;
    let Some(m) = set(t, &a[1])? else {
        return Ok(Reply::Array(vec![Reply::bulk("0"), Reply::Array(vec![])]));
    };
    // Resume bytes: the set's version then the next member, so a cursor
    // from an older generation of the key restarts.
    let from = t.engine().cursors().resume_member(cursor, m.version);
    let rows = t.scan_subs(&a[1], m.version, from.as_deref(), o.count + 1, false)?;
    let more = rows.len() > o.count;
    let out: Vec<Reply> = rows
        .iter()
        .take(o.count)
        .filter(|(mem, _)| o.pattern.as_ref().is_none_or(|p| glob_match(p, mem)))
        .map(|(mem, _)| Reply::bulk(mem.clone()))
        .collect();
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
