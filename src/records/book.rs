//! `RecordBook`: the record layer's local state and the operations the command line uses.
//!
//! Blocks go to the block store given, through a hold ([`HoldBlocks`]) kept until the index
//! entries that name them are written, so that a concurrent gc never finds them unnamed;
//! indexes and the state of this node's own collections go to sled trees named
//! `records/...`. Blocks are always written before the index entries that point at them,
//! and nothing is written for an object that is refused. A draft is edited or published by
//! one thread at a time.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use cid::Cid;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use super::collection::{CollectionId, Head, HeadDraft, Retraction};
use super::entries::{self, EditOutcome, Entry};
use super::error::{Equivocation, ForeignRetraction, Kind, RecordError, Result};
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

/// Locks of the drafts being edited or published, shared by every book over the same
/// database in this process: a book is opened per command or request, and the lock must
/// span them all. Keyed by database id and draft name.
type DraftLocks = HashMap<(u128, String), Weak<Mutex<()>>>;
static DRAFT_LOCKS: LazyLock<Mutex<DraftLocks>> = LazyLock::new(Mutex::default);

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

/// First byte of a summary in the index's own binary format. Summaries are read once per entry
/// of every listing, so they are kept in a form that decodes without a general CBOR parser.
const SUMMARY_FORMAT_V1: u8 = 1;
const SUMMARY_RETRACTED: u8 = 1;

/// Version byte, flags, then title, licence and publisher each as a 4-byte little-endian
/// length and UTF-8 bytes, then the content CID's bytes up to the end.
fn encode_summary(summary: &RecordSummary) -> Vec<u8> {
    let content = summary.content.to_bytes();
    let texts = [&summary.title, &summary.licence, &summary.publisher];
    let mut value =
        Vec::with_capacity(2 + texts.iter().map(|t| 4 + t.len()).sum::<usize>() + content.len());
    value.push(SUMMARY_FORMAT_V1);
    value.push(if summary.retracted {
        SUMMARY_RETRACTED
    } else {
        0
    });
    for text in texts {
        // Record fields are capped far below 4 GiB before a record is accepted.
        value.extend_from_slice(&(text.len() as u32).to_le_bytes());
        value.extend_from_slice(text.as_bytes());
    }
    value.extend_from_slice(&content);
    value
}

fn decode_summary(value: &[u8]) -> Result<RecordSummary> {
    let short = || damaged("summary entry too short");
    let (&version, rest) = value.split_first().ok_or_else(short)?;
    if version != SUMMARY_FORMAT_V1 {
        return Err(damaged(format!(
            "summary entry has unknown format {version}"
        )));
    }
    let (&flags, mut rest) = rest.split_first().ok_or_else(short)?;
    let mut text = || -> Result<String> {
        let (length, tail) = rest.split_first_chunk::<4>().ok_or_else(short)?;
        let (text, tail) = tail
            .split_at_checked(u32::from_le_bytes(*length) as usize)
            .ok_or_else(short)?;
        rest = tail;
        String::from_utf8(text.to_vec()).map_err(|_| damaged("summary text is not UTF-8"))
    };
    let (title, licence, publisher) = (text()?, text()?, text()?);
    Ok(RecordSummary {
        title,
        licence,
        publisher,
        content: cid_from_bytes(rest)?,
        retracted: flags & SUMMARY_RETRACTED != 0,
    })
}

/// Looks up the summaries of keys given in ascending order with one ordered scan of the
/// index instead of a tree descent per key. A key far ahead of the scan starts a new scan
/// there, so a small collection in a large index still costs about one lookup per entry.
struct SummaryScan<'a> {
    tree: &'a sled::Tree,
    scan: Option<sled::Iter>,
    current: Option<(sled::IVec, sled::IVec)>,
}

/// Index entries stepped over before the scan is restarted at the wanted key instead.
const SCAN_SKIP_LIMIT: usize = 16;

impl<'a> SummaryScan<'a> {
    fn new(tree: &'a sled::Tree) -> SummaryScan<'a> {
        SummaryScan {
            tree,
            scan: None,
            current: None,
        }
    }

    /// The summary stored under `key`; keys must be asked for in ascending order.
    fn get(&mut self, key: &[u8]) -> Result<Option<RecordSummary>> {
        self.get_raw(key)?
            .map(|value| decode_summary(&value))
            .transpose()
    }

    /// The index bytes stored under `key`; keys must be asked for in ascending order.
    fn get_raw(&mut self, key: &[u8]) -> Result<Option<sled::IVec>> {
        let mut skipped = 0;
        loop {
            match (&self.current, &mut self.scan) {
                (Some((found, value)), _) if found.as_ref() == key => {
                    return Ok(Some(value.clone()))
                }
                (Some((found, _)), _) if found.as_ref() > key => return Ok(None),
                // The scan ran off the end of the index: no later key is there either.
                (None, Some(_)) => return Ok(None),
                (_, Some(scan)) if skipped < SCAN_SKIP_LIMIT => {
                    self.current = scan.next().transpose()?;
                    skipped += 1;
                }
                _ => {
                    let mut scan = self.tree.range(key..);
                    self.current = scan.next().transpose()?;
                    self.scan = Some(scan);
                }
            }
        }
    }
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

enum HeadCheck {
    Fresh,
    SameAsNewest,
    Replay { newest: u64 },
    Equivocation { known: Cid },
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
            listing_cache: db.open_tree(TREE_LISTING_CACHE)?,
            meta,
            db: db.clone(),
            blocks,
            trusted,
        })
    }

    /// The lock of one draft: held while the draft is edited or published.
    fn draft_lock(&self, name: &str) -> Arc<Mutex<()>> {
        let mut locks = DRAFT_LOCKS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.retain(|_, lock| lock.strong_count() > 0);
        let key = (self.database_id, name.to_string());
        if let Some(lock) = locks.get(&key).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(Mutex::new(()));
        locks.insert(key, Arc::downgrade(&lock));
        lock
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

    // ---- records ----

    /// Signs a record after checking its licence against every parent's, and stores it.
    /// Parents must be in the block store: an unchecked licence is never signed.
    pub fn sign_record(&self, key: &SigningKey, draft: RecordDraft) -> Result<SignedRecord> {
        let child_licence = super::Licence::parse(&draft.licence, draft.licence_url.as_deref())?;
        let mut parents = Vec::with_capacity(draft.based_on.len());
        for based_on in &draft.based_on {
            let parent = self.load_record(&based_on.record).map_err(|e| match e {
                RecordError::Block(BlockError::NotFound(cid)) => RecordError::ParentMissing(cid),
                other => RecordError::ParentInvalid {
                    cid: based_on.record,
                    reason: other.to_string(),
                },
            })?;
            let licence = parent
                .parsed_licence()
                .map_err(|e| RecordError::ParentInvalid {
                    cid: based_on.record,
                    reason: e.to_string(),
                })?;
            parents.push(ParentWork {
                cid: based_on.record,
                title: parent.title,
                licence,
            });
        }
        let warnings = check_adaptation(&child_licence, &parents)?;
        let (cid, record, bytes) = Record::sign(key, draft)?;
        // Held until indexed: the index is what keeps the record from gc afterwards.
        let hold = self.blocks.hold();
        hold.put_hashed_block(&cid, &bytes)?;
        self.index_record(&cid, &record)?;
        Ok(SignedRecord {
            cid,
            record,
            warnings,
        })
    }

    /// Accepts a record received from elsewhere: decoded strictly and verified before anything
    /// is stored.
    pub fn accept_record(&self, bytes: &[u8]) -> Result<Cid> {
        let record = Record::decode_and_verify(bytes)?;
        let cid = cid_v1(block_codec::DAG_CBOR, bytes);
        self.store_verified_record(&cid, bytes, &record)?;
        Ok(cid)
    }

    /// Stores and indexes a record that `Record::decode_and_verify` has just accepted
    /// from these very bytes, which `cid` names: an import checks every signature and
    /// every hash before it accepts anything, and need not check them twice.
    pub(crate) fn store_verified_record(
        &self,
        cid: &Cid,
        bytes: &[u8],
        record: &Record,
    ) -> Result<()> {
        let hold = self.blocks.hold();
        hold.put_hashed_block(cid, bytes)?;
        self.index_record(cid, record)
    }

    fn index_record(&self, cid: &Cid, record: &Record) -> Result<()> {
        let key = cid.to_bytes();
        let summary = RecordSummary {
            title: record.title.clone(),
            licence: record.licence.clone(),
            publisher: record.publisher.clone(),
            content: record.content,
            retracted: self.retractions.contains_key(&key)?,
        };
        self.summaries.insert(key, encode_summary(&summary))?;
        self.by_content
            .insert(content_key(&record.content, cid), &[])?;
        self.bump_summary_generation()
    }

    /// Marks every listing cache stale. Called after the summaries changed, never
    /// before: a listing reads the generation first, so a cache built from summaries
    /// older than a change always carries a generation older than the change's bump.
    fn bump_summary_generation(&self) -> Result<()> {
        self.meta.update_and_fetch(SUMMARY_GENERATION, |old| {
            let current = old
                .and_then(|bytes| bytes.try_into().ok())
                .map_or(0, u64::from_le_bytes);
            Some(current.wrapping_add(1).to_le_bytes().to_vec())
        })?;
        Ok(())
    }

    fn summary_generation(&self) -> Result<u64> {
        Ok(self
            .meta
            .get(SUMMARY_GENERATION)?
            .and_then(|bytes| bytes.as_ref().try_into().ok())
            .map_or(0, u64::from_le_bytes))
    }

    fn load_record(&self, cid: &Cid) -> Result<Record> {
        let bytes = self.blocks.get_block(cid)?;
        crate::block::verify(cid, &bytes)?;
        Record::decode_and_verify(&bytes)
    }

    /// Reads a record back, verifies it again, and builds its attribution.
    pub fn show_record(&self, cid: &Cid) -> Result<RecordView> {
        let record = self.load_record(cid)?;
        let parents: Vec<(Cid, Option<Record>)> = record
            .based_on
            .iter()
            .map(|p| (p.record, self.load_record(&p.record).ok()))
            .collect();
        Ok(RecordView {
            cid: *cid,
            trusted: self.trusted.is_trusted(&record.publisher),
            retracted: self.is_retracted(cid)?,
            attribution: attribution(&record, &parents),
            record,
        })
    }

    /// Re-checks a stored record: its block against its CID, strict decoding, signature.
    pub fn verify_record(&self, cid: &Cid) -> Result<Record> {
        self.load_record(cid)
    }

    /// The index summary of an accepted record.
    pub fn summary(&self, cid: &Cid) -> Result<Option<RecordSummary>> {
        self.summaries
            .get(cid.to_bytes())?
            .map(|v| decode_summary(&v))
            .transpose()
    }

    /// Non-retracted records describing `content`.
    pub fn records_for_content(&self, content: &Cid) -> Result<Vec<RecordListing>> {
        let content_bytes = content.to_bytes();
        let mut prefix = (content_bytes.len() as u16).to_be_bytes().to_vec();
        prefix.extend_from_slice(&content_bytes);
        let mut listings = Vec::new();
        for item in self.by_content.scan_prefix(&prefix) {
            let (key, _) = item?;
            let cid = cid_from_bytes(&key[prefix.len()..])?;
            let Some(summary) = self.summary(&cid)? else {
                continue;
            };
            if summary.retracted {
                continue;
            }
            listings.push(RecordListing {
                cid,
                trusted: self.trusted.is_trusted(&summary.publisher),
                summary,
            });
        }
        Ok(listings)
    }

    pub fn is_retracted(&self, cid: &Cid) -> Result<bool> {
        Ok(self.retractions.contains_key(cid.to_bytes())?)
    }

    /// The provenance tree of a record; problems become nodes, never errors.
    pub fn provenance(&self, cid: &Cid) -> ProvenanceNode {
        let is_retracted = |cid: &Cid| {
            self.retractions
                .contains_key(cid.to_bytes())
                .unwrap_or(false)
        };
        provenance::walk(
            &self.blocks,
            &self.trusted,
            is_retracted,
            cid,
            provenance::DEFAULT_MAX_DEPTH,
        )
    }

    // ---- retractions ----

    /// Signs and accepts a retraction of one of `key`'s own records.
    pub fn retract(&self, key: &SigningKey, record: &Cid, reason: &str) -> Result<Cid> {
        let (_, _, bytes) = Retraction::sign(key, *record, reason, None)?;
        self.accept_retraction(&bytes)
    }

    /// Accepts a retraction signed by the record's own publisher. The record must be known
    /// locally, since its publisher is what the retraction is checked against.
    pub fn accept_retraction(&self, bytes: &[u8]) -> Result<Cid> {
        let retraction = Retraction::decode_and_verify(bytes)?;
        let cid = cid_v1(block_codec::DAG_CBOR, bytes);
        self.accept_verified_retraction(&cid, bytes, retraction)?;
        Ok(cid)
    }

    /// Accepts a retraction that `Retraction::decode_and_verify` has just accepted from
    /// these very bytes, which `cid` names.
    pub(crate) fn accept_verified_retraction(
        &self,
        cid: &Cid,
        bytes: &[u8],
        retraction: Retraction,
    ) -> Result<()> {
        let record = match self.load_record(&retraction.record) {
            Err(RecordError::Block(BlockError::NotFound(cid))) => {
                return Err(RecordError::UnknownRecord(cid))
            }
            other => other?,
        };
        if record.publisher != retraction.publisher {
            return Err(RecordError::RetractionByOtherKey(Box::new(
                ForeignRetraction {
                    record: retraction.record,
                    publisher: record.publisher,
                    retractor: retraction.publisher,
                },
            )));
        }
        let hold = self.blocks.hold();
        hold.put_hashed_block(cid, bytes)?;
        let key = retraction.record.to_bytes();
        let summary = RecordSummary {
            title: record.title,
            licence: record.licence,
            publisher: record.publisher,
            content: record.content,
            retracted: true,
        };
        let summary = encode_summary(&summary);
        (&self.retractions, &self.summaries)
            .transaction(|(retractions, summaries)| {
                retractions.insert(key.as_slice(), cid.to_bytes())?;
                summaries.insert(key.as_slice(), summary.as_slice())?;
                Ok::<_, ConflictableTransactionError<RecordError>>(())
            })
            .map_err(transaction_error)?;
        self.bump_summary_generation()
    }

    /// The retraction block of a retracted record.
    pub fn retraction_of(&self, record: &Cid) -> Result<Option<Cid>> {
        self.retractions
            .get(record.to_bytes())?
            .map(|v| cid_from_bytes(&v))
            .transpose()
    }

    // ---- this node's own collections ----

    fn draft(&self, name: &str) -> Result<DraftState> {
        let value = self
            .drafts
            .get(name.as_bytes())?
            .ok_or_else(|| RecordError::NoSuchDraft(name.to_string()))?;
        from_cbor(&value)
    }

    fn save_draft(&self, name: &str, state: &DraftState) -> Result<()> {
        self.drafts.insert(name.as_bytes(), to_cbor(state)?)?;
        Ok(())
    }

    /// Starts a new, empty local collection published by `publisher`, whose signing key is
    /// `key_name` in the key directory.
    pub fn create_collection(
        &self,
        name: &str,
        key_name: &str,
        publisher: &VerifyingKey,
    ) -> Result<CollectionId> {
        let id = CollectionId::new(*publisher, name)?;
        keys::validate_key_name(key_name)?;
        let hold = self.blocks.hold();
        let empty = entries::write_empty(&hold)?;
        let state = DraftState {
            key_name: key_name.to_string(),
            publisher: keys::did_key(publisher),
            entries: empty,
            entry_count: 0,
            published_seq: 0,
            published_head: None,
        };
        let created = self.drafts.compare_and_swap(
            name.as_bytes(),
            None as Option<&[u8]>,
            Some(to_cbor(&state)?),
        )?;
        created.map_err(|_| RecordError::DraftExists(name.to_string()))?;
        Ok(id)
    }

    /// This node's own collections.
    pub fn drafts(&self) -> Result<Vec<DraftInfo>> {
        let mut drafts = Vec::new();
        for item in self.drafts.iter() {
            let (key, value) = item?;
            let name =
                String::from_utf8(key.to_vec()).map_err(|_| damaged("draft name is not UTF-8"))?;
            let state: DraftState = from_cbor(&value)?;
            drafts.push(DraftInfo {
                id: CollectionId::from_did(&state.publisher, &name)?,
                name,
                state,
            });
        }
        Ok(drafts)
    }

    pub fn draft_info(&self, name: &str) -> Result<DraftInfo> {
        let state = self.draft(name)?;
        Ok(DraftInfo {
            id: CollectionId::from_did(&state.publisher, name)?,
            name: name.to_string(),
            state,
        })
    }

    /// Adds entries (replacing any with the same record CID). Only touched chunks are rewritten.
    pub fn add_entries(&self, name: &str, additions: Vec<Entry>) -> Result<EditOutcome> {
        self.edit_entries(name, additions, &[])
    }

    /// Removes the entry for `record`; returns whether it was there.
    pub fn remove_entry(&self, name: &str, record: &Cid) -> Result<bool> {
        Ok(self
            .edit_entries(name, Vec::new(), std::slice::from_ref(record))?
            .removed
            > 0)
    }

    fn edit_entries(
        &self,
        name: &str,
        additions: Vec<Entry>,
        removals: &[Cid],
    ) -> Result<EditOutcome> {
        let lock = self.draft_lock(name);
        let _editing = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let hold = self.blocks.hold();
        let mut state = self.draft(name)?;
        let outcome = entries::edit(&hold, &state.entries, additions, removals)?;
        state.entries = outcome.root;
        state.entry_count = outcome.count;
        self.save_draft(name, &state)?;
        Ok(outcome)
    }

    /// The current (possibly unpublished) entries of a local collection.
    pub fn draft_entries(&self, name: &str) -> Result<Vec<Entry>> {
        entries::read_all(&self.blocks, &self.draft(name)?.entries)
    }

    /// Signs the next head of a local collection over its current entry list.
    ///
    /// The new seq is made durable (sled flush) before the head is returned, so a crash can
    /// never lead this node to sign two different heads with the same seq.
    pub fn publish(&self, name: &str, key: &SigningKey) -> Result<Published> {
        // One publish or edit of a draft at a time: two publishes reading the same seq
        // would sign two different heads with it.
        let lock = self.draft_lock(name);
        let _publishing = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let hold = self.blocks.hold();
        let mut state = self.draft(name)?;
        let signer = keys::did_key(&key.verifying_key());
        if signer != state.publisher {
            return Err(RecordError::KeyMismatch {
                name: name.to_string(),
                expected: state.publisher,
                got: signer,
            });
        }
        let seq = state.published_seq + 1;
        let draft = HeadDraft {
            name: name.to_string(),
            seq,
            entries: state.entries,
            entry_count: state.entry_count,
            previous: state.published_head,
            time: None,
        };
        let (head_cid, head, bytes) = Head::sign(key, draft)?;
        let id = head.collection_id()?;
        hold.put_hashed_block(&head_cid, &bytes)?;
        state.published_seq = seq;
        state.published_head = Some(head_cid);
        let draft_value = to_cbor(&state)?;
        let id_text = id.to_string();
        (&self.drafts, &self.heads, &self.head_log)
            .transaction(|(drafts, heads, head_log)| {
                drafts.insert(name.as_bytes(), draft_value.as_slice())?;
                heads.insert(id_text.as_bytes(), encode_newest(seq, &head_cid))?;
                head_log.insert(seq_key(&id_text, seq), head_cid.to_bytes())?;
                Ok::<_, ConflictableTransactionError<RecordError>>(())
            })
            .map_err(transaction_error)?;
        self.db.flush()?;
        Ok(Published {
            id,
            head: head_cid,
            seq,
            entry_count: state.entry_count,
        })
    }

    // ---- heads from others ----

    fn check_head(&self, id: &str, seq: u64, cid: &Cid) -> Result<HeadCheck> {
        if let Some(known) = self.head_log.get(seq_key(id, seq))? {
            let known = cid_from_bytes(&known)?;
            if known != *cid {
                return Ok(HeadCheck::Equivocation { known });
            }
        }
        match self.heads.get(id.as_bytes())? {
            None => Ok(HeadCheck::Fresh),
            Some(value) => {
                let (newest, newest_cid) = decode_newest(&value)?;
                if seq > newest {
                    Ok(HeadCheck::Fresh)
                } else if seq == newest && newest_cid == *cid {
                    Ok(HeadCheck::SameAsNewest)
                } else {
                    Ok(HeadCheck::Replay { newest })
                }
            }
        }
    }

    /// Accepts a collection head: signature first, then the seq rules. A head with the seq of a
    /// known, different head is an equivocation: both heads are kept as evidence and the new
    /// one is refused.
    pub fn accept_head(&self, bytes: &[u8]) -> Result<AcceptedHead> {
        let head = Head::decode_and_verify(bytes)?;
        let cid = cid_v1(block_codec::DAG_CBOR, bytes);
        self.accept_verified_head(&cid, bytes, &head)
    }

    /// Accepts a head that `Head::decode_and_verify` has just accepted from these very
    /// bytes, which `cid` names (an import checks every signature and hash once).
    pub(crate) fn accept_verified_head(
        &self,
        cid: &Cid,
        bytes: &[u8],
        head: &Head,
    ) -> Result<AcceptedHead> {
        let cid = *cid;
        let id = head.collection_id()?;
        let id_text = id.to_string();
        let trusted = self.trusted.is_trusted(&head.publisher);
        match self.check_head(&id_text, head.seq, &cid)? {
            HeadCheck::SameAsNewest => {
                return Ok(AcceptedHead {
                    id,
                    cid,
                    seq: head.seq,
                    trusted,
                    already_known: true,
                })
            }
            HeadCheck::Replay { newest } => {
                return Err(RecordError::Replay {
                    collection: id_text,
                    newest,
                    got: head.seq,
                })
            }
            HeadCheck::Equivocation { known } => {
                let hold = self.blocks.hold();
                hold.put_hashed_block(&cid, bytes)?;
                let mut key = seq_key(&id_text, head.seq);
                key.extend_from_slice(&cid.to_bytes());
                self.equivocations.insert(key, known.to_bytes())?;
                return Err(RecordError::Equivocation(Box::new(Equivocation {
                    collection: id_text,
                    seq: head.seq,
                    known,
                    conflicting: cid,
                })));
            }
            HeadCheck::Fresh => {}
        }
        let hold = self.blocks.hold();
        hold.put_hashed_block(&cid, bytes)?;
        let seq = head.seq;
        // Checked again inside the transaction so two concurrent heads cannot both win.
        let outcome = (&self.heads, &self.head_log)
            .transaction(|(heads, head_log)| {
                let log_key = seq_key(&id_text, seq);
                if let Some(known) = head_log.get(&log_key)? {
                    let known =
                        cid_from_bytes(&known).map_err(ConflictableTransactionError::Abort)?;
                    if known != cid {
                        return Ok(HeadCheck::Equivocation { known });
                    }
                }
                if let Some(value) = heads.get(id_text.as_bytes())? {
                    let (newest, _) =
                        decode_newest(&value).map_err(ConflictableTransactionError::Abort)?;
                    if seq <= newest {
                        return Ok(HeadCheck::Replay { newest });
                    }
                }
                heads.insert(id_text.as_bytes(), encode_newest(seq, &cid))?;
                head_log.insert(log_key, cid.to_bytes())?;
                Ok(HeadCheck::Fresh)
            })
            .map_err(transaction_error)?;
        match outcome {
            HeadCheck::Fresh | HeadCheck::SameAsNewest => Ok(AcceptedHead {
                id,
                cid,
                seq,
                trusted,
                already_known: false,
            }),
            HeadCheck::Replay { newest } => Err(RecordError::Replay {
                collection: id_text,
                newest,
                got: seq,
            }),
            HeadCheck::Equivocation { known } => {
                Err(RecordError::Equivocation(Box::new(Equivocation {
                    collection: id_text,
                    seq,
                    known,
                    conflicting: cid,
                })))
            }
        }
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

    /// Equivocations seen for a collection, oldest seq first.
    pub fn equivocations(&self, id: &CollectionId) -> Result<Vec<Equivocation>> {
        let id_text = id.to_string();
        let mut prefix = id_text.as_bytes().to_vec();
        prefix.push(0);
        let mut found = Vec::new();
        for item in self.equivocations.scan_prefix(&prefix) {
            let (key, value) = item?;
            let rest = &key[prefix.len()..];
            let (seq, conflicting) = rest
                .split_at_checked(8)
                .ok_or_else(|| damaged("equivocation key"))?;
            found.push(Equivocation {
                collection: id_text.clone(),
                seq: u64::from_be_bytes(seq.try_into().map_err(|_| damaged("equivocation seq"))?),
                known: cid_from_bytes(&value)?,
                conflicting: cid_from_bytes(conflicting)?,
            });
        }
        Ok(found)
    }

    /// The newest accepted head of a collection.
    pub fn newest_head(&self, id: &CollectionId) -> Result<Option<(u64, Cid)>> {
        self.heads
            .get(id.to_string().as_bytes())?
            .map(|v| decode_newest(&v))
            .transpose()
    }

    fn load_head(&self, cid: &Cid) -> Result<Head> {
        let bytes = self.blocks.get_block(cid)?;
        crate::block::verify(cid, &bytes)?;
        Head::decode_and_verify(&bytes)
    }

    /// The newest version of a collection with its entries, joined with the record index.
    /// Entries whose record is retracted are left out (and counted).
    pub fn collection_show(&self, id: &CollectionId) -> Result<CollectionView>
    where
        B: Sync,
    {
        let (seq, head_cid) = self
            .newest_head(id)?
            .ok_or_else(|| RecordError::UnknownCollection(id.to_string()))?;
        let head = self.load_head(&head_cid)?;
        let (views, retracted_hidden) = self.list_entries(&head.entries)?;
        Ok(CollectionView {
            id: id.clone(),
            head: head_cid,
            seq,
            time: head.time,
            trusted: self.trusted.is_trusted(&head.publisher),
            entries: views,
            retracted_hidden,
        })
    }

    /// The entries of an entry list joined with the record index, retracted ones left
    /// out (and counted). Each half of the chunks is joined on its own core.
    fn list_entries(&self, entries_root: &Cid) -> Result<(Vec<EntryView>, usize)>
    where
        B: Sync,
    {
        let generation = self.summary_generation()?;
        let mut first_half = entries::read_chunks(&self.blocks, entries_root)?;
        let second_half = first_half.split_off(first_half.len() / 2);
        let (first, second) = rayon::join(
            || self.join_summaries(first_half, generation),
            || self.join_summaries(second_half, generation),
        );
        let (mut views, first_hidden) = first?;
        let (second_views, second_hidden) = second?;
        views.extend(second_views);
        Ok((views, first_hidden + second_hidden))
    }

    /// Fills the listing cache for the newest version of a collection, so that the first
    /// `collection_show` after a publish or an import is as fast as later ones. Best
    /// effort: a cache that cannot be filled is filled by the next listing.
    pub fn warm_listing(&self, id: &CollectionId)
    where
        B: Sync,
    {
        let warmed = self.newest_head(id).and_then(|newest| match newest {
            Some((_, head_cid)) => {
                let head = self.load_head(&head_cid)?;
                self.list_entries(&head.entries).map(drop)
            }
            None => Ok(()),
        });
        if let Err(err) = warmed {
            tracing::debug!(collection = %id, %err, "listing cache not filled");
        }
    }

    /// Drops every cached listing (they are rebuilt on demand): `gc` calls this so that
    /// caches of versions nobody lists any more do not pile up.
    pub fn clear_listing_cache(&self) -> Result<()> {
        self.listing_cache.clear()?;
        Ok(())
    }

    /// Joins chunks of entries (in record-CID order) with their summaries, leaving out
    /// retracted records; returns the views and how many were left out. A chunk's
    /// summaries are read from the listing cache when it is of `generation`, else from
    /// the index by one ordered scan, and then cached.
    fn join_summaries(
        &self,
        chunks: Vec<(Cid, Vec<Entry>)>,
        generation: u64,
    ) -> Result<(Vec<EntryView>, usize)> {
        let mut retracted_hidden = 0;
        let mut scan = SummaryScan::new(&self.summaries);
        // Entries of one collection mostly share a publisher: ask the trust set once per run.
        let mut last_trust: Option<(String, bool)> = None;
        let mut views = Vec::with_capacity(chunks.iter().map(|(_, entries)| entries.len()).sum());
        for (chunk, entries) in chunks {
            let summaries = match self.cached_summaries(&chunk, generation, entries.len())? {
                Some(summaries) => summaries,
                None => self.summaries_by_scan(&mut scan, &chunk, &entries, generation)?,
            };
            for (entry, summary) in entries.into_iter().zip(summaries) {
                if summary.as_ref().is_some_and(|s| s.retracted) {
                    retracted_hidden += 1;
                    continue;
                }
                let trusted = match &summary {
                    None => false,
                    Some(s) => match &last_trust {
                        Some((publisher, trusted)) if *publisher == s.publisher => *trusted,
                        _ => {
                            let trusted = self.trusted.is_trusted(&s.publisher);
                            last_trust = Some((s.publisher.clone(), trusted));
                            trusted
                        }
                    },
                };
                views.push(EntryView {
                    entry,
                    summary,
                    trusted,
                });
            }
        }
        Ok((views, retracted_hidden))
    }

    /// The summaries of a chunk's entries from the listing cache, if it holds them for
    /// this generation. Cache value: generation (u64 LE), then per entry a u32 LE length
    /// (`u32::MAX` for "no record here") and the summary's index bytes.
    fn cached_summaries(
        &self,
        chunk: &Cid,
        generation: u64,
        count: usize,
    ) -> Result<Option<Vec<Option<RecordSummary>>>> {
        let Some(value) = self.listing_cache.get(chunk.to_bytes())? else {
            return Ok(None);
        };
        let Some((stored_generation, mut rest)) = value.split_first_chunk::<8>() else {
            return Ok(None);
        };
        if u64::from_le_bytes(*stored_generation) != generation {
            return Ok(None);
        }
        let mut summaries = Vec::with_capacity(count);
        while let Some((length, tail)) = rest.split_first_chunk::<4>() {
            let length = u32::from_le_bytes(*length);
            if length == u32::MAX {
                summaries.push(None);
                rest = tail;
                continue;
            }
            let Some((bytes, tail)) = tail.split_at_checked(length as usize) else {
                return Ok(None);
            };
            summaries.push(Some(decode_summary(bytes)?));
            rest = tail;
        }
        // A cache entry that does not fit the chunk is ignored and rebuilt.
        Ok((rest.is_empty() && summaries.len() == count).then_some(summaries))
    }

    fn summaries_by_scan(
        &self,
        scan: &mut SummaryScan<'_>,
        chunk: &Cid,
        entries: &[Entry],
        generation: u64,
    ) -> Result<Vec<Option<RecordSummary>>> {
        let mut cache = generation.to_le_bytes().to_vec();
        let mut summaries = Vec::with_capacity(entries.len());
        let mut key = Vec::new();
        for entry in entries {
            key.clear();
            entry
                .record
                .write_bytes(&mut key)
                .map_err(|e| damaged(format!("cannot encode CID: {e}")))?;
            match scan.get_raw(&key)? {
                Some(value) => {
                    // Index values are small: a record's title and licence are capped.
                    cache.extend_from_slice(&(value.len() as u32).to_le_bytes());
                    cache.extend_from_slice(&value);
                    summaries.push(Some(decode_summary(&value)?));
                }
                None => {
                    cache.extend_from_slice(&u32::MAX.to_le_bytes());
                    summaries.push(None);
                }
            }
        }
        self.listing_cache.insert(chunk.to_bytes(), cache)?;
        Ok(summaries)
    }

    /// Every collection known here: accepted heads and this node's own collections.
    pub fn collection_list(&self) -> Result<Vec<CollectionListing>> {
        let mut listings: Vec<CollectionListing> = Vec::new();
        for item in self.heads.iter() {
            let (key, value) = item?;
            let id_text =
                std::str::from_utf8(&key).map_err(|_| damaged("collection id is not UTF-8"))?;
            let id: CollectionId = id_text.parse()?;
            let trusted = self.trusted.is_trusted(&id.publisher_did());
            listings.push(CollectionListing {
                id,
                newest: Some(decode_newest(&value)?),
                trusted,
                draft: None,
            });
        }
        for draft in self.drafts()? {
            match listings.iter_mut().find(|l| l.id == draft.id) {
                Some(listing) => listing.draft = Some(draft.state),
                None => listings.push(CollectionListing {
                    trusted: self.trusted.is_trusted(&draft.state.publisher),
                    id: draft.id,
                    newest: None,
                    draft: Some(draft.state),
                }),
            }
        }
        listings.sort_by_key(|l| l.id.to_string());
        Ok(listings)
    }

    /// The collection's versions, newest first, following `previous` links through the block
    /// store until the first head or a head that is not available.
    pub fn history(&self, id: &CollectionId) -> Result<Vec<HistoryEntry>> {
        let (newest_seq, newest) = self
            .newest_head(id)?
            .ok_or_else(|| RecordError::UnknownCollection(id.to_string()))?;
        let mut history = Vec::new();
        let mut next = Some(newest);
        let mut expected_seq = newest_seq;
        while let Some(cid) = next.take() {
            let head = match self.load_head(&cid) {
                Ok(head) => head,
                Err(RecordError::Block(BlockError::NotFound(_))) => {
                    history.push(HistoryEntry::Missing { cid });
                    break;
                }
                Err(other) => {
                    history.push(HistoryEntry::Invalid {
                        cid,
                        reason: other.to_string(),
                    });
                    break;
                }
            };
            // Seqs must fall by at least one per step, which also bounds the walk.
            let belongs =
                head.collection_id().ok().as_ref() == Some(id) && head.seq <= expected_seq;
            if !belongs {
                history.push(HistoryEntry::Invalid {
                    cid,
                    reason: "not an earlier head of this collection".into(),
                });
                break;
            }
            expected_seq = head.seq.saturating_sub(1);
            next = head.previous;
            history.push(HistoryEntry::Version {
                cid,
                seq: head.seq,
                time: head.time,
                entry_count: head.entry_count,
                entries: head.entries,
            });
        }
        Ok(history)
    }

    /// Every block of one collection version: the head, the entry-list blocks, the records
    /// present locally, and the records' content roots.
    pub fn collection_blocks(&self, head_cid: &Cid) -> Result<CollectionBlocks> {
        let head = self.load_head(head_cid)?;
        let mut blocks = CollectionBlocks {
            head: Some(*head_cid),
            entry_blocks: entries::block_cids(&self.blocks, &head.entries)?,
            ..CollectionBlocks::default()
        };
        let mut summaries = SummaryScan::new(&self.summaries);
        for entry in entries::read_all(&self.blocks, &head.entries)? {
            match summaries.get(&entry.record.to_bytes())? {
                Some(summary) => {
                    blocks.records.push(entry.record);
                    blocks.content_roots.push(summary.content);
                }
                None => blocks.missing_records.push(entry.record),
            }
        }
        blocks.content_roots.sort_by_cached_key(|c| c.to_bytes());
        blocks.content_roots.dedup();
        Ok(blocks)
    }
}

/// Which kind a block claims to be, for routing received blocks; `None` if it has no tag.
pub fn kind_of(bytes: &[u8]) -> Option<Kind> {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(rename = "k")]
        kind: String,
    }
    let probe: Probe = serde_ipld_dagcbor::from_slice(bytes).ok()?;
    [
        Kind::Record,
        Kind::Head,
        Kind::Retraction,
        Kind::EntryRoot,
        Kind::EntryChunk,
    ]
    .into_iter()
    .find(|k| k.tag() == probe.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(i: u32) -> RecordSummary {
        RecordSummary {
            title: format!("Lesson {i} – fractions"),
            licence: "CC-BY-4.0".into(),
            publisher: "did:key:z6MkexamplePublisher".into(),
            content: cid_v1(block_codec::RAW, &i.to_le_bytes()),
            retracted: i.is_multiple_of(3),
        }
    }

    #[test]
    fn summaries_round_trip_and_refuse_damage() -> Result<()> {
        let value = encode_summary(&summary(7));
        assert_eq!(decode_summary(&value)?, summary(7));
        assert!(decode_summary(&value[..value.len() / 2]).is_err());
        let mut unknown = value.clone();
        unknown[0] = 0xa5;
        assert!(decode_summary(&unknown).is_err());
        Ok(())
    }

    #[test]
    fn summary_scan_finds_what_point_lookups_find() -> Result<()> {
        let db = sled::Config::new().temporary(true).open()?;
        let tree = db.open_tree(TREE_SUMMARIES)?;
        let key = |i: u32| cid_v1(block_codec::RAW, &i.to_le_bytes()).to_bytes();
        // Every fifth key is missing; the rest are present.
        for i in (0..500u32).filter(|i| !i.is_multiple_of(5)) {
            tree.insert(key(i), encode_summary(&summary(i)))?;
        }
        // Wanted keys in ascending order, with runs far apart so the scan has to restart.
        let mut wanted: Vec<(u32, Vec<u8>)> = (0..500u32)
            .filter(|i| i.is_multiple_of(7) || *i < 40)
            .map(|i| (i, key(i)))
            .collect();
        wanted.push((1000, key(1000)));
        wanted.sort_by(|a, b| a.1.cmp(&b.1));
        let mut scan = SummaryScan::new(&tree);
        for (i, wanted_key) in &wanted {
            let expected = (*i < 500 && !i.is_multiple_of(5)).then(|| summary(*i));
            assert_eq!(scan.get(wanted_key)?, expected, "key of {i}");
        }
        Ok(())
    }

    #[test]
    fn seq_keys_sort_by_seq_within_a_collection() {
        assert!(seq_key("a/b", 2) < seq_key("a/b", 10));
        assert!(seq_key("a/b", u64::MAX) < seq_key("a/bc", 0));
    }
}
