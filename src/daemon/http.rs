//! The node's web page and status API for browsers on the school network.
//!
//! `/` is one small HTML page that works without JavaScript; `/api/status` is the
//! same information as JSON. Every response carries security headers, and every
//! string written into HTML is escaped.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cid::Cid;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};
use tokio::time::Instant;

use super::net::{Client, PeerInfo};
use crate::records::book::{CollectionListing, RecordListing};
use crate::records::{RecordBook, TrustedPublishers};
use crate::store::{Store, StoreStat};

/// Pins listed on the page and in the JSON; the rest are counted, so a large
/// collection does not make a page too heavy for a slow school link.
pub const PINS_SHOWN: usize = 500;

/// Store statistics walk the whole index; a burst of page loads shares one walk.
const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(1);

/// A page is still served, without peers, when the network task does not answer.
const NETWORK_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Responses other than the page load nothing at all.
const API_CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

const STYLE: &str = "\
:root{font-family:system-ui,sans-serif;line-height:1.5;color:#1b1b1b;background:#fff}\
body{margin:0}\
header,main,footer{max-width:60rem;margin:0 auto;padding:0 1rem}\
header{padding-top:1rem;border-bottom:4px solid #0f3057}\
h1{font-size:1.6rem;margin:.5rem 0}h2{font-size:1.25rem;margin:1.5rem 0 .5rem}\
a{color:#0b4f9c}\
a:focus-visible,main:focus-visible{outline:3px solid #c2410c;outline-offset:2px}\
a:focus-visible{background:#ffd866;color:#1b1b1b}\
.skip{position:absolute;left:-999rem}\
.skip:focus{position:static;display:inline-block;margin:.5rem 1rem;padding:.25rem .5rem}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0}\
dt{font-weight:600}dd{margin:0}\
table{border-collapse:collapse;width:100%}\
th,td{text-align:left;vertical-align:top;padding:.4rem;border-bottom:1px solid #6b6b6b}\
th{background:#eef2f7}\
code{font-size:.95em;overflow-wrap:anywhere}\
.note{color:#4a4a4a}\
footer{margin-top:2rem;padding-bottom:1rem;border-top:1px solid #6b6b6b}\
@media (max-width:40rem){dl{grid-template-columns:1fr}dd{margin-bottom:.5rem}}";

/// The page may use exactly its own inline style sheet and nothing else.
static PAGE_CSP: LazyLock<String> = LazyLock::new(|| {
    let digest = Sha256::digest(STYLE.as_bytes());
    let base64 = cid::multibase::encode(cid::multibase::Base::Base64Pad, digest);
    // multibase puts a one-letter base prefix before the base64 text.
    let hash = base64.get(1..).unwrap_or_default();
    format!("default-src 'none'; style-src 'sha256-{hash}'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
});

pub(super) struct PageState {
    pub peer_id: PeerId,
    pub store: Store,
    pub trusted: TrustedPublishers,
    pub client: Client,
    snapshot: Mutex<Option<(Instant, Arc<StoreSnapshot>)>>,
}

impl PageState {
    pub fn new(
        peer_id: PeerId,
        store: Store,
        trusted: TrustedPublishers,
        client: Client,
    ) -> PageState {
        PageState {
            peer_id,
            store,
            trusted,
            client,
            snapshot: Mutex::new(None),
        }
    }

    /// Store figures and pins, at most [`SNAPSHOT_MAX_AGE`] old. The lock makes
    /// concurrent requests wait for one walk instead of starting their own.
    async fn store_snapshot(&self) -> Result<Arc<StoreSnapshot>, String> {
        let mut cached = self.snapshot.lock().await;
        if let Some((taken, snapshot)) = cached.as_ref() {
            if taken.elapsed() < SNAPSHOT_MAX_AGE {
                return Ok(snapshot.clone());
            }
        }
        let store = self.store.clone();
        let trusted = self.trusted.clone();
        let snapshot = tokio::task::spawn_blocking(move || -> Result<StoreSnapshot, String> {
            let stat = store.stat().map_err(|err| err.to_string())?;
            let mut pins = store.pins().map_err(|err| err.to_string())?;
            let pins_total = pins.len();
            pins.truncate(PINS_SHOWN);
            let book = RecordBook::open(store.db(), store.clone(), trusted)
                .map_err(|err| err.to_string())?;
            // The first record that describes each pinned item, for its title and licence.
            let mut described = HashMap::new();
            for (cid, _) in &pins {
                if let Some(listing) = book
                    .records_for_content(cid)
                    .map_err(|err| err.to_string())?
                    .into_iter()
                    .next()
                {
                    described.insert(*cid, listing);
                }
            }
            let collections = book.collection_list().map_err(|err| err.to_string())?;
            Ok(StoreSnapshot {
                stat,
                pins,
                pins_total,
                described,
                collections,
            })
        })
        .await
        .map_err(|err| err.to_string())??;
        let snapshot = Arc::new(snapshot);
        *cached = Some((Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }

    async fn network(&self) -> Option<(Vec<PeerInfo>, Vec<Multiaddr>)> {
        let ask = async {
            Some((
                self.client.peers().await.ok()?,
                self.client.listen_addrs().await.ok()?,
            ))
        };
        tokio::time::timeout(NETWORK_ANSWER_TIMEOUT, ask)
            .await
            .ok()
            .flatten()
    }
}

struct StoreSnapshot {
    stat: StoreStat,
    pins: Vec<(Cid, Vec<String>)>,
    pins_total: usize,
    /// Records of pinned items, where one is known.
    described: HashMap<Cid, RecordListing>,
    collections: Vec<CollectionListing>,
}

pub(super) fn router(state: Arc<PageState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/status", get(status))
        .fallback(not_found)
        .with_state(state)
        .layer(middleware::from_fn(security_headers))
}

/// Serves until `shutdown` turns true, then lets requests in progress finish.
pub(super) async fn serve(
    listener: TcpListener,
    state: Arc<PageState>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

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
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(API_CSP));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-cache"));
    response
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

fn unavailable(reason: String) -> Response {
    tracing::warn!(%reason, "status unavailable");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the node's status is unavailable; see the daemon's log\n",
    )
        .into_response()
}

#[derive(Serialize)]
struct StatusJson {
    version: &'static str,
    peer_id: String,
    listen_addrs: Option<Vec<String>>,
    /// `null` when the network task did not answer in time.
    peers: Option<Vec<PeerJson>>,
    blocks: u64,
    bytes: u64,
    disk_bytes: u64,
    pins_total: usize,
    pins: Vec<PinJson>,
}

#[derive(Serialize)]
struct PeerJson {
    peer_id: String,
    addresses: Vec<String>,
    agent_version: Option<String>,
    rtt_ms: Option<u128>,
}

#[derive(Serialize)]
struct PinJson {
    cid: String,
    reasons: Vec<String>,
}

async fn status(State(state): State<Arc<PageState>>) -> Response {
    let snapshot = match state.store_snapshot().await {
        Ok(snapshot) => snapshot,
        Err(reason) => return unavailable(reason),
    };
    let network = state.network().await;
    let to_strings =
        |addrs: &[Multiaddr]| addrs.iter().map(Multiaddr::to_string).collect::<Vec<_>>();
    let body = StatusJson {
        version: env!("CARGO_PKG_VERSION"),
        peer_id: state.peer_id.to_string(),
        listen_addrs: network.as_ref().map(|(_, listen)| to_strings(listen)),
        peers: network.as_ref().map(|(peers, _)| {
            peers
                .iter()
                .map(|peer| PeerJson {
                    peer_id: peer.peer_id.to_string(),
                    addresses: to_strings(&peer.addresses),
                    agent_version: peer.agent_version.clone(),
                    rtt_ms: peer.rtt.map(|rtt| rtt.as_millis()),
                })
                .collect()
        }),
        blocks: snapshot.stat.blocks,
        bytes: snapshot.stat.bytes,
        disk_bytes: snapshot.stat.disk_bytes,
        pins_total: snapshot.pins_total,
        pins: snapshot
            .pins
            .iter()
            .map(|(cid, reasons)| PinJson {
                cid: cid.to_string(),
                reasons: reasons.clone(),
            })
            .collect(),
    };
    Json(body).into_response()
}

async fn page(State(state): State<Arc<PageState>>) -> Response {
    let snapshot = match state.store_snapshot().await {
        Ok(snapshot) => snapshot,
        Err(reason) => return unavailable(reason),
    };
    let network = state.network().await;
    let html = render_page(&state.peer_id, &snapshot, network.as_ref());
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        html,
    )
        .into_response();
    if let Ok(csp) = HeaderValue::from_str(&PAGE_CSP) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

fn render_page(
    peer_id: &PeerId,
    snapshot: &StoreSnapshot,
    network: Option<&(Vec<PeerInfo>, Vec<Multiaddr>)>,
) -> String {
    let peer_id = escape_html(&peer_id.to_string());
    let mut html = String::with_capacity(8 * 1024);
    // `write!` into a String cannot fail.
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>oermesh node {peer_id}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <a class=\"skip\" href=\"#main\">Skip to main content</a>\n\
         <header>\n<p>oermesh: open educational resources, shared between schools</p>\n\
         <h1>This node</h1>\n</header>\n<main id=\"main\" tabindex=\"-1\">\n"
    );

    let _ = write!(
        html,
        "<section aria-labelledby=\"node-h\">\n<h2 id=\"node-h\">Identity</h2>\n<dl>\n"
    );
    let _ = write!(
        html,
        "<dt>Peer ID</dt><dd><code>{peer_id}</code></dd>\n<dt>Listening on</dt><dd>"
    );
    match network {
        Some((_, listen)) if !listen.is_empty() => {
            let addrs: Vec<String> = listen
                .iter()
                .map(|a| format!("<code>{}</code>", escape_html(&a.to_string())))
                .collect();
            html.push_str(&addrs.join("<br>"));
        }
        Some(_) => html.push_str("No peer connections accepted (no listen address)"),
        None => html.push_str("Unknown: the network part of the node did not answer"),
    }
    let _ = write!(
        html,
        "</dd>\n<dt>Software</dt><dd>oermesh {}</dd>\n</dl>\n</section>\n",
        env!("CARGO_PKG_VERSION")
    );

    let stat = &snapshot.stat;
    let _ = write!(
        html,
        "<section aria-labelledby=\"store-h\">\n<h2 id=\"store-h\">Storage</h2>\n<dl>\n\
         <dt>Pinned items</dt><dd>{}</dd>\n<dt>Blocks</dt><dd>{}</dd>\n\
         <dt>Content size</dt><dd>{}</dd>\n<dt>Disk used</dt><dd>{}</dd>\n</dl>\n</section>\n",
        snapshot.pins_total,
        stat.blocks,
        crate::units::human_bytes(stat.bytes),
        crate::units::human_bytes(stat.disk_bytes)
    );

    let _ = write!(
        html,
        "<section aria-labelledby=\"pins-h\">\n<h2 id=\"pins-h\">Pinned items</h2>\n"
    );
    if snapshot.pins.is_empty() {
        html.push_str("<p>Nothing is pinned yet. Add files with <code>oermesh add</code>.</p>\n");
    } else {
        html.push_str("<table>\n<thead><tr><th scope=\"col\">Title</th><th scope=\"col\">Licence</th><th scope=\"col\">Publisher</th><th scope=\"col\">Content ID (CID)</th><th scope=\"col\">Pinned because</th></tr></thead>\n<tbody>\n");
        for (cid, reasons) in &snapshot.pins {
            let (title, licence, publisher) = match snapshot.described.get(cid) {
                Some(listing) => (
                    escape_html(&listing.summary.title),
                    escape_html(&listing.summary.licence),
                    trust_label(listing.trusted),
                ),
                None => (
                    "<span class=\"note\">no record</span>".to_string(),
                    String::new(),
                    String::new(),
                ),
            };
            let _ = writeln!(
                html,
                "<tr><td>{title}</td><td>{licence}</td><td>{publisher}</td><td><code>{}</code></td><td>{}</td></tr>",
                escape_html(&cid.to_string()),
                escape_html(&reasons.join(", "))
            );
        }
        html.push_str("</tbody>\n</table>\n");
        if snapshot.pins_total > snapshot.pins.len() {
            let _ = writeln!(
                html,
                "<p class=\"note\">Showing the first {} of {} pinned items.</p>",
                snapshot.pins.len(),
                snapshot.pins_total
            );
        }
    }
    html.push_str("</section>\n");

    let _ = write!(
        html,
        "<section aria-labelledby=\"collections-h\">\n<h2 id=\"collections-h\">Collections</h2>\n"
    );
    if snapshot.collections.is_empty() {
        html.push_str("<p>No collections yet. Publish one with <code>oermesh collection publish</code>, or import one with <code>oermesh import</code>.</p>\n");
    } else {
        html.push_str("<table>\n<thead><tr><th scope=\"col\">Collection ID</th><th scope=\"col\">Version</th><th scope=\"col\">Publisher</th></tr></thead>\n<tbody>\n");
        for listing in &snapshot.collections {
            let version = listing.newest.map_or_else(
                || "not published yet".to_string(),
                |(seq, _)| seq.to_string(),
            );
            let _ = writeln!(
                html,
                "<tr><td><code>{}</code></td><td>{version}</td><td>{}</td></tr>",
                escape_html(&listing.id.to_string()),
                trust_label(listing.trusted)
            );
        }
        html.push_str("</tbody>\n</table>\n");
    }
    html.push_str("</section>\n");

    let _ = write!(
        html,
        "<section aria-labelledby=\"peers-h\">\n<h2 id=\"peers-h\">Connected peers</h2>\n"
    );
    match network {
        None => html.push_str("<p>Unknown: the network part of the node did not answer.</p>\n"),
        Some((peers, _)) if peers.is_empty() => {
            html.push_str("<p>No peers connected. Other oermesh nodes on this network are found automatically, or can be listed in <code>static_peers</code> in the node's <code>config.toml</code>.</p>\n")
        }
        Some((peers, _)) => {
            html.push_str("<table>\n<thead><tr><th scope=\"col\">Peer ID</th><th scope=\"col\">Address</th><th scope=\"col\">Software</th><th scope=\"col\">Round trip</th></tr></thead>\n<tbody>\n");
            for peer in peers {
                let addresses: Vec<String> =
                    peer.addresses.iter().map(|a| format!("<code>{}</code>", escape_html(&a.to_string()))).collect();
                let _ = writeln!(
                    html,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape_html(&peer.peer_id.to_string()),
                    addresses.join("<br>"),
                    peer.agent_version.as_deref().map_or_else(|| "unknown".to_string(), escape_html),
                    peer.rtt.map_or_else(|| "not measured yet".to_string(), |rtt| format!("{} ms", rtt.as_millis()))
                );
            }
            html.push_str("</tbody>\n</table>\n");
        }
    }
    html.push_str("</section>\n</main>\n");
    html.push_str(
        "<footer>\n<p><a href=\"/\">Refresh this page</a> · <a href=\"/api/status\">Status as JSON</a></p>\n</footer>\n</body>\n</html>\n",
    );
    html
}

/// Trust in words, not colour alone, so it reaches screen readers and every display.
fn trust_label(trusted: bool) -> String {
    if trusted {
        "trusted".to_string()
    } else {
        "<strong>not trusted</strong>".to_string()
    }
}

/// Makes text safe inside HTML elements and quoted attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_with(pins: Vec<(Cid, Vec<String>)>, pins_total: usize) -> StoreSnapshot {
        StoreSnapshot {
            stat: StoreStat::default(),
            pins,
            pins_total,
            described: HashMap::new(),
            collections: Vec::new(),
        }
    }

    #[test]
    fn escaping_covers_markup_and_both_quotes() {
        assert_eq!(
            escape_html(r#"<a href="x" title='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn strings_from_peers_are_escaped_on_the_page() {
        let peer_id = PeerId::random();
        let hostile = PeerInfo {
            peer_id: PeerId::random(),
            addresses: vec!["/ip4/10.0.0.9/tcp/4001".parse().unwrap()],
            agent_version: Some("<script>alert(1)</script>".into()),
            rtt: Some(Duration::from_millis(3)),
        };
        let html = render_page(
            &peer_id,
            &snapshot_with(vec![], 0),
            Some(&(vec![hostile], vec![])),
        );
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("3 ms"));
    }

    #[test]
    fn page_has_language_landmarks_ordered_headings_and_skip_link() {
        let html = render_page(&PeerId::random(), &snapshot_with(vec![], 0), None);
        assert!(html.contains("<html lang=\"en\">"));
        for landmark in ["<header>", "<main id=\"main\"", "<footer>"] {
            assert!(html.contains(landmark), "missing {landmark}");
        }
        assert!(
            html.find("href=\"#main\"").unwrap() < html.find("<header>").unwrap(),
            "skip link comes first"
        );
        let levels: Vec<u8> = html
            .match_indices("<h")
            .filter_map(|(i, _)| html.as_bytes().get(i + 2).copied())
            .filter(u8::is_ascii_digit)
            .collect();
        assert_eq!(levels.first(), Some(&b'1'));
        assert!(
            levels.windows(2).all(|w| w[1] <= w[0] + 1),
            "headings skip a level: {levels:?}"
        );
        assert!(
            !html.contains("<script"),
            "the page works without JavaScript"
        );
    }

    #[test]
    fn long_pin_lists_are_cut_and_counted() {
        let cid = crate::block::cid_v1(crate::block::codec::RAW, b"x");
        let html = render_page(
            &PeerId::random(),
            &snapshot_with(vec![(cid, vec!["user".into()])], 900),
            None,
        );
        assert!(html.contains(&cid.to_string()));
        assert!(html.contains("Showing the first 1 of 900 pinned items."));
    }

    #[test]
    fn the_style_hash_in_the_policy_is_the_inline_style_sheet() {
        let expected = cid::multibase::encode(
            cid::multibase::Base::Base64Pad,
            Sha256::digest(STYLE.as_bytes()),
        );
        assert!(PAGE_CSP.contains(&format!("'sha256-{}'", &expected[1..])));
        assert!(PAGE_CSP.starts_with("default-src 'none'"));
    }
}
