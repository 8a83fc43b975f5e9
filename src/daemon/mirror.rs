//! The mirror: the daemon's side of following a collection's content. One task that,
//! for each collection followed with its content, fetches every block of every
//! resource the newest version lists (retracted ones left out) through the block
//! exchange, from every peer that has them at once, and pins each resource for the
//! collection once its whole DAG is here and durable; what a newer version no longer
//! lists, or a retraction withdrew, is unpinned.
//!
//! Nothing is kept in memory that the store does not also say: a resource is complete
//! exactly when its pin for the collection exists, so a restart (a kill included)
//! resumes from the store, and the exchange's fetch walks what the store already holds
//! and asks only for the rest. The task holds only each collection's sync state (a
//! stall's reason) for `follow list`.
//!
//! A pass looks at every followed collection; it runs when the task is woken (a
//! version accepted, a follow or unfollow, a peer connected) and, while something is
//! missing, again after a wait that grows while nothing changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cid::Cid;
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch, Notify};
use tokio::time::Instant;

use super::group::GroupHandle;
use super::net::NetEvent;
use super::pool::BlockingPool;
use crate::bandwidth::SyncHours;
use crate::exchange::{Exchange, FetchRequest};
use crate::node::follow::ContentPlan;
use crate::node::{one_line, Node};
use crate::records::CollectionId;

/// Resources of one collection fetched at once (each from every peer at once).
const RESOURCES_AT_ONCE: usize = 4;
/// The first wait before a pass that left something missing runs again, and the
/// longest.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How long a resource's fetch waits without progress before it gives up for this
/// pass.
const FETCH_WAIT: Duration = Duration::from_secs(20);
/// How often a mirror stopped by a full disk or its quota looks for room again: a
/// look is cheap, and room freed outside the node sends no signal.
const ROOM_POLL: Duration = Duration::from_secs(2);

/// How a pass over a collection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Synced {
    Complete,
    Incomplete,
    /// Stopped for want of room (disk full, quota reached).
    NoRoom,
}

/// Where a followed collection's content stands, as the mirror last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncState {
    Syncing,
    Complete,
    /// The last pass left resources missing, for this reason.
    Stalled(String),
}

/// The mirror as the service layer reaches it: wake it, read its states.
#[derive(Clone, Default)]
pub struct MirrorHandle {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    wake: Notify,
    states: Mutex<HashMap<CollectionId, SyncState>>,
}

impl MirrorHandle {
    /// Asks for a pass soon (a version accepted, a follow changed).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    pub fn state(&self, id: &CollectionId) -> Option<SyncState> {
        self.states().get(id).cloned()
    }

    fn set(&self, id: &CollectionId, state: SyncState) {
        self.states().insert(id.clone(), state);
    }

    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<CollectionId, SyncState>> {
        self.shared
            .states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Starts the mirror on its own task.
pub fn spawn(
    node: Node,
    exchange: Exchange,
    pool: BlockingPool,
    group: GroupHandle,
    sync_hours: Option<SyncHours>,
    events: broadcast::Receiver<NetEvent>,
    shutdown: watch::Receiver<bool>,
) -> (MirrorHandle, tokio::task::JoinHandle<()>) {
    let handle = MirrorHandle::default();
    let mirror = Mirror {
        node,
        exchange,
        pool,
        group,
        sync_hours,
        handle: handle.clone(),
    };
    let task = tokio::spawn(mirror.run(events, shutdown));
    (handle, task)
}

struct Mirror {
    node: Node,
    exchange: Exchange,
    pool: BlockingPool,
    /// For collections a replication group keeps: which share this node holds.
    group: GroupHandle,
    /// When content may be fetched; `None`: any time.
    sync_hours: Option<SyncHours>,
    handle: MirrorHandle,
}

impl Mirror {
    async fn run(
        self,
        mut events: broadcast::Receiver<NetEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let stopped = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        tokio::pin!(stopped);
        let mut retry = RETRY_FIRST;
        loop {
            let synced = tokio::select! {
                synced = self.pass() => synced,
                () = &mut stopped => break,
            };
            let incomplete = synced != Synced::Complete;
            let wait = match synced {
                Synced::Incomplete => {
                    let wait = retry;
                    retry = (retry * 2).min(RETRY_MAX);
                    wait
                }
                Synced::NoRoom => ROOM_POLL,
                Synced::Complete => {
                    retry = RETRY_FIRST;
                    RETRY_MAX
                }
            };
            let until = Instant::now() + wait;
            loop {
                tokio::select! {
                    () = self.handle.shared.wake.notified() => {
                        retry = RETRY_FIRST;
                        break;
                    }
                    event = events.recv() => match event {
                        // A new peer may have what was missing.
                        Ok(NetEvent::Identified { compatible: true, .. })
                        | Err(broadcast::error::RecvError::Lagged(_)) if incomplete => {
                            retry = RETRY_FIRST;
                            break;
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                        _ => {}
                    },
                    () = tokio::time::sleep_until(until) => break,
                    () = &mut stopped => return,
                }
            }
        }
    }

    /// One look at every followed collection: whether anything is missing, and why.
    async fn pass(&self) -> Synced {
        let node = self.node.clone();
        let plans = match self.pool.run(move || node.content_plans()).await {
            Ok(Ok(plans)) => plans,
            Ok(Err(err)) => {
                tracing::warn!(err = %one_line(&err), "followed collections not read");
                return Synced::Incomplete;
            }
            Err(_) => return Synced::Complete,
        };
        let mut overall = Synced::Complete;
        for plan in plans {
            match self.sync(plan).await {
                Synced::Complete => {}
                Synced::NoRoom => overall = Synced::NoRoom,
                Synced::Incomplete if overall == Synced::Complete => overall = Synced::Incomplete,
                Synced::Incomplete => {}
            }
        }
        overall
    }

    async fn no_room(&self) -> Option<String> {
        no_room(self.node.clone(), &self.pool).await
    }

    fn outside_sync_hours(&self) -> Option<String> {
        outside(self.sync_hours)
    }

    /// For a collection a replication group keeps, this node's share: what it lacks of
    /// it (after letting go of what the group holds enough of elsewhere). `None` while
    /// the group's view is not known yet.
    async fn group_share(&self, id: &CollectionId, missing: Vec<Cid>) -> Option<Vec<Cid>> {
        let node = self.node.clone();
        let entries_id = id.clone();
        let entries = match self.pool.run(move || node.group_entries(&entries_id)).await {
            Ok(Ok(Some(entries))) => entries,
            Ok(Ok(None)) => return Some(Vec::new()),
            Ok(Err(err)) => {
                tracing::warn!(collection = %id, err = %one_line(&err), "group share not read");
                return None;
            }
            Err(_) => return None,
        };
        let decision = self.group.decide(id, &entries)?;
        if !decision.release.is_empty() {
            let node = self.node.clone();
            let release_id = id.clone();
            let release = decision.release.clone();
            match self
                .pool
                .run(move || node.release_share(&release_id, &release))
                .await
            {
                Ok(Ok(())) => self.group.holdings_changed(),
                Ok(Err(err)) => {
                    tracing::warn!(collection = %id, err = %one_line(&err), "share not let go")
                }
                Err(_) => return None,
            }
        }
        Some(
            missing
                .into_iter()
                .filter(|content| decision.fetch.contains(content))
                .collect(),
        )
    }

    /// Fetches what one collection lacks.
    async fn sync(&self, plan: ContentPlan) -> Synced {
        let ContentPlan { id, seq, missing } = plan;
        let missing = if self.group.replicas(&id).is_some() {
            match self.group_share(&id, missing).await {
                Some(share) => share,
                None => {
                    self.handle.set(&id, SyncState::Syncing);
                    return Synced::Incomplete;
                }
            }
        } else {
            missing
        };
        if missing.is_empty() {
            self.handle.set(&id, SyncState::Complete);
            return Synced::Complete;
        }
        if let Some(reason) = self.no_room().await {
            return self.stalled_for_room(&id, reason);
        }
        if let Some(closed) = self.outside_sync_hours() {
            self.handle.set(&id, SyncState::Stalled(closed));
            return Synced::Incomplete;
        }
        if !matches!(self.handle.state(&id), Some(SyncState::Stalled(_))) {
            self.handle.set(&id, SyncState::Syncing);
        }
        let reason = crate::node::follow::pin_reason(&id);
        // Owned futures, collected first: a stream over a borrowing closure is not
        // `Send` for every lifetime, as the spawned task needs.
        let fetches: Vec<_> = missing
            .iter()
            .map(|root| {
                let mut request = FetchRequest::dag(*root);
                request.pin = Some(reason.clone());
                request.wait = FETCH_WAIT;
                let exchange = self.exchange.clone();
                let node = self.node.clone();
                let pool = self.pool.clone();
                let root = *root;
                let sync_hours = self.sync_hours;
                async move {
                    // The window may close during a sync: the next resource waits.
                    if let Some(closed) = outside(sync_hours) {
                        return (root, Err(closed));
                    }
                    // A disk or quota that fills up stops the fetching between
                    // resources.
                    if let Some(reason) = no_room(node, &pool).await {
                        return (root, Err(reason));
                    }
                    let fetched = exchange.fetch(request).await.map_err(|err| err.to_string());
                    (root, fetched)
                }
            })
            .collect();
        let results: Vec<_> = futures_util::stream::iter(fetches)
            .buffer_unordered(RESOURCES_AT_ONCE)
            .collect()
            .await;
        let mut failures: Vec<(Cid, String)> = Vec::new();
        self.group.holdings_changed();
        for (root, result) in results {
            match result {
                Ok(fetched) => {
                    tracing::debug!(collection = %id, %root, bytes = fetched.bytes, "resource complete")
                }
                Err(err) => failures.push((root, err)),
            }
        }
        // What was pinned while the collection changed (a retraction, an unfollow) is
        // let go again.
        let node = self.node.clone();
        if let Ok(Err(err)) = self.pool.run(move || node.settle_content()).await {
            tracing::warn!(collection = %id, err = %one_line(&err), "content pins not settled");
        }
        if !failures.is_empty() {
            // A fetch that failed for want of room (a write that found the disk full)
            // says so in its own words; the state names the cause.
            if let Some(reason) = self.no_room().await {
                return self.stalled_for_room(&id, reason);
            }
        }
        match failures.first() {
            None => {
                tracing::info!(collection = %id, seq, resources = missing.len(), "collection content complete");
                self.handle.set(&id, SyncState::Complete);
                Synced::Complete
            }
            Some((root, reason)) => {
                let reason = if failures.len() > 1 {
                    format!("{} resources missing; {root}: {reason}", failures.len())
                } else {
                    format!("{root}: {reason}")
                };
                tracing::info!(collection = %id, %reason, "collection content incomplete");
                self.handle.set(&id, SyncState::Stalled(reason));
                Synced::Incomplete
            }
        }
    }

    fn stalled_for_room(&self, id: &CollectionId, reason: String) -> Synced {
        if self.handle.state(id) != Some(SyncState::Stalled(reason.clone())) {
            tracing::warn!(collection = %id, %reason, "fetching stopped");
        }
        self.handle.set(id, SyncState::Stalled(reason));
        Synced::NoRoom
    }
}

/// Why no more followed content may be fetched now, if so.
async fn no_room(node: Node, pool: &BlockingPool) -> Option<String> {
    match pool.run(move || node.no_room()).await {
        Ok(Ok(reason)) => reason,
        Ok(Err(err)) => Some(one_line(&err)),
        Err(_) => Some("the daemon is shutting down".into()),
    }
}

/// Why content may not be fetched now, if the sync hours are closed.
fn outside(sync_hours: Option<SyncHours>) -> Option<String> {
    sync_hours
        .filter(|hours| !hours.open_now())
        .map(|hours| format!("waiting for the sync hours, {hours} local time"))
}
