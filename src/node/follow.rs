//! Following collections: the user actions (`follow`, `unfollow`, `follow list`), and
//! the record-layer work the daemon's follower runs on the blocking pool for heads
//! and blocks that arrive from peers. Every rule about what is accepted is the
//! record layer's: trust, seq, equivocation, signatures.

use cid::Cid;
use libp2p::kad::RecordKey;

use super::views::{EquivocationView, FollowRow, FollowView};
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

impl Node {
    /// Follows a collection: from now on the daemon keeps its newest version, entry
    /// list and records, fetched from peers. Only trusted publishers are followed.
    pub fn follow(&self, id: &str, metadata_only: bool) -> Result<FollowView> {
        let id = parse_collection_id(id)?;
        if !metadata_only {
            return Err(NodeError::invalid(
                "following a collection's content is not available yet: use --metadata-only \
                 to keep its versions, entry list and records",
            ));
        }
        let book = self.records();
        let publisher = id.publisher_did();
        if !book.is_trusted(&publisher) {
            return Err(NodeError::invalid(format!(
                "{publisher}, the publisher of {id}, is not trusted here: trust it first with \
                 `oermesh trust add {id}`"
            )));
        }
        let state = FollowState {
            mode: FollowMode::Metadata,
            since: crate::records::validate::now_utc(),
        };
        let changed = match book.follow_state(&id)? {
            Some(_) => false,
            None => book.follow(&id, &state)?,
        };
        self.store().flush()?;
        let running = self.tell_follower(crate::daemon::follow::FollowCommand::Follow(id.clone()));
        Ok(FollowView {
            publisher,
            seq: book.newest_head(&id)?.map(|(seq, _)| seq),
            id: id.to_string(),
            running,
            changed,
        })
    }

    /// Stops following a collection. What was fetched stays until `gc` finds nothing
    /// else holds it.
    pub fn unfollow(&self, id: &str) -> Result<FollowView> {
        let id = parse_collection_id(id)?;
        let book = self.records();
        if !book.unfollow(&id)? {
            return Err(NodeError::not_found(format!("{id} is not followed")));
        }
        self.store().flush()?;
        let running =
            self.tell_follower(crate::daemon::follow::FollowCommand::Unfollow(id.clone()));
        Ok(FollowView {
            publisher: id.publisher_did(),
            seq: book.newest_head(&id)?.map(|(seq, _)| seq),
            id: id.to_string(),
            running,
            changed: true,
        })
    }

    /// The followed collections, with what is known of each.
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
            rows.push(FollowRow {
                mode: match state.mode {
                    FollowMode::Metadata => "metadata".into(),
                },
                since: state.since,
                seq: newest.map(|(seq, _)| seq),
                entries,
                trusted: book.is_trusted(&id.publisher_did()),
                equivocations: equivocation_views(&book, &id)?,
                id: id.to_string(),
            });
        }
        Ok(rows)
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
