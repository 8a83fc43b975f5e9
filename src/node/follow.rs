//! Following collections: the user actions (`follow`, `unfollow`, `follow list`), and
//! the record-layer work the daemon's follower runs on the blocking pool for heads
//! and blocks that arrive from peers. Every rule about what is accepted is the
//! record layer's: trust, seq, equivocation, signatures.

use cid::Cid;
use libp2p::kad::RecordKey;

use super::views::{
    ContentProgress, EquivocationView, FollowRow, FollowStatusView, FollowView, ResourceView,
};
use super::{parse_collection_id, Node, NodeError, Result};
use crate::block::{self, BlockGet, BlockPut};
use crate::daemon::net::wire::{self, Object, ObjectsResponse};
use crate::records::book::AcceptedHead;
use crate::records::codec::kind_of;
use crate::records::{
    entries, CollectionId, FollowMode, FollowState, HeadStatus, Kind, RecordBook,
};
use crate::store::{GcHold, Store};

/// What a head from a peer is worth, by the record layer's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadJudgement {
    /// Not a valid head of the collection it came for (bad encoding, signature, or
    /// another collection): the peer that sent it is at fault.
    Invalid(String),
    /// Valid, but its publisher is not trusted here.
    Untrusted,
    /// Valid and trusted, but not newer than the version known.
    Stale,
    /// The version known here already.
    Known,
    /// Valid, but the publisher signed another head with this seq: kept as evidence.
    Equivocation,
    /// Newer than anything known: worth forwarding, and fetching.
    Fresh { collection: CollectionId, seq: u64 },
}

/// What a followed collection's newest version still lacks here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataNeeds {
    /// Entry-list blocks: the root, or chunks.
    EntryBlocks(Vec<Cid>),
    /// Records the entry list names.
    Records(Vec<Cid>),
    Complete,
}

/// The pin reason under which a followed collection's resources are kept.
pub fn pin_reason(id: &CollectionId) -> String {
    format!("{PIN_PREFIX}{id}")
}

pub(crate) const PIN_PREFIX: &str = "collection:";

/// What a collection followed with its content still lacks here: the content roots
/// of the newest version's resources that are not pinned for it yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentPlan {
    pub id: CollectionId,
    pub seq: u64,
    pub missing: Vec<Cid>,
}

/// One entry of a collection's newest version, with what its record says.
struct Resource {
    record: Cid,
    content: Cid,
    title: String,
    path: Option<String>,
    retracted: bool,
}

impl Node {
    /// Follows a collection: from now on the daemon keeps its newest version, entry
    /// list and records, fetched from peers, and (unless `metadata_only`) every block
    /// of every resource. Only trusted publishers are followed. Following again with
    /// the other mode changes the mode.
    pub fn follow(&self, id: &str, metadata_only: bool) -> Result<FollowView> {
        let id = parse_collection_id(id)?;
        let book = self.records();
        let publisher = id.publisher_did();
        if !book.is_trusted(&publisher) {
            return Err(NodeError::invalid(format!(
                "{publisher}, the publisher of {id}, is not trusted here: trust it first with \
                 `oermesh trust add {id}`"
            )));
        }
        let mode = if metadata_only {
            FollowMode::Metadata
        } else {
            FollowMode::Content
        };
        let changed = match book.follow_state(&id)? {
            Some(state) if state.mode == mode => false,
            Some(state) => {
                book.follow(&id, &FollowState { mode, ..state })?;
                true
            }
            None => {
                let state = FollowState {
                    mode,
                    since: crate::records::validate::now_utc(),
                };
                book.follow(&id, &state)?;
                true
            }
        };
        if metadata_only {
            // What was kept for the content mode goes back to gc's judgement.
            self.settle_content()?;
        }
        self.store().flush()?;
        let running = self.tell_follower(crate::daemon::follow::FollowCommand::Follow(id.clone()));
        self.wake_mirror();
        Ok(FollowView {
            publisher,
            seq: book.newest_head(&id)?.map(|(seq, _)| seq),
            id: id.to_string(),
            content: !metadata_only,
            running,
            changed,
        })
    }

    /// Stops following a collection. What was fetched is unpinned, and stays until `gc`
    /// finds nothing else holds it.
    pub fn unfollow(&self, id: &str) -> Result<FollowView> {
        let id = parse_collection_id(id)?;
        let book = self.records();
        let Some(state) = book.follow_state(&id)? else {
            return Err(NodeError::not_found(format!("{id} is not followed")));
        };
        book.unfollow(&id)?;
        self.settle_content()?;
        self.store().flush()?;
        let running =
            self.tell_follower(crate::daemon::follow::FollowCommand::Unfollow(id.clone()));
        self.wake_mirror();
        Ok(FollowView {
            publisher: id.publisher_did(),
            seq: book.newest_head(&id)?.map(|(seq, _)| seq),
            id: id.to_string(),
            content: state.mode == FollowMode::Content,
            running,
            changed: true,
        })
    }

    /// The followed collections, with what is known of each and, for those followed
    /// with their content, how much of it is here.
    pub fn follow_list(&self) -> Result<Vec<FollowRow>> {
        let book = self.records();
        let mut rows = Vec::new();
        for (id, state) in book.follows()? {
            let newest = book.newest_head(&id)?;
            let entries = match newest {
                Some((_, head)) => Some(
                    crate::records::Head::decode_and_verify(&self.store().get_block(&head)?)?
                        .entry_count,
                ),
                None => None,
            };
            let (content, sync) = match state.mode {
                FollowMode::Metadata => (None, SyncView::metadata()),
                FollowMode::Content => {
                    let resources = self.resource_views(&id)?;
                    let progress = resources.as_deref().map(content_progress);
                    let sync = self.sync_view(&id, progress.as_ref());
                    (progress, sync)
                }
            };
            rows.push(FollowRow {
                mode: mode_name(state.mode).into(),
                since: state.since,
                seq: newest.map(|(seq, _)| seq),
                entries,
                trusted: book.is_trusted(&id.publisher_did()),
                equivocations: equivocation_views(&book, &id)?,
                state: sync.state,
                reason: sync.reason,
                content,
                id: id.to_string(),
            });
        }
        Ok(rows)
    }

    /// Per resource of a followed collection's newest version: complete or missing.
    pub fn follow_status(&self, id: &str) -> Result<FollowStatusView> {
        let id = parse_collection_id(id)?;
        let book = self.records();
        let Some(state) = book.follow_state(&id)? else {
            return Err(NodeError::not_found(format!(
                "{id} is not followed (`oermesh follow {id}` follows it)"
            )));
        };
        let resources = self.resource_views(&id)?;
        let (progress, sync) = match state.mode {
            FollowMode::Metadata => (None, SyncView::metadata()),
            FollowMode::Content => {
                let progress = resources.as_deref().map(content_progress);
                let sync = self.sync_view(&id, progress.as_ref());
                (progress, sync)
            }
        };
        let remote_pins = self.remote_pins(&id)?;
        Ok(FollowStatusView {
            id: id.to_string(),
            mode: mode_name(state.mode).into(),
            seq: book.newest_head(&id)?.map(|(seq, _)| seq),
            state: sync.state,
            reason: sync.reason,
            content: progress,
            resources: resources.unwrap_or_default(),
            remote_pins,
        })
    }

    /// What remote pinning services were asked to pin of `id`, and their answers.
    pub(crate) fn remote_pins(&self, id: &CollectionId) -> Result<Vec<crate::pinning::RemotePin>> {
        crate::pinning::RemotePins::open(self.store().db())
            .and_then(|remote| remote.of_collection(&id.to_string()))
            .map_err(|err| NodeError::refused(super::ErrorCode::Repository, err.to_string()))
    }

    /// The resources of `id`'s newest version, each with what is here of it; `None`
    /// before any version is known.
    fn resource_views(&self, id: &CollectionId) -> Result<Option<Vec<ResourceView>>> {
        let Some((_, resources)) = self.resources(id)? else {
            return Ok(None);
        };
        let reason = pin_reason(id);
        let replicas = self.replica_counts(id)?;
        let mut views = Vec::with_capacity(resources.len());
        for resource in resources {
            let complete = !resource.retracted
                && self
                    .store()
                    .pin_reasons(&resource.content)?
                    .contains(&reason);
            let bytes_total = self.dag_size(&resource.content)?;
            let bytes_held = if complete {
                bytes_total.unwrap_or(0)
            } else {
                self.bytes_held(&resource.content)?
            };
            views.push(ResourceView {
                record: resource.record,
                content: resource.content,
                title: resource.title,
                path: resource.path,
                state: if resource.retracted {
                    "retracted".into()
                } else if complete {
                    "complete".into()
                } else {
                    "missing".into()
                },
                bytes_held,
                bytes_total,
                replicas: replicas
                    .as_ref()
                    .filter(|_| !resource.retracted)
                    .map(|counts| counts.get(&resource.content).copied().unwrap_or(0)),
            });
        }
        Ok(Some(views))
    }

    /// What `follow list` says of a collection followed with its content.
    fn sync_view(&self, id: &CollectionId, progress: Option<&ContentProgress>) -> SyncView {
        let Some(progress) = progress else {
            return SyncView::new("waiting for a first version", None);
        };
        let shared = self
            .group_config()
            .ok()
            .flatten()
            .is_some_and(|group| group.collections.iter().any(|(kept, _)| kept == id));
        if progress.complete == progress.resources {
            return SyncView::new("complete", None);
        }
        let Some(online) = self.online() else {
            return SyncView::new(
                "paused",
                Some("the daemon is not running: `oermesh daemon` fetches the rest".into()),
            );
        };
        match online.mirror().state(id) {
            Some(crate::daemon::mirror::SyncState::Stalled(reason)) => {
                SyncView::new("stalled", Some(reason))
            }
            Some(crate::daemon::mirror::SyncState::Complete) if shared => SyncView::new(
                "complete",
                Some("this node's share; the replication group holds the rest".into()),
            ),
            _ => SyncView::new("syncing", None),
        }
    }

    /// The newest version of `id` and its entries with their records' summaries.
    fn resources(&self, id: &CollectionId) -> Result<Option<(u64, Vec<Resource>)>> {
        let book = self.records();
        let Some((seq, head)) = book.newest_head(id)? else {
            return Ok(None);
        };
        let head = crate::records::Head::decode_and_verify(&self.store().get_block(&head)?)?;
        let mut resources = Vec::new();
        for entry in entries::read_all(self.store(), &head.entries)? {
            // A record not here yet: the version is not accepted before all are, so
            // only a damaged index gets here; the entry is left out, not guessed.
            let Some(summary) = book.summary(&entry.record)? else {
                continue;
            };
            resources.push(Resource {
                record: entry.record,
                content: summary.content,
                title: entry.title.unwrap_or(summary.title),
                path: entry.path,
                retracted: summary.retracted,
            });
        }
        Ok(Some((seq, resources)))
    }

    /// The blocks' bytes of the DAG under `root`, as its root block states them
    /// (dag-pb links carry their subtree's size); `None` while the root is not here.
    fn dag_size(&self, root: &Cid) -> Result<Option<u64>> {
        let store = self.store();
        let Some(size) = store.block_size(root)? else {
            return Ok(None);
        };
        if root.codec() != block::codec::DAG_PB {
            return Ok(Some(size));
        }
        let Ok(node) = crate::dag_pb::PbNode::decode(&store.get_block(root)?) else {
            return Ok(Some(size));
        };
        Ok(Some(
            size + node
                .links
                .iter()
                .map(|link| link.tsize.unwrap_or(0))
                .sum::<u64>(),
        ))
    }

    /// The bytes of the blocks under `root` that are here.
    fn bytes_held(&self, root: &Cid) -> Result<u64> {
        let store = self.store();
        let mut held = 0;
        crate::links::walk(&[*root], &[], |cid| -> Result<Vec<Cid>> {
            match crate::links::children_if_present(store, cid) {
                Ok(Some(children)) => {
                    held += store.block_size(cid)?.unwrap_or(0);
                    Ok(children)
                }
                // A block that cannot be read counts as not held; `verify` names it.
                Ok(None) | Err(_) => Ok(Vec::new()),
            }
        })?;
        Ok(held)
    }

    /// For each collection followed with its content and with a version known, the
    /// resources not complete here yet. Pins that no longer belong (see
    /// [`Node::settle_content`]) are let go first.
    pub fn content_plans(&self) -> Result<Vec<ContentPlan>> {
        self.settle_content()?;
        let book = self.records();
        let mut plans = Vec::new();
        for (id, state) in book.follows()? {
            if state.mode != FollowMode::Content || !book.is_trusted(&id.publisher_did()) {
                continue;
            }
            let Some((seq, resources)) = self.resources(&id)? else {
                continue;
            };
            let reason = pin_reason(&id);
            let mut missing = Vec::new();
            for resource in resources.iter().filter(|r| !r.retracted) {
                if !missing.contains(&resource.content)
                    && !self
                        .store()
                        .pin_reasons(&resource.content)?
                        .contains(&reason)
                {
                    missing.push(resource.content);
                }
            }
            plans.push(ContentPlan { id, seq, missing });
        }
        Ok(plans)
    }

    /// Lets go of every collection pin that no longer belongs: of a collection no
    /// longer followed with its content, or of a resource its newest version no longer
    /// lists, or lists retracted.
    pub fn settle_content(&self) -> Result<()> {
        let book = self.records();
        let mut wanted: std::collections::HashMap<String, std::collections::HashSet<Cid>> =
            std::collections::HashMap::new();
        for (id, state) in book.follows()? {
            if state.mode != FollowMode::Content {
                continue;
            }
            let contents = match self.resources(&id)? {
                Some((_, resources)) => resources
                    .into_iter()
                    .filter(|r| !r.retracted)
                    .map(|r| r.content)
                    .collect(),
                None => Default::default(),
            };
            wanted.insert(pin_reason(&id), contents);
        }
        for (cid, reasons) in self.store().pins()? {
            for reason in reasons.iter().filter(|r| r.starts_with(PIN_PREFIX)) {
                let kept = wanted
                    .get(reason)
                    .is_some_and(|contents| contents.contains(&cid));
                if !kept {
                    tracing::info!(%cid, %reason, "resource no longer in the followed collection; unpinned");
                    self.store().unpin(&cid, Some(reason))?;
                }
            }
        }
        Ok(())
    }

    /// Asks a running daemon's mirror to look at the followed collections soon.
    pub(crate) fn wake_mirror(&self) {
        if let Some(online) = self.online() {
            online.mirror().wake();
        }
    }

    /// Tells a running daemon's follower; returns whether one runs.
    fn tell_follower(&self, command: crate::daemon::follow::FollowCommand) -> bool {
        match self.online() {
            Some(online) => {
                online.tell_follower(command);
                true
            }
            None => false,
        }
    }

    /// Announces a head accepted here (a publish, an import) to the network.
    pub(crate) fn announce(&self, id: &CollectionId) {
        self.tell_follower(crate::daemon::follow::FollowCommand::Accepted(id.clone()));
        self.wake_remote_pins();
    }

    // ---- the follower's work ----

    /// Collections whose gossip topic the node joins: the followed ones and this
    /// node's own published ones.
    pub fn gossip_collections(&self) -> Result<Vec<CollectionId>> {
        let book = self.records();
        let mut ids: Vec<CollectionId> = book.follows()?.into_iter().map(|(id, _)| id).collect();
        for draft in book.drafts()? {
            if draft.state.published_head.is_some() && !ids.contains(&draft.id) {
                ids.push(draft.id);
            }
        }
        Ok(ids)
    }

    /// Whether this node follows or publishes `id`.
    pub fn wants_collection(&self, id: &CollectionId) -> Result<bool> {
        let book = self.records();
        Ok(book.follow_state(id)?.is_some() || book.drafts()?.iter().any(|d| d.id == *id))
    }

    /// Judges a head from a peer: size, signature, the collection it was sent for,
    /// trust, then seq. An equivocation is kept as evidence.
    pub fn judge_head(
        &self,
        bytes: &[u8],
        expected: Option<&CollectionId>,
    ) -> Result<HeadJudgement> {
        if bytes.len() > wire::MAX_GOSSIP_MESSAGE {
            return Ok(HeadJudgement::Invalid(format!(
                "{} bytes, above the limit of {}",
                bytes.len(),
                wire::MAX_GOSSIP_MESSAGE
            )));
        }
        let book = self.records();
        let (head, _, status) = match book.head_status(bytes) {
            Ok(judged) => judged,
            Err(err) => return Ok(HeadJudgement::Invalid(err.to_string())),
        };
        let collection = match head.collection_id() {
            Ok(id) => id,
            Err(err) => return Ok(HeadJudgement::Invalid(err.to_string())),
        };
        if expected.is_some_and(|expected| *expected != collection) {
            return Ok(HeadJudgement::Invalid(format!(
                "a head of {collection} sent for another collection"
            )));
        }
        if !book.is_trusted(&head.publisher) {
            return Ok(HeadJudgement::Untrusted);
        }
        Ok(match status {
            HeadStatus::Fresh => HeadJudgement::Fresh {
                collection,
                seq: head.seq,
            },
            HeadStatus::Known => HeadJudgement::Known,
            HeadStatus::Stale { .. } => HeadJudgement::Stale,
            HeadStatus::Equivocation { .. } => {
                // accept_head keeps both heads as evidence and refuses this one.
                let _ = book.accept_head(bytes);
                self.store().flush()?;
                HeadJudgement::Equivocation
            }
        })
    }

    /// What the version `head_bytes` (a verified head) still lacks here.
    pub fn metadata_needs(&self, head_bytes: &[u8]) -> Result<MetadataNeeds> {
        let head = crate::records::Head::decode_and_verify(head_bytes)?;
        let store = self.store();
        if !store.has(&head.entries)? {
            return Ok(MetadataNeeds::EntryBlocks(vec![head.entries]));
        }
        let root = entries::read_root(store, &head.entries)?;
        let mut missing = Vec::new();
        for chunk in &root.chunks {
            if !store.has(&chunk.chunk)? {
                missing.push(chunk.chunk);
            }
        }
        if !missing.is_empty() {
            return Ok(MetadataNeeds::EntryBlocks(missing));
        }
        let book = self.records();
        let mut records = Vec::new();
        for entry in entries::read_all(store, &head.entries)? {
            if book.summary(&entry.record)?.is_none() {
                records.push(entry.record);
            }
        }
        Ok(if records.is_empty() {
            MetadataNeeds::Complete
        } else {
            MetadataNeeds::Records(records)
        })
    }

    /// The records of the version `head_bytes` that are here and not retracted.
    pub fn unretracted_records(&self, head_bytes: &[u8]) -> Result<Vec<Cid>> {
        let head = crate::records::Head::decode_and_verify(head_bytes)?;
        let book = self.records();
        let mut records = Vec::new();
        for entry in entries::read_all(self.store(), &head.entries)? {
            if book
                .summary(&entry.record)?
                .is_some_and(|summary| !summary.retracted)
            {
                records.push(entry.record);
            }
        }
        Ok(records)
    }

    /// Stores entry-list blocks from a peer (each already checked against the CID it
    /// was asked for). Anything that is not an entry-list block is dropped. Nothing
    /// names the blocks until their version is accepted: the hold returned keeps them
    /// from gc until then.
    pub fn store_entry_blocks(&self, blocks: Vec<(Cid, Vec<u8>)>) -> Result<(usize, GcHold)> {
        let batch = self.store().batch();
        let mut stored = 0;
        for (cid, data) in blocks {
            if matches!(kind_of(&data), Some(Kind::EntryRoot | Kind::EntryChunk)) {
                batch.put_block(&cid, &data)?;
                stored += 1;
            }
        }
        Ok((stored, batch.commit_held()?))
    }

    /// Accepts records (each checked against its CID and then its signature) and
    /// retractions from a peer. A record or retraction that does not verify is
    /// dropped; the rest are kept.
    pub fn accept_network_records(
        &self,
        records: Vec<(Cid, Vec<u8>)>,
        retractions: Vec<Vec<u8>>,
    ) -> Result<usize> {
        let book = self.records();
        let mut accepted = 0;
        for (cid, data) in records {
            match book.accept_record(&data) {
                Ok(_) => accepted += 1,
                Err(err) => tracing::info!(%cid, %err, "record from a peer refused"),
            }
        }
        for data in retractions {
            if let Err(err) = book.accept_retraction(&data) {
                tracing::info!(%err, "retraction from a peer refused");
            }
        }
        self.store().flush()?;
        Ok(accepted)
    }

    /// Accepts a head whose metadata has all arrived: checked complete again, then
    /// accepted by the record layer's rules.
    pub fn accept_network_head(&self, head_bytes: &[u8]) -> Result<AcceptedHead> {
        match self.metadata_needs(head_bytes)? {
            MetadataNeeds::Complete => {}
            _ => {
                return Err(NodeError::not_found(
                    "the version's entry list or records went missing before it was accepted",
                ))
            }
        }
        let book = self.records();
        let accepted = book.accept_head(head_bytes)?;
        book.warm_listing(&accepted.id);
        self.store().flush()?;
        Ok(accepted)
    }

    /// Registers the collection version whose whole DAG `root` names, once it is here
    /// (pinned through the Pinning Service API): its records, then its head, by the
    /// record layer's rules, as a version that arrives by following is. `None` when
    /// `root` is not a collection head.
    pub fn accept_pinned_head(&self, root: &Cid) -> Result<Option<AcceptedHead>> {
        if root.codec() != block::codec::DAG_CBOR {
            return Ok(None);
        }
        let head_bytes = self.store().get_block(root)?;
        if !matches!(kind_of(&head_bytes), Some(Kind::Head)) {
            return Ok(None);
        }
        let head = crate::records::Head::decode_and_verify(&head_bytes)?;
        let book = self.records();
        for entry in entries::read_all(self.store(), &head.entries)? {
            if book.summary(&entry.record)?.is_none() {
                book.accept_record(&self.store().get_block(&entry.record)?)?;
            }
        }
        let accepted = book.accept_head(&head_bytes)?;
        book.warm_listing(&accepted.id);
        self.store().flush()?;
        Ok(Some(accepted))
    }

    /// The newest head block of each collection named that is known here.
    pub fn newest_heads(&self, ids: &[String]) -> Result<Vec<Vec<u8>>> {
        let book = self.records();
        let mut heads = Vec::new();
        for id in ids {
            let Ok(id) = id.parse::<CollectionId>() else {
                continue;
            };
            if let Some((_, cid)) = book.newest_head(&id)? {
                heads.push(self.store().get_block(&cid)?);
            }
        }
        Ok(heads)
    }

    /// The newest head block of one collection, if known.
    pub fn newest_head_block(&self, id: &CollectionId) -> Result<Option<Vec<u8>>> {
        match self.records().newest_head(id)? {
            Some((_, cid)) => Ok(Some(self.store().get_block(&cid)?)),
            None => Ok(None),
        }
    }

    /// Record-layer blocks for a peer: only DAG-CBOR blocks of the record layer's
    /// kinds, as many as fit the response budget, and retractions of the records
    /// asked for when wanted.
    pub fn objects_for_peer(&self, cids: &[Cid], retractions: bool) -> Result<ObjectsResponse> {
        let book = self.records();
        let mut response = ObjectsResponse {
            objects: Vec::new(),
            retractions: Vec::new(),
        };
        let mut budget = wire::OBJECTS_RESPONSE_BUDGET;
        for cid in cids {
            if cid.codec() != block::codec::DAG_CBOR || !self.store().has(cid)? {
                continue;
            }
            let data = self.store().get_block(cid)?;
            if data.len() > budget || kind_of(&data).is_none() {
                continue;
            }
            budget -= data.len();
            if retractions {
                if let Some(retraction) = book.retraction_of(cid)? {
                    let bytes = self.store().get_block(&retraction)?;
                    if bytes.len() <= budget {
                        budget -= bytes.len();
                        response.retractions.push(bytes.into());
                    }
                }
            }
            response.objects.push(Object {
                cid: cid.to_bytes().into(),
                data: data.into(),
            });
        }
        Ok(response)
    }

    /// The DHT keys this node provides: its followed and own published collections,
    /// and the roots it has pinned (whole DAGs, by the pin rules).
    pub fn provided_keys(&self) -> Result<Vec<RecordKey>> {
        let mut keys: Vec<RecordKey> = self
            .gossip_collections()?
            .iter()
            .map(wire::collection_key)
            .collect();
        for (cid, _) in self.store().pins()? {
            keys.push(wire::content_key(&cid));
        }
        Ok(keys)
    }
}

fn mode_name(mode: FollowMode) -> &'static str {
    match mode {
        FollowMode::Metadata => "metadata",
        FollowMode::Content => "content",
    }
}

/// A collection's state and, when it is stalled or paused, why.
struct SyncView {
    state: String,
    reason: Option<String>,
}

impl SyncView {
    fn new(state: &str, reason: Option<String>) -> SyncView {
        SyncView {
            state: state.into(),
            reason,
        }
    }

    fn metadata() -> SyncView {
        SyncView::new("metadata only", None)
    }
}

/// Totals over the resources of a version (retracted ones left out).
fn content_progress(resources: &[ResourceView]) -> ContentProgress {
    let mut progress = ContentProgress::default();
    for resource in resources.iter().filter(|r| r.state != "retracted") {
        progress.resources += 1;
        if resource.state == "complete" {
            progress.complete += 1;
        }
        progress.bytes_held += resource.bytes_held;
        match resource.bytes_total {
            Some(total) => progress.bytes_total += total,
            None => progress.sizes_unknown += 1,
        }
    }
    progress
}

/// The equivocation evidence kept for a collection.
pub(super) fn equivocation_views(
    book: &RecordBook<Store>,
    id: &CollectionId,
) -> Result<Vec<EquivocationView>> {
    Ok(book
        .equivocations(id)?
        .into_iter()
        .map(|evidence| EquivocationView {
            seq: evidence.seq,
            known: evidence.known,
            conflicting: evidence.conflicting,
        })
        .collect())
}

/// Checks a block a peer sent against the CIDs asked for: known CID, size, hash.
pub fn checked_object(object: &Object, asked: &[Cid]) -> Option<(Cid, Vec<u8>)> {
    let cid = Cid::try_from(object.cid.as_slice()).ok()?;
    if !asked.contains(&cid) || object.data.len() > wire::MAX_OBJECT_BYTES {
        return None;
    }
    block::verify(&cid, &object.data).ok()?;
    Some((cid, object.data.to_vec()))
}
