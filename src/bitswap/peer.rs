//! One peer's bitswap state and its two tasks: the sender, which owns our stream to the
//! peer and writes every message we send it, and the server, which answers its
//! wantlist (see `server`). Streams the peer opens to us are read by a task each.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use libp2p::futures::AsyncWriteExt;
use libp2p::{PeerId, Stream};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};

use super::client::Registry;
use super::ledger::Ledger;
use super::wire::{self, Message, Outgoing, Version};
use super::{lock, server, BitswapError, BitswapPeer, Shared, MAX_INBOUND_STREAMS};
use super::{MAX_STREAMS_PER_PEER, SERVE_SLOTS_PER_PEER};
use crate::metrics::{Protocol, ProtocolLabels};

/// Messages waiting for the sender; the server and the client wait when it is full.
const OUTBOX: usize = 4;
/// Our stream to a peer is closed after this long without a message: Helia gives up
/// on a stream that stays silent for 10 s.
const IDLE_CLOSE: Duration = Duration::from_secs(4);
/// A peer's stream to us that brings nothing for this long is closed.
const INBOUND_IDLE: Duration = Duration::from_secs(60);
/// Opening a stream, protocol negotiation included.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer that does not read one message in this long is cut off.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A message for the sender, with the serving places it holds until it is written.
pub(super) struct Queued {
    pub message: Outgoing,
    pub places: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

pub(super) struct Peer {
    pub id: PeerId,
    closed: watch::Sender<bool>,
    /// The newest version the peer has used or accepted.
    version: Mutex<Option<Version>>,
    ledger: Mutex<Ledger>,
    /// Wakes the server: the wantlist has new work.
    pub work: Notify,
    pub outbox: mpsc::Sender<Queued>,
    registry: Mutex<Registry>,
    /// Refused every bitswap version when we opened a stream.
    unsupported: AtomicBool,
    /// Serving places this peer may hold.
    pub places: Arc<Semaphore>,
    inbound: AtomicUsize,
    pub blocks_sent: AtomicU64,
    pub blocks_received: AtomicU64,
    pub refused_wants: AtomicU64,
}

impl Peer {
    /// Makes the state and starts its tasks.
    pub fn start(shared: &Arc<Shared>, id: PeerId) -> Arc<Peer> {
        let (outbox, queue) = mpsc::channel(OUTBOX);
        let peer = Arc::new(Peer {
            id,
            closed: watch::channel(false).0,
            version: Mutex::new(None),
            ledger: Mutex::default(),
            work: Notify::new(),
            outbox,
            registry: Mutex::default(),
            unsupported: AtomicBool::new(false),
            places: Arc::new(Semaphore::new(SERVE_SLOTS_PER_PEER)),
            inbound: AtomicUsize::new(0),
            blocks_sent: AtomicU64::new(0),
            blocks_received: AtomicU64::new(0),
            refused_wants: AtomicU64::new(0),
        });
        tokio::spawn(send_loop(shared.clone(), peer.clone(), queue));
        tokio::spawn(server::serve_loop(shared.clone(), peer.clone()));
        peer
    }

    /// Ends the tasks, empties the wantlist and ends every wait for this peer's blocks.
    pub fn close(&self) {
        self.closed.send_replace(true);
        *lock(&self.ledger) = Ledger::default();
        lock(&self.registry).clear();
    }

    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        lock(&self.ledger)
    }

    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    pub fn version(&self) -> Option<Version> {
        *lock(&self.version)
    }

    /// Whether the peer speaks bitswap, once known.
    pub fn speaks_bitswap(&self) -> Option<bool> {
        if self.unsupported.load(Ordering::Relaxed) {
            Some(false)
        } else {
            self.version().map(|_| true)
        }
    }

    /// Our stream could not be opened: nothing we want of the peer will come.
    fn open_failed(&self, err: &BitswapError) {
        if matches!(err, BitswapError::Unsupported(_)) {
            self.unsupported.store(true, Ordering::Relaxed);
        }
        self.registry().clear();
    }

    fn note_version(&self, version: Version) {
        let mut known = lock(&self.version);
        if known.is_none_or(|known| known < version) {
            *known = Some(version);
        }
    }

    pub fn stat(&self) -> BitswapPeer {
        BitswapPeer {
            peer: self.id.to_string(),
            version: self.version().map(|v| v.to_string()),
            wantlist: self.ledger().len(),
            wanted: self.registry().len(),
            blocks_sent: self.blocks_sent.load(Ordering::Relaxed),
            blocks_received: self.blocks_received.load(Ordering::Relaxed),
            refused_wants: self.refused_wants.load(Ordering::Relaxed),
        }
    }
}

/// Writes our messages to the peer on one stream, opened when there is something to
/// send and closed when there has been nothing for a while.
async fn send_loop(shared: Arc<Shared>, peer: Arc<Peer>, mut queue: mpsc::Receiver<Queued>) {
    let mut closed = peer.closed();
    let mut control = shared.control.clone();
    let mut stream: Option<(Stream, Version)> = None;
    loop {
        let idle_closes = stream.is_some();
        let next = tokio::select! {
            _ = closed.wait_for(|closed| *closed) => break,
            next = next_queued(&mut queue, idle_closes) => next,
        };
        let queued = match next {
            None => {
                // Idle: close our side, so that the peer sees a clean end.
                if let Some((mut open, _)) = stream.take() {
                    let _ = tokio::time::timeout(OPEN_TIMEOUT, open.close()).await;
                }
                continue;
            }
            Some(None) => break,
            Some(Some(queued)) => queued,
        };
        let Queued { message, places } = queued;
        // A stream that failed is opened again once: the peer may have reset an idle one.
        for attempt in 0..2 {
            if stream.is_none() {
                match open(&mut control, &peer).await {
                    Ok(opened) => stream = Some(opened),
                    Err(err) => {
                        tracing::debug!(peer = %peer.id, %err, "cannot send a bitswap message");
                        peer.open_failed(&err);
                        break;
                    }
                }
            }
            let Some((open_stream, version)) = stream.as_mut() else {
                break;
            };
            if !message.says_anything(*version) {
                break;
            }
            let bytes = message.encode(*version);
            shared.bandwidth.upload.spend(bytes.len()).await;
            let written =
                tokio::time::timeout(WRITE_TIMEOUT, wire::write_message(open_stream, &bytes)).await;
            match written {
                Ok(Ok(())) => {
                    sent(&shared, &peer, &message);
                    break;
                }
                Ok(Err(err)) => {
                    stream = None;
                    if attempt == 1 {
                        tracing::debug!(peer = %peer.id, %err, "bitswap message lost");
                    }
                }
                Err(_) => {
                    shared.cut_off(peer.id, "did not read a bitswap message within 30 s");
                    return;
                }
            }
        }
        // The serving places go back only once the message is written or lost.
        drop(places);
    }
}

/// The next message; `None` after [`IDLE_CLOSE`] without one when `idle_closes`.
async fn next_queued(
    queue: &mut mpsc::Receiver<Queued>,
    idle_closes: bool,
) -> Option<Option<Queued>> {
    if idle_closes {
        tokio::time::timeout(IDLE_CLOSE, queue.recv()).await.ok()
    } else {
        Some(queue.recv().await)
    }
}

fn sent(shared: &Shared, peer: &Peer, message: &Outgoing) {
    if message.blocks.is_empty() {
        return;
    }
    let bytes: usize = message.blocks.iter().map(|block| block.data.len()).sum();
    let blocks = message.blocks.len() as u64;
    peer.blocks_sent.fetch_add(blocks, Ordering::Relaxed);
    shared
        .counters
        .blocks_sent
        .fetch_add(blocks, Ordering::Relaxed);
    shared
        .counters
        .bytes_sent
        .fetch_add(bytes as u64, Ordering::Relaxed);
    let labels = ProtocolLabels {
        protocol: Protocol::Bitswap,
    };
    shared
        .metrics
        .bytes_served
        .get_or_create(&labels)
        .inc_by(bytes as u64);
    shared
        .metrics
        .blocks_served
        .get_or_create(&labels)
        .inc_by(blocks);
}

/// Opens a stream to the peer in the newest version it speaks.
async fn open(
    control: &mut libp2p_stream::Control,
    peer: &Peer,
) -> Result<(Stream, Version), BitswapError> {
    let known = peer.version();
    for version in Version::NEWEST_FIRST {
        if known.is_some_and(|known| version > known) {
            continue;
        }
        let opened = tokio::time::timeout(
            OPEN_TIMEOUT,
            control.open_stream(peer.id, version.protocol()),
        )
        .await
        .map_err(|_| BitswapError::Unreachable {
            peer: peer.id,
            reason: "no stream within 10 s".into(),
        })?;
        match opened {
            Ok(stream) => {
                peer.note_version(version);
                return Ok((stream, version));
            }
            Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_)) => continue,
            Err(err) => {
                return Err(BitswapError::Unreachable {
                    peer: peer.id,
                    reason: err.to_string(),
                })
            }
        }
    }
    Err(BitswapError::Unsupported(peer.id))
}

/// Takes a stream the peer opened, within the limits, and reads it on a task of its own.
pub(super) fn accept(shared: &Arc<Shared>, id: PeerId, version: Version, stream: Stream) {
    if shared.inbound_streams.load(Ordering::Relaxed) >= MAX_INBOUND_STREAMS {
        shared
            .counters
            .refused_streams
            .fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Ok(peer) = shared.peer(id) else {
        return;
    };
    if peer.inbound.fetch_add(1, Ordering::Relaxed) >= MAX_STREAMS_PER_PEER {
        peer.inbound.fetch_sub(1, Ordering::Relaxed);
        shared
            .counters
            .refused_streams
            .fetch_add(1, Ordering::Relaxed);
        return;
    }
    shared.inbound_streams.fetch_add(1, Ordering::Relaxed);
    peer.note_version(version);
    let guard = InboundPlace {
        shared: shared.clone(),
        peer,
    };
    tokio::spawn(read_loop(guard, stream));
}

/// A stream being read; gives its places back when dropped.
struct InboundPlace {
    shared: Arc<Shared>,
    peer: Arc<Peer>,
}

impl Drop for InboundPlace {
    fn drop(&mut self) {
        self.peer.inbound.fetch_sub(1, Ordering::Relaxed);
        self.shared.inbound_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn read_loop(place: InboundPlace, mut stream: Stream) {
    let (shared, peer) = (&place.shared, &place.peer);
    let mut closed = peer.closed();
    loop {
        let read = tokio::select! {
            _ = closed.wait_for(|closed| *closed) => return,
            read = tokio::time::timeout(
                INBOUND_IDLE,
                wire::read_message(&mut stream, wire::MAX_INCOMING_MESSAGE),
            ) => read,
        };
        match read {
            Ok(Ok(Some(message))) => {
                // Not reading on until the download cap allows slows the peer down.
                let block_bytes = message.blocks.iter().map(|b| b.data.len()).sum();
                shared.bandwidth.download.spend(block_bytes).await;
                received(shared, peer, message).await
            }
            Ok(Err(err)) if err.is_violation() => {
                shared.cut_off(peer.id, &err.to_string());
                return;
            }
            // Idle, ended, or failed: the peer opens another stream when it has more.
            _ => return,
        }
    }
}

async fn received(shared: &Arc<Shared>, peer: &Arc<Peer>, message: Message) {
    if let Some(wantlist) = &message.wantlist {
        server::wantlist_received(shared, peer, wantlist);
    }
    if !message.blocks.is_empty() || !message.presences.is_empty() {
        super::client::received(shared, peer, message.blocks, message.presences).await;
    }
}
