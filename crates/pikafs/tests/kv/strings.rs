//! String commands against Redis 7 semantics.

use redis::Value;

use crate::common::{assert_err, q, qs, KvNode};

#[tokio::test]
async fn set_get_options_and_binary_values() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    let key: &[u8] = b"bin\x00\xff\r\nkey";
    let val: &[u8] = b"\x00\x01\r\n\xfe";
    let r: String = q(&mut c, &[b"SET", key, val]).await.unwrap();
    assert_eq!(r, "OK");
    let got: Vec<u8> = q(&mut c, &[b"GET", key]).await.unwrap();
    assert_eq!(got, val);
    // Empty value is distinct from missing.
    let _: String = q(&mut c, &[b"SET", b"empty", b""]).await.unwrap();
    let got: Option<Vec<u8>> = qs(&mut c, "GET empty").await.unwrap();
    assert_eq!(got, Some(vec![]));
    let got: Option<Vec<u8>> = qs(&mut c, "GET missing").await.unwrap();
    assert_eq!(got, None);

    // NX / XX / GET.
    let r: Option<String> = qs(&mut c, "SET k v1 NX").await.unwrap();
    assert_eq!(r.as_deref(), Some("OK"));
    let r: Option<String> = qs(&mut c, "SET k v2 NX").await.unwrap();
    assert_eq!(r, None);
    let r: Option<String> = qs(&mut c, "SET nokey v XX").await.unwrap();
    assert_eq!(r, None);
    let r: Option<String> = qs(&mut c, "SET k v3 XX GET").await.unwrap();
    assert_eq!(r.as_deref(), Some("v1"));
    let r: Option<String> = qs(&mut c, "SET k v4 NX GET").await.unwrap();
    assert_eq!(
        r.as_deref(),
        Some("v3"),
        "NX GET returns the old value and does not set"
    );
    let r: String = qs(&mut c, "GET k").await.unwrap();
    assert_eq!(r, "v3");
    assert_err(
        qs::<Value>(&mut c, "SET k v NX XX").await,
        "ERR syntax error",
    );
    assert_err(
        qs::<Value>(&mut c, "SET k v EX 10 PX 100").await,
        "ERR syntax error",
    );
    assert_err(
        qs::<Value>(&mut c, "SET k v EX 0").await,
        "ERR invalid expire time in 'set' command",
    );
    assert_err(
        qs::<Value>(&mut c, "SET k v EX -5").await,
        "ERR invalid expire time in 'set' command",
    );
    assert_err(
        qs::<Value>(&mut c, "SET k v EX abc").await,
        "ERR value is not an integer or out of range",
    );
    assert_err(
        qs::<Value>(&mut c, "SET k v EX 9223372036854775807").await,
        "ERR invalid expire time in 'set' command",
    );
    assert_err(
        qs::<Value>(&mut c, "SET k").await,
        "ERR wrong number of arguments for 'set' command",
    );

    // Expiry variants.
    let _: String = qs(&mut c, "SET e v EX 100").await.unwrap();
    let ttl: i64 = qs(&mut c, "TTL e").await.unwrap();
    assert!((99..=100).contains(&ttl), "{ttl}");
    let _: String = qs(&mut c, "SET e v2 KEEPTTL").await.unwrap();
    let ttl: i64 = qs(&mut c, "TTL e").await.unwrap();
    assert!((98..=100).contains(&ttl), "KEEPTTL keeps: {ttl}");
    let _: String = qs(&mut c, "SET e v3").await.unwrap();
    let ttl: i64 = qs(&mut c, "TTL e").await.unwrap();
    assert_eq!(ttl, -1, "plain SET clears the TTL");
    let _: String = qs(&mut c, "SET p v PX 150").await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r: Option<String> = qs(&mut c, "GET p").await.unwrap();
    assert_eq!(r, None, "expired lazily");
    let _: String = qs(&mut c, "SET past v PXAT 1000").await.unwrap();
    let n: i64 = qs(&mut c, "EXISTS past").await.unwrap();
    assert_eq!(n, 0, "an expiry in the past deletes");

    // GET/SET GET on a wrong type.
    let _: i64 = qs(&mut c, "HSET h f v").await.unwrap();
    assert_err(qs::<Value>(&mut c, "GET h").await, "WRONGTYPE");
    assert_err(qs::<Value>(&mut c, "SET h v GET").await, "WRONGTYPE");
    let r: String = qs(&mut c, "SET h v").await.unwrap();
    assert_eq!(r, "OK", "plain SET overwrites any type");
    let t: String = qs(&mut c, "TYPE h").await.unwrap();
    assert_eq!(t, "string");
}

#[tokio::test]
async fn setnx_setex_getset_getdel_getex_mget_mset() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    assert_eq!(qs::<i64>(&mut c, "SETNX a 1").await.unwrap(), 1);
    assert_eq!(qs::<i64>(&mut c, "SETNX a 2").await.unwrap(), 0);
    assert_eq!(qs::<String>(&mut c, "SETEX s 100 v").await.unwrap(), "OK");
    assert!(qs::<i64>(&mut c, "PTTL s").await.unwrap() > 99_000);
    assert_err(
        qs::<Value>(&mut c, "SETEX s 0 v").await,
        "ERR invalid expire time in 'setex' command",
    );
    assert_eq!(
        qs::<String>(&mut c, "PSETEX ps 100000 v").await.unwrap(),
        "OK"
    );
    assert_err(
        qs::<Value>(&mut c, "PSETEX ps -1 v").await,
        "ERR invalid expire time in 'psetex' command",
    );
    assert_eq!(
        qs::<Option<String>>(&mut c, "GETSET a 3")
            .await
            .unwrap()
            .as_deref(),
        Some("1")
    );
    assert_eq!(
        qs::<Option<String>>(&mut c, "GETSET new 3").await.unwrap(),
        None
    );
    assert_eq!(
        qs::<Option<String>>(&mut c, "GETDEL a")
            .await
            .unwrap()
            .as_deref(),
        Some("3")
    );
    assert_eq!(
        qs::<Option<String>>(&mut c, "GETDEL a").await.unwrap(),
        None
    );
    assert_eq!(
        qs::<Option<String>>(&mut c, "GETEX new EX 100")
            .await
            .unwrap()
            .as_deref(),
        Some("3")
    );
    assert!(qs::<i64>(&mut c, "TTL new").await.unwrap() > 90);
    assert_eq!(
        qs::<Option<String>>(&mut c, "GETEX new PERSIST")
            .await
            .unwrap()
            .as_deref(),
        Some("3")
    );
    assert_eq!(qs::<i64>(&mut c, "TTL new").await.unwrap(), -1);
    assert_err(
        qs::<Value>(&mut c, "GETEX new EX 1 PX 1").await,
        "ERR syntax error",
    );
    assert_eq!(qs::<String>(&mut c, "MSET x 1 y 2").await.unwrap(), "OK");
    assert_err(
        qs::<Value>(&mut c, "MSET x 1 y").await,
        "ERR wrong number of arguments for 'mset' command",
    );
    let _: i64 = qs(&mut c, "HSET h f v").await.unwrap();
    let r: Vec<Option<String>> = qs(&mut c, "MGET x nope y h").await.unwrap();
    assert_eq!(r, vec![Some("1".into()), None, Some("2".into()), None]);
    assert_eq!(qs::<i64>(&mut c, "MSETNX x 9 z 9").await.unwrap(), 0);
    assert_eq!(
        qs::<i64>(&mut c, "EXISTS z").await.unwrap(),
        0,
        "MSETNX is all or nothing"
    );
    assert_eq!(qs::<i64>(&mut c, "MSETNX z 9 w 9").await.unwrap(), 1);
}

#[tokio::test]
async fn counters_overflow_and_floats() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    assert_eq!(qs::<i64>(&mut c, "INCR n").await.unwrap(), 1);
    assert_eq!(qs::<i64>(&mut c, "INCRBY n 10").await.unwrap(), 11);
    assert_eq!(qs::<i64>(&mut c, "DECR n").await.unwrap(), 10);
    assert_eq!(qs::<i64>(&mut c, "DECRBY n -5").await.unwrap(), 15);
    let _: String = qs(&mut c, "SET big 9223372036854775807").await.unwrap();
    assert_err(
        qs::<Value>(&mut c, "INCR big").await,
        "ERR increment or decrement would overflow",
    );
    let _: String = qs(&mut c, "SET small -9223372036854775808").await.unwrap();
    assert_err(
        qs::<Value>(&mut c, "DECR small").await,
        "ERR increment or decrement would overflow",
    );
    assert_err(
        qs::<Value>(&mut c, "DECRBY n -9223372036854775808").await,
        "ERR decrement would overflow",
    );
    let _: String = qs(&mut c, "SET s abc").await.unwrap();
    assert_err(
        qs::<Value>(&mut c, "INCR s").await,
        "ERR value is not an integer or out of range",
    );
    let _: String = q(&mut c, &[b"SET", b"sp", b" 1"]).await.unwrap();
    assert_err(
        qs::<Value>(&mut c, "INCR sp").await,
        "ERR value is not an integer or out of range",
    );
    assert_err(
        qs::<Value>(&mut c, "INCRBY n 1.5").await,
        "ERR value is not an integer or out of range",
    );
    let _: String = qs(&mut c, "SET t 5 EX 100").await.unwrap();
    let _: i64 = qs(&mut c, "INCR t").await.unwrap();
    assert!(
        qs::<i64>(&mut c, "TTL t").await.unwrap() > 0,
        "INCR keeps the TTL"
    );
    // Redis docs examples.
    let _: String = qs(&mut c, "SET f 10.50").await.unwrap();
    assert_eq!(
        qs::<String>(&mut c, "INCRBYFLOAT f 0.1").await.unwrap(),
        "10.6"
    );
    assert_eq!(
        qs::<String>(&mut c, "INCRBYFLOAT f -5").await.unwrap(),
        "5.6"
    );
    let _: String = qs(&mut c, "SET f 5.0e3").await.unwrap();
    assert_eq!(
        qs::<String>(&mut c, "INCRBYFLOAT f 2.0e2").await.unwrap(),
        "5200"
    );
    assert_err(
        qs::<Value>(&mut c, "INCRBYFLOAT s 1").await,
        "ERR value is not a valid float",
    );
    assert_err(
        qs::<Value>(&mut c, "INCRBYFLOAT f inf").await,
        "ERR increment would produce NaN or Infinity",
    );
}

#[tokio::test]
async fn append_strlen_ranges() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    assert_eq!(qs::<i64>(&mut c, "APPEND a Hello").await.unwrap(), 5);
    assert_eq!(qs::<i64>(&mut c, "APPEND a World").await.unwrap(), 10);
    assert_eq!(qs::<i64>(&mut c, "STRLEN a").await.unwrap(), 10);
    assert_eq!(qs::<i64>(&mut c, "STRLEN nope").await.unwrap(), 0);
    let _: String = qs(&mut c, "SET s This_is_a_string").await.unwrap();
    assert_eq!(
        qs::<String>(&mut c, "GETRANGE s 0 3").await.unwrap(),
        "This"
    );
    assert_eq!(
        qs::<String>(&mut c, "GETRANGE s -3 -1").await.unwrap(),
        "ing"
    );
    assert_eq!(
        qs::<String>(&mut c, "GETRANGE s 0 -1").await.unwrap(),
        "This_is_a_string"
    );
    assert_eq!(
        qs::<String>(&mut c, "GETRANGE s 10 100").await.unwrap(),
        "string"
    );
    assert_eq!(qs::<String>(&mut c, "GETRANGE s 5 3").await.unwrap(), "");
    assert_eq!(qs::<String>(&mut c, "GETRANGE s -1 -5").await.unwrap(), "");
    assert_eq!(
        qs::<String>(&mut c, "GETRANGE s -100 1").await.unwrap(),
        "Th"
    );
    assert_eq!(
        qs::<String>(&mut c, "GETRANGE nope 0 -1").await.unwrap(),
        ""
    );
    assert_err(
        qs::<Value>(&mut c, "GETRANGE s a 1").await,
        "ERR value is not an integer",
    );
    // SETRANGE pads with zero bytes.
    assert_eq!(qs::<i64>(&mut c, "SETRANGE k 5 xy").await.unwrap(), 7);
    let v: Vec<u8> = qs(&mut c, "GET k").await.unwrap();
    assert_eq!(v, b"\0\0\0\0\0xy");
    let _: String = qs(&mut c, "SET key1 Hello_World").await.unwrap();
    assert_eq!(
        qs::<i64>(&mut c, "SETRANGE key1 6 Redis").await.unwrap(),
        11
    );
    assert_eq!(
        qs::<String>(&mut c, "GET key1").await.unwrap(),
        "Hello_Redis"
    );
    assert_err(
        qs::<Value>(&mut c, "SETRANGE key1 -1 x").await,
        "ERR offset is out of range",
    );
    assert_err(
        qs::<Value>(&mut c, "SETRANGE key1 536870912 x").await,
        "ERR string exceeds maximum allowed size",
    );
    assert_eq!(
        q::<i64>(&mut c, &[b"SETRANGE", b"none", b"0", b""])
            .await
            .unwrap(),
        0
    );
    assert_eq!(qs::<i64>(&mut c, "EXISTS none").await.unwrap(), 0);
}

#[tokio::test]
async fn bit_operations() {
    let node = KvNode::start_rw().await;
    let mut c = node.conn().await;
    assert_eq!(qs::<i64>(&mut c, "SETBIT b 7 1").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "SETBIT b 7 0").await.unwrap(), 1);
    assert_eq!(qs::<i64>(&mut c, "GETBIT b 7").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "GETBIT b 100").await.unwrap(), 0);
    assert_err(
        qs::<Value>(&mut c, "SETBIT b 1 2").await,
        "ERR bit is not an integer or out of range",
    );
    assert_err(
        qs::<Value>(&mut c, "SETBIT b -1 1").await,
        "ERR bit offset is not an integer or out of range",
    );
    assert_err(
        qs::<Value>(&mut c, "SETBIT b 4294967296 1").await,
        "ERR bit offset is not an integer or out of range",
    );
    let _: String = qs(&mut c, "SET mykey foobar").await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "BITCOUNT mykey").await.unwrap(), 26);
    assert_eq!(qs::<i64>(&mut c, "BITCOUNT mykey 0 0").await.unwrap(), 4);
    assert_eq!(qs::<i64>(&mut c, "BITCOUNT mykey 1 1").await.unwrap(), 6);
    assert_eq!(
        qs::<i64>(&mut c, "BITCOUNT mykey 1 1 BYTE").await.unwrap(),
        6
    );
    assert_eq!(
        qs::<i64>(&mut c, "BITCOUNT mykey 5 30 BIT").await.unwrap(),
        17
    );
    assert_eq!(qs::<i64>(&mut c, "BITCOUNT nope").await.unwrap(), 0);
    assert_err(
        qs::<Value>(&mut c, "BITCOUNT mykey 1").await,
        "ERR syntax error",
    );
    let _: String = q(&mut c, &[b"SET", b"p", b"\xff\xf0\x00"]).await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "BITPOS p 0").await.unwrap(), 12);
    let _: String = q(&mut c, &[b"SET", b"p", b"\x00\xff\xf0"]).await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "BITPOS p 1 0").await.unwrap(), 8);
    assert_eq!(qs::<i64>(&mut c, "BITPOS p 1 2").await.unwrap(), 16);
    assert_eq!(qs::<i64>(&mut c, "BITPOS p 1 2 -1 BYTE").await.unwrap(), 16);
    assert_eq!(qs::<i64>(&mut c, "BITPOS p 1 7 15 BIT").await.unwrap(), 8);
    let _: String = q(&mut c, &[b"SET", b"p", b"\x00\x00\x00"]).await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "BITPOS p 1").await.unwrap(), -1);
    let _: String = q(&mut c, &[b"SET", b"ones", b"\xff\xff"]).await.unwrap();
    assert_eq!(qs::<i64>(&mut c, "BITPOS ones 0").await.unwrap(), 16);
    assert_eq!(qs::<i64>(&mut c, "BITPOS ones 0 0 -1").await.unwrap(), -1);
    assert_eq!(qs::<i64>(&mut c, "BITPOS nope 0").await.unwrap(), 0);
    assert_eq!(qs::<i64>(&mut c, "BITPOS nope 1").await.unwrap(), -1);
}
