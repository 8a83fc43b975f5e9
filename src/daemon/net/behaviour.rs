//! The swarm: transports, and the behaviours the node runs on every connection. One
//! struct, [`NodeBehaviour`]; a new protocol is one more field here and one more arm
//! in the event loop's `handle_behaviour_event`.

use std::num::NonZeroUsize;
use std::time::Duration;

use libp2p::gossipsub::{self, MessageAuthenticity, PeerScoreParams, PeerScoreThresholds};
use libp2p::identity::Keypair;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::kad::{self, StoreInserts};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    allow_block_list, connection_limits, identify, mdns, memory_connection_limits, noise, ping,
    tcp, tls, yamux, Swarm,
};

use super::inbound;
use super::peers::PROTOCOL_VERSION;
use super::wire::{self, KAD_PROTOCOL};
use super::{NetConfig, NetError};

/// Handshakes in progress that we started.
const MAX_PENDING_OUTGOING: u32 = 32;

/// Provider records this node keeps, its own and other nodes' (see docs/DAEMON.md on
/// how providing scales).
const MAX_PROVIDER_KEYS: usize = 1 << 18;
/// How long a DHT query may run.
const KAD_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Below this gossip score a peer is disconnected and refused for a while: four
/// invalid messages in a row take it there (see `topic_score_params`).
pub const BAN_SCORE: f64 = -100.0;
/// How often a peer is identified again (libp2p's default is 5 minutes). Only the
/// first identification of a connection starts anything (the heads exchange).
const IDENTIFY_INTERVAL: Duration = Duration::from_secs(60);

#[derive(NetworkBehaviour)]
pub struct NodeBehaviour {
    /// Peers cut off for misbehaving; first, so their connections are refused early.
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub limits: connection_limits::Behaviour,
    pub memory: memory_connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub kad: kad::Behaviour<MemoryStore>,
    pub gossip: gossipsub::Behaviour,
    pub heads: wire::HeadsBehaviour,
    pub objects: wire::ObjectsBehaviour,
    /// Raw streams for protocols that move bulk data on their own tasks: those we open,
    /// and those peers open to us.
    pub streams: libp2p_stream::Behaviour,
    pub inbound: inbound::Behaviour,
}

/// Yamux streams per connection, chosen for what it does to windows. js-libp2p's yamux
/// (Helia, js-libp2p 3) sends a data frame as large as the window it is granted, while
/// rust-yamux closes the whole connection on a frame above 1 MiB; its stream windows
/// grow from 256 KiB as far as the connection's 1 GiB allows. Each stream is
/// guaranteed 256 KiB of that 1 GiB, so this many streams leave 768 KiB to share out:
/// no window, hence no frame a peer may send, exceeds 1 MiB. The price is yamux
/// throughput over long round trips (QUIC is not affected).
const YAMUX_STREAMS: usize = 4093;
const YAMUX_CONNECTION_WINDOW: usize = 1 << 30;
const YAMUX_STREAM_CREDIT: usize = 256 * 1024;
const YAMUX_MAX_FRAME: usize = 1 << 20;
const _: () = assert!(
    YAMUX_CONNECTION_WINDOW - YAMUX_STREAMS * YAMUX_STREAM_CREDIT + YAMUX_STREAM_CREDIT
        <= YAMUX_MAX_FRAME
);

fn yamux_config() -> yamux::Config {
    let mut config = yamux::Config::default();
    config.set_max_num_streams(YAMUX_STREAMS);
    config
}

/// Builds the swarm: TCP with TLS 1.3 or Noise (both offered) and Yamux, QUIC beside
/// it, and the behaviours configured from `config`.
pub fn build_swarm(
    keypair: Keypair,
    config: &NetConfig,
    inbound: inbound::Registry,
) -> Result<Swarm<NodeBehaviour>, NetError> {
    let local_peer_id = keypair.public().to_peer_id();
    let transport_error = |err: &dyn std::fmt::Display| NetError::Transport(err.to_string());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            // Offered in this order: TLS (AES-GCM, which AES-NI makes cheap) is the faster
            // here (scripts/bench); peers without it, js-libp2p say, settle on Noise.
            (tls::Config::new, noise::Config::new),
            yamux_config,
        )
        .map_err(|err| transport_error(&err))?
        .with_quic()
        .with_behaviour(|key| {
            let limits = connection_limits::ConnectionLimits::default()
                .with_max_pending_incoming(Some(config.limits.max_pending_incoming))
                .with_max_pending_outgoing(Some(MAX_PENDING_OUTGOING))
                // Half the slots at most for peers that dialled us: an attacker opening
                // many connections cannot take the ones this node needs for its own dials.
                .with_max_established_incoming(Some(config.limits.max_connections.div_ceil(2)))
                .with_max_established(Some(config.limits.max_connections))
                .with_max_established_per_peer(Some(config.limits.max_connections_per_peer));
            let mdns = if config.mdns {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    local_peer_id,
                )?)
            } else {
                None
            };
            Ok(NodeBehaviour {
                blocked: allow_block_list::Behaviour::default(),
                limits: connection_limits::Behaviour::new(limits),
                memory: memory_connection_limits::Behaviour::with_max_bytes(
                    config.limits.max_memory_bytes,
                ),
                identify: identify::Behaviour::new(
                    identify::Config::new(PROTOCOL_VERSION.into(), key.public())
                        .with_agent_version(format!("oermesh/{}", env!("CARGO_PKG_VERSION")))
                        // After a failed exchange (a stream that timed out on a busy
                        // machine) identify waits this long before it tries again, and
                        // until it succeeds the peer is not used: not five minutes.
                        .with_interval(IDENTIFY_INTERVAL),
                ),
                ping: ping::Behaviour::new(ping::Config::new()),
                mdns: Toggle::from(mdns),
                kad: kademlia(local_peer_id, config.dht_server),
                gossip: gossip(key)?,
                heads: wire::heads_behaviour(),
                objects: wire::objects_behaviour(),
                streams: libp2p_stream::Behaviour::new(),
                inbound: inbound::Behaviour::new(inbound),
            })
        })
        .map_err(|err| transport_error(&err))?
        // A school mesh has few peers and uses them again and again: connections are not
        // closed for being idle. The limits bound how many stay open, and the event loop
        // trims the least useful ones when they near the limit.
        .with_swarm_config(|swarm_config| swarm_config.with_idle_connection_timeout(Duration::MAX))
        .build();
    Ok(swarm)
}

/// Gossipsub for collection heads: every message is held until the node has checked
/// it (size, signature, seq), message ids come from the content, and invalid
/// messages count against the peer that sent them.
fn gossip(key: &Keypair) -> Result<gossipsub::Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .message_id_fn(|message: &gossipsub::Message| wire::message_id(&message.data))
        .max_transmit_size(wire::MAX_GOSSIP_FRAME)
        // Heartbeats a message stays forwardable while it waits for its check.
        .history_length(10)
        .build()?;
    let mut gossip = gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), config)?;
    let params = PeerScoreParams {
        // Schools share public addresses (a district's NAT): many peers from one IP is
        // normal here, not a sign of an attack.
        ip_colocation_factor_weight: 0.0,
        ..PeerScoreParams::default()
    };
    let thresholds = PeerScoreThresholds {
        // gossipsub's own default (-80) would start ignoring a peer's messages before
        // they brought it to BAN_SCORE: a peer sending invalid heads one at a time would
        // then be muted but never cut off. Here muting and cutting off coincide.
        graylist_threshold: BAN_SCORE,
        ..PeerScoreThresholds::default()
    };
    gossip.with_peer_score(params, thresholds)?;
    Ok(gossip)
}

/// Scoring of one collection's topic. Heads are rare, so a mesh peer that delivers
/// few is not at fault (P3 off); an invalid message costs 10 times its count
/// squared, and the count decays by 1 % a second.
pub fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: 0.5,
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.99,
        ..gossipsub::TopicScoreParams::default()
    }
}

fn kademlia(local_peer_id: libp2p::PeerId, server: bool) -> kad::Behaviour<MemoryStore> {
    let store = MemoryStore::with_config(
        local_peer_id,
        MemoryStoreConfig {
            // oermesh stores no values in the DHT, only provider records.
            max_records: 0,
            max_value_bytes: 0,
            max_provided_keys: MAX_PROVIDER_KEYS,
            ..MemoryStoreConfig::default()
        },
    );
    let mut config = kad::Config::new(KAD_PROTOCOL);
    config
        // Records reach the event loop, which checks them before storing.
        .set_record_filtering(StoreInserts::FilterBoth)
        // The event loop re-provides its keys at its own pace: kad's own job would start
        // one DHT walk per key at the same moment.
        .set_provider_publication_interval(None)
        .set_query_timeout(KAD_QUERY_TIMEOUT)
        .set_replication_factor(NonZeroUsize::new(20).unwrap_or(NonZeroUsize::MIN));
    let mut kad = kad::Behaviour::with_config(local_peer_id, store, config);
    // There is no AutoNAT on a school LAN to find out that the node is reachable: the
    // mode comes from the config.
    kad.set_mode(Some(if server {
        kad::Mode::Server
    } else {
        kad::Mode::Client
    }));
    kad
}
