//! Bad input gets a clear error and the server keeps serving others.

use pikafs_proto::{ErrorCode, Request, Response, CHUNK_SIZE};
use pikafs_testkit::{Cluster, ClusterOptions, RawConn};
use pikafs_volume::{OpenOptions, VolumeClient, VolumeError};

use crate::replication::open;

async fn ping_ok(addr: &str) {
    let mut c = RawConn::connect(addr).await.unwrap();
    assert_eq!(c.call(Request::Ping).await.unwrap(), Response::Ok);
}

fn error_code(r: &Response) -> Option<ErrorCode> {
    match r {
        Response::Error { code, .. } => Some(*code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_frames_close_only_that_connection() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let addr = cluster.server_addr(0);
    // A client that stays connected through all of it.
    let mut bystander = RawConn::connect(&addr).await.unwrap();

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("huge length prefix", u32::MAX.to_le_bytes().to_vec()),
        ("length below header", {
            let mut v = 3u32.to_le_bytes().to_vec();
            v.extend_from_slice(&[1, 2, 3]);
            v
        }),
        ("unknown opcode", {
            let mut v = 9u32.to_le_bytes().to_vec();
            v.push(0x6B);
            v.extend_from_slice(&7u64.to_le_bytes());
            v
        }),
        ("truncated read body", {
            let mut v = 13u32.to_le_bytes().to_vec();
            v.push(0x03);
            v.extend_from_slice(&7u64.to_le_bytes());
            v.extend_from_slice(&[1, 2, 3, 4]);
            v
        }),
        (
            "writev whose extent lengths lie (past the io limit, past the body)",
            {
                let mut body = vec![0x05];
                body.extend_from_slice(&[0u8; 32]); // copyset, volume, epoch, chunk
                body.extend_from_slice(&2u32.to_le_bytes());
                for _ in 0..2 {
                    body.extend_from_slice(&0u32.to_le_bytes());
                    body.extend_from_slice(&u32::MAX.to_le_bytes());
                }
                let mut v = (body.len() as u32 + 8).to_le_bytes().to_vec();
                v.push(body[0]);
                v.extend_from_slice(&7u64.to_le_bytes());
                v.extend_from_slice(&body[1..]);
                v
            },
        ),
    ];
    for (what, bytes) in cases {
        let mut c = RawConn::connect(&addr).await.unwrap();
        c.send_raw(&bytes).await.unwrap();
        // Either an error frame then close, or a close: never a hang and
        // never a success.
        let mut saw_close = false;
        for _ in 0..3 {
            match c.next_frame().await {
                Ok(None) => {
                    saw_close = true;
                    break;
                }
                Ok(Some(f)) => {
                    let r = Response::from_frame(f).unwrap();
                    assert!(error_code(&r).is_some(), "{what}: got {r:?}");
                }
                Err(e) => panic!("{what}: no answer and no close: {e}"),
            }
        }
        assert!(
            saw_close || what == "unknown opcode",
            "{what}: connection left open"
        );
        assert_eq!(
            bystander.call(Request::Ping).await.unwrap(),
            Response::Ok,
            "{what}"
        );
        ping_ok(&addr).await;
    }

    // Well-formed requests that ask for the impossible.
    let r = bystander
        .call(Request::Read {
            copyset: 987_654,
            volume: 1,
            chunk: 0,
            offset: 0,
            len: 10,
        })
        .await
        .unwrap();
    assert_eq!(error_code(&r), Some(ErrorCode::NoSuchCopyset), "{r:?}");
    let oversize = Request::Read {
        copyset: 1,
        volume: 1,
        chunk: 0,
        offset: 0,
        len: 64 << 20,
    };
    let r = bystander.call(oversize).await;
    // An oversize length is a protocol violation: an error frame or a close.
    if let Ok(r) = r {
        assert!(error_code(&r).is_some(), "{r:?}");
    }
    ping_ok(&addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_level_errors_and_unaligned_io() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    cluster.create_volume("v", "128MiB").await.unwrap();
    let client = open(&cluster, "v").await;
    let size = client.size();
    assert_eq!(size, 128 << 20);

    // Out of range.
    assert!(matches!(
        client.read(size - 10, 11).await,
        Err(VolumeError::OutOfRange { .. })
    ));
    assert!(matches!(
        client.write(size, b"x").await,
        Err(VolumeError::OutOfRange { .. })
    ));
    assert!(matches!(
        client.read(u64::MAX - 5, 10).await,
        Err(VolumeError::OutOfRange { .. })
    ));
    // Zero length.
    assert!(client.read(100, 0).await.unwrap().is_empty());
    client.write(100, b"").await.unwrap();
    // Unaligned, crossing sectors and the chunk boundary.
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let off = CHUNK_SIZE - 4097;
    client.write(off, &data).await.unwrap();
    assert_eq!(&client.read(off, data.len()).await.unwrap()[..], &data[..]);
    // Neighbours of a partial write keep their bytes (read-modify-write).
    client.write(off + 1, b"AB").await.unwrap();
    let got = client.read(off, 4).await.unwrap();
    assert_eq!(&got[..], &[data[0], b'A', b'B', data[3]]);
    // Never-written space reads as zeros.
    assert!(client
        .read(5 << 20, 8192)
        .await
        .unwrap()
        .iter()
        .all(|&b| b == 0));
    // Unknown volume.
    let err = VolumeClient::open(&cluster.ctrl_url(), "nope", OpenOptions::default())
        .await
        .expect_err("opening an unknown volume fails");
    assert!(matches!(err, VolumeError::NotFound { .. }), "{err:?}");

    // A write past the end of a chunk, straight to every member.
    let st = cluster.status().await.unwrap();
    let vol = st.volumes.iter().find(|v| v.name == "v").unwrap();
    let route = &vol.copysets[0];
    let mut answers = Vec::new();
    for m in &route.members {
        let mut c = RawConn::connect(&m.addr).await.unwrap();
        let r = c
            .call(Request::Write {
                copyset: route.copyset_id,
                volume: vol.volume_id,
                epoch: vol.epoch,
                chunk: 0,
                offset: (CHUNK_SIZE - 10) as u32,
                data: bytes::Bytes::from_static(&[7u8; 100]),
            })
            .await
            .unwrap();
        answers.push(error_code(&r));
    }
    assert!(
        answers.contains(&Some(ErrorCode::OutOfRange)),
        "no member answered OutOfRange: {answers:?}"
    );
    assert!(answers
        .iter()
        .all(|a| matches!(a, Some(ErrorCode::OutOfRange | ErrorCode::NotLeader))));
}
