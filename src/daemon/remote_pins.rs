//! Asking remote pinning services (`[replication] pinning_services`) to hold this
//! node's collections: one task that, for each service and each collection this node
//! publishes or follows, asks the service over the IPFS Pinning Service API to pin the
//! newest version's head CID, with this node's addresses as `origins` (the service then
//! fetches it from here over bitswap), and follows the request until it settles.
//!
//! A newer version replaces the request for the older one (`POST /pins/{requestid}`,
//! which keeps the blocks both share held throughout); the head links to the versions
//! before it, so the service holds them too. What was asked is kept in the store's
//! database (`pinning::RemotePins`), so a restart neither forgets nor repeats it;
//! `follow status` and `collection show` show it.

use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::net::Client;
use super::pinning::own_addresses;
use super::pool::BlockingPool;
use crate::config::PinningService;
use crate::node::Node;
use crate::pinning::{Pin, PinState, RemotePin, RemotePins, MAX_NAME_CHARS};

/// How often requests that have not settled are looked at again.
const POLL_UNSETTLED: Duration = Duration::from_secs(2);
/// How often a pass runs when nothing is pending (it also runs when woken).
const PASS_EVERY: Duration = Duration::from_secs(60);
/// How long one call to a service may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the task when services are configured; it ends when `shutdown` turns true.
pub fn spawn(
    node: Node,
    services: Vec<PinningService>,
    pool: BlockingPool,
    client: Client,
    peer: PeerId,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    if services.is_empty() {
        return None;
    }
    let remote = RemotePins::open(node.store().db()).ok()?;
    Some(tokio::spawn(async move {
        let http = match reqwest::Client::builder().timeout(CALL_TIMEOUT).build() {
            Ok(http) => http,
            Err(err) => {
                tracing::warn!(%err, "cannot make an HTTP client for the pinning services");
                return;
            }
        };
        let asker = Asker {
            node,
            remote,
            pool,
            http,
        };
        loop {
            let origins = own_addresses(&client, peer).await;
            let unsettled = asker.pass(&services, &origins).await;
            let wait = if unsettled {
                POLL_UNSETTLED
            } else {
                PASS_EVERY
            };
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
    }))
}

struct Asker {
    node: Node,
    remote: RemotePins,
    pool: BlockingPool,
    http: reqwest::Client,
}

impl Asker {
    /// Brings every service up to date; returns whether a request is still unsettled.
    async fn pass(&self, services: &[PinningService], origins: &[String]) -> bool {
        let node = self.node.clone();
        let collections = self
            .pool
            .run(move || -> crate::node::Result<Vec<(String, u64, String)>> {
                let book = node.records();
                let mut newest = Vec::new();
                for id in node.gossip_collections()? {
                    if let Some((seq, head)) = book.newest_head(&id)? {
                        newest.push((id.to_string(), seq, head.to_string()));
                    }
                }
                Ok(newest)
            })
            .await;
        let Ok(Ok(collections)) = collections else {
            return false;
        };
        let mut unsettled = false;
        for service in services {
            for (collection, seq, head) in &collections {
                let known = self.stored(&service.name, collection).await;
                let next = match known {
                    Some(pin) if pin.head == *head && pin.requestid.is_some() => {
                        if !pin.status.unsettled() {
                            continue;
                        }
                        self.check(service, pin).await
                    }
                    known => {
                        let replaces = known.and_then(|pin| pin.requestid);
                        self.ask(service, collection, *seq, head, origins, replaces)
                            .await
                    }
                };
                // A service that could not be asked is asked again at the next pass.
                unsettled |= next.status.unsettled() && next.requestid.is_some();
                self.store(next).await;
            }
        }
        unsettled
    }

    async fn stored(&self, service: &str, collection: &str) -> Option<RemotePin> {
        let remote = self.remote.clone();
        let (service, collection) = (service.to_string(), collection.to_string());
        self.pool
            .run(move || remote.get(&service, &collection))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
    }

    async fn store(&self, pin: RemotePin) {
        let remote = self.remote.clone();
        if let Ok(Err(err)) = self.pool.run(move || remote.put(&pin)).await {
            tracing::warn!(%err, "cannot record a remote pin");
        }
    }

    /// Asks `service` to pin a version (replacing the request for an older one).
    async fn ask(
        &self,
        service: &PinningService,
        collection: &str,
        seq: u64,
        head: &str,
        origins: &[String],
        replaces: Option<String>,
    ) -> RemotePin {
        let mut name = format!("{collection} version {seq}");
        if name.chars().count() > MAX_NAME_CHARS {
            name = name.chars().take(MAX_NAME_CHARS).collect();
        }
        let pin = Pin {
            cid: head.to_string(),
            name: Some(name),
            origins: origins.to_vec(),
            meta: [
                ("oermesh_collection".to_string(), collection.to_string()),
                ("oermesh_version".to_string(), seq.to_string()),
            ]
            .into(),
        };
        let base = service.url.trim_end_matches('/');
        let mut answer = match &replaces {
            Some(old) => {
                self.call(service, &format!("{base}/pins/{old}"), &pin)
                    .await
            }
            None => self.call(service, &format!("{base}/pins"), &pin).await,
        };
        // The service no longer knows the old request: ask afresh.
        if replaces.is_some()
            && matches!(
                &answer,
                Err(Failed {
                    status: Some(404),
                    ..
                })
            )
        {
            answer = self.call(service, &format!("{base}/pins"), &pin).await;
        }
        let mut remote = RemotePin {
            service: service.name.clone(),
            collection: collection.to_string(),
            seq,
            head: head.to_string(),
            requestid: None,
            status: PinState::Failed,
            details: None,
        };
        match answer {
            Ok(status) => settle_from(&mut remote, &status),
            Err(failed) => {
                tracing::info!(service = %service.name, %collection, reason = %failed.reason, "pinning service refused or unreachable");
                remote.details = Some(failed.reason);
            }
        }
        remote
    }

    /// Asks `service` where a request stands.
    async fn check(&self, service: &PinningService, mut pin: RemotePin) -> RemotePin {
        let Some(id) = pin.requestid.clone() else {
            return pin;
        };
        let url = format!("{}/pins/{id}", service.url.trim_end_matches('/'));
        let answer = self.http.get(&url).bearer_auth(&service.token).send().await;
        match read(answer).await {
            Ok(status) => settle_from(&mut pin, &status),
            // Forgotten by the service: asked again on the next pass.
            Err(Failed {
                status: Some(404), ..
            }) => {
                pin.requestid = None;
                pin.status = PinState::Failed;
                pin.details = Some(format!("{} no longer knows request {id}", service.name));
            }
            Err(failed) => pin.details = Some(failed.reason),
        }
        pin
    }

    async fn call(&self, service: &PinningService, url: &str, pin: &Pin) -> Result<Value, Failed> {
        let answer = self
            .http
            .post(url)
            .bearer_auth(&service.token)
            .json(pin)
            .send()
            .await;
        read(answer).await
    }
}

struct Failed {
    status: Option<u16>,
    reason: String,
}

/// The JSON of a successful answer, or why it failed in one line.
async fn read(answer: Result<reqwest::Response, reqwest::Error>) -> Result<Value, Failed> {
    let response = answer.map_err(|err| Failed {
        status: None,
        reason: format!("cannot reach the service: {err}"),
    })?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    let details = body["error"]["details"]
        .as_str()
        .or(body["error"]["reason"].as_str())
        .unwrap_or("no reason given");
    Err(Failed {
        status: Some(status.as_u16()),
        reason: format!("the service answered {status}: {details}"),
    })
}

/// Takes the request id and status from a `PinStatus`.
fn settle_from(pin: &mut RemotePin, status: &Value) {
    match (
        status["requestid"].as_str(),
        status["status"].as_str().and_then(PinState::parse),
    ) {
        (Some(id), Some(state)) => {
            pin.requestid = Some(id.to_string());
            pin.status = state;
            pin.details = status["info"]["status_details"]
                .as_str()
                .map(str::to_string);
        }
        _ => {
            pin.status = PinState::Failed;
            pin.details = Some("the service's answer is not a PinStatus".into());
        }
    }
}
