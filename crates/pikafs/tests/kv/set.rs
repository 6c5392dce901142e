//! Set commands against Redis 7 semantics.

use std::collections::BTreeSet;

use redis::Value;

use crate::common::{assert_err, q, qs, KvNode};

async fn members(c: &mut redis::aio::MultiplexedConnection, key: &str) -> BTreeSet<String> {
    qs(c, &format!("SMEMBERS {key}")).await.unwrap()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn add_remove_membership_and_binary_members() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    assert_eq!(qs::<i64>(&mut c, "SADD s a b c a").await.unwrap(), 3);
    assert_eq!(qs::<i64>(&mut c, "SADD s c d").await.unwrap(), 1);
    assert_eq!(qs::<i64>(&mut c, "SCARD s").await.unwrap(), 4);
    assert_eq!(qs::<i64>(&mut c, "SCARD nos").await.unwrap(), 0);
    assert_eq!(members(&mut c, "s").await, set(&["a", "b", "c", "d"]));
    assert_eq!(qs::<i64>(&mut c, "SISMEMBER s a").await.unwrap(), 1);
    assert_eq!(qs::<i64>(&mut c, "SISMEMBER s z").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "SISMEMBER nos a").await.unwrap(), 0);
    assert_eq!(
        qs::<Vec<i64>>(&mut c, "SMISMEMBER s a z d").await.unwrap(),
        [1, 0, 1]
    );
    assert_eq!(
        qs::<Vec<i64>>(&mut c, "SMISMEMBER nos a").await.unwrap(),
        [0]
    );
    assert_eq!(qs::<i64>(&mut c, "SREM s a z").await.unwrap(), 1);
    assert_eq!(qs::<i64>(&mut c, "SREM nos a").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "SREM s b c d").await.unwrap(), 3);
    assert_eq!(
        qs::<i64>(&mut c, "EXISTS s").await.unwrap(),
        0,
        "empty set is deleted"
    );
    assert_eq!(members(&mut c, "s").await, set(&[]));

    let m: &[u8] = b"x\x00y\r\nz";
    assert_eq!(
        q::<i64>(&mut c, &[b"SADD", b"bin", m, b""]).await.unwrap(),
        2
    );
    assert_eq!(
        q::<i64>(&mut c, &[b"SISMEMBER", b"bin", m]).await.unwrap(),
        1
    );
    assert_eq!(
        q::<i64>(&mut c, &[b"SISMEMBER", b"bin", b"x"])
            .await
            .unwrap(),
        0
    );
    let got: BTreeSet<Vec<u8>> = qs(&mut c, "SMEMBERS bin").await.unwrap();
    assert_eq!(got, [m.to_vec(), vec![]].into_iter().collect());

    let _: String = qs(&mut c, "SET str v").await.unwrap();
    for cmd in [
        "SADD str a",
        "SREM str a",
        "SISMEMBER str a",
        "SMEMBERS str",
        "SCARD str",
        "SPOP str",
        "SRANDMEMBER str",
        "SINTER str",
        "SUNION str",
        "SDIFF str",
        "SSCAN str 0",
        "SINTERCARD 1 str",
    ] {
        assert_err(qs::<Value>(&mut c, cmd).await, "WRONGTYPE");
    }
    assert_eq!(qs::<String>(&mut c, "TYPE bin").await.unwrap(), "set");
    assert_err(
        qs::<Value>(&mut c, "SADD s").await,
        "ERR wrong number of arguments for 'sadd' command",
    );
}

#[tokio::test]
async fn spop_srandmember_counts() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    let _: i64 = qs(&mut c, "SADD s a b c d e").await.unwrap();
    let all = set(&["a", "b", "c", "d", "e"]);

    let one: String = qs(&mut c, "SRANDMEMBER s").await.unwrap();
    assert!(all.contains(&one));
    let three: Vec<String> = qs(&mut c, "SRANDMEMBER s 3").await.unwrap();
    assert_eq!(three.len(), 3);
    assert_eq!(
        three.iter().collect::<BTreeSet<_>>().len(),
        3,
        "positive count: distinct"
    );
    let many: Vec<String> = qs(&mut c, "SRANDMEMBER s 100").await.unwrap();
    assert_eq!(
        many.iter().cloned().collect::<BTreeSet<_>>(),
        all,
        "capped at the set size"
    );
    let rep: Vec<String> = qs(&mut c, "SRANDMEMBER s -20").await.unwrap();
    assert_eq!(
        rep.len(),
        20,
        "negative count: exactly |count|, repeats allowed"
    );
    assert!(rep.iter().all(|m| all.contains(m)));
    assert_eq!(
        qs::<Vec<String>>(&mut c, "SRANDMEMBER s 0").await.unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        qs::<Option<String>>(&mut c, "SRANDMEMBER nos")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        qs::<Vec<String>>(&mut c, "SRANDMEMBER nos 5")
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        qs::<i64>(&mut c, "SCARD s").await.unwrap(),
        5,
        "SRANDMEMBER does not remove"
    );

    let p: String = qs(&mut c, "SPOP s").await.unwrap();
    assert!(all.contains(&p));
    assert_err(
        qs::<Value>(&mut c, "SISMEMBER s").await,
        "ERR wrong number of arguments for 'sismember' command",
    );
    assert_eq!(
        q::<i64>(&mut c, &[b"SISMEMBER", b"s", p.as_bytes()])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        qs::<Vec<String>>(&mut c, "SPOP s 0").await.unwrap(),
        Vec::<String>::new()
    );
    let two: Vec<String> = qs(&mut c, "SPOP s 2").await.unwrap();
    assert_eq!(two.iter().collect::<BTreeSet<_>>().len(), 2);
    assert_eq!(qs::<i64>(&mut c, "SCARD s").await.unwrap(), 2);
    let rest: Vec<String> = qs(&mut c, "SPOP s 10").await.unwrap();
    assert_eq!(rest.len(), 2, "count larger than the set pops everything");
    assert_eq!(qs::<i64>(&mut c, "EXISTS s").await.unwrap(), 0);
    assert_eq!(qs::<Option<String>>(&mut c, "SPOP s").await.unwrap(), None);
    assert_eq!(
        qs::<Vec<String>>(&mut c, "SPOP s 3").await.unwrap(),
        Vec::<String>::new()
    );
    assert_err(
        qs::<Value>(&mut c, "SPOP s -1").await,
        "ERR value is out of range, must be positive",
    );
}

#[tokio::test]
async fn smove_algebra_store_and_intercard() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    let _: i64 = qs(&mut c, "SADD a 1 2 3 4").await.unwrap();
    let _: i64 = qs(&mut c, "SADD b 3 4 5").await.unwrap();
    let _: i64 = qs(&mut c, "SADD c 4 5 6").await.unwrap();
    assert_eq!(members(&mut c, "a").await, set(&["1", "2", "3", "4"]));

    let inter: BTreeSet<String> = qs(&mut c, "SINTER a b c").await.unwrap();
    assert_eq!(inter, set(&["4"]));
    let inter: BTreeSet<String> = qs(&mut c, "SINTER a b nokey").await.unwrap();
    assert_eq!(inter, set(&[]));
    let uni: BTreeSet<String> = qs(&mut c, "SUNION a b c nokey").await.unwrap();
    assert_eq!(uni, set(&["1", "2", "3", "4", "5", "6"]));
    let diff: BTreeSet<String> = qs(&mut c, "SDIFF a b").await.unwrap();
    assert_eq!(diff, set(&["1", "2"]));
    let diff: BTreeSet<String> = qs(&mut c, "SDIFF nokey a").await.unwrap();
    assert_eq!(diff, set(&[]));

    assert_eq!(qs::<i64>(&mut c, "SINTERCARD 2 a b").await.unwrap(), 2);
    assert_eq!(
        qs::<i64>(&mut c, "SINTERCARD 2 a b LIMIT 1").await.unwrap(),
        1
    );
    assert_eq!(
        qs::<i64>(&mut c, "SINTERCARD 2 a b LIMIT 0").await.unwrap(),
        2,
        "0 = no limit"
    );
    assert_err(
        qs::<Value>(&mut c, "SINTERCARD 0 a").await,
        "ERR numkeys should be greater than 0",
    );
    assert_err(
        qs::<Value>(&mut c, "SINTERCARD 3 a b").await,
        "ERR Number of keys can't be greater than number of args",
    );
    assert_err(
        qs::<Value>(&mut c, "SINTERCARD 2 a b LIMIT -1").await,
        "ERR LIMIT can't be negative",
    );
    assert_err(
        qs::<Value>(&mut c, "SINTERCARD 2 a b FOO").await,
        "ERR syntax error",
    );

    // *STORE overwrites any type and returns the cardinality.
    let _: String = qs(&mut c, "SET dst str").await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "SUNIONSTORE dst a b").await.unwrap(), 5);
    assert_eq!(qs::<String>(&mut c, "TYPE dst").await.unwrap(), "set");
    assert_eq!(
        members(&mut c, "dst").await,
        set(&["1", "2", "3", "4", "5"])
    );
    assert_eq!(qs::<i64>(&mut c, "SINTERSTORE dst a b").await.unwrap(), 2);
    assert_eq!(members(&mut c, "dst").await, set(&["3", "4"]));
    assert_eq!(qs::<i64>(&mut c, "SDIFFSTORE dst a b c").await.unwrap(), 2);
    assert_eq!(members(&mut c, "dst").await, set(&["1", "2"]));
    assert_eq!(
        qs::<i64>(&mut c, "SINTERSTORE dst a nokey").await.unwrap(),
        0
    );
    assert_eq!(
        qs::<i64>(&mut c, "EXISTS dst").await.unwrap(),
        0,
        "empty result deletes dst"
    );
    // Storing onto one of the inputs.
    assert_eq!(qs::<i64>(&mut c, "SDIFFSTORE a a b").await.unwrap(), 2);
    assert_eq!(members(&mut c, "a").await, set(&["1", "2"]));

    // SMOVE.
    assert_eq!(qs::<i64>(&mut c, "SMOVE a b 1").await.unwrap(), 1);
    assert_eq!(qs::<i64>(&mut c, "SMOVE a b 1").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "SMOVE nokey b 1").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "SMOVE b b 3").await.unwrap(), 1);
    assert_eq!(qs::<i64>(&mut c, "SMOVE a newset 2").await.unwrap(), 1);
    assert_eq!(
        qs::<i64>(&mut c, "EXISTS a").await.unwrap(),
        0,
        "moved its last member"
    );
    assert_eq!(members(&mut c, "newset").await, set(&["2"]));
    assert_eq!(members(&mut c, "b").await, set(&["1", "3", "4", "5"]));
    let _: String = qs(&mut c, "SET str v").await.unwrap();
    assert_err(qs::<Value>(&mut c, "SMOVE b str 1").await, "WRONGTYPE");
    assert_err(qs::<Value>(&mut c, "SMOVE str b 1").await, "WRONGTYPE");
    assert_eq!(
        qs::<i64>(&mut c, "SISMEMBER b 1").await.unwrap(),
        1,
        "failed SMOVE moved nothing"
    );
}

#[tokio::test]
async fn sscan_big_set_del_expire_rename_and_multi() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    for chunk in 0..10 {
        let mut cmd = redis::cmd("SADD");
        cmd.arg("big");
        for i in 0..1000 {
            cmd.arg(format!("m{}", chunk * 1000 + i));
        }
        let _: i64 = cmd.query_async(&mut c).await.unwrap();
    }
    assert_eq!(qs::<i64>(&mut c, "SCARD big").await.unwrap(), 10_000);

    // SSCAN returns every member exactly once; MATCH filters.
    let mut seen = BTreeSet::new();
    let mut cursor = "0".to_string();
    let mut rounds = 0;
    loop {
        let (next, batch): (String, Vec<String>) =
            qs(&mut c, &format!("SSCAN big {cursor} COUNT 500"))
                .await
                .unwrap();
        for m in batch {
            assert!(seen.insert(m), "duplicate");
        }
        rounds += 1;
        if next == "0" {
            break;
        }
        cursor = next;
        assert!(rounds < 100, "scan does not terminate");
    }
    assert_eq!(seen.len(), 10_000);
    let mut matched = BTreeSet::new();
    let mut cursor = "0".to_string();
    loop {
        let (next, batch): (String, Vec<String>) =
            qs(&mut c, &format!("SSCAN big {cursor} MATCH m99* COUNT 1000"))
                .await
                .unwrap();
        matched.extend(batch);
        if next == "0" {
            break;
        }
        cursor = next;
    }
    assert_eq!(
        matched.len(),
        111,
        "m99, m990..m999, m9900..m9999: {matched:?}"
    );
    let (next, batch): (String, Vec<String>) = qs(&mut c, "SSCAN nokey 0").await.unwrap();
    assert_eq!((next.as_str(), batch.len()), ("0", 0));
    assert_err(
        qs::<Value>(&mut c, "SSCAN big 0 COUNT 0").await,
        "ERR syntax error",
    );
    assert_err(
        qs::<Value>(&mut c, "SSCAN big abc").await,
        "ERR invalid cursor",
    );

    assert_eq!(qs::<String>(&mut c, "RENAME big big2").await.unwrap(), "OK");
    assert_eq!(qs::<i64>(&mut c, "SCARD big2").await.unwrap(), 10_000);
    assert_eq!(qs::<i64>(&mut c, "SISMEMBER big2 m1234").await.unwrap(), 1);
    let t = std::time::Instant::now();
    assert_eq!(qs::<i64>(&mut c, "EXPIRE big2 0").await.unwrap(), 1);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(qs::<i64>(&mut c, "EXISTS big2").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "SADD big2 x").await.unwrap(), 1);
    assert_eq!(
        members(&mut c, "big2").await,
        set(&["x"]),
        "old members do not come back"
    );
    assert_eq!(qs::<i64>(&mut c, "DEL big2").await.unwrap(), 1);

    let (a, b, m): (i64, i64, BTreeSet<String>) = redis::pipe()
        .atomic()
        .cmd("SADD")
        .arg("tx")
        .arg("a")
        .arg("b")
        .cmd("SREM")
        .arg("tx")
        .arg("a")
        .cmd("SMEMBERS")
        .arg("tx")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((a, b, m), (2, 1, set(&["b"])));
}
