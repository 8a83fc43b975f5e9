//! The node's peer-to-peer side. One task, the [`EventLoop`], owns the libp2p `Swarm`;
//! the rest of the daemon talks to it through a cloneable [`Client`] that sends
//! commands over a bounded channel and waits for each answer on its own oneshot, and
//! hears what happens on the network from a bounded broadcast of [`NetEvent`]s.
//! Nothing else touches the swarm, so it needs no lock, and the loop does no store
//! work: whatever needs the repository goes to the daemon's blocking pool.
//!
//! Peers are found four ways: static peers from the config (dialled at start and
//! redialled with backoff whenever the connection drops, since many school networks
//! block multicast), mDNS on the local network, the Kademlia DHT (from the configured
//! bootstrap nodes and every compatible peer's listen addresses), and peers that dial us.

mod behaviour;
mod budget;
mod inbound;
mod peers;
pub mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use libp2p::futures::StreamExt;
use libp2p::gossipsub::{self, MessageAcceptance, MessageId};
use libp2p::identity::Keypair;
use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, RecordKey};
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{identify, mdns, ping, Multiaddr, PeerId, StreamProtocol, Swarm};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::metrics::{GossipLabels, GossipOutcome, Metrics, ProvideLabels, ProvideOutcome};
use crate::records::CollectionId;
use behaviour::{NodeBehaviour, NodeBehaviourEvent, BAN_SCORE};
use budget::{RequestBudget, RequestPacing, Verdict};
pub use inbound::{AlreadyRegistered, IncomingStreams};
pub use peers::{compatible, Discovery, PeerInfo, PROTOCOL_VERSION};
use peers::{ConnectedPeer, Connection, StaticPeer, StaticState};
use wire::{HeadsRequest, HeadsResponse, ObjectsRequest, ObjectsResponse};

/// Commands waiting for the event loop. Callers wait (backpressure) when it is full.
pub const COMMAND_QUEUE: usize = 64;
/// Events kept for subscribers that fall behind; a subscriber further behind than
/// this is told how many it missed (`RecvError::Lagged`), and the loop never waits.
pub const EVENT_QUEUE: usize = 1024;

/// How often the loop looks for static peers whose redial time has come.
const REDIAL_CHECK: Duration = Duration::from_millis(250);
/// How often the loop checks whether connections near the limit and trims them.
const TRIM_CHECK: Duration = Duration::from_secs(10);
/// Trimming starts above this share of `max_connections`, and frees down to
/// `TRIM_TARGET`, so that a dial from a peer we need always finds a slot.
const TRIM_HIGH: f64 = 0.9;
const TRIM_TARGET: f64 = 0.75;

/// How long start-up waits for every listener to report its address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Quiet time after which a wildcard listener is taken to have named every interface.
const LISTEN_SETTLE: Duration = Duration::from_millis(100);

/// Provider records are kept alive by providing each key again this often (kad's
/// records live 48 h), spread evenly over the interval.
const REPROVIDE_INTERVAL: Duration = Duration::from_secs(22 * 3600);
/// DHT walks for providing at once, and the least time between two starts.
const PROVIDES_IN_FLIGHT: usize = 4;
const PROVIDE_SPACING: Duration = Duration::from_millis(200);
/// Provider lookups in progress at once; more wait in the command queue.
const MAX_PROVIDER_LOOKUPS: usize = 32;
/// Addresses taken from a provider record from another node.
const MAX_PROVIDER_ADDRS: usize = 8;

/// Messages and requests from peers waiting for the daemon to look at them. When it
/// is full, more are turned away (gossip ignored, requests unanswered) rather than
/// queued: the network never waits for the store.
pub const INBOUND_QUEUE: usize = 256;
/// How long a peer that was cut off stays refused.
const BAN_TIME: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot read node key {path}: {reason}")]
    NodeKey { path: PathBuf, reason: String },
    #[error("cannot set up the network transport: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("cannot dial {addr}: {reason}")]
    Dial { addr: Multiaddr, reason: String },
    #[error("too many provider lookups in progress; try again shortly")]
    Busy,
    #[error("request to {peer} failed: {reason}")]
    Request { peer: PeerId, reason: String },
    #[error("the network task has stopped")]
    Stopped,
    #[error("the network task did not answer in time")]
    Timeout,
}

/// What the network side needs from the daemon's settings.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub listen: Vec<Multiaddr>,
    pub mdns: bool,
    pub static_peers: Vec<Multiaddr>,
    /// Kademlia bootstrap nodes (multiaddrs ending in `/p2p/PEER_ID`).
    pub bootstrap: Vec<Multiaddr>,
    /// Answer other nodes' DHT queries (server mode) or only ask them (client mode).
    pub dht_server: bool,
    pub limits: Limits,
}

/// Connection and memory limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    pub max_pending_incoming: u32,
    /// New connections are refused while the process uses more memory than this.
    pub max_memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 128,
            max_connections_per_peer: 2,
            max_pending_incoming: 16,
            max_memory_bytes: 1024 << 20,
        }
    }
}

/// What happened on the network, for whoever in the daemon listens
/// ([`Client::events`]). Sent without waiting: a slow listener misses events (and is
/// told so) rather than slowing the network down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetEvent {
    /// A first connection to a peer opened.
    Connected {
        peer_id: PeerId,
        found_by: Discovery,
    },
    /// Identify answered for the first time on this connection: whether the peer
    /// speaks our protocols is known from here on.
    Identified { peer_id: PeerId, compatible: bool },
    /// The last connection to a peer closed.
    Disconnected { peer_id: PeerId },
    /// A peer that may be dialled was found (mDNS, DHT routing table).
    Discovered { peer_id: PeerId, via: Discovery },
    /// A peer joined the gossip topic of a collection.
    Subscribed {
        peer_id: PeerId,
        collection: CollectionId,
    },
    /// A peer was cut off for misbehaving, and is refused for a while.
    Banned { peer_id: PeerId, reason: String },
}

/// A gossip message held for its verdict.
#[derive(Debug)]
pub struct GossipMessage {
    /// The peer it came from.
    pub source: PeerId,
    pub message_id: MessageId,
    /// The collection whose topic it came on.
    pub collection: CollectionId,
    pub data: Vec<u8>,
}

/// A message or request from a peer that needs the repository to answer: the event
/// loop hands it to the daemon (see [`INBOUND_QUEUE`]), which answers through the
/// [`Client`].
#[derive(Debug)]
pub enum Inbound {
    /// A head on a collection's topic, within the size cap. Report the verdict with
    /// [`Client::report`]: until then it is not forwarded.
    Gossip(Box<GossipMessage>),
    Heads {
        peer: PeerId,
        request: HeadsRequest,
        channel: ResponseChannel<HeadsResponse>,
    },
    Objects {
        peer: PeerId,
        request: ObjectsRequest,
        channel: ResponseChannel<ObjectsResponse>,
    },
}

/// Reads the node identity from `node.key`, an ed25519 key file like a publisher's.
pub fn read_node_key(path: &Path) -> Result<Keypair, NetError> {
    let failure = |reason: String| NetError::NodeKey {
        path: path.to_path_buf(),
        reason,
    };
    let key = crate::keys::read_key_file(path).map_err(|err| failure(err.to_string()))?;
    let mut seed = key.to_bytes();
    Keypair::ed25519_from_bytes(&mut seed).map_err(|err| failure(err.to_string()))
}

/// A handle to the event loop. Cheap to clone; every method fails with
/// [`NetError::Stopped`] once the loop has ended.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<NetEvent>,
    streams: libp2p_stream::Control,
    inbound: inbound::Registry,
    pacing: Arc<RequestPacing>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// The peers we hold at least one connection to, ordered by peer id.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetError> {
        self.ask(|reply| Command::Peers { reply }).await
    }

    /// Connects to `addr` (which may end in `/p2p/PEER_ID`) and returns the peer's id
    /// once the connection is up.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NetError> {
        self.ask(|reply| Command::Dial { addr, reply }).await?
    }

    /// The addresses we accept connections on, one per interface for a wildcard listener.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, NetError> {
        self.ask(|reply| Command::ListenAddrs { reply }).await
    }

    /// Opens raw streams of protocols that run their own tasks beside the event loop
    /// (the block exchange, bitswap, groups): their bytes never pass through it.
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// The raw streams peers open to us with `protocol`, from now on.
    pub fn accept(&self, protocol: StreamProtocol) -> Result<IncomingStreams, AlreadyRegistered> {
        self.inbound.accept(protocol)
    }

    /// Closes every connection to `peer`: for a peer that broke a protocol's rules.
    pub async fn disconnect(&self, peer: PeerId) -> Result<(), NetError> {
        self.ask(|reply| Command::Disconnect { peer, reply }).await
    }

    /// Every network event from now on (see [`NetEvent`]).
    pub fn events(&self) -> broadcast::Receiver<NetEvent> {
        self.events.subscribe()
    }

    /// Keeps `addr` connected from now on, redialling it with backoff. Returns false
    /// when it already was a static peer.
    pub async fn add_static_peer(&self, addr: Multiaddr) -> Result<bool, NetError> {
        self.ask(|reply| Command::AddStaticPeer { addr, reply })
            .await
    }

    /// Stops redialling `addr` (an open connection stays until it closes). Returns
    /// false when it was not a static peer.
    pub async fn remove_static_peer(&self, addr: Multiaddr) -> Result<bool, NetError> {
        self.ask(|reply| Command::RemoveStaticPeer { addr, reply })
            .await
    }

    /// Asks the DHT which nodes provide `key` (see [`wire::content_key`] and
    /// [`wire::collection_key`]), connects to them, and returns those now connected,
    /// at most `limit`. Waits until `limit` are connected or the lookup ends (it is
    /// bounded by kad's query timeout).
    pub async fn find_providers(
        &self,
        key: RecordKey,
        limit: usize,
    ) -> Result<Vec<PeerId>, NetError> {
        self.ask(|reply| Command::FindProviders { key, limit, reply })
            .await?
    }

    /// Makes `keys` the set this node provides in the DHT: new keys are announced
    /// soon, every key again each `REPROVIDE_INTERVAL`, and keys left out stop being
    /// provided.
    pub async fn set_provided(&self, keys: Vec<RecordKey>) -> Result<(), NetError> {
        self.ask(|reply| Command::SetProvided { keys, reply }).await
    }

    /// Joins a collection's gossip topic (with its scoring). Returns false when
    /// already joined.
    pub async fn subscribe(&self, collection: CollectionId) -> Result<bool, NetError> {
        self.ask(|reply| Command::Subscribe { collection, reply })
            .await
    }

    /// Leaves a collection's gossip topic.
    pub async fn unsubscribe(&self, collection: CollectionId) -> Result<bool, NetError> {
        self.ask(|reply| Command::Unsubscribe { collection, reply })
            .await
    }

    /// Announces a head on its collection's topic. Returns false when nobody
    /// listens yet, or the same head went out a moment ago.
    pub async fn publish(&self, collection: CollectionId, head: Vec<u8>) -> Result<bool, NetError> {
        self.ask(|reply| Command::Publish {
            collection,
            head,
            reply,
        })
        .await
    }

    /// The verdict on an [`Inbound::Gossip`] message: `Accept` forwards it, `Reject`
    /// counts against the peer that sent it (and may cut it off), `Ignore` drops it.
    /// Returns false when gossipsub no longer held the message (it waited too long):
    /// then nothing was forwarded.
    pub async fn report(
        &self,
        message_id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    ) -> Result<bool, NetError> {
        self.ask(|reply| Command::Report {
            message_id,
            source,
            acceptance,
            reply,
        })
        .await
    }

    /// Asks a connected peer for the newest heads of collections.
    pub async fn request_heads(
        &self,
        peer: PeerId,
        request: HeadsRequest,
    ) -> Result<HeadsResponse, NetError> {
        self.pace(peer).await;
        self.ask(|reply| Command::RequestHeads {
            peer,
            request,
            reply,
        })
        .await?
    }

    /// Asks a connected peer for record-layer blocks.
    pub async fn request_objects(
        &self,
        peer: PeerId,
        request: ObjectsRequest,
    ) -> Result<ObjectsResponse, NetError> {
        self.pace(peer).await;
        self.ask(|reply| Command::RequestObjects {
            peer,
            request,
            reply,
        })
        .await?
    }

    /// Answers an [`Inbound::Heads`] request.
    pub async fn respond_heads(
        &self,
        channel: ResponseChannel<HeadsResponse>,
        response: HeadsResponse,
    ) -> Result<(), NetError> {
        self.ask(|reply| Command::RespondHeads {
            channel,
            response,
            reply,
        })
        .await
    }

    /// Answers an [`Inbound::Objects`] request.
    pub async fn respond_objects(
        &self,
        channel: ResponseChannel<ObjectsResponse>,
        response: ObjectsResponse,
    ) -> Result<(), NetError> {
        self.ask(|reply| Command::RespondObjects {
            channel,
            response,
            reply,
        })
        .await
    }

    /// Compatible peers that joined a collection's topic.
    pub async fn topic_peers(&self, collection: CollectionId) -> Result<Vec<PeerId>, NetError> {
        self.ask(|reply| Command::TopicPeers { collection, reply })
            .await
    }

    /// Waits for this node's next turn to ask `peer`, so that it stays within the
    /// budget the peer gives it.
    async fn pace(&self, peer: PeerId) {
        let wait = self.pacing.reserve(peer, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| NetError::Stopped)?;
        answer.await.map_err(|_| NetError::Stopped)
    }
}

enum Command {
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, NetError>>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Disconnect {
        peer: PeerId,
        reply: oneshot::Sender<()>,
    },
    AddStaticPeer {
        addr: Multiaddr,
        reply: oneshot::Sender<bool>,
    },
    RemoveStaticPeer {
        addr: Multiaddr,
        reply: oneshot::Sender<bool>,
    },
    FindProviders {
        key: RecordKey,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<PeerId>, NetError>>,
    },
    SetProvided {
        keys: Vec<RecordKey>,
        reply: oneshot::Sender<()>,
    },
    Subscribe {
        collection: CollectionId,
        reply: oneshot::Sender<bool>,
    },
    Unsubscribe {
        collection: CollectionId,
        reply: oneshot::Sender<bool>,
    },
    Publish {
        collection: CollectionId,
        head: Vec<u8>,
        reply: oneshot::Sender<bool>,
    },
    Report {
        message_id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
        reply: oneshot::Sender<bool>,
    },
    RequestHeads {
        peer: PeerId,
        request: HeadsRequest,
        reply: oneshot::Sender<Result<HeadsResponse, NetError>>,
    },
    RequestObjects {
        peer: PeerId,
        request: ObjectsRequest,
        reply: oneshot::Sender<Result<ObjectsResponse, NetError>>,
    },
    RespondHeads {
        channel: ResponseChannel<HeadsResponse>,
        response: HeadsResponse,
        reply: oneshot::Sender<()>,
    },
    RespondObjects {
        channel: ResponseChannel<ObjectsResponse>,
        response: ObjectsResponse,
        reply: oneshot::Sender<()>,
    },
    TopicPeers {
        collection: CollectionId,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
}

/// What [`start`] returns: the handle, the loop to spawn, the addresses bound, and
/// the queue of messages and requests from peers that the daemon must answer.
pub struct Started {
    pub client: Client,
    pub event_loop: EventLoop,
    pub listen_addrs: Vec<Multiaddr>,
    pub inbound: mpsc::Receiver<Inbound>,
}

/// Builds the swarm, starts every listener and waits until each has an address.
/// Gossip verdicts are counted into `metrics`.
pub async fn start(
    keypair: Keypair,
    config: NetConfig,
    metrics: Metrics,
) -> Result<Started, NetError> {
    let accepted = inbound::Registry::default();
    let swarm = behaviour::build_swarm(keypair, &config, accepted.clone())?;
    let streams = swarm.behaviour().streams.new_control();
    let (commands, command_queue) = mpsc::channel(COMMAND_QUEUE);
    let (events, _) = broadcast::channel(EVENT_QUEUE);
    let (inbound, inbound_queue) = mpsc::channel(INBOUND_QUEUE);
    let mut event_loop = EventLoop {
        swarm,
        commands: command_queue,
        events: events.clone(),
        pending_dials: HashMap::new(),
        dial_reasons: HashMap::new(),
        peers: BTreeMap::new(),
        static_peers: config
            .static_peers
            .into_iter()
            .map(StaticPeer::new)
            .collect(),
        max_connections: config.limits.max_connections,
        provider_lookups: HashMap::new(),
        providing: Providing::default(),
        inbound,
        pending_heads: HashMap::new(),
        pending_objects: HashMap::new(),
        request_budgets: HashMap::new(),
        banned: HashMap::new(),
        metrics,
    };
    let listen_addrs = event_loop.listen(config.listen).await?;
    event_loop.bootstrap(config.bootstrap);
    Ok(Started {
        client: Client {
            commands,
            events,
            streams,
            inbound: accepted,
            pacing: Arc::new(RequestPacing::default()),
        },
        event_loop,
        listen_addrs,
        inbound: inbound_queue,
    })
}

/// Owns the swarm. Run it with [`EventLoop::run`] on its own task.
pub struct EventLoop {
    swarm: Swarm<NodeBehaviour>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<NetEvent>,
    /// Dials asked for through [`Client::dial`], by the id of their connection.
    /// Bounded by the swarm's cap on pending outgoing connections.
    pending_dials: HashMap<ConnectionId, (Multiaddr, oneshot::Sender<Result<PeerId, NetError>>)>,
    /// Why each dial in progress was made; bounded the same way.
    dial_reasons: HashMap<ConnectionId, Discovery>,
    peers: BTreeMap<PeerId, ConnectedPeer>,
    static_peers: Vec<StaticPeer>,
    max_connections: u32,
    /// Bounded by `MAX_PROVIDER_LOOKUPS`.
    provider_lookups: HashMap<kad::QueryId, ProviderLookup>,
    providing: Providing,
    inbound: mpsc::Sender<Inbound>,
    /// Requests we sent, answered when the response or a failure arrives. Bounded by
    /// the callers: the daemon has a fixed number of jobs that ask.
    pending_heads: Pending<HeadsResponse>,
    pending_objects: Pending<ObjectsResponse>,
    /// Per connected peer: how many requests it may still send now.
    request_budgets: HashMap<PeerId, RequestBudget>,
    /// Peers cut off, and until when.
    banned: HashMap<PeerId, Instant>,
    metrics: Metrics,
}

/// Requests this node sent over one protocol, each answered when its response or
/// failure arrives.
type Pending<T> = HashMap<OutboundRequestId, oneshot::Sender<Result<T, NetError>>>;

/// A request-response protocol whose requests from peers the daemon answers.
trait PeerRequest: Sized {
    type Response;
    /// For logs.
    const NAME: &'static str;
    /// Whether the request is within the protocol's limits; one beyond them is dropped.
    fn within_limits(&self) -> bool;
    /// The request as the daemon receives it.
    fn inbound(self, peer: PeerId, channel: ResponseChannel<Self::Response>) -> Inbound;
    /// The event loop's requests of this protocol awaiting an answer.
    fn pending(event_loop: &mut EventLoop) -> &mut Pending<Self::Response>;
}

impl PeerRequest for HeadsRequest {
    type Response = HeadsResponse;
    const NAME: &'static str = "heads";

    fn within_limits(&self) -> bool {
        self.collections.len() <= wire::MAX_HEADS_PER_REQUEST
    }

    fn inbound(self, peer: PeerId, channel: ResponseChannel<HeadsResponse>) -> Inbound {
        Inbound::Heads {
            peer,
            request: self,
            channel,
        }
    }

    fn pending(event_loop: &mut EventLoop) -> &mut Pending<HeadsResponse> {
        &mut event_loop.pending_heads
    }
}

impl PeerRequest for ObjectsRequest {
    type Response = ObjectsResponse;
    const NAME: &'static str = "objects";

    fn within_limits(&self) -> bool {
        self.cids.len() <= wire::MAX_OBJECTS_PER_REQUEST
    }

    fn inbound(self, peer: PeerId, channel: ResponseChannel<ObjectsResponse>) -> Inbound {
        Inbound::Objects {
            peer,
            request: self,
            channel,
        }
    }

    fn pending(event_loop: &mut EventLoop) -> &mut Pending<ObjectsResponse> {
        &mut event_loop.pending_objects
    }
}

struct ProviderLookup {
    limit: usize,
    /// Providers found that we are connected to, or dialling.
    found: HashSet<PeerId>,
    finished: bool,
    reply: oneshot::Sender<Result<Vec<PeerId>, NetError>>,
}

/// The keys this node provides, and when each is due again.
#[derive(Default)]
struct Providing {
    /// Each provided key (its bytes) and when it is next due.
    due_at: HashMap<Vec<u8>, Instant>,
    /// The same, in the order they are due.
    schedule: BTreeSet<(Instant, Vec<u8>)>,
    in_flight: HashSet<kad::QueryId>,
    last_start: Option<Instant>,
    /// Provided keys whose last provide reached no DHT node; a subset of `due_at`.
    unreached: HashSet<Vec<u8>>,
}

impl Providing {
    fn schedule(&mut self, key: Vec<u8>, when: Instant) {
        if let Some(old) = self.due_at.insert(key.clone(), when) {
            self.schedule.remove(&(old, key.clone()));
        }
        self.schedule.insert((when, key));
    }

    fn unschedule(&mut self, key: &[u8]) {
        self.unreached.remove(key);
        if let Some(old) = self.due_at.remove(key) {
            self.schedule.remove(&(old, key.to_vec()));
        }
    }

    /// The next key due by `now`, if any.
    fn next_due(&self, now: Instant) -> Option<Vec<u8>> {
        self.schedule
            .first()
            .filter(|(when, _)| *when <= now)
            .map(|(_, key)| key.clone())
    }
}

impl EventLoop {
    async fn listen(&mut self, addrs: Vec<Multiaddr>) -> Result<Vec<Multiaddr>, NetError> {
        let mut waiting = HashMap::new();
        for addr in addrs {
            let listener = self
                .swarm
                .listen_on(addr.clone())
                .map_err(|err| NetError::Listen {
                    addr: addr.clone(),
                    reason: err.to_string(),
                })?;
            waiting.insert(listener, addr);
        }
        let deadline = tokio::time::sleep(LISTEN_TIMEOUT);
        tokio::pin!(deadline);
        while !waiting.is_empty() {
            tokio::select! {
                event = self.swarm.select_next_some() => match event {
                    SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                        if let Some(addr) = waiting.remove(&listener_id) {
                            let reason = reason.err().map_or_else(|| "listener closed".to_string(), |err| err.to_string());
                            return Err(NetError::Listen { addr, reason });
                        }
                    }
                    SwarmEvent::ListenerError { listener_id, error } => {
                        if let Some(addr) = waiting.remove(&listener_id) {
                            return Err(NetError::Listen { addr, reason: error.to_string() });
                        }
                    }
                    SwarmEvent::NewListenAddr { listener_id, address } => {
                        self.listening_on(address);
                        waiting.remove(&listener_id);
                    }
                    other => self.handle_event(other),
                },
                () = &mut deadline => {
                    let addr = waiting.into_values().next().unwrap_or_else(Multiaddr::empty);
                    return Err(NetError::Listen { addr, reason: format!("no address within {} s", LISTEN_TIMEOUT.as_secs()) });
                }
            }
        }
        // A wildcard listener reports one address per interface in quick succession;
        // wait until they stop coming (within the start-up deadline) so that start-up
        // can name them all.
        loop {
            tokio::select! {
                event = tokio::time::timeout(LISTEN_SETTLE, self.swarm.select_next_some()) => match event {
                    Ok(event) => self.handle_event(event),
                    Err(_) => break,
                },
                () = &mut deadline => break,
            }
        }
        Ok(self.swarm.listeners().cloned().collect())
    }

    /// Adds the configured bootstrap nodes to the DHT and dials them. Addresses without
    /// a peer id cannot seed a routing table; they are reported and skipped.
    fn bootstrap(&mut self, nodes: Vec<Multiaddr>) {
        if nodes.is_empty() {
            return;
        }
        for addr in nodes {
            let Some(peer_id) = peers::peer_id_of(&addr) else {
                tracing::warn!(%addr, "bootstrap address lacks /p2p/PEER_ID; skipped");
                continue;
            };
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer_id, peers::without_peer_id(&addr));
            let opts = DialOpts::peer_id(peer_id).addresses(vec![addr]).build();
            self.dial_reasons
                .insert(opts.connection_id(), Discovery::Dht);
            if self.swarm.dial(opts).is_err() {
                tracing::debug!(%peer_id, "bootstrap node not dialled");
            }
        }
        if let Err(err) = self.swarm.behaviour_mut().kad.bootstrap() {
            tracing::debug!(%err, "DHT bootstrap not started");
        }
    }

    /// Serves commands and swarm events until `shutdown` turns true (or its sender is
    /// dropped). Dropping the swarm then closes every connection.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut redial_check = tokio::time::interval(REDIAL_CHECK);
        redial_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut trim_check = tokio::time::interval(TRIM_CHECK);
        trim_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.handle_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => break,
                },
                _ = redial_check.tick() => {
                    self.dial_due_static_peers();
                    self.provide_due_keys();
                }
                _ = trim_check.tick() => {
                    self.trim_connections();
                    self.lift_expired_bans();
                }
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
    }

    fn emit(&self, event: NetEvent) {
        // No subscriber is not an error: the daemon may not listen to every event.
        let _ = self.events.send(event);
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Peers { reply } => {
                let _ = reply.send(
                    self.peers
                        .iter()
                        .map(|(peer_id, peer)| peer.info(*peer_id))
                        .collect(),
                );
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Disconnect { peer, reply } => {
                // Refused only when there is no connection to close.
                let _ = self.swarm.disconnect_peer_id(peer);
                let _ = reply.send(());
            }
            Command::Dial { addr, reply } => {
                let opts = dial_opts(&addr);
                if let Some(peer_id) = opts
                    .get_peer_id()
                    .filter(|peer_id| self.swarm.is_connected(peer_id))
                {
                    let _ = reply.send(Ok(peer_id));
                    return;
                }
                let connection = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.dial_reasons.insert(connection, Discovery::Dial);
                        self.pending_dials.insert(connection, (addr, reply));
                    }
                    Err(err) => {
                        let _ = reply.send(Err(NetError::Dial {
                            addr,
                            reason: err.to_string(),
                        }));
                    }
                }
            }
            Command::AddStaticPeer { addr, reply } => {
                let added = !self.static_peers.iter().any(|p| p.addr == addr);
                if added {
                    self.static_peers.push(StaticPeer::new(addr));
                    self.dial_due_static_peers();
                }
                let _ = reply.send(added);
            }
            Command::RemoveStaticPeer { addr, reply } => {
                let before = self.static_peers.len();
                self.static_peers.retain(|p| p.addr != addr);
                let _ = reply.send(self.static_peers.len() < before);
            }
            Command::FindProviders { key, limit, reply } => {
                if self.provider_lookups.len() >= MAX_PROVIDER_LOOKUPS {
                    let _ = reply.send(Err(NetError::Busy));
                    return;
                }
                let query = self.swarm.behaviour_mut().kad.get_providers(key);
                self.provider_lookups.insert(
                    query,
                    ProviderLookup {
                        limit: limit.max(1),
                        found: HashSet::new(),
                        finished: false,
                        reply,
                    },
                );
            }
            Command::SetProvided { keys, reply } => {
                self.set_provided(keys);
                let _ = reply.send(());
            }
            Command::Subscribe { collection, reply } => {
                let topic = wire::topic(&collection);
                let gossip = &mut self.swarm.behaviour_mut().gossip;
                let joined = gossip.subscribe(&topic).unwrap_or(false);
                if let Err(err) = gossip.set_topic_params(topic, behaviour::topic_score_params()) {
                    tracing::warn!(%err, "topic scoring not set");
                }
                let _ = reply.send(joined);
            }
            Command::Unsubscribe { collection, reply } => {
                let left = self
                    .swarm
                    .behaviour_mut()
                    .gossip
                    .unsubscribe(&wire::topic(&collection));
                let _ = reply.send(left);
            }
            Command::Publish {
                collection,
                head,
                reply,
            } => {
                let sent = match self
                    .swarm
                    .behaviour_mut()
                    .gossip
                    .publish(wire::topic(&collection), head)
                {
                    Ok(_) => true,
                    Err(err) => {
                        tracing::debug!(%collection, %err, "head not announced");
                        false
                    }
                };
                let _ = reply.send(sent);
            }
            Command::Report {
                message_id,
                source,
                acceptance,
                reply,
            } => {
                let _ = reply.send(self.report(&message_id, source, acceptance));
            }
            Command::RequestHeads {
                peer,
                request,
                reply,
            } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .heads
                    .send_request(&peer, request);
                self.pending_heads.insert(id, reply);
            }
            Command::RequestObjects {
                peer,
                request,
                reply,
            } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .objects
                    .send_request(&peer, request);
                self.pending_objects.insert(id, reply);
            }
            Command::RespondHeads {
                channel,
                response,
                reply,
            } => {
                // Fails only when the peer has gone: nothing to do.
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .heads
                    .send_response(channel, response);
                let _ = reply.send(());
            }
            Command::RespondObjects {
                channel,
                response,
                reply,
            } => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .objects
                    .send_response(channel, response);
                let _ = reply.send(());
            }
            Command::TopicPeers { collection, reply } => {
                let topic = wire::topic(&collection).hash();
                let subscribed: Vec<PeerId> = self
                    .swarm
                    .behaviour()
                    .gossip
                    .all_peers()
                    .filter(|(_, topics)| topics.contains(&&topic))
                    .map(|(peer, _)| *peer)
                    .filter(|peer| {
                        self.peers
                            .get(peer)
                            .is_some_and(|info| info.compatible() == Some(true))
                    })
                    .collect();
                let _ = reply.send(subscribed);
            }
        }
    }

    /// Passes a verdict on a gossip message to gossipsub, and cuts the sender off
    /// when its score has fallen below `BAN_SCORE`.
    fn report(
        &mut self,
        message_id: &MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    ) -> bool {
        let rejected = matches!(acceptance, MessageAcceptance::Reject);
        let outcome = match acceptance {
            MessageAcceptance::Accept => GossipOutcome::Accepted,
            MessageAcceptance::Reject => GossipOutcome::Rejected,
            MessageAcceptance::Ignore => GossipOutcome::Ignored,
        };
        self.metrics
            .gossip_messages
            .get_or_create(&GossipLabels { outcome })
            .inc();
        let gossip = &mut self.swarm.behaviour_mut().gossip;
        let held = gossip.report_message_validation_result(message_id, &source, acceptance);
        if rejected {
            if let Some(score) = gossip.peer_score(&source) {
                if score < BAN_SCORE {
                    self.ban(
                        source,
                        format!("gossip score {score:.0} after invalid heads"),
                    );
                }
            }
        }
        held
    }

    fn ban(&mut self, peer_id: PeerId, reason: String) {
        if self.banned.contains_key(&peer_id) {
            return;
        }
        tracing::warn!(%peer_id, %reason, "peer cut off");
        self.banned.insert(peer_id, Instant::now() + BAN_TIME);
        self.swarm.behaviour_mut().blocked.block_peer(peer_id);
        self.emit(NetEvent::Banned { peer_id, reason });
    }

    fn lift_expired_bans(&mut self) {
        let now = Instant::now();
        let expired: Vec<PeerId> = self
            .banned
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer_id in expired {
            self.banned.remove(&peer_id);
            self.swarm.behaviour_mut().blocked.unblock_peer(peer_id);
        }
    }

    /// Whether a request from `peer` is within its budget. A peer far over it is cut off.
    fn request_allowed(&mut self, peer: PeerId) -> bool {
        let now = Instant::now();
        let verdict = self
            .request_budgets
            .entry(peer)
            .or_insert_with(|| RequestBudget::new(now))
            .take(now);
        match verdict {
            Verdict::Answer => true,
            Verdict::Refuse => false,
            Verdict::CutOff => {
                self.ban(peer, "too many requests".into());
                false
            }
        }
    }

    /// Hands a message or request to the daemon; false when its queue is full.
    fn pass_inbound(&mut self, inbound: Inbound) -> bool {
        self.inbound.try_send(inbound).is_ok()
    }

    fn handle_event(&mut self, event: SwarmEvent<NodeBehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let address = peers::without_peer_id(endpoint.get_remote_address());
                tracing::info!(%peer_id, %address, "connected");
                let found_by = match self.dial_reasons.remove(&connection_id) {
                    Some(reason) => reason,
                    // Kademlia is the one behaviour that dials on its own.
                    None if endpoint.is_dialer() => Discovery::Dht,
                    None if self.is_static(&peer_id) => Discovery::Static,
                    None => Discovery::Inbound,
                };
                self.peers.entry(peer_id).or_default().connections.insert(
                    connection_id,
                    Connection {
                        address,
                        found_by,
                        since: Instant::now(),
                    },
                );
                if let Some((_, reply)) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Ok(peer_id));
                }
                self.static_peer_connected(peer_id, connection_id);
                if num_established.get() == 1 {
                    self.emit(NetEvent::Connected { peer_id, found_by });
                }
                self.provider_connected(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                if let Some(peer) = self.peers.get_mut(&peer_id) {
                    peer.connections.remove(&connection_id);
                    if peer.connections.is_empty() {
                        self.peers.remove(&peer_id);
                    }
                }
                if num_established == 0 {
                    tracing::info!(%peer_id, cause = ?cause, "disconnected");
                    self.request_budgets.remove(&peer_id);
                    for static_peer in &mut self.static_peers {
                        if static_peer.known_id == Some(peer_id) {
                            static_peer.lost();
                        }
                    }
                    self.emit(NetEvent::Disconnected { peer_id });
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                self.dial_reasons.remove(&connection_id);
                if let Some((addr, reply)) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Err(NetError::Dial {
                        addr,
                        reason: error.to_string(),
                    }));
                }
                if let Some(static_peer) = self
                    .static_peers
                    .iter_mut()
                    .find(|p| matches!(p.state, StaticState::Dialing(id) if id == connection_id))
                {
                    tracing::debug!(addr = %static_peer.addr, ?peer_id, %error, retry_in = ?static_peer.backoff, "static peer unreachable");
                    if matches!(error, DialError::WrongPeerId { .. }) {
                        tracing::warn!(addr = %static_peer.addr, %error, "static peer has another identity than configured");
                    }
                    static_peer.retry_later();
                }
                if let Some(peer_id) = peer_id {
                    self.provider_unreachable(peer_id);
                }
            }
            SwarmEvent::Behaviour(event) => self.handle_behaviour_event(event),
            SwarmEvent::NewListenAddr { address, .. } => self.listening_on(address),
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.swarm.remove_external_address(&address);
            }
            SwarmEvent::ListenerError { error, .. } => tracing::warn!(%error, "listener error"),
            _ => {}
        }
    }

    fn handle_behaviour_event(&mut self, event: NodeBehaviourEvent) {
        match event {
            NodeBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.identified(peer_id, info)
            }
            NodeBehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                if let Some(peer) = self.peers.get_mut(&peer) {
                    peer.rtt = Some(rtt);
                }
            }
            NodeBehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer_id, addr) in found {
                    by_peer.entry(peer_id).or_default().push(addr);
                }
                for (peer_id, addresses) in by_peer {
                    self.emit(NetEvent::Discovered {
                        peer_id,
                        via: Discovery::Mdns,
                    });
                    if !self.swarm.is_connected(&peer_id) {
                        tracing::debug!(%peer_id, "found on the local network");
                        let opts = DialOpts::peer_id(peer_id).addresses(addresses).build();
                        let connection = opts.connection_id();
                        // Refused only when a dial to that peer is already under way.
                        if self.swarm.dial(opts).is_ok() {
                            self.dial_reasons.insert(connection, Discovery::Mdns);
                        }
                    }
                }
            }
            NodeBehaviourEvent::Kad(event) => self.handle_kad_event(event),
            NodeBehaviourEvent::Gossip(event) => self.handle_gossip_event(event),
            NodeBehaviourEvent::Heads(event) => self.handle_request_event(event),
            NodeBehaviourEvent::Objects(event) => self.handle_request_event(event),
            _ => {}
        }
    }

    fn handle_gossip_event(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                // The size cap comes first: nothing larger than a head is even decoded.
                let collection = wire::collection_of_topic(&message.topic);
                let Some(collection) =
                    collection.filter(|_| message.data.len() <= wire::MAX_GOSSIP_MESSAGE)
                else {
                    self.report(&message_id, propagation_source, MessageAcceptance::Reject);
                    return;
                };
                let inbound = Inbound::Gossip(Box::new(GossipMessage {
                    source: propagation_source,
                    message_id: message_id.clone(),
                    collection,
                    data: message.data,
                }));
                if !self.pass_inbound(inbound) {
                    tracing::debug!(source = %propagation_source, "gossip dropped: the daemon is busy");
                    self.report(&message_id, propagation_source, MessageAcceptance::Ignore);
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                if let Some(collection) = wire::collection_of_topic(&topic) {
                    self.emit(NetEvent::Subscribed {
                        peer_id,
                        collection,
                    });
                }
            }
            _ => {}
        }
    }

    /// A request from a peer is handed to the daemon when the peer is within its
    /// budget and the request within the protocol's limits; an answer to one of ours
    /// goes to whoever asked.
    fn handle_request_event<R: PeerRequest>(
        &mut self,
        event: request_response::Event<R, R::Response>,
    ) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                if !self.request_allowed(peer) || !request.within_limits() {
                    return;
                }
                if !self.pass_inbound(request.inbound(peer, channel)) {
                    tracing::debug!(%peer, protocol = R::NAME, "request dropped: the daemon is busy");
                }
            }
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = R::pending(self).remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = R::pending(self).remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            _ => {}
        }
    }

    fn identified(&mut self, peer_id: PeerId, info: identify::Info) {
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let first = peer.protocol_version.is_none();
        peer.agent_version = Some(peers::cut(&info.agent_version));
        peer.protocol_version = Some(peers::cut(&info.protocol_version));
        peer.protocols = info
            .protocols
            .into_iter()
            .take(peers::MAX_IDENTIFY_ITEMS)
            .collect();
        peer.listen_addrs = info
            .listen_addrs
            .into_iter()
            .take(peers::MAX_IDENTIFY_ITEMS)
            .collect();
        let compatible = peer.compatible() == Some(true);
        // A compatible DHT peer's listen addresses go into the routing table: that is
        // how the DHT learns the network from the peers the node meets.
        if compatible && peer.supports(wire::KAD_PROTOCOL.as_ref()) {
            for addr in peer.listen_addrs.clone() {
                self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
            }
        }
        if first {
            self.emit(NetEvent::Identified {
                peer_id,
                compatible,
            });
        }
    }

    fn handle_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::AddProvider {
                        record: Some(mut record),
                    },
            } => {
                // kad has checked that the record names the peer that sent it.
                if !wire::is_valid_key(&record.key) {
                    tracing::debug!(provider = %record.provider, "provider record with a foreign key refused");
                    return;
                }
                record.addresses.truncate(MAX_PROVIDER_ADDRS);
                if let Err(err) = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .store_mut()
                    .add_provider(record)
                {
                    tracing::debug!(?err, "provider record not stored");
                }
            }
            // oermesh keeps no values in the DHT: a PUT_VALUE is dropped unstored.
            kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord { source, .. },
            } => tracing::debug!(%source, "DHT value refused"),
            kad::Event::RoutingUpdated {
                peer,
                is_new_peer: true,
                ..
            } => {
                self.emit(NetEvent::Discovered {
                    peer_id: peer,
                    via: Discovery::Dht,
                });
                // Keys provided while the DHT had no node reached nobody: a node that
                // starts before its peers (or alone) provides them now, not 22 hours
                // later.
                let now = Instant::now();
                for key in std::mem::take(&mut self.providing.unreached) {
                    self.providing.schedule(key, now);
                }
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                stats,
            } => match result {
                kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })) => self.providers_found(id, providers),
                kad::QueryResult::GetProviders(_) if step.last => self.provider_lookup_ended(id),
                kad::QueryResult::StartProviding(result) => {
                    self.providing.in_flight.remove(&id);
                    self.provided(result, stats.num_successes() > 0);
                }
                _ => {}
            },
            _ => {}
        }
    }

    fn providers_found(&mut self, query: kad::QueryId, providers: HashSet<PeerId>) {
        let local = *self.swarm.local_peer_id();
        let Some(lookup) = self.provider_lookups.get_mut(&query) else {
            return;
        };
        for provider in providers {
            if provider == local || lookup.found.len() >= lookup.limit {
                continue;
            }
            lookup.found.insert(provider);
            if !self.swarm.is_connected(&provider) {
                // kad knows the addresses while the query runs.
                let opts = DialOpts::peer_id(provider).build();
                let connection = opts.connection_id();
                if self.swarm.dial(opts).is_ok() {
                    self.dial_reasons.insert(connection, Discovery::Dht);
                }
            }
        }
        if lookup.found.len() >= lookup.limit {
            if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&query) {
                query.finish();
            }
            self.provider_lookup_ended(query);
        } else {
            self.answer_provider_lookup(query);
        }
    }

    fn provider_lookup_ended(&mut self, query: kad::QueryId) {
        if let Some(lookup) = self.provider_lookups.get_mut(&query) {
            lookup.finished = true;
        }
        self.answer_provider_lookup(query);
    }

    /// Answers a lookup once it is over and no dial to a provider is still open.
    fn answer_provider_lookup(&mut self, query: kad::QueryId) {
        let Some(lookup) = self.provider_lookups.get(&query) else {
            return;
        };
        let connected: Vec<PeerId> = lookup
            .found
            .iter()
            .filter(|peer| self.swarm.is_connected(peer))
            .copied()
            .collect();
        let dialling = lookup
            .found
            .iter()
            .any(|peer| !self.swarm.is_connected(peer));
        if connected.len() >= lookup.limit || (lookup.finished && !dialling) {
            if let Some(lookup) = self.provider_lookups.remove(&query) {
                let _ = lookup.reply.send(Ok(connected));
            }
        }
    }

    fn provider_connected(&mut self, peer_id: PeerId) {
        let waiting: Vec<kad::QueryId> = self
            .provider_lookups
            .iter()
            .filter(|(_, lookup)| lookup.found.contains(&peer_id))
            .map(|(query, _)| *query)
            .collect();
        for query in waiting {
            self.answer_provider_lookup(query);
        }
    }

    fn provider_unreachable(&mut self, peer_id: PeerId) {
        let waiting: Vec<kad::QueryId> = self
            .provider_lookups
            .iter_mut()
            .filter_map(|(query, lookup)| lookup.found.remove(&peer_id).then_some(*query))
            .collect();
        for query in waiting {
            self.answer_provider_lookup(query);
        }
    }

    fn set_provided(&mut self, keys: Vec<RecordKey>) {
        let keys: HashSet<Vec<u8>> = keys.into_iter().map(|key| key.to_vec()).collect();
        let gone: Vec<Vec<u8>> = self
            .providing
            .due_at
            .keys()
            .filter(|key| !keys.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            self.providing.unschedule(&key);
            self.swarm
                .behaviour_mut()
                .kad
                .stop_providing(&RecordKey::from(key));
        }
        let now = Instant::now();
        for key in keys {
            if !self.providing.due_at.contains_key(&key) {
                self.providing.schedule(key, now);
            }
        }
    }

    /// Notes how a provide went: one that reached no DHT node is done again when the
    /// routing table gains a node.
    fn provided(&mut self, result: kad::AddProviderResult, reached: bool) {
        let key = match &result {
            Ok(ok) => &ok.key,
            Err(err) => err.key(),
        };
        let outcome = match (&result, reached) {
            (Ok(_), true) => ProvideOutcome::Reached,
            (Ok(_), false) => ProvideOutcome::NoPeers,
            (Err(_), _) => ProvideOutcome::Failed,
        };
        tracing::debug!(?outcome, "provide finished");
        self.metrics
            .dht_provides
            .get_or_create(&ProvideLabels { outcome })
            .inc();
        if !reached && self.providing.due_at.contains_key(key.as_ref()) {
            self.providing.unreached.insert(key.to_vec());
        }
    }

    /// Starts the provides whose time has come, a few at a time and spaced out, so
    /// that 100,000 keys become a steady trickle of DHT walks rather than a burst.
    fn provide_due_keys(&mut self) {
        let now = Instant::now();
        while self.providing.in_flight.len() < PROVIDES_IN_FLIGHT
            && self
                .providing
                .last_start
                .is_none_or(|last| now >= last + PROVIDE_SPACING)
        {
            let Some(key) = self.providing.next_due(now) else {
                return;
            };
            self.providing
                .schedule(key.clone(), now + REPROVIDE_INTERVAL);
            match self
                .swarm
                .behaviour_mut()
                .kad
                .start_providing(RecordKey::from(key))
            {
                Ok(query) => {
                    self.providing.in_flight.insert(query);
                    self.providing.last_start = Some(now);
                }
                Err(err) => tracing::debug!(?err, "cannot provide"),
            }
        }
    }

    /// A listen address is also one the node gives out: in its provider records above
    /// all, which are how a DHT client (in no routing table) is found at all. A school
    /// LAN has no AutoNAT to confirm addresses, so they are taken as they are.
    fn listening_on(&mut self, address: Multiaddr) {
        tracing::info!(%address, "listening");
        self.swarm.add_external_address(address);
    }

    fn is_static(&self, peer_id: &PeerId) -> bool {
        self.static_peers
            .iter()
            .any(|p| p.known_id.as_ref() == Some(peer_id))
    }

    /// Closes connections to the least useful peers when the node nears its limit.
    fn trim_connections(&mut self) {
        let established: usize = self.peers.values().map(|p| p.connections.len()).sum();
        let max = f64::from(self.max_connections);
        if (established as f64) < max * TRIM_HIGH {
            return;
        }
        let excess = established - (max * TRIM_TARGET) as usize;
        let victims =
            peers::trim_candidates(self.peers.iter(), |peer_id| self.is_static(peer_id), excess);
        for peer_id in victims {
            tracing::debug!(%peer_id, "closing a connection to stay under the limit");
            let _ = self.swarm.disconnect_peer_id(peer_id);
        }
    }

    fn dial_due_static_peers(&mut self) {
        let now = Instant::now();
        for static_peer in &mut self.static_peers {
            let StaticState::Due(when) = static_peer.state else {
                continue;
            };
            if when > now {
                continue;
            }
            if let Some(peer_id) = static_peer.known_id {
                if self.swarm.is_connected(&peer_id) {
                    static_peer.state = StaticState::Connected { since: now };
                    continue;
                }
            }
            let opts = dial_opts(&static_peer.addr);
            let connection = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    static_peer.state = StaticState::Dialing(connection);
                    self.dial_reasons.insert(connection, Discovery::Static);
                }
                Err(error) => {
                    tracing::debug!(addr = %static_peer.addr, %error, "cannot dial static peer");
                    static_peer.retry_later();
                }
            }
        }
    }

    fn static_peer_connected(&mut self, peer_id: PeerId, connection: ConnectionId) {
        for static_peer in &mut self.static_peers {
            let ours = matches!(static_peer.state, StaticState::Dialing(id) if id == connection);
            if ours {
                static_peer.known_id = Some(peer_id);
            }
            if ours
                || (static_peer.known_id == Some(peer_id)
                    && !matches!(static_peer.state, StaticState::Connected { .. }))
            {
                static_peer.state = StaticState::Connected {
                    since: Instant::now(),
                };
            }
        }
    }
}

/// Dials by peer id when the address names one, so that a peer answering with
/// another identity is refused.
fn dial_opts(addr: &Multiaddr) -> DialOpts {
    match peers::peer_id_of(addr) {
        Some(peer_id) => DialOpts::peer_id(peer_id)
            .addresses(vec![addr.clone()])
            .build(),
        None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_id_comes_from_the_node_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        std::fs::write(&path, [7u8; 32]).unwrap();
        assert!(matches!(
            read_node_key(&path),
            Err(NetError::NodeKey { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        let key = crate::keys::generate_signing_key().unwrap();
        crate::keys::write_key_file(&path, &key).unwrap();
        let first = read_node_key(&path).unwrap().public().to_peer_id();
        let again = read_node_key(&path).unwrap().public().to_peer_id();
        assert_eq!(first, again, "the same key file gives the same peer id");
        let expected = Keypair::ed25519_from_bytes(key.to_bytes())
            .unwrap()
            .public()
            .to_peer_id();
        assert_eq!(first, expected);
    }

    #[test]
    fn dialling_an_address_with_a_peer_id_checks_the_identity() {
        let id = Keypair::generate_ed25519().public().to_peer_id();
        let addr: Multiaddr = format!("/ip4/10.0.0.2/tcp/4001/p2p/{id}").parse().unwrap();
        assert_eq!(dial_opts(&addr).get_peer_id(), Some(id));
        assert_eq!(
            dial_opts(&"/ip4/10.0.0.2/tcp/4001".parse().unwrap()).get_peer_id(),
            None
        );
    }
}
