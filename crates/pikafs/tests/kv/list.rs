//! List commands against Redis 7 semantics.

use redis::Value;

use crate::common::{assert_err, q, qs, KvNode};

async fn lrange(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
    s: i64,
    e: i64,
) -> Vec<String> {
    qs(c, &format!("LRANGE {key} {s} {e}")).await.unwrap()
}

#[tokio::test]
async fn push_pop_range_index_and_counts() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    assert_eq!(qs::<i64>(&mut c, "RPUSH l a b c").await.unwrap(), 3);
    assert_eq!(qs::<i64>(&mut c, "LPUSH l z y").await.unwrap(), 5);
    assert_eq!(lrange(&mut c, "l", 0, -1).await, ["y", "z", "a", "b", "c"]);
    assert_eq!(
        lrange(&mut c, "l", -100, 100).await,
        ["y", "z", "a", "b", "c"]
    );
    assert_eq!(lrange(&mut c, "l", 3, 1).await, Vec::<String>::new());
    assert_eq!(lrange(&mut c, "l", 5, 10).await, Vec::<String>::new());
    assert_eq!(lrange(&mut c, "l", -2, -1).await, ["b", "c"]);
    assert_eq!(lrange(&mut c, "nolist", 0, -1).await, Vec::<String>::new());
    assert_eq!(qs::<i64>(&mut c, "LLEN l").await.unwrap(), 5);
    assert_eq!(qs::<i64>(&mut c, "LLEN nolist").await.unwrap(), 0);
    assert_eq!(qs::<String>(&mut c, "LINDEX l 0").await.unwrap(), "y");
    assert_eq!(qs::<String>(&mut c, "LINDEX l -1").await.unwrap(), "c");
    assert_eq!(
        qs::<Option<String>>(&mut c, "LINDEX l 5").await.unwrap(),
        None
    );
    assert_eq!(
        qs::<Option<String>>(&mut c, "LINDEX l -6").await.unwrap(),
        None
    );

    // X variants only touch existing lists.
    assert_eq!(qs::<i64>(&mut c, "LPUSHX nolist a").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "RPUSHX nolist a").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "EXISTS nolist").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "RPUSHX l d e").await.unwrap(), 7);

    // Pops with and without count.
    assert_eq!(qs::<String>(&mut c, "LPOP l").await.unwrap(), "y");
    assert_eq!(qs::<String>(&mut c, "RPOP l").await.unwrap(), "e");
    assert_eq!(
        qs::<Vec<String>>(&mut c, "LPOP l 2").await.unwrap(),
        ["z", "a"]
    );
    assert_eq!(
        qs::<Vec<String>>(&mut c, "RPOP l 0").await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        qs::<Vec<String>>(&mut c, "LPOP l 0").await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        qs::<Vec<String>>(&mut c, "RPOP l 100").await.unwrap(),
        ["d", "c", "b"]
    );
    assert_eq!(
        qs::<i64>(&mut c, "EXISTS l").await.unwrap(),
        0,
        "empty list is deleted"
    );
    assert_eq!(qs::<Option<String>>(&mut c, "LPOP l").await.unwrap(), None);
    assert_eq!(
        qs::<Value>(&mut c, "LPOP l 3").await.unwrap(),
        Value::Nil,
        "null array on a missing key"
    );
    assert_err(
        qs::<Value>(&mut c, "LPOP l -1").await,
        "ERR value is out of range, must be positive",
    );
    assert_err(
        qs::<Value>(&mut c, "LPOP l 1 2").await,
        "ERR wrong number of arguments for 'lpop' command",
    );
    assert_err(
        qs::<Value>(&mut c, "LPUSH l").await,
        "ERR wrong number of arguments for 'lpush' command",
    );
    assert_err(
        qs::<Value>(&mut c, "LRANGE l a 1").await,
        "ERR value is not an integer or out of range",
    );

    // Many elements on both sides keep their order.
    for i in 0..300 {
        let _: i64 = qs(&mut c, &format!("RPUSH big r{i}")).await.unwrap();
        let _: i64 = qs(&mut c, &format!("LPUSH big l{i}")).await.unwrap();
    }
    let all = lrange(&mut c, "big", 0, -1).await;
    assert_eq!(all.len(), 600);
    assert_eq!(all[0], "l299");
    assert_eq!(all[299], "l0");
    assert_eq!(all[300], "r0");
    assert_eq!(all[599], "r299");
    assert_eq!(
        lrange(&mut c, "big", 298, 301).await,
        ["l1", "l0", "r0", "r1"]
    );
}

#[tokio::test]
async fn lset_lrem_ltrim_linsert_lpos() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    let _: i64 = qs(&mut c, "RPUSH l a b a c a d").await.unwrap();
    assert_eq!(qs::<String>(&mut c, "LSET l 1 B").await.unwrap(), "OK");
    assert_eq!(qs::<String>(&mut c, "LSET l -1 D").await.unwrap(), "OK");
    assert_err(
        qs::<Value>(&mut c, "LSET l 6 x").await,
        "ERR index out of range",
    );
    assert_err(
        qs::<Value>(&mut c, "LSET nolist 0 x").await,
        "ERR no such key",
    );
    assert_eq!(
        lrange(&mut c, "l", 0, -1).await,
        ["a", "B", "a", "c", "a", "D"]
    );

    // LPOS: rank, count, maxlen.
    assert_eq!(qs::<i64>(&mut c, "LPOS l a").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "LPOS l a RANK 2").await.unwrap(), 2);
    assert_eq!(qs::<i64>(&mut c, "LPOS l a RANK -1").await.unwrap(), 4);
    assert_eq!(
        qs::<Vec<i64>>(&mut c, "LPOS l a COUNT 0").await.unwrap(),
        [0, 2, 4]
    );
    assert_eq!(
        qs::<Vec<i64>>(&mut c, "LPOS l a COUNT 2 RANK -1")
            .await
            .unwrap(),
        [4, 2]
    );
    assert_eq!(
        qs::<Vec<i64>>(&mut c, "LPOS l a COUNT 0 MAXLEN 3")
            .await
            .unwrap(),
        [0, 2]
    );
    assert_eq!(qs::<Option<i64>>(&mut c, "LPOS l zz").await.unwrap(), None);
    assert_eq!(
        qs::<Vec<i64>>(&mut c, "LPOS l zz COUNT 1").await.unwrap(),
        Vec::<i64>::new()
    );
    assert_err(
        qs::<Value>(&mut c, "LPOS l a RANK 0").await,
        "ERR RANK can't be zero",
    );
    assert_err(
        qs::<Value>(&mut c, "LPOS l a COUNT -1").await,
        "ERR COUNT can't be negative",
    );
    assert_err(
        qs::<Value>(&mut c, "LPOS l a MAXLEN -1").await,
        "ERR MAXLEN can't be negative",
    );
    assert_err(
        qs::<Value>(&mut c, "LPOS l a BOGUS 1").await,
        "ERR syntax error",
    );

    // LREM from the head, the tail, and all.
    assert_eq!(qs::<i64>(&mut c, "LREM l 1 a").await.unwrap(), 1);
    assert_eq!(lrange(&mut c, "l", 0, -1).await, ["B", "a", "c", "a", "D"]);
    assert_eq!(qs::<i64>(&mut c, "LREM l -1 a").await.unwrap(), 1);
    assert_eq!(lrange(&mut c, "l", 0, -1).await, ["B", "a", "c", "D"]);
    let _: i64 = qs(&mut c, "RPUSH l a a").await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "LREM l 0 a").await.unwrap(), 3);
    assert_eq!(lrange(&mut c, "l", 0, -1).await, ["B", "c", "D"]);
    assert_eq!(qs::<i64>(&mut c, "LREM l 0 zz").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "LREM nolist 0 a").await.unwrap(), 0);

    // LINSERT on both sides, near the head and near the tail.
    assert_eq!(qs::<i64>(&mut c, "LINSERT l BEFORE B x").await.unwrap(), 4);
    assert_eq!(qs::<i64>(&mut c, "LINSERT l AFTER D y").await.unwrap(), 5);
    assert_eq!(qs::<i64>(&mut c, "LINSERT l AFTER B m").await.unwrap(), 6);
    assert_eq!(qs::<i64>(&mut c, "LINSERT l before D n").await.unwrap(), 7);
    assert_eq!(
        lrange(&mut c, "l", 0, -1).await,
        ["x", "B", "m", "c", "n", "D", "y"]
    );
    assert_eq!(
        qs::<i64>(&mut c, "LINSERT l BEFORE nothere z")
            .await
            .unwrap(),
        -1
    );
    assert_eq!(
        qs::<i64>(&mut c, "LINSERT nolist BEFORE a z")
            .await
            .unwrap(),
        0
    );
    assert_err(
        qs::<Value>(&mut c, "LINSERT l MIDDLE B z").await,
        "ERR syntax error",
    );

    // LTRIM.
    assert_eq!(qs::<String>(&mut c, "LTRIM l 1 -2").await.unwrap(), "OK");
    assert_eq!(lrange(&mut c, "l", 0, -1).await, ["B", "m", "c", "n", "D"]);
    assert_eq!(
        qs::<String>(&mut c, "LTRIM l -100 100").await.unwrap(),
        "OK"
    );
    assert_eq!(qs::<i64>(&mut c, "LLEN l").await.unwrap(), 5);
    assert_eq!(qs::<String>(&mut c, "LTRIM l 2 2").await.unwrap(), "OK");
    assert_eq!(lrange(&mut c, "l", 0, -1).await, ["c"]);
    // Pushing after a trim reuses the freed index slots correctly.
    let _: i64 = qs(&mut c, "LPUSH l p").await.unwrap();
    let _: i64 = qs(&mut c, "RPUSH l q").await.unwrap();
    assert_eq!(lrange(&mut c, "l", 0, -1).await, ["p", "c", "q"]);
    assert_eq!(qs::<String>(&mut c, "LTRIM l 5 1").await.unwrap(), "OK");
    assert_eq!(
        qs::<i64>(&mut c, "EXISTS l").await.unwrap(),
        0,
        "trimmed to nothing: deleted"
    );
}

#[tokio::test]
async fn lmove_rpoplpush_binary_and_wrongtype() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    let _: i64 = qs(&mut c, "RPUSH src a b c").await.unwrap();
    assert_eq!(
        qs::<String>(&mut c, "LMOVE src dst LEFT RIGHT")
            .await
            .unwrap(),
        "a"
    );
    assert_eq!(
        qs::<String>(&mut c, "LMOVE src dst RIGHT LEFT")
            .await
            .unwrap(),
        "c"
    );
    assert_eq!(lrange(&mut c, "dst", 0, -1).await, ["c", "a"]);
    assert_eq!(
        qs::<String>(&mut c, "RPOPLPUSH dst dst").await.unwrap(),
        "a",
        "rotation"
    );
    assert_eq!(lrange(&mut c, "dst", 0, -1).await, ["a", "c"]);
    assert_eq!(
        qs::<String>(&mut c, "RPOPLPUSH src dst").await.unwrap(),
        "b"
    );
    assert_eq!(qs::<i64>(&mut c, "EXISTS src").await.unwrap(), 0);
    assert_eq!(
        qs::<Option<String>>(&mut c, "RPOPLPUSH src dst")
            .await
            .unwrap(),
        None
    );
    assert_err(
        qs::<Value>(&mut c, "LMOVE dst x UP LEFT").await,
        "ERR syntax error",
    );
    // Single-element rotation onto itself keeps the element.
    let _: i64 = qs(&mut c, "RPUSH one x").await.unwrap();
    assert_eq!(
        qs::<String>(&mut c, "LMOVE one one LEFT RIGHT")
            .await
            .unwrap(),
        "x"
    );
    assert_eq!(lrange(&mut c, "one", 0, -1).await, ["x"]);

    // Binary-safe elements.
    let v: &[u8] = b"a\x00b\r\nc";
    let _: i64 = q(&mut c, &[b"RPUSH", b"bin", v, b""]).await.unwrap();
    let got: Vec<Vec<u8>> = qs(&mut c, "LRANGE bin 0 -1").await.unwrap();
    assert_eq!(got, vec![v.to_vec(), vec![]]);
    assert_eq!(
        q::<i64>(&mut c, &[b"LREM", b"bin", b"0", v]).await.unwrap(),
        1
    );

    // WRONGTYPE, both directions.
    let _: String = qs(&mut c, "SET s v").await.unwrap();
    for cmd in [
        "LPUSH s a",
        "RPUSH s a",
        "LPOP s",
        "LLEN s",
        "LRANGE s 0 -1",
        "LINDEX s 0",
        "LPOS s a",
        "LREM s 0 a",
        "LTRIM s 0 1",
        "LINSERT s BEFORE a b",
        "LSET s 0 a",
    ] {
        assert_err(qs::<Value>(&mut c, cmd).await, "WRONGTYPE");
    }
    assert_err(
        qs::<Value>(&mut c, "LMOVE dst s LEFT LEFT").await,
        "WRONGTYPE",
    );
    assert_eq!(
        lrange(&mut c, "dst", 0, -1).await,
        ["b", "a", "c"],
        "failed LMOVE popped nothing"
    );
    assert_err(qs::<Value>(&mut c, "GET dst").await, "WRONGTYPE");
    assert_eq!(qs::<String>(&mut c, "TYPE dst").await.unwrap(), "list");
}

#[tokio::test]
async fn big_list_del_expire_rename_and_multi() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    for chunk in 0..10 {
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg("big");
        for i in 0..1000 {
            cmd.arg(format!("e{}", chunk * 1000 + i));
        }
        let _: i64 = cmd.query_async(&mut c).await.unwrap();
    }
    assert_eq!(qs::<i64>(&mut c, "LLEN big").await.unwrap(), 10_000);
    assert_eq!(
        lrange(&mut c, "big", 5000, 5002).await,
        ["e5000", "e5001", "e5002"]
    );
    assert_eq!(
        qs::<String>(&mut c, "LINDEX big 9999").await.unwrap(),
        "e9999"
    );

    assert_eq!(qs::<String>(&mut c, "RENAME big big2").await.unwrap(), "OK");
    assert_eq!(qs::<i64>(&mut c, "LLEN big2").await.unwrap(), 10_000);
    assert_eq!(lrange(&mut c, "big2", -1, -1).await, ["e9999"]);
    assert_eq!(qs::<i64>(&mut c, "EXISTS big").await.unwrap(), 0);

    let t = std::time::Instant::now();
    assert_eq!(qs::<i64>(&mut c, "DEL big2").await.unwrap(), 1);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "DEL is O(1): {:?}",
        t.elapsed()
    );
    assert_eq!(qs::<i64>(&mut c, "LLEN big2").await.unwrap(), 0);
    assert_eq!(lrange(&mut c, "big2", 0, -1).await, Vec::<String>::new());
    // A new list under the same name does not see the old elements.
    let _: i64 = qs(&mut c, "RPUSH big2 fresh").await.unwrap();
    assert_eq!(lrange(&mut c, "big2", 0, -1).await, ["fresh"]);

    let _: i64 = qs(&mut c, "RPUSH exp a b").await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "PEXPIRE exp 50").await.unwrap(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert_eq!(qs::<i64>(&mut c, "LLEN exp").await.unwrap(), 0);
    assert_eq!(
        qs::<i64>(&mut c, "RPUSH exp c").await.unwrap(),
        1,
        "expired list starts fresh"
    );

    // MULTI/EXEC.
    let (a, b, r): (i64, String, Vec<String>) = redis::pipe()
        .atomic()
        .cmd("RPUSH")
        .arg("tx")
        .arg("1")
        .arg("2")
        .cmd("LPOP")
        .arg("tx")
        .cmd("LRANGE")
        .arg("tx")
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((a, b.as_str(), r), (2, "1", vec!["2".to_string()]));
}
