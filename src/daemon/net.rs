//! The node's peer-to-peer side. One task, the [`EventLoop`], owns the libp2p `Swarm`;
//! the rest of the daemon talks to it through a cloneable [`Client`] that sends
//! commands over a bounded channel and waits for each answer on its own oneshot.
//! Nothing else touches the swarm, so it needs no lock.
//!
//! Peers are found three ways: static peers from the config (dialled at start and
//! redialled with backoff whenever the connection drops, since many school networks
//! block multicast), mDNS on the local network, and peers that dial us.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{
    connection_limits, identify, mdns, noise, ping, tcp, yamux, Multiaddr, PeerId, Swarm,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

/// Commands waiting for the event loop. Callers wait (backpressure) when it is full.
pub const COMMAND_QUEUE: usize = 64;

/// Sent to peers by identify; peers speaking another major version are still shown.
const PROTOCOL_VERSION: &str = "/oermesh/0.1.0";

/// Handshakes in progress from peers that dialled us. An attacker who opens many
/// connections must not take every slot, so incoming connections have their own caps.
const MAX_PENDING_INCOMING: u32 = 16;
const MAX_PENDING_OUTGOING: u32 = 32;
const MAX_ESTABLISHED_INCOMING: u32 = 64;
const MAX_ESTABLISHED: u32 = 128;
/// Two, so that two nodes dialling each other at the same moment both succeed.
const MAX_ESTABLISHED_PER_PEER: u32 = 2;

/// First wait before redialling a static peer; doubles on each failure up to the cap.
const REDIAL_FIRST: Duration = Duration::from_secs(1);
const REDIAL_MAX: Duration = Duration::from_secs(60);
/// A connection that lasted this long resets the backoff; a peer that accepts and
/// drops us at once (because it is full, say) keeps backing off instead.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);
/// How often the loop looks for static peers whose redial time has come.
const REDIAL_CHECK: Duration = Duration::from_millis(250);

/// How long start-up waits for every listener to report its address.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Quiet time after which a wildcard listener is taken to have named every interface.
const LISTEN_SETTLE: Duration = Duration::from_millis(100);

/// Agent strings come from the network; only this much is kept for display.
const MAX_AGENT_CHARS: usize = 100;

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
    #[error("the network task has stopped")]
    Stopped,
}

/// What the network side needs from the daemon's settings.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub listen: Vec<Multiaddr>,
    pub mdns: bool,
    pub static_peers: Vec<Multiaddr>,
}

/// A peer we are connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub peer_id: PeerId,
    /// The remote address of each open connection.
    pub addresses: Vec<Multiaddr>,
    /// The software the peer says it runs, once identify has answered.
    pub agent_version: Option<String>,
    /// Last measured round-trip time.
    pub rtt: Option<Duration>,
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
    streams: libp2p_stream::Control,
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

    /// Opens and accepts raw streams of protocols that run their own tasks beside the
    /// event loop (the block exchange): their bytes never pass through it.
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.streams.clone()
    }

    /// Closes every connection to `peer`: for a peer that broke a protocol's rules.
    pub async fn disconnect(&self, peer: PeerId) -> Result<(), NetError> {
        self.ask(|reply| Command::Disconnect { peer, reply }).await
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
}

#[derive(NetworkBehaviour)]
struct NodeBehaviour {
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    streams: libp2p_stream::Behaviour,
}

/// Builds the swarm, starts every listener and waits until each has an address.
/// Returns the handle, the loop to spawn, and the addresses bound.
pub async fn start(
    keypair: Keypair,
    config: NetConfig,
) -> Result<(Client, EventLoop, Vec<Multiaddr>), NetError> {
    let local_peer_id = keypair.public().to_peer_id();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|err| NetError::Transport(err.to_string()))?
        .with_behaviour(|key| {
            let limits = connection_limits::ConnectionLimits::default()
                .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                .with_max_pending_outgoing(Some(MAX_PENDING_OUTGOING))
                .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
                .with_max_established(Some(MAX_ESTABLISHED))
                .with_max_established_per_peer(Some(MAX_ESTABLISHED_PER_PEER));
            let mdns = if config.mdns {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    local_peer_id,
                )?)
            } else {
                None
            };
            Ok(NodeBehaviour {
                limits: connection_limits::Behaviour::new(limits),
                identify: identify::Behaviour::new(
                    identify::Config::new(PROTOCOL_VERSION.into(), key.public())
                        .with_agent_version(format!("oermesh/{}", env!("CARGO_PKG_VERSION"))),
                ),
                ping: ping::Behaviour::new(ping::Config::new()),
                mdns: Toggle::from(mdns),
                streams: libp2p_stream::Behaviour::new(),
            })
        })
        .map_err(|err| NetError::Transport(err.to_string()))?
        // A school mesh has few peers and uses them again and again; the connection
        // limits, not an idle timer, bound how many stay open.
        .with_swarm_config(|swarm_config| swarm_config.with_idle_connection_timeout(Duration::MAX))
        .build();

    let streams = swarm.behaviour().streams.new_control();
    let (commands, command_queue) = mpsc::channel(COMMAND_QUEUE);
    let mut event_loop = EventLoop {
        swarm,
        commands: command_queue,
        pending_dials: HashMap::new(),
        peers: BTreeMap::new(),
        static_peers: config
            .static_peers
            .into_iter()
            .map(StaticPeer::new)
            .collect(),
    };
    let bound = event_loop.listen(config.listen).await?;
    Ok((Client { commands, streams }, event_loop, bound))
}

/// Owns the swarm. Run it with [`EventLoop::run`] on its own task.
pub struct EventLoop {
    swarm: Swarm<NodeBehaviour>,
    commands: mpsc::Receiver<Command>,
    /// Dials asked for through [`Client::dial`], by the id of their connection.
    /// Bounded by the swarm's cap on pending outgoing connections.
    pending_dials: HashMap<ConnectionId, (Multiaddr, oneshot::Sender<Result<PeerId, NetError>>)>,
    peers: BTreeMap<PeerId, ConnectedPeer>,
    static_peers: Vec<StaticPeer>,
}

#[derive(Default)]
struct ConnectedPeer {
    connections: HashMap<ConnectionId, Multiaddr>,
    agent_version: Option<String>,
    rtt: Option<Duration>,
}

struct StaticPeer {
    addr: Multiaddr,
    /// From a `/p2p/...` suffix in the config, else the id seen on the last connection.
    known_id: Option<PeerId>,
    state: StaticState,
    backoff: Duration,
}

enum StaticState {
    Due(Instant),
    Dialing(ConnectionId),
    Connected { since: Instant },
}

impl StaticPeer {
    fn new(addr: Multiaddr) -> StaticPeer {
        let known_id = match addr.iter().last() {
            Some(Protocol::P2p(peer_id)) => Some(peer_id),
            _ => None,
        };
        StaticPeer {
            addr,
            known_id,
            state: StaticState::Due(Instant::now()),
            backoff: REDIAL_FIRST,
        }
    }

    fn retry_later(&mut self) {
        self.state = StaticState::Due(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(REDIAL_MAX);
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
                        tracing::info!(%address, "listening");
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

    /// Serves commands and swarm events until `shutdown` turns true (or its sender is
    /// dropped). Dropping the swarm then closes every connection.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut redial_check = tokio::time::interval(REDIAL_CHECK);
        redial_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.handle_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => break,
                },
                _ = redial_check.tick() => self.dial_due_static_peers(),
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Peers { reply } => {
                let _ = reply.send(self.peer_list());
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
        }
    }

    fn peer_list(&self) -> Vec<PeerInfo> {
        self.peers
            .iter()
            .map(|(peer_id, peer)| {
                let mut addresses: Vec<Multiaddr> = peer.connections.values().cloned().collect();
                addresses.sort();
                addresses.dedup();
                PeerInfo {
                    peer_id: *peer_id,
                    addresses,
                    agent_version: peer.agent_version.clone(),
                    rtt: peer.rtt,
                }
            })
            .collect()
    }

    fn handle_event(&mut self, event: SwarmEvent<NodeBehaviourEvent>) {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                tracing::info!(%peer_id, address = %endpoint.get_remote_address(), "connected");
                let mut address = endpoint.get_remote_address().clone();
                // The peer id is shown on its own; a dialled address repeats it.
                if matches!(address.iter().last(), Some(Protocol::P2p(_))) {
                    address.pop();
                }
                self.peers
                    .entry(peer_id)
                    .or_default()
                    .connections
                    .insert(connection_id, address);
                if let Some((_, reply)) = self.pending_dials.remove(&connection_id) {
                    let _ = reply.send(Ok(peer_id));
                }
                self.static_peer_connected(peer_id, connection_id);
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
                    self.static_peer_disconnected(peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
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
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if let Some(peer) = self.peers.get_mut(&peer_id) {
                    peer.agent_version =
                        Some(info.agent_version.chars().take(MAX_AGENT_CHARS).collect());
                }
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            })) => {
                if let Some(peer) = self.peers.get_mut(&peer) {
                    peer.rtt = Some(rtt);
                }
            }
            SwarmEvent::Behaviour(NodeBehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer_id, addr) in found {
                    by_peer.entry(peer_id).or_default().push(addr);
                }
                for (peer_id, addresses) in by_peer {
                    if !self.swarm.is_connected(&peer_id) {
                        tracing::debug!(%peer_id, "found on the local network");
                        // Refused only when a dial to that peer is already under way.
                        let _ = self
                            .swarm
                            .dial(DialOpts::peer_id(peer_id).addresses(addresses).build());
                    }
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "listening"),
            SwarmEvent::ListenerError { error, .. } => tracing::warn!(%error, "listener error"),
            _ => {}
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
                Ok(()) => static_peer.state = StaticState::Dialing(connection),
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

    fn static_peer_disconnected(&mut self, peer_id: PeerId) {
        for static_peer in &mut self.static_peers {
            if static_peer.known_id != Some(peer_id) {
                continue;
            }
            if let StaticState::Connected { since } = static_peer.state {
                if since.elapsed() >= STABLE_CONNECTION {
                    static_peer.backoff = REDIAL_FIRST;
                }
                tracing::info!(addr = %static_peer.addr, retry_in = ?static_peer.backoff, "static peer lost; will redial");
                static_peer.retry_later();
            }
        }
    }
}

/// Dials by peer id when the address names one, so that a peer answering with
/// another identity is refused.
fn dial_opts(addr: &Multiaddr) -> DialOpts {
    match addr.iter().last() {
        Some(Protocol::P2p(peer_id)) => DialOpts::peer_id(peer_id)
            .addresses(vec![addr.clone()])
            .build(),
        _ => DialOpts::unknown_peer_id().address(addr.clone()).build(),
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
    fn backoff_doubles_up_to_the_cap() {
        let mut peer = StaticPeer::new("/ip4/127.0.0.1/tcp/1".parse().unwrap());
        let mut waits = Vec::new();
        for _ in 0..10 {
            waits.push(peer.backoff);
            peer.retry_later();
        }
        assert_eq!(
            waits[..3],
            [REDIAL_FIRST, REDIAL_FIRST * 2, REDIAL_FIRST * 4]
        );
        assert_eq!(peer.backoff, REDIAL_MAX);
    }

    #[test]
    fn a_p2p_suffix_names_the_static_peer() {
        let id = Keypair::generate_ed25519().public().to_peer_id();
        let peer = StaticPeer::new(format!("/ip4/10.0.0.2/tcp/4001/p2p/{id}").parse().unwrap());
        assert_eq!(peer.known_id, Some(id));
        assert_eq!(dial_opts(&peer.addr).get_peer_id(), Some(id));
        assert_eq!(
            dial_opts(&"/ip4/10.0.0.2/tcp/4001".parse().unwrap()).get_peer_id(),
            None
        );
    }
}
