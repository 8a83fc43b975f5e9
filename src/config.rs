//! The repository's `config.toml`: documented defaults, strict parsing.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The file `oermesh init` writes. Every setting is present, with a comment saying
/// what it does, so an administrator can read and edit it without other docs.
pub const DEFAULT_CONFIG: &str = r#"# oermesh node configuration.
# Lines starting with '#' are comments. Restart the daemon after editing.

[store]
# Memory sled may use as its page cache, in MiB. Memory stays bounded by this
# (plus working buffers) however large the store grows.
cache_mb = 64
# The most bytes of blocks this node keeps for collections it follows, in MiB; 0: no
# limit but the disk. Followed content stops being fetched when it is reached (the
# resources already being fetched may pass it by a little); other writes (add,
# import) are not limited.
quota_mb = 0
# Free space kept on the repository's file system, in MiB: followed content stops
# being fetched while less is free, so that the disk never fills up.
reserve_mb = 256

[add]
# How files are cut into blocks. "unixfs-v1-2025" (CIDv1, 1 MiB chunks) gives the
# same CIDs as current IPFS tools; "unixfs-v0-2015" gives classic `Qm...` CIDs.
profile = "unixfs-v1-2025"

[trust]
# Publishers (did:key:z6Mk...) whose records and collections this node accepts as
# trusted and may follow automatically. Manage with `oermesh trust add|rm|list`.
publishers = []

[daemon]
# Address of the web page and HTTP gateway for browsers. Use "0.0.0.0:8080" to
# serve every machine on the school network.
http_listen = "127.0.0.1:8080"
# Addresses the node accepts peer connections on (libp2p multiaddrs): TCP, and QUIC
# over UDP where the network lets it through (TCP is always enough).
listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
# Find other oermesh nodes on the local network by multicast DNS.
mdns = true
# Peers to connect to directly, for networks that block multicast
# (e.g. "/ip4/192.168.1.20/tcp/4001"). Manage with `oermesh peers add|rm`.
static_peers = []
# Nodes that introduce this one to the wider oermesh network (the Kademlia DHT), as
# multiaddrs ending in /p2p/PEER_ID. Empty: the node contacts nobody beyond its LAN
# and static peers.
bootstrap = []
# "server": answer other nodes' DHT queries (school servers on a LAN, mirrors);
# "client": only ask (a node behind NAT that other nodes cannot dial).
dht_mode = "server"
# Connections open at once: in all, and to any one peer.
max_connections = 128
max_connections_per_peer = 2
# Handshakes in progress from peers that dialled this node.
max_pending_incoming = 16
# New connections are refused while the daemon uses more memory than this, in MiB.
max_memory_mb = 1024
# Most bytes per second of blocks sent to peers, and fetched from them, e.g. "2 MB/s"
# or "16 Mbit/s" (at least 64 kB/s); empty: no limit. A school's uplink is shared with
# its classrooms. Browsers on the school network are not limited by these.
max_upload_rate = ""
max_download_rate = ""
# Hours, in this machine's local time, in which the content of followed collections
# is fetched, e.g. "22:00-06:00" to leave the school day's uplink to the classrooms;
# empty: any time. What a user asks for (cat, get, the web page) is fetched at once.
sync_hours = ""

[api]
# While the daemon runs, every oermesh command on this machine talks to it through
# the socket api.sock in this repository (mode 0600: only this user can use it).
# A group whose members may use the socket too (mode 0660), e.g. "oermesh"; empty: none.
socket_group = ""
# Also serve the API on a TCP address, e.g. "127.0.0.1:5001"; empty: off. Every
# request must then carry "Authorization: Bearer TOKEN", with the token the daemon
# writes to api.token in this repository. Never use an address students can reach.
listen = ""
# Also serve the IPFS Pinning Service API (/pins) alone on a TCP address, e.g.
# "0.0.0.0:5002", so that IPFS Cluster or `ipfs pin remote` elsewhere can ask this
# node to fetch and hold CIDs; empty: off (/pins is still on the socket and on
# `listen`). Requests must carry "Authorization: Bearer TOKEN", with the token the
# daemon writes to pins.token in this repository. Never the web page's address.
pins_listen = ""

[replication]
# IPFS pinning services (the IPFS Pinning Service API: IPFS Cluster, another oermesh
# node's api.pins_listen, a commercial service) asked to pin each version of every
# collection this node publishes or follows, with this node's addresses as origins:
# the service fetches it from here over bitswap. `oermesh follow status` shows them.
# pinning_services = [
#   { name = "national-library", url = "http://192.168.1.30:9097", token = "SECRET" },
# ]
pinning_services = []

[gateway]
# Limits of the web page and HTTP gateway (daemon.http_listen). The defaults suit a
# school server; every student's browser is one client.
# Browser connections open at once; more wait until one closes.
max_connections = 512
# Connections open at once from one IP address; more are refused (429).
max_connections_per_client = 64
# Seconds a client has to send a request's headers; also how long an idle
# connection stays open. Clients that send slower are cut off.
header_timeout_secs = 10
# Seconds a client may stop reading a response before it is abandoned.
send_timeout_secs = 60
# Largest request line plus headers, in bytes (larger ones get 431).
max_header_bytes = 16384
# Most byte ranges one Range request may ask for (more get 416).
max_ranges = 16
# Seconds a request waits for a block from peers before answering 504.
fetch_timeout_secs = 30
# Requests one client (an IP address; for IPv6 its /64) may make: this many a second,
# with bursts of up to request_burst_per_client. More are answered 429 with the
# seconds to wait. The page's style sheet and script are not counted. 0: no limit
# (a school whose browsers all reach the server through one proxy address).
requests_per_second_per_client = 50
request_burst_per_client = 500

[group]
# A replication group: nodes (a school district, a national mirror set) that share
# the keeping of collections, so that each resource is held by a set number of
# members rather than by all of them. Empty name: this node is in no group.
name = ""
# The other members' peer ids (12D3Koo..., from `oermesh id` on each). Put their
# addresses in daemon.static_peers too, unless mDNS finds them.
members = []
# Seconds between exchanges of what each member holds (also sent at once when
# what this node holds changes).
exchange_interval_secs = 30
# Seconds between challenges to each member: it must prove that it holds a random
# part of what it claims, or its claims are not counted.
challenge_interval_secs = 60
# The collections the group keeps, each with how many members must hold every
# resource. Each member also follows the collection (`oermesh follow ID`); it then
# holds its share of it instead of all of it.
# [[group.collections]]
# id = "z6Mk.../maths-grade-5"
# replicas = 2
"#;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid oermesh config: {message}")]
    Parse { path: String, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub store: StoreSection,
    pub add: AddSection,
    pub trust: TrustSection,
    pub daemon: DaemonSection,
    pub api: ApiSection,
    pub replication: ReplicationSection,
    pub gateway: GatewaySection,
    pub group: GroupSection,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    pub cache_mb: u64,
    pub quota_mb: u64,
    pub reserve_mb: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AddSection {
    pub profile: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrustSection {
    pub publishers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSection {
    pub http_listen: String,
    pub listen: Vec<String>,
    pub mdns: bool,
    pub static_peers: Vec<String>,
    pub bootstrap: Vec<String>,
    pub dht_mode: String,
    pub max_connections: u32,
    pub max_connections_per_peer: u32,
    pub max_pending_incoming: u32,
    pub max_memory_mb: u64,
    pub max_upload_rate: String,
    pub max_download_rate: String,
    pub sync_hours: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    pub socket_group: String,
    pub listen: String,
    pub pins_listen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSection {
    pub pinning_services: Vec<PinningService>,
}

/// A remote IPFS pinning service: its name (shown by `follow status`), the base URL
/// its `/pins` is under, and the bearer token it gave this node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PinningService {
    pub name: String,
    pub url: String,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub header_timeout_secs: u64,
    pub send_timeout_secs: u64,
    pub max_header_bytes: usize,
    pub max_ranges: usize,
    pub fetch_timeout_secs: u64,
    pub requests_per_second_per_client: u32,
    pub request_burst_per_client: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GroupSection {
    pub name: String,
    pub members: Vec<String>,
    pub exchange_interval_secs: u64,
    pub challenge_interval_secs: u64,
    pub collections: Vec<GroupCollection>,
}

/// A collection a replication group keeps, and on how many members.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupCollection {
    pub id: String,
    pub replicas: u32,
}

impl Default for GroupSection {
    fn default() -> Self {
        GroupSection {
            name: String::new(),
            members: Vec::new(),
            exchange_interval_secs: 30,
            challenge_interval_secs: 60,
            collections: Vec::new(),
        }
    }
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            max_connections: 512,
            max_connections_per_client: 64,
            header_timeout_secs: 10,
            send_timeout_secs: 60,
            max_header_bytes: 16 * 1024,
            max_ranges: 16,
            fetch_timeout_secs: 30,
            requests_per_second_per_client: 50,
            request_burst_per_client: 500,
        }
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            cache_mb: 64,
            quota_mb: 0,
            reserve_mb: 256,
        }
    }
}

impl Default for AddSection {
    fn default() -> Self {
        AddSection {
            profile: "unixfs-v1-2025".into(),
        }
    }
}

impl Default for DaemonSection {
    fn default() -> Self {
        DaemonSection {
            http_listen: "127.0.0.1:8080".into(),
            listen: vec![
                "/ip4/0.0.0.0/tcp/4001".into(),
                "/ip4/0.0.0.0/udp/4001/quic-v1".into(),
            ],
            mdns: true,
            static_peers: Vec::new(),
            bootstrap: Vec::new(),
            dht_mode: "server".into(),
            max_connections: 128,
            max_connections_per_peer: 2,
            max_pending_incoming: 16,
            max_memory_mb: 1024,
            max_upload_rate: String::new(),
            max_download_rate: String::new(),
            sync_hours: String::new(),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|err| ConfigError::Parse {
            path: path.display().to_string(),
            message: err.message().to_string(),
        })
    }

    /// Rewrites the trusted publishers list, keeping the file's comments and layout.
    pub fn save_trusted(path: &Path, publishers: &[String]) -> Result<(), ConfigError> {
        Config::save_list(path, "trust", "publishers", publishers)
    }

    /// Rewrites the static peers list, keeping the file's comments and layout.
    pub fn save_static_peers(path: &Path, peers: &[String]) -> Result<(), ConfigError> {
        Config::save_list(path, "daemon", "static_peers", peers)
    }

    /// Replaces one list of strings in the file, keeping every comment and the layout
    /// around it; the file is replaced whole (written aside, then renamed).
    fn save_list(
        path: &Path,
        section: &str,
        key: &str,
        values: &[String],
    ) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut doc: toml_edit::DocumentMut =
            text.parse()
                .map_err(|err: toml_edit::TomlError| ConfigError::Parse {
                    path: path.display().to_string(),
                    message: err.message().to_string(),
                })?;
        let mut list = toml_edit::Array::new();
        for value in values {
            list.push(value.as_str());
        }
        if !doc.contains_key(section) {
            doc[section] = toml_edit::table();
        }
        match doc[section]
            .get_mut(key)
            .and_then(|item| item.as_value_mut())
        {
            // Keep the comment and spacing that decorate the existing value.
            Some(existing) => {
                let decor = existing.decor().clone();
                *existing = toml_edit::Value::Array(list);
                *existing.decor_mut() = decor;
            }
            None => doc[section][key] = toml_edit::value(list),
        }
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, doc.to_string())
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|source| ConfigError::Write {
                path: path.display().to_string(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_defaults_match_code_defaults() {
        let parsed: Config = toml::from_str(DEFAULT_CONFIG).unwrap();
        assert_eq!(
            parsed,
            Config::default(),
            "the documented file and the code must agree"
        );
    }

    #[test]
    fn editing_a_list_keeps_the_comments_around_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, DEFAULT_CONFIG).unwrap();
        let peers = vec!["/ip4/192.168.1.20/tcp/4001".to_string()];
        Config::save_static_peers(&path, &peers).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = DEFAULT_CONFIG.replace(
            "static_peers = []",
            "static_peers = [\"/ip4/192.168.1.20/tcp/4001\"]",
        );
        assert_eq!(text, expected, "only the list changed");
        assert_eq!(Config::load(&path).unwrap().daemon.static_peers, peers);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("[store]\ncache_mib = 3\n").is_err());
    }
}
