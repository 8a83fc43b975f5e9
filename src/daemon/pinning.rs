//! The daemon's side of the IPFS Pinning Service API: one task that takes each pin
//! request still queued or pinning (oldest first, a few at once), dials its `origins`,
//! fetches the whole DAG through the block exchange (from the origins over bitswap, as
//! the API's clients expect of an IPFS node, and from every other peer that has it),
//! pins it with the request's own reason, and records `pinned` or `failed`. A pinned
//! CID that is a collection's head has its version registered in the record layer too
//! (records, then head, by the rules a followed version meets), so that the collection
//! is known here as it would be had this node followed it.
//!
//! The requests in the database are the only queue: a restart (a kill included) finds
//! the unsettled ones and starts them again, and the fetch resumes from what the store
//! holds. A request removed while its fetch runs has the fetch stopped; one removed
//! just as its fetch pins lets go of that pin itself, so that no pin outlives its
//! request (see [`Pinning::remove`] and `settle`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{watch, Notify};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use super::net::Client;
use super::pool::BlockingPool;
use crate::exchange::{Exchange, FetchRequest};
use crate::node::Node;
use crate::pinning::{pin_reason, Pin, PinRequest, PinRequests, PinState, PinningError};
use crate::store::Store;

/// Pin requests fetched at once.
const PINS_AT_ONCE: usize = 4;
/// How long a pin's fetch waits without progress (no block arriving, nobody having a
/// block it needs) before the request fails.
pub const PIN_WAIT: Duration = Duration::from_secs(60);
/// How long dialling one origin may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The pinning task as the API reaches it. Cheap to clone.
#[derive(Clone)]
pub struct Pinning {
    shared: Arc<Shared>,
}

struct Shared {
    requests: PinRequests,
    node: Node,
    pool: BlockingPool,
    client: Client,
    /// This node, named in `delegates`.
    peer: PeerId,
    wake: Notify,
    /// The fetches running now, by request id.
    running: Mutex<HashMap<String, AbortHandle>>,
}

impl Pinning {
    pub fn requests(&self) -> &PinRequests {
        &self.shared.requests
    }

    /// This node's addresses, for `delegates`: where a client connects to hand data
    /// over. Never empty (the spec wants one at least).
    pub async fn delegates(&self) -> Vec<String> {
        own_addresses(&self.shared.client, self.shared.peer).await
    }

    /// Stores a new request (or one that replaces `replaces`) and wakes the task.
    /// Blocking: call it on the pool.
    pub fn create(&self, pin: Pin, replaces: Option<String>) -> Result<PinRequest, PinningError> {
        let request = self.shared.requests.create(pin, replaces.clone())?;
        if let Some(old) = replaces {
            self.stop(&old);
        }
        self.shared.wake.notify_one();
        Ok(request)
    }

    /// Removes a request: stops its fetch and lets go of its pin. Blocking.
    pub fn remove(&self, requestid: &str) -> Result<(), PinningError> {
        let request = self.shared.requests.remove(requestid)?;
        self.stop(requestid);
        self.release(&request)
    }

    fn stop(&self, requestid: &str) {
        if let Some(fetch) = lock(&self.shared.running).remove(requestid) {
            fetch.abort();
        }
    }

    /// Lets go of the pin a removed request held.
    fn release(&self, request: &PinRequest) -> Result<(), PinningError> {
        let cid = request.cid()?;
        self.shared
            .store()
            .unpin(&cid, Some(&pin_reason(&request.requestid)))
            .map_err(|err| PinningError::Invalid(format!("cannot unpin {cid}: {err}")))?;
        Ok(())
    }
}

/// Starts the pinning task; it ends when `shutdown` turns true.
pub fn spawn(
    requests: PinRequests,
    node: Node,
    exchange: Exchange,
    pool: BlockingPool,
    client: Client,
    peer: PeerId,
    mut shutdown: watch::Receiver<bool>,
) -> (Pinning, JoinHandle<()>) {
    let pinning = Pinning {
        shared: Arc::new(Shared {
            requests,
            node,
            pool,
            client,
            peer,
            wake: Notify::new(),
            running: Mutex::default(),
        }),
    };
    let task_handle = pinning.clone();
    let task = tokio::spawn(async move {
        let pinning = task_handle;
        let mut fetches: JoinSet<()> = JoinSet::new();
        loop {
            let free = PINS_AT_ONCE.saturating_sub(fetches.len());
            if free > 0 {
                for request in pinning.next_requests(free).await {
                    let id = request.requestid.clone();
                    let job = pin_one(pinning.clone(), exchange.clone(), request);
                    let abort = fetches.spawn(job);
                    lock(&pinning.shared.running).insert(id, abort);
                }
            }
            tokio::select! {
                _ = pinning.shared.wake.notified() => {}
                Some(_) = fetches.join_next(), if !fetches.is_empty() => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        fetches.shutdown().await;
    });
    (pinning, task)
}

impl Pinning {
    /// Up to `free` unsettled requests that are not running, oldest first.
    async fn next_requests(&self, free: usize) -> Vec<PinRequest> {
        let requests = self.shared.requests.clone();
        let unsettled = self.shared.pool.run(move || requests.unsettled()).await;
        let unsettled = match unsettled {
            Ok(Ok(unsettled)) => unsettled,
            Ok(Err(err)) => {
                tracing::warn!(%err, "cannot read the pin requests");
                return Vec::new();
            }
            Err(_) => return Vec::new(),
        };
        let running = lock(&self.shared.running);
        unsettled
            .into_iter()
            .filter(|request| !running.contains_key(&request.requestid))
            .take(free)
            .collect()
    }

    /// Records the outcome of a fetch, pinning the DAG first when it came. The pin and
    /// the state are written in this order, and a request found removed has its pin let
    /// go here: whichever of this and [`Pinning::remove`] runs last unpins, so no pin
    /// outlives its request.
    async fn settle(&self, request: &PinRequest, fetched: Result<(), String>) {
        let pinning = self.clone();
        let request = request.clone();
        let settled = self
            .shared
            .pool
            .run(move || -> Result<(), PinningError> {
                let id = &request.requestid;
                let cid = request.cid()?;
                let (status, details) = match fetched.and_then(|()| {
                    pinning
                        .shared
                        .store()
                        .pin(&cid, &pin_reason(id))
                        .map_err(|err| format!("cannot pin {cid}: {err}"))
                }) {
                    Ok(()) => (PinState::Pinned, None),
                    Err(reason) => {
                        tracing::info!(requestid = %id, %reason, "pin request failed");
                        (PinState::Failed, Some(reason))
                    }
                };
                if !pinning.shared.requests.set_state(id, status, details)? {
                    return pinning.release(&request);
                }
                if status == PinState::Pinned {
                    pinning.register_collection(&cid);
                }
                // The request this one replaced held the blocks both share until now.
                if let Some(old) = &request.replaces {
                    if let Ok(old_cid) = cid::Cid::try_from(old.cid.as_str()) {
                        pinning
                            .shared
                            .store()
                            .unpin(&old_cid, Some(&pin_reason(&old.requestid)))
                            .map_err(|err| PinningError::Invalid(err.to_string()))?;
                    }
                }
                Ok(())
            })
            .await;
        if let Ok(Err(err)) = settled {
            tracing::warn!(%err, "cannot record a pin request's outcome");
        }
    }
}

impl Shared {
    fn store(&self) -> &Store {
        self.node.store()
    }
}

impl Pinning {
    /// Registers the version `cid` names when it is a collection head. The pin stands
    /// either way: a version older than the one known here, say, is held but not
    /// registered.
    fn register_collection(&self, cid: &cid::Cid) {
        match self.shared.node.accept_pinned_head(cid) {
            Ok(Some(accepted)) => {
                tracing::info!(collection = %accepted.id, seq = accepted.seq, "pinned collection registered");
            }
            Ok(None) => {}
            Err(err) => tracing::info!(%cid, %err, "pinned collection head not registered"),
        }
    }
}

/// Fetches and pins one request.
async fn pin_one(pinning: Pinning, exchange: Exchange, request: PinRequest) {
    let fetched = fetch(&pinning, &exchange, &request).await;
    lock(&pinning.shared.running).remove(&request.requestid);
    pinning.settle(&request, fetched).await;
}

async fn fetch(pinning: &Pinning, exchange: &Exchange, request: &PinRequest) -> Result<(), String> {
    let cid = request.cid().map_err(|err| err.to_string())?;
    let id = request.requestid.clone();
    let requests = pinning.shared.requests.clone();
    let marked = pinning
        .shared
        .pool
        .run(move || requests.set_state(&id, PinState::Pinning, None))
        .await;
    if !matches!(marked, Ok(Ok(true))) {
        return Err("the request is gone".into());
    }
    let mut origins = Vec::new();
    let mut unreachable = Vec::new();
    for origin in &request.pin.origins {
        let Ok(addr) = origin.parse::<Multiaddr>() else {
            continue;
        };
        match tokio::time::timeout(DIAL_TIMEOUT, pinning.shared.client.dial(addr)).await {
            Ok(Ok(peer)) => origins.push(peer),
            Ok(Err(err)) => unreachable.push(format!("{origin}: {err}")),
            Err(_) => unreachable.push(format!("{origin}: no answer within {DIAL_TIMEOUT:?}")),
        }
    }
    // Pinned in `settle`, only if the request still exists by then.
    let mut fetch = FetchRequest::dag(cid);
    fetch.wait = PIN_WAIT;
    fetch.bitswap_peers = origins;
    match exchange.fetch(fetch).await {
        Ok(_) => Ok(()),
        Err(err) if unreachable.is_empty() => Err(err.to_string()),
        Err(err) => Err(format!(
            "{err}; origins not reached: {}",
            unreachable.join("; ")
        )),
    }
}

/// This node's peer-to-peer addresses, each ending in `/p2p/PEER_ID`, at most 20 (the
/// spec's limit for `delegates` and `origins`); `/p2p/PEER_ID` alone when it has none.
pub async fn own_addresses(client: &Client, peer: PeerId) -> Vec<String> {
    let mut addresses: Vec<String> = client
        .listen_addrs()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|addr| !addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)))
        .map(|addr| with_peer(addr, peer).to_string())
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses.truncate(crate::pinning::MAX_ORIGINS);
    if addresses.is_empty() {
        addresses.push(format!("/p2p/{peer}"));
    }
    addresses
}

fn with_peer(addr: Multiaddr, peer: PeerId) -> Multiaddr {
    if addr.iter().any(|p| matches!(p, Protocol::P2p(_))) {
        addr
    } else {
        addr.with(Protocol::P2p(peer))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
