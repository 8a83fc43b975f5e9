//! Replication groups: nodes that share the keeping of collections so that each
//! resource is held by a set number of members (`replicas`) rather than by all.
//!
//! Members tell each other what they hold (`/oermesh/group/1`, see [`wire`]): every
//! `exchange_interval`, and soon after what this node holds changes, each member sends
//! every other its holdings (a bitmap per collection over the version's entry list, and
//! its free space) and gets theirs back. Every `challenge_interval` it challenges each
//! member on a random resource it claims ([`proof`]): a failed or unanswered challenge
//! is recorded, and that member's claims stop counting until it passes one again (the
//! resource it failed on stays uncounted until it passes a challenge on that very one).
//!
//! A member also looks after its own claims: when it cannot answer a challenge because
//! a block of its copy is gone or no longer matches its CID, or when its own look at a
//! random claimed resource each `challenge_interval` finds such a block, it drops the
//! damaged blocks and its collection pins of the resource (so it stops claiming it at
//! once) and wakes the mirror, which fetches it again where the group still wants it.
//!
//! From the claims that count, [`plan::decide`] says which resources this node fetches
//! (held by fewer than `replicas` members) and lets go of (held by more than
//! `replicas + 1`); the mirror acts on it. This task only talks and keeps the view:
//! it never touches the store but through the blocking pool.

pub mod plan;
pub mod proof;
pub mod wire;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cid::Cid;
use futures_util::{AsyncWriteExt, StreamExt};
use libp2p::PeerId;
use serde_bytes::ByteBuf;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

use super::mirror::MirrorHandle;
use super::net::Client;
use super::pool::BlockingPool;
use crate::config::GroupSection;
use crate::node::Node;
use crate::records::CollectionId;
use wire::{Answer, Holdings, Request, Response};

/// Challenge results kept per member, for `group status`.
const CHALLENGES_KEPT: usize = 8;
/// How long an exchange of holdings may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a challenge may take to be answered: the member reads blocks first.
const CHALLENGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Streams from members served at once; more are closed at once.
const MAX_SERVED: usize = 16;
/// Streams one member may have served at once.
const MAX_SERVED_PER_MEMBER: usize = 4;
/// The pause after a change of holdings here before they are sent, so that a burst of
/// changes goes out as one.
const CHANGE_SETTLE: Duration = Duration::from_millis(200);

/// The group this node is in, from `[group]` in config.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    pub name: String,
    pub members: Vec<PeerId>,
    /// Collections the group keeps, with their targets, in config order.
    pub collections: Vec<(CollectionId, u32)>,
    pub exchange_interval: Duration,
    pub challenge_interval: Duration,
}

impl GroupConfig {
    /// `None` when `name` is empty (no group); an error names the key that is wrong.
    pub fn from_section(section: &GroupSection) -> Result<Option<GroupConfig>, String> {
        if section.name.trim().is_empty() {
            return Ok(None);
        }
        let mut members = Vec::new();
        for member in &section.members {
            let peer: PeerId = member.trim().parse().map_err(|_| {
                format!("config key group.members: `{member}` is not a peer id (12D3Koo...)")
            })?;
            if !members.contains(&peer) {
                members.push(peer);
            }
        }
        let mut collections = Vec::new();
        for collection in &section.collections {
            let id: CollectionId = collection.id.parse().map_err(|err| {
                format!(
                    "config key group.collections: `{}` is not a collection id: {err}",
                    collection.id
                )
            })?;
            if collection.replicas == 0 {
                return Err(format!(
                    "config key group.collections: replicas of {id} must be at least 1"
                ));
            }
            collections.push((id, collection.replicas));
        }
        let interval = |key: &str, secs: u64| {
            if secs == 0 {
                Err(format!("config key group.{key}: it must be at least 1"))
            } else {
                Ok(Duration::from_secs(secs))
            }
        };
        Ok(Some(GroupConfig {
            name: section.name.trim().to_string(),
            members,
            collections,
            exchange_interval: interval("exchange_interval_secs", section.exchange_interval_secs)?,
            challenge_interval: interval(
                "challenge_interval_secs",
                section.challenge_interval_secs,
            )?,
        }))
    }

    fn replicas(&self, id: &CollectionId) -> Option<u32> {
        self.collections
            .iter()
            .find(|(kept, _)| kept == id)
            .map(|(_, replicas)| *replicas)
    }

    /// How long a member counts as reachable after its last holdings arrived.
    fn reach_window(&self) -> Duration {
        self.exchange_interval * 3 + Duration::from_secs(5)
    }
}

/// One entry of a kept collection's version, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// `None` when the entry's record is not here (a damaged index).
    pub content: Option<Cid>,
    pub title: String,
    /// Not retracted.
    pub live: bool,
    /// This node holds the whole DAG (it is pinned).
    pub held: bool,
}

/// The entries of a kept collection's newest version, in entry-list order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntries {
    pub seq: u64,
    pub entries: Vec<GroupEntry>,
}

impl GroupEntries {
    /// The live resources, each once, with the entry indexes that name it.
    fn live(&self) -> Vec<(Cid, Vec<usize>)> {
        let mut order: Vec<(Cid, Vec<usize>)> = Vec::new();
        let mut position: HashMap<Cid, usize> = HashMap::new();
        for (index, entry) in self.entries.iter().enumerate() {
            let Some(content) = entry.content.filter(|_| entry.live) else {
                continue;
            };
            match position.get(&content) {
                Some(at) => order[*at].1.push(index),
                None => {
                    position.insert(content, order.len());
                    order.push((content, vec![index]));
                }
            }
        }
        order
    }

    fn held_here(&self, content: &Cid) -> bool {
        self.entries
            .iter()
            .any(|entry| entry.live && entry.held && entry.content.as_ref() == Some(content))
    }
}

/// Holders as this node alone knows them (no daemon): itself, where it holds a copy.
pub fn own_holders(entries: &GroupEntries, me: PeerId) -> Vec<plan::Holders> {
    entries
        .live()
        .into_iter()
        .map(|(content, _)| plan::Holders {
            content,
            holders: if entries.held_here(&content) {
                vec![me]
            } else {
                Vec::new()
            },
        })
        .collect()
}

/// How a challenge went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(String),
    Unanswered(String),
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed(_) => "failed",
            Outcome::Unanswered(_) => "unanswered",
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Passed => None,
            Outcome::Failed(reason) | Outcome::Unanswered(reason) => Some(reason),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeRecord {
    /// RFC 3339.
    pub at: String,
    pub resource: Cid,
    pub outcome: Outcome,
}

/// A member as this node sees it, for `group status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    pub peer: PeerId,
    pub reachable: bool,
    pub counted: bool,
    pub free: Option<u64>,
    pub challenges: Vec<ChallengeRecord>,
}

#[derive(Default)]
struct PeerState {
    holdings: Option<(Instant, Holdings)>,
    challenges: VecDeque<ChallengeRecord>,
    /// Its last challenge failed or went unanswered: none of its claims count.
    discredited: bool,
    /// Its last challenge passed: its copies are trusted enough to let ours go.
    verified: bool,
    /// Resources it failed a challenge on: not counted until it passes one on them.
    failed: HashSet<Cid>,
}

struct State {
    peers: HashMap<PeerId, PeerState>,
    /// This node's own holdings, as last sent.
    mine: Option<Holdings>,
    started: Instant,
    /// Members asked something right now: a member that does not answer holds up
    /// nothing but its own next exchange.
    asking: HashSet<(PeerId, bool)>,
}

/// The group as the mirror and the service layer reach it. Cheap to clone; a node in
/// no group has one too, which keeps nothing.
#[derive(Clone)]
pub struct GroupHandle {
    shared: Arc<Shared>,
}

struct Shared {
    me: PeerId,
    config: Option<GroupConfig>,
    state: Mutex<State>,
    /// The resources each member failed a challenge on, kept in the node's database so
    /// that a restart does not make a member that failed trusted again.
    disproved: Option<sled::Tree>,
    /// What this node holds changed: tell the members soon.
    changed: Notify,
}

impl GroupHandle {
    /// `config.members` may name this node too (one list for every member): it is
    /// left out here. `disproved` is where the claims members failed to prove are kept
    /// ([`DISPROVED_TREE`] of the node's database); a member found there starts with
    /// none of its claims counted, until it passes a challenge.
    pub fn new(
        me: PeerId,
        mut config: Option<GroupConfig>,
        disproved: Option<sled::Tree>,
    ) -> GroupHandle {
        if let Some(config) = &mut config {
            config.members.retain(|peer| *peer != me);
        }
        let mut peers: HashMap<PeerId, PeerState> = HashMap::new();
        if let (Some(config), Some(tree)) = (&config, &disproved) {
            for (peer, failed) in load_disproved(tree) {
                if config.members.contains(&peer) && !failed.is_empty() {
                    peers.insert(
                        peer,
                        PeerState {
                            discredited: true,
                            failed,
                            ..PeerState::default()
                        },
                    );
                }
            }
        }
        GroupHandle {
            shared: Arc::new(Shared {
                me,
                config,
                state: Mutex::new(State {
                    peers,
                    mine: None,
                    started: Instant::now(),
                    asking: HashSet::new(),
                }),
                disproved,
                changed: Notify::new(),
            }),
        }
    }

    /// The target of a collection the group keeps; `None` for any other.
    pub fn replicas(&self, id: &CollectionId) -> Option<u32> {
        self.shared.config.as_ref()?.replicas(id)
    }

    /// Tells the group task that what this node holds changed.
    pub fn holdings_changed(&self) {
        if self.shared.config.is_some() {
            self.shared.changed.notify_one();
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The members whose claims count: reachable, and not discredited.
    fn counted<'a>(&self, state: &'a State) -> Vec<(PeerId, &'a PeerState, &'a Holdings)> {
        let Some(config) = &self.shared.config else {
            return Vec::new();
        };
        let now = Instant::now();
        config
            .members
            .iter()
            .filter_map(|peer| {
                let peer_state = state.peers.get(peer)?;
                let (at, holdings) = peer_state.holdings.as_ref()?;
                (now.duration_since(*at) <= config.reach_window() && !peer_state.discredited)
                    .then_some((*peer, peer_state, holdings))
            })
            .collect()
    }

    /// Each live resource of `id`'s version `entries` with the members whose copies
    /// count: this node where it holds one, and each counted member that claims it for
    /// the same version and has not failed a challenge on it.
    pub fn holders(&self, id: &CollectionId, entries: &GroupEntries) -> Vec<plan::Holders> {
        let state = self.state();
        self.holders_in(&state, id, entries)
    }

    fn holders_in(
        &self,
        state: &State,
        id: &CollectionId,
        entries: &GroupEntries,
    ) -> Vec<plan::Holders> {
        let me = self.shared.me;
        let counted = self.counted(state);
        let id_text = id.to_string();
        let bitmaps: Vec<(PeerId, &PeerState, &[u8])> = counted
            .iter()
            .filter_map(|(peer, peer_state, holdings)| {
                let collection = holdings
                    .collections
                    .iter()
                    .find(|c| c.id == id_text && c.seq == entries.seq)?;
                Some((*peer, *peer_state, collection.held.as_slice()))
            })
            .collect();
        entries
            .live()
            .into_iter()
            .map(|(content, indexes)| {
                let mut holders = Vec::new();
                if entries.held_here(&content) {
                    holders.push(me);
                }
                for (peer, peer_state, held) in &bitmaps {
                    if !peer_state.failed.contains(&content)
                        && indexes.iter().any(|index| wire::is_held(held, *index))
                    {
                        holders.push(*peer);
                    }
                }
                plan::Holders { content, holders }
            })
            .collect()
    }

    /// What this node fetches and lets go of in `id`; `None` when the group does not
    /// keep `id`, or before this node has heard from the members.
    pub fn decide(&self, id: &CollectionId, entries: &GroupEntries) -> Option<plan::Decision> {
        let replicas = self.replicas(id)?;
        let state = self.state();
        if !self.knows_enough(&state) {
            return None;
        }
        let me = self.shared.me;
        let resources = self.holders_in(&state, id, entries);
        let mut members = vec![plan::Member {
            peer: me,
            free: state.mine.as_ref().map_or(0, |mine| mine.free),
        }];
        let mut verified = HashSet::new();
        for (peer, peer_state, holdings) in self.counted(&state) {
            members.push(plan::Member {
                peer,
                free: holdings.free,
            });
            if peer_state.verified {
                verified.insert(peer);
            }
        }
        Some(plan::decide(
            me,
            replicas as usize,
            &members,
            &verified,
            &resources,
        ))
    }

    /// Whether this node may take a share: once it has its own holdings and has heard
    /// from every member, or waited long enough for those that are up to answer.
    /// Before, it would take a share of work others already do.
    fn knows_enough(&self, state: &State) -> bool {
        let Some(config) = &self.shared.config else {
            return false;
        };
        state.mine.is_some()
            && (state.started.elapsed() > config.reach_window()
                || config
                    .members
                    .iter()
                    .all(|peer| state.peers.get(peer).is_some_and(|p| p.holdings.is_some())))
    }

    /// Marks a request to `peer` as under way; `false` when one already is.
    fn start_asking(&self, peer: PeerId, challenge: bool) -> bool {
        self.state().asking.insert((peer, challenge))
    }

    fn done_asking(&self, peer: PeerId, challenge: bool) {
        self.state().asking.remove(&(peer, challenge));
    }

    /// Every member, as this node sees it now.
    pub fn members(&self) -> Vec<MemberState> {
        let Some(config) = &self.shared.config else {
            return Vec::new();
        };
        let state = self.state();
        let now = Instant::now();
        config
            .members
            .iter()
            .map(|peer| {
                let peer_state = state.peers.get(peer);
                let holdings = peer_state.and_then(|p| p.holdings.as_ref());
                let reachable = holdings
                    .is_some_and(|(at, _)| now.duration_since(*at) <= config.reach_window());
                MemberState {
                    peer: *peer,
                    reachable,
                    counted: reachable && peer_state.is_some_and(|p| !p.discredited),
                    free: holdings.map(|(_, h)| h.free),
                    challenges: peer_state
                        .map(|p| p.challenges.iter().cloned().collect())
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Keeps what a member says it holds; returns whether it changes anything this
    /// node decides on.
    fn record_holdings(&self, peer: PeerId, holdings: Holdings) -> bool {
        let Some(config) = &self.shared.config else {
            return false;
        };
        let mut state = self.state();
        let peer_state = state.peers.entry(peer).or_default();
        let changed = match &peer_state.holdings {
            Some((at, old)) => {
                Instant::now().duration_since(*at) > config.reach_window()
                    || old.collections != holdings.collections
                    || old.free.leading_zeros() != holdings.free.leading_zeros()
            }
            None => true,
        };
        peer_state.holdings = Some((Instant::now(), holdings));
        changed
    }

    /// Records a challenge's outcome; returns whether the member's claims now count
    /// differently.
    fn record_challenge(&self, peer: PeerId, resource: Cid, outcome: Outcome) -> bool {
        let mut state = self.state();
        let peer_state = state.peers.entry(peer).or_default();
        let before = (peer_state.discredited, peer_state.failed.len());
        match &outcome {
            Outcome::Passed => {
                peer_state.discredited = false;
                peer_state.verified = true;
                peer_state.failed.remove(&resource);
            }
            Outcome::Failed(reason) => {
                tracing::warn!(%peer, %resource, %reason, "group member failed a challenge; its claims are not counted");
                peer_state.discredited = true;
                peer_state.verified = false;
                peer_state.failed.insert(resource);
            }
            Outcome::Unanswered(reason) => {
                tracing::warn!(%peer, %resource, %reason, "group member did not answer a challenge; its claims are not counted");
                peer_state.discredited = true;
                peer_state.verified = false;
            }
        }
        if let Some(tree) = self
            .shared
            .disproved
            .as_ref()
            .filter(|_| before.1 != peer_state.failed.len())
        {
            store_disproved(tree, &peer, &peer_state.failed);
        }
        if peer_state.challenges.len() == CHALLENGES_KEPT {
            peer_state.challenges.pop_front();
        }
        peer_state.challenges.push_back(ChallengeRecord {
            at: crate::records::validate::now_utc(),
            resource,
            outcome,
        });
        before != (peer_state.discredited, peer_state.failed.len())
    }
}

/// The sled tree that keeps, per member (by its peer id's bytes), the resources it
/// failed a challenge on and has not passed one on since (DAG-CBOR, a list of CIDs).
pub const DISPROVED_TREE: &str = "group_disproved";

/// Every member's disproved claims as kept; an entry that cannot be read is logged and
/// left out (its member is then trusted as after any restart before this was kept).
fn load_disproved(tree: &sled::Tree) -> Vec<(PeerId, HashSet<Cid>)> {
    let mut found = Vec::new();
    for item in tree.iter() {
        let (key, value) = match item {
            Ok(item) => item,
            Err(err) => {
                tracing::warn!(%err, "disproved group claims not read");
                break;
            }
        };
        let peer = PeerId::from_bytes(&key);
        let failed = serde_ipld_dagcbor::from_slice::<Vec<Cid>>(&value);
        match (peer, failed) {
            (Ok(peer), Ok(failed)) => found.push((peer, failed.into_iter().collect())),
            _ => tracing::warn!("a damaged entry of disproved group claims left out"),
        }
    }
    found
}

/// Keeps `failed` as `peer`'s disproved claims (none: the entry goes). sled writes it
/// out with its next flush, at most a second later.
fn store_disproved(tree: &sled::Tree, peer: &PeerId, failed: &HashSet<Cid>) {
    let key = peer.to_bytes();
    let written = if failed.is_empty() {
        tree.remove(key).map(|_| ())
    } else {
        let mut sorted: Vec<&Cid> = failed.iter().collect();
        sorted.sort();
        match serde_ipld_dagcbor::to_vec(&sorted) {
            Ok(value) => tree.insert(key, value).map(|_| ()),
            Err(err) => {
                tracing::warn!(%err, "disproved group claims not encoded");
                return;
            }
        }
    };
    if let Err(err) = written {
        tracing::warn!(%peer, %err, "disproved group claims not kept");
    }
}

/// Starts the group's task (for a node in a group): it serves `/oermesh/group/1` to
/// members, exchanges holdings and sets challenges. `None` for a node in no group.
pub fn spawn(
    group: GroupHandle,
    node: Node,
    pool: BlockingPool,
    net: Client,
    mirror: MirrorHandle,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, crate::daemon::net::AlreadyRegistered> {
    let Some(config) = group.shared.config.clone() else {
        return Ok(None);
    };
    let incoming = net.accept(wire::PROTOCOL)?;
    let control = net.stream_control();
    let task = Task {
        group,
        config,
        node,
        pool,
        control,
        mirror,
        shutdown: shutdown.clone(),
        repairing: Arc::default(),
    };
    Ok(Some(tokio::spawn(task.run(incoming, shutdown))))
}

#[derive(Clone)]
struct Task {
    group: GroupHandle,
    config: GroupConfig,
    node: Node,
    pool: BlockingPool,
    control: libp2p_stream::Control,
    mirror: MirrorHandle,
    shutdown: watch::Receiver<bool>,
    /// Resources whose copy here is being repaired.
    repairing: Arc<Mutex<HashSet<Cid>>>,
}

/// The entry lists of the versions known here of `ids`, for those with one.
fn known_entries(
    node: &Node,
    ids: Vec<CollectionId>,
) -> crate::node::Result<Vec<(CollectionId, GroupEntries)>> {
    let mut kept = Vec::new();
    for id in ids {
        if let Some(entries) = node.group_entries(&id)? {
            kept.push((id, entries));
        }
    }
    Ok(kept)
}

/// The live resources of `kept` this node holds.
fn held_here(kept: &[(CollectionId, GroupEntries)]) -> Vec<Cid> {
    kept.iter()
        .flat_map(|(_, entries)| {
            entries
                .live()
                .into_iter()
                .map(|(content, _)| content)
                .filter(|content| entries.held_here(content))
        })
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Task {
    /// Runs `job` on a task of its own that ends at shutdown at the latest, so that no
    /// handle on the node outlives the daemon.
    fn spawn(&self, job: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = job => {}
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
        });
    }

    async fn run(
        self,
        incoming: crate::daemon::net::IncomingStreams,
        shutdown: watch::Receiver<bool>,
    ) {
        let mut shutdown_for_loop = shutdown.clone();
        tokio::spawn(self.clone().serve(incoming, shutdown));
        let stopped = async move {
            let _ = shutdown_for_loop.wait_for(|stop| *stop).await;
        };
        tokio::pin!(stopped);
        let mut exchange = tokio::time::interval(self.config.exchange_interval);
        exchange.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut challenge = tokio::time::interval(self.config.challenge_interval);
        challenge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first challenges wait for a first exchange.
        challenge.reset();
        loop {
            tokio::select! {
                _ = exchange.tick() => self.exchange_round().await,
                () = self.group.shared.changed.notified() => {
                    tokio::time::sleep(CHANGE_SETTLE).await;
                    self.exchange_round().await;
                }
                _ = challenge.tick() => self.challenge_round().await,
                () = &mut stopped => break,
            }
        }
    }

    /// This node's holdings of every kept collection, and its free space.
    async fn own_holdings(&self) -> Option<Holdings> {
        let node = self.node.clone();
        let config = self.config.clone();
        let computed = self
            .pool
            .run(move || -> crate::node::Result<Holdings> {
                let mut collections = Vec::new();
                for (id, _) in &config.collections {
                    let Some(entries) = node.group_entries(id)? else {
                        continue;
                    };
                    let held = entries
                        .entries
                        .iter()
                        .enumerate()
                        .filter(|(_, entry)| entry.live && entry.held)
                        .map(|(index, _)| index);
                    collections.push(wire::CollectionHoldings {
                        id: id.to_string(),
                        seq: entries.seq,
                        held: ByteBuf::from(wire::bitmap(entries.entries.len(), held)),
                    });
                }
                collections.truncate(wire::MAX_COLLECTIONS);
                Ok(Holdings {
                    group: config.name.clone(),
                    free: node.free_space()?,
                    collections,
                })
            })
            .await;
        match computed {
            Ok(Ok(holdings)) => Some(holdings),
            Ok(Err(err)) => {
                tracing::warn!(err = %crate::node::one_line(&err), "holdings not read");
                None
            }
            Err(_) => None,
        }
    }

    /// Tells every member what this node holds and learns what each holds, each on a
    /// task of its own.
    async fn exchange_round(&self) {
        let Some(mine) = self.own_holdings().await else {
            return;
        };
        let first = {
            let mut state = self.group.state();
            state.mine.replace(mine.clone()).is_none()
        };
        if first {
            self.mirror.wake();
        }
        for peer in self.config.members.clone() {
            if !self.group.start_asking(peer, false) {
                continue;
            }
            let task = self.clone();
            let mine = mine.clone();
            self.spawn(async move {
                let answer = task
                    .ask(peer, Request::Holdings(mine), EXCHANGE_TIMEOUT)
                    .await;
                task.group.done_asking(peer, false);
                let changed = match answer {
                    Ok(Response::Holdings(theirs)) if theirs.group == task.config.name => {
                        task.group.record_holdings(peer, theirs)
                    }
                    Ok(other) => {
                        tracing::debug!(%peer, ?other, "holdings refused");
                        false
                    }
                    Err(err) => {
                        tracing::debug!(%peer, %err, "holdings not exchanged");
                        false
                    }
                };
                if changed {
                    task.mirror.wake();
                }
            });
        }
    }

    /// The ids of the group's collections.
    fn collection_ids(&self) -> Vec<CollectionId> {
        self.config
            .collections
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Challenges every reachable member on a random resource it claims.
    async fn challenge_round(&self) {
        let (node, ids) = (self.node.clone(), self.collection_ids());
        let Ok(Ok(kept)) = self.pool.run(move || known_entries(&node, ids)).await else {
            return;
        };
        self.check_own_copy(&kept).await;
        // Per member, the resources it claims of the versions known here.
        let targets: Vec<(PeerId, Cid, bool)> = {
            let state = self.group.state();
            let now = Instant::now();
            self.config
                .members
                .iter()
                .filter_map(|peer| {
                    let (at, holdings) = state.peers.get(peer)?.holdings.as_ref()?;
                    if now.duration_since(*at) > self.config.reach_window() {
                        return None;
                    }
                    let mut claimed = Vec::new();
                    for (id, entries) in &kept {
                        let id_text = id.to_string();
                        let Some(collection) = holdings
                            .collections
                            .iter()
                            .find(|c| c.id == id_text && c.seq == entries.seq)
                        else {
                            continue;
                        };
                        for (content, indexes) in entries.live() {
                            if indexes.iter().any(|i| wire::is_held(&collection.held, *i)) {
                                claimed.push((content, entries.held_here(&content)));
                            }
                        }
                    }
                    if claimed.is_empty() {
                        return None;
                    }
                    let (content, held_here) = claimed[proof::pick(claimed.len())];
                    Some((*peer, content, held_here))
                })
                .collect()
        };
        for (peer, content, held_here) in targets {
            if !self.group.start_asking(peer, true) {
                continue;
            }
            let task = self.clone();
            self.spawn(async move {
                let outcome = task.challenge(peer, content, held_here).await;
                task.group.done_asking(peer, true);
                if task.group.record_challenge(peer, content, outcome) {
                    task.mirror.wake();
                }
            });
        }
    }

    async fn challenge(&self, peer: PeerId, content: Cid, held_here: bool) -> Outcome {
        let store = self.node.store().clone();
        let Ok((challenge, expected)) = self
            .pool
            .run(move || proof::prepare(held_here.then_some(&store), content))
            .await
        else {
            return Outcome::Unanswered("this node is shutting down".into());
        };
        match self
            .ask(
                peer,
                Request::Challenge(challenge.clone()),
                CHALLENGE_TIMEOUT,
            )
            .await
        {
            Ok(Response::Answer(answer)) => match proof::check(&challenge, &expected, &answer) {
                Ok(()) => Outcome::Passed,
                Err(reason) => Outcome::Failed(reason),
            },
            Ok(Response::Refused(reason)) => Outcome::Failed(format!("refused: {reason}")),
            Ok(Response::Holdings(_)) => Outcome::Failed("an answer of the wrong kind".into()),
            Err(err) => Outcome::Unanswered(err),
        }
    }

    /// Looks at a random resource this node claims, as a challenge would, and repairs
    /// it when a block of it cannot be read: a copy damaged behind the node's back is
    /// found even when no member happens to challenge it.
    async fn check_own_copy(&self, kept: &[(CollectionId, GroupEntries)]) {
        let held = held_here(kept);
        if held.is_empty() {
            return;
        }
        let root = held[proof::pick(held.len())];
        let store = self.node.store().clone();
        if let Ok(Some(block)) = self
            .pool
            .run(move || proof::damaged_on_random_path(&store, root))
            .await
        {
            tracing::warn!(%root, %block, "a block of a resource held here cannot be read");
            self.repair(root, true);
        }
    }

    /// Looks down a random path of every resource this node claims, and repairs those
    /// that cannot be read: one damaged copy is a sign that a disk lost more.
    async fn check_all_own_copies(&self) {
        let (node, ids) = (self.node.clone(), self.collection_ids());
        let damaged = self
            .pool
            .run(move || -> crate::node::Result<Vec<Cid>> {
                let kept = known_entries(&node, ids)?;
                Ok(held_here(&kept)
                    .into_iter()
                    .filter(|root| proof::damaged_on_random_path(node.store(), *root).is_some())
                    .collect())
            })
            .await;
        if let Ok(Ok(damaged)) = damaged {
            for root in damaged {
                self.repair(root, false);
            }
        }
    }

    /// Drops this node's damaged copy of `root` and lets the mirror fetch it again
    /// (see [`Node::repair_resource`]); one repair of a resource at a time. With
    /// `look_further`, a damaged copy has every other claimed copy looked at too.
    fn repair(&self, root: Cid, look_further: bool) {
        if !lock(&self.repairing).insert(root) {
            return;
        }
        let task = self.clone();
        self.spawn(async move {
            let node = task.node.clone();
            let repaired = task.pool.run(move || node.repair_resource(&root)).await;
            lock(&task.repairing).remove(&root);
            match repaired {
                Ok(Ok(Some(repaired))) => {
                    tracing::warn!(
                        %root,
                        dropped = repaired.dropped,
                        missing = repaired.missing,
                        unpinned = ?repaired.unpinned,
                        "the copy held here was damaged: no longer claimed, fetched again"
                    );
                    task.group.holdings_changed();
                    task.mirror.wake();
                    if look_further {
                        task.check_all_own_copies().await;
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(err)) => {
                    tracing::warn!(%root, err = %crate::node::one_line(&err), "damaged copy not repaired: `oermesh verify` checks the store");
                }
                Err(_) => {}
            }
        });
    }

    /// One request to a member on a stream of its own.
    async fn ask(
        &self,
        peer: PeerId,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, String> {
        let mut control = self.control.clone();
        let exchange = async move {
            let mut stream = control
                .open_stream(peer, wire::PROTOCOL)
                .await
                .map_err(|err| format!("no stream: {err}"))?;
            wire::write(&mut stream, &request)
                .await
                .map_err(|err| err.to_string())?;
            let response: Response = wire::read(&mut stream)
                .await
                .map_err(|err| err.to_string())?;
            let _ = stream.close().await;
            Ok(response)
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
    }

    /// Answers members' streams, within the limits; others' are closed unread.
    async fn serve(
        self,
        mut incoming: crate::daemon::net::IncomingStreams,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let places = Arc::new(Semaphore::new(MAX_SERVED));
        let per_member: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
        loop {
            let (peer, stream) = tokio::select! {
                next = incoming.next() => match next {
                    Some(next) => next,
                    None => break,
                },
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            if !self.config.members.contains(&peer) {
                tracing::debug!(%peer, "group stream from a node outside the group closed");
                continue;
            }
            let Ok(place) = places.clone().try_acquire_owned() else {
                continue;
            };
            {
                let mut counts = per_member
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let count = counts.entry(peer).or_default();
                if *count >= MAX_SERVED_PER_MEMBER {
                    continue;
                }
                *count += 1;
            }
            let task = self.clone();
            let per_member = per_member.clone();
            self.spawn(async move {
                let _ =
                    tokio::time::timeout(CHALLENGE_TIMEOUT, task.serve_stream(peer, stream)).await;
                drop(place);
                let mut counts = per_member
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some(count) = counts.get_mut(&peer) {
                    *count -= 1;
                    if *count == 0 {
                        counts.remove(&peer);
                    }
                }
            });
        }
    }

    async fn serve_stream(&self, peer: PeerId, mut stream: libp2p::Stream) {
        let request: Request = match wire::read(&mut stream).await {
            Ok(request) => request,
            Err(err) => {
                tracing::debug!(%peer, %err, "group request not read");
                return;
            }
        };
        let response = match request {
            Request::Holdings(theirs) => {
                if theirs.group != self.config.name {
                    Response::Refused(format!("this node is in the group {}", self.config.name))
                } else {
                    if self.group.record_holdings(peer, theirs) {
                        self.mirror.wake();
                    }
                    let mine = self.group.state().mine.clone();
                    let mine = match mine {
                        Some(mine) => Some(mine),
                        None => self.own_holdings().await,
                    };
                    match mine {
                        Some(mine) => Response::Holdings(mine),
                        None => Response::Refused("holdings not known yet".into()),
                    }
                }
            }
            Request::Challenge(challenge) => {
                let node = self.node.clone();
                let root = challenge.root;
                let answered = self
                    .pool
                    .run(move || match node.store().pin_reasons(&root) {
                        Ok(reasons) if !reasons.is_empty() => {
                            let (answer, unreadable) = proof::answer(node.store(), &challenge);
                            if let Answer::Failed(reason) = &answer {
                                tracing::warn!(%root, %reason, "a challenge on a resource held here failed");
                            }
                            (answer, unreadable.is_some())
                        }
                        Ok(_) => (Answer::Failed(format!("{root} is not held here")), false),
                        Err(err) => (Answer::Failed(err.to_string()), false),
                    })
                    .await;
                match answered {
                    Ok((answer, damaged)) => {
                        if damaged {
                            self.repair(root, true);
                        }
                        Response::Answer(answer)
                    }
                    Err(_) => return,
                }
            }
        };
        if wire::write(&mut stream, &response).await.is_ok() {
            let _ = stream.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_challenge_is_remembered_across_a_restart_until_one_on_it_passes() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree(DISPROVED_TREE).unwrap();
        let (me, member) = (PeerId::random(), PeerId::random());
        let config = GroupConfig {
            name: "district".into(),
            members: vec![me, member],
            collections: Vec::new(),
            exchange_interval: Duration::from_secs(1),
            challenge_interval: Duration::from_secs(1),
        };
        let resource = crate::block::cid_v1(crate::block::codec::RAW, b"lesson");
        let other = crate::block::cid_v1(crate::block::codec::RAW, b"other lesson");
        let start = || GroupHandle::new(me, Some(config.clone()), Some(tree.clone()));
        let disproved = |group: &GroupHandle| {
            group
                .state()
                .peers
                .get(&member)
                .map(|p| (p.discredited, p.failed.iter().copied().collect::<Vec<_>>()))
        };

        let group = start();
        group.record_challenge(member, resource, Outcome::Failed("wrong digest".into()));
        assert_eq!(disproved(&start()), Some((true, vec![resource])));
        // Passing on another resource counts the member again, but not the resource it
        // failed on; a restart then distrusts it until it passes once more.
        let restarted = start();
        restarted.record_challenge(member, other, Outcome::Passed);
        assert_eq!(disproved(&restarted), Some((false, vec![resource])));
        assert_eq!(disproved(&start()), Some((true, vec![resource])));
        // Passing on the very resource clears it.
        let restarted = start();
        restarted.record_challenge(member, resource, Outcome::Passed);
        assert_eq!(disproved(&start()), None);
        // An unanswered challenge is no disproof.
        let restarted = start();
        restarted.record_challenge(member, other, Outcome::Unanswered("no answer".into()));
        assert_eq!(disproved(&start()), None);
    }
}
