//! The node's metrics, served at `/metrics` in the OpenMetrics text format that
//! Prometheus scrapes.
//!
//! [`Metrics`] is a cheap, cloneable handle: every part of the node that counts
//! something holds a clone and updates its own families. Each metric is listed in
//! docs/METRICS.md; a new one is added there too.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The media type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which part of the browser-facing address answered: a label with few values, so a
/// crawler asking for a million paths does not make a million series.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Route {
    /// `/ipfs/...`: the path and trustless gateway.
    Gateway,
    /// The web page: `/`, collections, resources, peers.
    Page,
    Search,
    /// Style sheet, script and icons built into the binary.
    Asset,
    /// `/api/...`: JSON for the page.
    Api,
    Metrics,
    /// Anything else (404s, refused methods, bad paths).
    Other,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpRequestLabels {
    pub route: Route,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Route,
}

/// How bytes travelled.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Protocol {
    /// The HTTP gateway and web page.
    Http,
    /// oermesh's own block exchange between nodes.
    Oermesh,
    /// IPFS bitswap.
    Bitswap,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: Protocol,
}

/// What gossip validation decided about a message.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum GossipOutcome {
    Accepted,
    Rejected,
    Ignored,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GossipLabels {
    pub outcome: GossipOutcome,
}

/// How providing a key to the DHT went.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ProvideOutcome {
    /// The provider record went to at least one DHT node.
    Reached,
    /// The DHT had no node to give it to (the key is provided again when it has one).
    NoPeers,
    /// The walk timed out.
    Failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProvideLabels {
    pub outcome: ProvideOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CollectionLabels {
    /// The collection id, `<publisher key>/<name>`.
    pub collection: String,
}

/// Label values in lower case, as Prometheus conventions have them.
macro_rules! lower_case_label {
    ($type:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl EncodeLabelValue for $type {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                use std::fmt::Write as _;
                encoder.write_str(match self {
                    $(Self::$variant => $text),+
                })
            }
        }
    };
}

lower_case_label!(Route {
    Gateway => "gateway",
    Page => "page",
    Search => "search",
    Asset => "asset",
    Api => "api",
    Metrics => "metrics",
    Other => "other",
});
lower_case_label!(Protocol {
    Http => "http",
    Oermesh => "oermesh",
    Bitswap => "bitswap",
});
lower_case_label!(ProvideOutcome {
    Reached => "reached",
    NoPeers => "no_peers",
    Failed => "failed",
});
lower_case_label!(GossipOutcome {
    Accepted => "accepted",
    Rejected => "rejected",
    Ignored => "ignored",
});

/// Every metric the node exports. Fields are public so that each part of the node
/// updates its own; families are internally shared, so a clone of a field counts into
/// the same series.
pub struct MetricSet {
    pub http_requests: Family<HttpRequestLabels, Counter>,
    pub http_request_duration: Family<RouteLabels, Histogram>,
    /// Browser connections open now.
    pub http_connections: Gauge,
    /// Connections turned away because one client had too many open.
    pub http_connections_refused: Counter,
    pub bytes_served: Family<ProtocolLabels, Counter>,
    /// Blocks sent to peers (the block exchange and bitswap).
    pub blocks_served: Family<ProtocolLabels, Counter>,
    pub bytes_fetched: Family<ProtocolLabels, Counter>,
    /// Blocks received from peers for this node's fetches.
    pub blocks_fetched: Family<ProtocolLabels, Counter>,
    pub fetch_errors: Family<ProtocolLabels, Counter>,
    pub gossip_messages: Family<GossipLabels, Counter>,
    pub dht_provides: Family<ProvideLabels, Counter>,
    pub peers_connected: Gauge,
    pub blocks_stored: Gauge,
    pub bytes_stored: Gauge,
    /// Bytes of a followed collection held locally, and its total.
    pub sync_bytes_held: Family<CollectionLabels, Gauge>,
    pub sync_bytes_total: Family<CollectionLabels, Gauge>,
    /// Resources of a followed collection complete here, and its total.
    pub sync_resources_complete: Family<CollectionLabels, Gauge>,
    pub sync_resources_total: Family<CollectionLabels, Gauge>,
    pub search_queries: Counter,
    pub search_duration: Histogram,
    /// Records in the search index.
    pub search_documents: Gauge,
}

struct Inner {
    set: MetricSet,
    registry: Mutex<Registry>,
}

/// A handle on the node's metrics; clones share them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl std::ops::Deref for Metrics {
    type Target = MetricSet;

    fn deref(&self) -> &MetricSet {
        &self.inner.set
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s: a cached page to a slow peer fetch.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Metrics {
        let set = MetricSet {
            http_requests: Family::default(),
            http_request_duration: Family::new_with_constructor(latency_histogram),
            http_connections: Gauge::default(),
            http_connections_refused: Counter::default(),
            bytes_served: Family::default(),
            blocks_served: Family::default(),
            bytes_fetched: Family::default(),
            blocks_fetched: Family::default(),
            fetch_errors: Family::default(),
            gossip_messages: Family::default(),
            dht_provides: Family::default(),
            peers_connected: Gauge::default(),
            blocks_stored: Gauge::default(),
            bytes_stored: Gauge::default(),
            sync_bytes_held: Family::default(),
            sync_bytes_total: Family::default(),
            sync_resources_complete: Family::default(),
            sync_resources_total: Family::default(),
            search_queries: Counter::default(),
            search_duration: latency_histogram(),
            search_documents: Gauge::default(),
        };
        let mut registry = Registry::with_prefix("oermesh");
        registry.register(
            "http_requests",
            "HTTP requests answered on the browser-facing address, by route and status",
            set.http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response head, by route",
            set.http_request_duration.clone(),
        );
        registry.register(
            "http_connections",
            "Browser connections open now",
            set.http_connections.clone(),
        );
        registry.register(
            "http_connections_refused",
            "Connections refused because their client already had the most allowed",
            set.http_connections_refused.clone(),
        );
        registry.register(
            "bytes_served",
            "Content bytes sent, by protocol",
            set.bytes_served.clone(),
        );
        registry.register(
            "blocks_served",
            "Blocks sent to peers, by protocol",
            set.blocks_served.clone(),
        );
        registry.register(
            "bytes_fetched",
            "Verified block bytes received from peers, by protocol",
            set.bytes_fetched.clone(),
        );
        registry.register(
            "blocks_fetched",
            "Blocks received from peers for this node's fetches, by protocol",
            set.blocks_fetched.clone(),
        );
        registry.register(
            "fetch_errors",
            "Block fetches from peers that failed or timed out, by protocol",
            set.fetch_errors.clone(),
        );
        registry.register(
            "gossip_messages",
            "Gossiped collection heads, by validation outcome",
            set.gossip_messages.clone(),
        );
        registry.register(
            "dht_provides",
            "Provider records sent into the DHT, by outcome",
            set.dht_provides.clone(),
        );
        registry.register(
            "peers_connected",
            "Peers connected now",
            set.peers_connected.clone(),
        );
        registry.register(
            "blocks_stored",
            "Blocks in the store",
            set.blocks_stored.clone(),
        );
        registry.register(
            "bytes_stored",
            "Bytes of block data in the store",
            set.bytes_stored.clone(),
        );
        registry.register(
            "sync_bytes_held",
            "Bytes of each followed collection's newest version held locally",
            set.sync_bytes_held.clone(),
        );
        registry.register(
            "sync_bytes_total",
            "Bytes of each followed collection's newest version",
            set.sync_bytes_total.clone(),
        );
        registry.register(
            "sync_resources_complete",
            "Resources of each followed collection's newest version whose whole DAG is held locally",
            set.sync_resources_complete.clone(),
        );
        registry.register(
            "sync_resources_total",
            "Resources of each followed collection's newest version, retracted ones left out",
            set.sync_resources_total.clone(),
        );
        registry.register(
            "search_queries",
            "Searches answered",
            set.search_queries.clone(),
        );
        registry.register(
            "search_duration_seconds",
            "Time to answer a search",
            set.search_duration.clone(),
        );
        registry.register(
            "search_documents",
            "Records in the search index",
            set.search_documents.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                set,
                registry: Mutex::new(registry),
            }),
        }
    }

    /// Sets the sync progress of every collection followed with its content (id,
    /// progress); collections no longer listed lose their series.
    pub fn set_sync_progress<'a>(
        &self,
        collections: impl IntoIterator<Item = (&'a str, &'a crate::node::views::ContentProgress)>,
    ) {
        let set = &self.inner.set;
        let families = [
            &set.sync_bytes_held,
            &set.sync_bytes_total,
            &set.sync_resources_complete,
            &set.sync_resources_total,
        ];
        for family in families {
            family.clear();
        }
        for (id, progress) in collections {
            let labels = CollectionLabels {
                collection: id.to_string(),
            };
            let figures = [
                progress.bytes_held,
                progress.bytes_total,
                progress.complete,
                progress.resources,
            ];
            for (family, figure) in families.iter().zip(figures) {
                family
                    .get_or_create(&labels)
                    .set(i64::try_from(figure).unwrap_or(i64::MAX));
            }
        }
    }

    /// Registers further metrics, such as a library's own (libp2p's take a registry).
    pub fn register_with(&self, register: impl FnOnce(&mut Registry)) {
        let mut registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        register(&mut registry);
    }

    /// Every metric in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let registry = self
            .inner
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut text = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_text_format_with_their_labels() {
        let metrics = Metrics::new();
        let clone = metrics.clone();
        clone
            .http_requests
            .get_or_create(&HttpRequestLabels {
                route: Route::Gateway,
                status: 206,
            })
            .inc();
        metrics
            .bytes_served
            .get_or_create(&ProtocolLabels {
                protocol: Protocol::Http,
            })
            .inc_by(42);
        let text = metrics.encode();
        assert!(
            text.contains("oermesh_http_requests_total{route=\"gateway\",status=\"206\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("oermesh_bytes_served_total{protocol=\"http\"} 42"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
