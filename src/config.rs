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
# Addresses the node accepts peer connections on (libp2p multiaddrs).
listen = ["/ip4/0.0.0.0/tcp/4001"]
# Find other oermesh nodes on the local network by multicast DNS.
mdns = true
# Peers to connect to directly, for networks that block multicast
# (e.g. "/ip4/192.168.1.20/tcp/4001").
static_peers = []

[api]
# While the daemon runs, every oermesh command on this machine talks to it through
# the socket api.sock in this repository (mode 0600: only this user can use it).
# A group whose members may use the socket too (mode 0660), e.g. "oermesh"; empty: none.
socket_group = ""
# Also serve the API on a TCP address, e.g. "127.0.0.1:5001"; empty: off. Every
# request must then carry "Authorization: Bearer TOKEN", with the token the daemon
# writes to api.token in this repository. Never use an address students can reach.
listen = ""

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
    pub gateway: GatewaySection,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    pub cache_mb: u64,
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
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    pub socket_group: String,
    pub listen: String,
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
        }
    }
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection { cache_mb: 64 }
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
            listen: vec!["/ip4/0.0.0.0/tcp/4001".into()],
            mdns: true,
            static_peers: Vec::new(),
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
        for publisher in publishers {
            list.push(publisher.as_str());
        }
        if !doc.contains_key("trust") {
            doc["trust"] = toml_edit::table();
        }
        doc["trust"]["publishers"] = toml_edit::value(list);
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
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("[store]\ncache_mib = 3\n").is_err());
    }
}
