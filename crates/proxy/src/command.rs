//! Which node a command goes to.
//!
//! The rule of the issue: reads of known read-only commands go to an RO node
//! chosen by the hash of their (first) key; multi-key reads (MGET, EXISTS)
//! are split per node; keyspace-wide reads go to one node; everything else
//! (writes, transactions, blocking and unknown commands, connection state)
//! goes to the RW node. An unknown command is therefore always safe: the RW
//! node answers it exactly as a direct connection would.

/// How a command is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Read of the key at argument 1 (other keys, if any, are read from the
    /// same node: every RO node holds all data).
    KeyRead,
    /// Like [`Class::KeyRead`], but the routing key is argument 2
    /// (`SINTERCARD numkeys key...`, `ZUNION numkeys key...`).
    KeyReadAt2,
    /// `MGET k1 k2 ...`: split per node, merged in order.
    Mget,
    /// `EXISTS k1 k2 ...`: split per node, counts summed.
    Exists,
    /// Keyspace-wide reads (SCAN, KEYS, DBSIZE, RANDOMKEY, INFO keyspace):
    /// always the same one node, so SCAN cursors stay valid.
    Global,
    /// Connection state replayed on every backend connection: SELECT.
    Select,
    /// Connection state replayed on every backend connection: AUTH.
    Auth,
    /// Starts a transaction: pins the client to the RW node.
    Multi,
    /// WATCH: pins the client to the RW node until EXEC/DISCARD/UNWATCH.
    Watch,
    /// EXEC/DISCARD: ends the transaction.
    EndMulti,
    /// UNWATCH.
    Unwatch,
    /// RESET: clears all connection state.
    Reset,
    /// Answered by the proxy: QUIT.
    Quit,
    /// Answered by the proxy: `PROXY ...`.
    Proxy,
    /// `CLIENT ...`: READYOURWRITES is the proxy's, the rest goes to RW.
    Client,
    /// RW node, and never a write (no read-your-writes bookkeeping needed).
    RwNoWrite,
    /// Everything else: the RW node; counts as a write.
    Rw,
}

/// Single-key read commands (key at argument 1) of the kv node.
const KEY_READS: &[&str] = &[
    "get",
    "strlen",
    "getrange",
    "substr",
    "getbit",
    "bitcount",
    "bitpos",
    "type",
    "ttl",
    "pttl",
    "expiretime",
    "pexpiretime",
    "hget",
    "hmget",
    "hexists",
    "hlen",
    "hstrlen",
    "hkeys",
    "hvals",
    "hgetall",
    "hrandfield",
    "hscan",
    "llen",
    "lrange",
    "lindex",
    "lpos",
    "scard",
    "sismember",
    "smismember",
    "smembers",
    "srandmember",
    "sscan",
    "sinter",
    "sunion",
    "sdiff",
    "zcard",
    "zscore",
    "zmscore",
    "zrank",
    "zrevrank",
    "zrange",
    "zrangebyscore",
    "zrevrange",
    "zrevrangebyscore",
    "zrangebylex",
    "zrevrangebylex",
    "zcount",
    "zlexcount",
    "zscan",
];

/// Reads whose first key follows a `numkeys` argument.
const KEY_READS_AT2: &[&str] = &["sintercard", "zunion", "zinter", "zdiff"];

/// Commands that go to the RW node but never write, so a read-your-writes
/// client needs no sequence number after them.
const RW_NO_WRITE: &[&str] = &[
    "ping",
    "echo",
    "hello",
    "info",
    "command",
    "config",
    "time",
    "lastsave",
    "readonly",
    "readwrite",
    "debug",
];

/// Classifies a command by its name (any case) and arguments.
pub fn classify(args: &[bytes::Bytes]) -> Class {
    let Some(name) = args.first() else {
        return Class::Rw;
    };
    let mut lower = [0u8; 24];
    if name.len() > lower.len() {
        return Class::Rw;
    }
    for (d, s) in lower.iter_mut().zip(name.iter()) {
        *d = s.to_ascii_lowercase();
    }
    let Ok(n) = std::str::from_utf8(&lower[..name.len()]) else {
        return Class::Rw;
    };
    match n {
        "mget" if args.len() >= 2 => Class::Mget,
        "exists" if args.len() >= 3 => Class::Exists,
        "exists" if args.len() == 2 => Class::KeyRead,
        "scan" | "keys" | "dbsize" | "randomkey" => Class::Global,
        "info" if args.len() == 2 && args[1].eq_ignore_ascii_case(b"keyspace") => Class::Global,
        "select" => Class::Select,
        "auth" => Class::Auth,
        "multi" => Class::Multi,
        "watch" => Class::Watch,
        "exec" | "discard" => Class::EndMulti,
        "unwatch" => Class::Unwatch,
        "reset" => Class::Reset,
        "quit" => Class::Quit,
        "proxy" => Class::Proxy,
        "client" => Class::Client,
        // ZRANGE ... with a STORE variant is its own command (ZRANGESTORE),
        // so every name in the table is a pure read.
        _ if args.len() >= 2 && KEY_READS.contains(&n) => Class::KeyRead,
        _ if args.len() >= 3 && KEY_READS_AT2.contains(&n) => Class::KeyReadAt2,
        _ if RW_NO_WRITE.contains(&n) => Class::RwNoWrite,
        _ => Class::Rw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn c(line: &str) -> Class {
        let args: Vec<Bytes> = line
            .split_whitespace()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect();
        classify(&args)
    }

    #[test]
    fn routes_follow_the_issue() {
        assert_eq!(c("GET k"), Class::KeyRead);
        assert_eq!(c("get k"), Class::KeyRead);
        assert_eq!(c("HGETALL h"), Class::KeyRead);
        assert_eq!(c("SET k v"), Class::Rw);
        assert_eq!(c("BLPOP l 0"), Class::Rw);
        assert_eq!(c("NOSUCHCOMMAND x"), Class::Rw);
        assert_eq!(c("MGET a b c"), Class::Mget);
        assert_eq!(c("EXISTS a"), Class::KeyRead);
        assert_eq!(c("EXISTS a b"), Class::Exists);
        assert_eq!(c("SCAN 0"), Class::Global);
        assert_eq!(c("INFO keyspace"), Class::Global);
        assert_eq!(c("INFO"), Class::RwNoWrite);
        assert_eq!(c("SINTERCARD 2 a b"), Class::KeyReadAt2);
        assert_eq!(c("MULTI"), Class::Multi);
        assert_eq!(c("exec"), Class::EndMulti);
        // Arity errors are the RW node's to report, byte for byte.
        assert_eq!(c("GET"), Class::Rw);
        assert_eq!(c("ZRANGESTORE d s 0 -1"), Class::Rw);
    }
}
