//! The volume client: routing cache, IO splitting and the retry policy.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use pikafs_proto::ctrlpb::ctrl_client::CtrlClient;
use pikafs_proto::ctrlpb::{VolumeInfo, VolumeName};
use pikafs_proto::msg::MAX_WRITE_EXTENTS;
use pikafs_proto::{
    CopysetId, Epoch, ErrorCode, Request, Response, ServerId, VolumeId, CHUNK_SIZE, MAX_IO_LEN,
};
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, debug_span, Instrument};

use crate::connection::{ConnError, Pool};
use crate::error::VolumeError;
use crate::layout::{split, Piece};

/// First pause before retrying a busy or leaderless copyset.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
/// Longest pause between retries.
const BACKOFF_MAX: Duration = Duration::from_millis(200);
/// Retries refresh the routing table at most this often.
const RETRY_REFRESH_INTERVAL: Duration = Duration::from_millis(200);
/// Bound on dialling ctrl, so a dead ctrl does not stall IO retries long.
const CTRL_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How to open a volume.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Epoch carried by writes; `None` takes ctrl's current epoch at open.
    pub epoch: Option<Epoch>,
    /// Longest wait for one response from one chunkserver.
    pub request_timeout: Duration,
    /// Longest time one request is retried before `Unavailable`.
    pub retry_deadline: Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            epoch: None,
            request_timeout: Duration::from_secs(5),
            retry_deadline: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
struct Route {
    copyset: CopysetId,
    /// (server id, data-path address), in ctrl's order.
    members: Vec<(ServerId, String)>,
    /// Last known leader; 0 = unknown.
    leader: ServerId,
}

#[derive(Debug)]
struct Routing {
    size: u64,
    routes: Vec<Route>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    volume: VolumeId,
    epoch: Epoch,
    opts: OpenOptions,
    ctrl: CtrlClient<Channel>,
    routing: RwLock<Routing>,
    pool: Pool,
    /// When the last refresh triggered by a retry finished; serialises
    /// those refreshes so a burst of failing pieces asks ctrl once.
    retry_refresh: tokio::sync::Mutex<Option<Instant>>,
}

/// A handle on one volume. Cheap to clone; every clone shares the routing
/// cache and the connections, and many requests may be in flight at once
/// from many tasks.
#[derive(Debug, Clone)]
pub struct VolumeClient {
    inner: Arc<Inner>,
}

/// Which copyset a request goes to.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// The copyset holding this chunk (re-evaluated after a refresh).
    Chunk(u64),
    /// The copyset at this index of the routing table.
    Slot(usize),
}

fn ctrl_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

fn routing_from(info: &VolumeInfo) -> Result<Routing, VolumeError> {
    let bad = |message: String| VolumeError::BadRoute {
        volume: info.volume_id,
        message,
    };
    if info.copysets.is_empty() {
        return Err(bad("no copysets".into()));
    }
    if info.chunk_size != 0 && info.chunk_size != CHUNK_SIZE {
        return Err(bad(format!(
            "chunk size {} differs from this client's {CHUNK_SIZE}",
            info.chunk_size
        )));
    }
    let mut routes = Vec::with_capacity(info.copysets.len());
    for cs in &info.copysets {
        if cs.members.is_empty() {
            return Err(bad(format!("copyset {} has no members", cs.copyset_id)));
        }
        routes.push(Route {
            copyset: cs.copyset_id,
            members: cs
                .members
                .iter()
                .map(|p| (p.server_id, p.addr.clone()))
                .collect(),
            leader: cs.leader_id,
        });
    }
    Ok(Routing {
        size: info.size_bytes,
        routes,
    })
}

impl VolumeClient {
    /// Looks the volume up at ctrl and caches its routing table. ctrl is
    /// needed here; afterwards IO goes on without it.
    ///
    /// # Errors
    /// [`VolumeError::NotFound`], [`VolumeError::Ctrl`] when ctrl is
    /// unreachable, [`VolumeError::BadRoute`] for an unusable table.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is shared until it returns.
    pub async fn open(
        ctrl_endpoint: &str,
        name: &str,
        opts: OpenOptions,
    ) -> Result<VolumeClient, VolumeError> {
        let channel = Endpoint::from_shared(ctrl_url(ctrl_endpoint))
            .map_err(|e| VolumeError::Ctrl(format!("bad endpoint {ctrl_endpoint:?}: {e}")))?
            .connect_timeout(CTRL_CONNECT_TIMEOUT)
            .timeout(opts.request_timeout)
            .connect_lazy();
        let mut ctrl = CtrlClient::new(channel);
        let info = ctrl
            .get_volume(VolumeName {
                name: name.to_string(),
            })
            .await
            .map_err(|s| VolumeError::from_status(name, s))?
            .into_inner();
        VolumeClient::from_info(ctrl, &info, opts)
    }

    fn from_info(
        ctrl: CtrlClient<Channel>,
        info: &VolumeInfo,
        opts: OpenOptions,
    ) -> Result<VolumeClient, VolumeError> {
        let routing = routing_from(info)?;
        Ok(VolumeClient {
            inner: Arc::new(Inner {
                name: info.name.clone(),
                volume: info.volume_id,
                epoch: opts.epoch.unwrap_or(info.epoch),
                opts,
                ctrl,
                routing: RwLock::new(routing),
                pool: Pool::default(),
                retry_refresh: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The volume id ctrl assigned.
    pub fn volume_id(&self) -> VolumeId {
        self.inner.volume
    }

    /// The volume size as of the last open or refresh.
    pub fn size(&self) -> u64 {
        self.inner
            .routing
            .read()
            .expect("routing lock poisoned")
            .size
    }

    /// The epoch this client writes with.
    pub fn epoch(&self) -> Epoch {
        self.inner.epoch
    }

    /// The volume name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Re-reads the volume from ctrl: its size after a grow, and routes.
    ///
    /// # Errors
    /// [`VolumeError::Ctrl`] / [`VolumeError::NotFound`] from ctrl, or
    /// [`VolumeError::BadRoute`]; the cached table is kept on error.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn refresh(&self) -> Result<(), VolumeError> {
        let info = self
            .inner
            .ctrl
            .clone()
            .get_volume(VolumeName {
                name: self.inner.name.clone(),
            })
            .await
            .map_err(|s| VolumeError::from_status(&self.inner.name, s))?
            .into_inner();
        if info.volume_id != self.inner.volume {
            // Deleted and recreated under the same name: a different volume.
            return Err(VolumeError::NotFound {
                name: self.inner.name.clone(),
            });
        }
        let mut fresh = routing_from(&info)?;
        let mut routing = self.inner.routing.write().expect("routing lock poisoned");
        // Keep leader hints learned from chunkservers when ctrl has none.
        for r in &mut fresh.routes {
            if r.leader == 0 {
                if let Some(old) = routing.routes.iter().find(|o| o.copyset == r.copyset) {
                    r.leader = old.leader;
                }
            }
        }
        *routing = fresh;
        Ok(())
    }

    /// A refresh on behalf of a retry: skipped when another finished
    /// moments ago, and its errors ignored (ctrl may be down; IO goes on
    /// with the cached table).
    async fn refresh_for_retry(&self) {
        let mut last = self.inner.retry_refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < RETRY_REFRESH_INTERVAL) {
            return;
        }
        if let Err(e) = self.refresh().await {
            debug!(volume = self.inner.volume, error = %e, "refresh during retry failed");
        }
        *last = Some(Instant::now());
    }

    async fn check_range(&self, offset: u64, len: usize) -> Result<(), VolumeError> {
        let fits = |size: u64| {
            offset
                .checked_add(len as u64)
                .is_some_and(|end| end <= size)
        };
        if fits(self.size()) {
            return Ok(());
        }
        // The volume may have grown since we looked.
        let _ = self.refresh().await;
        let size = self.size();
        if fits(size) {
            Ok(())
        } else {
            Err(VolumeError::OutOfRange {
                offset,
                len: len as u64,
                size,
            })
        }
    }

    /// Reads `len` bytes at `offset`. Never-written bytes read as zeros.
    ///
    /// # Errors
    /// [`VolumeError::OutOfRange`], [`VolumeError::Corrupt`],
    /// [`VolumeError::Unavailable`] after the retry deadline, or another
    /// final error.
    ///
    /// # Cancel safety
    /// Cancel safe: a read has no effect.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Bytes, VolumeError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        self.check_range(offset, len).await?;
        let pieces = split(offset, len);
        let span = debug_span!("volume_read", volume = self.inner.volume, offset, len);
        let parts = futures::future::try_join_all(pieces.iter().map(|p| self.read_piece(*p)))
            .instrument(span)
            .await?;
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().expect("one part"));
        }
        let mut out = BytesMut::with_capacity(len);
        for p in parts {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }

    async fn read_piece(&self, p: Piece) -> Result<Bytes, VolumeError> {
        let volume = self.inner.volume;
        let (copyset, resp) = self
            .send(Target::Chunk(p.chunk), |copyset| Request::Read {
                copyset,
                volume,
                chunk: p.chunk,
                offset: p.chunk_offset,
                len: p.len as u32,
            })
            .await?;
        match resp {
            Response::Data(d) if d.len() == p.len => Ok(d),
            Response::Data(d) => Err(VolumeError::Protocol {
                copyset,
                message: format!("asked for {} bytes, got {}", p.len, d.len()),
            }),
            other => Err(VolumeError::Protocol {
                copyset,
                message: format!("unexpected answer to a read: {other:?}"),
            }),
        }
    }

    /// Writes `data` at `offset` with this client's epoch. On success every
    /// byte is on a majority of each copyset's replicas and fsync'd.
    ///
    /// # Errors
    /// [`VolumeError::StaleEpoch`] when a newer writer fenced us (stop
    /// writing), [`VolumeError::OutOfRange`], [`VolumeError::Unavailable`],
    /// or another final error. On error some pieces may have been written.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future may leave part of the range
    /// written.
    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        if data.is_empty() {
            return Ok(());
        }
        self.check_range(offset, data.len()).await?;
        let pieces = split(offset, data.len());
        let span = debug_span!(
            "volume_write",
            volume = self.inner.volume,
            offset,
            len = data.len()
        );
        // One copy into a shared buffer; pieces are zero-copy slices of it.
        let buf = Bytes::copy_from_slice(data);
        futures::future::try_join_all(
            pieces
                .iter()
                .map(|p| self.write_piece(*p, buf.slice(p.buf_offset..p.buf_offset + p.len))),
        )
        .instrument(span)
        .await?;
        Ok(())
    }

    /// Writes several ranges, each with [`VolumeClient::write`]'s guarantee
    /// once this returns `Ok`. The pieces bound for one chunkserver (by the
    /// current leader hints) leave in one burst, so that server proposes
    /// them in one raft round; a piece whose first attempt does not succeed
    /// is then retried alone, through [`VolumeClient::write`]'s policy.
    ///
    /// # Errors
    /// As [`VolumeClient::write`]; on error some ranges may have been
    /// written.
    ///
    /// # Cancel safety
    /// Not cancel safe, as [`VolumeClient::write`].
    pub async fn write_many(&self, writes: &[(u64, &[u8])]) -> Result<(), VolumeError> {
        let volume = self.inner.volume;
        let mut pieces: Vec<(Piece, Bytes)> = Vec::new();
        for &(offset, data) in writes {
            if data.is_empty() {
                continue;
            }
            self.check_range(offset, data.len()).await?;
            let buf = Bytes::copy_from_slice(data);
            for p in split(offset, data.len()) {
                pieces.push((p, buf.slice(p.buf_offset..p.buf_offset + p.len)));
            }
        }
        // The pieces of one chunk go as one `WriteV` (one raft entry, one
        // answer: the fs's journal header and ring copy share chunk 0),
        // within the extent and size limits of one request.
        let mut by_chunk: Vec<(u64, Vec<usize>, usize)> = Vec::new();
        for (i, (p, _)) in pieces.iter().enumerate() {
            match by_chunk.iter_mut().find(|(chunk, idx, bytes)| {
                *chunk == p.chunk && idx.len() < MAX_WRITE_EXTENTS && bytes + p.len <= MAX_IO_LEN
            }) {
                Some((_, idx, bytes)) => {
                    idx.push(i);
                    *bytes += p.len;
                }
                None => by_chunk.push((p.chunk, vec![i], p.len)),
            }
        }
        // Then by the member each request would go to first: (address,
        // (pieces, copyset) per request, requests).
        type Burst = (String, Vec<(Vec<usize>, CopysetId)>, Vec<Request>);
        let mut bursts: Vec<Burst> = Vec::new();
        for (chunk, idx, _) in by_chunk {
            let (copyset, _, addr, _) = self.pick(Target::Chunk(chunk), None);
            let req = match idx.as_slice() {
                [i] => self.write_request(copyset, &pieces[*i].0, pieces[*i].1.clone()),
                _ => Request::WriteV {
                    copyset,
                    volume,
                    epoch: self.inner.epoch,
                    chunk,
                    extents: idx
                        .iter()
                        .map(|&i| (pieces[i].0.chunk_offset, pieces[i].1.clone()))
                        .collect(),
                },
            };
            match bursts.iter_mut().find(|b| b.0 == addr) {
                Some(b) => {
                    b.1.push((idx, copyset));
                    b.2.push(req);
                }
                None => bursts.push((addr, vec![(idx, copyset)], vec![req])),
            }
        }
        let timeout = self.inner.opts.request_timeout;
        let firsts = futures::future::join_all(bursts.iter().map(|(addr, idx, reqs)| async move {
            let results = match self.inner.pool.get(addr, timeout).await {
                Ok(conn) => conn.call_many(reqs, timeout).await,
                Err(e) => reqs.iter().map(|_| Err(e.clone())).collect(),
            };
            idx.iter().cloned().zip(results).collect::<Vec<_>>()
        }))
        .instrument(debug_span!("volume_write_many", volume, n = pieces.len()))
        .await;
        // Anything but a plain Ok (an error answer, a lost connection) goes
        // through the full retry policy, a `WriteV` piece by piece: writes
        // are idempotent, and the caller was promised durability, not
        // atomicity.
        let mut again = Vec::new();
        for ((idx, copyset), r) in firsts.into_iter().flatten() {
            match r {
                Ok(Response::Ok) => {}
                Ok(Response::Error {
                    code: ErrorCode::NotLeader,
                    aux,
                    ..
                }) => {
                    if aux != 0 && self.is_member(copyset, aux) {
                        self.set_leader(copyset, aux);
                    }
                    again.extend(idx);
                }
                _ => again.extend(idx),
            }
        }
        futures::future::try_join_all(
            again
                .into_iter()
                .map(|i| self.write_piece(pieces[i].0, pieces[i].1.clone())),
        )
        .await?;
        Ok(())
    }

    async fn write_piece(&self, p: Piece, data: Bytes) -> Result<(), VolumeError> {
        let (copyset, resp) = self
            .send(Target::Chunk(p.chunk), |copyset| {
                self.write_request(copyset, &p, data.clone())
            })
            .await?;
        expect_ok(copyset, resp)
    }

    /// The write of `data` at piece `p` under this client's epoch.
    fn write_request(&self, copyset: CopysetId, p: &Piece, data: Bytes) -> Request {
        Request::Write {
            copyset,
            volume: self.inner.volume,
            epoch: self.inner.epoch,
            chunk: p.chunk,
            offset: p.chunk_offset,
            data,
        }
    }

    /// Sends `Fence { epoch: self.epoch() }` to every copyset of the volume,
    /// so writers with older epochs are rejected from then on.
    ///
    /// # Errors
    /// [`VolumeError::StaleEpoch`] if a newer epoch is already known,
    /// [`VolumeError::Unavailable`], or another final error.
    ///
    /// # Cancel safety
    /// Cancel safe in effect: fencing is idempotent, so repeat it.
    pub async fn fence(&self) -> Result<(), VolumeError> {
        let n = self
            .inner
            .routing
            .read()
            .expect("routing lock poisoned")
            .routes
            .len();
        let (volume, epoch) = (self.inner.volume, self.inner.epoch);
        futures::future::try_join_all((0..n).map(|slot| async move {
            let (copyset, resp) = self
                .send(Target::Slot(slot), |copyset| Request::Fence {
                    copyset,
                    volume,
                    epoch,
                })
                .await?;
            expect_ok(copyset, resp)
        }))
        .instrument(debug_span!("volume_fence", volume, epoch))
        .await?;
        Ok(())
    }

    /// Picks the copyset for `target` and the member to try: `want` if it
    /// is a member, else the leader hint, else the first member.
    fn pick(&self, target: Target, want: Option<ServerId>) -> (CopysetId, ServerId, String, usize) {
        let routing = self.inner.routing.read().expect("routing lock poisoned");
        let n = routing.routes.len();
        let route = match target {
            Target::Chunk(c) => &routing.routes[(c % n as u64) as usize],
            Target::Slot(s) => &routing.routes[s % n],
        };
        let by_id = |id: ServerId| route.members.iter().find(|m| m.0 == id && id != 0);
        let m = want
            .and_then(by_id)
            .or_else(|| by_id(route.leader))
            .unwrap_or(&route.members[0]);
        (route.copyset, m.0, m.1.clone(), route.members.len())
    }

    /// The member after `server` in `copyset`'s member list.
    fn next_member(&self, copyset: CopysetId, server: ServerId) -> Option<ServerId> {
        let routing = self.inner.routing.read().expect("routing lock poisoned");
        let route = routing.routes.iter().find(|r| r.copyset == copyset)?;
        let i = route
            .members
            .iter()
            .position(|m| m.0 == server)
            .unwrap_or(0);
        Some(route.members[(i + 1) % route.members.len()].0)
    }

    fn is_member(&self, copyset: CopysetId, server: ServerId) -> bool {
        let routing = self.inner.routing.read().expect("routing lock poisoned");
        routing
            .routes
            .iter()
            .any(|r| r.copyset == copyset && r.members.iter().any(|m| m.0 == server))
    }

    fn set_leader(&self, copyset: CopysetId, leader: ServerId) {
        let mut routing = self.inner.routing.write().expect("routing lock poisoned");
        if let Some(r) = routing.routes.iter_mut().find(|r| r.copyset == copyset) {
            r.leader = leader;
        }
    }

    /// Sends one request built by `make` (given the copyset id) and retries
    /// per the policy in `docs/volume-client.md` until it gets a final
    /// answer or the retry deadline passes. Returns the copyset that
    /// answered and its non-error response.
    async fn send(
        &self,
        target: Target,
        make: impl Fn(CopysetId) -> Request,
    ) -> Result<(CopysetId, Response), VolumeError> {
        let opts = &self.inner.opts;
        let start = Instant::now();
        let mut backoff = BACKOFF_MIN;
        let mut want: Option<ServerId> = None;
        let mut last_error = String::from("no attempt made");
        let mut last_copyset = 0;
        let mut failures_in_row = 0usize;
        loop {
            let waited = start.elapsed();
            if waited >= opts.retry_deadline {
                return Err(VolumeError::Unavailable {
                    copyset: last_copyset,
                    last_error,
                    waited,
                });
            }
            let remaining = opts.retry_deadline - waited;
            let (copyset, server, addr, members) = self.pick(target, want);
            last_copyset = copyset;
            let req = make(copyset);
            let timeout = opts.request_timeout.min(remaining);
            let result = match self.inner.pool.get(&addr, timeout).await {
                Ok(conn) => conn.call(&req, timeout).await,
                Err(e) => Err(e),
            };
            // What to do next: None = answer is final.
            let pause = match result {
                Ok(Response::Error { code, aux, message }) => {
                    debug!(copyset, server, %code, aux, message, "chunkserver error");
                    last_error = format!("server {server} ({addr}): {code}: {message}");
                    match code {
                        ErrorCode::NotLeader => {
                            if aux != 0 && aux != server && self.is_member(copyset, aux) {
                                self.set_leader(copyset, aux);
                                want = Some(aux);
                                failures_in_row += 1;
                                // A hint is worth following at once, but
                                // hints that bounce between stale replicas
                                // must not spin.
                                failures_in_row > members
                            } else {
                                if aux != 0 && aux != server {
                                    // A leader we do not know: membership
                                    // changed under us.
                                    self.refresh_for_retry().await;
                                }
                                self.set_leader(copyset, 0);
                                want = self.next_member(copyset, server);
                                true
                            }
                        }
                        ErrorCode::StaleEpoch => {
                            return Err(VolumeError::StaleEpoch {
                                volume: self.inner.volume,
                                mine: self.inner.epoch,
                                newest: aux,
                            })
                        }
                        ErrorCode::Corrupt => {
                            return Err(VolumeError::Corrupt { copyset, message })
                        }
                        ErrorCode::NoSuchCopyset => {
                            self.refresh_for_retry().await;
                            want = self.next_member(copyset, server);
                            true
                        }
                        ErrorCode::ShuttingDown => {
                            want = self.next_member(copyset, server);
                            true
                        }
                        ErrorCode::Busy | ErrorCode::Timeout => true,
                        _ => return Err(VolumeError::Server { code, message }),
                    }
                }
                Ok(resp) => return Ok((copyset, resp)),
                Err(e) => {
                    debug!(copyset, server, error = %e, "request failed");
                    last_error = e.to_string();
                    if matches!(e, ConnError::Connect { .. } | ConnError::Timeout { .. }) {
                        self.set_leader(copyset, 0);
                    }
                    want = self.next_member(copyset, server);
                    failures_in_row += 1;
                    // Try every member once at full speed, then back off.
                    failures_in_row >= members
                }
            };
            if pause {
                let left = opts.retry_deadline.saturating_sub(start.elapsed());
                tokio::time::sleep(backoff.min(left)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                failures_in_row = 0;
            }
        }
    }
}

fn expect_ok(copyset: CopysetId, resp: Response) -> Result<(), VolumeError> {
    match resp {
        Response::Ok => Ok(()),
        other => Err(VolumeError::Protocol {
            copyset,
            message: format!("expected Ok, got {other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use pikafs_proto::ctrlpb::{CopysetRoute, Peer};
    use pikafs_proto::FrameCodec;
    use std::sync::Mutex;
    use tokio::net::TcpListener;
    use tokio_util::codec::Framed;

    /// What a fake chunkserver saw: (server id, request).
    type Log = Arc<Mutex<Vec<(ServerId, Request)>>>;

    /// A fake chunkserver answering every request with `answer(request)`.
    async fn fake_server(
        id: ServerId,
        log: Log,
        answer: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (log, answer) = (log.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut framed = Framed::new(sock, FrameCodec);
                    while let Some(Ok(frame)) = framed.next().await {
                        let fid = frame.id;
                        let req = Request::from_frame(frame).unwrap();
                        let resp = answer(&req);
                        log.lock().unwrap().push((id, req));
                        if framed.send(resp.to_frame(fid)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn client(
        members: Vec<(ServerId, String)>,
        leader: ServerId,
        opts: OpenOptions,
    ) -> VolumeClient {
        // ctrl is never reached in these tests: a lazy channel to nowhere.
        let ctrl = CtrlClient::new(Endpoint::from_static("http://127.0.0.1:1").connect_lazy());
        let info = VolumeInfo {
            volume_id: 7,
            name: "v".into(),
            size_bytes: 4 * CHUNK_SIZE,
            chunk_size: CHUNK_SIZE,
            epoch: 3,
            copysets: vec![CopysetRoute {
                copyset_id: 11,
                members: members
                    .into_iter()
                    .map(|(server_id, addr)| Peer { server_id, addr })
                    .collect(),
                leader_id: leader,
            }],
            created_unix_secs: 0,
        };
        VolumeClient::from_info(ctrl, &info, opts).unwrap()
    }

    fn opts() -> OpenOptions {
        OpenOptions {
            epoch: None,
            request_timeout: Duration::from_secs(2),
            retry_deadline: Duration::from_secs(5),
        }
    }

    /// A client whose leader hint points at server 1, which refuses every
    /// request with `code` (naming `hint`); server 2 accepts everything.
    async fn refused_then_ok(
        log: &Log,
        code: ErrorCode,
        hint: u64,
        msg: &'static str,
    ) -> VolumeClient {
        let a1 = fake_server(1, log.clone(), move |_| Response::error(code, hint, msg)).await;
        let a2 = fake_server(2, log.clone(), |_| Response::Ok).await;
        client(vec![(1, a1), (2, a2)], 1, opts())
    }

    #[tokio::test]
    async fn follows_not_leader_hint() {
        let log: Log = Arc::default();
        // Server 1 is a follower pointing at server 2; server 2 serves.
        let a1 = fake_server(1, log.clone(), |_| {
            Response::error(ErrorCode::NotLeader, 2, "follower")
        })
        .await;
        let a2 = fake_server(2, log.clone(), |req| match req {
            Request::Read { len, .. } => Response::Data(Bytes::from(vec![0xAB; *len as usize])),
            _ => Response::Ok,
        })
        .await;
        let c = client(vec![(1, a1), (2, a2)], 1, opts());
        c.write(10, b"hello").await.unwrap();
        {
            let seen = log.lock().unwrap();
            assert_eq!(seen.len(), 2, "{seen:?}");
            assert_eq!(seen[0].0, 1);
            assert_eq!(seen[1].0, 2);
            match &seen[1].1 {
                Request::Write {
                    copyset,
                    volume,
                    epoch,
                    chunk,
                    offset,
                    data,
                } => {
                    assert_eq!(
                        (*copyset, *volume, *epoch, *chunk, *offset),
                        (11, 7, 3, 0, 10)
                    );
                    assert_eq!(&data[..], b"hello");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // The hint is remembered: the next request goes straight to 2.
        let data = c.read(CHUNK_SIZE - 2, 4).await.unwrap();
        assert_eq!(&data[..], &[0xAB; 4]);
        let seen = log.lock().unwrap();
        assert!(seen[2..].iter().all(|(id, _)| *id == 2), "{seen:?}");
        assert_eq!(seen.len(), 4, "read split into two chunk pieces: {seen:?}");
    }

    #[tokio::test]
    async fn write_many_retries_refused_pieces_through_the_hint() {
        let log: Log = Arc::default();
        let c = refused_then_ok(&log, ErrorCode::NotLeader, 2, "follower").await;
        let tail = vec![7u8; 10];
        c.write_many(&[(0, b"head"), (4096, b"ring"), (CHUNK_SIZE - 4, &tail)])
            .await
            .unwrap();
        let seen = log.lock().unwrap().clone();
        let requests = |server: ServerId| seen.iter().filter(|(id, _)| *id == server).count();
        let writes = |server: ServerId| {
            let mut v: Vec<(u64, u32, Vec<u8>)> = seen
                .iter()
                .filter(|(id, _)| *id == server)
                .flat_map(|(_, r)| match r {
                    Request::Write {
                        chunk,
                        offset,
                        data,
                        epoch,
                        ..
                    } => {
                        assert_eq!(*epoch, 3);
                        vec![(*chunk, *offset, data.to_vec())]
                    }
                    Request::WriteV {
                        chunk,
                        extents,
                        epoch,
                        ..
                    } => {
                        assert_eq!(*epoch, 3);
                        extents
                            .iter()
                            .map(|(off, d)| (*chunk, *off, d.to_vec()))
                            .collect()
                    }
                    other => panic!("unexpected {other:?}"),
                })
                .collect();
            v.sort();
            v
        };
        let want = vec![
            (0, 0, b"head".to_vec()),
            (0, 4096, b"ring".to_vec()),
            (0, (CHUNK_SIZE - 4) as u32, vec![7; 4]),
            (1, 0, vec![7; 6]),
        ];
        // Every piece went to the follower first, then once to the leader:
        // first the three pieces of chunk 0 as one WriteV and chunk 1's
        // alone, then the refused WriteV retried piece by piece.
        assert_eq!(writes(1), want);
        assert_eq!(requests(1), 2, "{seen:?}");
        assert_eq!(writes(2), want);
        assert_eq!(requests(2), 4, "{seen:?}");
    }

    #[tokio::test]
    async fn write_many_sends_one_burst_per_server() {
        use bytes::BytesMut;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_util::codec::{Decoder, Encoder};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // Frames decoded per socket read, answered after each read.
        let per_read: Arc<Mutex<Vec<usize>>> = Arc::default();
        let seen = per_read.clone();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = BytesMut::with_capacity(1 << 20);
            loop {
                match sock.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let mut out = BytesMut::new();
                let mut n = 0;
                while let Some(frame) = FrameCodec.decode(&mut buf).unwrap() {
                    n += 1;
                    FrameCodec
                        .encode(Response::Ok.to_frame(frame.id), &mut out)
                        .unwrap();
                }
                if n > 0 {
                    seen.lock().unwrap().push(n);
                    sock.write_all(&out).await.unwrap();
                }
            }
        });
        let c = client(vec![(1, addr)], 1, opts());
        let header = vec![1u8; 4096];
        let ring = vec![2u8; 8192];
        for _ in 0..5 {
            // Header and ring in chunk 0 (one WriteV), data in chunk 1.
            c.write_many(&[(4096, &header), (16384, &ring), (CHUNK_SIZE, &ring)])
                .await
                .unwrap();
        }
        let per_read = per_read.lock().unwrap();
        assert_eq!(per_read.iter().sum::<usize>(), 10, "{per_read:?}");
        assert!(
            per_read.iter().all(|&n| n == 2),
            "each burst in one read: {per_read:?}"
        );
    }

    #[tokio::test]
    async fn stale_epoch_is_returned_without_retry() {
        let log: Log = Arc::default();
        let c = refused_then_ok(&log, ErrorCode::StaleEpoch, 9, "fenced").await;
        let err = c.write(0, b"x").await.unwrap_err();
        match err {
            VolumeError::StaleEpoch {
                volume,
                mine,
                newest,
            } => {
                assert_eq!((volume, mine, newest), (7, 3, 9));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(log.lock().unwrap().len(), 1);
        // write_many too: each piece is retried alone, and gets the same.
        let err = c.write_many(&[(0, b"a"), (8192, b"b")]).await.unwrap_err();
        assert!(
            matches!(err, VolumeError::StaleEpoch { newest: 9, .. }),
            "{err:?}"
        );
        assert!(log.lock().unwrap().iter().all(|(id, _)| *id == 1));
    }

    #[tokio::test]
    async fn dead_member_is_skipped_and_deadline_reported() {
        let log: Log = Arc::default();
        // Member 1's address refuses connections.
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().to_string()
        };
        let a2 = fake_server(2, log.clone(), |_| Response::Ok).await;
        let c = client(vec![(1, dead.clone()), (2, a2)], 1, opts());
        c.write(0, b"x").await.unwrap();
        assert_eq!(log.lock().unwrap().len(), 1);

        let mut o = opts();
        o.retry_deadline = Duration::from_millis(300);
        let c = client(vec![(1, dead)], 1, o);
        let err = c.read(0, 1).await.unwrap_err();
        assert!(
            matches!(err, VolumeError::Unavailable { copyset: 11, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn corrupt_is_an_error_and_range_is_checked() {
        let log: Log = Arc::default();
        let a1 = fake_server(1, log.clone(), |_| {
            Response::error(ErrorCode::Corrupt, 0, "crc")
        })
        .await;
        let c = client(vec![(1, a1)], 1, opts());
        assert!(matches!(
            c.read(0, 4096).await,
            Err(VolumeError::Corrupt { copyset: 11, .. })
        ));
        assert!(c.read(0, 0).await.unwrap().is_empty());
        let size = c.size();
        assert!(matches!(
            c.write(size - 1, b"ab").await,
            Err(VolumeError::OutOfRange { .. })
        ));
        assert_eq!(log.lock().unwrap().len(), 1);
    }

    /// The byte a fake volume holds at `pos`: a pattern so misplaced
    /// pieces show.
    fn pattern(pos: u64) -> u8 {
        (pos % 251) as u8
    }

    #[tokio::test]
    async fn out_of_order_responses_are_reassembled_in_order() {
        // Answers each request after a delay that shrinks with the request
        // id, so responses overtake each other on the one connection.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let (mut sink, mut stream) = Framed::new(sock, FrameCodec).split();
            let (tx, mut rx) = tokio::sync::mpsc::channel(64);
            tokio::spawn(async move {
                while let Some(f) = rx.recv().await {
                    if sink.send(f).await.is_err() {
                        return;
                    }
                }
            });
            while let Some(Ok(frame)) = stream.next().await {
                let id = frame.id;
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(40u64.saturating_sub(id * 5))).await;
                    let resp = match Request::from_frame(frame).unwrap() {
                        Request::Read {
                            chunk, offset, len, ..
                        } => {
                            let base = chunk * CHUNK_SIZE + offset as u64;
                            Response::Data((0..len as u64).map(|i| pattern(base + i)).collect())
                        }
                        _ => Response::Ok,
                    };
                    let _ = tx.send(resp.to_frame(id)).await;
                });
            }
        });
        let c = client(vec![(1, addr)], 1, opts());
        // 3.5 MiB, unaligned, across the chunk 0 / chunk 1 boundary.
        let off = CHUNK_SIZE - (2 << 20) + 123;
        let len = (7 << 20) / 2;
        let data = c.read(off, len).await.unwrap();
        assert_eq!(data.len(), len);
        for (i, b) in data.iter().enumerate() {
            assert_eq!(*b, pattern(off + i as u64), "byte {i}");
        }
    }

    #[tokio::test]
    async fn busy_is_retried_on_the_same_member_and_hangup_moves_on() {
        let log: Log = Arc::default();
        let busy = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let b = busy.clone();
        let a1 = fake_server(1, log.clone(), move |_| {
            if b.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
                Response::error(ErrorCode::Busy, 0, "queue full")
            } else {
                Response::Ok
            }
        })
        .await;
        let c = client(vec![(1, a1)], 1, opts());
        c.write(0, b"x").await.unwrap();
        assert_eq!(busy.load(std::sync::atomic::Ordering::SeqCst), 3);

        // Server 1 accepts and hangs up on every request; server 2 serves.
        let hangup = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a_hang = hangup.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((sock, _)) = hangup.accept().await {
                tokio::spawn(async move {
                    let mut framed = Framed::new(sock, FrameCodec);
                    let _ = framed.next().await;
                    drop(framed);
                });
            }
        });
        let a2 = fake_server(2, log.clone(), |_| Response::Ok).await;
        let c = client(vec![(1, a_hang), (2, a2)], 1, opts());
        c.write(0, b"y").await.unwrap();
        let seen = log.lock().unwrap();
        assert_eq!(seen.last().map(|s| s.0), Some(2), "{seen:?}");
    }
}
