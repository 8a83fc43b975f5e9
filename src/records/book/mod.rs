//! `RecordBook`: the record layer's local state and the operations the command line uses.
//!
//! Blocks go to the block store given, through a hold ([`HoldBlocks`]) kept until the index
//! entries that name them are written, so that a concurrent gc never finds them unnamed;
//! indexes and the state of this node's own collections go to sled trees named
//! `records/...`. Blocks are always written before the index entries that point at them,
//! and nothing is written for an object that is refused. A draft is edited or published by
//! one thread at a time.
//!
//! By concern: `records` (records and retractions), `drafts` (this node's collections),
//! `heads` (heads from others, equivocations, history), `follows` (collections this node
//! follows), `listing` (collection listings and their cache), `summaries` (the listing
//! index's own format); here, the types, the trees and what the book keeps from gc.

use cid::Cid;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

mod drafts;
mod follows;
mod heads;
mod listing;
mod records;
mod summaries;

pub use follows::{FollowMode, FollowState};
use summaries::{decode_summary, encode_summary};

use super::collection::{CollectionId, Head, HeadDraft, Retraction};
use super::entries::{self, EditOutcome, Entry};
use super::error::{Equivocation, ForeignRetraction, RecordError, Result};
use super::licence::{check_adaptation, LicenceWarning, ParentWork};
use super::provenance::{self, ProvenanceNode};
use super::record::{attribution, Record, RecordDraft};
use super::trust::TrustedPublishers;
use crate::block::{cid_v1, codec as block_codec, BlockError, BlockGet, BlockPut, HoldBlocks};
use crate::keys;

const TREE_SUMMARIES: &str = "records/summaries";
const TREE_LISTING_CACHE: &str = "records/listing-cache";
const TREE_META: &str = "records/meta";
/// Bumped after every change to the summaries index; listing caches of an older
/// generation are stale.
const SUMMARY_GENERATION: &[u8] = b"summary-generation";
/// A random name for this database, so that books opened over it share draft locks.
const DATABASE_ID: &[u8] = b"database-id";
const TREE_BY_CONTENT: &str = "records/by-content";
const TREE_RETRACTIONS: &str = "records/retractions";
const TREE_HEADS: &str = "records/heads";
const TREE_HEAD_LOG: &str = "records/head-log";
const TREE_EQUIVOCATIONS: &str = "records/equivocations";
const TREE_DRAFTS: &str = "records/drafts";
const TREE_FOLLOWS: &str = "records/follows";

/// What the listing index keeps per accepted record, so listings need no record blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordSummary {
    #[serde(rename = "t")]
    pub title: String,
    #[serde(rename = "l")]
    pub licence: String,
    #[serde(rename = "p")]
    pub publisher: String,
    #[serde(rename = "c")]
    pub content: Cid,
    #[serde(rename = "x")]
    pub retracted: bool,
}

/// A freshly signed record.
#[derive(Debug, Clone)]
pub struct SignedRecord {
    pub cid: Cid,
    pub record: Record,
    /// Parents whose licence terms could not be checked by machine.
    pub warnings: Vec<LicenceWarning>,
}

/// A record read back from the store and verified again.
#[derive(Debug, Clone)]
pub struct RecordView {
    pub cid: Cid,
    pub record: Record,
    pub trusted: bool,
    pub retracted: bool,
    /// The full TASL attribution, parents included.
    pub attribution: String,
}

/// A record in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordListing {
    pub cid: Cid,
    pub summary: RecordSummary,
    pub trusted: bool,
}

/// The state of one of this node's own collections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftState {
    /// Name of the key (in the key directory) that publishes this collection.
    #[serde(rename = "key")]
    pub key_name: String,
    #[serde(rename = "pub")]
    pub publisher: String,
    /// Root of the entry list as edited, published or not.
    #[serde(rename = "root")]
    pub entries: Cid,
    #[serde(rename = "cnt")]
    pub entry_count: u64,
    /// Last seq published, 0 before the first publish.
    #[serde(rename = "seq")]
    pub published_seq: u64,
    #[serde(rename = "head", default, skip_serializing_if = "Option::is_none")]
    pub published_head: Option<Cid>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftInfo {
    pub name: String,
    pub id: CollectionId,
    pub state: DraftState,
}

/// The result of publishing a collection version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub id: CollectionId,
    pub head: Cid,
    pub seq: u64,
    pub entry_count: u64,
}

/// Where a verified head stands against what is known here, before anything is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadStatus {
    /// Newer than the newest known version.
    Fresh,
    /// The newest known version itself.
    Known,
    /// At or below the newest known version (a replay, or just late).
    Stale { newest: u64 },
    /// A different head with the same seq is known: the publisher signed two versions.
    Equivocation { known: Cid },
}

/// A head that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedHead {
    pub id: CollectionId,
    pub cid: Cid,
    pub seq: u64,
    pub trusted: bool,
    /// The same head as the newest one already known: nothing changed.
    pub already_known: bool,
}

/// One entry of a collection listing, joined with the record index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryView {
    pub entry: Entry,
    /// `None` when the record has not been accepted locally yet.
    pub summary: Option<RecordSummary>,
    pub trusted: bool,
}

impl EntryView {
    /// The entry's own title, else the record's.
    pub fn title(&self) -> Option<&str> {
        self.entry
            .title
            .as_deref()
            .or(self.summary.as_ref().map(|s| s.title.as_str()))
    }
}

/// A collection's newest known version and its entries (retracted records left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionView {
    pub id: CollectionId,
    pub head: Cid,
    pub seq: u64,
    pub time: String,
    pub trusted: bool,
    pub entries: Vec<EntryView>,
    pub retracted_hidden: usize,
}

/// A collection known to this node: published by others (accepted heads) or by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionListing {
    pub id: CollectionId,
    /// Newest accepted head, if any version is known.
    pub newest: Option<(u64, Cid)>,
    pub trusted: bool,
    /// Present for this node's own collections.
    pub draft: Option<DraftState>,
}

/// One step back through a collection's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryEntry {
    Version {
        cid: Cid,
        seq: u64,
        time: String,
        entry_count: u64,
        entries: Cid,
    },
    /// The previous head is not in the local store; history stops here.
    Missing { cid: Cid },
    /// The previous head is in the store but is not a valid head of this collection.
    Invalid { cid: Cid, reason: String },
}

/// Every block a collection version consists of, for export and pinning.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CollectionBlocks {
    pub head: Option<Cid>,
    pub entry_blocks: Vec<Cid>,
    /// Records present locally.
    pub records: Vec<Cid>,
    /// Entries whose record block is not present locally.
    pub missing_records: Vec<Cid>,
    /// Root CIDs of the records' content (their blocks are the block store's business).
    pub content_roots: Vec<Cid>,
}

impl CollectionBlocks {
    /// Head, entry blocks and records: the record-layer blocks to put in a CAR.
    pub fn record_layer_blocks(&self) -> Vec<Cid> {
        self.head
            .iter()
            .chain(&self.entry_blocks)
            .chain(&self.records)
            .copied()
            .collect()
    }
}

/// Blocks the record layer needs kept, and blocks it lets go (see [`RecordBook::gc_roots`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcRoots {
    pub keep: Vec<Cid>,
    pub retracted: Vec<Cid>,
}

/// The record layer's local state over a sled database and a block store.
pub struct RecordBook<B> {
    db: sled::Db,
    database_id: u128,
    blocks: B,
    trusted: TrustedPublishers,
    summaries: sled::Tree,
    by_content: sled::Tree,
    retractions: sled::Tree,
    heads: sled::Tree,
    head_log: sled::Tree,
    equivocations: sled::Tree,
    drafts: sled::Tree,
    follows: sled::Tree,
    listing_cache: sled::Tree,
    meta: sled::Tree,
}

fn damaged(what: impl std::fmt::Display) -> RecordError {
    RecordError::DamagedState(what.to_string())
}

fn cid_from_bytes(bytes: &[u8]) -> Result<Cid> {
    Cid::try_from(bytes).map_err(|e| damaged(format!("stored CID: {e}")))
}

fn seq_key(id: &str, seq: u64) -> Vec<u8> {
    // A 0 byte cannot occur in a collection id, so it ends the id unambiguously.
    let mut key = Vec::with_capacity(id.len() + 9);
    key.extend_from_slice(id.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn content_key(content: &Cid, record: &Cid) -> Vec<u8> {
    let content = content.to_bytes();
    let mut key = Vec::with_capacity(content.len() + 40);
    key.extend_from_slice(&(content.len() as u16).to_be_bytes());
    key.extend_from_slice(&content);
    key.extend_from_slice(&record.to_bytes());
    key
}

fn encode_newest(seq: u64, cid: &Cid) -> Vec<u8> {
    let mut value = seq.to_be_bytes().to_vec();
    value.extend_from_slice(&cid.to_bytes());
    value
}

fn decode_newest(value: &[u8]) -> Result<(u64, Cid)> {
    let (seq, cid) = value
        .split_at_checked(8)
        .ok_or_else(|| damaged("newest-head entry too short"))?;
    let seq = u64::from_be_bytes(seq.try_into().map_err(|_| damaged("newest-head seq"))?);
    Ok((seq, cid_from_bytes(cid)?))
}

fn to_cbor<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_ipld_dagcbor::to_vec(value)
        .map_err(|e| damaged(format!("cannot encode local state: {e}")))
}

fn from_cbor<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_ipld_dagcbor::from_slice(bytes)
        .map_err(|e| damaged(format!("cannot decode local state: {e}")))
}

/// The database's id, made on first use.
fn database_id(meta: &sled::Tree) -> Result<u128> {
    if meta.get(DATABASE_ID)?.is_none() {
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id)
            .map_err(|e| damaged(format!("no randomness for the database id: {e}")))?;
        // Another book opening at the same moment may have set it first; either is fine.
        let _ = meta.compare_and_swap(DATABASE_ID, None as Option<&[u8]>, Some(&id[..]))?;
    }
    let id = meta
        .get(DATABASE_ID)?
        .and_then(|value| Some(u128::from_le_bytes(*value.first_chunk::<16>()?)))
        .ok_or_else(|| damaged("database id"))?;
    Ok(id)
}

fn transaction_error(error: TransactionError<RecordError>) -> RecordError {
    match error {
        TransactionError::Abort(inner) => inner,
        TransactionError::Storage(storage) => RecordError::Store(storage),
    }
}

impl<B: BlockGet + HoldBlocks> RecordBook<B> {
    /// Opens (creating if needed) the record layer's trees in `db`.
    pub fn open(db: &sled::Db, blocks: B, trusted: TrustedPublishers) -> Result<RecordBook<B>> {
        let meta = db.open_tree(TREE_META)?;
        Ok(RecordBook {
            database_id: database_id(&meta)?,
            summaries: db.open_tree(TREE_SUMMARIES)?,
            by_content: db.open_tree(TREE_BY_CONTENT)?,
            retractions: db.open_tree(TREE_RETRACTIONS)?,
            heads: db.open_tree(TREE_HEADS)?,
            head_log: db.open_tree(TREE_HEAD_LOG)?,
            equivocations: db.open_tree(TREE_EQUIVOCATIONS)?,
            drafts: db.open_tree(TREE_DRAFTS)?,
            follows: db.open_tree(TREE_FOLLOWS)?,
            listing_cache: db.open_tree(TREE_LISTING_CACHE)?,
            meta,
            db: db.clone(),
            blocks,
            trusted,
        })
    }

    pub fn blocks(&self) -> &B {
        &self.blocks
    }

    pub fn trusted(&self) -> &TrustedPublishers {
        &self.trusted
    }

    pub fn is_trusted(&self, did: &str) -> bool {
        self.trusted.is_trusted(did)
    }

    /// What the record layer keeps alive in the block store, for `gc`: every accepted
    /// record, retractions, newest heads (older heads hang off them), equivocation
    /// evidence, and this node's draft entry lists. `retracted` names content that only
    /// retracted records point at: gc may remove it even where a record or a collection
    /// version still links to it.
    pub fn gc_roots(&self) -> Result<GcRoots> {
        let mut roots = GcRoots::default();
        let mut live_content = std::collections::HashSet::new();
        let mut retracted_content = Vec::new();
        for item in self.summaries.iter() {
            let (key, value) = item?;
            let record = cid_from_bytes(&key)?;
            let summary = decode_summary(&value)?;
            // A retracted record stays (it is small, and it is how the retraction is
            // checked on every node it travels to); its content may go.
            roots.keep.push(record);
            if summary.retracted {
                retracted_content.push(summary.content);
            } else {
                live_content.insert(summary.content);
            }
        }
        roots.retracted.extend(
            retracted_content
                .into_iter()
                .filter(|content| !live_content.contains(content)),
        );
        for item in self.retractions.iter() {
            roots.keep.push(cid_from_bytes(&item?.1)?);
        }
        for item in self.heads.iter() {
            roots.keep.push(decode_newest(&item?.1)?.1);
        }
        for item in self.equivocations.iter() {
            let (key, value) = item?;
            roots.keep.push(cid_from_bytes(&value)?);
            // Key: collection id, 0, seq (8 bytes), conflicting head CID.
            let conflicting = key
                .iter()
                .position(|byte| *byte == 0)
                .and_then(|end| key.get(end + 9..))
                .ok_or_else(|| damaged("equivocation key"))?;
            roots.keep.push(cid_from_bytes(conflicting)?);
        }
        for item in self.drafts.iter() {
            let state: DraftState = from_cbor(&item?.1)?;
            roots.keep.push(state.entries);
            roots.keep.extend(state.published_head);
        }
        Ok(roots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_keys_sort_by_seq_within_a_collection() {
        assert!(seq_key("a/b", 2) < seq_key("a/b", 10));
        assert!(seq_key("a/b", u64::MAX) < seq_key("a/bc", 0));
    }
}
