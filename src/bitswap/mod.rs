//! Bitswap, the IPFS network's block exchange (`/ipfs/bitswap/1.2.0`, and 1.1.0 and
//! 1.0.0 for older peers), as server and client: kubo, Helia and any IPFS node can
//! fetch the blocks this node holds, and this node can fetch from them what no oermesh
//! peer has. Written from the spec (docs/PROTOCOL.md, "Bitswap").
//!
//! Bitswap is message based, not request-response: each side sends its messages on
//! streams it opens itself, and a peer's wantlist lives from message to message until
//! the connection closes. So the state is per peer ([`peer::Peer`]): the wantlist it
//! sent us ([`ledger::Ledger`], capped), the wants we sent it, and one task that writes
//! our messages to it. Streams are opened and accepted as the oermesh block exchange's
//! are, so block bytes never pass through the network event loop; store
//! reads and hashing run on the daemon's [`BlockingPool`].
//!
//! Limits: a peer's wantlist holds at most [`ledger::MAX_WANTLIST`] entries; a message
//! read is at most [`wire::MAX_INCOMING_MESSAGE`] bytes and one sent at most
//! [`wire::MAX_OUTGOING_MESSAGE`]; a peer has at most [`MAX_STREAMS_PER_PEER`] streams
//! open to us; at most [`SERVE_SLOTS`] messages of blocks are being read or written at
//! once over all peers. A block received is hashed before anything else looks at it,
//! and kept only if this node asked that peer for it.

mod client;
pub mod ledger;
mod peer;
mod server;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use libp2p::futures::StreamExt;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::bandwidth::Bandwidth;
use crate::daemon::net::{self, NetEvent};
use crate::daemon::pool::BlockingPool;
use crate::metrics::Metrics;
use crate::store::Store;
pub use client::{Answer, Wants};
use peer::Peer;
use wire::Version;

/// Streams one peer may have open to us at once; more are closed at once. Helia opens
/// one per message and sends one message at a time.
pub const MAX_STREAMS_PER_PEER: usize = 16;
/// Streams open to us at once over all peers.
pub const MAX_INBOUND_STREAMS: usize = 512;
/// Messages of blocks being read from the store or written to peers at once, over all
/// peers; each is at most [`wire::MAX_OUTGOING_MESSAGE`] bytes, so this bounds the
/// memory serving takes.
pub const SERVE_SLOTS: usize = 32;
/// ... and per peer, so that peers that read slowly cannot take them all.
pub const SERVE_SLOTS_PER_PEER: usize = 2;

/// How often the peers whose state is kept are checked against the connected ones,
/// besides the network's disconnect events (which a lagging listener can miss).
const PEER_CHECK: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum BitswapError {
    #[error("peer {0} does not speak bitswap")]
    Unsupported(PeerId),
    #[error("cannot reach peer {peer} over bitswap: {reason}")]
    Unreachable { peer: PeerId, reason: String },
    #[error("the connection to {0} closed")]
    Disconnected(PeerId),
    #[error("the daemon is shutting down")]
    Stopped,
}

/// A handle to bitswap: fetching blocks from IPFS peers, and what is being served.
/// Cheap to clone.
#[derive(Clone)]
pub struct Bitswap {
    shared: Arc<Shared>,
}

struct Shared {
    store: Store,
    pool: BlockingPool,
    net: net::Client,
    control: libp2p_stream::Control,
    peers: Mutex<HashMap<PeerId, Arc<Peer>>>,
    serve_slots: Arc<Semaphore>,
    inbound_streams: AtomicUsize,
    counters: Counters,
    /// The node's metrics: blocks and bytes served over bitswap count there too.
    metrics: Metrics,
    /// Caps on bytes sent and received, shared with the block exchange.
    bandwidth: Bandwidth,
    shutdown: watch::Receiver<bool>,
}

/// Totals since start.
#[derive(Default)]
struct Counters {
    blocks_sent: AtomicU64,
    bytes_sent: AtomicU64,
    blocks_received: AtomicU64,
    bytes_received: AtomicU64,
    /// Blocks a peer sent that this node had not asked it for: dropped unstored.
    unrequested_blocks: AtomicU64,
    /// Blocks whose bytes did not hash to a CID this node asked for, or that used a
    /// hash this node cannot check.
    invalid_blocks: AtomicU64,
    /// Wants refused because the peer's wantlist was full.
    refused_wants: AtomicU64,
    /// Streams closed at once because a peer had too many open.
    refused_streams: AtomicU64,
}

/// What bitswap is doing: peers, and totals since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitswapStat {
    pub peers: Vec<BitswapPeer>,
    pub blocks_sent: u64,
    pub bytes_sent: u64,
    pub blocks_received: u64,
    pub bytes_received: u64,
    pub unrequested_blocks: u64,
    pub invalid_blocks: u64,
    pub refused_wants: u64,
    pub refused_streams: u64,
}

/// One peer's bitswap state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BitswapPeer {
    pub peer: String,
    /// The newest version seen from it, once it opened a stream or we did.
    pub version: Option<String>,
    /// Entries of its wantlist (what it wants of us).
    pub wantlist: usize,
    /// Blocks we want of it now.
    pub wanted: usize,
    pub blocks_sent: u64,
    pub blocks_received: u64,
    pub refused_wants: u64,
}

/// Starts serving bitswap. The returned task ends when `shutdown` turns true.
pub fn start(
    store: Store,
    pool: BlockingPool,
    net: net::Client,
    bandwidth: Bandwidth,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) -> Result<(Bitswap, JoinHandle<()>), net::AlreadyRegistered> {
    let control = net.stream_control();
    let mut incoming = Vec::new();
    for (protocol, version) in [
        (wire::PROTOCOL_1_2_0, Version::V1_2),
        (wire::PROTOCOL_1_1_0, Version::V1_1),
        (wire::PROTOCOL_1_0_0, Version::V1_0),
        (wire::PROTOCOL_LEGACY, Version::V1_0),
    ] {
        let streams = net.accept(protocol)?;
        incoming.push(
            streams
                .map(move |(peer, stream)| (peer, version, stream))
                .boxed(),
        );
    }
    let shared = Arc::new(Shared {
        store,
        pool,
        net,
        control,
        peers: Mutex::default(),
        serve_slots: Arc::new(Semaphore::new(SERVE_SLOTS)),
        inbound_streams: AtomicUsize::new(0),
        counters: Counters::default(),
        metrics,
        bandwidth,
        shutdown: shutdown.clone(),
    });
    let task = tokio::spawn(run(
        libp2p::futures::stream::select_all(incoming),
        shared.clone(),
        shutdown,
    ));
    Ok((Bitswap { shared }, task))
}

/// Accepts streams (at once, so that the queue of streams waiting stays short) and
/// drops the state of peers that went away.
async fn run(
    mut incoming: libp2p::futures::stream::SelectAll<
        libp2p::futures::stream::BoxStream<'static, (PeerId, Version, libp2p::Stream)>,
    >,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut events = shared.net.events();
    let mut check = tokio::time::interval(PEER_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Peers missing from one listing of the connected ones; dropped if missing from the
    // next too (a stream can come in before the loop lists its connection).
    let mut missing_once: Vec<PeerId> = Vec::new();
    loop {
        let check_now = tokio::select! {
            accepted = incoming.next() => match accepted {
                Some((peer, version, stream)) => {
                    peer::accept(&shared, peer, version, stream);
                    false
                }
                None => break,
            },
            event = events.recv() => match event {
                Ok(NetEvent::Disconnected { peer_id }) => {
                    shared.drop_peer(&peer_id);
                    false
                }
                Ok(_) => false,
                Err(broadcast::error::RecvError::Lagged(_)) => true,
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = check.tick() => true,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        if !check_now || lock(&shared.peers).is_empty() {
            continue;
        }
        let Ok(connected) = shared.net.peers().await else {
            break;
        };
        let connected: HashSet<PeerId> = connected.into_iter().map(|info| info.peer_id).collect();
        let gone: Vec<PeerId> = lock(&shared.peers)
            .keys()
            .filter(|peer| !connected.contains(peer))
            .copied()
            .collect();
        for peer in &gone {
            if missing_once.contains(peer) {
                shared.drop_peer(peer);
            }
        }
        missing_once = gone;
    }
    let peers: Vec<PeerId> = lock(&shared.peers).keys().copied().collect();
    for peer in peers {
        shared.drop_peer(&peer);
    }
}

impl Bitswap {
    /// What bitswap is doing now.
    pub fn stat(&self) -> BitswapStat {
        let counters = &self.shared.counters;
        let mut peers: Vec<BitswapPeer> = lock(&self.shared.peers)
            .values()
            .map(|peer| peer.stat())
            .collect();
        peers.sort_by(|a, b| a.peer.cmp(&b.peer));
        BitswapStat {
            peers,
            blocks_sent: counters.blocks_sent.load(Ordering::Relaxed),
            bytes_sent: counters.bytes_sent.load(Ordering::Relaxed),
            blocks_received: counters.blocks_received.load(Ordering::Relaxed),
            bytes_received: counters.bytes_received.load(Ordering::Relaxed),
            unrequested_blocks: counters.unrequested_blocks.load(Ordering::Relaxed),
            invalid_blocks: counters.invalid_blocks.load(Ordering::Relaxed),
            refused_wants: counters.refused_wants.load(Ordering::Relaxed),
            refused_streams: counters.refused_streams.load(Ordering::Relaxed),
        }
    }

    /// Whether `peer` speaks bitswap, once this node has exchanged a stream with it.
    pub fn speaks_bitswap(&self, peer: &PeerId) -> Option<bool> {
        lock(&self.shared.peers)
            .get(peer)
            .and_then(|state| state.speaks_bitswap())
    }

    /// How many handles exist, its own tasks' included: the daemon waits for them to go
    /// before it reports the repository released.
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.shared)
    }
}

impl Shared {
    /// The state of `peer`, made (with its tasks) on first use.
    fn peer(self: &Arc<Self>, peer: PeerId) -> Result<Arc<Peer>, BitswapError> {
        if *self.shutdown.borrow() {
            return Err(BitswapError::Stopped);
        }
        let mut peers = lock(&self.peers);
        if let Some(state) = peers.get(&peer) {
            return Ok(state.clone());
        }
        let state = Peer::start(self, peer);
        peers.insert(peer, state.clone());
        Ok(state)
    }

    /// Forgets `peer`: its wantlist, our wants of it (their waiters see the end), and
    /// its tasks.
    fn drop_peer(&self, peer: &PeerId) {
        let removed = lock(&self.peers).remove(peer);
        if let Some(state) = removed {
            state.close();
        }
    }

    /// Drops `peer` and closes its connections: for a peer that broke the protocol or
    /// stopped reading what it asked for.
    fn cut_off(&self, peer: PeerId, reason: &str) {
        tracing::warn!(%peer, %reason, "bitswap peer cut off");
        self.drop_peer(&peer);
        let net = self.net.clone();
        tokio::spawn(async move {
            let _ = net.disconnect(peer).await;
        });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
