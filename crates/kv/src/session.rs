//! One client connection's state and command execution: AUTH, SELECT,
//! MULTI/EXEC/WATCH, and the connection/server commands (INFO, CONFIG,
//! CLIENT, COMMAND, HELLO, ...). Data commands are dispatched to their
//! module's handler inside a [`Txn`].
//!
//! A session runs on a blocking thread (RocksDB calls block); the
//! connection task hands it one pipelined batch at a time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use rocksdb::ErrorKind;
use tokio_util::sync::CancellationToken;

use crate::blocking::{BlockOps, Blocking, Served};
use crate::command::{
    self, is, lookup, parse_i64, CommandSpec, Handler, ADMIN, CONN, FAST, NO_AUTH,
};
use crate::config::{parse_memory, Runtime};
use crate::encoding::DBS;
use crate::engine::{now_ms, Engine, Role};
use crate::error::{CmdError, KvError};
use crate::metrics::{CmdLabels, Metrics};
use crate::pattern::glob_match;
use crate::resp::Reply;
use crate::txn::Txn;
use crate::wal::FsyncPolicy;
use crate::watch::Watches;

const fn spec(name: &'static str, arity: i32, flags: u32, summary: &'static str) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags,
        first_key: 0,
        last_key: 0,
        step: 0,
        handler: Handler::Session,
        group: "connection",
        summary,
    }
}

const fn wspec(name: &'static str, arity: i32, flags: u32, summary: &'static str) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags,
        first_key: 1,
        last_key: -1,
        step: 1,
        handler: Handler::Session,
        group: "transactions",
        summary,
    }
}

pub(crate) const COMMANDS: &[CommandSpec] = &[
    spec(
        "ping",
        -1,
        CONN | FAST,
        "Returns the server's liveliness response.",
    ),
    spec("echo", 2, CONN | FAST, "Returns the given string."),
    spec("quit", -1, CONN | FAST | NO_AUTH, "Closes the connection."),
    spec("reset", 1, CONN | FAST | NO_AUTH, "Resets the connection."),
    spec(
        "auth",
        -2,
        CONN | FAST | NO_AUTH,
        "Authenticates the connection.",
    ),
    spec(
        "hello",
        -1,
        CONN | FAST | NO_AUTH,
        "Handshakes with the Redis server.",
    ),
    spec("select", 2, CONN | FAST, "Changes the selected database."),
    spec("multi", 1, CONN | FAST, "Starts a transaction."),
    spec("exec", 1, CONN, "Executes all commands in a transaction."),
    spec("discard", 1, CONN | FAST, "Discards a transaction."),
    wspec(
        "watch",
        -2,
        CONN | FAST,
        "Monitors changes to keys to determine the execution of a transaction.",
    ),
    spec(
        "unwatch",
        1,
        CONN | FAST,
        "Forgets about watched keys of a transaction.",
    ),
    spec(
        "info",
        -1,
        CONN,
        "Returns information and statistics about the server.",
    ),
    spec(
        "config",
        -2,
        ADMIN,
        "A container for server configuration commands.",
    ),
    spec(
        "command",
        -1,
        CONN,
        "Returns detailed information about all commands.",
    ),
    spec(
        "client",
        -2,
        CONN,
        "A container for client connection commands.",
    ),
    spec("time", 1, CONN | FAST, "Returns the server time."),
    spec("debug", -2, ADMIN, "A container for debugging commands."),
    spec(
        "lastsave",
        1,
        CONN | FAST,
        "Returns the Unix timestamp of the last successful save to disk.",
    ),
    spec(
        "readonly",
        1,
        CONN | FAST,
        "Enables read-only queries for a connection to a replica.",
    ),
    spec(
        "readwrite",
        1,
        CONN | FAST,
        "Enables read-write queries for a connection to a replica.",
    ),
    spec(
        "pikafs",
        -2,
        CONN,
        "pikafs extensions: SEQ, WAITSEQ seq timeout_ms, COMPACT.",
    ),
];

/// Most a `PIKAFS WAITSEQ` may wait.
/// Writes that may run on an async worker
/// ([`Session::is_inline_write`]): their work is a few point reads and
/// writes per argument, never a walk over existing rows or a copy of a
/// stored value.
pub const INLINE_WRITES: &[&str] = &[
    "set",
    "setnx",
    "setex",
    "psetex",
    "mset",
    "msetnx",
    "incr",
    "decr",
    "incrby",
    "decrby",
    "incrbyfloat",
    "hset",
    "hmset",
    "hsetnx",
    "hincrby",
    "hincrbyfloat",
    "hdel",
    "lpush",
    "rpush",
    "lpushx",
    "rpushx",
    "sadd",
    "srem",
    "zadd",
    "zincrby",
    "zrem",
    "expire",
    "pexpire",
    "persist",
];

pub const MAX_WAITSEQ_MS: u64 = 60_000;

/// State shared by all sessions of one server.
pub struct Shared {
    pub engine: Arc<Engine>,
    pub runtime: Runtime,
    pub watches: Arc<Watches>,
    /// Clients blocked in BLPOP & co.
    pub blocking: Arc<Blocking>,
    pub metrics: Metrics,
    pub clients: Mutex<BTreeMap<u64, Arc<ClientInfo>>>,
    pub next_client_id: AtomicU64,
    pub started: Instant,
    pub run_id: String,
    pub listen: SocketAddr,
    pub commands_processed: AtomicU64,
    pub connections_received: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub expired_keys: AtomicU64,
}

/// What CLIENT LIST shows about a connection.
pub struct ClientInfo {
    pub id: u64,
    pub addr: SocketAddr,
    pub created: Instant,
    pub kill: CancellationToken,
    pub state: Mutex<ClientState>,
}

#[derive(Default)]
pub struct ClientState {
    pub name: Option<String>,
    pub db: u8,
    pub last_cmd: String,
    pub last_active: Option<Instant>,
    pub multi: Option<usize>,
    pub lib_name: Option<String>,
    pub lib_ver: Option<String>,
}

impl ClientInfo {
    fn line(&self, listen: SocketAddr) -> String {
        let s = self.state.lock();
        let idle = s.last_active.map_or(0, |t| t.elapsed().as_secs());
        format!(
            "id={} addr={} laddr={} fd=0 name={} age={} idle={} flags=N db={} sub=0 psub=0 ssub=0 multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user=default redir=-1 resp=2 lib-name={} lib-ver={}",
            self.id,
            self.addr,
            listen,
            s.name.as_deref().unwrap_or(""),
            self.created.elapsed().as_secs(),
            idle,
            s.db,
            s.multi.map_or(-1, |n| n as i64),
            if s.last_cmd.is_empty() { "NULL" } else { &s.last_cmd },
            s.lib_name.as_deref().unwrap_or(""),
            s.lib_ver.as_deref().unwrap_or(""),
        )
    }
}

/// The result of executing one request.
pub struct Outcome {
    pub reply: Option<Reply>,
    /// The sequence of the write it committed, if any.
    pub seq: Option<u64>,
    /// Whether it read or wrote the keyspace (its reply must wait for
    /// durability of what it saw).
    pub touched_data: bool,
    /// The request has no reply yet: the connection task must wait for it
    /// (without holding a thread) before executing anything else.
    pub blocked: Option<Blocked>,
}

/// A request that waits on the connection task.
pub enum Blocked {
    /// A blocking list command, registered with [`Blocking`]; on timeout
    /// answer [`crate::blocking::timeout_reply`].
    Pop {
        ticket: u64,
        rx: tokio::sync::oneshot::Receiver<Served>,
        timeout: Option<std::time::Duration>,
    },
    /// `PIKAFS WAITSEQ` on an RO node: `:1` once the applied sequence
    /// reaches `seq`, `:0` after `timeout`.
    Seq {
        seq: u64,
        timeout: std::time::Duration,
    },
}

/// One connection's state.
pub struct Session {
    shared: Arc<Shared>,
    info: Arc<ClientInfo>,
    db: u8,
    authed: bool,
    multi: Option<Vec<Vec<Bytes>>>,
    multi_error: bool,
    dirty: Arc<AtomicBool>,
    watching: bool,
    /// Set by QUIT: close after sending the replies.
    pub closing: bool,
}

impl Session {
    pub fn new(shared: Arc<Shared>, addr: SocketAddr, kill: CancellationToken) -> Session {
        let id = shared.next_client_id.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ClientInfo {
            id,
            addr,
            created: Instant::now(),
            kill,
            state: Mutex::new(ClientState::default()),
        });
        shared.clients.lock().insert(id, info.clone());
        let authed = shared.runtime.requirepass.read().is_none();
        Session {
            shared,
            info,
            db: 0,
            authed,
            multi: None,
            multi_error: false,
            dirty: Arc::new(AtomicBool::new(false)),
            watching: false,
            closing: false,
        }
    }

    pub fn id(&self) -> u64 {
        self.info.id
    }

    fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// Whether `req` may join a pipelined group ([`Session::execute_group`])
    /// and of which kind: `Some(true)` a data write command (RW only),
    /// `Some(false)` a data read command, with a valid arity, outside
    /// MULTI, on an authenticated session. `None` (session commands,
    /// blocking commands, errors) runs alone through [`Session::execute`]
    /// and ends the group; a read ends a write group and a write a read
    /// group, so every command sees the writes queued before it.
    pub fn group_kind(&self, req: &[Bytes]) -> Option<bool> {
        if !self.authed || self.multi.is_some() {
            return None;
        }
        let spec = lookup(req.first()?)?;
        if !matches!(spec.handler, Handler::Data(_)) || spec.check_arity(req.len()).is_err() {
            return None;
        }
        let write = spec.is_write();
        if write && self.engine().role() != Role::Rw {
            return None; // answered READONLY by execute()
        }
        Some(write)
    }

    /// Runs consecutive pipelined data commands of one kind (each has
    /// [`Session::group_kind`] `== Some(write)`) in one transaction.
    ///
    /// Writes: one write-lock hold, one overlay and one WriteBatch for the
    /// group instead of one per command. Each command keeps its own reply
    /// and its atomicity: a command that fails is rolled back to its mark
    /// and answers its error, the others stand (as if run one by one). If
    /// the commit fails, every command of the group answers the error and
    /// nothing of it was written. The caller acknowledges the replies only
    /// once the returned sequence is durable, as for single commands.
    ///
    /// Reads: one snapshot (RW) or one shared catch-up lock hold (RO) for
    /// the group instead of one per command: the commands see one point,
    /// as if run back to back with nothing in between, which Redis allows
    /// for a pipeline.
    pub fn execute_group(
        &mut self,
        reqs: Vec<Vec<Bytes>>,
        write: bool,
    ) -> (Vec<Reply>, Option<u64>) {
        let engine = self.shared.engine.clone();
        let t = if write {
            engine.write_txn(self.db)
        } else {
            engine.read_txn(self.db)
        };
        self.run_group(t, &reqs, write)
            .expect("a normal txn never needs a rerun")
    }

    /// Whether `req` may run on an async worker through
    /// [`Session::execute_reads_in_memory`]: a groupable read flagged FAST
    /// (O(1) or O(log n) in Redis) that is cheap here too. ZRANK/ZREVRANK
    /// and ZCOUNT/ZLEXCOUNT walk rows here, DBSIZE counts keys: not cheap.
    pub fn is_inline_read(&self, req: &[Bytes]) -> bool {
        if self.group_kind(req) != Some(false) {
            return false;
        }
        lookup(&req[0]).is_some_and(|spec| {
            spec.flags & FAST != 0
                && !matches!(
                    spec.name,
                    "zrank" | "zrevrank" | "zcount" | "zlexcount" | "dbsize"
                )
        })
    }

    /// Whether `req` may run on an async worker through
    /// [`Session::execute_writes_in_memory`]: a groupable write whose work
    /// is bounded by its own arguments (no walk over existing rows), from
    /// [`INLINE_WRITES`].
    pub fn is_inline_write(&self, req: &[Bytes]) -> bool {
        self.group_kind(req) == Some(true)
            && lookup(&req[0]).is_some_and(|spec| INLINE_WRITES.contains(&spec.name))
    }

    /// Runs `reqs` (every one [`Session::is_inline_write`]) as one write
    /// group that never waits long, for an async worker: the write handed
    /// to a blocking thread and back costs two thread wake-ups per batch,
    /// as much as a pipeline of 16 SETs itself. `None`, with nothing
    /// written or counted, when the write lock stays busy, a read would
    /// need the disk, or RocksDB would stall the write: run the same
    /// requests normally. Otherwise as [`Session::execute_group`].
    pub fn execute_writes_in_memory(
        &mut self,
        reqs: &[Vec<Bytes>],
    ) -> Option<(Vec<Reply>, Option<u64>)> {
        let engine = self.shared.engine.clone();
        let t = engine.write_txn_in_memory(self.db)?;
        self.run_group(t, reqs, true)
    }

    /// Runs `reqs` (every one [`Session::is_inline_read`]) as one read
    /// group served from memory only (memtables and block cache), so the
    /// caller can run it on an async worker instead of a blocking thread:
    /// for GET-heavy pipelines the thread handoff costs more than the
    /// reads. `None` when that is not possible — on RO a catch-up holds
    /// the lock, or some read needed the disk — and nothing was counted:
    /// run the same requests normally. Replies and metrics are those of
    /// [`Session::execute_group`].
    pub fn execute_reads_in_memory(&mut self, reqs: &[Vec<Bytes>]) -> Option<Vec<Reply>> {
        let engine = self.shared.engine.clone();
        let t = Txn::new_read_in_memory(&engine, self.db)?;
        self.run_group(t, reqs, false).map(|(r, _)| r)
    }

    /// The body of [`Session::execute_group`] on an open txn; `None` when
    /// the txn is memory-only and a read needed the disk (nothing counted).
    fn run_group(
        &mut self,
        mut t: Txn<'_>,
        reqs: &[Vec<Bytes>],
        write: bool,
    ) -> Option<(Vec<Reply>, Option<u64>)> {
        let mut replies = Vec::with_capacity(reqs.len());
        let mut names = Vec::with_capacity(reqs.len());
        let mut spent = Vec::with_capacity(reqs.len());
        for args in reqs {
            let start = Instant::now();
            let Some(spec) = lookup(&args[0]) else {
                // group_kind() checked it; answer as execute() would.
                replies.push(Reply::Error(command::unknown_command(args).to_string()));
                names.push("unknown");
                continue;
            };
            let f = match spec.handler {
                Handler::Data(f) if spec.is_write() == write => f,
                _ => {
                    replies.push(Reply::Error("ERR internal: command not groupable".into()));
                    names.push(spec.name);
                    continue;
                }
            };
            let r = if write {
                let mark = t.mark();
                match f(&mut t, args) {
                    Ok(r) => r,
                    Err(e) => {
                        t.rollback_to_mark(mark);
                        Reply::Error(e.to_string())
                    }
                }
            } else {
                f(&mut t, args).unwrap_or_else(|e| Reply::Error(e.to_string()))
            };
            if t.needs_io() {
                return None;
            }
            spent.push(start.elapsed());
            replies.push(r);
            names.push(spec.name);
        }
        let seq = if write {
            let in_memory = t.is_in_memory();
            match t.commit() {
                Ok(seq) => seq,
                Err(KvError::Rocks(e)) if in_memory && e.kind() == ErrorKind::Incomplete => {
                    // RocksDB would stall this write: nothing was written.
                    return None;
                }
                Err(e) => {
                    let msg = format!("ERR {e}");
                    for r in replies.iter_mut() {
                        *r = Reply::Error(msg.clone());
                    }
                    None
                }
            }
        } else {
            drop(t);
            None
        };
        let m = &self.shared.metrics;
        for d in spent {
            m.command_seconds.observe(d.as_secs_f64());
        }
        // One labelled-counter lookup per run of the same command (a GET
        // pipeline is one run), not one per command.
        let mut i = 0;
        while i < names.len() {
            let name = names[i];
            let (mut n, mut errors) = (0u64, 0u64);
            while i < names.len() && names[i] == name {
                n += 1;
                errors += u64::from(replies[i].is_error());
                i += 1;
            }
            let labels = CmdLabels {
                cmd: name.to_string(),
            };
            m.commands.get_or_create(&labels).inc_by(n);
            if errors > 0 {
                m.command_errors.get_or_create(&labels).inc_by(errors);
            }
        }
        self.shared
            .commands_processed
            .fetch_add(replies.len() as u64, Ordering::Relaxed);
        if let Some(name) = names.last() {
            let mut st = self.info.state.lock();
            st.last_cmd.clear();
            st.last_cmd.push_str(name);
            st.last_active = Some(Instant::now());
        }
        Some((replies, seq))
    }

    /// Executes one request (`args[0]` is the command name).
    pub fn execute(&mut self, args: Vec<Bytes>) -> Outcome {
        let mut out = Outcome {
            reply: None,
            seq: None,
            touched_data: false,
            blocked: None,
        };
        if args.is_empty() {
            return out;
        }
        let start = Instant::now();
        let spec = lookup(&args[0]);
        let name = spec.map_or("unknown", |s| s.name);
        {
            let mut st = self.info.state.lock();
            st.last_cmd.clear();
            st.last_cmd.push_str(name);
            st.last_active = Some(start);
        }
        let reply = match self.dispatch(spec, args, &mut out) {
            Ok(r) => r,
            Err(e) => Reply::Error(e.to_string()),
        };
        let labels = CmdLabels {
            cmd: name.to_string(),
        };
        let m = &self.shared.metrics;
        m.commands.get_or_create(&labels).inc();
        if reply.is_error() {
            m.command_errors.get_or_create(&labels).inc();
        }
        m.command_seconds.observe(start.elapsed().as_secs_f64());
        self.shared
            .commands_processed
            .fetch_add(1, Ordering::Relaxed);
        out.reply = Some(reply);
        out
    }

    fn dispatch(
        &mut self,
        spec: Option<&'static CommandSpec>,
        args: Vec<Bytes>,
        out: &mut Outcome,
    ) -> Result<Reply, CmdError> {
        let Some(spec) = spec else {
            self.flag_multi();
            return Err(command::unknown_command(&args));
        };
        if let Err(e) = spec.check_arity(args.len()) {
            self.flag_multi();
            return Err(e);
        }
        if !self.authed && spec.flags & NO_AUTH == 0 {
            if self.shared.runtime.requirepass.read().is_some() {
                self.flag_multi();
                return Err(CmdError::NoAuth);
            }
            self.authed = true;
        }
        if self.multi.is_some()
            && !matches!(
                spec.name,
                "exec" | "discard" | "multi" | "watch" | "quit" | "reset"
            )
        {
            if spec.is_write() && self.engine().role() == Role::Ro {
                self.flag_multi();
                return Err(CmdError::ReadOnly);
            }
            let q = self.multi.as_mut().expect("checked is_some");
            q.push(args);
            self.info.state.lock().multi = Some(q.len());
            return Ok(Reply::Status("QUEUED".into()));
        }
        match spec.handler {
            Handler::Data(f) => {
                out.touched_data = true;
                if spec.is_write() {
                    if self.engine().role() == Role::Ro {
                        return Err(CmdError::ReadOnly);
                    }
                    let engine = self.shared.engine.clone();
                    let mut t = engine.write_txn(self.db);
                    let r = f(&mut t, &args)?;
                    out.seq = t.commit().map_err(|e| CmdError::msg(format!("ERR {e}")))?;
                    Ok(r)
                } else {
                    let engine = self.shared.engine.clone();
                    let mut t = engine.read_txn(self.db);
                    f(&mut t, &args)
                }
            }
            Handler::Blocking(ops) => {
                out.touched_data = true;
                if self.engine().role() == Role::Ro {
                    return Err(CmdError::ReadOnly);
                }
                self.block_or_serve(ops, args, out)
            }
            Handler::Session => self.session_command(spec.name, &args, None, out),
        }
    }

    /// Serves a blocking command now if one of its keys can, else parks it
    /// (registered under the write lock, see `blocking.rs`).
    fn block_or_serve(
        &mut self,
        ops: &'static BlockOps,
        args: Vec<Bytes>,
        out: &mut Outcome,
    ) -> Result<Reply, CmdError> {
        let req = (ops.parse)(&args)?;
        let engine = self.shared.engine.clone();
        let mut t = engine.write_txn(self.db);
        if let Some(r) = ops.attempt(&mut t, &args, &req)? {
            out.seq = t.commit().map_err(|e| CmdError::msg(format!("ERR {e}")))?;
            return Ok(r);
        }
        let (ticket, rx) =
            self.shared
                .blocking
                .register(self.db, req.keys, args, ops, self.info.id);
        drop(t);
        out.blocked = Some(Blocked::Pop {
            ticket,
            rx,
            timeout: req.timeout,
        });
        // Placeholder; the connection task answers when served or timed out.
        Ok(Reply::NilArray)
    }

    /// PIKAFS SEQ | WAITSEQ seq timeout_ms | COMPACT.
    fn pikafs(&mut self, a: &[Bytes], out: &mut Outcome) -> Result<Reply, CmdError> {
        let eng = self.shared.engine.clone();
        let sub = String::from_utf8_lossy(&a[1]).to_ascii_lowercase();
        match (sub.as_str(), a.len()) {
            ("seq", 2) => {
                // The batch waits for durability of everything up to this
                // before replying (appendfsync always).
                out.touched_data = true;
                Ok(Reply::Int(eng.applied_sequence() as i64))
            }
            ("waitseq", 4) => {
                let seq = parse_i64(&a[2])?;
                let ms = parse_i64(&a[3])?;
                if !(0..=MAX_WAITSEQ_MS as i64).contains(&ms) {
                    return Err(CmdError::msg(format!(
                        "ERR timeout_ms must be between 0 and {MAX_WAITSEQ_MS}"
                    )));
                }
                let seq = seq.max(0) as u64;
                if eng.applied_sequence() >= seq {
                    return Ok(Reply::Int(1));
                }
                if eng.role() == Role::Rw || ms == 0 {
                    return Ok(Reply::Int(0));
                }
                out.blocked = Some(Blocked::Seq {
                    seq,
                    timeout: std::time::Duration::from_millis(ms as u64),
                });
                Ok(Reply::Int(0))
            }
            ("compact", 2) => {
                if eng.role() == Role::Ro {
                    return Err(CmdError::msg(
                        "ERR PIKAFS COMPACT is only allowed on the RW node",
                    ));
                }
                eng.compact_all()
                    .map_err(|e| CmdError::msg(format!("ERR compaction failed: {e}")))?;
                Ok(Reply::ok())
            }
            _ => Err(CmdError::msg(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try PIKAFS SEQ, PIKAFS WAITSEQ <seq> <timeout_ms>, PIKAFS COMPACT.",
                String::from_utf8_lossy(&a[1])
            ))),
        }
    }

    fn flag_multi(&mut self) {
        if self.multi.is_some() {
            self.multi_error = true;
        }
    }

    fn unwatch(&mut self) {
        if self.watching {
            self.shared.watches.unwatch_all(self.info.id);
            self.watching = false;
        }
        self.dirty.store(false, Ordering::Release);
    }

    fn end_multi(&mut self) {
        self.multi = None;
        self.multi_error = false;
        self.info.state.lock().multi = None;
    }

    /// Connection/server commands. `txn` is set when running inside EXEC
    /// (SELECT then also switches the transaction's db).
    fn session_command(
        &mut self,
        name: &str,
        a: &[Bytes],
        txn: Option<&mut Txn<'_>>,
        out: &mut Outcome,
    ) -> Result<Reply, CmdError> {
        match name {
            "ping" => Ok(match a.len() {
                1 => Reply::Status("PONG".into()),
                2 => Reply::Bulk(a[1].clone()),
                _ => return Err(CmdError::Arity("ping".into())),
            }),
            "echo" => Ok(Reply::Bulk(a[1].clone())),
            "quit" => {
                self.closing = true;
                Ok(Reply::ok())
            }
            "reset" => {
                self.end_multi();
                self.unwatch();
                self.db = 0;
                self.info.state.lock().db = 0;
                self.authed = self.shared.runtime.requirepass.read().is_none();
                Ok(Reply::Status("RESET".into()))
            }
            "auth" => self.auth(a),
            "hello" => self.hello(a),
            "select" => {
                let idx = parse_i64(&a[1])?;
                if !(0..DBS as i64).contains(&idx) {
                    return Err(CmdError::msg("ERR DB index is out of range"));
                }
                self.db = idx as u8;
                self.info.state.lock().db = self.db;
                if let Some(t) = txn {
                    t.db = self.db;
                }
                Ok(Reply::ok())
            }
            "multi" => {
                if self.multi.is_some() {
                    return Err(CmdError::msg("ERR MULTI calls can not be nested"));
                }
                self.multi = Some(Vec::new());
                self.multi_error = false;
                self.info.state.lock().multi = Some(0);
                Ok(Reply::ok())
            }
            "discard" => {
                if self.multi.is_none() {
                    return Err(CmdError::msg("ERR DISCARD without MULTI"));
                }
                self.end_multi();
                self.unwatch();
                Ok(Reply::ok())
            }
            "exec" => self.exec(out),
            "watch" => {
                if self.multi.is_some() {
                    return Err(CmdError::msg("ERR WATCH inside MULTI is not allowed"));
                }
                for k in &a[1..] {
                    self.shared
                        .watches
                        .watch(self.info.id, &self.dirty, self.db, k);
                }
                self.watching = true;
                Ok(Reply::ok())
            }
            "unwatch" => {
                self.unwatch();
                Ok(Reply::ok())
            }
            "info" => Ok(Reply::bulk(self.info_text(&a[1..]))),
            "config" => self.config(a),
            "command" => command_cmd(a),
            "client" => self.client(a),
            "time" => {
                let us = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_micros())
                    .unwrap_or(0);
                Ok(Reply::Array(vec![
                    Reply::bulk((us / 1_000_000).to_string()),
                    Reply::bulk((us % 1_000_000).to_string()),
                ]))
            }
            "debug" => {
                if is(&a[1], "sleep") && a.len() == 3 {
                    let secs: f64 = std::str::from_utf8(&a[2])
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                        .ok_or(CmdError::NotFloat)?;
                    std::thread::sleep(std::time::Duration::from_secs_f64(secs.min(60.0)));
                    return Ok(Reply::ok());
                }
                Err(CmdError::msg(format!(
                    "ERR unknown subcommand '{}'. Try DEBUG HELP.",
                    String::from_utf8_lossy(&a[1])
                )))
            }
            "lastsave" => Ok(Reply::Int((now_ms() / 1000) as i64)),
            "readonly" | "readwrite" => Ok(Reply::ok()),
            "pikafs" => {
                if txn.is_some() && !is(&a[1], "seq") {
                    return Err(CmdError::msg("ERR only PIKAFS SEQ is allowed inside MULTI"));
                }
                self.pikafs(a, out)
            }
            other => Err(CmdError::msg(format!("ERR unhandled command '{other}'"))),
        }
    }

    fn auth(&mut self, a: &[Bytes]) -> Result<Reply, CmdError> {
        let pass = self.shared.runtime.requirepass.read().clone();
        let (user, given) = match a.len() {
            2 => (None, &a[1]),
            3 => (Some(&a[1]), &a[2]),
            _ => return Err(CmdError::Syntax),
        };
        let Some(pass) = pass else {
            if user.is_none() {
                return Err(CmdError::msg("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"));
            }
            if user.is_some_and(|u| u.as_ref() == b"default") {
                self.authed = true;
                return Ok(Reply::ok());
            }
            return Err(CmdError::msg(
                "WRONGPASS invalid username-password pair or user is disabled.",
            ));
        };
        let user_ok = user.is_none_or(|u| u.as_ref() == b"default");
        if user_ok && given.as_ref() == pass.as_bytes() {
            self.authed = true;
            Ok(Reply::ok())
        } else {
            Err(CmdError::msg(
                "WRONGPASS invalid username-password pair or user is disabled.",
            ))
        }
    }

    fn hello(&mut self, a: &[Bytes]) -> Result<Reply, CmdError> {
        let mut i = 1;
        if a.len() > 1 {
            let v = parse_i64(&a[1]).map_err(|_| {
                CmdError::msg("ERR Protocol version is not an integer or out of range")
            })?;
            if v != 2 {
                return Err(CmdError::msg("NOPROTO unsupported protocol version"));
            }
            i = 2;
        }
        while i < a.len() {
            if is(&a[i], "auth") && i + 2 < a.len() {
                self.auth(&[
                    Bytes::from_static(b"auth"),
                    a[i + 1].clone(),
                    a[i + 2].clone(),
                ])?;
                i += 3;
            } else if is(&a[i], "setname") && i + 1 < a.len() {
                self.info.state.lock().name = Some(String::from_utf8_lossy(&a[i + 1]).into_owned());
                i += 2;
            } else {
                return Err(CmdError::msg(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(&a[i])
                )));
            }
        }
        if !self.authed {
            return Err(CmdError::NoAuth);
        }
        let role = if self.engine().role() == Role::Rw {
            "master"
        } else {
            "replica"
        };
        Ok(Reply::Array(vec![
            Reply::bulk_str("server"),
            Reply::bulk_str("redis"),
            Reply::bulk_str("version"),
            Reply::bulk_str(crate::REDIS_VERSION),
            Reply::bulk_str("proto"),
            Reply::Int(2),
            Reply::bulk_str("id"),
            Reply::Int(self.info.id as i64),
            Reply::bulk_str("mode"),
            Reply::bulk_str("standalone"),
            Reply::bulk_str("role"),
            Reply::bulk_str(role),
            Reply::bulk_str("modules"),
            Reply::Array(vec![]),
        ]))
    }

    fn exec(&mut self, out: &mut Outcome) -> Result<Reply, CmdError> {
        let Some(queue) = self.multi.take() else {
            return Err(CmdError::msg("ERR EXEC without MULTI"));
        };
        let aborted = self.multi_error;
        self.end_multi();
        if aborted {
            self.unwatch();
            return Err(CmdError::msg(
                "EXECABORT Transaction discarded because of previous errors.",
            ));
        }
        let specs: Vec<&'static CommandSpec> = queue
            .iter()
            .map(|a| lookup(&a[0]).expect("queued commands were looked up"))
            .collect();
        let any_write = specs.iter().any(|s| s.is_write());
        let engine = self.shared.engine.clone();
        // The write lock (or snapshot) is taken before the WATCH check, so
        // no write can slip in between the check and the commit.
        let mut t = if any_write {
            engine.write_txn(self.db)
        } else {
            engine.read_txn(self.db)
        };
        if self.dirty.load(Ordering::Acquire) {
            self.unwatch();
            return Ok(Reply::NilArray);
        }
        out.touched_data = true;
        let mut replies = Vec::with_capacity(queue.len());
        for (args, spec) in queue.into_iter().zip(specs) {
            let r = match spec.handler {
                Handler::Data(f) => {
                    let save = t.savepoint();
                    match f(&mut t, &args) {
                        Ok(r) => r,
                        Err(e) => {
                            // A failed command leaves nothing behind; the
                            // others still run (Redis has no rollback).
                            t.rollback_to(save);
                            Reply::Error(e.to_string())
                        }
                    }
                }
                Handler::Session => match self.session_command(spec.name, &args, Some(&mut t), out)
                {
                    Ok(r) => r,
                    Err(e) => Reply::Error(e.to_string()),
                },
                // Inside MULTI a blocking command never blocks.
                Handler::Blocking(ops) => {
                    let save = t.savepoint();
                    let r = (ops.parse)(&args).and_then(|req| ops.attempt(&mut t, &args, &req));
                    match r {
                        Ok(Some(r)) => r,
                        Ok(None) => (ops.empty_in_multi)(),
                        Err(e) => {
                            t.rollback_to(save);
                            Reply::Error(e.to_string())
                        }
                    }
                }
            };
            replies.push(r);
        }
        self.unwatch();
        out.seq = t.commit().map_err(|e| CmdError::msg(format!("ERR {e}")))?;
        Ok(Reply::Array(replies))
    }

    fn config(&mut self, a: &[Bytes]) -> Result<Reply, CmdError> {
        let rt = &self.shared.runtime;
        let sub = String::from_utf8_lossy(&a[1]).to_ascii_lowercase();
        match sub.as_str() {
            "get" if a.len() >= 3 => {
                let mut params: BTreeMap<String, String> = BTreeMap::new();
                let wal = self
                    .engine()
                    .wal()
                    .map(|w| w.policy())
                    .unwrap_or(FsyncPolicy::Always);
                let known: Vec<(&str, String)> = vec![
                    (
                        "requirepass",
                        rt.requirepass.read().clone().unwrap_or_default(),
                    ),
                    ("appendfsync", wal.name().into()),
                    ("appendonly", "yes".into()),
                    ("maxmemory", rt.maxmemory.read().to_string()),
                    ("maxmemory-policy", "noeviction".into()),
                    ("databases", DBS.to_string()),
                    ("maxclients", rt.max_clients.read().to_string()),
                    ("port", self.shared.listen.port().to_string()),
                    ("bind", self.shared.listen.ip().to_string()),
                    ("dir", self.engine().path().display().to_string()),
                    ("save", String::new()),
                    ("timeout", "0".into()),
                    ("proto-max-bulk-len", crate::resp::MAX_BULK_LEN.to_string()),
                    ("replica-read-only", "yes".into()),
                    ("slave-read-only", "yes".into()),
                ];
                for pat in &a[2..] {
                    let pat = pat.to_ascii_lowercase();
                    for (k, v) in &known {
                        if glob_match(&pat, k.as_bytes()) {
                            params.insert(k.to_string(), v.clone());
                        }
                    }
                    for (k, v) in rt.ignored.read().iter() {
                        if glob_match(&pat, k.as_bytes()) {
                            params.entry(k.clone()).or_insert_with(|| v.clone());
                        }
                    }
                }
                let mut out = Vec::new();
                for (k, v) in params {
                    out.push(Reply::bulk(k));
                    out.push(Reply::bulk(v));
                }
                Ok(Reply::Array(out))
            }
            "set" if a.len() >= 4 && a.len().is_multiple_of(2) => {
                // Validate all first so a bad pair changes nothing.
                let mut plan = Vec::new();
                for kv in a[2..].chunks(2) {
                    let k = String::from_utf8_lossy(&kv[0]).to_ascii_lowercase();
                    let v = String::from_utf8_lossy(&kv[1]).into_owned();
                    let bad = || {
                        CmdError::msg(format!(
                            "ERR CONFIG SET failed (possibly related to argument '{k}') - argument couldn't be parsed into an integer"
                        ))
                    };
                    match k.as_str() {
                        "appendfsync" if FsyncPolicy::parse(&v).is_none() => {
                            return Err(CmdError::msg(
                                "ERR CONFIG SET failed (possibly related to argument 'appendfsync') - argument(s) must be one of the following: always, everysec, no",
                            ));
                        }
                        "maxmemory" => {
                            parse_memory(&v).ok_or_else(bad)?;
                        }
                        "maxclients" => {
                            v.parse::<usize>().map_err(|_| bad())?;
                        }
                        _ => {}
                    }
                    plan.push((k, v));
                }
                for (k, v) in plan {
                    match k.as_str() {
                        "requirepass" => {
                            *rt.requirepass.write() = if v.is_empty() { None } else { Some(v) };
                        }
                        "appendfsync" => {
                            if let (Some(w), Some(p)) =
                                (self.engine().wal(), FsyncPolicy::parse(&v))
                            {
                                w.set_policy(p);
                            }
                        }
                        "maxmemory" => *rt.maxmemory.write() = parse_memory(&v).unwrap_or(0),
                        "maxclients" => *rt.max_clients.write() = v.parse().unwrap_or(0),
                        _ => {
                            rt.ignored.write().insert(k, v);
                        }
                    }
                }
                Ok(Reply::ok())
            }
            "resetstat" => Ok(Reply::ok()),
            "rewrite" => Err(CmdError::msg(
                "ERR The server is running without a config file",
            )),
            "get" | "set" => Err(CmdError::Arity(format!("config|{sub}"))),
            _ => Err(CmdError::msg(format!(
                "ERR unknown subcommand '{}'. Try CONFIG HELP.",
                String::from_utf8_lossy(&a[1])
            ))),
        }
    }

    fn client(&mut self, a: &[Bytes]) -> Result<Reply, CmdError> {
        let sub = String::from_utf8_lossy(&a[1]).to_ascii_lowercase();
        match (sub.as_str(), a.len()) {
            ("id", 2) => Ok(Reply::Int(self.info.id as i64)),
            ("getname", 2) => Ok(Reply::opt_bulk(
                self.info
                    .state
                    .lock()
                    .name
                    .clone()
                    .filter(|n| !n.is_empty()),
            )),
            ("setname", 3) => {
                if a[2].iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
                    return Err(CmdError::msg(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    ));
                }
                self.info.state.lock().name = Some(String::from_utf8_lossy(&a[2]).into_owned());
                Ok(Reply::ok())
            }
            ("setinfo", 4) => {
                let v = String::from_utf8_lossy(&a[3]).into_owned();
                let mut st = self.info.state.lock();
                if is(&a[2], "lib-name") {
                    st.lib_name = Some(v);
                } else if is(&a[2], "lib-ver") {
                    st.lib_ver = Some(v);
                } else {
                    return Err(CmdError::msg(format!(
                        "ERR Unrecognized option '{}'",
                        String::from_utf8_lossy(&a[2])
                    )));
                }
                Ok(Reply::ok())
            }
            ("info", 2) => Ok(Reply::bulk(format!(
                "{}\n",
                self.info.line(self.shared.listen)
            ))),
            ("list", _) => {
                let clients: Vec<Arc<ClientInfo>> =
                    self.shared.clients.lock().values().cloned().collect();
                let mut s = String::new();
                for c in clients {
                    s.push_str(&c.line(self.shared.listen));
                    s.push('\n');
                }
                Ok(Reply::bulk(s))
            }
            ("kill", 3) => {
                // Old form: CLIENT KILL addr:port.
                let addr = String::from_utf8_lossy(&a[2]).into_owned();
                let n = self.kill_where(|c| c.addr.to_string() == addr, false);
                if n == 0 {
                    return Err(CmdError::msg("ERR No such client"));
                }
                Ok(Reply::ok())
            }
            ("kill", n) if n >= 4 && n % 2 == 0 => {
                let mut id: Option<u64> = None;
                let mut addr: Option<String> = None;
                let mut skipme = true;
                for kv in a[2..].chunks(2) {
                    let v = String::from_utf8_lossy(&kv[1]).into_owned();
                    if is(&kv[0], "id") {
                        id = Some(v.parse().map_err(|_| {
                            CmdError::msg("ERR client-id should be greater than 0")
                        })?);
                    } else if is(&kv[0], "addr") {
                        addr = Some(v);
                    } else if is(&kv[0], "skipme") {
                        skipme = match v.to_ascii_lowercase().as_str() {
                            "yes" => true,
                            "no" => false,
                            _ => return Err(CmdError::Syntax),
                        };
                    } else {
                        return Err(CmdError::Syntax);
                    }
                }
                let n = self.kill_where(
                    |c| {
                        id.is_none_or(|i| c.id == i)
                            && addr.as_ref().is_none_or(|x| c.addr.to_string() == *x)
                    },
                    skipme,
                );
                Ok(Reply::Int(n as i64))
            }
            ("no-evict", 3) | ("no-touch", 3) => Ok(Reply::ok()),
            _ => Err(CmdError::msg(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&a[1])
            ))),
        }
    }

    fn kill_where(&mut self, pred: impl Fn(&ClientInfo) -> bool, skipme: bool) -> usize {
        let clients: Vec<Arc<ClientInfo>> = self.shared.clients.lock().values().cloned().collect();
        let mut n = 0;
        for c in clients {
            if skipme && c.id == self.info.id {
                continue;
            }
            if pred(&c) {
                if c.id == self.info.id {
                    self.closing = true;
                }
                c.kill.cancel();
                n += 1;
            }
        }
        n
    }

    fn info_text(&self, sections: &[Bytes]) -> String {
        let all = [
            "server",
            "clients",
            "memory",
            "persistence",
            "stats",
            "replication",
            "keyspace",
        ];
        let wanted: Vec<String> = if sections.is_empty() {
            all.iter().map(|s| s.to_string()).collect()
        } else {
            let mut w = Vec::new();
            for s in sections {
                let s = String::from_utf8_lossy(s).to_ascii_lowercase();
                if matches!(s.as_str(), "all" | "everything" | "default") {
                    w.extend(all.iter().map(|s| s.to_string()));
                } else {
                    w.push(s);
                }
            }
            w
        };
        let mut out = String::new();
        for s in all {
            if !wanted.iter().any(|w| w == s) {
                continue;
            }
            if !out.is_empty() {
                out.push_str("\r\n");
            }
            out.push_str(&self.info_section(s));
        }
        out
    }

    fn info_section(&self, s: &str) -> String {
        let sh = &self.shared;
        let eng = self.engine();
        let mut lines: Vec<String> = Vec::new();
        match s {
            "server" => {
                lines.push("# Server".into());
                lines.push(format!("redis_version:{}", crate::REDIS_VERSION));
                lines.push(format!("pikafs_version:{}", env!("CARGO_PKG_VERSION")));
                lines.push("redis_mode:standalone".into());
                lines.push(format!("os:{}", std::env::consts::OS));
                lines.push(format!("process_id:{}", std::process::id()));
                lines.push(format!("run_id:{}", sh.run_id));
                lines.push(format!("tcp_port:{}", sh.listen.port()));
                let up = sh.started.elapsed().as_secs();
                lines.push(format!("uptime_in_seconds:{up}"));
                lines.push(format!("uptime_in_days:{}", up / 86400));
                lines.push("executable:pikafs".into());
            }
            "clients" => {
                lines.push("# Clients".into());
                lines.push(format!("connected_clients:{}", sh.clients.lock().len()));
                lines.push(format!("maxclients:{}", sh.runtime.max_clients.read()));
                lines.push(format!("blocked_clients:{}", sh.blocking.blocked_clients()));
                lines.push(format!(
                    "watching_clients:{}",
                    sh.watches.watched_keys().min(1)
                ));
            }
            "memory" => {
                lines.push("# Memory".into());
                let used = eng.memory_used();
                lines.push(format!("used_memory:{used}"));
                lines.push(format!(
                    "used_memory_human:{:.2}M",
                    used as f64 / (1 << 20) as f64
                ));
                lines.push(format!("maxmemory:{}", sh.runtime.maxmemory.read()));
                lines.push("maxmemory_policy:noeviction".into());
                lines.push(format!("pikafs_memory_budget:{}", eng.memory_budget()));
                lines.push(format!("pikafs_memtable_bytes:{}", eng.memtable_bytes()));
                lines.push(format!("pikafs_block_cache_bytes:{used}"));
            }
            "persistence" => {
                lines.push("# Persistence".into());
                lines.push("loading:0".into());
                lines.push("aof_enabled:1".into());
                let (pol, syncs, synced) = match eng.wal() {
                    Some(w) => (w.policy().name(), w.sync_count(), w.synced_sequence()),
                    None => ("n/a", 0, 0),
                };
                lines.push(format!("pikafs_appendfsync:{pol}"));
                lines.push(format!("pikafs_wal_syncs:{syncs}"));
                lines.push(format!("pikafs_synced_seq:{synced}"));
            }
            "stats" => {
                lines.push("# Stats".into());
                lines.push(format!(
                    "total_connections_received:{}",
                    sh.connections_received.load(Ordering::Relaxed)
                ));
                lines.push(format!(
                    "total_commands_processed:{}",
                    sh.commands_processed.load(Ordering::Relaxed)
                ));
                lines.push(format!(
                    "rejected_connections:{}",
                    sh.rejected_connections.load(Ordering::Relaxed)
                ));
                lines.push(format!(
                    "expired_keys:{}",
                    sh.expired_keys.load(Ordering::Relaxed)
                ));
                lines.push("evicted_keys:0".into());
                lines.push("keyspace_hits:0".into());
                lines.push("keyspace_misses:0".into());
            }
            "replication" => {
                lines.push("# Replication".into());
                let seq = eng.applied_sequence();
                match eng.role() {
                    Role::Rw => {
                        lines.push("role:master".into());
                        lines.push("connected_slaves:0".into());
                        lines.push(format!("master_repl_offset:{seq}"));
                        lines.push("pikafs_role:rw".into());
                        lines.push(format!("pikafs_applied_seq:{seq}"));
                        lines.push(format!("pikafs_primary_seq:{seq}"));
                        lines.push("pikafs_lag_ms:0".into());
                        lines.push("pikafs_catch_ups:0".into());
                    }
                    Role::Ro => {
                        let lag = eng.catch_up_lag().map_or(-1, |d| d.as_millis() as i64);
                        lines.push("role:slave".into());
                        lines.push("master_host:local".into());
                        lines.push("master_port:0".into());
                        lines.push(format!(
                            "master_link_status:{}",
                            if (0..5000).contains(&lag) {
                                "up"
                            } else {
                                "down"
                            }
                        ));
                        lines.push(format!("master_last_io_seconds_ago:{}", lag.max(0) / 1000));
                        lines.push("master_sync_in_progress:0".into());
                        lines.push(format!("slave_repl_offset:{seq}"));
                        lines.push("slave_read_only:1".into());
                        lines.push("pikafs_role:ro".into());
                        lines.push(format!("pikafs_applied_seq:{seq}"));
                        // A secondary on a plain directory cannot learn the
                        // primary's sequence without reading its WAL.
                        lines.push("pikafs_primary_seq:unknown".into());
                        lines.push(format!("pikafs_lag_ms:{lag}"));
                        lines.push(format!("pikafs_catch_ups:{}", eng.catch_up_count()));
                    }
                }
            }
            "keyspace" => {
                lines.push("# Keyspace".into());
                for db in 0..DBS {
                    let t = eng.read_txn(db);
                    if let Ok((n, e)) = crate::keyspace::count_keys(&t) {
                        if n > 0 {
                            lines.push(format!("db{db}:keys={n},expires={e},avg_ttl=0"));
                        }
                    }
                }
            }
            _ => {}
        }
        let mut s = lines.join("\r\n");
        s.push_str("\r\n");
        s
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.unwatch();
        self.shared.blocking.cancel_client(self.info.id);
        self.shared.clients.lock().remove(&self.info.id);
    }
}

/// COMMAND, COMMAND COUNT/INFO/DOCS/LIST.
fn command_cmd(a: &[Bytes]) -> Result<Reply, CmdError> {
    let table = command::table();
    let mut names: Vec<&&str> = table.keys().collect();
    names.sort();
    let info = |s: &CommandSpec| {
        Reply::Array(vec![
            Reply::bulk_str(s.name),
            Reply::Int(s.arity as i64),
            Reply::Array(
                s.flag_names()
                    .into_iter()
                    .map(|f| Reply::Status(f.into()))
                    .collect(),
            ),
            Reply::Int(s.first_key as i64),
            Reply::Int(s.last_key as i64),
            Reply::Int(s.step as i64),
            Reply::Array(vec![]),
            Reply::Array(vec![]),
            Reply::Array(vec![]),
            Reply::Array(vec![]),
        ])
    };
    let docs = |s: &CommandSpec| {
        vec![
            Reply::bulk_str(s.name),
            Reply::Array(vec![
                Reply::bulk_str("summary"),
                Reply::bulk_str(s.summary),
                Reply::bulk_str("since"),
                Reply::bulk_str("1.0.0"),
                Reply::bulk_str("group"),
                Reply::bulk_str(s.group),
            ]),
        ]
    };
    if a.len() == 1 {
        return Ok(Reply::Array(
            names.iter().map(|n| info(table[**n])).collect(),
        ));
    }
    let sub = String::from_utf8_lossy(&a[1]).to_ascii_lowercase();
    match sub.as_str() {
        "count" => Ok(Reply::Int(table.len() as i64)),
        "list" => Ok(Reply::Array(
            names.iter().map(|n| Reply::bulk_str(n)).collect(),
        )),
        "info" => Ok(Reply::Array(if a.len() == 2 {
            names.iter().map(|n| info(table[**n])).collect()
        } else {
            a[2..]
                .iter()
                .map(|n| lookup(n).map_or(Reply::NilArray, info))
                .collect()
        })),
        "docs" => {
            let mut out = Vec::new();
            if a.len() == 2 {
                for n in names {
                    out.extend(docs(table[*n]));
                }
            } else {
                for n in &a[2..] {
                    if let Some(s) = lookup(n) {
                        out.extend(docs(s));
                    }
                }
            }
            Ok(Reply::Array(out))
        }
        _ => Err(CmdError::msg(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(&a[1])
        ))),
    }
}
