//! The client side: fetching a DAG (or a block, a path, a byte range of a file) from
//! every peer that has it at once.
//!
//! A fetch first gets the target's own block (resolving the path on the way), from the
//! store or from one peer. It then walks what the store already holds below it and
//! queues what is missing: that is how an interrupted fetch resumes, and how a new
//! version of a tree costs only what changed. The queue is cut into requests of about
//! [`BATCH_BYTES`] and handed to peers as they have room (at most
//! [`MAX_REQUESTS_TO_PEER`](super::MAX_REQUESTS_TO_PEER) each), so faster peers serve
//! more; large subtrees are opened one level first when several peers can share them.
//! A peer that vanishes, stalls or says it lacks a block gives its remaining share back
//! to the queue, and a peer left idle at the end takes over the largest share still in
//! flight elsewhere.
//!
//! Each received block is checked against the walk (it must be the block due next) and
//! hashed once, on the blocking pool, before it goes into the fetch's write batch.
//! Nothing becomes visible until the whole DAG is there and durable: the batch is
//! committed, the DAG checked complete and pinned if asked, and only then are the
//! target's block and the blocks of its path written, last.

mod via_bitswap;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cid::Cid;
use libp2p::futures::stream::{FuturesUnordered, StreamExt};
use libp2p::futures::AsyncWriteExt;
use libp2p::{PeerId, Stream};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::serve::Recording;
use super::walk::{self, Item, Walk, WalkError};
use super::wire::{self, BlockFrame, ByteRange, Frame, Request, Scope, Status};
use super::{lock, Exchange, Shared};
use crate::bandwidth::Throttle;
use crate::block::{self, codec, hash_code, BlockError, BlockGet, BlockPut};
use crate::metrics::Protocol;
use crate::store::{GcHold, Store, StoreError, WriteBatch};
use crate::unixfs::pb::PbNode;
use crate::unixfs::reader::{self, ReadError};

/// Estimated bytes of one request.
pub const BATCH_BYTES: u64 = 16 * 1024 * 1024;
/// A missing subtree estimated above this is opened one level first when more than one
/// peer can serve it, so that its parts can go to different peers.
const EXPAND_BYTES: u64 = 4 * BATCH_BYTES;
/// A share in flight is taken over by an idle peer only above this many bytes left.
const STEAL_BYTES: u64 = 2 * 1024 * 1024;
/// ... and only once it has run this long.
const STEAL_AGE: Duration = Duration::from_secs(1);
/// What a block of unknown size is taken to weigh.
const UNKNOWN_SIZE: u64 = 256 * 1024;
/// Blocks of one request being hashed at once.
const HASHING_AHEAD: usize = 4;
/// A request that receives nothing for this long is given up.
const STALL: Duration = Duration::from_secs(20);
/// Opening a stream, dial included.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A peer that said it lacks a block is asked again after this long.
const LACKING_FOR: Duration = Duration::from_secs(5);
/// Failures after which a peer is left out of a fetch.
const MAX_STRIKES: u32 = 3;
/// How often the connected peers are listed again while a fetch runs.
const PEER_REFRESH: Duration = Duration::from_secs(2);
/// Bytes written through one batch before it is committed and a new one started: an
/// interrupted fetch keeps what it had (unnamed, so invisible) and resumes from there.
const COMMIT_BYTES: u64 = 512 * 1024 * 1024;
/// Default for [`FetchRequest::wait`].
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The least time between two DHT lookups for providers of one fetch's root.
const LOOKUP_EVERY: Duration = Duration::from_secs(5);
/// Providers a lookup connects to.
const MAX_PROVIDERS: usize = 8;

/// What to fetch.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub root: Cid,
    /// Below `root` through UnixFS directories; empty for the root itself.
    pub path: String,
    /// Only the blocks of the file that hold these bytes (with [`Scope::Dag`]).
    pub range: Option<ByteRange>,
    /// The target's block alone, or its whole DAG.
    pub scope: Scope,
    /// Pin the target for this reason once its DAG is complete.
    pub pin: Option<String>,
    /// Subtrees the caller knows are complete here: neither walked nor fetched.
    pub prune: Vec<Cid>,
    /// The longest the fetch waits without progress (no block arriving, and nobody
    /// having a block it needs) before it fails naming the block.
    pub wait: Duration,
    /// Counts blocks and bytes as they arrive, for progress displays.
    pub progress: Option<Arc<FetchProgress>>,
    /// Peers asked over bitswap even when they speak `/oermesh/blocks/1`: the origins
    /// of a Pinning Service API request, which that API names as IPFS nodes.
    pub bitswap_peers: Vec<PeerId>,
}

impl FetchRequest {
    /// The whole DAG under `root`.
    pub fn dag(root: Cid) -> FetchRequest {
        FetchRequest {
            root,
            path: String::new(),
            range: None,
            scope: Scope::Dag,
            pin: None,
            prune: Vec::new(),
            wait: DEFAULT_WAIT,
            progress: None,
            bitswap_peers: Vec::new(),
        }
    }

    /// One block.
    pub fn block(cid: Cid) -> FetchRequest {
        FetchRequest {
            scope: Scope::Block,
            ..FetchRequest::dag(cid)
        }
    }
}

/// Blocks and bytes received so far, in all and per peer.
#[derive(Debug, Default)]
pub struct FetchProgress {
    pub blocks: AtomicU64,
    pub bytes: AtomicU64,
    by_peer: Mutex<HashMap<PeerId, u64>>,
}

impl FetchProgress {
    /// Bytes received from `peer`.
    pub fn from_peer(&self, peer: &PeerId) -> u64 {
        lock(&self.by_peer).get(peer).copied().unwrap_or(0)
    }

    fn add(&self, peer: PeerId, bytes: u64) {
        self.blocks.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        *lock(&self.by_peer).entry(peer).or_default() += bytes;
    }
}

/// What a fetch did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    #[serde(with = "crate::block::cid_text")]
    pub root: Cid,
    /// What `path` named: the root of the DAG fetched.
    #[serde(with = "crate::block::cid_text")]
    pub target: Cid,
    /// Blocks and bytes received and stored (0 when everything was here).
    pub blocks: u64,
    pub bytes: u64,
    /// Peers that sent blocks.
    pub peers: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no peer has block {cid} ({detail})")]
    NotFound { cid: Cid, detail: String },
    #[error(
        "block {cid} is not here, and this node has no peer to ask for it \
         (mDNS and static peers are off)"
    )]
    NoPeers { cid: Cid },
    #[error(transparent)]
    Path(ReadError),
    #[error(transparent)]
    Dag(WalkError),
    #[error("cannot store fetched blocks: {0}")]
    Store(StoreError),
    #[error("block {0} is corrupt in the store: run `oermesh verify`")]
    CorruptHere(Cid),
    #[error("invalid fetch: {0}")]
    Invalid(String),
    #[error("the daemon is shutting down")]
    Stopped,
}

impl From<StoreError> for FetchError {
    fn from(err: StoreError) -> Self {
        FetchError::Store(err)
    }
}

impl Exchange {
    /// Fetches what `request` names into the store; see the module documentation.
    pub async fn fetch(&self, request: FetchRequest) -> Result<Fetched, FetchError> {
        if request.path.len() > wire::MAX_PATH_BYTES {
            return Err(FetchError::Invalid(format!(
                "a path longer than {} bytes",
                wire::MAX_PATH_BYTES
            )));
        }
        let fetched = self.fetch_counted(request).await;
        if let Err(FetchError::NotFound { .. }) = fetched {
            self.shared.count_fetch_error(Protocol::Oermesh);
        }
        fetched
    }

    async fn fetch_counted(&self, request: FetchRequest) -> Result<Fetched, FetchError> {
        let mut session = Session::new(self.shared.clone(), &request);
        let head = session.head(&request).await?;
        let target = Item {
            cid: head.target,
            range: request.range,
        };
        if request.scope == Scope::Dag {
            let store = session.shared.store.clone();
            let prune: HashSet<Cid> = request.prune.iter().copied().collect();
            let block = head.target_block.clone();
            let wants = session
                .pool(move || plan(&store, vec![(target, block)], &prune))
                .await??;
            session.queue.extend(wants);
            session.run().await?;
        }
        session.finish(head, &request).await
    }
}

/// The target of a fetch and the blocks fetched to reach it.
struct Head {
    target: Cid,
    /// The target's verified bytes, when they are at hand.
    target_block: Option<Vec<u8>>,
    /// Blocks received for the head (path and target): written last.
    received: Vec<(Cid, Vec<u8>)>,
    from: Option<PeerId>,
}

enum HeadReply {
    Found(Head),
    Lacks(Cid),
    /// The path does not resolve, as the blocks received show.
    Invalid(ReadError),
}

/// What the store says about the head before any peer is asked.
enum Here {
    Found {
        target: Cid,
        block: Option<Vec<u8>>,
    },
    /// This block, on the way to the target or the target itself, is not here.
    Missing(Cid),
    Invalid(ReadError),
}

/// A missing block or subtree, with what it is expected to weigh.
#[derive(Debug, Clone, Copy)]
struct Want {
    item: Item,
    estimate: u64,
}

impl Want {
    fn expandable(&self) -> bool {
        self.item.range.is_none()
            && self.item.cid.codec() != codec::RAW
            && self.estimate > EXPAND_BYTES
    }
}

#[derive(Default)]
struct PeerState {
    /// Requests of this fetch open to the peer.
    active: usize,
    /// It speaks bitswap, not `/oermesh/blocks/1` (an IPFS node).
    bitswap: bool,
    strikes: u32,
    usable: bool,
    sent_blocks: bool,
    rested_until: Option<Instant>,
}

struct Flight {
    /// The first block asked for: a peer that lacks it does not take the share over.
    first: Cid,
    estimate: u64,
    started: Instant,
    received: Arc<AtomicU64>,
    cancel: Option<oneshot::Sender<()>>,
}

struct Session {
    shared: Arc<Shared>,
    sink: Arc<Sink>,
    /// The root named in the request: the key its providers are found under.
    root: Cid,
    /// The DHT lookup in progress (at most one), and when the last one began.
    lookup: JoinSet<()>,
    last_lookup: Option<Instant>,
    wait: Duration,
    prune: Vec<Cid>,
    progress: Option<Arc<FetchProgress>>,
    /// Peers asked over bitswap whatever protocol they speak.
    bitswap_peers: HashSet<PeerId>,
    queue: VecDeque<Want>,
    /// Peers that said they lack a block, and when.
    lacking: HashMap<Cid, Vec<(PeerId, Instant)>>,
    peers: HashMap<PeerId, PeerState>,
    refreshed: Option<Instant>,
    flights: HashMap<u64, Flight>,
    tasks: JoinSet<Outcome>,
    next_id: u64,
    last_progress: Instant,
    frames_seen: u64,
    /// Estimates of the wants handed out, to weigh what comes back.
    estimates: HashMap<Item, u64>,
}

/// How one request ended.
struct Outcome {
    id: u64,
    peer: PeerId,
    blocks: u64,
    /// Items the request did not deliver: asked of someone again.
    remaining: Vec<Item>,
    /// Items the peer said it lacks.
    missing: Vec<Item>,
    /// What opening a subtree found missing below it.
    discovered: Vec<Want>,
    failure: Option<Failure>,
}

enum Failure {
    /// Broke the protocol: cut off.
    Violation(String),
    /// The stream failed or stalled: asked again elsewhere, and counted.
    Stream(String),
    /// The peer does not speak the protocol.
    Unsupported,
    Busy,
    /// The DAG itself cannot be walked: no peer can help.
    Dag(WalkError),
    Store(StoreError),
    Cancelled,
}

impl Session {
    fn new(shared: Arc<Shared>, request: &FetchRequest) -> Session {
        let sink = Arc::new(Sink::new(shared.store.clone()));
        Session {
            shared,
            sink,
            root: request.root,
            lookup: JoinSet::new(),
            last_lookup: None,
            wait: request.wait,
            prune: request.prune.clone(),
            progress: request.progress.clone(),
            bitswap_peers: request.bitswap_peers.iter().copied().collect(),
            queue: VecDeque::new(),
            lacking: HashMap::new(),
            peers: HashMap::new(),
            refreshed: None,
            flights: HashMap::new(),
            tasks: JoinSet::new(),
            next_id: 0,
            last_progress: Instant::now(),
            frames_seen: 0,
            estimates: HashMap::new(),
        }
    }

    async fn pool<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, FetchError> {
        self.shared
            .pool
            .run(job)
            .await
            .map_err(|_| FetchError::Stopped)
    }

    /// Asks the DHT which nodes provide the root, when no connected peer can help.
    /// The lookup connects to the providers it finds; when it ends, the peers are
    /// listed again at once. One lookup at a time, at most one per `LOOKUP_EVERY`, and
    /// none on a node that finds no peers on its own.
    fn look_up_providers(&mut self) {
        if !self.shared.config.discovery
            || !self.lookup.is_empty()
            || self
                .last_lookup
                .is_some_and(|at| at.elapsed() < LOOKUP_EVERY)
        {
            return;
        }
        self.last_lookup = Some(Instant::now());
        let net = self.shared.net.clone();
        let key = crate::daemon::net::wire::content_key(&self.root);
        self.lookup.spawn(async move {
            if let Err(err) = net.find_providers(key, MAX_PROVIDERS).await {
                tracing::debug!(%err, "provider lookup failed");
            }
        });
    }

    /// Lists the connected peers again when it is time to.
    async fn refresh_peers(&mut self) {
        if self.lookup.try_join_next().is_some() {
            self.refreshed = None;
        }
        if self.refreshed.is_some_and(|at| at.elapsed() < PEER_REFRESH) {
            return;
        }
        self.refreshed = Some(Instant::now());
        let Ok(connected) = self.shared.net.peers().await else {
            return;
        };
        // Peers of another protocol version (other oermesh versions, IPFS nodes) are
        // asked over bitswap alone, or not at all without it.
        let bitswap = self.shared.bitswap.is_some();
        let connected: HashMap<PeerId, bool> = connected
            .into_iter()
            .filter(|p| bitswap || p.compatible != Some(false))
            .map(|p| (p.peer_id, p.compatible == Some(false)))
            .collect();
        for (peer, foreign) in &connected {
            let state = self.peers.entry(*peer).or_insert_with(|| PeerState {
                usable: true,
                ..PeerState::default()
            });
            state.bitswap |= *foreign || (bitswap && self.bitswap_peers.contains(peer));
        }
        for (peer, state) in &mut self.peers {
            let reachable = connected.contains_key(peer) && self.shared.penalty(peer).is_none();
            state.usable = reachable && state.strikes < MAX_STRIKES;
        }
    }

    fn usable_peers(&self) -> impl Iterator<Item = (&PeerId, &PeerState)> {
        let now = Instant::now();
        self.peers.iter().filter(move |(_, state)| {
            state.usable && state.rested_until.is_none_or(|until| until <= now)
        })
    }

    fn lacked_by(&self, cid: &Cid, peer: &PeerId) -> bool {
        self.lacking.get(cid).is_some_and(|peers| {
            peers
                .iter()
                .any(|(p, when)| p == peer && when.elapsed() < LACKING_FOR)
        })
    }

    fn note_lacking(&mut self, cid: Cid, peer: PeerId) {
        let peers = self.lacking.entry(cid).or_default();
        peers.retain(|(p, when)| *p != peer && when.elapsed() < LACKING_FOR);
        peers.push((peer, Instant::now()));
    }

    /// Whether the fetch has waited long enough for a peer that has what it needs.
    /// A node that finds no peers on its own and has none now will not get one by
    /// waiting (only by being dialled): it says so at once.
    fn waited_out(&self) -> bool {
        self.last_progress.elapsed() >= self.wait
            || (!self.shared.config.discovery && self.peers.is_empty())
    }

    fn not_found(&self, cid: Cid) -> FetchError {
        let asked = self.peers.len();
        if asked == 0 && !self.shared.config.discovery {
            return FetchError::NoPeers { cid };
        }
        let waited = self.last_progress.elapsed().as_secs();
        let detail = match asked {
            0 => format!("not connected to any peer; waited {waited} s"),
            1 => format!("asked the one peer connected; waited {waited} s"),
            _ => format!("asked {asked} peers; waited {waited} s"),
        };
        FetchError::NotFound { cid, detail }
    }

    fn failed(&mut self, peer: PeerId, failure: Failure) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        if matches!(failure, Failure::Violation(_) | Failure::Stream(_)) {
            self.shared.count_fetch_error(if state.bitswap {
                Protocol::Bitswap
            } else {
                Protocol::Oermesh
            });
        }
        match failure {
            Failure::Violation(reason) => {
                state.usable = false;
                state.strikes = MAX_STRIKES;
                self.shared.cut_off(peer, reason);
            }
            // A peer without our protocol may be an IPFS node: asked over bitswap next.
            Failure::Unsupported if !state.bitswap && self.shared.bitswap.is_some() => {
                state.bitswap = true;
            }
            Failure::Unsupported => {
                state.usable = false;
                state.strikes = MAX_STRIKES;
            }
            Failure::Stream(reason) => {
                tracing::debug!(%peer, %reason, "block request failed");
                state.strikes += 1;
                state.usable = state.strikes < MAX_STRIKES;
                state.rested_until = Some(Instant::now() + Duration::from_secs(1));
            }
            Failure::Busy => state.rested_until = Some(Instant::now() + Duration::from_secs(1)),
            Failure::Cancelled | Failure::Dag(_) | Failure::Store(_) => {}
        }
    }

    // ---- the head: the target's block, through the path ----

    async fn head(&mut self, request: &FetchRequest) -> Result<Head, FetchError> {
        let store = self.shared.store.clone();
        let (root, path) = (request.root, request.path.clone());
        match self
            .pool(move || resolve_here(&store, &root, &path))
            .await??
        {
            Here::Found { target, block } => {
                return Ok(Head {
                    target,
                    target_block: block,
                    received: Vec::new(),
                    from: None,
                })
            }
            Here::Invalid(err) => return Err(FetchError::Path(err)),
            Here::Missing(_) => {}
        }
        let mut wanted = request.root;
        loop {
            self.refresh_peers().await;
            let candidate = self
                .usable_peers()
                .map(|(peer, _)| *peer)
                .find(|peer| !self.lacked_by(&wanted, peer));
            let Some(peer) = candidate else {
                self.look_up_providers();
                if self.waited_out() {
                    return Err(self.not_found(wanted));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            };
            let (reply, protocol) = match (&self.shared.bitswap, self.peers.get(&peer)) {
                (Some(bitswap), Some(state)) if state.bitswap => (
                    self.head_from_bitswap(bitswap, peer, request).await,
                    Protocol::Bitswap,
                ),
                _ => (self.head_from(peer, request).await, Protocol::Oermesh),
            };
            match reply {
                Ok(HeadReply::Found(head)) => {
                    self.last_progress = Instant::now();
                    for (_, data) in &head.received {
                        let bytes = data.len() as u64;
                        self.shared.count_fetched(protocol, bytes);
                        if let Some(progress) = &self.progress {
                            progress.add(peer, bytes);
                        }
                    }
                    return Ok(head);
                }
                Ok(HeadReply::Lacks(cid)) => {
                    wanted = cid;
                    self.note_lacking(cid, peer);
                }
                Ok(HeadReply::Invalid(err)) => return Err(FetchError::Path(err)),
                Err(failure) => self.failed(peer, failure),
            }
        }
    }

    async fn head_from(&self, peer: PeerId, request: &FetchRequest) -> Result<HeadReply, Failure> {
        let path = request.path.trim_matches('/');
        let wire_request = Request {
            roots: vec![request.root],
            scope: Scope::Block,
            path: (!path.is_empty()).then(|| path.to_string()),
            range: None,
            prune: Vec::new(),
        };
        let slots = self.shared.slots(peer);
        let _slot = slots
            .acquire_owned()
            .await
            .map_err(|_| Failure::Cancelled)?;
        let mut stream = open(&self.shared, peer, &wire_request).await?;
        let mut received: Vec<(Cid, Vec<u8>)> = Vec::new();
        let mut path_bytes = 0;
        let mut target = path.is_empty().then_some(request.root);
        let mut target_block = None;
        let mut lacks = None;
        loop {
            let download = &self.shared.config.bandwidth.download;
            match (next_frame(&mut stream, download).await?, target) {
                (Frame::Block(block), None) if lacks.is_none() => {
                    path_bytes += block.data().len();
                    if received.len() >= wire::MAX_PATH_BLOCKS
                        || path_bytes > wire::MAX_PATH_BLOCK_BYTES
                    {
                        return Err(Failure::Violation("a path of too many blocks".into()));
                    }
                    let cid = block.cid;
                    let data = self.verified(block).await?;
                    received.push((cid, data));
                }
                (Frame::Resolved(cid), None) if lacks.is_none() => {
                    match self.check_path(request, &received).await? {
                        Ok(resolved) if resolved == cid => target = Some(cid),
                        _ => {
                            return Err(Failure::Violation(
                                "a path resolution its blocks do not confirm".into(),
                            ))
                        }
                    }
                }
                (Frame::Missing(cid), None) if lacks.is_none() => {
                    // Believable only where the blocks sent stop short of the path.
                    match self.check_path(request, &received).await? {
                        Err(ReadError::NotFound(needed)) if needed == cid => lacks = Some(cid),
                        _ => return Err(Failure::Violation("a wrong missing block".into())),
                    }
                }
                (Frame::End(end), None) => {
                    if let Some(cid) = lacks {
                        return Ok(HeadReply::Lacks(cid));
                    }
                    if matches!(end.status, Status::Busy | Status::Truncated) {
                        return Err(Failure::Busy);
                    }
                    // A path that does not resolve must be shown by the blocks sent.
                    return match self.check_path(request, &received).await? {
                        Err(err) if !matches!(err, ReadError::NotFound(_)) => {
                            Ok(HeadReply::Invalid(err))
                        }
                        _ => Err(Failure::Violation(
                            "a path error its blocks do not show".into(),
                        )),
                    };
                }
                (Frame::Block(block), Some(cid))
                    if block.cid == cid && target_block.is_none() && lacks.is_none() =>
                {
                    let data = self.verified(block).await?;
                    received.push((cid, data.clone()));
                    target_block = Some(data);
                }
                (Frame::Missing(missing), Some(cid))
                    if missing == cid && target_block.is_none() && lacks.is_none() =>
                {
                    lacks = Some(cid);
                }
                (Frame::End(end), Some(cid)) => {
                    return match (end.status, target_block, lacks) {
                        (Status::Complete, Some(block), None) => Ok(HeadReply::Found(Head {
                            target: cid,
                            target_block: Some(block),
                            received,
                            from: Some(peer),
                        })),
                        (Status::Complete, None, Some(cid)) => Ok(HeadReply::Lacks(cid)),
                        (Status::Busy | Status::Truncated, _, _) => Err(Failure::Busy),
                        _ => Err(Failure::Violation("an end before the block".into())),
                    };
                }
                _ => return Err(Failure::Violation("an unrequested frame".into())),
            }
        }
    }

    /// Hashes a block on the pool; a mismatch is the peer's violation.
    async fn verified(&self, block: BlockFrame) -> Result<Vec<u8>, Failure> {
        let checked = self
            .shared
            .pool
            .run(move || {
                block::verify(&block.cid.clone(), block.data()).map(|()| block.into_data())
            })
            .await
            .map_err(|_| Failure::Cancelled)?;
        checked.map_err(|err| Failure::Violation(err.to_string()))
    }

    /// Resolves the request's path over the blocks received, which must be exactly the
    /// blocks the resolution reads, in the order it reads them.
    async fn check_path(
        &self,
        request: &FetchRequest,
        received: &[(Cid, Vec<u8>)],
    ) -> Result<Result<Cid, ReadError>, Failure> {
        let order: Vec<Cid> = received.iter().map(|(cid, _)| *cid).collect();
        let blocks: HashMap<Cid, Vec<u8>> = received.iter().cloned().collect();
        let (root, path) = (request.root, request.path.clone());
        let (read, result) = self
            .shared
            .pool
            .run(move || {
                let recording = Recording::new(Verified(blocks));
                let result = reader::resolve(&recording, &root, &path);
                let read: Vec<Cid> = recording
                    .read
                    .into_inner()
                    .into_iter()
                    .map(|(cid, _)| cid)
                    .collect();
                (read, result)
            })
            .await
            .map_err(|_| Failure::Cancelled)?;
        if read == order {
            Ok(result)
        } else {
            Err(Failure::Violation(
                "path blocks other than those the resolution reads".into(),
            ))
        }
    }

    // ---- the body: everything missing below the target ----

    async fn run(&mut self) -> Result<(), FetchError> {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let frames = self.sink.frames.load(Ordering::Relaxed);
            if frames != self.frames_seen {
                self.frames_seen = frames;
                self.last_progress = Instant::now();
            }
            self.refresh_peers().await;
            self.assign();
            if self.queue.is_empty() && self.flights.is_empty() {
                return Ok(());
            }
            if self.flights.is_empty() {
                // Nobody connected has the rest.
                self.look_up_providers();
            }
            self.take_over_tail();
            if self.flights.is_empty() && self.waited_out() {
                if let Some(want) = self.queue.front() {
                    return Err(self.not_found(want.item.cid));
                }
            }
            if self.sink.due_for_commit() {
                let sink = self.sink.clone();
                self.pool(move || sink.commit_part()).await??;
            }
            tokio::select! {
                Some(joined) = self.tasks.join_next() => match joined {
                    Ok(outcome) => self.settle(outcome)?,
                    Err(_) => return Err(FetchError::Stopped),
                },
                _ = tick.tick() => {}
            }
        }
    }

    /// Hands queued wants to the peers with room, least busy first.
    fn assign(&mut self) {
        while !self.queue.is_empty() {
            let shared = self.usable_peers().count() > 1;
            let mut peers: Vec<(PeerId, usize)> = self
                .usable_peers()
                .filter(|(_, state)| state.active < super::MAX_REQUESTS_TO_PEER)
                .map(|(peer, state)| (*peer, state.active))
                .collect();
            peers.sort_by_key(|(_, active)| *active);
            let next = peers
                .into_iter()
                .find_map(|(peer, _)| Some((peer, self.take_batch(&peer, shared)?)));
            match next {
                Some((peer, (scope, wants))) => self.launch(peer, scope, wants),
                None => return,
            }
        }
    }

    /// The next request for `peer`: a subtree to open, a range, or a run of whole
    /// subtrees up to [`BATCH_BYTES`] and [`wire::MAX_ROOTS`].
    fn take_batch(&mut self, peer: &PeerId, shared: bool) -> Option<(Scope, Vec<Want>)> {
        let first = self
            .queue
            .iter()
            .position(|want| !self.lacked_by(&want.item.cid, peer))?;
        let want = self.queue[first];
        let alone = want.item.range.is_some() || (shared && want.expandable());
        if alone {
            self.queue.remove(first);
            let scope = if want.item.range.is_some() {
                Scope::Dag
            } else {
                Scope::Block
            };
            return Some((scope, vec![want]));
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut index = first;
        while index < self.queue.len() && batch.len() < wire::MAX_ROOTS && bytes < BATCH_BYTES {
            let want = self.queue[index];
            if self.lacked_by(&want.item.cid, peer)
                || want.item.range.is_some()
                || (shared && want.expandable())
            {
                index += 1;
                continue;
            }
            bytes += want.estimate;
            self.queue.remove(index);
            batch.push(want);
        }
        Some((Scope::Dag, batch))
    }

    fn launch(&mut self, peer: PeerId, scope: Scope, wants: Vec<Want>) {
        let id = self.next_id;
        self.next_id += 1;
        for want in &wants {
            self.estimates.insert(want.item, want.estimate);
        }
        let (cancel, cancelled) = oneshot::channel();
        let received = Arc::new(AtomicU64::new(0));
        self.flights.insert(
            id,
            Flight {
                first: wants[0].item.cid,
                estimate: wants.iter().map(|want| want.estimate).sum(),
                started: Instant::now(),
                received: received.clone(),
                cancel: Some(cancel),
            },
        );
        let mut bitswap = false;
        if let Some(state) = self.peers.get_mut(&peer) {
            state.active += 1;
            bitswap = state.bitswap;
        }
        let request = Requested {
            id,
            peer,
            bitswap,
            scope,
            items: wants.iter().map(|want| want.item).collect(),
            prune: self.prune.clone(),
            received,
            progress: self.progress.clone(),
        };
        let (shared, sink) = (self.shared.clone(), self.sink.clone());
        self.tasks.spawn(request.run(shared, sink, cancelled));
    }

    /// A peer left with nothing to do takes over the largest share still in flight:
    /// that request is stopped and what it had left goes back to the queue.
    fn take_over_tail(&mut self) {
        if !self.queue.is_empty() {
            return;
        }
        let idle: Vec<PeerId> = self
            .usable_peers()
            .filter(|(_, state)| state.active == 0)
            .map(|(peer, _)| *peer)
            .collect();
        if idle.is_empty() {
            return;
        }
        let largest = self
            .flights
            .iter()
            .filter(|(_, flight)| {
                flight.cancel.is_some()
                    && flight.started.elapsed() >= STEAL_AGE
                    && idle.iter().any(|peer| !self.lacked_by(&flight.first, peer))
            })
            .map(|(id, flight)| {
                let received = flight.received.load(Ordering::Relaxed);
                (*id, flight.estimate.saturating_sub(received))
            })
            .filter(|(_, left)| *left >= STEAL_BYTES)
            .max_by_key(|(_, left)| *left);
        if let Some((id, _)) = largest {
            if let Some(cancel) = self.flights.get_mut(&id).and_then(|f| f.cancel.take()) {
                let _ = cancel.send(());
            }
        }
    }

    fn settle(&mut self, outcome: Outcome) -> Result<(), FetchError> {
        self.flights.remove(&outcome.id);
        let Outcome {
            peer,
            blocks,
            remaining,
            missing,
            discovered,
            failure,
            ..
        } = outcome;
        if let Some(state) = self.peers.get_mut(&peer) {
            state.active = state.active.saturating_sub(1);
            state.sent_blocks |= blocks > 0;
            if blocks > 0 {
                state.strikes = 0;
            }
        }
        // What comes back goes to the front, in walk order: it was due first.
        let mut returned: Vec<Want> = discovered;
        for item in remaining {
            returned.push(self.want_for(item));
        }
        for item in missing {
            self.note_lacking(item.cid, peer);
            returned.push(self.want_for(item));
        }
        for want in returned.into_iter().rev() {
            self.queue.push_front(want);
        }
        match failure {
            Some(Failure::Dag(err)) => Err(FetchError::Dag(err)),
            Some(Failure::Store(err)) => Err(FetchError::Store(err)),
            Some(failure) => {
                self.failed(peer, failure);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn want_for(&self, item: Item) -> Want {
        let estimate = self
            .estimates
            .get(&item)
            .copied()
            .unwrap_or_else(|| item.range.map_or(UNKNOWN_SIZE, |range| range.length));
        Want { item, estimate }
    }

    // ---- the end ----

    async fn finish(mut self, head: Head, request: &FetchRequest) -> Result<Fetched, FetchError> {
        self.tasks.shutdown().await;
        let sink = self.sink.clone();
        let complete_dag = request.scope == Scope::Dag && request.range.is_none();
        let (target, pin) = (head.target, request.pin.clone());
        let received = head.received;
        let (blocks, bytes) = self
            .pool(move || sink.finish(received, target, complete_dag, pin.as_deref()))
            .await??;
        let mut peers: HashSet<PeerId> = self
            .peers
            .iter()
            .filter(|(_, state)| state.sent_blocks)
            .map(|(peer, _)| *peer)
            .collect();
        peers.extend(head.from);
        Ok(Fetched {
            root: request.root,
            target,
            blocks,
            bytes,
            peers: peers.len(),
        })
    }
}

/// One request to one peer, run on its own task.
struct Requested {
    id: u64,
    peer: PeerId,
    /// Asked over bitswap rather than `/oermesh/blocks/1`.
    bitswap: bool,
    scope: Scope,
    items: Vec<Item>,
    prune: Vec<Cid>,
    /// Bytes received for this request.
    received: Arc<AtomicU64>,
    progress: Option<Arc<FetchProgress>>,
}

/// A block being hashed and stored on the pool: a task of its own, so that it runs
/// while the next frames are read.
type Hashing = tokio::task::JoinHandle<(Item, Result<Stored, PutError>)>;

impl Requested {
    async fn run(
        self,
        shared: Arc<Shared>,
        sink: Arc<Sink>,
        cancelled: oneshot::Receiver<()>,
    ) -> Outcome {
        let mut outcome = Outcome {
            id: self.id,
            peer: self.peer,
            blocks: 0,
            remaining: Vec::new(),
            missing: Vec::new(),
            discovered: Vec::new(),
            failure: None,
        };
        if let (true, Some(bitswap)) = (self.bitswap, &shared.bitswap) {
            let result = self
                .exchange_bitswap(bitswap, &shared, &sink, &mut outcome, cancelled)
                .await;
            if let Err(failure) = result {
                outcome.failure.get_or_insert(failure);
            }
            return outcome;
        }
        let mut walk = Walk::new(self.scope, &self.items, &self.prune);
        let mut hashing: FuturesUnordered<Hashing> = FuturesUnordered::new();
        let result = self
            .exchange(
                &shared,
                &sink,
                &mut walk,
                &mut outcome,
                &mut hashing,
                cancelled,
            )
            .await;
        // Every block handed to the pool is settled before the outcome is: a block that
        // fails its hash is asked for again.
        while let Some(joined) = hashing.next().await {
            if let Ok((item, stored)) = joined {
                self.settle_block(item, stored, &mut outcome);
            }
        }
        if let Err(failure) = result {
            outcome.failure.get_or_insert(failure);
        }
        outcome.remaining.extend(walk.remaining());
        outcome
    }

    fn settle_block(&self, item: Item, stored: Result<Stored, PutError>, outcome: &mut Outcome) {
        match stored {
            Ok(_) => outcome.blocks += 1,
            Err(PutError::Corrupt(reason)) => {
                outcome.remaining.push(item);
                outcome.failure = Some(Failure::Violation(reason));
            }
            Err(PutError::Store(err)) => {
                outcome.remaining.push(item);
                outcome.failure = Some(Failure::Store(err));
            }
            Err(PutError::Stopped) => {
                outcome.remaining.push(item);
                outcome.failure.get_or_insert(Failure::Cancelled);
            }
        }
    }

    async fn exchange(
        &self,
        shared: &Arc<Shared>,
        sink: &Arc<Sink>,
        walk: &mut Walk,
        outcome: &mut Outcome,
        hashing: &mut FuturesUnordered<Hashing>,
        mut cancelled: oneshot::Receiver<()>,
    ) -> Result<(), Failure> {
        let slots = shared.slots(self.peer);
        let _slot = tokio::select! {
            slot = slots.acquire_owned() => slot.map_err(|_| Failure::Cancelled)?,
            _ = &mut cancelled => return Err(Failure::Cancelled),
        };
        let request = Request {
            roots: self.items.iter().map(|item| item.cid).collect(),
            scope: self.scope,
            path: None,
            range: match self.items.as_slice() {
                [only] => only.range,
                _ => None,
            },
            prune: self.prune.clone(),
        };
        let mut stream = tokio::select! {
            stream = open(shared, self.peer, &request) => stream?,
            _ = &mut cancelled => return Err(Failure::Cancelled),
        };
        loop {
            let frame = tokio::select! {
                biased;
                _ = &mut cancelled => return Err(Failure::Cancelled),
                frame = next_frame(&mut stream, &shared.config.bandwidth.download) => frame?,
            };
            match frame {
                Frame::Block(block) => {
                    let item = self.due(walk, &block.cid, outcome)?;
                    let bytes = block.data().len() as u64;
                    self.received.fetch_add(bytes, Ordering::Relaxed);
                    sink.frames.fetch_add(1, Ordering::Relaxed);
                    let opens = self.scope == Scope::Block && item.cid.codec() != codec::RAW;
                    if (self.scope == Scope::Dag && item.cid.codec() != codec::RAW) || opens {
                        // Its links decide what comes next: wait for its hash.
                        let job_sink = sink.clone();
                        let stored = shared
                            .pool
                            .run(move || job_sink.put(block, true))
                            .await
                            .unwrap_or(Err(PutError::Stopped));
                        let data = match &stored {
                            Ok(Stored::Verified(data)) => data.clone(),
                            _ => Vec::new(),
                        };
                        let failed = stored.is_err();
                        self.settle_block(item, stored, outcome);
                        if failed {
                            return Ok(());
                        }
                        if opens {
                            let store = shared.store.clone();
                            let prune: HashSet<Cid> = self.prune.iter().copied().collect();
                            let planned = shared
                                .pool
                                .run(move || plan(&store, vec![(item, Some(data))], &prune))
                                .await
                                .map_err(|_| Failure::Cancelled)?;
                            outcome.discovered = planned.map_err(|err| match err {
                                FetchError::Dag(err) => Failure::Dag(err),
                                FetchError::Store(err) => Failure::Store(err),
                                other => Failure::Stream(other.to_string()),
                            })?;
                        } else {
                            walk.descend(&item, &data).map_err(Failure::Dag)?;
                        }
                    } else {
                        if hashing.len() >= HASHING_AHEAD {
                            if let Some(Ok((item, stored))) = hashing.next().await {
                                let failed = stored.is_err();
                                self.settle_block(item, stored, outcome);
                                if failed {
                                    return Ok(());
                                }
                            }
                        }
                        let (pool, job_sink) = (shared.pool.clone(), sink.clone());
                        hashing.push(tokio::spawn(async move {
                            let stored = pool
                                .run(move || job_sink.put(block, false))
                                .await
                                .unwrap_or(Err(PutError::Stopped));
                            (item, stored)
                        }));
                    }
                    shared.count_fetched(Protocol::Oermesh, bytes);
                    if let Some(progress) = &self.progress {
                        progress.add(self.peer, bytes);
                    }
                }
                Frame::Missing(cid) => {
                    let item = self.due(walk, &cid, outcome)?;
                    outcome.missing.push(item);
                }
                Frame::Resolved(_) => {
                    return Err(Failure::Violation(
                        "a path answer to a request without one".into(),
                    ))
                }
                Frame::End(end) => {
                    return match end.status {
                        Status::Complete if walk.remaining().is_empty() => Ok(()),
                        Status::Complete => Err(Failure::Violation(
                            "a response that ended before its walk".into(),
                        )),
                        Status::Truncated => Ok(()),
                        Status::Busy => Err(Failure::Busy),
                        Status::Error => Err(Failure::Stream(format!(
                            "the peer could not serve the request: {}",
                            end.message.unwrap_or_default()
                        ))),
                    };
                }
                Frame::Request(_) => {
                    return Err(Failure::Violation("a request sent to the client".into()))
                }
            }
        }
    }

    /// The item the walk expects next, which `cid` must be.
    fn due(&self, walk: &mut Walk, cid: &Cid, outcome: &mut Outcome) -> Result<Item, Failure> {
        let item = walk.next_item().map_err(Failure::Dag)?.ok_or_else(|| {
            Failure::Violation(format!("sent block {cid}, which was not requested"))
        })?;
        if item.cid != *cid {
            outcome.remaining.push(item);
            return Err(Failure::Violation(format!(
                "sent block {cid} where {} was due",
                item.cid
            )));
        }
        Ok(item)
    }
}

async fn open(shared: &Shared, peer: PeerId, request: &Request) -> Result<Stream, Failure> {
    let mut control = shared.control.clone();
    let opened = tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, wire::PROTOCOL))
        .await
        .map_err(|_| Failure::Stream("no stream within the time allowed".into()))?;
    let mut stream = match opened {
        Ok(stream) => stream,
        Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_)) => {
            return Err(Failure::Unsupported)
        }
        Err(err) => return Err(Failure::Stream(err.to_string())),
    };
    let sent = async {
        wire::write_frame(&mut stream, &Frame::Request(request.clone())).await?;
        stream.flush().await
    };
    tokio::time::timeout(OPEN_TIMEOUT, sent)
        .await
        .map_err(|_| Failure::Stream("the request could not be sent in time".into()))?
        .map_err(|err| Failure::Stream(err.to_string()))?;
    Ok(stream)
}

/// The next frame of an answer; a block's bytes are spent from the download cap before
/// the next frame is read, so a capped node slows its peers down by not reading.
async fn next_frame(stream: &mut Stream, download: &Throttle) -> Result<Frame, Failure> {
    let frame = next_frame_now(stream).await?;
    if let Frame::Block(block) = &frame {
        download.spend(block.data().len()).await;
    }
    Ok(frame)
}

async fn next_frame_now(stream: &mut Stream) -> Result<Frame, Failure> {
    match tokio::time::timeout(STALL, wire::read_frame(stream, wire::MAX_RESPONSE_FRAME)).await {
        Err(_) => Err(Failure::Stream(format!(
            "nothing received for {} s",
            STALL.as_secs()
        ))),
        Ok(Ok(Some(frame))) => Ok(frame),
        Ok(Ok(None)) => Err(Failure::Stream("the stream closed before its end".into())),
        Ok(Err(err)) if err.is_violation() => Err(Failure::Violation(err.to_string())),
        Ok(Err(err)) => Err(Failure::Stream(err.to_string())),
    }
}

/// What the store holds already below `start`: walks the present blocks (reading
/// inner nodes, only looking up raw leaves) and returns what is missing.
fn plan(
    store: &Store,
    start: Vec<(Item, Option<Vec<u8>>)>,
    prune: &HashSet<Cid>,
) -> Result<Vec<Want>, FetchError> {
    let mut wants = Vec::new();
    let mut seen: HashSet<Item> = HashSet::new();
    let mut stack: Vec<(Item, u64, Option<Vec<u8>>)> = start
        .into_iter()
        .rev()
        .map(|(item, data)| (item, UNKNOWN_SIZE, data))
        .collect();
    while let Some((item, estimate, data)) = stack.pop() {
        if prune.contains(&item.cid) || seen.contains(&Item::whole(item.cid)) || !seen.insert(item)
        {
            continue;
        }
        let data = match data {
            Some(data) => data,
            None if item.cid.hash().code() == hash_code::IDENTITY => {
                item.cid.hash().digest().to_vec()
            }
            None if item.cid.codec() == codec::RAW => {
                if !store.has(&item.cid)? {
                    wants.push(Want { item, estimate });
                }
                continue;
            }
            None => match store.get_block(&item.cid) {
                Ok(data) => data,
                Err(BlockError::NotFound(_)) => {
                    wants.push(Want { item, estimate });
                    continue;
                }
                Err(BlockError::Corrupt(cid)) => return Err(FetchError::CorruptHere(cid)),
                Err(err) => return Err(FetchError::Store(err.into())),
            },
        };
        let children = estimated_children(&item, &data).map_err(FetchError::Dag)?;
        for (child, estimate) in children.into_iter().rev() {
            stack.push((child, estimate, None));
        }
    }
    Ok(wants)
}

/// The children of `item` with what each is expected to weigh: the part of a range, or
/// the dag-pb link's `Tsize` (the bytes of the child's subtree).
fn estimated_children(item: &Item, data: &[u8]) -> Result<Vec<(Item, u64)>, WalkError> {
    let children = walk::children(item, data)?;
    let mut sizes: HashMap<Cid, u64> = HashMap::new();
    if item.cid.codec() == codec::DAG_PB {
        if let Ok(node) = PbNode::decode(data) {
            for link in node.links {
                if let Some(size) = link.tsize {
                    sizes.entry(link.cid).or_insert(size);
                }
            }
        }
    }
    Ok(children
        .into_iter()
        .map(|child| {
            let estimate = child
                .range
                .map(|range| range.length)
                .or_else(|| sizes.get(&child.cid).copied())
                .unwrap_or(UNKNOWN_SIZE);
            (child, estimate)
        })
        .collect())
}

/// Resolves the head in the store, if the store has all of it.
fn resolve_here<B: BlockGet>(store: &B, root: &Cid, path: &str) -> Result<Here, FetchError> {
    let path = path.trim_matches('/');
    let target = if path.is_empty() {
        *root
    } else {
        match reader::resolve(store, root, path) {
            Ok(target) => target,
            Err(ReadError::NotFound(cid)) => return Ok(Here::Missing(cid)),
            Err(ReadError::Corrupt(cid)) => return Err(FetchError::CorruptHere(cid)),
            Err(err) => return Ok(Here::Invalid(err)),
        }
    };
    match crate::links::get_verified(store, &target) {
        Ok(block) => Ok(Here::Found {
            target,
            block: Some(block),
        }),
        Err(BlockError::NotFound(_)) => Ok(Here::Missing(target)),
        Err(BlockError::Corrupt(cid)) => Err(FetchError::CorruptHere(cid)),
        Err(err) => Err(FetchError::Store(err.into())),
    }
}

/// Whether the DAG `path` names below `root` is all here: the target, or the first
/// block missing. For nodes without a network, which can only look.
pub fn check_here(store: &Store, root: &Cid, path: &str) -> Result<Result<Cid, Cid>, FetchError> {
    match resolve_here(store, root, path)? {
        Here::Found { target, block } => {
            let wants = plan(store, vec![(Item::whole(target), block)], &HashSet::new())?;
            Ok(match wants.first() {
                Some(want) => Err(want.item.cid),
                None => Ok(target),
            })
        }
        Here::Missing(cid) => Ok(Err(cid)),
        Here::Invalid(err) => Err(FetchError::Path(err)),
    }
}

/// Blocks already checked against their CIDs.
struct Verified(HashMap<Cid, Vec<u8>>);

impl BlockGet for Verified {
    fn get_block(&self, cid: &Cid) -> Result<Vec<u8>, BlockError> {
        self.0.get(cid).cloned().ok_or(BlockError::NotFound(*cid))
    }
}

/// How a received block was taken.
enum Stored {
    /// Hashed and written (or already here); its bytes, when the caller needs them.
    Verified(Vec<u8>),
    Skipped,
}

enum PutError {
    /// The bytes are not what the CID names: the sender's violation.
    Corrupt(String),
    Store(StoreError),
    Stopped,
}

/// Where a fetch's blocks go: its write batch, committed in parts on long fetches, and
/// what has been received so far.
struct Sink {
    store: Store,
    batch: std::sync::RwLock<Option<WriteBatch>>,
    /// Committed parts: their blocks are kept from gc until the fetch names them.
    holds: Mutex<Vec<GcHold>>,
    received: Mutex<HashSet<Cid>>,
    blocks: AtomicU64,
    bytes: AtomicU64,
    uncommitted: AtomicU64,
    /// Frames received by every request, for telling progress from a wait.
    frames: AtomicU64,
}

impl Sink {
    fn new(store: Store) -> Sink {
        Sink {
            batch: std::sync::RwLock::new(Some(store.batch())),
            store,
            holds: Mutex::default(),
            received: Mutex::default(),
            blocks: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            uncommitted: AtomicU64::new(0),
            frames: AtomicU64::new(0),
        }
    }

    /// Hashes and stores a received block. With `keep`, the verified bytes come back
    /// (the caller follows their links); otherwise a block already received or stored
    /// is dropped unhashed.
    fn put(&self, block: BlockFrame, keep: bool) -> Result<Stored, PutError> {
        let cid = block.cid;
        let known = lock(&self.received).contains(&cid)
            || (cid.codec() == codec::RAW && self.store.has(&cid).map_err(PutError::Store)?);
        if known && !keep {
            return Ok(Stored::Skipped);
        }
        block::verify(&cid, block.data()).map_err(|err| PutError::Corrupt(err.to_string()))?;
        if !known {
            self.put_checked(&cid, block.data())?;
        }
        Ok(if keep {
            Stored::Verified(block.into_data())
        } else {
            Stored::Skipped
        })
    }

    /// Stores a block already checked against its CID, unless it was received before.
    fn put_checked(&self, cid: &Cid, data: &[u8]) -> Result<(), PutError> {
        if lock(&self.received).contains(cid) {
            return Ok(());
        }
        let batch = self.batch.read().unwrap_or_else(|p| p.into_inner());
        let batch = batch.as_ref().ok_or(PutError::Stopped)?;
        batch
            .put_hashed_block(cid, data)
            .map_err(|err| PutError::Store(err.into()))?;
        lock(&self.received).insert(*cid);
        let bytes = data.len() as u64;
        self.blocks.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.uncommitted.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    fn due_for_commit(&self) -> bool {
        self.uncommitted.load(Ordering::Relaxed) >= COMMIT_BYTES
    }

    /// Makes what has arrived durable, so that an interrupted fetch need not fetch it
    /// again. Nothing names it yet: readers do not reach it before the fetch ends.
    fn commit_part(&self) -> Result<(), FetchError> {
        let mut batch = self.batch.write().unwrap_or_else(|p| p.into_inner());
        let Some(old) = batch.replace(self.store.batch()) else {
            return Err(FetchError::Stopped);
        };
        self.uncommitted.store(0, Ordering::Relaxed);
        let hold = old.commit_held()?;
        lock(&self.holds).push(hold);
        Ok(())
    }

    /// Writes the head blocks, commits, checks that the DAG is complete and pins it.
    fn finish(
        &self,
        head: Vec<(Cid, Vec<u8>)>,
        target: Cid,
        complete_dag: bool,
        pin: Option<&str>,
    ) -> Result<(u64, u64), FetchError> {
        let batch = self
            .batch
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or(FetchError::Stopped)?;
        for (cid, data) in &head {
            batch
                .put_hashed_block(cid, data)
                .map_err(|err| FetchError::Store(err.into()))?;
            self.blocks.fetch_add(1, Ordering::Relaxed);
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        let hold = batch.commit_held()?;
        if complete_dag {
            let missing = hold.protect_dag(&target)?;
            if let Some(first) = missing.first() {
                return Err(FetchError::NotFound {
                    cid: *first,
                    detail: format!("{} blocks of {target} are still missing", missing.len()),
                });
            }
            if let Some(reason) = pin {
                hold.pin(&target, reason)?;
            }
        } else if let Some(reason) = pin {
            hold.pin_dag(&target, reason)?;
        }
        lock(&self.holds).clear();
        Ok((
            self.blocks.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        ))
    }
}
