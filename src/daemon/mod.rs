//! `oermesh daemon`: the node's long-running job.
//!
//! The daemon owns the node. Three kinds of task share it: the network event loop
//! ([`net`]), the browser-facing web server ([`crate::web`]), and the local API
//! ([`crate::api::server`]) through which every other `oermesh` command works while the
//! daemon runs. Store work runs on one bounded [`pool::BlockingPool`], never on the
//! event loop or the async threads. [`Daemon`] starts them, reports where they listen,
//! and stops them together; [`run`] adds the start-up line and signal handling.

pub mod follow;
pub mod group;
pub mod mirror;
pub mod net;
pub mod pinning;
pub mod pool;
pub mod remote_pins;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::fds::FdRegistry;
use crate::api::server::{self as api_server, ApiState};
use crate::bandwidth::{self, Bandwidth, SyncHours, Throttle};
use crate::bitswap::{self, Bitswap};
use crate::config::{ApiSection, DaemonSection};
use crate::exchange::{self, Exchange, ExchangeConfig};
use crate::metrics::Metrics;
use crate::node::{Node, NodeError};
use crate::pinning::PinRequests;
use crate::store::StoreError;
use crate::web::{self, WebConfig, WebError, WebParts};
use net::{Client, Limits, NetConfig, NetError};
use pool::BlockingPool;

/// How long shutdown lets browsers finish their requests before cutting them off.
const HTTP_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the service layer waits for the network task to answer a command.
const NET_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A running daemon's network, as the service layer reaches it: the service layer's
/// methods block (they run on the blocking pool), and call in through this.
#[derive(Clone)]
pub struct Online {
    client: Client,
    follower: tokio::sync::mpsc::Sender<follow::FollowCommand>,
    mirror: mirror::MirrorHandle,
    group: group::GroupHandle,
    remote_pins: Arc<tokio::sync::Notify>,
    runtime: tokio::runtime::Handle,
}

impl Online {
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn mirror(&self) -> &mirror::MirrorHandle {
        &self.mirror
    }

    pub fn group(&self) -> &group::GroupHandle {
        &self.group
    }

    /// Wakes the task that asks remote pinning services to pin new versions.
    pub fn remote_pins(&self) -> &tokio::sync::Notify {
        &self.remote_pins
    }

    /// Hands the follower a command, waiting while its queue is full. Must not be
    /// called on an async thread.
    pub fn tell_follower(&self, command: follow::FollowCommand) {
        if self.follower.blocking_send(command).is_err() {
            tracing::warn!("the follower has stopped; the change applies at the next start");
        }
    }

    /// Runs a call to the network from blocking code, waiting at most
    /// `NET_ANSWER_TIMEOUT`. Must not be called on an async thread.
    pub fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, NetError>>,
    ) -> Result<T, NetError> {
        self.runtime.block_on(async {
            tokio::time::timeout(NET_ANSWER_TIMEOUT, call)
                .await
                .unwrap_or(Err(NetError::Timeout))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("config key daemon.{key}: `{value}` is not a valid {expected}")]
    Config {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("cannot serve the web page on {addr}: {source}")]
    Http {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot flush the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen for shutdown signals: {0}")]
    Signal(std::io::Error),
    #[error("the {0} task stopped unexpectedly")]
    TaskEnded(&'static str),
    #[error(transparent)]
    Node(#[from] Box<NodeError>),
    #[error(transparent)]
    Web(#[from] WebError),
    #[error("cannot serve the API on {addr}: {source}")]
    Api {
        addr: String,
        source: std::io::Error,
    },
    #[error("config key api.socket_group: no group named {0:?}")]
    NoSuchGroup(String),
    #[error(transparent)]
    Pinning(#[from] crate::pinning::PinningError),
}

/// Settings given on the command line; each one that is set replaces the value
/// from the `[daemon]` section of config.toml.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    pub http_listen: Option<String>,
    pub listen: Option<Vec<Multiaddr>>,
    pub mdns: Option<bool>,
    pub static_peers: Option<Vec<Multiaddr>>,
}

struct Settings {
    http_listen: String,
    net: NetConfig,
    /// Whether peers can turn up without dialling us (mDNS, static peers, the DHT).
    discovery: bool,
    bandwidth: Bandwidth,
    /// When followed collections' content is fetched; `None`: any time.
    sync_hours: Option<SyncHours>,
}

impl DaemonOptions {
    fn resolve(self, config: &DaemonSection) -> Result<Settings, DaemonError> {
        let parse_all =
            |key: &'static str, values: &[String]| -> Result<Vec<Multiaddr>, DaemonError> {
                values
                    .iter()
                    .map(|value| {
                        value.parse().map_err(|_| DaemonError::Config {
                            key,
                            value: value.clone(),
                            expected: "multiaddr",
                        })
                    })
                    .collect()
            };
        let listen = match self.listen {
            Some(listen) => listen,
            None => parse_all("listen", &config.listen)?,
        };
        let static_peers = match self.static_peers {
            Some(peers) => peers,
            None => parse_all("static_peers", &config.static_peers)?,
        };
        let mdns = self.mdns.unwrap_or(config.mdns);
        let bootstrap = parse_all("bootstrap", &config.bootstrap)?;
        let dht_server = match config.dht_mode.as_str() {
            "server" => true,
            "client" => false,
            other => {
                return Err(DaemonError::Config {
                    key: "dht_mode",
                    value: other.to_string(),
                    expected: "mode (\"server\" or \"client\")",
                })
            }
        };
        let positive = |key: &'static str, value: u64| {
            if value == 0 {
                Err(DaemonError::Config {
                    key,
                    value: "0".into(),
                    expected: "limit (it must be at least 1)",
                })
            } else {
                Ok(value)
            }
        };
        positive("max_connections", config.max_connections.into())?;
        positive(
            "max_connections_per_peer",
            config.max_connections_per_peer.into(),
        )?;
        positive("max_pending_incoming", config.max_pending_incoming.into())?;
        positive("max_memory_mb", config.max_memory_mb)?;
        let throttle = |key: &'static str, value: &str| -> Result<Throttle, DaemonError> {
            if value.trim().is_empty() {
                return Ok(Throttle::unlimited());
            }
            match crate::units::parse_rate(value) {
                Ok(rate) if rate >= bandwidth::MIN_RATE => Ok(Throttle::new(rate)),
                _ => Err(DaemonError::Config {
                    key,
                    value: value.to_string(),
                    expected: "rate of at least 64 kB/s, e.g. \"2 MB/s\" or \"16 Mbit/s\"",
                }),
            }
        };
        let bandwidth = Bandwidth {
            upload: throttle("max_upload_rate", &config.max_upload_rate)?,
            download: throttle("max_download_rate", &config.max_download_rate)?,
        };
        let sync_hours = match config.sync_hours.trim() {
            "" => None,
            text => Some(SyncHours::parse(text).ok_or_else(|| DaemonError::Config {
                key: "sync_hours",
                value: text.to_string(),
                expected: "window of hours, e.g. \"22:00-06:00\"",
            })?),
        };
        Ok(Settings {
            bandwidth,
            sync_hours,
            discovery: mdns || !static_peers.is_empty() || !bootstrap.is_empty(),
            http_listen: self
                .http_listen
                .unwrap_or_else(|| config.http_listen.clone()),
            net: NetConfig {
                listen,
                mdns,
                static_peers,
                bootstrap,
                dht_server,
                limits: Limits {
                    max_connections: config.max_connections,
                    max_connections_per_peer: config.max_connections_per_peer,
                    max_pending_incoming: config.max_pending_incoming,
                    max_memory_bytes: usize::try_from(config.max_memory_mb.saturating_mul(1 << 20))
                        .unwrap_or(usize::MAX),
                },
            },
        })
    }
}

/// A running node. Dropping it tells the tasks to stop without waiting for them;
/// [`Daemon::shutdown`] also waits, flushes the store and releases the repository.
pub struct Daemon {
    node: Node,
    peer_id: PeerId,
    api_socket: PathBuf,
    api_tcp_addr: Option<SocketAddr>,
    http_addr: SocketAddr,
    listen_addrs: Vec<Multiaddr>,
    client: Client,
    metrics: Metrics,
    web: Arc<web::App>,
    exchange: Exchange,
    bitswap: Bitswap,
    shutdown: watch::Sender<bool>,
    net_task: Option<JoinHandle<()>>,
    exchange_task: Option<JoinHandle<()>>,
    follow_task: Option<JoinHandle<()>>,
    bitswap_task: Option<JoinHandle<()>>,
    mirror_task: Option<JoinHandle<()>>,
    group_task: Option<JoinHandle<()>>,
    pinning_task: Option<JoinHandle<()>>,
    remote_pins_task: Option<JoinHandle<()>>,
    pins_tcp_addr: Option<SocketAddr>,
    http_task: Option<JoinHandle<std::io::Result<()>>>,
    api_tasks: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Daemon {
    /// Starts the network, the web server and the local API, and returns once all are
    /// listening. On failure everything started is stopped again and the node released.
    pub async fn start(node: Node, options: DaemonOptions) -> Result<Daemon, DaemonError> {
        let config = node.config();
        let settings = options.resolve(&config.daemon)?;
        let group_config = node.group_config().map_err(Box::new)?;
        let disproved = match &group_config {
            Some(_) => Some(
                node.store()
                    .db()
                    .open_tree(group::DISPROVED_TREE)
                    .map_err(StoreError::from)?,
            ),
            None => None,
        };
        let keypair = net::read_node_key(&node.node_key_path())?;
        let peer_id = keypair.public().to_peer_id();
        let http_listener = tokio::net::TcpListener::bind(&settings.http_listen)
            .await
            .map_err(|source| DaemonError::Http {
                addr: settings.http_listen.clone(),
                source,
            })?;
        let http_addr = http_listener
            .local_addr()
            .map_err(|source| DaemonError::Http {
                addr: settings.http_listen.clone(),
                source,
            })?;
        node.mark_daemon().map_err(Box::new)?;
        let api_tcp = bind_api_tcp(node.root(), &config.api).await?;
        let pins_tcp = bind_pins_tcp(node.root(), &config.api).await?;
        let group = socket_group(&config.api)?;
        let (api_listener, api_socket) =
            api_server::bind_unix(node.root(), group).map_err(|source| DaemonError::Api {
                addr: node
                    .root()
                    .join(crate::api::SOCKET_NAME)
                    .display()
                    .to_string(),
                source,
            })?;
        let metrics = Metrics::new();
        let started = match net::start(keypair, settings.net, metrics.clone()).await {
            Ok(started) => started,
            Err(err) => {
                let _ = std::fs::remove_file(&api_socket);
                return Err(err.into());
            }
        };
        let client = started.client;
        let listen_addrs = started.listen_addrs;
        let from_network = follow::FromNetwork {
            inbound: started.inbound,
            events: client.events(),
        };

        let (shutdown, shutdown_signal) = watch::channel(false);
        let net_task = tokio::spawn(started.event_loop.run(shutdown_signal.clone()));
        let pool = BlockingPool::new(pool::DEFAULT_POOL_SIZE);
        let exchange_config = ExchangeConfig {
            discovery: settings.discovery,
            bandwidth: settings.bandwidth.clone(),
        };
        let bitswap_started = bitswap::start(
            node.store().clone(),
            pool.clone(),
            client.clone(),
            settings.bandwidth.clone(),
            metrics.clone(),
            shutdown_signal.clone(),
        );
        let started = bitswap_started.and_then(|(bitswap, bitswap_task)| {
            let (exchange, exchange_task) = exchange::start(
                node.store().clone(),
                pool.clone(),
                client.clone(),
                Some(bitswap.clone()),
                exchange_config,
                metrics.clone(),
                shutdown_signal.clone(),
            )?;
            Ok((bitswap, bitswap_task, exchange, exchange_task))
        });
        let Ok((bitswap, bitswap_task, exchange, exchange_task)) = started else {
            let _ = shutdown.send(true);
            let _ = net_task.await;
            let _ = std::fs::remove_file(&api_socket);
            return Err(DaemonError::TaskEnded("block exchange"));
        };
        let web = match web::App::new(WebParts {
            peer_id,
            node: node.clone(),
            network: Some(client.clone()),
            fetcher: Some(Arc::new(exchange.clone())),
            metrics: metrics.clone(),
            config: WebConfig::from(&config.gateway),
            search_dir: node.root().join("search"),
        }) {
            Ok(web) => web,
            Err(err) => {
                let _ = shutdown.send(true);
                let _ = net_task.await;
                let _ = std::fs::remove_file(&api_socket);
                return Err(err.into());
            }
        };
        let http_task = tokio::spawn(web::serve(
            http_listener,
            web.clone(),
            shutdown_signal.clone(),
        ));
        let group = group::GroupHandle::new(peer_id, group_config, disproved);
        let (mirror, mirror_task) = mirror::spawn(
            node.clone(),
            exchange.clone(),
            pool.clone(),
            group.clone(),
            settings.sync_hours,
            client.events(),
            shutdown_signal.clone(),
        );
        let Ok(group_task) = group::spawn(
            group.clone(),
            node.clone(),
            pool.clone(),
            client.clone(),
            mirror.clone(),
            shutdown_signal.clone(),
        ) else {
            let _ = shutdown.send(true);
            let _ = net_task.await;
            let _ = std::fs::remove_file(&api_socket);
            return Err(DaemonError::TaskEnded("replication group"));
        };
        let (follower, follow_task) = follow::spawn(
            node.clone(),
            client.clone(),
            pool.clone(),
            from_network,
            mirror.clone(),
            shutdown_signal.clone(),
        );
        // Before the API serves anything: a command that finds the socket answering
        // must find the network too.
        let remote_pins_wake = Arc::new(tokio::sync::Notify::new());
        node.set_online(Some(Online {
            client: client.clone(),
            follower,
            mirror,
            group,
            remote_pins: remote_pins_wake.clone(),
            runtime: tokio::runtime::Handle::current(),
        }));
        let remote_pins_task = remote_pins::spawn(
            node.clone(),
            config.replication.pinning_services.clone(),
            pool.clone(),
            client.clone(),
            peer_id,
            remote_pins_wake,
            shutdown_signal.clone(),
        );
        let pin_requests = match PinRequests::open(node.store().db()) {
            Ok(requests) => requests,
            Err(err) => {
                node.set_online(None);
                let _ = shutdown.send(true);
                let _ = net_task.await;
                let _ = std::fs::remove_file(&api_socket);
                return Err(DaemonError::Pinning(err));
            }
        };
        let (pinning, pinning_task) = pinning::spawn(
            pin_requests,
            node.clone(),
            exchange.clone(),
            pool.clone(),
            client.clone(),
            peer_id,
            shutdown_signal.clone(),
        );
        let api_state = ApiState {
            node: node.clone(),
            pool,
            fds: Arc::new(FdRegistry::default()),
            exchange: Some(exchange.clone()),
            pinning: Some(pinning),
        };
        let mut api_tasks = vec![tokio::spawn(api_server::serve_unix(
            api_listener,
            api_socket.clone(),
            api_state.clone(),
            shutdown_signal.clone(),
        ))];
        let mut pins_tcp_addr = None;
        if let Some((listener, token)) = pins_tcp {
            pins_tcp_addr = listener.local_addr().ok();
            api_tasks.push(tokio::spawn(crate::api::pins::serve(
                listener,
                api_state.clone(),
                token,
                shutdown_signal.clone(),
            )));
        }
        let mut api_tcp_addr = None;
        if let Some((listener, token)) = api_tcp {
            api_tcp_addr = listener.local_addr().ok();
            api_tasks.push(tokio::spawn(api_server::serve_tcp(
                listener,
                api_state,
                token,
                shutdown_signal,
            )));
        }
        Ok(Daemon {
            node,
            peer_id,
            api_socket,
            api_tcp_addr,
            http_addr,
            listen_addrs,
            client,
            metrics,
            web,
            exchange,
            bitswap,
            shutdown,
            net_task: Some(net_task),
            exchange_task: Some(exchange_task),
            follow_task: Some(follow_task),
            bitswap_task: Some(bitswap_task),
            mirror_task: Some(mirror_task),
            group_task,
            pinning_task: Some(pinning_task),
            remote_pins_task,
            pins_tcp_addr,
            http_task: Some(http_task),
            api_tasks,
        })
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Where the web server listens (with the real port when 0 was asked for).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// A URL for the web page that works from this machine: a wildcard address is
    /// replaced by loopback.
    pub fn page_url(&self) -> String {
        let mut addr = self.http_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{addr}/")
    }

    /// The peer-to-peer addresses bound at start.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The block exchange: fetches from peers, for the daemon's other parts.
    pub fn exchange(&self) -> &Exchange {
        &self.exchange
    }

    /// Bitswap: what IPFS peers are fetching from us, and what we fetch from them.
    pub fn bitswap(&self) -> &Bitswap {
        &self.bitswap
    }

    pub fn repo_root(&self) -> PathBuf {
        self.node.root().to_path_buf()
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The node's metrics; parts of the node count into clones of it.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The local API's Unix socket.
    pub fn api_socket(&self) -> &std::path::Path {
        &self.api_socket
    }

    /// The local API's TCP address, when `api.listen` is set.
    pub fn api_tcp_addr(&self) -> Option<SocketAddr> {
        self.api_tcp_addr
    }

    /// The Pinning Service API's own address, when `api.pins_listen` is set.
    pub fn pins_tcp_addr(&self) -> Option<SocketAddr> {
        self.pins_tcp_addr
    }

    /// The one line printed at start: repository, identity, addresses, web page.
    pub fn summary(&self) -> String {
        let listen = if self.listen_addrs.is_empty() {
            "no peer address".to_string()
        } else {
            self.listen_addrs
                .iter()
                .map(Multiaddr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "oermesh daemon: repository {}, peer {}, listening on {}, web page {}",
            self.node.root().display(),
            self.peer_id,
            listen,
            self.page_url()
        )
    }

    /// Resolves when a task ends on its own (a panic or a server failure). A running
    /// daemon never gets here; callers race it against their stop signal.
    pub async fn task_ended(&mut self) -> DaemonError {
        let (Some(net_task), Some(follow_task), Some(http_task)) = (
            self.net_task.as_mut(),
            self.follow_task.as_mut(),
            self.http_task.as_mut(),
        ) else {
            return DaemonError::TaskEnded("daemon");
        };
        let api_tasks = &mut self.api_tasks;
        let api_ended = async {
            if api_tasks.is_empty() {
                return std::future::pending().await;
            }
            let (result, index, _) = futures_util::future::select_all(api_tasks.iter_mut()).await;
            match result {
                Ok(Err(err)) => tracing::error!(%err, "API server failed"),
                Err(err) => tracing::error!(%err, "API server task failed"),
                Ok(Ok(())) => {}
            }
            index
        };
        let which = tokio::select! {
            result = net_task => {
                if let Err(err) = result { tracing::error!(%err, "network task failed"); }
                "network"
            }
            result = follow_task => {
                if let Err(err) = result { tracing::error!(%err, "follower task failed"); }
                "follower"
            }
            result = http_task => {
                match result {
                    Ok(Err(err)) => tracing::error!(%err, "web server failed"),
                    Err(err) => tracing::error!(%err, "web server task failed"),
                    Ok(Ok(())) => {}
                }
                "web server"
            }
            index = api_ended => {
                self.api_tasks.remove(index);
                "API"
            }
        };
        match which {
            "network" => self.net_task = None,
            "follower" => self.follow_task = None,
            "web server" => self.http_task = None,
            _ => {}
        }
        DaemonError::TaskEnded(which)
    }

    /// Stops accepting work, lets requests in progress finish, closes peer
    /// connections, flushes the store and releases the repository.
    pub async fn shutdown(mut self) -> Result<(), DaemonError> {
        self.node.set_online(None);
        let _ = self.shutdown.send(true);
        if let Some(mut http_task) = self.http_task.take() {
            match tokio::time::timeout(HTTP_DRAIN_TIMEOUT, &mut http_task).await {
                Ok(Ok(Err(err))) => tracing::warn!(%err, "web server stopped with an error"),
                Ok(Err(err)) => tracing::warn!(%err, "web server task failed"),
                Ok(Ok(Ok(()))) => {}
                Err(_) => {
                    tracing::warn!(
                        "requests still open after {HTTP_DRAIN_TIMEOUT:?}; closing them"
                    );
                    http_task.abort();
                    let _ = http_task.await;
                }
            }
        }
        for api_task in self.api_tasks.drain(..) {
            match tokio::time::timeout(HTTP_DRAIN_TIMEOUT, api_task).await {
                Ok(Ok(Err(err))) => tracing::warn!(%err, "API server stopped with an error"),
                Ok(Err(err)) => tracing::warn!(%err, "API server task failed"),
                Ok(Ok(Ok(()))) => {}
                Err(_) => tracing::warn!("API requests still open after {HTTP_DRAIN_TIMEOUT:?}"),
            }
        }
        if let Some(follow_task) = self.follow_task.take() {
            if let Err(err) = follow_task.await {
                tracing::warn!(%err, "follower task failed");
            }
        }
        for (name, task) in [
            ("mirror", self.mirror_task.take()),
            ("pinning", self.pinning_task.take()),
            ("remote pinning", self.remote_pins_task.take()),
        ] {
            if let Some(Err(err)) = match task {
                Some(task) => Some(task.await),
                None => None,
            } {
                tracing::warn!(%err, "{name} task failed");
            }
        }
        if let Some(group_task) = self.group_task.take() {
            if let Err(err) = group_task.await {
                tracing::warn!(%err, "replication group task failed");
            }
        }
        // Responses still being produced on blocking threads hold the web state, and
        // work on the blocking pool may still be finishing: wait for those last
        // handles, so that the repository is released when shutdown returns. Dropping
        // the web state stops the search indexer.
        let deadline = tokio::time::Instant::now() + HTTP_DRAIN_TIMEOUT;
        while Arc::strong_count(&self.web) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let web = self.web;
        let _ = tokio::task::spawn_blocking(move || drop(web)).await;
        while (self.node.handles() > 1 || self.exchange.handles() > 1)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The exchange holds a bitswap handle of its own.
        drop(self.exchange);
        while self.bitswap.handles() > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for (name, task) in [
            ("block exchange", self.exchange_task.take()),
            ("bitswap", self.bitswap_task.take()),
        ] {
            if let Some(Err(err)) = match task {
                Some(task) => Some(task.await),
                None => None,
            } {
                tracing::warn!(%err, "{name} task failed");
            }
        }
        if let Some(net_task) = self.net_task.take() {
            if let Err(err) = net_task.await {
                tracing::warn!(%err, "network task failed");
            }
        }
        let _ = std::fs::remove_file(&self.api_socket);
        let store = self.node.store().clone();
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(flushed) => flushed?,
            Err(_) => return Err(DaemonError::TaskEnded("store flush")),
        }
        Ok(())
    }
}

/// Binds the TCP API when `api.listen` is set, with its token.
async fn bind_api_tcp(
    root: &std::path::Path,
    config: &ApiSection,
) -> Result<Option<(tokio::net::TcpListener, String)>, DaemonError> {
    if config.listen.trim().is_empty() {
        return Ok(None);
    }
    let api_error = |source| DaemonError::Api {
        addr: config.listen.clone(),
        source,
    };
    let token = api_server::load_or_create_token(root).map_err(api_error)?;
    let listener = tokio::net::TcpListener::bind(config.listen.trim())
        .await
        .map_err(api_error)?;
    Ok(Some((listener, token)))
}

/// Binds the Pinning Service API's own address when `api.pins_listen` is set, with
/// its token (`REPO/pins.token`).
async fn bind_pins_tcp(
    root: &std::path::Path,
    config: &ApiSection,
) -> Result<Option<(tokio::net::TcpListener, String)>, DaemonError> {
    let addr = config.pins_listen.trim();
    if addr.is_empty() {
        return Ok(None);
    }
    let api_error = |source| DaemonError::Api {
        addr: addr.to_string(),
        source,
    };
    let token =
        api_server::load_or_create_token_file(&root.join(crate::api::pins::PINS_TOKEN_NAME))
            .map_err(api_error)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(api_error)?;
    Ok(Some((listener, token)))
}

/// The group id for `api.socket_group`, when set.
fn socket_group(config: &ApiSection) -> Result<Option<u32>, DaemonError> {
    let name = config.socket_group.trim();
    if name.is_empty() {
        return Ok(None);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(Some(group.gid.as_raw())),
        _ => Err(DaemonError::NoSuchGroup(name.to_string())),
    }
}

/// Runs the node until Ctrl-C or SIGTERM, then shuts down cleanly.
pub async fn run(node: Node, options: DaemonOptions) -> Result<(), DaemonError> {
    let mut daemon = Daemon::start(node, options).await?;
    println!("{}", daemon.summary());
    tokio::select! {
        signal = stop_signal() => {
            let name = signal?;
            tracing::info!("{name} received; shutting down");
            daemon.shutdown().await
        }
        failure = daemon.task_ended() => {
            daemon.shutdown().await?;
            Err(failure)
        }
    }
}

async fn stop_signal() -> Result<&'static str, DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    tokio::select! {
        interrupt = tokio::signal::ctrl_c() => {
            interrupt.map_err(DaemonError::Signal)?;
            Ok("interrupt")
        }
        _ = terminate.recv() => Ok("SIGTERM"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_replace_config_values_and_bad_config_names_its_key() {
        let config = DaemonSection {
            http_listen: "127.0.0.1:8080".into(),
            listen: vec!["/ip4/0.0.0.0/tcp/4001".into()],
            mdns: true,
            static_peers: vec!["/ip4/10.0.0.2/tcp/4001".into()],
            ..DaemonSection::default()
        };
        let from_config = DaemonOptions::default().resolve(&config).unwrap();
        assert_eq!(from_config.http_listen, "127.0.0.1:8080");
        assert!(from_config.net.mdns);
        assert_eq!(from_config.net.static_peers.len(), 1);

        let options = DaemonOptions {
            http_listen: Some("127.0.0.1:0".into()),
            listen: Some(vec![]),
            mdns: Some(false),
            static_peers: Some(vec![]),
        };
        let overridden = options.resolve(&config).unwrap();
        assert_eq!(overridden.http_listen, "127.0.0.1:0");
        assert!(
            !overridden.net.mdns
                && overridden.net.listen.is_empty()
                && overridden.net.static_peers.is_empty()
        );

        let broken = DaemonSection {
            static_peers: vec!["192.168.1.20:4001".into()],
            ..config
        };
        let err = DaemonOptions::default().resolve(&broken).err().unwrap();
        assert!(err.to_string().contains("daemon.static_peers"), "{err}");

        let unknown_mode = DaemonSection {
            dht_mode: "auto".into(),
            ..DaemonSection::default()
        };
        let err = DaemonOptions::default()
            .resolve(&unknown_mode)
            .err()
            .unwrap();
        assert!(err.to_string().contains("daemon.dht_mode"), "{err}");
        let no_connections = DaemonSection {
            max_connections: 0,
            ..DaemonSection::default()
        };
        let err = DaemonOptions::default()
            .resolve(&no_connections)
            .err()
            .unwrap();
        assert!(err.to_string().contains("daemon.max_connections"), "{err}");
        for (upload, download, key) in [
            ("fast", "", "daemon.max_upload_rate"),
            ("", "10 kB/s", "daemon.max_download_rate"),
        ] {
            let bad_rate = DaemonSection {
                max_upload_rate: upload.into(),
                max_download_rate: download.into(),
                ..DaemonSection::default()
            };
            let err = DaemonOptions::default().resolve(&bad_rate).err().unwrap();
            assert!(err.to_string().contains(key), "{err}");
        }
        let bad_hours = DaemonSection {
            sync_hours: "nights".into(),
            ..DaemonSection::default()
        };
        let err = DaemonOptions::default().resolve(&bad_hours).err().unwrap();
        assert!(err.to_string().contains("daemon.sync_hours"), "{err}");
    }
}
