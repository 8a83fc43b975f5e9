//! What the event loop knows about the peers it is connected to, and the static peers
//! it keeps connected: plain data, kept apart from the swarm so it can be tested alone.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Sent to peers by identify. A peer is used only when its version is compatible (see
/// [`compatible`]); others are shown and left alone.
pub const PROTOCOL_VERSION: &str = "/oermesh/0.1.0";

/// First wait before redialling a static peer; doubles on each failure up to the cap.
pub const REDIAL_FIRST: Duration = Duration::from_secs(1);
pub const REDIAL_MAX: Duration = Duration::from_secs(60);
/// A connection that lasted this long resets the backoff; a peer that accepts and
/// drops us at once (because it is full, say) keeps backing off instead.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);

/// Strings from the network are cut to this many characters before they are kept.
pub const MAX_PEER_STRING_CHARS: usize = 100;
/// Listen addresses and protocols kept per peer from its identify answer.
pub const MAX_IDENTIFY_ITEMS: usize = 32;

/// How the node came to know a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Discovery {
    /// Multicast DNS on the local network.
    Mdns,
    /// A static peer from the config (or `oermesh peers add`).
    Static,
    /// The Kademlia DHT: a bootstrap node, a routing-table peer or a provider.
    Dht,
    /// It dialled us.
    Inbound,
    /// Dialled on request through the network client.
    Dial,
}

impl Discovery {
    pub fn as_str(self) -> &'static str {
        match self {
            Discovery::Mdns => "mdns",
            Discovery::Static => "static",
            Discovery::Dht => "dht",
            Discovery::Inbound => "inbound",
            Discovery::Dial => "dial",
        }
    }
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
    /// Every way the node found this peer, e.g. both mDNS and inbound.
    pub found_by: Vec<Discovery>,
    /// The protocol version identify reported.
    pub protocol_version: Option<String>,
    /// Whether it speaks a compatible oermesh version; `None` until identify answered.
    /// Incompatible peers (other oermesh versions, other libp2p software) are listed
    /// but never asked for anything.
    pub compatible: Option<bool>,
}

/// Whether a peer announcing `version` speaks our protocols: the same major version,
/// and while that is 0, the same minor version too.
pub fn compatible(version: &str) -> bool {
    fn line(version: &str) -> Option<(&str, &str)> {
        let number = version.strip_prefix("/oermesh/")?;
        let mut parts = number.split('.');
        let major = parts.next()?;
        let minor = parts.next()?;
        Some((major, if major == "0" { minor } else { "" }))
    }
    matches!((line(version), line(PROTOCOL_VERSION)), (Some(theirs), Some(ours)) if theirs == ours)
}

/// One open connection.
pub struct Connection {
    pub address: Multiaddr,
    pub found_by: Discovery,
    pub since: Instant,
}

#[derive(Default)]
pub struct ConnectedPeer {
    pub connections: HashMap<ConnectionId, Connection>,
    pub agent_version: Option<String>,
    pub protocol_version: Option<String>,
    pub rtt: Option<Duration>,
    /// Protocols the peer announced (capped).
    pub protocols: Vec<StreamProtocol>,
    /// Addresses the peer listens on, from identify (capped).
    pub listen_addrs: Vec<Multiaddr>,
}

impl ConnectedPeer {
    pub fn compatible(&self) -> Option<bool> {
        self.protocol_version.as_deref().map(compatible)
    }

    pub fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|p| p.as_ref() == protocol)
    }

    /// When the oldest open connection was made.
    pub fn connected_since(&self) -> Option<Instant> {
        self.connections.values().map(|c| c.since).min()
    }

    pub fn info(&self, peer_id: PeerId) -> PeerInfo {
        let mut addresses: Vec<Multiaddr> = self
            .connections
            .values()
            .map(|c| c.address.clone())
            .collect();
        addresses.sort();
        addresses.dedup();
        let found_by: BTreeSet<Discovery> = self.connections.values().map(|c| c.found_by).collect();
        PeerInfo {
            peer_id,
            addresses,
            agent_version: self.agent_version.clone(),
            rtt: self.rtt,
            found_by: found_by.into_iter().collect(),
            protocol_version: self.protocol_version.clone(),
            compatible: self.compatible(),
        }
    }
}

/// A string from the network, cut for keeping and display.
pub fn cut(text: &str) -> String {
    text.chars().take(MAX_PEER_STRING_CHARS).collect()
}

/// A multiaddr without its `/p2p/...` suffix: the peer id is shown on its own.
pub fn without_peer_id(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

/// The peer id a multiaddr ends with, if any.
pub fn peer_id_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer_id)) => Some(peer_id),
        _ => None,
    }
}

/// Which peers to disconnect when `excess` connections must go. Protected peers
/// (static peers, peers we share a collection with, peers in the middle of a transfer)
/// are never chosen. Incompatible peers go first, then the most recently connected:
/// a peer that has been useful for long is kept over a newcomer.
pub fn trim_candidates<'a>(
    peers: impl Iterator<Item = (&'a PeerId, &'a ConnectedPeer)>,
    protected: impl Fn(&PeerId) -> bool,
    excess: usize,
) -> Vec<PeerId> {
    let mut candidates: Vec<(bool, std::cmp::Reverse<Option<Instant>>, PeerId, usize)> = peers
        .filter(|(peer_id, _)| !protected(peer_id))
        .map(|(peer_id, peer)| {
            (
                peer.compatible() == Some(true),
                std::cmp::Reverse(peer.connected_since()),
                *peer_id,
                peer.connections.len(),
            )
        })
        .collect();
    candidates.sort();
    let mut chosen = Vec::new();
    let mut freed = 0;
    for (_, _, peer_id, connections) in candidates {
        if freed >= excess {
            break;
        }
        chosen.push(peer_id);
        freed += connections;
    }
    chosen
}

/// A peer from the config that is kept connected.
pub struct StaticPeer {
    pub addr: Multiaddr,
    /// From a `/p2p/...` suffix in the config, else the id seen on the last connection.
    pub known_id: Option<PeerId>,
    pub state: StaticState,
    pub backoff: Duration,
}

pub enum StaticState {
    Due(Instant),
    Dialing(ConnectionId),
    Connected { since: Instant },
}

impl StaticPeer {
    pub fn new(addr: Multiaddr) -> StaticPeer {
        StaticPeer {
            known_id: peer_id_of(&addr),
            addr,
            state: StaticState::Due(Instant::now()),
            backoff: REDIAL_FIRST,
        }
    }

    pub fn retry_later(&mut self) {
        self.state = StaticState::Due(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(REDIAL_MAX);
    }

    /// The connection to this peer closed.
    pub fn lost(&mut self) {
        if let StaticState::Connected { since } = self.state {
            if since.elapsed() >= STABLE_CONNECTION {
                self.backoff = REDIAL_FIRST;
            }
            tracing::info!(addr = %self.addr, retry_in = ?self.backoff, "static peer lost; will redial");
            self.retry_later();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

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
        let addr: Multiaddr = format!("/ip4/10.0.0.2/tcp/4001/p2p/{id}").parse().unwrap();
        let peer = StaticPeer::new(addr.clone());
        assert_eq!(peer.known_id, Some(id));
        assert_eq!(without_peer_id(&addr).to_string(), "/ip4/10.0.0.2/tcp/4001");
        assert_eq!(peer_id_of(&"/ip4/10.0.0.2/tcp/4001".parse().unwrap()), None);
    }

    #[test]
    fn versions_are_compatible_within_a_line() {
        assert!(compatible(PROTOCOL_VERSION));
        assert!(compatible("/oermesh/0.1.7"));
        assert!(!compatible("/oermesh/0.2.0"), "0.x minor versions differ");
        assert!(!compatible("/oermesh/1.1.0"));
        assert!(
            !compatible("/ipfs/0.1.0"),
            "kubo and js-libp2p are not oermesh"
        );
        assert!(!compatible(""));
    }

    #[test]
    fn trimming_spares_protected_peers_and_drops_incompatible_ones_first() {
        let ids: Vec<PeerId> = (0..4)
            .map(|_| Keypair::generate_ed25519().public().to_peer_id())
            .collect();
        let start = Instant::now();
        let peer = |version: &str, age_secs: u64| {
            let mut peer = ConnectedPeer {
                protocol_version: Some(version.into()),
                ..ConnectedPeer::default()
            };
            peer.connections.insert(
                ConnectionId::new_unchecked(age_secs as usize),
                Connection {
                    address: "/ip4/127.0.0.1/tcp/1".parse().unwrap(),
                    found_by: Discovery::Inbound,
                    since: start - Duration::from_secs(age_secs),
                },
            );
            peer
        };
        let table: HashMap<PeerId, ConnectedPeer> = [
            (ids[0], peer(PROTOCOL_VERSION, 100)),
            (ids[1], peer(PROTOCOL_VERSION, 5)),
            (ids[2], peer("/ipfs/0.1.0", 100)),
            (ids[3], peer(PROTOCOL_VERSION, 1)),
        ]
        .into_iter()
        .collect();
        let protected = |id: &PeerId| *id == ids[3];
        assert_eq!(trim_candidates(table.iter(), protected, 1), vec![ids[2]]);
        assert_eq!(
            trim_candidates(table.iter(), protected, 2),
            vec![ids[2], ids[1]],
            "then the newest compatible peer; the protected one never"
        );
        assert_eq!(trim_candidates(table.iter(), protected, 9).len(), 3);
    }
}
