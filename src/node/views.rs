//! What the node's actions take and return: plain data, the same whether the action ran
//! in this process or in the daemon (the API carries these as JSON).

use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::block::cid_text;

/// Options of `add`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AddOptions {
    /// `unixfs-v1-2025` or `unixfs-v0-2015`; the repository's `add.profile` when unset.
    pub profile: Option<String>,
    /// As `ipfs add --cid-version`.
    pub cid_version: Option<u8>,
    /// As `ipfs add --chunker`: `size-N`.
    pub chunker: Option<String>,
    /// Sign a record for the content once it is stored.
    pub record: Option<RecordFields>,
}

/// The fields of a record `add` signs. Authors are `Name` or `Name <URL>`; parents are
/// record CIDs as text.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordFields {
    pub title: Option<String>,
    pub license: Option<String>,
    pub license_url: Option<String>,
    pub authors: Vec<String>,
    pub source: Option<String>,
    pub based_on: Vec<String>,
    pub changes: String,
    pub language: Option<String>,
    pub description: Option<String>,
    pub resource_types: Vec<String>,
    pub levels: Vec<String>,
    pub age: Option<String>,
    pub teaches: Vec<String>,
    pub subjects: Vec<String>,
    pub time_required: Option<String>,
    /// Publisher key to sign with; the only key when unset.
    pub key: Option<String>,
}

/// What `add` reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddEvent {
    /// File bytes read so far.
    Progress { bytes: u64 },
    /// A file or folder whose CID is known; folders come after what they hold.
    Entry {
        path: String,
        #[serde(with = "cid_text")]
        cid: Cid,
    },
}

/// What `add` stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddOutcome {
    #[serde(with = "cid_text")]
    pub root: Cid,
    /// File bytes under the root.
    pub size: u64,
    /// The signed record, when one was asked for.
    #[serde(with = "cid_text::option", default)]
    pub record: Option<Cid>,
    /// Parents whose licence terms could not be checked by machine.
    #[serde(default)]
    pub warnings: Vec<LicenceNote>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenceNote {
    #[serde(with = "cid_text")]
    pub parent: Cid,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinView {
    #[serde(with = "cid_text")]
    pub cid: Cid,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatView {
    pub repository: String,
    pub blocks: u64,
    pub inline_blocks: u64,
    pub bytes: u64,
    pub pins: u64,
    pub disk_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyView {
    pub blocks_checked: u64,
    pub bytes_checked: u64,
    /// One line per problem: what is wrong with which block.
    pub damage: Vec<String>,
}

/// What `export` writes: complete DAGs, or one collection's newest version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportTarget {
    Dags(#[serde(with = "cid_text::vec")] Vec<Cid>),
    Collection(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportView {
    pub blocks: u64,
    pub bytes: u64,
    #[serde(with = "cid_text::vec")]
    pub pinned: Vec<Cid>,
    pub records: usize,
    pub retractions: usize,
    pub collections: Vec<ImportedCollection>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedCollection {
    pub id: String,
    pub publisher: String,
    pub seq: u64,
    pub trusted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    pub name: String,
    pub did: String,
}

/// A publisher key on its way to a file: the key file's text. Secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyExport {
    pub name: String,
    pub did: String,
    pub key_file: String,
}

/// One record as `record show` prints it, or why it could not be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordShow {
    Valid(Box<RecordView>),
    Invalid {
        #[serde(with = "cid_text")]
        cid: Cid,
        reason: String,
    },
}

/// A verified record with its trust, retraction state and attribution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordView {
    #[serde(with = "cid_text")]
    pub cid: Cid,
    #[serde(with = "cid_text")]
    pub content: Cid,
    pub title: String,
    pub description: Option<String>,
    pub language: String,
    pub authors: Vec<AuthorView>,
    pub licence: LicenceView,
    pub source: Option<String>,
    pub based_on: Vec<BasedOnView>,
    pub educational: EducationalView,
    pub created: String,
    pub publisher: String,
    pub trusted: bool,
    pub retracted: bool,
    pub attribution: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorView {
    pub name: String,
    pub url: Option<String>,
}

/// A licence by SPDX id, with its name and URL where the id is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenceView {
    pub id: String,
    pub name: Option<String>,
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasedOnView {
    #[serde(with = "cid_text")]
    pub record: Cid,
    pub note: String,
}

/// LRMI / schema.org LearningResource fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EducationalView {
    pub learning_resource_type: Vec<String>,
    pub educational_level: Vec<String>,
    pub educational_use: Vec<String>,
    pub typical_age_range: Option<String>,
    pub teaches: Vec<String>,
    pub subjects: Vec<String>,
    pub time_required: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordCheck {
    #[serde(with = "cid_text")]
    pub cid: Cid,
    pub publisher: String,
    pub trusted: bool,
    pub retracted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retracted {
    #[serde(with = "cid_text")]
    pub record: Cid,
    #[serde(with = "cid_text")]
    pub retraction: Cid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionCreated {
    pub name: String,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionEdited {
    pub name: String,
    /// Entries in the (unpublished) collection after the edit.
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionPublished {
    pub name: String,
    pub id: String,
    pub seq: u64,
    pub entry_count: u64,
    #[serde(with = "cid_text")]
    pub head: Cid,
}

/// A collection's newest version as `collection show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionShow {
    pub id: String,
    pub publisher: String,
    pub trusted: bool,
    pub seq: u64,
    pub time: String,
    #[serde(with = "cid_text")]
    pub head: Cid,
    pub entries: Vec<CollectionEntryView>,
    pub retracted_hidden: usize,
    /// Versions the publisher signed twice with one number, seen here.
    #[serde(default)]
    pub equivocations: Vec<EquivocationView>,
    /// What remote pinning services (`[replication] pinning_services`) were asked to
    /// pin of this collection, published or followed here, and what they answered.
    #[serde(default)]
    pub remote_pins: Vec<crate::pinning::RemotePin>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionEntryView {
    #[serde(with = "cid_text")]
    pub record: Cid,
    /// `None` when the record has not been received here.
    pub licence: Option<String>,
    pub title: Option<String>,
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionRow {
    pub id: String,
    /// Newest version known, `None` when never published.
    pub seq: Option<u64>,
    pub trusted: bool,
    /// One of this node's own collections.
    pub own: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryRow {
    Version {
        #[serde(with = "cid_text")]
        cid: Cid,
        seq: u64,
        time: String,
        entry_count: u64,
    },
    Missing {
        #[serde(with = "cid_text")]
        cid: Cid,
    },
    Invalid {
        #[serde(with = "cid_text")]
        cid: Cid,
        reason: String,
    },
}

/// What `fetch` gets: a CID, optionally with a path below it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchOptions {
    #[serde(with = "cid_text")]
    pub cid: Cid,
    /// Below `cid` through folders; empty for `cid` itself.
    #[serde(default)]
    pub path: String,
    /// Pin what the path names for the user once all of it is here.
    #[serde(default)]
    pub pin: bool,
    /// The longest wait, in seconds, for a peer that has a missing block.
    #[serde(default)]
    pub wait_secs: Option<u64>,
}

pub use crate::exchange::Fetched;

/// The node's identity and where it accepts peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdView {
    pub peer_id: String,
    /// The running daemon's addresses, else the configured ones; each ends in
    /// `/p2p/PEER_ID`, ready for another node's `peers add`.
    pub addresses: Vec<String>,
    /// Whether the addresses are the running daemon's own.
    pub running: bool,
}

/// A connected peer as `peers` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub peer_id: String,
    pub addresses: Vec<String>,
    /// Last measured round-trip time.
    pub rtt_ms: Option<f64>,
    /// The software it says it runs.
    pub agent: Option<String>,
    pub protocol_version: Option<String>,
    /// Whether it speaks a compatible oermesh version (`None`: not known yet).
    /// Incompatible peers are listed but not used.
    pub compatible: Option<bool>,
    /// How it was found: `mdns`, `static`, `dht`, `inbound`, `dial`.
    pub found_by: Vec<String>,
}

/// A static peer added or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticPeerEdit {
    pub addr: String,
    /// Whether a running daemon took the change at once (else it applies at start).
    pub running: bool,
}

/// A collection followed (or no longer followed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowView {
    pub id: String,
    pub publisher: String,
    /// Newest version known here, if any.
    pub seq: Option<u64>,
    /// Whether the resources' blocks are kept too (not only the metadata).
    pub content: bool,
    /// Whether a running daemon took the change at once (else it applies at start).
    pub running: bool,
    /// False when nothing changed (already followed / was not followed).
    pub changed: bool,
}

/// A followed collection as `follow list` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowRow {
    pub id: String,
    /// What is kept: `metadata` (head, entry list, records).
    pub mode: String,
    pub since: String,
    /// Newest version known here, and its entry count.
    pub seq: Option<u64>,
    pub entries: Option<u64>,
    /// Whether the publisher is still trusted (heads of untrusted ones are ignored).
    pub trusted: bool,
    /// Versions the publisher signed twice with one number, seen here.
    pub equivocations: Vec<EquivocationView>,
    /// `metadata only`, `waiting for a first version`, `syncing`, `complete`, `stalled`
    /// or `paused` (no daemon runs).
    pub state: String,
    /// Why it is stalled or paused.
    pub reason: Option<String>,
    /// How much of the newest version's content is here (content mode, once a version
    /// is known).
    pub content: Option<ContentProgress>,
}

/// How much of a version's content is here; retracted resources are not counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentProgress {
    pub resources: u64,
    /// Resources whose whole DAG is here and pinned for the collection.
    pub complete: u64,
    pub bytes_held: u64,
    /// Over the resources whose size is known (their root block is here).
    pub bytes_total: u64,
    /// Resources whose root block has not arrived, so whose size is not known yet.
    pub sizes_unknown: u64,
}

/// `follow status`: a followed collection's newest version, resource by resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowStatusView {
    pub id: String,
    pub mode: String,
    pub seq: Option<u64>,
    pub state: String,
    pub reason: Option<String>,
    pub content: Option<ContentProgress>,
    pub resources: Vec<ResourceView>,
    /// What remote pinning services (`[replication] pinning_services`) were asked to
    /// pin of this collection, and where each request stands.
    #[serde(default)]
    pub remote_pins: Vec<crate::pinning::RemotePin>,
}

/// One resource of a followed collection's newest version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceView {
    #[serde(with = "cid_text")]
    pub record: Cid,
    #[serde(with = "cid_text")]
    pub content: Cid,
    pub title: String,
    pub path: Option<String>,
    /// `complete` (every block here, pinned for the collection), `missing`, or
    /// `retracted` (withdrawn by its publisher: not kept).
    pub state: String,
    pub bytes_held: u64,
    /// `None` while the resource's root block is not here.
    pub bytes_total: Option<u64>,
    /// For a collection a replication group keeps, while the daemon runs: how many
    /// members (this node included) hold it, counting only claims not disproved.
    #[serde(default)]
    pub replicas: Option<u32>,
}

/// Evidence that a publisher signed two different heads with the same version number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EquivocationView {
    pub seq: u64,
    #[serde(with = "cid_text")]
    pub known: Cid,
    #[serde(with = "cid_text")]
    pub conflicting: Cid,
}

/// `group status`: the replication group this node is in, as it sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatusView {
    pub name: String,
    /// This node's peer id.
    pub peer_id: String,
    /// Whether a daemon runs: without one, other members' holdings are not known.
    pub running: bool,
    pub members: Vec<GroupMemberView>,
    pub collections: Vec<GroupCollectionView>,
}

/// Another member of the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMemberView {
    pub peer_id: String,
    /// It told this node what it holds recently.
    pub reachable: bool,
    /// Its claims count: its last challenge did not fail or go unanswered.
    pub counted: bool,
    /// The free space it last reported.
    pub free_bytes: Option<u64>,
    /// Its last challenges, oldest first.
    pub challenges: Vec<GroupChallengeView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupChallengeView {
    /// RFC 3339.
    pub at: String,
    #[serde(with = "cid_text")]
    pub resource: Cid,
    /// `passed`, `failed` or `unanswered`.
    pub outcome: String,
    pub reason: Option<String>,
}

/// A collection the group keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCollectionView {
    pub id: String,
    /// The target: members that should hold each resource.
    pub replicas: u32,
    /// The newest version known here; `None` before one is.
    pub seq: Option<u64>,
    /// Live resources of that version.
    pub resources: u64,
    /// Those this node holds.
    pub held_here: u64,
    /// Those held by at least `replicas` members.
    pub at_target: u64,
    /// Those held by fewer, each with its holders.
    pub below: Vec<GroupResourceView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupResourceView {
    #[serde(with = "cid_text")]
    pub content: Cid,
    pub title: String,
    /// Peer ids of the members whose copies count.
    pub holders: Vec<String>,
}
