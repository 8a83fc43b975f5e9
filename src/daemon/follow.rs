//! The follower: the daemon's side of following collections. One task, beside the
//! network event loop, that
//!
//! - joins the gossip topic of every followed and own published collection;
//! - checks each head that arrives (gossip, or the heads exchange) by the record
//!   layer's rules (size, signature, seq): an invalid one is rejected (the sender's
//!   score drops), a stale one ignored; a new version's entry list and records are
//!   fetched from the peers that have them, the version is accepted, and only then is
//!   the head forwarded, so that every node that hears of a version can serve it;
//! - asks each compatible peer that connects, and every peer when it starts following
//!   a collection, for the newest heads (gossipsub does not replay old messages), and
//!   announces every head again now and then;
//! - answers peers' heads and objects requests;
//! - keeps the DHT's provided keys up to date: the collections and the pinned roots,
//!   listed again soon after either changes.
//!
//! Store and record work runs on the daemon's blocking pool, never on this task; the
//! jobs in flight are bounded, and while they are at the bound the task stops taking
//! new messages, so the event loop's bounded queue turns further ones away.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cid::Cid;
use libp2p::gossipsub::{MessageAcceptance, MessageId};
use libp2p::PeerId;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::mirror::MirrorHandle;
use super::net::wire::{self, HeadsRequest, HeadsResponse, ObjectsRequest, ObjectsResponse};
use super::net::{Client, GossipMessage, Inbound, NetEvent};
use super::pool::BlockingPool;
use crate::node::follow::{checked_object, HeadJudgement, MetadataNeeds};
use crate::node::{one_line, Node, NodeError};
use crate::records::book::AcceptedHead;
use crate::records::CollectionId;

/// Commands from the service layer.
pub const COMMAND_QUEUE: usize = 64;
/// Jobs (checks, fetches, answers) running at once.
const MAX_JOBS: usize = 32;
/// Metadata fetches running at once.
const MAX_FETCHES: usize = 4;
/// Every head known is announced again this often: a node that missed a message
/// (it was offline, or joined the mesh late) hears it from its neighbours.
const REBROADCAST: Duration = Duration::from_secs(120);
/// How often the follower looks whether the DHT's provided keys need bringing up to
/// date (a pin or a followed collection changed): content added or published while
/// the daemon runs is provided within about this.
const PROVIDE_CHECK: Duration = Duration::from_secs(1);
/// Listing the provided keys reads every pin: after a listing of N keys the next waits
/// N times this too, so a long run of pin changes (a mirror fetching 100,000
/// resources) costs a small, steady share of a core.
const PROVIDE_WAIT_PER_KEY: Duration = Duration::from_micros(100);
/// The wait after a listing failed (a damaged repository: `verify` says more).
const PROVIDE_RETRY: Duration = Duration::from_secs(60);
/// How often stalled fetches are looked at, the first wait before one is tried
/// again, and the longest.
const RETRY_CHECK: Duration = Duration::from_millis(250);
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(120);
/// Peers asked for a collection's metadata before the DHT is asked for more.
const MAX_SOURCES: usize = 8;
/// Blocks that verified, and retractions, from a round of object requests.
type FetchedObjects = (Vec<(Cid, Vec<u8>)>, Vec<Vec<u8>>);

/// Object requests in flight during one fetch.
const FETCH_PIPELINE: usize = 4;

/// What the service layer tells the follower.
#[derive(Debug, Clone)]
pub enum FollowCommand {
    /// Start following: join the topic and ask peers for the newest head.
    Follow(CollectionId),
    Unfollow(CollectionId),
    /// A head was accepted here (a publish, an import): announce it.
    Accepted(CollectionId),
}

/// What the follower hears from the network: the queue of messages and requests, and
/// the events, subscribed to before the event loop starts so that no connection is
/// missed.
pub struct FromNetwork {
    pub inbound: mpsc::Receiver<Inbound>,
    pub events: broadcast::Receiver<NetEvent>,
}

/// Starts the follower on its own task.
pub fn spawn(
    node: Node,
    net: Client,
    pool: BlockingPool,
    from_network: FromNetwork,
    mirror: MirrorHandle,
    shutdown: watch::Receiver<bool>,
) -> (mpsc::Sender<FollowCommand>, tokio::task::JoinHandle<()>) {
    let (commands, command_queue) = mpsc::channel(COMMAND_QUEUE);
    let FromNetwork { inbound, events } = from_network;
    let follower = Follower {
        events,
        node,
        net,
        pool,
        mirror,
        topics: HashSet::new(),
        pending: HashMap::new(),
        fetching: HashSet::new(),
        jobs: JoinSet::new(),
        provided: ProvidedKeys {
            dirty: true,
            pin_changes: None,
            listing: false,
            next_listing: Instant::now(),
        },
    };
    let task = tokio::spawn(follower.run(inbound, command_queue, shutdown));
    (commands, task)
}

struct Follower {
    node: Node,
    net: Client,
    pool: BlockingPool,
    /// Told of every version accepted, to fetch its content.
    mirror: MirrorHandle,
    events: broadcast::Receiver<NetEvent>,
    /// Collections whose topic this node has joined.
    topics: HashSet<CollectionId>,
    /// Per collection, the newest valid head still waiting for its metadata.
    pending: HashMap<CollectionId, Pending>,
    fetching: HashSet<CollectionId>,
    jobs: JoinSet<Done>,
    provided: ProvidedKeys,
}

/// Whether the keys this node provides in the DHT need listing again.
struct ProvidedKeys {
    /// A followed or own collection changed since the last listing.
    dirty: bool,
    /// The store's count of pin changes at the last listing.
    pin_changes: Option<u64>,
    /// A listing is under way: its keys are not handed on after a newer listing's.
    listing: bool,
    /// The earliest time for the next listing.
    next_listing: Instant,
}

/// A new version whose entry list and records are being fetched.
struct Pending {
    head: Vec<u8>,
    seq: u64,
    /// Peers that sent the head: the first to ask for its metadata.
    sources: Vec<PeerId>,
    /// The gossip message it came in, held unforwarded until the version is accepted
    /// here. Without one (it came otherwise, or gossipsub stopped holding it), the
    /// head is announced afresh once accepted.
    gossip: Option<(MessageId, PeerId)>,
    next_try: Instant,
    wait: Duration,
}

/// Where a head came from.
enum Origin {
    Gossip {
        message_id: MessageId,
        source: PeerId,
    },
    Exchange {
        peer: PeerId,
    },
}

/// A finished job.
enum Done {
    Judged {
        origin: Origin,
        head: Vec<u8>,
        judgement: Result<HeadJudgement, NodeError>,
    },
    Heads {
        peer: PeerId,
        asked: Vec<CollectionId>,
        heads: Vec<Vec<u8>>,
    },
    Fetched {
        collection: CollectionId,
        seq: u64,
        outcome: Result<AcceptedHead, String>,
    },
    Topics(Vec<CollectionId>),
    /// The provided keys were listed (how many; `None` when listing failed).
    Provided(Option<usize>),
    Other,
}

impl Follower {
    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut commands: mpsc::Receiver<FollowCommand>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let stopped = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        tokio::pin!(stopped);
        let node = self.node.clone();
        self.spawn_pool(move || match node.gossip_collections() {
            Ok(ids) => Done::Topics(ids),
            Err(err) => {
                tracing::warn!(err = %one_line(&err), "followed collections not read");
                Done::Other
            }
        });
        let mut rebroadcast = tokio::time::interval_at(Instant::now() + REBROADCAST, REBROADCAST);
        rebroadcast.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut provide = tokio::time::interval(PROVIDE_CHECK);
        provide.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(RETRY_CHECK);
        retry.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = inbound.recv(), if self.jobs.len() < MAX_JOBS => match message {
                    Some(message) => self.inbound(message),
                    None => break,
                },
                command = commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => break,
                },
                event = self.events.recv() => self.network_event(event).await,
                Some(done) = self.jobs.join_next() => {
                    if let Ok(done) = done {
                        self.done(done).await;
                    }
                }
                _ = rebroadcast.tick() => self.rebroadcast(),
                _ = provide.tick() => self.update_provided(),
                _ = retry.tick() => self.start_fetches(),
                () = &mut stopped => break,
            }
        }
    }

    /// Runs `job` on the blocking pool as one of this task's jobs.
    fn spawn_pool(&mut self, job: impl FnOnce() -> Done + Send + 'static) {
        let pool = self.pool.clone();
        self.jobs
            .spawn(async move { pool.run(job).await.unwrap_or(Done::Other) });
    }

    fn inbound(&mut self, message: Inbound) {
        match message {
            Inbound::Gossip(message) => {
                let GossipMessage {
                    source,
                    message_id,
                    collection,
                    data,
                } = *message;
                let node = self.node.clone();
                self.spawn_pool(move || {
                    let judgement = node.judge_head(&data, Some(&collection));
                    Done::Judged {
                        origin: Origin::Gossip { message_id, source },
                        head: data,
                        judgement,
                    }
                });
            }
            Inbound::Heads {
                peer,
                request,
                channel,
            } => {
                let node = self.node.clone();
                let net = self.net.clone();
                let pool = self.pool.clone();
                self.jobs.spawn(async move {
                    let collections = request.collections;
                    let heads = pool
                        .run(move || node.newest_heads(&collections))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or_default();
                    tracing::debug!(%peer, heads = heads.len(), "heads asked for");
                    let response = HeadsResponse {
                        heads: heads.into_iter().map(Into::into).collect(),
                    };
                    let _ = net.respond_heads(channel, response).await;
                    Done::Other
                });
            }
            Inbound::Objects {
                peer,
                request,
                channel,
            } => {
                let node = self.node.clone();
                let net = self.net.clone();
                let pool = self.pool.clone();
                self.jobs.spawn(async move {
                    let cids: Vec<Cid> = request
                        .cids
                        .iter()
                        .filter_map(|bytes| Cid::try_from(bytes.as_slice()).ok())
                        .collect();
                    let retractions = request.retractions;
                    let response = pool
                        .run(move || node.objects_for_peer(&cids, retractions))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or(ObjectsResponse {
                            objects: Vec::new(),
                            retractions: Vec::new(),
                        });
                    tracing::debug!(%peer, objects = response.objects.len(), "objects asked for");
                    let _ = net.respond_objects(channel, response).await;
                    Done::Other
                });
            }
        }
    }

    async fn command(&mut self, command: FollowCommand) {
        match command {
            FollowCommand::Follow(id) => {
                self.join(id.clone()).await;
                self.provided.dirty = true;
                self.ask_every_peer(vec![id]).await;
            }
            FollowCommand::Unfollow(id) => {
                if !self.wants(&id).await {
                    self.topics.remove(&id);
                    self.pending.remove(&id);
                    let _ = self.net.unsubscribe(id).await;
                    self.provided.dirty = true;
                }
            }
            FollowCommand::Accepted(id) => {
                if !self.topics.contains(&id) {
                    if !self.wants(&id).await {
                        return;
                    }
                    self.join(id.clone()).await;
                }
                self.provided.dirty = true;
                self.announce(vec![id]);
            }
        }
    }

    /// Whether the node follows or publishes `id` (false when that cannot be read).
    async fn wants(&self, id: &CollectionId) -> bool {
        let node = self.node.clone();
        let id = id.clone();
        self.pool
            .run(move || node.wants_collection(&id))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false)
    }

    async fn join(&mut self, id: CollectionId) {
        if self.topics.insert(id.clone()) {
            let _ = self.net.subscribe(id).await;
        }
    }

    async fn network_event(&mut self, event: Result<NetEvent, broadcast::error::RecvError>) {
        match event {
            Ok(NetEvent::Identified {
                peer_id,
                compatible: true,
            }) => {
                let topics: Vec<CollectionId> = self.topics.iter().cloned().collect();
                self.ask_heads(peer_id, topics);
            }
            Ok(NetEvent::Connected { .. }) => self.start_fetches(),
            // Missed events: ask every compatible peer, as if each had just connected.
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "network events missed; asking every peer for heads");
                let topics: Vec<CollectionId> = self.topics.iter().cloned().collect();
                self.ask_every_peer(topics).await;
            }
            _ => {}
        }
    }

    /// Asks every compatible peer connected now for the newest heads of `collections`.
    async fn ask_every_peer(&mut self, collections: Vec<CollectionId>) {
        if let Ok(peers) = self.net.peers().await {
            for peer in peers.into_iter().filter(|p| p.compatible == Some(true)) {
                self.ask_heads(peer.peer_id, collections.clone());
            }
        }
    }

    /// Asks `peer` for the newest heads of `collections`.
    fn ask_heads(&mut self, peer: PeerId, collections: Vec<CollectionId>) {
        for batch in collections.chunks(wire::MAX_HEADS_PER_REQUEST) {
            let asked = batch.to_vec();
            let request = HeadsRequest {
                collections: asked.iter().map(ToString::to_string).collect(),
            };
            let net = self.net.clone();
            self.jobs.spawn(async move {
                match net.request_heads(peer, request).await {
                    Ok(response) => Done::Heads {
                        peer,
                        asked,
                        heads: response
                            .heads
                            .into_iter()
                            .take(wire::MAX_HEADS_PER_REQUEST)
                            .map(|head| head.into_vec())
                            .collect(),
                    },
                    Err(err) => {
                        tracing::debug!(%peer, %err, "heads not received");
                        Done::Other
                    }
                }
            });
        }
    }

    async fn done(&mut self, done: Done) {
        match done {
            Done::Judged {
                origin,
                head,
                judgement,
            } => self.judged(origin, head, judgement).await,
            Done::Heads { peer, asked, heads } => {
                for head in heads {
                    let node = self.node.clone();
                    let asked = asked.clone();
                    self.spawn_pool(move || {
                        let judgement =
                            node.judge_head(&head, None)
                                .map(|judgement| match judgement {
                                    HeadJudgement::Fresh { ref collection, .. }
                                        if !asked.contains(collection) =>
                                    {
                                        HeadJudgement::Invalid(
                                            "a head of a collection not asked for".into(),
                                        )
                                    }
                                    other => other,
                                });
                        Done::Judged {
                            origin: Origin::Exchange { peer },
                            head,
                            judgement,
                        }
                    });
                }
            }
            Done::Fetched {
                collection,
                seq,
                outcome,
            } => self.fetched(collection, seq, outcome).await,
            Done::Topics(ids) => {
                for id in &ids {
                    self.join(id.clone()).await;
                }
                self.provided.dirty = true;
                self.update_provided();
                // Peers that connected while the list was read were asked for nothing.
                self.ask_every_peer(ids).await;
            }
            Done::Provided(keys) => {
                self.provided.listing = false;
                let wait = match keys {
                    Some(keys) => PROVIDE_WAIT_PER_KEY * u32::try_from(keys).unwrap_or(u32::MAX),
                    None => {
                        self.provided.dirty = true;
                        PROVIDE_RETRY
                    }
                };
                self.provided.next_listing = Instant::now() + wait;
            }
            Done::Other => {}
        }
    }

    async fn judged(
        &mut self,
        origin: Origin,
        head: Vec<u8>,
        judgement: Result<HeadJudgement, NodeError>,
    ) {
        let judgement = match judgement {
            Ok(judgement) => judgement,
            Err(err) => {
                tracing::warn!(err = %one_line(&err), "a head could not be checked");
                if let Origin::Gossip { message_id, source } = origin {
                    let _ = self
                        .net
                        .report(message_id, source, MessageAcceptance::Ignore)
                        .await;
                }
                return;
            }
        };
        let (peer, gossip) = match origin {
            Origin::Gossip { message_id, source } => (source, Some((message_id, source))),
            Origin::Exchange { peer } => (peer, None),
        };
        // A new version is forwarded once it is accepted here; everything else is
        // settled now.
        let fresh = match judgement {
            HeadJudgement::Fresh {
                ref collection,
                seq,
            } if self.topics.contains(collection) => Some((collection.clone(), seq)),
            HeadJudgement::Invalid(ref reason) => {
                tracing::info!(%peer, %reason, "invalid head from a peer");
                None
            }
            HeadJudgement::Equivocation => {
                tracing::warn!(%peer, "a publisher signed two versions with one number; evidence kept");
                None
            }
            _ => None,
        };
        let Some((collection, seq)) = fresh else {
            if let Some((message_id, source)) = gossip {
                let acceptance = match judgement {
                    HeadJudgement::Invalid(_) => MessageAcceptance::Reject,
                    _ => MessageAcceptance::Ignore,
                };
                let _ = self.net.report(message_id, source, acceptance).await;
            }
            return;
        };
        let new_pending = |head, gossip| Pending {
            head,
            seq,
            sources: vec![peer],
            gossip,
            next_try: Instant::now(),
            wait: RETRY_FIRST,
        };
        match self.pending.get_mut(&collection) {
            Some(pending) if pending.seq > seq => {
                self.settle(gossip, MessageAcceptance::Ignore).await
            }
            Some(pending) if pending.seq == seq => {
                if !pending.sources.contains(&peer) {
                    pending.sources.push(peer);
                }
                if pending.gossip.is_none() {
                    pending.gossip = gossip;
                } else {
                    self.settle(gossip, MessageAcceptance::Ignore).await;
                }
            }
            Some(pending) => {
                let older = std::mem::replace(pending, new_pending(head, gossip));
                self.settle(older.gossip, MessageAcceptance::Ignore).await;
            }
            None => {
                self.pending.insert(collection, new_pending(head, gossip));
            }
        }
        self.start_fetches();
    }

    /// Reports a verdict on a held gossip message, if there is one.
    async fn settle(&self, gossip: Option<(MessageId, PeerId)>, acceptance: MessageAcceptance) {
        if let Some((message_id, source)) = gossip {
            let _ = self.net.report(message_id, source, acceptance).await;
        }
    }

    /// Starts the fetches whose time has come.
    fn start_fetches(&mut self) {
        let now = Instant::now();
        let due: Vec<CollectionId> = self
            .pending
            .iter()
            .filter(|(id, pending)| pending.next_try <= now && !self.fetching.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for collection in due {
            if self.fetching.len() >= MAX_FETCHES || self.jobs.len() >= MAX_JOBS {
                return;
            }
            let Some(pending) = self.pending.get(&collection) else {
                continue;
            };
            self.fetching.insert(collection.clone());
            let fetch = Fetch {
                node: self.node.clone(),
                net: self.net.clone(),
                pool: self.pool.clone(),
                collection: collection.clone(),
                head: pending.head.clone(),
                sources: pending.sources.clone(),
            };
            let seq = pending.seq;
            self.jobs.spawn(async move {
                let outcome = fetch.run().await;
                Done::Fetched {
                    collection,
                    seq,
                    outcome,
                }
            });
        }
    }

    async fn fetched(
        &mut self,
        collection: CollectionId,
        seq: u64,
        outcome: Result<AcceptedHead, String>,
    ) {
        self.fetching.remove(&collection);
        match outcome {
            Ok(accepted) => {
                tracing::info!(%collection, seq = accepted.seq, "new version accepted");
                self.provided.dirty = true;
                self.mirror.wake();
                self.node.wake_remote_pins();
                let done = self
                    .pending
                    .get(&collection)
                    .is_some_and(|pending| pending.seq == seq);
                if done {
                    if let Some(pending) = self.pending.remove(&collection) {
                        let forwarded = match pending.gossip {
                            Some((message_id, source)) => self
                                .net
                                .report(message_id, source, MessageAcceptance::Accept)
                                .await
                                .unwrap_or(false),
                            None => false,
                        };
                        if !forwarded && !accepted.already_known {
                            self.announce(vec![collection]);
                        }
                    }
                }
                // Else a newer head arrived meanwhile: it is fetched next.
                self.start_fetches();
            }
            Err(reason) => {
                if let Some(pending) = self.pending.get_mut(&collection) {
                    tracing::info!(%collection, seq, %reason, retry_in = ?pending.wait, "metadata not fetched");
                    pending.next_try = Instant::now() + pending.wait;
                    pending.wait = (pending.wait * 2).min(RETRY_MAX);
                    // gossipsub holds a message for seconds only: let it go without
                    // forwarding, and announce the head afresh once it is accepted.
                    let gossip = pending.gossip.take();
                    self.settle(gossip, MessageAcceptance::Ignore).await;
                }
            }
        }
    }

    /// Publishes the newest head of each collection named.
    fn announce(&mut self, ids: Vec<CollectionId>) {
        let node = self.node.clone();
        let net = self.net.clone();
        let pool = self.pool.clone();
        self.jobs.spawn(async move {
            for id in ids {
                let head = {
                    let node = node.clone();
                    let id = id.clone();
                    pool.run(move || node.newest_head_block(&id)).await
                };
                if let Ok(Ok(Some(head))) = head {
                    let _ = net.publish(id, head).await;
                }
            }
            Done::Other
        });
    }

    fn rebroadcast(&mut self) {
        let ids: Vec<CollectionId> = self.topics.iter().cloned().collect();
        self.announce(ids);
    }

    /// Lists the keys to provide again and hands them to the network, when a pin or a
    /// collection changed since the last listing and that one is done.
    fn update_provided(&mut self) {
        let pin_changes = self.node.store().pin_changes();
        let pins_changed = self.provided.pin_changes != Some(pin_changes);
        if !(self.provided.dirty || pins_changed)
            || self.provided.listing
            || Instant::now() < self.provided.next_listing
        {
            return;
        }
        self.provided.dirty = false;
        self.provided.pin_changes = Some(pin_changes);
        self.provided.listing = true;
        let node = self.node.clone();
        let net = self.net.clone();
        let pool = self.pool.clone();
        self.jobs.spawn(async move {
            let listed = match pool.run(move || node.provided_keys()).await {
                Ok(Ok(keys)) => {
                    let count = keys.len();
                    let _ = net.set_provided(keys).await;
                    Some(count)
                }
                Ok(Err(err)) => {
                    tracing::warn!(err = %one_line(&err), "provided keys not listed");
                    None
                }
                Err(_) => None,
            };
            Done::Provided(listed)
        });
    }
}

/// Fetching one version's entry list and records, then accepting it.
struct Fetch {
    node: Node,
    net: Client,
    pool: BlockingPool,
    collection: CollectionId,
    head: Vec<u8>,
    sources: Vec<PeerId>,
}

impl Fetch {
    async fn run(mut self) -> Result<AcceptedHead, String> {
        self.add_sources().await;
        // Entry-list blocks stored so far, kept from gc until the version names them.
        let mut holds = Vec::new();
        // Records fetched now came with their retractions; the others are asked for
        // theirs below.
        let mut fetched_records: HashSet<Cid> = HashSet::new();
        loop {
            let needs = self
                .on_pool({
                    let head = self.head.clone();
                    move |node| node.metadata_needs(&head)
                })
                .await?;
            let (cids, records) = match needs {
                MetadataNeeds::Complete => break,
                MetadataNeeds::EntryBlocks(cids) => (cids, false),
                MetadataNeeds::Records(cids) => (cids, true),
            };
            let (blocks, retractions) = self.fetch_objects(&cids, records).await;
            if blocks.is_empty() {
                return Err(format!(
                    "no connected peer has {} ({} blocks missing)",
                    cids[0],
                    cids.len()
                ));
            }
            if records {
                fetched_records.extend(cids.iter().copied());
            }
            let stored = if records {
                self.on_pool(move |node| node.accept_network_records(blocks, retractions))
                    .await?
            } else {
                let (stored, hold) = self
                    .on_pool(move |node| node.store_entry_blocks(blocks))
                    .await?;
                holds.push(hold);
                stored
            };
            if stored == 0 {
                return Err(format!("peers sent nothing usable for {}", cids[0]));
            }
        }
        self.fetch_retractions(fetched_records).await;
        let head = self.head.clone();
        let accepted = self
            .on_pool(move |node| node.accept_network_head(&head))
            .await;
        drop(holds);
        accepted
    }

    /// Asks the sources for retractions of the version's records that were here
    /// before and are not retracted here: a publisher withdraws a record with a
    /// retraction, and it travels with the next version. What cannot be had now is
    /// asked for again with the version after.
    async fn fetch_retractions(&self, fetched_records: HashSet<Cid>) {
        let head = self.head.clone();
        let Ok(unchecked) = self
            .on_pool(move |node| node.unretracted_records(&head))
            .await
        else {
            return;
        };
        let unchecked: Vec<Cid> = unchecked
            .into_iter()
            .filter(|record| !fetched_records.contains(record))
            .collect();
        if unchecked.is_empty() {
            return;
        }
        let (_, retractions) = self.fetch_objects(&unchecked, true).await;
        if !retractions.is_empty() {
            let accepted = self
                .on_pool(move |node| node.accept_network_records(Vec::new(), retractions))
                .await;
            if let Err(err) = accepted {
                tracing::info!(collection = %self.collection, %err, "retractions not kept");
            }
        }
    }

    async fn on_pool<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Node) -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, String> {
        let node = self.node.clone();
        match self.pool.run(move || job(&node)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(one_line(&err)),
            Err(closed) => Err(closed.to_string()),
        }
    }

    /// The peers to ask: those that sent the head, then those in the collection's
    /// topic; when there are none, the DHT's providers of the collection.
    async fn add_sources(&mut self) {
        if let Ok(peers) = self.net.topic_peers(self.collection.clone()).await {
            for peer in peers {
                if !self.sources.contains(&peer) {
                    self.sources.push(peer);
                }
            }
        }
        if self.sources.is_empty() {
            let key = wire::collection_key(&self.collection);
            if let Ok(found) = self.net.find_providers(key, MAX_SOURCES).await {
                self.sources.extend(found);
            }
        }
        self.sources.truncate(MAX_SOURCES);
    }

    /// Asks the sources for `cids`, a batch per request, several requests at a time,
    /// each batch from the first source that has it. Returns the blocks that verified.
    async fn fetch_objects(&self, cids: &[Cid], retractions: bool) -> FetchedObjects {
        use futures_util::StreamExt;
        let batches: Vec<Vec<Cid>> = cids
            .chunks(wire::MAX_OBJECTS_PER_REQUEST)
            .map(<[Cid]>::to_vec)
            .collect();
        let requests = batches
            .into_iter()
            .map(|batch| self.fetch_batch(batch, retractions));
        let results: Vec<FetchedObjects> = futures_util::stream::iter(requests)
            .buffer_unordered(FETCH_PIPELINE)
            .collect()
            .await;
        let mut blocks = Vec::new();
        let mut found_retractions = Vec::new();
        for (batch_blocks, batch_retractions) in results {
            blocks.extend(batch_blocks);
            found_retractions.extend(batch_retractions);
        }
        (blocks, found_retractions)
    }

    async fn fetch_batch(&self, mut wanted: Vec<Cid>, retractions: bool) -> FetchedObjects {
        let mut blocks = Vec::new();
        let mut found_retractions = Vec::new();
        for peer in &self.sources {
            if wanted.is_empty() {
                break;
            }
            let request = ObjectsRequest {
                cids: wanted.iter().map(|cid| cid.to_bytes().into()).collect(),
                retractions,
            };
            let response = match self.net.request_objects(*peer, request).await {
                Ok(response) => response,
                Err(err) => {
                    tracing::debug!(%peer, %err, "objects not received");
                    continue;
                }
            };
            for object in &response.objects {
                match checked_object(object, &wanted) {
                    Some((cid, data)) => {
                        wanted.retain(|w| *w != cid);
                        blocks.push((cid, data));
                    }
                    None => {
                        tracing::info!(%peer, "a peer sent a block that was not asked for or does not match its CID")
                    }
                }
            }
            found_retractions.extend(
                response
                    .retractions
                    .into_iter()
                    .take(wire::MAX_OBJECTS_PER_REQUEST)
                    .filter(|r| r.len() <= crate::records::Kind::Retraction.max_size())
                    .map(|r| r.into_vec()),
            );
        }
        (blocks, found_retractions)
    }
}
