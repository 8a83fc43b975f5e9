//! Every way a record-layer object can be refused, each with its own variant.

use cid::Cid;

use super::licence::LicenceConflict;
use crate::block::BlockError;
use crate::keys::KeyError;

/// The kinds of objects the record layer encodes. Each has its own tag, size cap and (for
/// signed kinds) signing domain, so an object of one kind is never taken for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Record,
    Head,
    Retraction,
    EntryRoot,
    EntryChunk,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Record => "resource record",
            Kind::Head => "collection head",
            Kind::Retraction => "retraction",
            Kind::EntryRoot => "entry-list root",
            Kind::EntryChunk => "entry-list chunk",
        })
    }
}

/// Why a record, head, retraction or entry list was refused, or a record-layer operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{kind} is {size} bytes, above the limit of {limit} bytes")]
    TooLarge {
        kind: Kind,
        size: usize,
        limit: usize,
    },
    #[error("{kind} is not valid DAG-CBOR: {reason}")]
    MalformedCbor { kind: Kind, reason: String },
    #[error("{kind} is not a CBOR map")]
    NotAMap { kind: Kind },
    #[error("expected a {expected} (tag {expected_tag:?}) but found tag {found:?}")]
    WrongKind {
        expected: Kind,
        expected_tag: &'static str,
        found: String,
    },
    #[error("{kind} has unknown field {field:?}")]
    UnknownField { kind: Kind, field: String },
    #[error("{kind} lacks required field {field:?}")]
    MissingField { kind: Kind, field: String },
    #[error("{kind} has a field of the wrong type or shape: {reason}")]
    InvalidField { kind: Kind, reason: String },
    #[error("{kind} is not in canonical DAG-CBOR form (re-encoding gives different bytes)")]
    NonCanonical { kind: Kind },
    #[error("licence {0:?} is not accepted: use one of the listed Creative Commons ids, or LicenseRef-... with a licence URL")]
    UnknownLicence(String),
    #[error("licence {0} needs a licence URL (field \"lu\")")]
    LicenceUrlMissing(String),
    #[error("licence {0} has a fixed canonical URL; a licence URL (field \"lu\") is only for LicenseRef-... licences")]
    LicenceUrlNotAllowed(String),
    #[error("language tag {tag:?} is not valid BCP 47: {reason}")]
    InvalidLanguage { tag: String, reason: String },
    #[error("time required {0:?} is not an ISO 8601 duration such as PT45M or P1DT2H")]
    InvalidDuration(String),
    #[error("typical age range {0:?} is not of the form 7-10, 16- or 12")]
    InvalidAgeRange(String),
    #[error("time {0:?} is not an RFC 3339 UTC time of the form 2024-05-01T12:00:00Z")]
    InvalidTime(String),
    #[error("{field} {url:?} is not an acceptable URL: {reason}")]
    InvalidUrl {
        field: &'static str,
        url: String,
        reason: String,
    },
    #[error("{field} {reason}")]
    InvalidText { field: &'static str, reason: String },
    #[error("publisher: {0}")]
    InvalidPublisher(#[from] KeyError),
    #[error("{kind} signature does not verify against its publisher {publisher}")]
    BadSignature { kind: Kind, publisher: String },
    #[error(transparent)]
    LicenceConflict(#[from] Box<LicenceConflict>),
    #[error("parent record {0} is not in the local store, so its licence cannot be checked; fetch it first")]
    ParentMissing(Cid),
    #[error("parent record {cid} is invalid: {reason}")]
    ParentInvalid { cid: Cid, reason: String },
    #[error("invalid collection id {id:?}: {reason}")]
    InvalidCollectionId { id: String, reason: String },
    #[error("invalid collection name {0:?}: use 1 to 64 characters from a-z 0-9 - starting with a letter or digit")]
    InvalidCollectionName(String),
    #[error("collection head has an inconsistent sequence: {0}")]
    InvalidSequence(&'static str),
    #[error("head seq {got} of {collection} is not above the newest known seq {newest} (replay)")]
    Replay {
        collection: String,
        newest: u64,
        got: u64,
    },
    #[error("EQUIVOCATION: {} published two different heads with seq {}: {} and {}; both kept as evidence", .0.collection, .0.seq, .0.known, .0.conflicting)]
    Equivocation(Box<Equivocation>),
    #[error("retraction of {} is signed by {}, but the record was published by {}", .0.record, .0.retractor, .0.publisher)]
    RetractionByOtherKey(Box<ForeignRetraction>),
    #[error("record {0} is not known locally")]
    UnknownRecord(Cid),
    #[error("collection {0} is not known locally")]
    UnknownCollection(String),
    #[error("a local collection named {0:?} already exists")]
    DraftExists(String),
    #[error("no local collection named {0:?}")]
    NoSuchDraft(String),
    #[error("collection {name:?} is published by {expected}, but the key given is {got}")]
    KeyMismatch {
        name: String,
        expected: String,
        got: String,
    },
    #[error("entry list would hold {count} entries, above the limit of {limit}")]
    TooManyEntries { count: u64, limit: u64 },
    #[error("entry list is inconsistent: {0}")]
    InvalidEntryList(String),
    #[error("local record-layer state is damaged: {0}")]
    DamagedState(String),
    #[error("could not encode {kind}: {reason}")]
    Encode { kind: Kind, reason: String },
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("local database: {0}")]
    Store(#[from] sled::Error),
}

pub type Result<T, E = RecordError> = std::result::Result<T, E>;

/// Two different heads signed by one publisher for the same collection and seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Equivocation {
    pub collection: String,
    pub seq: u64,
    pub known: Cid,
    pub conflicting: Cid,
}

/// A retraction signed by someone other than the record's publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignRetraction {
    pub record: Cid,
    pub publisher: String,
    pub retractor: String,
}
