//! Socket output shared by a writer task and other threads.
//!
//! Any thread (in practice the raft loop) may write an encoded frame
//! straight into the socket with a non-blocking `try_write` while the
//! socket is idle: nothing queued and no write in progress. That saves
//! waking the data-path runtime for every raft message and every write
//! answer. Whatever cannot be written at once (socket buffer full, a
//! partial write, not connected) is queued for the writer task, which owns
//! the socket until the queue is empty again, so bytes of different frames
//! never interleave.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Buf, Bytes};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct State {
    /// The connected socket, if any.
    stream: Option<Arc<TcpStream>>,
    /// True while the writer task owns the socket (bytes queued or being
    /// written) or there is no socket: direct writes only when false.
    busy: bool,
}

/// The sending side; cheap to share behind an `Arc`.
pub struct SocketOut {
    state: Mutex<State>,
    tx: mpsc::Sender<Bytes>,
}

impl SocketOut {
    /// A detached output with room for `queue` queued buffers; the
    /// receiver goes to the writer task.
    pub fn new(queue: usize) -> (Arc<SocketOut>, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(queue);
        let out = SocketOut {
            state: Mutex::new(State {
                stream: None,
                busy: true,
            }),
            tx,
        };
        (Arc::new(out), rx)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Two plain fields, consistent at every point: a panicked holder
        // leaves nothing half-done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `stream` the socket; direct writes start once nothing is
    /// queued.
    pub fn attach(&self, stream: Arc<TcpStream>, rx: &mpsc::Receiver<Bytes>) {
        let mut st = self.lock();
        st.stream = Some(stream);
        st.busy = !rx.is_empty();
    }

    /// Stops direct writes (the connection is gone).
    pub fn detach(&self) {
        let mut st = self.lock();
        st.stream = None;
        st.busy = true;
    }

    /// True once the writer task is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Writes `buf` now if the socket is idle, else queues it. False if it
    /// was dropped (queue full or writer gone).
    pub fn send(&self, mut buf: Bytes) -> bool {
        let mut st = self.lock();
        if !st.busy {
            if let Some(stream) = st.stream.clone() {
                while !buf.is_empty() {
                    match stream.try_write(&buf) {
                        Ok(0) => break,
                        Ok(n) => buf.advance(n),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // WouldBlock: the writer waits for room. Any other
                        // error: the writer's next write fails too and it
                        // gives up the connection.
                        Err(_) => break,
                    }
                }
                if buf.is_empty() {
                    return true;
                }
            }
        }
        st.busy = true;
        self.tx.try_send(buf).is_ok()
    }

    /// The writer task's loop: writes queued buffers until `cancel` (then
    /// what is queued is still written) or a write error.
    ///
    /// # Errors
    /// The write error; the connection is unusable.
    pub async fn write_queued(
        &self,
        stream: &TcpStream,
        rx: &mut mpsc::Receiver<Bytes>,
        cancel: &CancellationToken,
    ) -> io::Result<()> {
        loop {
            let b = tokio::select! {
                _ = cancel.cancelled() => {
                    self.detach();
                    while let Ok(b) = rx.try_recv() {
                        write_all(stream, b).await?;
                    }
                    return Ok(());
                }
                b = rx.recv() => b,
            };
            let Some(b) = b else { return Ok(()) };
            write_all(stream, b).await?;
            while let Ok(b) = rx.try_recv() {
                write_all(stream, b).await?;
            }
            // Under the lock: senders queue (and mark busy) under it too, so
            // a sender either sees busy or finds the queue empty and us idle.
            let mut st = self.lock();
            if rx.is_empty() {
                st.busy = false;
            }
        }
    }
}

/// Writes all of `buf`, waiting for room as needed.
async fn write_all(stream: &TcpStream, mut buf: Bytes) -> io::Result<()> {
    while !buf.is_empty() {
        stream.writable().await?;
        match stream.try_write(&buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf.advance(n),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// Direct writes, queued writes behind a full socket buffer and the
    /// writer's drain all arrive complete and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bytes_arrive_in_order_direct_or_queued() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = Arc::new(TcpStream::connect(addr).await.unwrap());
        let (mut peer, _) = listener.accept().await.unwrap();
        let (out, mut rx) = SocketOut::new(1 << 16);
        out.attach(stream.clone(), &rx);
        let cancel = CancellationToken::new();
        let writer = {
            let out = out.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move { out.write_queued(&stream, &mut rx, &cancel).await })
        };
        // From a plain thread, as the raft loop does: 64 MiB in 64 KiB
        // pieces overflows the socket buffers while nobody reads.
        let sender = {
            let out = out.clone();
            std::thread::spawn(move || {
                for i in 0..1024u32 {
                    let piece: Vec<u8> = (0..65536u32)
                        .map(|j| (i.wrapping_mul(31).wrapping_add(j) % 251) as u8)
                        .collect();
                    assert!(out.send(Bytes::from(piece)));
                }
            })
        };
        let mut got = vec![0u8; 1024 * 65536];
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            peer.read_exact(&mut got),
        )
        .await
        .unwrap()
        .unwrap();
        sender.join().unwrap();
        for (i, piece) in got.chunks(65536).enumerate() {
            for (j, b) in piece.iter().enumerate() {
                let want = ((i as u32).wrapping_mul(31).wrapping_add(j as u32) % 251) as u8;
                assert_eq!(*b, want, "piece {i} byte {j}");
            }
        }
        cancel.cancel();
        writer.await.unwrap().unwrap();
        assert!(out.is_closed());
    }
}
