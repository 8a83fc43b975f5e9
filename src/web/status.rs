//! The node's figures for the page, `/api/status` and `/metrics`: store statistics,
//! pins, collections and peers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cid::Cid;
use libp2p::Multiaddr;
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::App;
use crate::daemon::net::PeerInfo;
use crate::records::book::{CollectionListing, RecordListing};
use crate::store::StoreStat;

/// Pins listed on the page and in the JSON; the rest are counted, so a large
/// collection does not make a page too heavy for a slow school link.
pub const PINS_SHOWN: usize = 500;

/// Store statistics walk the whole index; a burst of page loads shares one walk.
const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(1);

/// A page is still served, without peers, when the network task does not answer.
const NETWORK_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

pub struct StoreSnapshot {
    pub stat: StoreStat,
    pub pins: Vec<(Cid, Vec<String>)>,
    pub pins_total: usize,
    /// Records of pinned items, where one is known.
    pub described: HashMap<Cid, RecordListing>,
    pub collections: Vec<CollectionListing>,
}

/// Connected peers and this node's listen addresses.
pub type NetworkView = (Vec<PeerInfo>, Vec<Multiaddr>);

#[derive(Default)]
pub struct StatusCache {
    snapshot: Mutex<Option<(Instant, Arc<StoreSnapshot>)>>,
}

impl StatusCache {
    /// Store figures and pins, at most [`SNAPSHOT_MAX_AGE`] old. The lock makes
    /// concurrent requests wait for one walk instead of starting their own.
    pub async fn snapshot(&self, app: &Arc<App>) -> Result<Arc<StoreSnapshot>, String> {
        let mut cached = self.snapshot.lock().await;
        if let Some((taken, snapshot)) = cached.as_ref() {
            if taken.elapsed() < SNAPSHOT_MAX_AGE {
                return Ok(snapshot.clone());
            }
        }
        let app = app.clone();
        let snapshot = tokio::task::spawn_blocking(move || take_snapshot(&app))
            .await
            .map_err(|err| err.to_string())??;
        let snapshot = Arc::new(snapshot);
        *cached = Some((Instant::now(), snapshot.clone()));
        Ok(snapshot)
    }

    /// Peers and listen addresses, or `None` when the node has no network task or it
    /// did not answer in time.
    pub async fn network(&self, app: &App) -> Option<NetworkView> {
        let client = app.network.as_ref()?;
        let ask = async {
            Some((
                client.peers().await.ok()?,
                client.listen_addrs().await.ok()?,
            ))
        };
        tokio::time::timeout(NETWORK_ANSWER_TIMEOUT, ask)
            .await
            .ok()
            .flatten()
    }
}

fn take_snapshot(app: &App) -> Result<StoreSnapshot, String> {
    let store = app.store();
    let stat = store.stat().map_err(|err| err.to_string())?;
    let mut pins = store.pins().map_err(|err| err.to_string())?;
    let pins_total = pins.len();
    pins.truncate(PINS_SHOWN);
    // The first record that describes each pinned item, for its title and licence.
    let mut described = HashMap::new();
    for (cid, _) in &pins {
        if let Some(listing) = app
            .records()
            .records_for_content(cid)
            .map_err(|err| err.to_string())?
            .into_iter()
            .next()
        {
            described.insert(*cid, listing);
        }
    }
    let collections = app
        .records()
        .collection_list()
        .map_err(|err| err.to_string())?;
    Ok(StoreSnapshot {
        stat,
        pins,
        pins_total,
        described,
        collections,
    })
}

pub fn unavailable(reason: String) -> Response {
    tracing::warn!(%reason, "status unavailable");
    super::gateway::text_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "the node's status is unavailable; see the daemon's log",
    )
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
    collections: Vec<CollectionJson>,
    search_documents: u64,
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

#[derive(Serialize)]
struct CollectionJson {
    id: String,
    version: Option<u64>,
    trusted: bool,
}

pub async fn status_json(State(app): State<Arc<App>>) -> Response {
    let snapshot = match app.status.snapshot(&app).await {
        Ok(snapshot) => snapshot,
        Err(reason) => return unavailable(reason),
    };
    let network = app.status.network(&app).await;
    let to_strings =
        |addrs: &[Multiaddr]| addrs.iter().map(Multiaddr::to_string).collect::<Vec<_>>();
    let body = StatusJson {
        version: env!("CARGO_PKG_VERSION"),
        peer_id: app.peer_id.to_string(),
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
        collections: snapshot
            .collections
            .iter()
            .map(|listing| CollectionJson {
                id: listing.id.to_string(),
                version: listing.newest.map(|(seq, _)| seq),
                trusted: listing.trusted,
            })
            .collect(),
        search_documents: app.search.documents(),
    };
    Json(body).into_response()
}

impl App {
    pub async fn snapshot(self: &Arc<Self>) -> Result<Arc<StoreSnapshot>, String> {
        self.status.snapshot(self).await
    }

    pub async fn network_view(&self) -> Option<NetworkView> {
        self.status.network(self).await
    }
}
