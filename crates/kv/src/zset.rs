//! Sorted-set commands. A zset is a metadata record (`size` = member count)
//! plus two `data` rows per member under the key's version prefix:
//!
//! ```text
//! b'm' | member                      → score (8 bytes, order-preserving)
//! b's' | score (8 bytes) | member    → ""
//! ```
//!
//! The `m` rows answer ZSCORE/ZADD lookups by member; the `s` rows are in
//! (score, member) order, which is exactly Redis's sorted order, so ranges
//! by score and by lex (equal scores) are seeks plus iteration. There is no
//! rank index: ranks (ZRANK, ZRANGE by index, ZREMRANGEBYRANK) are found by
//! iterating the `s` rows, O(rank), paged so memory stays bounded.
//! Scores use [`crate::score::encode_score`]; `-0.0` is stored as `0.0`.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::command::{data_spec, is, parse_i64, CommandSpec, DENYOOM, FAST, READONLY, WRITE};
use crate::encoding::{prefix_end, sub_prefix, KeyType, Meta};
use crate::error::CmdError;
use crate::keyspace::{parse_cursor, parse_scan_opts};
use crate::list::clamp_range;
use crate::pattern::glob_match;
use crate::resp::Reply;
use crate::score::{
    decode_score_slice, encode_score, format_score, parse_score, LexRange, ScoreRange,
};
use crate::txn::{Space, Txn};

const fn spec(
    name: &'static str,
    arity: i32,
    flags: u32,
    keys: (i32, i32),
    f: crate::command::DataFn,
    summary: &'static str,
) -> CommandSpec {
    data_spec(
        "sorted-set",
        name,
        arity,
        flags,
        (keys.0, keys.1, 1),
        f,
        summary,
    )
}

const W: u32 = WRITE | DENYOOM | FAST;
const R: u32 = READONLY;
const ONE: (i32, i32) = (1, 1);

pub(crate) const COMMANDS: &[CommandSpec] = &[
    spec("zadd", -4, W, ONE, zadd, "Adds one or more members to a sorted set, or updates their scores. Creates the key if it doesn't exist."),
    spec("zincrby", 4, W, ONE, zincrby, "Increments the score of a member in a sorted set."),
    spec("zrem", -3, WRITE | FAST, ONE, zrem, "Removes one or more members from a sorted set. Deletes the sorted set if all members were removed."),
    spec("zcard", 2, R | FAST, ONE, zcard, "Returns the number of members in a sorted set."),
    spec("zcount", 4, R | FAST, ONE, zcount, "Returns the count of members in a sorted set that have scores within a range."),
    spec("zlexcount", 4, R | FAST, ONE, zlexcount, "Returns the number of members in a sorted set within a lexicographical range."),
    spec("zscore", 3, R | FAST, ONE, zscore, "Returns the score of a member in a sorted set."),
    spec("zmscore", -3, R | FAST, ONE, zmscore, "Returns the score of one or more members in a sorted set."),
    spec("zrank", -3, R | FAST, ONE, zrank, "Returns the index of a member in a sorted set ordered by ascending scores."),
    spec("zrevrank", -3, R | FAST, ONE, zrevrank, "Returns the index of a member in a sorted set ordered by descending scores."),
    spec("zrange", -4, R, ONE, zrange, "Returns members in a sorted set within a range of indexes."),
    spec("zrangestore", -5, WRITE | DENYOOM, (1, 2), zrangestore, "Stores a range of members from sorted set in a key."),
    spec("zrevrange", -4, R, ONE, zrevrange, "Returns members in a sorted set within a range of indexes in reverse order."),
    spec("zrangebyscore", -4, R, ONE, zrangebyscore, "Returns members in a sorted set within a range of scores."),
    spec("zrevrangebyscore", -4, R, ONE, zrevrangebyscore, "Returns members in a sorted set within a range of scores in reverse order."),
    spec("zrangebylex", -4, R, ONE, zrangebylex, "Returns members in a sorted set within a lexicographical range."),
    spec("zrevrangebylex", -4, R, ONE, zrevrangebylex, "Returns members in a sorted set within a lexicographical range in reverse order."),
    spec("zremrangebyscore", 4, WRITE, ONE, zremrangebyscore, "Removes members in a sorted set within a range of scores. Deletes the sorted set if all members were removed."),
    spec("zremrangebyrank", 4, WRITE, ONE, zremrangebyrank, "Removes members in a sorted set within a range of indexes. Deletes the sorted set if all members were removed."),
    spec("zremrangebylex", 4, WRITE, ONE, zremrangebylex, "Removes members in a sorted set within a lexicographical range. Deletes the sorted set if all members were removed."),
    spec("zpopmin", -2, WRITE | FAST, ONE, zpopmin, "Returns the lowest-scoring members from a sorted set after removing them. Deletes the sorted set if the last member was popped."),
    spec("zpopmax", -2, WRITE | FAST, ONE, zpopmax, "Returns the highest-scoring members from a sorted set after removing them. Deletes the sorted set if the last member was popped."),
    spec("zunionstore", -4, WRITE | DENYOOM, (1, 1), zunionstore, "Stores the union of multiple sorted sets in a key."),
    spec("zinterstore", -4, WRITE | DENYOOM, (1, 1), zinterstore, "Stores the intersect of multiple sorted sets in a key."),
    spec("zdiffstore", -4, WRITE | DENYOOM, (1, 1), zdiffstore, "Stores the difference of multiple sorted sets in a key."),
    spec("zunion", -3, R, (0, 0), zunion, "Returns the union of multiple sorted sets."),
    spec("zinter", -3, R, (0, 0), zinter, "Returns the intersect of multiple sorted sets."),
    spec("zdiff", -3, R, (0, 0), zdiff, "Returns the difference between multiple sorted sets."),
    spec("zscan", -3, R, ONE, zscan, "Iterates over members and scores of a sorted set."),
];

/// Rows fetched per page when walking the score index.
const PAGE: usize = 512;
const TAG_MEMBER: u8 = b'm';
const TAG_SCORE: u8 = b's';

fn zset(t: &Txn<'_>, key: &[u8]) -> Result<Option<Meta>, CmdError> {
    t.get_meta_typed(key, KeyType::ZSet)
}

fn m_row(member: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(1 + member.len());
    r.push(TAG_MEMBER);
    r.extend_from_slice(member);
    r
}

fn s_row(score: f64, member: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(9 + member.len());
    r.push(TAG_SCORE);
    r.extend_from_slice(&encode_score(score));
    r.extend_from_slice(member);
    r
}

/// One zset generation's rows, addressed by the user key.
struct Z<'k> {
    key: &'k [u8],
    version: u64,
    prefix: Vec<u8>,
}

impl<'k> Z<'k> {
    fn new(t: &Txn<'_>, key: &'k [u8], version: u64) -> Z<'k> {
        Z {
            key,
            version,
            prefix: sub_prefix(t.db, key, version),
        }
    }

    fn raw(&self, member_part: &[u8]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(member_part);
        k
    }

    /// First raw key of the score index.
    fn s_start(&self) -> Vec<u8> {
        self.raw(&[TAG_SCORE])
    }

    /// Raw key just past the score index.
    fn s_end(&self) -> Vec<u8> {
        self.raw(&[TAG_SCORE + 1])
    }

    fn score(&self, t: &Txn<'_>, member: &[u8]) -> Result<Option<f64>, CmdError> {
        t.get_sub(self.key, self.version, &m_row(member))?
            .map(|v| decode_score_slice(&v))
            .transpose()
    }

    fn put(&self, t: &mut Txn<'_>, member: &[u8], score: f64, old: Option<f64>) {
        if let Some(o) = old {
            t.delete_sub(self.key, self.version, &s_row(o, member));
        }
        t.put_sub(
            self.key,
            self.version,
            &m_row(member),
            encode_score(score).to_vec(),
        );
        t.put_sub(self.key, self.version, &s_row(score, member), Vec::new());
    }

    fn remove(&self, t: &mut Txn<'_>, member: &[u8], score: f64) {
        t.delete_sub(self.key, self.version, &m_row(member));
        t.delete_sub(self.key, self.version, &s_row(score, member));
    }

    /// Walks score-index rows with raw keys in `[lower, upper)`, ascending
    /// or descending, calling `f(score, member)` until it returns `false`.
    fn walk(
        &self,
        t: &Txn<'_>,
        mut lower: Vec<u8>,
        mut upper: Vec<u8>,
        reverse: bool,
        mut f: impl FnMut(f64, &[u8]) -> bool,
    ) -> Result<(), CmdError> {
        let head = self.prefix.len() + 1;
        loop {
            let rows = t.scan_raw(Space::Data, &lower, Some(&upper), PAGE, reverse)?;
            let n = rows.len();
            for (k, _) in &rows {
                let body = k
                    .get(head..)
                    .filter(|b| b.len() >= 8)
                    .ok_or(CmdError::Corrupt(crate::error::DecodeError::Truncated))?;
                let score = decode_score_slice(&body[..8])?;
                if !f(score, &body[8..]) {
                    return Ok(());
                }
            }
            if n < PAGE {
                return Ok(());
            }
            let last = rows.into_iter().next_back().expect("page is full").0;
            if reverse {
                upper = last;
            } else {
                lower = last;
                lower.push(0);
            }
        }
    }

    /// The lowest (or highest) score present, if any.
    fn edge_score(&self, t: &Txn<'_>, highest: bool) -> Result<Option<f64>, CmdError> {
        let mut out = None;
        self.walk(t, self.s_start(), self.s_end(), highest, |s, _| {
            out = Some(s);
            false
        })?;
        Ok(out)
    }

    /// Members with their scores in `q`'s range, order and limit.
    fn range(&self, t: &Txn<'_>, q: &RangeQuery) -> Result<Vec<(Vec<u8>, f64)>, CmdError> {
        let mut out = Vec::new();
        let mut skip = q.offset.max(0) as u64;
        if q.offset < 0 || q.limit == 0 {
            return Ok(out);
        }
        let limit = if q.limit < 0 {
            u64::MAX
        } else {
            q.limit as u64
        };
        let mut take = |s: f64, m: &[u8], out: &mut Vec<(Vec<u8>, f64)>| {
            if skip > 0 {
                skip -= 1;
                return true;
            }
            out.push((m.to_vec(), s));
            (out.len() as u64) < limit
        };
        match &q.kind {
            RangeKind::Rank(start, stop, len) => {
                let Some((s, e)) = clamp_range(*start, *stop, *len) else {
                    return Ok(out);
                };
                let mut pos = 0u64;
                self.walk(t, self.s_start(), self.s_end(), q.reverse, |sc, m| {
                    if pos >= s {
                        out.push((m.to_vec(), sc));
                    }
                    pos += 1;
                    pos < e
                })?;
            }
            RangeKind::Score(r) => {
                if r.is_empty() {
                    return Ok(out);
                }
                let lower = self.raw(&s_row(r.min.value, b""));
                let upper =
                    prefix_end(&self.raw(&s_row(r.max.value, b""))).unwrap_or_else(|| self.s_end());
                self.walk(t, lower, upper, q.reverse, |s, m| {
                    if !r.contains(s) {
                        return true;
                    }
                    take(s, m, &mut out)
                })?;
            }
            RangeKind::Lex(r) => {
                // Lex ranges assume equal scores (Redis leaves mixed scores
                // unspecified): seek inside the first (last) score's rows.
                let Some(edge) = self.edge_score(t, q.reverse)? else {
                    return Ok(out);
                };
                if !q.reverse {
                    let lower = match r.seek_min() {
                        Some(v) => self.raw(&s_row(edge, v)),
                        None => self.s_start(),
                    };
                    self.walk(t, lower, self.s_end(), false, |s, m| {
                        if !r.below_max(m) {
                            return false;
                        }
                        if !r.above_min(m) {
                            return true;
                        }
                        take(s, m, &mut out)
                    })?;
                } else {
                    let upper = match r.seek_max() {
                        Some(v) => {
                            let mut u = self.raw(&s_row(edge, v));
                            u.push(0);
                            u
                        }
                        None => self.s_end(),
                    };
                    self.walk(t, self.s_start(), upper, true, |s, m| {
                        if !r.above_min(m) {
                            return false;
                        }
                        if !r.below_max(m) {
                            return true;
                        }
                        take(s, m, &mut out)
                    })?;
                }
            }
        }
        Ok(out)
    }

    /// Every `(member, score)` in member order (the `m` rows).
    fn all(&self, t: &Txn<'_>) -> Result<Vec<(Vec<u8>, f64)>, CmdError> {
        let rows = t.scan_raw(
            Space::Data,
            &self.raw(&[TAG_MEMBER]),
            Some(&self.raw(&[TAG_MEMBER + 1])),
            usize::MAX,
            false,
        )?;
        let head = self.prefix.len() + 1;
        rows.into_iter()
            .map(|(k, v)| {
                Ok((
                    k.get(head..).unwrap_or_default().to_vec(),
                    decode_score_slice(&v)?,
                ))
            })
            .collect()
    }
}

/// `(member, score)` pairs in reply order.
type Scored = Vec<(Vec<u8>, f64)>;

#[derive(Debug, Clone)]
enum RangeKind {
    /// start, stop, collection length.
    Rank(i64, i64, u64),
    Score(ScoreRange),
    Lex(LexRange),
}

struct RangeQuery {
    kind: RangeKind,
    reverse: bool,
    offset: i64,
    /// Negative: no limit.
    limit: i64,
}

fn reply_scored(items: Vec<(Vec<u8>, f64)>, withscores: bool) -> Reply {
    let mut out = Vec::with_capacity(items.len() * if withscores { 2 } else { 1 });
    for (m, s) in items {
        out.push(Reply::bulk(m));
        if withscores {
            out.push(Reply::bulk(format_score(s)));
        }
    }
    Reply::Array(out)
}

// ---- ZADD / ZINCRBY ----

#[derive(Default)]
struct AddFlags {
    nx: bool,
    xx: bool,
    gt: bool,
    lt: bool,
    ch: bool,
    incr: bool,
}

/// Outcome of adding one pair.
enum Added {
    New,
    Updated,
    Unchanged,
    /// Refused by NX/XX/GT/LT.
    Skipped,
}

fn add_one(
    t: &mut Txn<'_>,
    z: &Z<'_>,
    m: &mut Meta,
    f: &AddFlags,
    mut score: f64,
    member: &[u8],
) -> Result<(Added, f64), CmdError> {
    match z.score(t, member)? {
        Some(cur) => {
            if f.nx {
                return Ok((Added::Skipped, cur));
            }
            if f.incr {
                score += cur;
                if score.is_nan() {
                    return Err(CmdError::msg("ERR resulting score is not a number (NaN)"));
                }
            }
            if (f.gt && score <= cur) || (f.lt && score >= cur) {
                return Ok((Added::Skipped, cur));
            }
            if score == cur {
                return Ok((Added::Unchanged, cur));
            }
            z.put(t, member, score, Some(cur));
            Ok((Added::Updated, score))
        }
        None => {
            if f.xx {
                return Ok((Added::Skipped, score));
            }
            z.put(t, member, score, None);
            m.size += 1;
            Ok((Added::New, score))
        }
    }
}

fn zadd(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let mut f = AddFlags::default();
    let mut i = 2;
    while i < a.len() {
        let x = &a[i];
        if is(x, "nx") {
            f.nx = true;
        } else if is(x, "xx") {
            f.xx = true;
        } else if is(x, "gt") {
            f.gt = true;
        } else if is(x, "lt") {
            f.lt = true;
        } else if is(x, "ch") {
            f.ch = true;
        } else if is(x, "incr") {
            f.incr = true;
        } else {
            break;
        }
        i += 1;
    }
    let pairs = &a[i..];
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return Err(CmdError::Syntax);
    }
    if f.nx && f.xx {
        return Err(CmdError::msg(
            "ERR XX and NX options at the same time are not compatible",
        ));
    }
    if (f.nx && (f.gt || f.lt)) || (f.gt && f.lt) {
        return Err(CmdError::msg(
            "ERR GT, LT, and/or NX options at the same time are not compatible",
        ));
    }
    if f.incr && pairs.len() > 2 {
        return Err(CmdError::msg(
            "ERR INCR option supports a single increment-element pair",
        ));
    }
    let scores = pairs
        .chunks(2)
        .map(|p| parse_score(&p[0]))
        .collect::<Result<Vec<f64>, _>>()?;
    let key = &a[1];
    let existing = zset(t, key)?;
    if existing.is_none() && f.xx {
        return Ok(if f.incr { Reply::Nil } else { Reply::Int(0) });
    }
    let mut m = match existing {
        Some(m) => m,
        None => t.get_or_new_collection(key, KeyType::ZSet)?,
    };
    let z = Z::new(t, key, m.version);
    let (mut added, mut updated) = (0, 0);
    let mut last = None;
    for (p, score) in pairs.chunks(2).zip(scores) {
        let (what, s) = add_one(t, &z, &mut m, &f, score, &p[1])?;
        match what {
            Added::New => added += 1,
            Added::Updated => updated += 1,
            Added::Unchanged => {}
            Added::Skipped => {
                last = None;
                continue;
            }
        }
        last = Some(s);
    }
    if added > 0 {
        t.put_meta(key, &m);
    }
    if f.incr {
        return Ok(last.map_or(Reply::Nil, |s| Reply::bulk(format_score(s))));
    }
    Ok(Reply::Int(if f.ch { added + updated } else { added }))
}

fn zincrby(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let by = parse_score(&a[2])?;
    let key = &a[1];
    let mut m = t.get_or_new_collection(key, KeyType::ZSet)?;
    let z = Z::new(t, key, m.version);
    let f = AddFlags {
        incr: true,
        ..AddFlags::default()
    };
    let (what, s) = add_one(t, &z, &mut m, &f, by, &a[3])?;
    if matches!(what, Added::New) {
        t.put_meta(key, &m);
    }
    Ok(Reply::bulk(format_score(s)))
}

fn zrem(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let key = &a[1];
    let Some(mut m) = zset(t, key)? else {
        return Ok(Reply::Int(0));
    };
    let z = Z::new(t, key, m.version);
    let mut n = 0u64;
    for mem in &a[2..] {
        if let Some(s) = z.score(t, mem)? {
            z.remove(t, mem, s);
            n += 1;
        }
    }
    if n > 0 {
        m.size = m.size.saturating_sub(n);
        t.put_or_delete_collection(key, &m);
    }
    Ok(Reply::Int(n as i64))
}

fn zcard(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    Ok(Reply::Int(zset(t, &a[1])?.map_or(0, |m| m.size as i64)))
}

fn count_range(t: &Txn<'_>, key: &[u8], kind: RangeKind) -> Result<Reply, CmdError> {
    let Some(m) = zset(t, key)? else {
        return Ok(Reply::Int(0));
    };
    let z = Z::new(t, key, m.version);
    let q = RangeQuery {
        kind,
        reverse: false,
        offset: 0,
        limit: -1,
    };
    Ok(Reply::Int(z.range(t, &q)?.len() as i64))
}

fn zcount(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let r = ScoreRange::parse(&a[2], &a[3])?;
    count_range(t, &a[1], RangeKind::Score(r))
}

fn zlexcount(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let r = LexRange::parse(&a[2], &a[3])?;
    count_range(t, &a[1], RangeKind::Lex(r))
}

fn zscore(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let Some(m) = zset(t, &a[1])? else {
        return Ok(Reply::Nil);
    };
    let z = Z::new(t, &a[1], m.version);
    Ok(z.score(t, &a[2])?
        .map_or(Reply::Nil, |s| Reply::bulk(format_score(s))))
}

fn zmscore(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let m = zset(t, &a[1])?;
    let mut out = Vec::with_capacity(a.len() - 2);
    for mem in &a[2..] {
        let s = match &m {
            Some(m) => Z::new(t, &a[1], m.version).score(t, mem)?,
            None => None,
        };
        out.push(s.map_or(Reply::Nil, |s| Reply::bulk(format_score(s))));
    }
    Ok(Reply::Array(out))
}

fn rank_generic(t: &Txn<'_>, a: &[Bytes], reverse: bool) -> Result<Reply, CmdError> {
    let withscore = match a.len() {
        3 => false,
        4 if is(&a[3], "withscore") => true,
        _ => return Err(CmdError::Syntax),
    };
    let missing = if withscore {
        Reply::NilArray
    } else {
        Reply::Nil
    };
    let Some(m) = zset(t, &a[1])? else {
        return Ok(missing);
    };
    let z = Z::new(t, &a[1], m.version);
    let Some(score) = z.score(t, &a[2])? else {
        return Ok(missing);
    };
    // O(rank): count the index rows before this member's.
    let mut rank = 0u64;
    z.walk(
        t,
        z.s_start(),
        z.raw(&s_row(score, &a[2])),
        false,
        |_, _| {
            rank += 1;
            true
        },
    )?;
    if reverse {
        rank = m.size.saturating_sub(1).saturating_sub(rank);
    }
    Ok(if withscore {
        Reply::Array(vec![
            Reply::Int(rank as i64),
            Reply::bulk(format_score(score)),
        ])
    } else {
        Reply::Int(rank as i64)
    })
}

fn zrank(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    rank_generic(t, a, false)
}

fn zrevrank(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    rank_generic(t, a, true)
}

// ---- the ZRANGE family ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum By {
    Auto,
    Rank,
    Score,
    Lex,
}

/// Redis's `zrangeGenericCommand`: `a[src]` is the source key, followed by
/// `min max` and options. `store`: ZRANGESTORE (no WITHSCORES).
fn zrange_generic(
    t: &mut Txn<'_>,
    a: &[Bytes],
    src: usize,
    store: Option<&[u8]>,
    mut by: By,
    mut reverse: Option<bool>,
) -> Result<Reply, CmdError> {
    let mut withscores = false;
    let mut limit_given = false;
    let (mut offset, mut limit) = (0i64, -1i64);
    let mut j = src + 3;
    while j < a.len() {
        let left = a.len() - j - 1;
        if store.is_none() && is(&a[j], "withscores") {
            withscores = true;
        } else if is(&a[j], "limit") && left >= 2 {
            offset = parse_i64(&a[j + 1])?;
            limit = parse_i64(&a[j + 2])?;
            limit_given = true;
            j += 2;
        } else if reverse.is_none() && is(&a[j], "rev") {
            reverse = Some(true);
        } else if by == By::Auto && is(&a[j], "bylex") {
            by = By::Lex;
        } else if by == By::Auto && is(&a[j], "byscore") {
            by = By::Score;
        } else {
            return Err(CmdError::Syntax);
        }
        j += 1;
    }
    let reverse = reverse.unwrap_or(false);
    if by == By::Auto {
        by = By::Rank;
    }
    if limit_given && by == By::Rank {
        return Err(CmdError::msg(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        ));
    }
    if withscores && by == By::Lex {
        return Err(CmdError::msg(
            "ERR syntax error, WITHSCORES not supported in combination with BYLEX",
        ));
    }
    let (mut lo, mut hi) = (&a[src + 1], &a[src + 2]);
    if reverse && by != By::Rank {
        std::mem::swap(&mut lo, &mut hi);
    }
    enum Parsed {
        Rank(i64, i64),
        Score(ScoreRange),
        Lex(LexRange),
    }
    let parsed = match by {
        By::Score => Parsed::Score(ScoreRange::parse(lo, hi)?),
        By::Lex => Parsed::Lex(LexRange::parse(lo, hi)?),
        _ => Parsed::Rank(parse_i64(lo)?, parse_i64(hi)?),
    };
    let key = &a[src];
    let items = match zset(t, key)? {
        None => Vec::new(),
        Some(m) => {
            let kind = match parsed {
                Parsed::Rank(s, e) => RangeKind::Rank(s, e, m.size),
                Parsed::Score(r) => RangeKind::Score(r),
                Parsed::Lex(r) => RangeKind::Lex(r),
            };
            let q = RangeQuery {
                kind,
                reverse,
                offset,
                limit,
            };
            Z::new(t, key, m.version).range(t, &q)?
        }
    };
    match store {
        Some(dst) => Ok(Reply::Int(store_zset(t, dst, items)?)),
        None => Ok(reply_scored(items, withscores)),
    }
}

fn zrange(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    zrange_generic(t, a, 1, None, By::Auto, None)
}

fn zrangestore(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let dst = a[1].clone();
    zrange_generic(t, a, 2, Some(&dst), By::Auto, None)
}

fn zrevrange(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    zrange_generic(t, a, 1, None, By::Rank, Some(true))
}

fn zrangebyscore(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    zrange_generic(t, a, 1, None, By::Score, Some(false))
}

fn zrevrangebyscore(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    zrange_generic(t, a, 1, None, By::Score, Some(true))
}

fn zrangebylex(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    zrange_generic(t, a, 1, None, By::Lex, Some(false))
}

fn zrevrangebylex(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    zrange_generic(t, a, 1, None, By::Lex, Some(true))
}

/// Replaces `dst` (any type) with a zset of `items`; deletes it when empty.
/// Returns the new cardinality.
fn store_zset(t: &mut Txn<'_>, dst: &[u8], items: Vec<(Vec<u8>, f64)>) -> Result<i64, CmdError> {
    if items.is_empty() {
        if t.get_meta(dst)?.is_some() {
            t.delete_key(dst);
        }
        return Ok(0);
    }
    // A fresh version: the old value's rows become stale and are reclaimed
    // by the compaction filter.
    let mut m = Meta::collection(KeyType::ZSet, t.engine().next_version());
    let z = Z::new(t, dst, m.version);
    for (mem, s) in &items {
        z.put(t, mem, *s, None);
    }
    m.size = items.len() as u64;
    t.put_meta(dst, &m);
    Ok(m.size as i64)
}

fn remrange(
    t: &mut Txn<'_>,
    key: &[u8],
    kind: impl FnOnce(u64) -> RangeKind,
) -> Result<Reply, CmdError> {
    let Some(mut m) = zset(t, key)? else {
        return Ok(Reply::Int(0));
    };
    let z = Z::new(t, key, m.version);
    let q = RangeQuery {
        kind: kind(m.size),
        reverse: false,
        offset: 0,
        limit: -1,
    };
    let items = z.range(t, &q)?;
    for (mem, s) in &items {
        z.remove(t, mem, *s);
    }
    if !items.is_empty() {
        m.size = m.size.saturating_sub(items.len() as u64);
        t.put_or_delete_collection(key, &m);
    }
    Ok(Reply::Int(items.len() as i64))
}

fn zremrangebyscore(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let r = ScoreRange::parse(&a[2], &a[3])?;
    remrange(t, &a[1], |_| RangeKind::Score(r))
}

fn zremrangebyrank(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let s = parse_i64(&a[2])?;
    let e = parse_i64(&a[3])?;
    remrange(t, &a[1], |len| RangeKind::Rank(s, e, len))
}

fn zremrangebylex(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let r = LexRange::parse(&a[2], &a[3])?;
    remrange(t, &a[1], |_| RangeKind::Lex(r))
}

fn pop_generic(t: &mut Txn<'_>, a: &[Bytes], max: bool) -> Result<Reply, CmdError> {
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
            c
        }
        None => 1,
    };
    let key = &a[1];
    let Some(mut m) = zset(t, key)? else {
        return Ok(Reply::Array(vec![]));
    };
    let z = Z::new(t, key, m.version);
    let q = RangeQuery {
        kind: RangeKind::Rank(0, count - 1, m.size),
        reverse: max,
        offset: 0,
        limit: -1,
    };
    let items = if count == 0 {
        Vec::new()
    } else {
        z.range(t, &q)?
    };
    for (mem, s) in &items {
        z.remove(t, mem, *s);
    }
    if !items.is_empty() {
        m.size = m.size.saturating_sub(items.len() as u64);
        t.put_or_delete_collection(key, &m);
    }
    Ok(reply_scored(items, true))
}

fn zpopmin(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    pop_generic(t, a, false)
}

fn zpopmax(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    pop_generic(t, a, true)
}

// ---- ZUNION / ZINTER / ZDIFF (and *STORE) ----

#[derive(Clone, Copy, PartialEq, Eq)]
enum SetOp {
    Union,
    Inter,
    Diff,
}

#[derive(Clone, Copy)]
enum Aggregate {
    Sum,
    Min,
    Max,
}

fn aggregate(agg: Aggregate, a: f64, b: f64) -> f64 {
    match agg {
        // inf + -inf: Redis stores 0 rather than NaN.
        Aggregate::Sum => {
            let s = a + b;
            if s.is_nan() {
                0.0
            } else {
                s
            }
        }
        Aggregate::Min => a.min(b),
        Aggregate::Max => a.max(b),
    }
}

/// Every `(member, score)` of a zset, or of a set (score 1), at `key`.
fn load_input(t: &Txn<'_>, key: &[u8]) -> Result<Option<BTreeMap<Vec<u8>, f64>>, CmdError> {
    let Some(m) = t.get_meta(key)? else {
        return Ok(None);
    };
    match m.kind {
        KeyType::ZSet => Ok(Some(
            Z::new(t, key, m.version).all(t)?.into_iter().collect(),
        )),
        KeyType::Set => Ok(Some(
            t.scan_subs(key, m.version, None, usize::MAX, false)?
                .into_iter()
                .map(|(k, _)| (k, 1.0))
                .collect(),
        )),
        _ => Err(CmdError::WrongType),
    }
}

/// Parses and computes a ZUNION/ZINTER/ZDIFF(STORE) from `a[nk]` (numkeys)
/// on. Returns the result sorted by (score, member) and WITHSCORES.
fn setop(
    t: &Txn<'_>,
    a: &[Bytes],
    nk: usize,
    op: SetOp,
    store: bool,
) -> Result<(Scored, bool), CmdError> {
    let name = String::from_utf8_lossy(&a[0]).to_ascii_lowercase();
    let n = parse_i64(&a[nk])?;
    if n < 1 {
        return Err(CmdError::msg(format!(
            "ERR at least 1 input key is needed for '{name}' command"
        )));
    }
    let n = n as usize;
    if n > a.len() - nk - 1 {
        return Err(CmdError::Syntax);
    }
    let keys = &a[nk + 1..nk + 1 + n];
    let mut weights = vec![1.0f64; n];
    let mut agg = Aggregate::Sum;
    let mut withscores = false;
    let mut j = nk + 1 + n;
    while j < a.len() {
        let left = a.len() - j - 1;
        if op != SetOp::Diff && is(&a[j], "weights") && left >= n {
            for (i, w) in weights.iter_mut().enumerate() {
                *w = crate::command::parse_f64(&a[j + 1 + i])
                    .map_err(|_| CmdError::msg("ERR weight value is not a float"))?;
            }
            j += n;
        } else if op != SetOp::Diff && is(&a[j], "aggregate") && left >= 1 {
            let v = &a[j + 1];
            agg = if is(v, "sum") {
                Aggregate::Sum
            } else if is(v, "min") {
                Aggregate::Min
            } else if is(v, "max") {
                Aggregate::Max
            } else {
                return Err(CmdError::Syntax);
            };
            j += 1;
        } else if !store && is(&a[j], "withscores") {
            withscores = true;
        } else {
            return Err(CmdError::Syntax);
        }
        j += 1;
    }
    // Type-check (and load) every input before computing.
    let mut inputs = Vec::with_capacity(n);
    for k in keys {
        inputs.push(load_input(t, k)?);
    }
    let weigh = |s: f64, w: f64| {
        let v = s * w;
        if v.is_nan() {
            0.0
        } else {
            v
        }
    };
    let mut acc: BTreeMap<Vec<u8>, f64> = BTreeMap::new();
    match op {
        SetOp::Union => {
            for (inp, w) in inputs.into_iter().zip(&weights) {
                for (m, s) in inp.unwrap_or_default() {
                    let v = weigh(s, *w);
                    acc.entry(m)
                        .and_modify(|cur| *cur = aggregate(agg, *cur, v))
                        .or_insert(v);
                }
            }
        }
        SetOp::Inter => {
            let mut it = inputs.into_iter().zip(&weights);
            let (first, w0) = it.next().expect("n >= 1");
            acc = first
                .unwrap_or_default()
                .into_iter()
                .map(|(m, s)| (m, weigh(s, *w0)))
                .collect();
            for (inp, w) in it {
                let inp = inp.unwrap_or_default();
                acc.retain(|m, cur| match inp.get(m) {
                    Some(s) => {
                        *cur = aggregate(agg, *cur, weigh(*s, *w));
                        true
                    }
                    None => false,
                });
            }
        }
        SetOp::Diff => {
            let mut it = inputs.into_iter();
            acc = it.next().expect("n >= 1").unwrap_or_default();
            for inp in it {
                for m in inp.unwrap_or_default().keys() {
                    acc.remove(m);
                }
            }
        }
    }
    let mut out: Vec<(Vec<u8>, f64)> = acc.into_iter().collect();
    out.sort_by(|x, y| x.1.total_cmp(&y.1).then_with(|| x.0.cmp(&y.0)));
    Ok((out, withscores))
}

fn setop_store(t: &mut Txn<'_>, a: &[Bytes], op: SetOp) -> Result<Reply, CmdError> {
    let (items, _) = setop(t, a, 2, op, true)?;
    Ok(Reply::Int(store_zset(t, &a[1], items)?))
}

fn setop_reply(t: &mut Txn<'_>, a: &[Bytes], op: SetOp) -> Result<Reply, CmdError> {
    let (items, withscores) = setop(t, a, 1, op, false)?;
    Ok(reply_scored(items, withscores))
}

fn zunionstore(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    setop_store(t, a, SetOp::Union)
}

fn zinterstore(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    setop_store(t, a, SetOp::Inter)
}

fn zdiffstore(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    setop_store(t, a, SetOp::Diff)
}

fn zunion(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    setop_reply(t, a, SetOp::Union)
}

fn zinter(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    setop_reply(t, a, SetOp::Inter)
}

fn zdiff(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    setop_reply(t, a, SetOp::Diff)
}

fn zscan(t: &mut Txn<'_>, a: &[Bytes]) -> Result<Reply, CmdError> {
    let cursor = parse_cursor(&a[2])?;
    let o = parse_scan_opts(a, 3, false, false)?;
    let Some(m) = zset(t, &a[1])? else {
        return Ok(Reply::Array(vec![Reply::bulk("0"), Reply::Array(vec![])]));
    };
    let z = Z::new(t, &a[1], m.version);
    // Resume bytes: version then the next member, so a cursor from an
    // older generation of the key restarts.
    let from = t.engine().cursors().resume_member(cursor, m.version);
    let lower = z.raw(&m_row(from.as_deref().unwrap_or_default()));
    let upper = z.raw(&[TAG_MEMBER + 1]);
    let rows = t.scan_raw(Space::Data, &lower, Some(&upper), o.count + 1, false)?;
    let head = z.prefix.len() + 1;
    let more = rows.len() > o.count;
    let mut out = Vec::new();
    for (k, v) in rows.iter().take(o.count) {
        let mem = k.get(head..).unwrap_or_default();
        if let Some(p) = &o.pattern {
            if !glob_match(p, mem) {
                continue;
            }
        }
        out.push(Reply::bulk(mem.to_vec()));
        out.push(Reply::bulk(format_score(decode_score_slice(v)?)));
    }
    let next = if more {
        t.engine()
            .cursors()
            .save_member(m.version, rows[o.count].0.get(head..).unwrap_or_default())
    } else {
        0
    };
    Ok(Reply::Array(vec![
        Reply::bulk(next.to_string()),
        Reply::Array(out),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::tests::engine;

    fn args(s: &[&str]) -> Vec<Bytes> {
        s.iter()
            .map(|x| Bytes::copy_from_slice(x.as_bytes()))
            .collect()
    }

    fn members(r: Reply) -> Vec<String> {
        match r {
            Reply::Array(v) => v
                .into_iter()
                .map(|x| match x {
                    Reply::Bulk(b) => String::from_utf8(b.to_vec()).unwrap(),
                    other => panic!("not a bulk: {other:?}"),
                })
                .collect(),
            other => panic!("not an array: {other:?}"),
        }
    }

    #[test]
    fn multi_page_ranges_and_ranks_match_a_sorted_model() {
        let dir = tempfile::tempdir().unwrap();
        let eng = engine(dir.path());
        // Deterministic scores in [-50, 50] with many ties, over > 2 pages.
        let mut model: Vec<(f64, String)> = Vec::new();
        let mut x: u64 = 12345;
        let mut t = eng.write_txn(0);
        for i in 0..1300 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let score = ((x >> 33) % 101) as f64 - 50.0;
            let m = format!("m{i}");
            zadd(&mut t, &args(&["zadd", "z", &score.to_string(), &m])).unwrap();
            model.push((score, m));
        }
        t.commit().unwrap();
        model.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let sorted: Vec<String> = model.iter().map(|(_, m)| m.clone()).collect();

        let mut t = eng.read_txn(0);
        assert_eq!(
            members(zrange(&mut t, &args(&["zrange", "z", "0", "-1"])).unwrap()),
            sorted
        );
        let mut rev = sorted.clone();
        rev.reverse();
        assert_eq!(
            members(zrevrange(&mut t, &args(&["zrevrange", "z", "0", "-1"])).unwrap()),
            rev
        );
        assert_eq!(
            members(zrange(&mut t, &args(&["zrange", "z", "600", "1100"])).unwrap()),
            sorted[600..=1100].to_vec()
        );
        let want: Vec<String> = model
            .iter()
            .filter(|(s, _)| *s > -10.0 && *s <= 20.0)
            .map(|(_, m)| m.clone())
            .collect();
        assert_eq!(
            members(zrangebyscore(&mut t, &args(&["zrangebyscore", "z", "(-10", "20"])).unwrap()),
            want
        );
        let mut want_rev = want.clone();
        want_rev.reverse();
        assert_eq!(
            members(
                zrevrangebyscore(&mut t, &args(&["zrevrangebyscore", "z", "20", "(-10"])).unwrap()
            ),
            want_rev
        );
        assert!(matches!(
            zcount(&mut t, &args(&["zcount", "z", "(-10", "20"])).unwrap(),
            Reply::Int(n) if n == want.len() as i64
        ));
        for probe in [0usize, 511, 512, 513, 1024, 1299] {
            let m = &sorted[probe];
            assert!(matches!(
                zrank(&mut t, &args(&["zrank", "z", m])).unwrap(),
                Reply::Int(r) if r == probe as i64
            ));
            assert!(matches!(
                zrevrank(&mut t, &args(&["zrevrank", "z", m])).unwrap(),
                Reply::Int(r) if r == (1299 - probe) as i64
            ));
        }
    }
}
