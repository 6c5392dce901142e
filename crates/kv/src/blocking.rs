//! Blocking list commands (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP) and
//! the registry of blocked clients.
//!
//! How a command blocks (RW only; `-READONLY` on RO through the `WRITE`
//! flag):
//! 1. The session parses the command, takes the write lock and tries to
//!    serve it from its keys in argument order. If none can serve it, it
//!    registers a waiter *while still holding the write lock*, so no push
//!    can slip in between the failed attempt and the registration.
//! 2. The connection task (not a blocking thread) then awaits the waiter's
//!    oneshot, the timeout, `CLIENT KILL`/shutdown (the connection's kill
//!    token) or the client closing the socket, whichever comes first.
//! 3. After every commit the engine's key-modified hook marks keys that
//!    have waiters as ready and wakes the server's unblocker task, which
//!    serves waiters of each ready key in the order they blocked (first
//!    blocked, first served), each in its own write transaction (so a BLMOVE
//!    is one atomic WriteBatch), and sends the reply plus the commit's
//!    sequence (the connection waits for its durability before replying).
//!
//! Lock order: the engine's write lock, then the registry's mutex (the hook
//! runs under the write lock and takes the mutex); nobody takes the write
//! lock while holding the mutex.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use crate::command::{is, parse_i64, CommandSpec, Handler, WRITE};
use crate::engine::{Engine, Touch};
use crate::error::CmdError;
use crate::list::{move_some, parse_side_arg, pop_some};
use crate::resp::Reply;
use crate::txn::Txn;

/// What a blocking command waits on, once its arguments are validated.
pub struct BlockReq {
    /// Keys to serve from, in argument order.
    pub keys: Vec<Bytes>,
    /// `None`: wait forever (timeout 0).
    pub timeout: Option<Duration>,
}

/// Serves a blocking command from one key: `Ok(None)` when that key has
/// nothing (absent).
pub type ServeFn = fn(&mut Txn<'_>, &[Bytes], &[u8]) -> Result<Option<Reply>, CmdError>;

/// The blocking-specific behaviour of one command.
pub struct BlockOps {
    /// Validates the arguments (timeout, sides, counts) and names the keys.
    pub parse: fn(&[Bytes]) -> Result<BlockReq, CmdError>,
    /// Serves the command from `key` if possible; `Ok(None)`: nothing
    /// there (absent key).
    pub serve: ServeFn,
    /// The reply when it cannot be served inside MULTI (it never blocks
    /// there).
    pub empty_in_multi: fn() -> Reply,
}

impl BlockOps {
    /// Tries every key in order; the first that can serve wins. A key of
    /// the wrong type before it answers WRONGTYPE (as Redis).
    ///
    /// # Errors
    /// WRONGTYPE, storage errors.
    pub fn attempt(
        &self,
        t: &mut Txn<'_>,
        args: &[Bytes],
        req: &BlockReq,
    ) -> Result<Option<Reply>, CmdError> {
        for k in &req.keys {
            if let Some(r) = (self.serve)(t, args, k)? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }
}

/// Redis's reply to a blocked list command that timed out.
pub fn timeout_reply() -> Reply {
    Reply::NilArray
}

const fn bspec(
    name: &'static str,
    arity: i32,
    keys: (i32, i32, i32),
    ops: &'static BlockOps,
    summary: &'static str,
) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags: WRITE,
        first_key: keys.0,
        last_key: keys.1,
        step: keys.2,
        handler: Handler::Blocking(ops),
        group: "list",
        summary,
    }
}

static BLPOP: BlockOps = BlockOps {
    parse: parse_keys_then_timeout,
    serve: serve_blpop,
    empty_in_multi: nil_array,
};
static BRPOP: BlockOps = BlockOps {
    parse: parse_keys_then_timeout,
    serve: serve_brpop,
    empty_in_multi: nil_array,
};
static BLMOVE: BlockOps = BlockOps {
    parse: parse_blmove,
    serve: serve_blmove,
    empty_in_multi: nil,
};
static BRPOPLPUSH: BlockOps = BlockOps {
    parse: parse_brpoplpush,
    serve: serve_brpoplpush,
    empty_in_multi: nil,
};
static BLMPOP: BlockOps = BlockOps {
    parse: parse_blmpop,
    serve: serve_blmpop,
    empty_in_multi: nil_array,
};

pub(crate) const COMMANDS: &[CommandSpec] = &[
    bspec("blpop", -3, (1, -2, 1), &BLPOP, "Removes and returns the first element in a list. Blocks until an element is available otherwise. Deletes the list if the last element was popped."),
    bspec("brpop", -3, (1, -2, 1), &BRPOP, "Removes and returns the last element in a list. Blocks until an element is available otherwise. Deletes the list if the last element was popped."),
    bspec("blmove", 6, (1, 2, 1), &BLMOVE, "Pops an element from a list, pushes it to another list and returns it. Blocks until an element is available otherwise. Deletes the list if the last element was moved."),
    bspec("brpoplpush", 4, (1, 2, 1), &BRPOPLPUSH, "Pops an element from a list, pushes it to another list and returns it. Block until an element is available otherwise. Deletes the list if the last element was popped."),
    bspec("blmpop", -5, (0, 0, 0), &BLMPOP, "Pops the first element from one of multiple lists. Blocks until an element is available otherwise. Deletes the list if the last element was popped."),
];

fn nil() -> Reply {
    Reply::Nil
}

fn nil_array() -> Reply {
    Reply::NilArray
}

/// Redis 7's timeout argument: seconds as a float, 0 = forever, rounded up
/// to whole milliseconds.
///
/// # Errors
/// Redis's texts for non-numbers, negatives and overflow.
pub fn parse_timeout(b: &[u8]) -> Result<Option<Duration>, CmdError> {
    let not_float = || CmdError::msg("ERR timeout is not a float or out of range");
    let s = std::str::from_utf8(b).map_err(|_| not_float())?;
    if s.is_empty() || s.trim() != s {
        return Err(not_float());
    }
    let v: f64 = s.parse().map_err(|_| not_float())?;
    if v.is_nan() {
        return Err(not_float());
    }
    if v < 0.0 {
        return Err(CmdError::msg("ERR timeout is negative"));
    }
    let ms = (v * 1000.0).ceil();
    if !ms.is_finite() || ms > i64::MAX as f64 / 2.0 {
        // Redis 7.0 converts an out-of-range value to a negative integer
        // and answers this (checked against redis-server 7.0.15).
        return Err(CmdError::msg("ERR timeout is negative"));
    }
    if ms == 0.0 {
        return Ok(None);
    }
    Ok(Some(Duration::from_millis(ms as u64)))
}

fn parse_keys_then_timeout(a: &[Bytes]) -> Result<BlockReq, CmdError> {
    let timeout = parse_timeout(&a[a.len() - 1])?;
    Ok(BlockReq {
        keys: a[1..a.len() - 1].to_vec(),
        timeout,
    })
}

fn serve_pop(t: &mut Txn<'_>, key: &[u8], left: bool) -> Result<Option<Reply>, CmdError> {
    Ok(pop_some(t, key, left, 1)?.and_then(|mut v| {
        v.pop().map(|e| {
            Reply::Array(vec![
                Reply::bulk(Bytes::copy_from_slice(key)),
                Reply::bulk(e),
            ])
        })
    }))
}

fn serve_blpop(t: &mut Txn<'_>, _a: &[Bytes], key: &[u8]) -> Result<Option<Reply>, CmdError> {
    serve_pop(t, key, true)
}

fn serve_brpop(t: &mut Txn<'_>, _a: &[Bytes], key: &[u8]) -> Result<Option<Reply>, CmdError> {
    serve_pop(t, key, false)
}

fn parse_blmove(a: &[Bytes]) -> Result<BlockReq, CmdError> {
    parse_side_arg(&a[3])?;
    parse_side_arg(&a[4])?;
    Ok(BlockReq {
        keys: vec![a[1].clone()],
        timeout: parse_timeout(&a[5])?,
    })
}

fn serve_blmove(t: &mut Txn<'_>, a: &[Bytes], key: &[u8]) -> Result<Option<Reply>, CmdError> {
    let from_left = parse_side_arg(&a[3])?;
    let to_left = parse_side_arg(&a[4])?;
    move_some(t, key, &a[2], from_left, to_left)
}

fn parse_brpoplpush(a: &[Bytes]) -> Result<BlockReq, CmdError> {
    Ok(BlockReq {
        keys: vec![a[1].clone()],
        timeout: parse_timeout(&a[3])?,
    })
}

fn serve_brpoplpush(t: &mut Txn<'_>, a: &[Bytes], key: &[u8]) -> Result<Option<Reply>, CmdError> {
    move_some(t, key, &a[2], false, true)
}

/// BLMPOP timeout numkeys key [key ...] LEFT|RIGHT [COUNT count] →
/// (keys, left, count).
fn blmpop_args(a: &[Bytes]) -> Result<(Vec<Bytes>, bool, u64), CmdError> {
    let numkeys = parse_i64(&a[2])
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| CmdError::msg("ERR numkeys should be greater than 0"))?;
    let numkeys = numkeys as usize;
    if numkeys > a.len().saturating_sub(4) {
        return Err(CmdError::Syntax);
    }
    let keys = a[3..3 + numkeys].to_vec();
    let left = parse_side_arg(&a[3 + numkeys])?;
    let mut count = None;
    let mut i = 4 + numkeys;
    while i < a.len() {
        if is(&a[i], "count") && i + 1 < a.len() && count.is_none() {
            let c = parse_i64(&a[i + 1])
                .ok()
                .filter(|c| *c > 0)
                .ok_or_else(|| CmdError::msg("ERR count should be greater than 0"))?;
            count = Some(c as u64);
            i += 2;
        } else {
            return Err(CmdError::Syntax);
        }
    }
    Ok((keys, left, count.unwrap_or(1)))
}

fn parse_blmpop(a: &[Bytes]) -> Result<BlockReq, CmdError> {
    let timeout = parse_timeout(&a[1])?;
    let (keys, _, _) = blmpop_args(a)?;
    Ok(BlockReq { keys, timeout })
}

fn serve_blmpop(t: &mut Txn<'_>, a: &[Bytes], key: &[u8]) -> Result<Option<Reply>, CmdError> {
    let (_, left, count) = blmpop_args(a)?;
    Ok(pop_some(t, key, left, count)?.map(|v| {
        Reply::Array(vec![
            Reply::bulk(Bytes::copy_from_slice(key)),
            Reply::Array(v.into_iter().map(Reply::bulk).collect()),
        ])
    }))
}

/// What a served waiter receives: its reply and the sequence of the write
/// that served it (the connection waits for its durability).
pub struct Served {
    pub reply: Reply,
    pub seq: Option<u64>,
}

struct Waiter {
    db: u8,
    keys: Vec<Bytes>,
    args: Vec<Bytes>,
    ops: &'static BlockOps,
    client: u64,
    tx: oneshot::Sender<Served>,
}

#[derive(Default)]
struct State {
    next_ticket: u64,
    /// By ticket: ticket order is blocking order.
    waiters: BTreeMap<u64, Waiter>,
    by_key: HashMap<(u8, Bytes), BTreeSet<u64>>,
    /// Keys touched since the unblocker last looked, that have waiters.
    ready: Vec<(u8, Bytes)>,
}

impl State {
    fn remove(&mut self, ticket: u64) -> Option<Waiter> {
        let w = self.waiters.remove(&ticket)?;
        for k in &w.keys {
            let key = (w.db, k.clone());
            if let Some(set) = self.by_key.get_mut(&key) {
                set.remove(&ticket);
                if set.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
        Some(w)
    }
}

/// The server's blocked clients.
#[derive(Default)]
pub struct Blocking {
    state: Mutex<State>,
    wake: Notify,
}

impl Blocking {
    /// Registers a blocked command. Call while holding the engine's write
    /// lock (the write txn of the failed attempt), so no write can make it
    /// servable unnoticed.
    pub fn register(
        &self,
        db: u8,
        keys: Vec<Bytes>,
        args: Vec<Bytes>,
        ops: &'static BlockOps,
        client: u64,
    ) -> (u64, oneshot::Receiver<Served>) {
        let (tx, rx) = oneshot::channel();
        let mut st = self.state.lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        for k in &keys {
            st.by_key.entry((db, k.clone())).or_default().insert(ticket);
        }
        st.waiters.insert(
            ticket,
            Waiter {
                db,
                keys,
                args,
                ops,
                client,
                tx,
            },
        );
        (ticket, rx)
    }

    /// Forgets a waiter (timeout, disconnect, kill). `false`: the unblocker
    /// already took it and its reply is on the way.
    pub fn cancel(&self, ticket: u64) -> bool {
        self.state.lock().remove(ticket).is_some()
    }

    /// Forgets every waiter of a client (its session is going away).
    pub fn cancel_client(&self, client: u64) {
        let mut st = self.state.lock();
        let tickets: Vec<u64> = st
            .waiters
            .iter()
            .filter(|(_, w)| w.client == client)
            .map(|(t, _)| *t)
            .collect();
        for t in tickets {
            st.remove(t);
        }
    }

    /// Clients blocked now (INFO `blocked_clients`).
    pub fn blocked_clients(&self) -> usize {
        self.state.lock().waiters.len()
    }

    /// The key-modified hook: runs under the write lock, so it only marks
    /// keys and wakes the unblocker.
    pub fn touched(&self, touches: &[Touch]) {
        let mut st = self.state.lock();
        if st.waiters.is_empty() {
            return;
        }
        let mut any = false;
        for t in touches {
            // FLUSHDB/FLUSHALL only remove data: nothing becomes servable.
            if let Touch::Key(db, k) = t {
                let key = (*db, Bytes::copy_from_slice(k));
                if st.by_key.contains_key(&key) && !st.ready.contains(&key) {
                    st.ready.push(key);
                    any = true;
                }
            }
        }
        drop(st);
        if any {
            self.wake.notify_one();
        }
    }

    /// Resolves when some key with waiters was touched.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Serves the waiters of every ready key, first blocked first served.
    /// Blocks (write transactions); run on a blocking thread.
    pub fn serve_ready(&self, engine: &Engine) {
        loop {
            let Some((db, key)) = self.state.lock().ready.pop() else {
                return;
            };
            loop {
                let mut t = engine.write_txn(db);
                let head = {
                    let st = self.state.lock();
                    st.by_key
                        .get(&(db, key.clone()))
                        .and_then(|s| s.first().copied())
                        .and_then(|ticket| {
                            st.waiters
                                .get(&ticket)
                                .map(|w| (ticket, w.args.clone(), w.ops))
                        })
                };
                let Some((ticket, args, ops)) = head else {
                    break;
                };
                match (ops.serve)(&mut t, &args, &key) {
                    Ok(Some(reply)) => {
                        // Claim it before committing; if it timed out or
                        // went away meanwhile, the overlay is dropped and
                        // the next waiter gets its chance.
                        let Some(w) = self.state.lock().remove(ticket) else {
                            continue;
                        };
                        let served = match t.commit() {
                            Ok(seq) => Served { reply, seq },
                            Err(e) => Served {
                                reply: Reply::Error(format!("ERR {e}")),
                                seq: None,
                            },
                        };
                        let _ = w.tx.send(served);
                    }
                    // Empty, or WRONGTYPE now (the key was overwritten):
                    // the waiters stay blocked, as in Redis.
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_parsing_follows_redis() {
        assert_eq!(parse_timeout(b"0").unwrap(), None);
        assert_eq!(
            parse_timeout(b"1.5").unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_timeout(b"0.0001").unwrap(),
            Some(Duration::from_millis(1))
        );
        let e = |b: &[u8]| parse_timeout(b).unwrap_err().to_string();
        assert_eq!(e(b"-1"), "ERR timeout is negative");
        assert_eq!(e(b"abc"), "ERR timeout is not a float or out of range");
        assert_eq!(e(b" 1"), "ERR timeout is not a float or out of range");
        assert_eq!(e(b"nan"), "ERR timeout is not a float or out of range");
        assert_eq!(e(b"inf"), "ERR timeout is negative");
    }

    #[test]
    fn blmpop_arguments_are_validated() {
        let a = |s: &str| -> Vec<Bytes> {
            s.split(' ')
                .map(|x| Bytes::copy_from_slice(x.as_bytes()))
                .collect()
        };
        let (keys, left, count) = blmpop_args(&a("blmpop 0 2 a b RIGHT COUNT 3")).unwrap();
        assert_eq!(keys, vec![Bytes::from("a"), Bytes::from("b")]);
        assert!(!left);
        assert_eq!(count, 3);
        let e = |s: &str| blmpop_args(&a(s)).unwrap_err().to_string();
        assert_eq!(
            e("blmpop 0 0 a LEFT"),
            "ERR numkeys should be greater than 0"
        );
        assert_eq!(e("blmpop 0 3 a LEFT"), "ERR syntax error");
        assert_eq!(
            e("blmpop 0 x a LEFT"),
            "ERR numkeys should be greater than 0"
        );
        assert_eq!(e("blmpop 0 1 a UP"), "ERR syntax error");
        assert_eq!(
            e("blmpop 0 1 a LEFT COUNT 0"),
            "ERR count should be greater than 0"
        );
        assert_eq!(e("blmpop 0 1 a LEFT COUNT 1 COUNT 2"), "ERR syntax error");
    }
}
