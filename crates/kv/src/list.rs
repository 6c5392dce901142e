//! List commands. A list is a metadata record whose payload holds
//! `head u64 BE | tail u64 BE` plus one `data` sub-key per element:
//! `sub_key(db, key, version, index u64 BE)` → element, for
//! `head <= index < tail` (`size = tail - head`). A new list starts at
//! `head = tail = 2^63` so pushes on either side never wrap.
//!
//! Costs: push/pop/LINDEX/LSET are O(1) row operations; LRANGE reads only
//! its range (paged). LINSERT and LREM in the middle rewrite the elements
//! on one side of the change (LINSERT shifts the shorter side, LREM
//! compacts everything after the first removed element): O(n) rows in the
//! worst case. LTRIM deletes the trimmed rows one by one (O(removed)).

use bytes::Bytes;

use crate::command::{data_spec, is, parse_i64, CommandSpec, DENYOOM, FAST, READONLY, WRITE};
use crate::encoding::{KeyType, Meta};
use crate::error::CmdError;
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
    data_spec("list", name, arity, flags, (keys.0, keys.1, 1), f, summary)
}

const W: u32 = WRITE | DENYOOM | FAST;
const R: u32 = READONLY;
const ONE: (i32, i32) = (1, 1);

pub(crate) const COMMANDS: &[CommandSpec] = &[
    spec("lpush", -3, W, ONE, lpush, "Prepends one or more elements to a list. Creates the key if it doesn't exist."),
    spec("rpush", -3, W, ONE, rpush, "Appends one or more elements to a list. Creates the key if it doesn't exist."),
    spec("lpushx", -3, W, ONE, lpushx, "Prepends one or more elements to a list only when the list exists."),
    spec("rpushx", -3, W, ONE, rpushx, "Appends an element to a list only when the list exists."),
    spec("lpop", -2, WRITE | FAST, ONE, lpop, "Returns the first elements in a list after removing it. Deletes the list if the last element was popped."),
    spec("rpop", -2, WRITE | FAST, ONE, rpop, "Returns and removes the last elements of the list. Deletes the list if the last element was popped."),
    spec("llen", 2, R | FAST, ONE, llen, "Returns the length of a list."),
    spec("lrange", 4, R, ONE, lrange, "Returns a range of elements from a list."),
    spec("lindex", 3, R, ONE, lindex, "Returns an element from a list by its index."),
    spec("lset", 4, WRITE | DENYOOM, ONE, lset, "Sets the value of an element in a list by its index."),
    spec("lrem", 4, WRITE, ONE, lrem, "Removes elements from a list. Deletes the list if the last element was removed."),
    spec("ltrim", 4, WRITE, ONE, ltrim, "Removes elements from both ends a list. Deletes the list if all elements were trimmed."),
    spec("linsert", 5, WRITE | DENYOOM, ONE, linsert, "Inserts an element before or after another element in a list."),
    spec("lpos", -3, R, ONE, lpos, "Returns the index of matching elements in a list."),
    spec("lmove", 5, WRITE | DENYOOM, (1, 2), lmove, "Returns an element after popping it from one list and pushing it to another. Deletes the list if the last element was moved."),
    spec("rpoplpush", 3, WRITE | DENYOOM, (1, 2), rpoplpush, "Returns the last element of a list after removing and pushing it to another list. Deletes the list if the last element was popped."),
];

/// Rows fetched per iterator page when walking a list.
const PAGE: usize = 512;
const ORIGIN: u64 = 1 << 63;

/// A list's metadata with its decoded head/tail.
struct List {
    m: Meta,
    head: u64,
    tail: u64,
}

impl List {
    fn new(m: Meta) -> Result<List, CmdError> {
        if m.payload.is_empty() {
            return Ok(List {
                m,
                head: ORIGIN,
                tail: ORIGIN,
            });
        }
        let p = &m.payload;
        let head = p
            .get(0..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes);
        let tail = p
            .get(8..16)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes);
        match (head, tail) {
            (Some(head), Some(tail)) if head <= tail => Ok(List { m, head, tail }),
            _ => Err(CmdError::Corrupt(crate::error::DecodeError::Truncated)),
        }
    }

    fn len(&self) -> u64 {
        self.tail - self.head
    }

    /// Writes the record back (or deletes the key when empty).
    fn store(&mut self, t: &mut Txn<'_>, key: &[u8]) {
        self.m.size = self.len();
        let mut p = Vec::with_capacity(16);
        p.extend_from_slice(&self.head.to_be_bytes());
        p.extend_from_slice(&self.tail.to_be_bytes());
        self.m.payload = p;
        t.put_or_delete_collection(key, &self.m);
    }

    fn get(&self, t: &Txn<'_>, key: &[u8], i: u64) -> Result<Option<Vec<u8>>, CmdError> {
        t.get_sub(key, self.m.version, &(self.head + i).to_be_bytes())
    }

    fn set(&self, t: &mut Txn<'_>, key: &[u8], i: u64, v: Vec<u8>) {
        t.put_sub(key, self.m.version, &(self.head + i).to_be_bytes(), v);
    }

    fn push(&mut self, t: &mut Txn<'_>, key: &[u8], v: Vec<u8>, left: bool) {
        let idx = if left {
            self.head -= 1;
            self.head
        } else {
            self.tail += 1;
            self.tail - 1
        };
        t.put_sub(key, self.m.version, &idx.to_be_bytes(), v);
    }

    fn pop(
        &mut self,
        t: &mut Txn<'_>,
        key: &[u8],
        left: bool,
    ) -> Result<Option<Vec<u8>>, CmdError> {
        if self.len() == 0 {
            return Ok(None);
        }
        let idx = if left { self.head } else { self.tail - 1 };
        let v = t.get_sub(key, self.m.version, &idx.to_be_bytes())?;
        t.delete_sub(key, self.m.version, &idx.to_be_bytes());
        if left {
            self.head += 1;
        } else {
            self.tail -= 1;
        }
        // A hole inside [head, tail) is corruption; report, don't guess.
        v.map(Some)
            .ok_or(CmdError::Corrupt(crate::error::DecodeError::Truncated))
    }

    /// Elements `from..to` (positions, `to` exclusive), read in pages.
    fn range(&self, t: &Txn<'_>, key: &[u8], from: u64, to: u64) -> Result<Vec<Vec<u8>>, CmdError> {
        let mut out = Vec::new();
        let mut pos = from;
        while pos < to {
            let want = ((to - pos) as usize).min(PAGE);
            let rows = t.scan_subs(
                key,
                self.m.version,
                Some(&(self.head + pos).to_be_bytes()),
                want,
                false,
            )?;
            if rows.is_empty() {
                break;
            }
            pos += rows.len() as u64;
            out.extend(rows.into_iter().map(|(_, v)| v));
        }
        Ok(out)
    }

    /// Calls `f(position, element)` from the head (or from the tail when
    /// `reverse`) until it returns `false`, paging through the rows.
    fn walk(
        &self,
        t: &Txn<'_>,
        key: &[u8],
        reverse: bool,
        mut f: impl FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), CmdError> {
        let mut next: Option<u64> = Some(if reverse {
            self.tail.saturating_sub(1)
        } else {
            self.head
        });
        while let Some(cur) = next {
            if self.len() == 0 || cur < self.head || cur >= self.tail {
                break;
            }
            let rows = t.scan_subs(key, self.m.version, Some(&cur.to_be_bytes()), PAGE, reverse)?;
            if rows.is_empty() {
                break;
            }
            next = None;
            for (k, v) in &rows {
                let idx = u64::from_be_bytes(
                    k.as_slice()
                        .try_into()
                        .map_err(|_| CmdError::Corrupt(crate::error::DecodeError::Truncated))?,
                );
                if idx < self.head || idx >= self.tail {
                    return Ok(());
                }
                if !f(idx - self.head, v) {
                    return Ok(());
                }
                next = if reverse {
                    idx.checked_sub(1)
                } else {
                    Some(idx + 1)
                };
            }
        }
        Ok(())
    }
}

fn list(t: &Txn<'_>, key: &[u8]) -> Result<Option<List>, CmdError> {
    t.get_meta_typed(key, KeyType::List)?
        .map(List::new)
        .transpose()
}

fn list_or_new(t: &Txn<'_>, key: &[u8]) -> Result<List, CmdError> {
    List::new(t.get_or_new_collection(key, KeyType::List)?)
}

/// Normalizes a Redis start/stop pair against `len` into `start..end`
/// positions (`None`: empty), as LRANGE/LTRIM/ZRANGE do.
pub(crate) fn clamp_range(start: i64, stop: i64, len: u64) -> Option<(u64, u64)> {
    let len = len as i64;
    let mut s = if start < 0 { len + start } else { start };
    let mut e = if stop < 0 { len + stop } else { stop };
    if s < 0 {
        s = 0;
    }
    if s > e || s >= len {
        return None;
    }
    if e >= len {
        e = len - 1;
    }
    Some((s as u64, e as u64 + 1))
}

fn push_generic(
    t: &mut Txn<'_>,
    a: &[Bytes],
    left: bool,
    only_existing: bool,
) -> Result<Reply, CmdError> {
    let key = &a[1];
    let mut l = match list(t, key)? {
        Some(l) => l,
        None if only_existing => return Ok(Reply::Int(0)),
        None => list_or_new(t, key)?,
    };
    for v in &a[2..] {
        l.push(t, key, v.to_vec(), left);
    }
    l.store(t, key);
    Ok(Reply::Int(l.len() as i64))
}

fn lpush(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    push_generic(t, a, true, false)
}

fn rpush(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    push_generic(t, a, false, false)
}

fn lpushx(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    push_generic(t, a, true, true)
}

fn rpushx(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    push_generic(t, a, false, true)
}

fn pop_generic(t: &mut Txn<'_>, a: &[Bytes], left: bool) -> Result<Reply, CmdError> {
    if a.len() > 3 {
        return Err(CmdError::Arity(
            String::from_utf8_lossy(&a[0]).to_ascii_lowercase(),
        ));
    }
    let count = match a.get(2) {
        Some(c) => {
            let c = parse_i64(c)
                .map_err(|_| CmdError::msg("ERR value is out of range, must be positive"))?;
            if c < 0 {
                return Err(CmdError::msg("ERR value is out of range, must be positive"));
            }
            Some(c as u64)
        }
        None => None,
    };
    let key = &a[1];
    let Some(mut l) = list(t, key)? else {
        return Ok(if count.is_some() {
            Reply::NilArray
        } else {
            Reply::Nil
        });
    };
    let Some(count) = count else {
        let v = l.pop(t, key, left)?;
        l.store(t, key);
        return Ok(Reply::opt_bulk(v));
    };
    let n = count.min(l.len());
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        if let Some(v) = l.pop(t, key, left)? {
            out.push(Reply::bulk(v));
        }
    }
    if n > 0 {
        l.store(t, key);
    }
    Ok(Reply::Array(out))
}

fn lpop(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    pop_generic(t, a, true)
}

fn rpop(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    pop_generic(t, a, false)
}

fn llen(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    Ok(Reply::Int(list(t, &a[1])?.map_or(0, |l| l.len() as i64)))
}

fn lrange(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let start = parse_i64(&a[2])?;
    let stop = parse_i64(&a[3])?;
    let Some(l) = list(t, &a[1])? else {
        return Ok(Reply::Array(vec![]));
    };
    let Some((s, e)) = clamp_range(start, stop, l.len()) else {
        return Ok(Reply::Array(vec![]));
    };
    Ok(Reply::Array(
        l.range(t, &a[1], s, e)?
            .into_iter()
            .map(Reply::bulk)
            .collect(),
    ))
}

/// A Redis index (negative from the end) as a position, if inside.
fn position(index: i64, len: u64) -> Option<u64> {
    let i = if index < 0 { len as i64 + index } else { index };
    (i >= 0 && (i as u64) < len).then_some(i as u64)
}

fn lindex(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let index = parse_i64(&a[2])?;
    let Some(l) = list(t, &a[1])? else {
        return Ok(Reply::Nil);
    };
    match position(index, l.len()) {
        Some(p) => Ok(Reply::opt_bulk(l.get(t, &a[1], p)?)),
        None => Ok(Reply::Nil),
    }
}

fn lset(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let index = parse_i64(&a[2])?;
    let l = list(t, &a[1])?.ok_or(CmdError::NoSuchKey)?;
    let p = position(index, l.len()).ok_or_else(|| CmdError::msg("ERR index out of range"))?;
    l.set(t, &a[1], p, a[3].to_vec());
    Ok(Reply::ok())
}

/// Rewrites the list from position `from` on with `tail_elems`, deleting
/// rows that fall off the end. The cost of LREM/LINSERT in the middle.
fn rewrite_from(t: &mut Txn<'_>, key: &[u8], l: &mut List, from: u64, tail_elems: Vec<Vec<u8>>) {
    let old_tail = l.tail;
    l.tail = l.head + from + tail_elems.len() as u64;
    for (i, v) in tail_elems.into_iter().enumerate() {
        l.set(t, key, from + i as u64, v);
    }
    for idx in l.tail..old_tail {
        t.delete_sub(key, l.m.version, &idx.to_be_bytes());
    }
}

fn lrem(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let count = parse_i64(&a[2])?;
    let key = &a[1];
    let Some(mut l) = list(t, key)? else {
        return Ok(Reply::Int(0));
    };
    let target = &a[3][..];
    let limit = if count == 0 {
        u64::MAX
    } else {
        count.unsigned_abs()
    };
    // Positions to remove, found from the requested side.
    let mut hits = Vec::new();
    l.walk(t, key, count < 0, |pos, v| {
        if v == target {
            hits.push(pos);
        }
        (hits.len() as u64) < limit
    })?;
    if hits.is_empty() {
        return Ok(Reply::Int(0));
    }
    hits.sort_unstable();
    let first = hits[0];
    let survivors: Vec<Vec<u8>> = l
        .range(t, key, first, l.len())?
        .into_iter()
        .enumerate()
        .filter(|(i, _)| hits.binary_search(&(first + *i as u64)).is_err())
        .map(|(_, v)| v)
        .collect();
    rewrite_from(t, key, &mut l, first, survivors);
    l.store(t, key);
    Ok(Reply::Int(hits.len() as i64))
}

fn ltrim(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let start = parse_i64(&a[2])?;
    let stop = parse_i64(&a[3])?;
    let key = &a[1];
    let Some(mut l) = list(t, key)? else {
        return Ok(Reply::ok());
    };
    let (s, e) = clamp_range(start, stop, l.len()).unwrap_or((0, 0));
    let (new_head, new_tail) = (l.head + s, l.head + e);
    for idx in (l.head..new_head).chain(new_tail.max(new_head)..l.tail) {
        t.delete_sub(key, l.m.version, &idx.to_be_bytes());
    }
    if e <= s {
        l.head = l.tail;
    } else {
        l.head = new_head;
        l.tail = new_tail;
    }
    l.store(t, key);
    Ok(Reply::ok())
}

fn linsert(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let before = if is(&a[2], "before") {
        true
    } else if is(&a[2], "after") {
        false
    } else {
        return Err(CmdError::Syntax);
    };
    let key = &a[1];
    let Some(mut l) = list(t, key)? else {
        return Ok(Reply::Int(0));
    };
    let pivot = &a[3][..];
    let mut found = None;
    l.walk(t, key, false, |pos, v| {
        if v == pivot {
            found = Some(pos);
            return false;
        }
        true
    })?;
    let Some(p) = found else {
        return Ok(Reply::Int(-1));
    };
    // The new element's position once inserted.
    let at = if before { p } else { p + 1 };
    let len = l.len();
    if at <= len - at {
        // Shift the head side one slot left.
        let front = l.range(t, key, 0, at)?;
        l.head -= 1;
        for (i, v) in front.into_iter().enumerate() {
            l.set(t, key, i as u64, v);
        }
        l.set(t, key, at, a[4].to_vec());
    } else {
        let mut back = vec![a[4].to_vec()];
        back.extend(l.range(t, key, at, len)?);
        rewrite_from(t, key, &mut l, at, back);
    }
    l.store(t, key);
    Ok(Reply::Int(l.len() as i64))
}

fn lpos(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let mut rank: i64 = 1;
    let mut count: Option<u64> = None;
    let mut maxlen: u64 = 0;
    let mut i = 3;
    while i < a.len() {
        let Some(val) = a.get(i + 1) else {
            return Err(CmdError::Syntax);
        };
        if is(&a[i], "rank") {
            rank = parse_i64(val)?;
            if rank == 0 {
                return Err(CmdError::msg(
                    "ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list",
                ));
            }
            if rank == i64::MIN {
                return Err(CmdError::msg("ERR value is out of range"));
            }
        } else if is(&a[i], "count") {
            let c = parse_i64(val)?;
            if c < 0 {
                return Err(CmdError::msg("ERR COUNT can't be negative"));
            }
            count = Some(c as u64);
        } else if is(&a[i], "maxlen") {
            let m = parse_i64(val)?;
            if m < 0 {
                return Err(CmdError::msg("ERR MAXLEN can't be negative"));
            }
            maxlen = m as u64;
        } else {
            return Err(CmdError::Syntax);
        }
        i += 2;
    }
    let key = &a[1];
    let Some(l) = list(t, key)? else {
        return Ok(if count.is_some() {
            Reply::Array(vec![])
        } else {
            Reply::Nil
        });
    };
    let target = &a[2][..];
    let reverse = rank < 0;
    let mut skip = rank.unsigned_abs() - 1;
    let want = match count {
        Some(0) => u64::MAX,
        Some(c) => c,
        None => 1,
    };
    let mut hits: Vec<i64> = Vec::new();
    let mut scanned = 0u64;
    l.walk(t, key, reverse, |pos, v| {
        scanned += 1;
        if v == target {
            if skip > 0 {
                skip -= 1;
            } else {
                hits.push(pos as i64);
            }
        }
        (hits.len() as u64) < want && (maxlen == 0 || scanned < maxlen)
    })?;
    Ok(match count {
        Some(_) => Reply::Array(hits.into_iter().map(Reply::Int).collect()),
        None => hits.first().map_or(Reply::Nil, |p| Reply::Int(*p)),
    })
}

fn parse_side(b: &[u8]) -> Result<bool, CmdError> {
    if is(b, "left") {
        Ok(true)
    } else if is(b, "right") {
        Ok(false)
    } else {
        Err(CmdError::Syntax)
    }
}

/// Pops from `src` (left or right) and pushes onto `dst`; both type checks
/// happen before any write, as in Redis.
fn move_generic(
    t: &mut Txn<'_>,
    src: &[u8],
    dst: &[u8],
    from_left: bool,
    to_left: bool,
) -> Result<Reply, CmdError> {
    let Some(mut s) = list(t, src)? else {
        return Ok(Reply::Nil);
    };
    // WRONGTYPE on the destination before popping.
    list(t, dst)?;
    let Some(v) = s.pop(t, src, from_left)? else {
        return Ok(Reply::Nil);
    };
    s.store(t, src);
    // Re-read: when src == dst the pop above changed it.
    let mut d = list_or_new(t, dst)?;
    d.push(t, dst, v.clone(), to_left);
    d.store(t, dst);
    Ok(Reply::bulk(v))
}

/// Pops up to `count` elements (one when `None`) from `key` for the
/// blocking commands: `None` when the key is absent (nothing to serve),
/// WRONGTYPE when it is not a list.
pub(crate) fn pop_some(
    t: &mut Txn<'_>,
    key: &[u8],
    left: bool,
    count: u64,
) -> Result<Option<Vec<Vec<u8>>>, CmdError> {
    let Some(mut l) = list(t, key)? else {
        return Ok(None);
    };
    let n = count.min(l.len());
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        if let Some(v) = l.pop(t, key, left)? {
            out.push(v);
        }
    }
    if out.is_empty() {
        return Ok(None);
    }
    l.store(t, key);
    Ok(Some(out))
}

/// LMOVE for the blocking commands: `None` when `src` is absent.
pub(crate) fn move_some(
    t: &mut Txn<'_>,
    src: &[u8],
    dst: &[u8],
    from_left: bool,
    to_left: bool,
) -> Result<Option<Reply>, CmdError> {
    match move_generic(t, src, dst, from_left, to_left)? {
        Reply::Nil => Ok(None),
        r => Ok(Some(r)),
    }
}

/// `LEFT`/`RIGHT` → `true` for left; anything else is a syntax error.
pub(crate) fn parse_side_arg(b: &[u8]) -> Result<bool, CmdError> {
    parse_side(b)
}

fn lmove(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let from_left = parse_side(&a[3])?;
    let to_left = parse_side(&a[4])?;
    move_generic(t, &a[1], &a[2], from_left, to_left)
}

fn rpoplpush(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    move_generic(t, &a[1], &a[2], false, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use crate::txn::tests::engine;
    use std::collections::VecDeque;

    fn args(s: &[&str]) -> Vec<Bytes> {
        s.iter()
            .map(|x| Bytes::copy_from_slice(x.as_bytes()))
            .collect()
    }

    fn contents(eng: &Engine) -> Vec<String> {
        let t = eng.read_txn(0);
        let Some(l) = list(&t, b"l").unwrap() else {
            return Vec::new();
        };
        l.range(&t, b"l", 0, l.len())
            .unwrap()
            .into_iter()
            .map(|v| String::from_utf8(v).unwrap())
            .collect()
    }

    /// Runs one command in its own committed txn.
    fn run(eng: &Engine, f: crate::command::DataFn, a: &[&str]) -> Reply {
        let mut t = eng.write_txn(0);
        let r = f(&mut t, &args(a)).unwrap();
        t.commit().unwrap();
        r
    }

    #[test]
    fn middle_edits_on_a_multi_page_list_match_a_model() {
        let dir = tempfile::tempdir().unwrap();
        let eng = engine(dir.path());
        let mut model: VecDeque<String> = VecDeque::new();
        for i in 0..1500 {
            let v = if i == 1400 {
                "pivot".to_string()
            } else {
                (i % 7).to_string()
            };
            let left = i % 2 == 0;
            run(
                &eng,
                if left { lpush } else { rpush },
                &[if left { "lpush" } else { "rpush" }, "l", &v],
            );
            if left {
                model.push_front(v);
            } else {
                model.push_back(v);
            }
        }
        assert_eq!(contents(&eng), Vec::from(model.clone()));

        // LREM of every "3" (spread over all pages).
        let n = model.iter().filter(|v| *v == "3").count() as i64;
        assert!(matches!(run(&eng, lrem, &["lrem", "l", "0", "3"]), Reply::Int(x) if x == n));
        model.retain(|v| v != "3");
        assert_eq!(contents(&eng), Vec::from(model.clone()));

        // LREM of the last two "5".
        assert!(matches!(
            run(&eng, lrem, &["lrem", "l", "-2", "5"]),
            Reply::Int(2)
        ));
        for _ in 0..2 {
            let p = model.iter().rposition(|v| v == "5").unwrap();
            model.remove(p);
        }
        assert_eq!(contents(&eng), Vec::from(model.clone()));

        // LINSERT near the head (shifts the head side) and near the tail.
        run(&eng, linsert, &["linsert", "l", "BEFORE", "6", "new-head"]);
        let p = model.iter().position(|v| v == "6").unwrap();
        model.insert(p, "new-head".into());
        run(
            &eng,
            linsert,
            &["linsert", "l", "AFTER", "pivot", "new-tail"],
        );
        let p = model.iter().position(|v| v == "pivot").unwrap();
        model.insert(p + 1, "new-tail".into());
        assert_eq!(contents(&eng), Vec::from(model.clone()));

        // LPOS across pages agrees with the model.
        let want = model.iter().rposition(|v| v == "new-tail").unwrap() as i64;
        assert!(
            matches!(run(&eng, lpos, &["lpos", "l", "new-tail", "RANK", "-1"]), Reply::Int(x) if x == want)
        );

        // LTRIM to a middle window, then pops from both ends.
        run(&eng, ltrim, &["ltrim", "l", "100", "-100"]);
        let kept: VecDeque<String> = model
            .iter()
            .skip(100)
            .take(model.len() - 199)
            .cloned()
            .collect();
        model = kept;
        assert_eq!(contents(&eng), Vec::from(model.clone()));
        run(&eng, lpop, &["lpop", "l", "10"]);
        run(&eng, rpop, &["rpop", "l", "10"]);
        model.drain(..10);
        model.truncate(model.len() - 10);
        assert_eq!(contents(&eng), Vec::from(model.clone()));
        let t = eng.read_txn(0);
        assert_eq!(list(&t, b"l").unwrap().unwrap().m.size, model.len() as u64);
    }

    #[test]
    fn clamp_range_follows_redis_index_rules() {
        assert_eq!(clamp_range(0, -1, 5), Some((0, 5)));
        assert_eq!(clamp_range(-100, 100, 5), Some((0, 5)));
        assert_eq!(clamp_range(3, 1, 5), None);
        assert_eq!(clamp_range(5, 10, 5), None);
        assert_eq!(clamp_range(-2, -1, 5), Some((3, 5)));
        assert_eq!(clamp_range(0, 0, 0), None);
        assert_eq!(clamp_range(-7, -6, 5), None);
    }

    #[test]
    fn position_maps_negative_indices() {
        assert_eq!(position(-1, 3), Some(2));
        assert_eq!(position(3, 3), None);
        assert_eq!(position(-4, 3), None);
        assert_eq!(position(0, 0), None);
    }
}
