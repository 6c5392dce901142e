//! A bare data-path connection, for tests that speak the wire protocol
//! directly (bad input, replica-by-replica comparisons).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use pikafs_proto::{Frame, FrameCodec, Request, Response};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// One connection to a chunkserver, one request at a time.
pub struct RawConn {
    framed: Framed<TcpStream, FrameCodec>,
    next_id: u64,
}

impl RawConn {
    pub async fn connect(addr: &str) -> anyhow::Result<RawConn> {
        let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
        s.set_nodelay(true)?;
        Ok(RawConn {
            framed: Framed::new(s, FrameCodec),
            next_id: 1,
        })
    }

    /// Sends `req` and waits (5 s) for its response.
    pub async fn call(&mut self, req: Request) -> anyhow::Result<Response> {
        let id = self.next_id;
        self.next_id += 1;
        self.framed.send(req.to_frame(id)).await?;
        loop {
            let f = tokio::time::timeout(Duration::from_secs(5), self.framed.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("connection closed"))??;
            if f.id == id {
                return Ok(Response::from_frame(f)?);
            }
        }
    }

    /// Sends raw bytes, bypassing the codec.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.framed.get_mut().write_all(bytes).await?;
        Ok(())
    }

    /// Next frame, or `None` when the server closed the connection.
    pub async fn next_frame(&mut self) -> anyhow::Result<Option<Frame>> {
        match tokio::time::timeout(Duration::from_secs(5), self.framed.next()).await? {
            None => Ok(None),
            Some(Ok(f)) => Ok(Some(f)),
            Some(Err(_)) => Ok(None),
        }
    }
}
