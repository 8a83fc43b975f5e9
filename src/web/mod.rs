//! The browser-facing side of a node: the web page, search, the IPFS HTTP gateway and
//! metrics, on the daemon's `http_listen` address.
//!
//! That address is open to every student's browser on a school network, so it only
//! reads: any method other than GET and HEAD is answered 405, and nothing here writes
//! to the store (writes go through the daemon's local API).
//!
//! - [`gateway`]: `/ipfs/{cid}[/path]`, the path and trustless gateways;
//! - [`pages`]: `/`, collections, resources, `/search`, `/peers`;
//! - [`search`]: the full-text index of local records, kept beside sled;
//! - [`server`]: the listener and its limits; [`body`]: streamed bodies;
//! - `/api/status` (JSON for the page) and `/metrics` (Prometheus).

pub mod blocks;
pub mod body;
pub mod car_scope;
pub mod gateway;
pub mod mime;
pub mod pages;
pub mod path;
pub mod range;
pub mod rate;
pub mod search;
pub mod server;
pub mod status;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use libp2p::PeerId;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::GatewaySection;
use crate::daemon::net::Client;
use crate::metrics::{HttpRequestLabels, Metrics, Route, RouteLabels};
use crate::node::Node;
use crate::records::{RecordBook, RecordError, TrustedPublishers};
use crate::store::Store;
pub use blocks::{BlockFetcher, BlockSource};
pub use server::HttpLimits;

/// Settings of the browser-facing address, from `[gateway]` in config.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    pub limits: HttpLimits,
    pub max_ranges: usize,
    pub fetch_timeout: Duration,
    /// Requests a client may make a second (0: no limit), and in a burst.
    pub requests_per_second_per_client: u32,
    pub request_burst_per_client: u32,
}

impl From<&GatewaySection> for WebConfig {
    fn from(section: &GatewaySection) -> Self {
        WebConfig {
            limits: HttpLimits {
                max_connections: section.max_connections,
                max_connections_per_client: section.max_connections_per_client,
                header_timeout: Duration::from_secs(section.header_timeout_secs),
                send_timeout: Duration::from_secs(section.send_timeout_secs),
                max_header_bytes: section.max_header_bytes,
            },
            max_ranges: section.max_ranges,
            fetch_timeout: Duration::from_secs(section.fetch_timeout_secs),
            requests_per_second_per_client: section.requests_per_second_per_client,
            request_burst_per_client: section.request_burst_per_client,
        }
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig::from(&GatewaySection::default())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("cannot open the record layer for the web page: {0}")]
    Records(#[from] RecordError),
    #[error(transparent)]
    Search(#[from] search::SearchError),
}

/// What the web side is built from.
pub struct WebParts {
    pub peer_id: PeerId,
    /// The node whose store and records are served; its trusted publishers are read
    /// per request, so a `trust add` applies at once.
    pub node: Node,
    /// The network task, for the peers shown on the page; `None` without one.
    pub network: Option<Client>,
    /// Where missing blocks are asked for; `None` serves local blocks only.
    pub fetcher: Option<Arc<dyn BlockFetcher>>,
    pub metrics: Metrics,
    pub config: WebConfig,
    /// Directory of the search index (derived from the record layer, rebuilt when
    /// missing or stale).
    pub search_dir: PathBuf,
}

/// Shared state of every browser request.
pub struct App {
    pub peer_id: PeerId,
    pub node: Node,
    pub blocks: BlockSource,
    pub network: Option<Client>,
    pub metrics: Metrics,
    pub config: WebConfig,
    pub search: search::SearchIndex,
    status: status::StatusCache,
    rate_limit: rate::RateLimit,
}

impl App {
    /// Opens the search index (which starts following the record layer on a thread
    /// of its own).
    pub fn new(parts: WebParts) -> Result<Arc<App>, WebError> {
        let store = parts.node.store().clone();
        let search = search::SearchIndex::open(
            &parts.search_dir,
            RecordBook::open(store.db(), store.clone(), TrustedPublishers::none())?,
            parts.metrics.clone(),
        )?;
        let rate_limit = rate::RateLimit::new(
            parts.config.requests_per_second_per_client,
            parts.config.request_burst_per_client,
        );
        Ok(Arc::new(App {
            rate_limit,
            peer_id: parts.peer_id,
            node: parts.node,
            blocks: BlockSource::new(store, parts.fetcher, parts.config.fetch_timeout),
            network: parts.network,
            metrics: parts.metrics,
            config: parts.config,
            search,
            status: status::StatusCache::default(),
        }))
    }

    pub fn store(&self) -> &Store {
        self.blocks.store()
    }

    /// The record layer with the node's trusted publishers as they are now.
    pub fn records(&self) -> Arc<RecordBook<Store>> {
        self.node.records()
    }
}

/// Every route of the browser-facing address.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(pages::home))
        .route("/ipfs", get(gateway::handle))
        .route("/ipfs/", get(gateway::handle))
        .route("/ipfs/{*path}", get(gateway::handle))
        .route("/collections/{key}/{name}", get(pages::collection))
        .route("/resources/{record}", get(pages::resource))
        .route("/search", get(pages::search))
        .route("/peers", get(pages::peers))
        .route("/assets/{name}", get(pages::asset))
        .route("/api/status", get(status::status_json))
        .route("/metrics", get(metrics_text))
        .fallback(pages::not_found)
        .with_state(app.clone())
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn_with_state(app, guard))
}

/// Serves the browser-facing address until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let limits = app.config.limits.clone();
    let metrics = app.metrics.clone();
    server::serve(listener, router(app), limits, metrics, shutdown).await
}

fn route_of(path: &str) -> Route {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "ipfs" => Route::Gateway,
        "" | "collections" | "resources" | "peers" => Route::Page,
        "search" => Route::Search,
        "assets" => Route::Asset,
        "api" => Route::Api,
        "metrics" => Route::Metrics,
        _ => Route::Other,
    }
}

/// Refuses clients over their request rate, writes and malformed paths before any
/// handler runs, and counts every request by route and status.
async fn guard(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut route = route_of(request.uri().path());
    let over_rate = match request.extensions().get::<server::ClientAddr>() {
        Some(client) if route != Route::Asset => app.rate_limit.check(client.0.ip()).err(),
        _ => None,
    };
    let response = if let Some(wait) = over_rate {
        too_many_requests(wait)
    } else if request.method() != Method::GET && request.method() != Method::HEAD {
        route = Route::Other;
        let mut response = gateway::text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "this address only serves pages and content (GET and HEAD); changes go through the node's local API",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        response
    } else if let Err(err) = path::decode_path(request.uri().path()) {
        route = Route::Other;
        gateway::text_response(StatusCode::BAD_REQUEST, &err.0)
    } else {
        next.run(request).await
    };
    app.metrics
        .http_requests
        .get_or_create(&HttpRequestLabels {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    app.metrics
        .http_request_duration
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The answer to a client over its request rate: how long to wait, in whole seconds.
fn too_many_requests(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = gateway::text_response(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("too many requests from your address; try again in {seconds} s"),
    );
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Responses that load nothing at all.
const API_CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::X_FRAME_OPTIONS)
        .or_insert(HeaderValue::from_static("DENY"));
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(API_CSP));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-cache"));
    response
}

/// The reason a publisher gave for retracting `record`, from its signed retraction.
pub(crate) fn retraction_reason(app: &App, record: &cid::Cid) -> Option<String> {
    use crate::block::BlockGet;
    let retraction = app.records().retraction_of(record).ok()??;
    let bytes = app.store().get_block(&retraction).ok()?;
    Some(
        crate::records::Retraction::decode_and_verify(&bytes)
            .ok()?
            .reason,
    )
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    if let Ok(snapshot) = app.status.snapshot(&app).await {
        app.metrics.blocks_stored.set(snapshot.stat.blocks as i64);
        app.metrics.bytes_stored.set(snapshot.stat.bytes as i64);
    }
    if let Some(network) = app.status.network(&app).await {
        app.metrics.peers_connected.set(network.0.len() as i64);
    }
    let node = app.node.clone();
    if let Ok(Ok(rows)) = tokio::task::spawn_blocking(move || node.follow_list()).await {
        app.metrics.set_sync_progress(
            rows.iter()
                .filter_map(|row| Some((row.id.as_str(), row.content.as_ref()?))),
        );
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        app.metrics.encode(),
    )
        .into_response()
}
