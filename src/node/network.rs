//! The user actions that concern the network: identity, peers, static peers. While a
//! daemon runs they reach its network through [`Online`]; without one, `id` and the
//! static-peer edits work on the repository alone and `peers` says the daemon is not
//! running.

use libp2p::{Multiaddr, PeerId};

use super::views::{IdView, PeerView, StaticPeerEdit};
use super::{Node, NodeError, Result};
use crate::config::Config;
use crate::daemon::net::{self, NetError};
use crate::daemon::Online;
use crate::node::ErrorCode;

impl Node {
    /// Connects the service layer to a running daemon's network (`None`: disconnects).
    pub fn set_online(&self, online: Option<Online>) {
        *self
            .inner
            .online
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = online;
    }

    pub(crate) fn online(&self) -> Option<Online> {
        self.inner
            .online
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Tells the remote pinning task that a collection version was accepted here.
    pub(crate) fn wake_remote_pins(&self) {
        if let Some(online) = self.online() {
            online.remote_pins().notify_one();
        }
    }

    fn require_online(&self) -> Result<Online> {
        self.online().ok_or_else(|| {
            NodeError::refused(
                ErrorCode::Unavailable,
                "the daemon is not running: start it with `oermesh daemon` to connect to peers",
            )
        })
    }

    /// The node's peer id, from its key file.
    pub fn peer_id(&self) -> Result<PeerId> {
        let keypair = net::read_node_key(&self.node_key_path()).map_err(|err| {
            NodeError::refused(ErrorCode::Repository, crate::node::one_line(&err))
        })?;
        Ok(keypair.public().to_peer_id())
    }

    /// The peer id and the addresses peers can dial: the daemon's real ones when it
    /// runs, the configured ones otherwise.
    pub fn id(&self) -> Result<IdView> {
        let peer_id = self.peer_id()?;
        let (addresses, running) = match self.online() {
            Some(online) => {
                let addrs = online.call(online.client().listen_addrs())?;
                (addrs.iter().map(|addr| addr.to_string()).collect(), true)
            }
            None => (self.config().daemon.listen, false),
        };
        Ok(IdView {
            peer_id: peer_id.to_string(),
            addresses: addresses
                .into_iter()
                .map(|addr| format!("{addr}/p2p/{peer_id}"))
                .collect(),
            running,
        })
    }

    /// The peers the daemon is connected to.
    pub fn peers(&self) -> Result<Vec<PeerView>> {
        let online = self.require_online()?;
        let peers = online.call(online.client().peers())?;
        Ok(peers
            .into_iter()
            .map(|peer| PeerView {
                peer_id: peer.peer_id.to_string(),
                addresses: peer.addresses.iter().map(ToString::to_string).collect(),
                rtt_ms: peer.rtt.map(|rtt| rtt.as_secs_f64() * 1000.0),
                agent: peer.agent_version,
                protocol_version: peer.protocol_version,
                compatible: peer.compatible,
                found_by: peer
                    .found_by
                    .iter()
                    .map(|way| way.as_str().to_string())
                    .collect(),
            })
            .collect())
    }

    /// Adds a static peer to config.toml and, when the daemon runs, dials it now.
    pub fn peers_add(&self, addr: &str) -> Result<StaticPeerEdit> {
        let addr = parse_peer_addr(addr)?;
        let _edits = self.lock_trust_edits();
        let mut peers = self.config().daemon.static_peers;
        if configured_index(&peers, &addr).is_some() {
            return Err(NodeError::refused(
                ErrorCode::AlreadyExists,
                format!("{addr} is already a static peer"),
            ));
        }
        peers.push(addr.to_string());
        self.save_static_peers(peers)?;
        let running = match self.online() {
            Some(online) => {
                online.call(online.client().add_static_peer(addr.clone()))?;
                true
            }
            None => false,
        };
        Ok(StaticPeerEdit {
            addr: addr.to_string(),
            running,
        })
    }

    /// Removes a static peer from config.toml and from the running daemon, which stops
    /// redialling it (a connection open now stays until it closes).
    pub fn peers_rm(&self, addr: &str) -> Result<StaticPeerEdit> {
        let addr = parse_peer_addr(addr)?;
        let _edits = self.lock_trust_edits();
        let mut peers = self.config().daemon.static_peers;
        let configured = configured_index(&peers, &addr);
        if let Some(index) = configured {
            peers.remove(index);
            self.save_static_peers(peers)?;
        }
        let (running, removed_from_daemon) = match self.online() {
            Some(online) => (
                true,
                online.call(online.client().remove_static_peer(addr.clone()))?,
            ),
            None => (false, false),
        };
        if configured.is_none() && !removed_from_daemon {
            return Err(NodeError::not_found(format!("{addr} is not a static peer")));
        }
        Ok(StaticPeerEdit {
            addr: addr.to_string(),
            running,
        })
    }

    fn save_static_peers(&self, peers: Vec<String>) -> Result<()> {
        Config::save_static_peers(&self.inner.repo.config_path(), &peers)
            .map_err(crate::repo::RepoError::from)?;
        self.inner
            .config
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .daemon
            .static_peers = peers;
        Ok(())
    }
}

impl From<NetError> for NodeError {
    fn from(err: NetError) -> Self {
        let code = match err {
            NetError::Listen { .. } | NetError::Transport(_) => ErrorCode::Io,
            NetError::NodeKey { .. } => ErrorCode::Repository,
            NetError::Dial { .. } => ErrorCode::NotFound,
            NetError::Busy | NetError::Stopped | NetError::Timeout | NetError::Request { .. } => {
                ErrorCode::Unavailable
            }
        };
        NodeError::refused(code, err.to_string())
    }
}

/// A peer address: an IP address and a transport (`/ip4/…/tcp/…`, QUIC), optionally
/// ending in `/p2p/PEER_ID`. Names (`/dns/…`) are not resolved: school networks often
/// have no DNS for their servers, and an address that only works some days is worse
/// than none.
fn parse_peer_addr(text: &str) -> Result<Multiaddr> {
    let text = text.trim();
    let invalid = || {
        NodeError::invalid(format!(
            "`{text}` is not a peer address such as /ip4/192.168.1.20/tcp/4001 \
             (optionally ending in /p2p/PEER_ID)"
        ))
    };
    let addr: Multiaddr = text.parse().map_err(|_| invalid())?;
    use libp2p::multiaddr::Protocol;
    let has_ip = addr
        .iter()
        .any(|part| matches!(part, Protocol::Ip4(_) | Protocol::Ip6(_)));
    let has_transport = addr
        .iter()
        .any(|part| matches!(part, Protocol::Tcp(_) | Protocol::QuicV1));
    if has_ip && has_transport {
        Ok(addr)
    } else {
        Err(invalid())
    }
}

/// Where `addr` sits in the configured list, comparing parsed addresses.
fn configured_index(peers: &[String], addr: &Multiaddr) -> Option<usize> {
    peers
        .iter()
        .position(|text| text.parse::<Multiaddr>().ok().as_ref() == Some(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_need_a_transport() {
        assert!(parse_peer_addr(" /ip4/192.168.1.20/tcp/4001 ").is_ok());
        assert!(parse_peer_addr("/ip4/192.168.1.20/udp/4001/quic-v1").is_ok());
        for bad in [
            "192.168.1.20:4001",
            "/ip4/192.168.1.20",
            "/dns/school.example/tcp/4001",
            "",
        ] {
            let err = parse_peer_addr(bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidArgument, "{bad}");
        }
    }
}
