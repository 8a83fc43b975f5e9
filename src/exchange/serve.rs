//! The server side: accepts streams within the limits, reads one request per stream,
//! and streams the blocks of its walk. Blocks are read on the blocking pool, at most
//! two reads of about [`READ_BUDGET`] per stream at a time, and written as fast as the
//! peer reads them: a slow reader holds a stream and its two buffers, never more.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cid::Cid;
use libp2p::futures::io::BufWriter;
use libp2p::futures::{AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, Stream};
use tokio::sync::watch;

use super::walk::{Item, Walk, WalkError};
use super::wire::{self, End, Frame, Request, Status};
use super::{lock, Shared, MAX_SERVING_STREAMS, MAX_STREAMS_PER_PEER, MAX_WANTS_PER_PEER};
use crate::bandwidth::Throttle;
use crate::block::{BlockError, BlockGet};
use crate::store::Store;
use crate::unixfs::reader::{self, ReadError};

/// How long a new stream may take to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(10);
/// How long a write may wait for the peer to read before the stream is given up.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// Bytes of blocks one read on the pool gathers (at least one block).
const READ_BUDGET: usize = 1024 * 1024;
/// Streams answered `busy` at once; more are dropped without an answer.
const MAX_BUSY_ANSWERS: usize = 16;

/// Streams and wants being served, per peer and in all.
#[derive(Default)]
pub(crate) struct Load {
    peers: HashMap<PeerId, PeerLoad>,
    total: usize,
    next_epoch: u64,
}

struct PeerLoad {
    streams: usize,
    wants: usize,
    /// Tells a peer's entry from one made for it after it was cut off and came back.
    epoch: u64,
}

impl Load {
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    pub(crate) fn forget(&mut self, peer: &PeerId) {
        if let Some(load) = self.peers.remove(peer) {
            self.total -= load.streams;
        }
    }
}

/// A stream being served; gives its place back when dropped.
struct Place {
    shared: Arc<Shared>,
    peer: PeerId,
    epoch: u64,
    wants: usize,
}

impl Place {
    fn add_wants(&mut self, wants: usize) -> Result<(), String> {
        let mut load = lock(&self.shared.load);
        let Some(entry) = load
            .peers
            .get_mut(&self.peer)
            .filter(|e| e.epoch == self.epoch)
        else {
            return Err("the peer was cut off".into());
        };
        entry.wants += wants;
        self.wants += wants;
        if entry.wants > MAX_WANTS_PER_PEER {
            return Err(format!(
                "{} blocks wanted at once, above the limit of {MAX_WANTS_PER_PEER}",
                entry.wants
            ));
        }
        Ok(())
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut load = lock(&self.shared.load);
        let Some(entry) = load
            .peers
            .get_mut(&self.peer)
            .filter(|e| e.epoch == self.epoch)
        else {
            return;
        };
        entry.streams -= 1;
        entry.wants -= self.wants;
        if entry.streams == 0 {
            load.peers.remove(&self.peer);
        }
        load.total -= 1;
    }
}

enum Admission {
    Serve(Place),
    Busy,
    Refuse,
}

fn admit(shared: &Arc<Shared>, peer: PeerId) -> Admission {
    if shared.penalty(&peer).is_some() {
        return Admission::Refuse;
    }
    let mut load = lock(&shared.load);
    let streams = load.peers.get(&peer).map_or(0, |entry| entry.streams);
    if streams >= MAX_STREAMS_PER_PEER {
        drop(load);
        shared.cut_off(
            peer,
            format!("more than {MAX_STREAMS_PER_PEER} block streams open at once"),
        );
        return Admission::Refuse;
    }
    if load.total >= MAX_SERVING_STREAMS {
        return Admission::Busy;
    }
    let next_epoch = load.next_epoch;
    let entry = load.peers.entry(peer).or_insert(PeerLoad {
        streams: 0,
        wants: 0,
        epoch: next_epoch,
    });
    entry.streams += 1;
    let epoch = entry.epoch;
    load.next_epoch += 1;
    load.total += 1;
    Admission::Serve(Place {
        shared: shared.clone(),
        peer,
        epoch,
        wants: 0,
    })
}

/// Takes every incoming stream of the protocol until shutdown. It only counts and
/// spawns, so that the queue of streams waiting for it stays short.
pub(crate) async fn accept_loop(
    mut incoming: crate::daemon::net::IncomingStreams,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let busy_answers = Arc::new(AtomicUsize::new(0));
    loop {
        let (peer, stream) = tokio::select! {
            next = incoming.next() => match next {
                Some(next) => next,
                None => break,
            },
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        match admit(&shared, peer) {
            Admission::Serve(place) => {
                tokio::spawn(serve_stream(shared.clone(), peer, stream, place));
            }
            Admission::Busy => {
                if busy_answers.fetch_add(1, Ordering::AcqRel) < MAX_BUSY_ANSWERS {
                    let busy_answers = busy_answers.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(REQUEST_WAIT, answer_busy(stream)).await;
                        busy_answers.fetch_sub(1, Ordering::AcqRel);
                    });
                } else {
                    busy_answers.fetch_sub(1, Ordering::AcqRel);
                }
            }
            Admission::Refuse => drop(stream),
        }
    }
}

async fn answer_busy(mut stream: Stream) {
    let end = Frame::End(End {
        status: Status::Busy,
        message: Some("serving too many streams; ask again later".into()),
    });
    if wire::write_frame(&mut stream, &end).await.is_ok() {
        let _ = stream.close().await;
    }
}

async fn serve_stream(shared: Arc<Shared>, peer: PeerId, mut stream: Stream, mut place: Place) {
    let request = match tokio::time::timeout(
        REQUEST_WAIT,
        wire::read_frame(&mut stream, wire::MAX_REQUEST_FRAME),
    )
    .await
    {
        Ok(Ok(Some(Frame::Request(request)))) => request,
        Ok(Ok(Some(_))) => return shared.cut_off(peer, "sent a frame other than a request"),
        Ok(Err(err)) if err.is_violation() => return shared.cut_off(peer, err),
        // Silent, closed or broken: nothing to answer.
        Err(_) | Ok(Ok(None)) | Ok(Err(_)) => return,
    };
    if let Err(reason) = check_request(&request) {
        return shared.cut_off(peer, reason);
    }
    if let Err(reason) = place.add_wants(request.roots.len()) {
        return shared.cut_off(peer, reason);
    }
    let mut writer = Deadline {
        inner: BufWriter::with_capacity(64 * 1024, &mut stream),
        upload: shared.config.bandwidth.upload.clone(),
        blocks: 0,
        block_bytes: 0,
    };
    let responded = respond(&shared, &mut writer, request).await;
    shared.count_served(writer.blocks, writer.block_bytes);
    match responded {
        Ok(()) => {
            let _ = writer.flush().await;
            drop(writer);
            let _ = tokio::time::timeout(WRITE_STALL, stream.close()).await;
        }
        Err(err) => tracing::debug!(%peer, %err, "block stream ended early"),
    }
    drop(place);
}

/// The limits a request must keep; one that does not is a violation.
pub fn check_request(request: &Request) -> Result<(), String> {
    if request.roots.is_empty() {
        return Err("a request without roots".into());
    }
    if request.roots.len() > wire::MAX_ROOTS {
        return Err(format!(
            "a request for {} roots, above the limit of {}",
            request.roots.len(),
            wire::MAX_ROOTS
        ));
    }
    if request.prune.len() > wire::MAX_PRUNE {
        return Err(format!(
            "a request pruning {} blocks, above the limit of {}",
            request.prune.len(),
            wire::MAX_PRUNE
        ));
    }
    if request.roots.len() > 1 && (request.path.is_some() || request.range.is_some()) {
        return Err("a path or a range with more than one root".into());
    }
    if request
        .path
        .as_ref()
        .is_some_and(|p| p.len() > wire::MAX_PATH_BYTES)
    {
        return Err(format!("a path longer than {} bytes", wire::MAX_PATH_BYTES));
    }
    Ok(())
}

/// Writes through to the stream, giving up on a peer that stops reading, and sends
/// blocks no faster than the upload cap.
struct Deadline<W> {
    inner: W,
    upload: Throttle,
    /// Blocks, and their bytes, written so far.
    blocks: u64,
    block_bytes: u64,
}

impl<W: AsyncWrite + Unpin> Deadline<W> {
    async fn frame(&mut self, frame: &Frame) -> std::io::Result<()> {
        within(WRITE_STALL, wire::write_frame(&mut self.inner, frame)).await
    }

    async fn block(&mut self, cid: &Cid, data: &[u8]) -> std::io::Result<()> {
        self.upload.spend(data.len()).await;
        within(WRITE_STALL, wire::write_block(&mut self.inner, cid, data)).await?;
        self.blocks += 1;
        self.block_bytes += data.len() as u64;
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        within(WRITE_STALL, self.inner.flush()).await
    }
}

async fn within(
    limit: Duration,
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    tokio::time::timeout(limit, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// What one read on the pool produced.
enum Out {
    Block(Cid, Vec<u8>),
    Missing(Cid),
}

struct Filled {
    walk: Walk,
    out: Vec<Out>,
    /// The walk cannot go on (a block that cannot be decoded, a range over a folder).
    failed: Option<WalkError>,
    done: bool,
}

async fn respond<W: AsyncWrite + Unpin>(
    shared: &Shared,
    writer: &mut Deadline<W>,
    request: Request,
) -> std::io::Result<()> {
    let end = |status, message: Option<String>| Frame::End(End { status, message });
    let start = match &request.path {
        Some(path) if !path.trim_matches('/').is_empty() => {
            let store = shared.store.clone();
            let (root, path) = (request.roots[0], path.clone());
            let resolved = shared
                .pool
                .run(move || resolve_recorded(&store, &root, &path))
                .await;
            let Ok((read, result)) = resolved else {
                return writer.frame(&end(Status::Truncated, None)).await;
            };
            for (cid, data) in &read {
                writer.block(cid, data).await?;
            }
            match result {
                Ok(target) => {
                    writer.frame(&Frame::Resolved(target)).await?;
                    target
                }
                Err(ReadError::NotFound(cid)) => {
                    writer.frame(&Frame::Missing(cid)).await?;
                    return writer.frame(&end(Status::Complete, None)).await;
                }
                Err(err) => {
                    let message = crate::node::one_line(&err);
                    return writer.frame(&end(Status::Error, Some(message))).await;
                }
            }
        }
        _ => request.roots[0],
    };
    let start: Vec<Item> = if request.roots.len() == 1 {
        vec![Item {
            cid: start,
            range: request.range,
        }]
    } else {
        request.roots.iter().copied().map(Item::whole).collect()
    };
    let walk = Walk::new(request.scope, &start, &request.prune);
    // A task of its own, so that it runs while the blocks before it are written.
    let read = |walk: Walk| {
        let (store, pool) = (shared.store.clone(), shared.pool.clone());
        tokio::spawn(async move { pool.run(move || fill(&store, walk)).await })
    };
    // One read ahead of the writes: the next blocks are read while these go out.
    let mut pending = read(walk);
    loop {
        let Ok(Ok(filled)) = pending.await else {
            return writer.frame(&end(Status::Truncated, None)).await;
        };
        let Filled {
            walk,
            out,
            failed,
            done,
        } = filled;
        let next = (!done && failed.is_none() && walk.visits() < wire::MAX_RESPONSE_BLOCKS)
            .then(|| read(walk));
        for item in &out {
            match item {
                Out::Block(cid, data) => writer.block(cid, data).await?,
                Out::Missing(cid) => writer.frame(&Frame::Missing(*cid)).await?,
            }
        }
        writer.flush().await?;
        if let Some(err) = failed {
            return writer
                .frame(&end(Status::Error, Some(err.to_string())))
                .await;
        }
        match next {
            Some(next) => pending = next,
            None if done => return writer.frame(&end(Status::Complete, None)).await,
            None => return writer.frame(&end(Status::Truncated, None)).await,
        }
    }
}

/// Reads the next blocks of `walk`, about [`READ_BUDGET`] bytes of them.
fn fill(store: &Store, mut walk: Walk) -> Filled {
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut failed = None;
    let mut done = false;
    while bytes < READ_BUDGET && walk.visits() < wire::MAX_RESPONSE_BLOCKS {
        let item = match walk.next_item() {
            Ok(Some(item)) => item,
            Ok(None) => {
                done = true;
                break;
            }
            Err(err) => {
                failed = Some(err);
                break;
            }
        };
        match store.get_block(&item.cid) {
            Ok(data) => {
                let descended = walk.descend(&item, &data);
                bytes += data.len();
                out.push(Out::Block(item.cid, data));
                if let Err(err) = descended {
                    failed = Some(err);
                    break;
                }
            }
            Err(BlockError::NotFound(cid)) => out.push(Out::Missing(cid)),
            // A block that cannot be read well is one this node does not have.
            Err(err) => {
                tracing::warn!(cid = %item.cid, %err, "cannot serve a block");
                out.push(Out::Missing(item.cid));
            }
        }
    }
    Filled {
        walk,
        out,
        failed,
        done,
    }
}

/// Resolves `path` below `root` and returns every block the resolution read, in the
/// order it read them: the client checks the resolution by running it over them.
fn resolve_recorded(store: &Store, root: &Cid, path: &str) -> (BlocksRead, Result<Cid, ReadError>) {
    let recording = Recording::new(store);
    let result = reader::resolve(&recording, root, path);
    (recording.read.into_inner(), result)
}

/// Blocks with their bytes, in the order they were read.
pub(crate) type BlocksRead = Vec<(Cid, Vec<u8>)>;

/// A [`BlockGet`] that keeps what is read through it, within the path limits.
pub(crate) struct Recording<B> {
    blocks: B,
    pub(crate) read: RefCell<BlocksRead>,
    bytes: RefCell<usize>,
}

impl<B: BlockGet> Recording<B> {
    pub(crate) fn new(blocks: B) -> Recording<B> {
        Recording {
            blocks,
            read: RefCell::default(),
            bytes: RefCell::default(),
        }
    }
}

impl<B: BlockGet> BlockGet for Recording<B> {
    fn get_block(&self, cid: &Cid) -> Result<Vec<u8>, BlockError> {
        let data = self.blocks.get_block(cid)?;
        let mut read = self.read.borrow_mut();
        let mut bytes = self.bytes.borrow_mut();
        *bytes += data.len();
        if read.len() >= wire::MAX_PATH_BLOCKS || *bytes > wire::MAX_PATH_BLOCK_BYTES {
            return Err(BlockError::Backend(format!(
                "resolving the path takes more than {} blocks or {} bytes",
                wire::MAX_PATH_BLOCKS,
                wire::MAX_PATH_BLOCK_BYTES
            )));
        }
        read.push((*cid, data.clone()));
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::cid_v1;
    use crate::exchange::wire::Scope;

    #[test]
    fn requests_outside_the_limits_are_refused() {
        let cid = cid_v1(crate::block::codec::RAW, b"x");
        let request = |roots: usize, path: Option<&str>| Request {
            roots: vec![cid; roots],
            scope: Scope::Dag,
            path: path.map(str::to_string),
            range: None,
            prune: vec![],
        };
        assert!(check_request(&request(1, Some("a/b"))).is_ok());
        assert!(check_request(&request(wire::MAX_ROOTS, None)).is_ok());
        assert!(check_request(&request(0, None)).is_err());
        assert!(check_request(&request(wire::MAX_ROOTS + 1, None)).is_err());
        assert!(check_request(&request(2, Some("a"))).is_err());
        let long = "a".repeat(wire::MAX_PATH_BYTES + 1);
        assert!(check_request(&request(1, Some(&long))).is_err());
    }
}
