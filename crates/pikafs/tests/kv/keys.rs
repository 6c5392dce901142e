//! Generic key commands: DEL, EXISTS, TYPE, RENAME, EXPIRE family, SCAN,
//! KEYS, RANDOMKEY, DBSIZE, FLUSHDB, SELECT isolation.

use std::collections::BTreeSet;

use redis::Value;

use crate::common::{assert_err, qs, KvNode};

#[tokio::test]
async fn del_exists_type_rename() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    let _: String = qs(&mut c, "MSET a 1 b 2").await.unwrap();
    let _: i64 = qs(&mut c, "HSET h f1 v1 f2 v2").await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "EXISTS a b a nope").await.unwrap(), 3);
    assert_eq!(qs::<String>(&mut c, "TYPE a").await.unwrap(), "string");
    assert_eq!(qs::<String>(&mut c, "TYPE h").await.unwrap(), "hash");
    assert_eq!(qs::<String>(&mut c, "TYPE nope").await.unwrap(), "none");
    assert_eq!(qs::<i64>(&mut c, "DEL a nope b").await.unwrap(), 2);
    assert_eq!(qs::<i64>(&mut c, "UNLINK a").await.unwrap(), 0);
    // RENAME moves any type, including members and TTL.
    let _: i64 = qs(&mut c, "EXPIRE h 100").await.unwrap();
    assert_eq!(qs::<String>(&mut c, "RENAME h h2").await.unwrap(), "OK");
    assert_eq!(qs::<i64>(&mut c, "EXISTS h").await.unwrap(), 0);
    let all: Vec<String> = qs(&mut c, "HGETALL h2").await.unwrap();
    assert_eq!(all, vec!["f1", "v1", "f2", "v2"]);
    assert!(qs::<i64>(&mut c, "TTL h2").await.unwrap() > 90);
    assert_eq!(qs::<i64>(&mut c, "HLEN h2").await.unwrap(), 2);
    assert_err(
        qs::<Value>(&mut c, "RENAME nope x").await,
        "ERR no such key",
    );
    let _: String = qs(&mut c, "SET s v").await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "RENAMENX s h2").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "RENAMENX s s2").await.unwrap(), 1);
    assert_eq!(qs::<String>(&mut c, "RENAME s2 s2").await.unwrap(), "OK");
    // Overwriting a hash by RENAME of a string: no hash members survive.
    assert_eq!(qs::<String>(&mut c, "RENAME s2 h2").await.unwrap(), "OK");
    assert_eq!(qs::<String>(&mut c, "TYPE h2").await.unwrap(), "string");
    let _: i64 = qs(&mut c, "DEL h2").await.unwrap();
    let _: i64 = qs(&mut c, "HSET h2 x y").await.unwrap();
    let all: Vec<String> = qs(&mut c, "HGETALL h2").await.unwrap();
    assert_eq!(all, vec!["x", "y"], "a recreated hash has no stale members");
}

#[tokio::test]
async fn expire_family_with_flags() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    let _: String = qs(&mut c, "SET k v").await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "TTL k").await.unwrap(), -1);
    assert_eq!(qs::<i64>(&mut c, "TTL nope").await.unwrap(), -2);
    assert_eq!(qs::<i64>(&mut c, "PTTL nope").await.unwrap(), -2);
    assert_eq!(qs::<i64>(&mut c, "EXPIRETIME k").await.unwrap(), -1);
    assert_eq!(qs::<i64>(&mut c, "EXPIRE nope 10").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "EXPIRE k 100 XX").await.unwrap(), 0);
    assert_eq!(
        qs::<i64>(&mut c, "EXPIRE k 100 GT").await.unwrap(),
        0,
        "no TTL is infinite for GT"
    );
    assert_eq!(qs::<i64>(&mut c, "EXPIRE k 100 NX").await.unwrap(), 1);
    assert_eq!(qs::<i64>(&mut c, "EXPIRE k 200 NX").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "EXPIRE k 50 GT").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "EXPIRE k 200 GT").await.unwrap(), 1);
    assert_eq!(qs::<i64>(&mut c, "EXPIRE k 300 LT").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "EXPIRE k 150 LT").await.unwrap(), 1);
    let ttl: i64 = qs(&mut c, "TTL k").await.unwrap();
    assert!((149..=150).contains(&ttl), "{ttl}");
    assert_err(
        qs::<Value>(&mut c, "EXPIRE k 1 NX XX").await,
        "ERR NX and XX, GT or LT options at the same time are not compatible",
    );
    assert_err(
        qs::<Value>(&mut c, "EXPIRE k 1 GT LT").await,
        "ERR GT and LT options at the same time are not compatible",
    );
    assert_err(
        qs::<Value>(&mut c, "EXPIRE k 1 FOO").await,
        "ERR Unsupported option FOO",
    );
    assert_err(
        qs::<Value>(&mut c, "EXPIRE k 9223372036854775807").await,
        "ERR invalid expire time in 'expire' command",
    );
    let at: i64 = qs(&mut c, "EXPIRETIME k").await.unwrap();
    let pat: i64 = qs(&mut c, "PEXPIRETIME k").await.unwrap();
    assert_eq!(at, pat / 1000);
    assert_eq!(
        qs::<i64>(&mut c, &format!("PEXPIREAT k {}", pat + 5000))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        qs::<i64>(&mut c, "PEXPIRETIME k").await.unwrap(),
        pat + 5000
    );
    assert_eq!(qs::<i64>(&mut c, "EXPIREAT k 4000000000").await.unwrap(), 1);
    assert_eq!(
        qs::<i64>(&mut c, "EXPIRETIME k").await.unwrap(),
        4_000_000_000
    );
    assert_eq!(qs::<i64>(&mut c, "PERSIST k").await.unwrap(), 1);
    assert_eq!(qs::<i64>(&mut c, "PERSIST k").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "TTL k").await.unwrap(), -1);
    // A time in the past deletes the key (also for collections).
    let _: i64 = qs(&mut c, "HSET h a 1").await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "EXPIRE h -1").await.unwrap(), 1);
    assert_eq!(qs::<i64>(&mut c, "EXISTS h").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "PEXPIRE k 100").await.unwrap(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    assert_eq!(qs::<i64>(&mut c, "EXISTS k").await.unwrap(), 0);
    // Active expiry removes keys nobody reads: DBSIZE drops.
    for i in 0..20 {
        let _: String = qs(&mut c, &format!("SET tmp{i} v PX 100")).await.unwrap();
    }
    let _: String = qs(&mut c, "SET keep v").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(qs::<i64>(&mut c, "DBSIZE").await.unwrap(), 1);
}

#[tokio::test]
async fn scan_keys_randomkey_dbsize_and_select_isolation() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    let mut want = BTreeSet::new();
    for i in 0..250 {
        let k = format!("user:{i}");
        let _: String = qs(&mut c, &format!("SET {k} v")).await.unwrap();
        want.insert(k);
    }
    let _: i64 = qs(&mut c, "HSET hash:1 f v").await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "DBSIZE").await.unwrap(), 251);
    // Full SCAN with MATCH and COUNT returns every matching key.
    let mut cursor = "0".to_string();
    let mut got = BTreeSet::new();
    let mut rounds = 0;
    loop {
        let (next, keys): (String, Vec<String>) =
            qs(&mut c, &format!("SCAN {cursor} MATCH user:* COUNT 17"))
                .await
                .unwrap();
        got.extend(keys);
        rounds += 1;
        assert!(rounds < 100, "scan terminates");
        if next == "0" {
            break;
        }
        cursor = next;
    }
    assert_eq!(got, want);
    assert!(rounds >= 14, "COUNT bounds each round: {rounds}");
    let (_, keys): (String, Vec<String>) = qs(&mut c, "SCAN 0 TYPE hash COUNT 1000").await.unwrap();
    assert_eq!(keys, vec!["hash:1"]);
    let (_, keys): (String, Vec<String>) = qs(&mut c, "SCAN 0 TYPE nosuchtype COUNT 1000")
        .await
        .unwrap();
    assert!(keys.is_empty());
    assert_err(
        qs::<Value>(&mut c, "SCAN 0 COUNT 0").await,
        "ERR syntax error",
    );
    assert_err(qs::<Value>(&mut c, "SCAN abc").await, "ERR invalid cursor");
    let mut keys: Vec<String> = qs(&mut c, "KEYS user:1?").await.unwrap();
    keys.sort();
    assert_eq!(
        keys,
        (10..20).map(|i| format!("user:{i}")).collect::<Vec<_>>()
    );
    let all: Vec<String> = qs(&mut c, "KEYS *").await.unwrap();
    assert_eq!(all.len(), 251);
    let r: String = qs(&mut c, "RANDOMKEY").await.unwrap();
    assert!(r.starts_with("user:") || r == "hash:1");

    // SELECT: db 3 is separate.
    assert_eq!(qs::<String>(&mut c, "SELECT 3").await.unwrap(), "OK");
    assert_eq!(qs::<i64>(&mut c, "DBSIZE").await.unwrap(), 0);
    assert_eq!(
        qs::<Option<String>>(&mut c, "RANDOMKEY").await.unwrap(),
        None
    );
    assert_eq!(
        qs::<Option<String>>(&mut c, "GET user:1").await.unwrap(),
        None
    );
    let _: String = qs(&mut c, "SET user:1 in-db3").await.unwrap();
    assert_eq!(qs::<String>(&mut c, "FLUSHDB").await.unwrap(), "OK");
    assert_eq!(qs::<i64>(&mut c, "DBSIZE").await.unwrap(), 0);
    assert_err(
        qs::<Value>(&mut c, "SELECT 16").await,
        "ERR DB index is out of range",
    );
    assert_err(
        qs::<Value>(&mut c, "SELECT x").await,
        "ERR value is not an integer or out of range",
    );
    let _: String = qs(&mut c, "SELECT 0").await.unwrap();
    assert_eq!(
        qs::<i64>(&mut c, "DBSIZE").await.unwrap(),
        251,
        "FLUSHDB of db 3 left db 0 alone"
    );
    let info: String = qs(&mut c, "INFO keyspace").await.unwrap();
    assert!(info.contains("db0:keys=251,expires=0"), "{info}");
    assert_eq!(qs::<String>(&mut c, "FLUSHALL").await.unwrap(), "OK");
    assert_eq!(qs::<i64>(&mut c, "DBSIZE").await.unwrap(), 0);
}
