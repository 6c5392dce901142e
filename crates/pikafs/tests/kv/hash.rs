//! Hash commands.

use std::collections::{BTreeMap, BTreeSet};

use redis::Value;

use crate::common::{assert_err, q, qs, KvNode};

#[tokio::test]
async fn hash_commands_follow_redis() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    assert_eq!(qs::<i64>(&mut c, "HSET h a 1 b 2").await.unwrap(), 2);
    assert_eq!(qs::<i64>(&mut c, "HSET h a 10 c 3").await.unwrap(), 1);
    assert_err(
        qs::<Value>(&mut c, "HSET h a").await,
        "ERR wrong number of arguments for 'hset' command",
    );
    assert_eq!(qs::<String>(&mut c, "HMSET h d 4").await.unwrap(), "OK");
    assert_eq!(qs::<i64>(&mut c, "HSETNX h a 99").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "HSETNX h e 5").await.unwrap(), 1);
    assert_eq!(qs::<String>(&mut c, "HGET h a").await.unwrap(), "10");
    assert_eq!(
        qs::<Option<String>>(&mut c, "HGET h zz").await.unwrap(),
        None
    );
    assert_eq!(
        qs::<Option<String>>(&mut c, "HGET nope a").await.unwrap(),
        None
    );
    let r: Vec<Option<String>> = qs(&mut c, "HMGET h a zz b").await.unwrap();
    assert_eq!(r, vec![Some("10".into()), None, Some("2".into())]);
    assert_eq!(qs::<i64>(&mut c, "HLEN h").await.unwrap(), 5);
    assert_eq!(qs::<i64>(&mut c, "HEXISTS h a").await.unwrap(), 1);
    assert_eq!(qs::<i64>(&mut c, "HEXISTS h zz").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "HSTRLEN h a").await.unwrap(), 2);
    assert_eq!(qs::<i64>(&mut c, "HSTRLEN h zz").await.unwrap(), 0);
    let keys: Vec<String> = qs(&mut c, "HKEYS h").await.unwrap();
    assert_eq!(keys, vec!["a", "b", "c", "d", "e"]);
    let vals: Vec<String> = qs(&mut c, "HVALS h").await.unwrap();
    assert_eq!(vals, vec!["10", "2", "3", "4", "5"]);
    let all: BTreeMap<String, String> = qs(&mut c, "HGETALL h").await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(qs::<i64>(&mut c, "HDEL h a zz b").await.unwrap(), 2);
    assert_eq!(qs::<i64>(&mut c, "HLEN h").await.unwrap(), 3);
    assert_eq!(qs::<i64>(&mut c, "HDEL h c d e").await.unwrap(), 3);
    assert_eq!(
        qs::<i64>(&mut c, "EXISTS h").await.unwrap(),
        0,
        "an emptied hash is deleted"
    );
    let empty: Vec<String> = qs(&mut c, "HGETALL h").await.unwrap();
    assert!(empty.is_empty());

    // Binary-safe fields and values.
    let r: i64 = q(&mut c, &[b"HSET", b"bin", b"f\x00\xff", b"v\r\n"])
        .await
        .unwrap();
    assert_eq!(r, 1);
    let v: Vec<u8> = q(&mut c, &[b"HGET", b"bin", b"f\x00\xff"]).await.unwrap();
    assert_eq!(v, b"v\r\n");

    // Counters.
    assert_eq!(qs::<i64>(&mut c, "HINCRBY n x 5").await.unwrap(), 5);
    assert_eq!(qs::<i64>(&mut c, "HINCRBY n x -10").await.unwrap(), -5);
    let _: i64 = qs(&mut c, "HSET n big 9223372036854775807 s abc f 10.50")
        .await
        .unwrap();
    assert_err(
        qs::<Value>(&mut c, "HINCRBY n big 1").await,
        "ERR increment or decrement would overflow",
    );
    assert_err(
        qs::<Value>(&mut c, "HINCRBY n s 1").await,
        "ERR hash value is not an integer",
    );
    assert_err(
        qs::<Value>(&mut c, "HINCRBY n x 1.5").await,
        "ERR value is not an integer or out of range",
    );
    assert_eq!(
        qs::<String>(&mut c, "HINCRBYFLOAT n f 0.1").await.unwrap(),
        "10.6"
    );
    assert_eq!(
        qs::<String>(&mut c, "HINCRBYFLOAT n g 2.0e2")
            .await
            .unwrap(),
        "200"
    );
    assert_err(
        qs::<Value>(&mut c, "HINCRBYFLOAT n s 1").await,
        "ERR hash value is not a float",
    );
    assert_eq!(qs::<i64>(&mut c, "HLEN n").await.unwrap(), 5);

    // WRONGTYPE both ways.
    let _: String = qs(&mut c, "SET str v").await.unwrap();
    for cmd in [
        "HGET str a",
        "HSET str a b",
        "HLEN str",
        "HGETALL str",
        "HDEL str a",
        "HINCRBY str a 1",
        "HSCAN str 0",
    ] {
        assert_err(qs::<Value>(&mut c, cmd).await, "WRONGTYPE");
    }
    assert_err(qs::<Value>(&mut c, "GET n").await, "WRONGTYPE");
}

#[tokio::test]
async fn hrandfield_and_hscan() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    let mut fields = BTreeSet::new();
    for i in 0..100 {
        let _: i64 = qs(&mut c, &format!("HSET h f{i} v{i}")).await.unwrap();
        fields.insert(format!("f{i}"));
    }
    let one: String = qs(&mut c, "HRANDFIELD h").await.unwrap();
    assert!(fields.contains(&one));
    assert_eq!(
        qs::<Option<String>>(&mut c, "HRANDFIELD nope")
            .await
            .unwrap(),
        None
    );
    let five: Vec<String> = qs(&mut c, "HRANDFIELD h 5").await.unwrap();
    assert_eq!(
        five.iter().collect::<BTreeSet<_>>().len(),
        5,
        "positive count: distinct"
    );
    let many: Vec<String> = qs(&mut c, "HRANDFIELD h 500").await.unwrap();
    assert_eq!(many.len(), 100, "capped at the hash size");
    let rep: Vec<String> = qs(&mut c, "HRANDFIELD h -300").await.unwrap();
    assert_eq!(rep.len(), 300, "negative count: may repeat");
    let wv: Vec<String> = qs(&mut c, "HRANDFIELD h 3 WITHVALUES").await.unwrap();
    assert_eq!(wv.len(), 6);
    assert_eq!(wv[1], wv[0].replace('f', "v"));
    let none: Vec<String> = qs(&mut c, "HRANDFIELD h 0").await.unwrap();
    assert!(none.is_empty());

    let mut cursor = "0".to_string();
    let mut got = BTreeMap::new();
    for _ in 0..100 {
        let (next, kv): (String, Vec<String>) = qs(&mut c, &format!("HSCAN h {cursor} COUNT 7"))
            .await
            .unwrap();
        for p in kv.chunks(2) {
            got.insert(p[0].clone(), p[1].clone());
        }
        if next == "0" {
            cursor = next;
            break;
        }
        cursor = next;
    }
    assert_eq!(cursor, "0");
    assert_eq!(got.len(), 100);
    let (_, kv): (String, Vec<String>) = qs(&mut c, "HSCAN h 0 MATCH f1? COUNT 1000 NOVALUES")
        .await
        .unwrap();
    assert_eq!(kv.len(), 10);
    assert!(kv.iter().all(|f| f.starts_with("f1")));
}
