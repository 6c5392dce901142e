//! Sorted-set commands against Redis 7 semantics.

use std::collections::BTreeMap;

use redis::Value;

use crate::common::{assert_err, q, qs, KvNode};

type Conn = redis::aio::MultiplexedConnection;

async fn strs(c: &mut Conn, line: &str) -> Vec<String> {
    qs(c, line).await.unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn v(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn zadd_flags_scores_and_errors() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    assert_eq!(qs::<i64>(&mut c, "ZADD z 1 a 2 b 3 c").await.unwrap(), 3);
    assert_eq!(
        qs::<i64>(&mut c, "ZADD z 10 a 4 d").await.unwrap(),
        1,
        "updates do not count"
    );
    assert_eq!(
        qs::<i64>(&mut c, "ZADD z CH 11 a 4 d 5 e").await.unwrap(),
        2,
        "CH: added + changed"
    );
    assert_eq!(qs::<String>(&mut c, "ZSCORE z a").await.unwrap(), "11");
    // NX: only add. XX: only update.
    assert_eq!(qs::<i64>(&mut c, "ZADD z NX 100 a 6 f").await.unwrap(), 1);
    assert_eq!(qs::<String>(&mut c, "ZSCORE z a").await.unwrap(), "11");
    assert_eq!(qs::<i64>(&mut c, "ZADD z XX CH 12 a 7 g").await.unwrap(), 1);
    assert_eq!(
        qs::<Option<String>>(&mut c, "ZSCORE z g").await.unwrap(),
        None
    );
    // GT/LT: only move in one direction, still add new members.
    assert_eq!(
        qs::<i64>(&mut c, "ZADD z GT CH 5 a 20 b 1 h")
            .await
            .unwrap(),
        2
    );
    assert_eq!(qs::<String>(&mut c, "ZSCORE z a").await.unwrap(), "12");
    assert_eq!(qs::<String>(&mut c, "ZSCORE z b").await.unwrap(), "20");
    assert_eq!(qs::<i64>(&mut c, "ZADD z LT CH 30 c 0 c").await.unwrap(), 1);
    assert_eq!(qs::<String>(&mut c, "ZSCORE z c").await.unwrap(), "0");
    assert_eq!(qs::<i64>(&mut c, "ZADD z XX GT CH 25 b").await.unwrap(), 1);
    // INCR.
    assert_eq!(
        qs::<String>(&mut c, "ZADD z INCR 2.5 a").await.unwrap(),
        "14.5"
    );
    assert_eq!(
        qs::<String>(&mut c, "ZADD z INCR 3 new").await.unwrap(),
        "3"
    );
    assert_eq!(
        qs::<Option<String>>(&mut c, "ZADD z NX INCR 1 a")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        qs::<Option<String>>(&mut c, "ZADD z XX INCR 1 nope")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        qs::<Option<String>>(&mut c, "ZADD z GT INCR -1 a")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        qs::<Option<String>>(&mut c, "ZADD nokey XX 1 a")
            .await
            .unwrap()
            .as_deref(),
        Some("0")
    );
    assert_eq!(qs::<i64>(&mut c, "EXISTS nokey").await.unwrap(), 0);

    // Errors.
    assert_err(
        qs::<Value>(&mut c, "ZADD z NX XX 1 a").await,
        "ERR XX and NX options at the same time are not compatible",
    );
    assert_err(
        qs::<Value>(&mut c, "ZADD z GT LT 1 a").await,
        "ERR GT, LT, and/or NX options at the same time are not compatible",
    );
    assert_err(
        qs::<Value>(&mut c, "ZADD z GT NX 1 a").await,
        "ERR GT, LT, and/or NX options at the same time are not compatible",
    );
    assert_err(
        qs::<Value>(&mut c, "ZADD z INCR 1 a 2 b").await,
        "ERR INCR option supports a single increment-element pair",
    );
    assert_err(
        qs::<Value>(&mut c, "ZADD z 1 a 2").await,
        "ERR syntax error",
    );
    assert_err(
        qs::<Value>(&mut c, "ZADD z NX").await,
        "ERR wrong number of arguments",
    );
    assert_err(
        qs::<Value>(&mut c, "ZADD z abc a").await,
        "ERR value is not a valid float",
    );
    assert_err(
        qs::<Value>(&mut c, "ZADD z nan a").await,
        "ERR value is not a valid float",
    );
    assert_err(
        qs::<Value>(&mut c, "ZADD z 1 ok x bad").await,
        "ERR value is not a valid float",
    );
    assert_eq!(
        qs::<Option<String>>(&mut c, "ZSCORE z ok").await.unwrap(),
        None,
        "all-or-nothing"
    );

    // Infinities and NaN from INCR.
    assert_eq!(
        qs::<i64>(&mut c, "ZADD inf +inf top -inf bottom 0 mid")
            .await
            .unwrap(),
        3
    );
    assert_eq!(qs::<String>(&mut c, "ZSCORE inf top").await.unwrap(), "inf");
    assert_eq!(
        qs::<String>(&mut c, "ZSCORE inf bottom").await.unwrap(),
        "-inf"
    );
    assert_err(
        qs::<Value>(&mut c, "ZINCRBY inf -inf top").await,
        "ERR resulting score is not a number (NaN)",
    );
    assert_err(
        qs::<Value>(&mut c, "ZADD inf INCR -inf top").await,
        "ERR resulting score is not a number (NaN)",
    );
    assert_eq!(qs::<String>(&mut c, "ZSCORE inf top").await.unwrap(), "inf");
    assert_eq!(
        strs(&mut c, "ZRANGE inf 0 -1 WITHSCORES").await,
        v(&["bottom", "-inf", "mid", "0", "top", "inf"])
    );
    // Negative, fractional and -0 scores sort numerically.
    assert_eq!(
        qs::<i64>(&mut c, "ZADD n -2.5 a -10 b 0.1 c -0 d 1e3 e")
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        strs(&mut c, "ZRANGE n 0 -1").await,
        v(&["b", "a", "d", "c", "e"])
    );
    assert_eq!(qs::<String>(&mut c, "ZSCORE n e").await.unwrap(), "1000");
    assert_eq!(
        qs::<String>(&mut c, "ZINCRBY n 0.2 c").await.unwrap(),
        "0.30000000000000004"
    );
    assert_eq!(qs::<String>(&mut c, "ZINCRBY n 5 newm").await.unwrap(), "5");
    assert_err(
        qs::<Value>(&mut c, "ZINCRBY n x c").await,
        "ERR value is not a valid float",
    );

    // WRONGTYPE and TYPE.
    let _: String = qs(&mut c, "SET s v").await.unwrap();
    for cmd in [
        "ZADD s 1 a",
        "ZSCORE s a",
        "ZCARD s",
        "ZRANGE s 0 -1",
        "ZRANK s a",
        "ZREM s a",
        "ZCOUNT s 0 1",
        "ZPOPMIN s",
        "ZSCAN s 0",
        "ZINCRBY s 1 a",
    ] {
        assert_err(qs::<Value>(&mut c, cmd).await, "WRONGTYPE");
    }
    assert_eq!(qs::<String>(&mut c, "TYPE z").await.unwrap(), "zset");
}

#[tokio::test]
async fn scores_ranks_ranges_and_removal() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    let _: i64 = qs(&mut c, "ZADD z 1 a 2 b 3 c 4 d 5 e").await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "ZCARD z").await.unwrap(), 5);
    assert_eq!(qs::<i64>(&mut c, "ZCARD nokey").await.unwrap(), 0);
    let ms: Vec<Option<String>> = qs(&mut c, "ZMSCORE z a nope e").await.unwrap();
    assert_eq!(ms, vec![Some("1".into()), None, Some("5".into())]);
    assert_eq!(qs::<i64>(&mut c, "ZRANK z a").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "ZRANK z d").await.unwrap(), 3);
    assert_eq!(qs::<i64>(&mut c, "ZREVRANK z d").await.unwrap(), 1);
    assert_eq!(
        qs::<Option<i64>>(&mut c, "ZRANK z nope").await.unwrap(),
        None
    );
    assert_eq!(
        qs::<(i64, String)>(&mut c, "ZRANK z c WITHSCORE")
            .await
            .unwrap(),
        (2, "3".into())
    );
    assert_eq!(
        qs::<(i64, String)>(&mut c, "ZREVRANK z c WITHSCORE")
            .await
            .unwrap(),
        (2, "3".into())
    );
    assert_eq!(
        qs::<Value>(&mut c, "ZRANK z nope WITHSCORE").await.unwrap(),
        Value::Nil
    );

    // By rank.
    assert_eq!(
        strs(&mut c, "ZRANGE z 0 -1").await,
        v(&["a", "b", "c", "d", "e"])
    );
    assert_eq!(
        strs(&mut c, "ZRANGE z -100 100").await,
        v(&["a", "b", "c", "d", "e"])
    );
    assert_eq!(strs(&mut c, "ZRANGE z 3 1").await, v(&[]));
    assert_eq!(
        strs(&mut c, "ZRANGE z 1 2 WITHSCORES").await,
        v(&["b", "2", "c", "3"])
    );
    assert_eq!(strs(&mut c, "ZRANGE z 0 1 REV").await, v(&["e", "d"]));
    assert_eq!(
        strs(&mut c, "ZREVRANGE z 0 -1").await,
        v(&["e", "d", "c", "b", "a"])
    );
    assert_eq!(
        strs(&mut c, "ZREVRANGE z 0 0 WITHSCORES").await,
        v(&["e", "5"])
    );
    assert_eq!(strs(&mut c, "ZRANGE nokey 0 -1").await, v(&[]));
    assert_err(
        qs::<Value>(&mut c, "ZRANGE z 0 -1 LIMIT 0 1").await,
        "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
    );
    assert_err(
        qs::<Value>(&mut c, "ZRANGE z a b").await,
        "ERR value is not an integer or out of range",
    );

    // By score, inclusive/exclusive, infinities, LIMIT, REV.
    assert_eq!(
        strs(&mut c, "ZRANGE z 2 4 BYSCORE").await,
        v(&["b", "c", "d"])
    );
    assert_eq!(strs(&mut c, "ZRANGE z (2 (4 BYSCORE").await, v(&["c"]));
    assert_eq!(
        strs(&mut c, "ZRANGE z -inf +inf BYSCORE LIMIT 1 2").await,
        v(&["b", "c"])
    );
    assert_eq!(
        strs(&mut c, "ZRANGE z -inf +inf BYSCORE LIMIT 1 -1").await,
        v(&["b", "c", "d", "e"])
    );
    assert_eq!(
        strs(&mut c, "ZRANGE z -inf +inf BYSCORE LIMIT -1 2").await,
        v(&[])
    );
    assert_eq!(
        strs(&mut c, "ZRANGE z (4 2 BYSCORE REV WITHSCORES").await,
        v(&["c", "3", "b", "2"])
    );
    assert_eq!(
        strs(&mut c, "ZRANGEBYSCORE z (1 3 WITHSCORES").await,
        v(&["b", "2", "c", "3"])
    );
    assert_eq!(
        strs(&mut c, "ZRANGEBYSCORE z -inf inf LIMIT 0 2").await,
        v(&["a", "b"])
    );
    assert_eq!(
        strs(&mut c, "ZREVRANGEBYSCORE z +inf (3").await,
        v(&["e", "d"])
    );
    assert_eq!(
        strs(&mut c, "ZREVRANGEBYSCORE z 5 1 LIMIT 1 2 WITHSCORES").await,
        v(&["d", "4", "c", "3"])
    );
    assert_eq!(strs(&mut c, "ZRANGEBYSCORE z 4 2").await, v(&[]));
    assert_eq!(strs(&mut c, "ZRANGEBYSCORE z (3 (3").await, v(&[]));
    assert_eq!(qs::<i64>(&mut c, "ZCOUNT z (1 3").await.unwrap(), 2);
    assert_eq!(qs::<i64>(&mut c, "ZCOUNT z -inf +inf").await.unwrap(), 5);
    assert_eq!(
        qs::<i64>(&mut c, "ZCOUNT nokey -inf +inf").await.unwrap(),
        0
    );
    assert_err(
        qs::<Value>(&mut c, "ZCOUNT z x 3").await,
        "ERR min or max is not a float",
    );
    assert_err(
        qs::<Value>(&mut c, "ZRANGEBYSCORE z 1 ((3").await,
        "ERR min or max is not a float",
    );
    assert_err(
        qs::<Value>(&mut c, "ZRANGE z 1 nan BYSCORE").await,
        "ERR min or max is not a float",
    );

    // By lex (equal scores).
    let _: i64 = qs(&mut c, "ZADD lex 0 a 0 b 0 c 0 d 0 e 0 f")
        .await
        .unwrap();
    assert_eq!(
        strs(&mut c, "ZRANGEBYLEX lex - +").await,
        v(&["a", "b", "c", "d", "e", "f"])
    );
    assert_eq!(
        strs(&mut c, "ZRANGEBYLEX lex [b (e").await,
        v(&["b", "c", "d"])
    );
    assert_eq!(
        strs(&mut c, "ZRANGEBYLEX lex (b [e LIMIT 1 2").await,
        v(&["d", "e"])
    );
    assert_eq!(
        strs(&mut c, "ZREVRANGEBYLEX lex [e (b").await,
        v(&["e", "d", "c"])
    );
    assert_eq!(
        strs(&mut c, "ZREVRANGEBYLEX lex + - LIMIT 0 2").await,
        v(&["f", "e"])
    );
    assert_eq!(
        strs(&mut c, "ZRANGE lex [c + BYLEX").await,
        v(&["c", "d", "e", "f"])
    );
    assert_eq!(
        strs(&mut c, "ZRANGE lex (d - BYLEX REV").await,
        v(&["c", "b", "a"])
    );
    assert_eq!(strs(&mut c, "ZRANGEBYLEX lex + -").await, v(&[]));
    assert_eq!(qs::<i64>(&mut c, "ZLEXCOUNT lex [b [d").await.unwrap(), 3);
    assert_eq!(qs::<i64>(&mut c, "ZLEXCOUNT lex - +").await.unwrap(), 6);
    assert_err(
        qs::<Value>(&mut c, "ZRANGEBYLEX lex b d").await,
        "ERR min or max not valid string range item",
    );
    assert_err(
        qs::<Value>(&mut c, "ZLEXCOUNT lex [a x").await,
        "ERR min or max not valid string range item",
    );
    assert_err(
        qs::<Value>(&mut c, "ZRANGE lex - + BYLEX WITHSCORES").await,
        "ERR syntax error, WITHSCORES not supported in combination with BYLEX",
    );

    // Removal by rank / score / lex.
    assert_eq!(
        qs::<i64>(&mut c, "ZREMRANGEBYLEX lex [b (d").await.unwrap(),
        2
    );
    assert_eq!(
        strs(&mut c, "ZRANGE lex 0 -1").await,
        v(&["a", "d", "e", "f"])
    );
    assert_eq!(
        qs::<i64>(&mut c, "ZREMRANGEBYRANK lex 0 1").await.unwrap(),
        2
    );
    assert_eq!(
        qs::<i64>(&mut c, "ZREMRANGEBYRANK lex -1 -1")
            .await
            .unwrap(),
        1
    );
    assert_eq!(strs(&mut c, "ZRANGE lex 0 -1").await, v(&["e"]));
    assert_eq!(
        qs::<i64>(&mut c, "ZREMRANGEBYSCORE z (1 3").await.unwrap(),
        2
    );
    assert_eq!(strs(&mut c, "ZRANGE z 0 -1").await, v(&["a", "d", "e"]));
    assert_eq!(
        qs::<i64>(&mut c, "ZREMRANGEBYSCORE z -inf +inf")
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        qs::<i64>(&mut c, "EXISTS z").await.unwrap(),
        0,
        "emptied zset is deleted"
    );
    assert_eq!(
        qs::<i64>(&mut c, "ZREMRANGEBYRANK nokey 0 -1")
            .await
            .unwrap(),
        0
    );

    // ZREM, ZPOPMIN/ZPOPMAX.
    let _: i64 = qs(&mut c, "ZADD p 1 a 2 b 3 c 4 d").await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "ZREM p a nope").await.unwrap(), 1);
    assert_eq!(strs(&mut c, "ZPOPMIN p").await, v(&["b", "2"]));
    assert_eq!(strs(&mut c, "ZPOPMAX p").await, v(&["d", "4"]));
    assert_eq!(strs(&mut c, "ZPOPMAX p 0").await, v(&[]));
    assert_eq!(strs(&mut c, "ZPOPMIN p 10").await, v(&["c", "3"]));
    assert_eq!(qs::<i64>(&mut c, "EXISTS p").await.unwrap(), 0);
    assert_eq!(strs(&mut c, "ZPOPMIN p").await, v(&[]));
    assert_err(
        qs::<Value>(&mut c, "ZPOPMIN p -1").await,
        "ERR value is out of range, must be positive",
    );

    // Binary members.
    let m: &[u8] = b"a\x00b\r\n";
    let _: i64 = q(&mut c, &[b"ZADD", b"bin", b"1", m, b"2", b""])
        .await
        .unwrap();
    let got: Vec<Vec<u8>> = qs(&mut c, "ZRANGE bin 0 -1").await.unwrap();
    assert_eq!(got, vec![m.to_vec(), vec![]]);
    assert_eq!(
        q::<String>(&mut c, &[b"ZSCORE", b"bin", m]).await.unwrap(),
        "1"
    );
    assert_eq!(q::<i64>(&mut c, &[b"ZRANK", b"bin", b""]).await.unwrap(), 1);
}

#[tokio::test]
async fn store_commands_weights_aggregate() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    let _: i64 = qs(&mut c, "ZADD a 1 x 2 y 3 z").await.unwrap();
    let _: i64 = qs(&mut c, "ZADD b 10 y 20 z 30 w").await.unwrap();
    let _: i64 = qs(&mut c, "SADD s x w").await.unwrap();

    assert_eq!(qs::<i64>(&mut c, "ZUNIONSTORE u 2 a b").await.unwrap(), 4);
    assert_eq!(
        strs(&mut c, "ZRANGE u 0 -1 WITHSCORES").await,
        v(&["x", "1", "y", "12", "z", "23", "w", "30"])
    );
    assert_eq!(
        qs::<i64>(&mut c, "ZUNIONSTORE u 2 a b WEIGHTS 2 0.5 AGGREGATE MAX")
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        strs(&mut c, "ZRANGE u 0 -1 WITHSCORES").await,
        v(&["x", "2", "y", "5", "z", "10", "w", "15"])
    );
    assert_eq!(
        qs::<i64>(&mut c, "ZINTERSTORE i 2 a b AGGREGATE MIN")
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        strs(&mut c, "ZRANGE i 0 -1 WITHSCORES").await,
        v(&["y", "2", "z", "3"])
    );
    assert_eq!(qs::<i64>(&mut c, "ZINTERSTORE i 2 a b").await.unwrap(), 2);
    assert_eq!(
        strs(&mut c, "ZRANGE i 0 -1 WITHSCORES").await,
        v(&["y", "12", "z", "23"])
    );
    // A plain set counts with score 1.
    assert_eq!(
        qs::<i64>(&mut c, "ZINTERSTORE i 2 a s WEIGHTS 1 5")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        strs(&mut c, "ZRANGE i 0 -1 WITHSCORES").await,
        v(&["x", "6"])
    );
    assert_eq!(qs::<i64>(&mut c, "ZDIFFSTORE d 2 a b").await.unwrap(), 1);
    assert_eq!(
        strs(&mut c, "ZRANGE d 0 -1 WITHSCORES").await,
        v(&["x", "1"])
    );
    assert_eq!(qs::<i64>(&mut c, "ZDIFFSTORE d 2 a a").await.unwrap(), 0);
    assert_eq!(
        qs::<i64>(&mut c, "EXISTS d").await.unwrap(),
        0,
        "empty result deletes dst"
    );
    assert_eq!(
        qs::<i64>(&mut c, "ZINTERSTORE i 2 a nokey").await.unwrap(),
        0
    );
    assert_eq!(
        qs::<i64>(&mut c, "ZUNIONSTORE u2 2 a nokey").await.unwrap(),
        3
    );

    // inf + -inf sums to 0, as in Redis.
    let _: i64 = qs(&mut c, "ZADD pinf +inf m").await.unwrap();
    let _: i64 = qs(&mut c, "ZADD ninf -inf m").await.unwrap();
    assert_eq!(
        qs::<i64>(&mut c, "ZUNIONSTORE sum 2 pinf ninf")
            .await
            .unwrap(),
        1
    );
    assert_eq!(qs::<String>(&mut c, "ZSCORE sum m").await.unwrap(), "0");

    // Non-store forms.
    assert_eq!(
        strs(&mut c, "ZUNION 2 a b WITHSCORES").await,
        v(&["x", "1", "y", "12", "z", "23", "w", "30"])
    );
    assert_eq!(strs(&mut c, "ZINTER 2 a b").await, v(&["y", "z"]));
    assert_eq!(
        strs(&mut c, "ZDIFF 2 b a WITHSCORES").await,
        v(&["w", "30"])
    );

    // Errors.
    assert_err(
        qs::<Value>(&mut c, "ZUNIONSTORE u 0 a").await,
        "ERR at least 1 input key is needed for 'zunionstore' command",
    );
    assert_err(
        qs::<Value>(&mut c, "ZUNIONSTORE u 3 a b").await,
        "ERR syntax error",
    );
    assert_err(
        qs::<Value>(&mut c, "ZUNIONSTORE u 2 a b WEIGHTS 1").await,
        "ERR syntax error",
    );
    assert_err(
        qs::<Value>(&mut c, "ZUNIONSTORE u 2 a b WEIGHTS 1 x").await,
        "ERR weight value is not a float",
    );
    assert_err(
        qs::<Value>(&mut c, "ZUNIONSTORE u 2 a b AGGREGATE AVG").await,
        "ERR syntax error",
    );
    assert_err(
        qs::<Value>(&mut c, "ZUNIONSTORE u 2 a b WITHSCORES").await,
        "ERR syntax error",
    );
    assert_err(
        qs::<Value>(&mut c, "ZDIFFSTORE u 2 a b WEIGHTS 1 1").await,
        "ERR syntax error",
    );
    let _: String = qs(&mut c, "SET str v").await.unwrap();
    assert_err(
        qs::<Value>(&mut c, "ZUNIONSTORE u 2 a str").await,
        "WRONGTYPE",
    );

    // *STORE onto a key of another type overwrites it.
    assert_eq!(qs::<i64>(&mut c, "ZUNIONSTORE str 1 a").await.unwrap(), 3);
    assert_eq!(qs::<String>(&mut c, "TYPE str").await.unwrap(), "zset");
    let _: i64 = qs(&mut c, "RPUSH lst x").await.unwrap();
    assert_eq!(
        qs::<i64>(&mut c, "ZRANGESTORE lst a 1 -1").await.unwrap(),
        2
    );
    assert_eq!(
        strs(&mut c, "ZRANGE lst 0 -1 WITHSCORES").await,
        v(&["y", "2", "z", "3"])
    );
    assert_eq!(
        qs::<i64>(&mut c, "ZRANGESTORE r b (10 +inf BYSCORE LIMIT 0 1")
            .await
            .unwrap(),
        1
    );
    assert_eq!(strs(&mut c, "ZRANGE r 0 -1").await, v(&["z"]));
    assert_eq!(
        qs::<i64>(&mut c, "ZRANGESTORE r b +inf -inf BYSCORE REV LIMIT 0 2")
            .await
            .unwrap(),
        2
    );
    assert_eq!(strs(&mut c, "ZRANGE r 0 -1").await, v(&["z", "w"]));
    assert_eq!(
        qs::<i64>(&mut c, "ZRANGESTORE r nokey 0 -1").await.unwrap(),
        0
    );
    assert_eq!(qs::<i64>(&mut c, "EXISTS r").await.unwrap(), 0);
    assert_err(
        qs::<Value>(&mut c, "ZRANGESTORE r a 0 -1 WITHSCORES").await,
        "ERR syntax error",
    );
}

#[tokio::test]
async fn zscan_big_zset_del_rename_and_multi() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    for chunk in 0..10 {
        let mut cmd = redis::cmd("ZADD");
        cmd.arg("big");
        for i in 0..1000 {
            let n = chunk * 1000 + i;
            cmd.arg(n).arg(format!("m{n:05}"));
        }
        let _: i64 = cmd.query_async(&mut c).await.unwrap();
    }
    assert_eq!(qs::<i64>(&mut c, "ZCARD big").await.unwrap(), 10_000);
    assert_eq!(qs::<i64>(&mut c, "ZRANK big m09999").await.unwrap(), 9999);
    assert_eq!(
        qs::<i64>(&mut c, "ZREVRANK big m00000").await.unwrap(),
        9999
    );
    assert_eq!(
        strs(&mut c, "ZRANGE big 5000 5001 WITHSCORES").await,
        v(&["m05000", "5000", "m05001", "5001"])
    );
    assert_eq!(
        strs(&mut c, "ZRANGE big -2 -1").await,
        v(&["m09998", "m09999"])
    );
    assert_eq!(
        strs(&mut c, "ZRANGEBYSCORE big (7000 +inf LIMIT 0 2").await,
        v(&["m07001", "m07002"])
    );
    assert_eq!(
        qs::<i64>(&mut c, "ZCOUNT big 1000 (2000").await.unwrap(),
        1000
    );

    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut cursor = "0".to_string();
    let mut rounds = 0;
    loop {
        let (next, batch): (String, Vec<String>) =
            qs(&mut c, &format!("ZSCAN big {cursor} COUNT 700"))
                .await
                .unwrap();
        for pair in batch.chunks(2) {
            assert!(
                seen.insert(pair[0].clone(), pair[1].clone()).is_none(),
                "duplicate"
            );
        }
        rounds += 1;
        if next == "0" {
            break;
        }
        cursor = next;
        assert!(rounds < 100);
    }
    assert_eq!(seen.len(), 10_000);
    assert_eq!(seen["m01234"], "1234");
    let (_, batch): (String, Vec<String>) = qs(&mut c, "ZSCAN big 0 MATCH m0000* COUNT 100")
        .await
        .unwrap();
    assert_eq!(batch.len(), 20, "m00000..m00009 with scores: {batch:?}");

    assert_eq!(qs::<String>(&mut c, "RENAME big big2").await.unwrap(), "OK");
    assert_eq!(qs::<i64>(&mut c, "ZCARD big2").await.unwrap(), 10_000);
    assert_eq!(
        qs::<String>(&mut c, "ZSCORE big2 m04321").await.unwrap(),
        "4321"
    );
    assert_eq!(
        strs(&mut c, "ZRANGEBYSCORE big2 4321 4321").await,
        v(&["m04321"])
    );
    let t = std::time::Instant::now();
    assert_eq!(qs::<i64>(&mut c, "DEL big2").await.unwrap(), 1);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(qs::<i64>(&mut c, "ZCARD big2").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "ZADD big2 1 only").await.unwrap(), 1);
    assert_eq!(strs(&mut c, "ZRANGE big2 0 -1").await, v(&["only"]));

    let (a, s, r): (i64, String, Vec<String>) = redis::pipe()
        .atomic()
        .cmd("ZADD")
        .arg("tx")
        .arg(1)
        .arg("a")
        .arg(2)
        .arg("b")
        .cmd("ZINCRBY")
        .arg("tx")
        .arg(5)
        .arg("a")
        .cmd("ZRANGE")
        .arg("tx")
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((a, s.as_str(), r), (2, "6", v(&["b", "a"])));
}
