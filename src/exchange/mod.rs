//! Block exchange between oermesh nodes: the protocol `/oermesh/blocks/1`
//! (docs/PROTOCOL.md, "Block exchange").
//!
//! A client opens one stream per request and names blocks, or DAGs (optionally below a
//! path, or only the part of a file that holds a byte range); the server streams the
//! blocks back in the order of a depth-first [`walk::Walk`] that the client follows too,
//! so every frame is either the very block the client expects next or a protocol
//! violation. [`serve`] answers peers; [`fetch`] gets DAGs from every peer that has
//! them at once.
//!
//! The module runs its own tasks beside the network event loop: it opens streams with
//! `libp2p-stream`'s [`libp2p_stream::Control`] and takes those peers open from
//! [`net::Client::accept`], so block bytes never pass through the loop. Store reads and hashing run on the daemon's [`BlockingPool`].

pub mod fetch;
pub mod serve;
pub mod walk;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::bandwidth::Bandwidth;
use crate::bitswap::Bitswap;
use crate::daemon::net;
use crate::daemon::pool::BlockingPool;
use crate::metrics::{Metrics, Protocol, ProtocolLabels};
use crate::store::Store;

pub use fetch::{FetchError, FetchProgress, FetchRequest, Fetched};

/// Streams one peer may have open to us at once; one more and it is cut off.
pub const MAX_STREAMS_PER_PEER: usize = 8;
/// Roots of the requests one peer has being served at once.
pub const MAX_WANTS_PER_PEER: usize = 4 * wire::MAX_ROOTS;
/// Streams served at once, from all peers; beyond it a request is answered `busy`.
pub const MAX_SERVING_STREAMS: usize = 64;
/// Requests this node keeps open to one peer at once, over all its fetches: half of what
/// a peer accepts, so that a node never trips another's limit.
pub const MAX_REQUESTS_TO_PEER: usize = MAX_STREAMS_PER_PEER / 2;

/// How long a peer that broke the rules stays cut off.
const PENALTY: Duration = Duration::from_secs(600);
/// Peers remembered as cut off; the oldest penalty goes first.
const MAX_PENALISED: usize = 1024;

/// What the exchange needs from the daemon's settings.
#[derive(Debug, Clone, Default)]
pub struct ExchangeConfig {
    /// Whether new peers can turn up on their own (mDNS, static peers, a DHT). Without
    /// any, a fetch with no peer at all fails after a short wait instead of the whole one.
    pub discovery: bool,
    /// Caps on block bytes sent and received.
    pub bandwidth: Bandwidth,
}

/// A handle to the block exchange: fetches and the state of peers. Cheap to clone.
#[derive(Clone)]
pub struct Exchange {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    /// For callers on blocking threads (the gateway) to wait for a fetch.
    runtime: tokio::runtime::Handle,
    store: Store,
    pool: BlockingPool,
    net: net::Client,
    control: libp2p_stream::Control,
    /// Asks peers that speak bitswap and not our protocol (IPFS nodes).
    bitswap: Option<Bitswap>,
    config: ExchangeConfig,
    penalties: Mutex<HashMap<PeerId, Penalty>>,
    load: Mutex<serve::Load>,
    /// Per peer, the requests this node may have open to it at once.
    slots: Mutex<HashMap<PeerId, Arc<Semaphore>>>,
    /// Bytes served and fetched, and failed fetches, by protocol.
    metrics: Metrics,
}

#[derive(Debug, Clone)]
struct Penalty {
    until: Instant,
    reason: String,
}

/// Starts serving the protocol. The returned task ends when `shutdown` turns true.
pub fn start(
    store: Store,
    pool: BlockingPool,
    net: net::Client,
    bitswap: Option<Bitswap>,
    config: ExchangeConfig,
    metrics: Metrics,
    shutdown: watch::Receiver<bool>,
) -> Result<(Exchange, JoinHandle<()>), net::AlreadyRegistered> {
    let incoming = net.accept(wire::PROTOCOL)?;
    let control = net.stream_control();
    let shared = Arc::new(Shared {
        runtime: tokio::runtime::Handle::current(),
        store,
        pool,
        net,
        control,
        bitswap,
        config,
        penalties: Mutex::default(),
        load: Mutex::default(),
        slots: Mutex::default(),
        metrics,
    });
    let task = tokio::spawn(serve::accept_loop(incoming, shared.clone(), shutdown));
    Ok((Exchange { shared }, task))
}

impl Exchange {
    /// Why `peer` is cut off from the exchange, while it is.
    pub fn penalty(&self, peer: &PeerId) -> Option<String> {
        self.shared.penalty(peer)
    }

    /// How many handles of the exchange exist, its own tasks' included: the daemon waits
    /// for them to go before it reports the repository released.
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.shared)
    }

    /// Streams being served now, all peers together.
    pub fn serving(&self) -> usize {
        lock(&self.shared.load).total()
    }
}

/// The gateway asks peers for a block it lacks through this, from a blocking thread.
impl crate::web::BlockFetcher for Exchange {
    fn fetch(
        &self,
        cid: &cid::Cid,
        within: Duration,
    ) -> Result<Option<Vec<u8>>, crate::block::BlockError> {
        let mut request = FetchRequest::block(*cid);
        request.wait = within;
        let fetched = self.shared.runtime.block_on(Exchange::fetch(self, request));
        match fetched {
            Ok(_) => match crate::block::BlockGet::get_block(&self.shared.store, cid) {
                Ok(data) => Ok(Some(data)),
                Err(crate::block::BlockError::NotFound(_)) => Ok(None),
                Err(err) => Err(err),
            },
            Err(FetchError::NotFound { .. }) => Ok(None),
            // Nobody was asked: the block is simply not here.
            Err(FetchError::NoPeers { cid }) => Err(crate::block::BlockError::NotFound(cid)),
            Err(err) => Err(crate::block::BlockError::Backend(err.to_string())),
        }
    }
}

impl Shared {
    fn penalty(&self, peer: &PeerId) -> Option<String> {
        let mut penalties = lock(&self.penalties);
        match penalties.get(peer) {
            Some(penalty) if penalty.until > Instant::now() => Some(penalty.reason.clone()),
            Some(_) => {
                penalties.remove(peer);
                None
            }
            None => None,
        }
    }

    /// Cuts `peer` off: its state goes, its connections are closed, and its streams are
    /// refused (and it is asked for nothing) for a while.
    fn cut_off(&self, peer: PeerId, reason: impl std::fmt::Display) {
        let reason = reason.to_string();
        tracing::warn!(%peer, %reason, "peer broke the block exchange's rules; disconnecting it");
        {
            let mut penalties = lock(&self.penalties);
            if penalties.len() >= MAX_PENALISED && !penalties.contains_key(&peer) {
                if let Some(oldest) = penalties
                    .iter()
                    .min_by_key(|(_, penalty)| penalty.until)
                    .map(|(peer, _)| *peer)
                {
                    penalties.remove(&oldest);
                }
            }
            penalties.insert(
                peer,
                Penalty {
                    until: Instant::now() + PENALTY,
                    reason,
                },
            );
        }
        lock(&self.load).forget(&peer);
        lock(&self.slots).remove(&peer);
        let net = self.net.clone();
        tokio::spawn(async move {
            let _ = net.disconnect(peer).await;
        });
    }

    /// Counts one block of `bytes` received from a peer over `protocol`.
    fn count_fetched(&self, protocol: Protocol, bytes: u64) {
        let labels = ProtocolLabels { protocol };
        self.metrics
            .bytes_fetched
            .get_or_create(&labels)
            .inc_by(bytes);
        self.metrics.blocks_fetched.get_or_create(&labels).inc();
    }

    /// Counts a request to a peer that failed, or a fetch that gave up.
    fn count_fetch_error(&self, protocol: Protocol) {
        self.metrics
            .fetch_errors
            .get_or_create(&ProtocolLabels { protocol })
            .inc();
    }

    /// Counts blocks, and their bytes, sent to a peer over the block exchange.
    fn count_served(&self, blocks: u64, bytes: u64) {
        let labels = ProtocolLabels {
            protocol: Protocol::Oermesh,
        };
        self.metrics
            .bytes_served
            .get_or_create(&labels)
            .inc_by(bytes);
        self.metrics
            .blocks_served
            .get_or_create(&labels)
            .inc_by(blocks);
    }

    /// The slots for requests to `peer`.
    fn slots(&self, peer: PeerId) -> Arc<Semaphore> {
        let mut slots = lock(&self.slots);
        // Peers come and go; forget the ones nobody is using.
        if slots.len() > 256 {
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        slots
            .entry(peer)
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_REQUESTS_TO_PEER)))
            .clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
