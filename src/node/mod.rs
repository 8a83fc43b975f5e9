//! The node's service layer: one type, [`Node`], with one method per user action.
//!
//! The command line calls these methods directly when no daemon runs; the daemon's API
//! calls the very same methods for clients that talk to it. Whatever a user can see
//! (what is pinned, when a store is flushed, what a refused signature leaves behind) is
//! decided here, once. Methods block: the daemon runs them on its blocking pool.

pub mod error;
pub mod follow;
mod group;
mod network;
pub mod service;
pub mod views;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use cid::Cid;
use ed25519_dalek::SigningKey;

use crate::block::BlockGet;
use crate::config::Config;
use crate::keys;
use crate::records::book::HistoryEntry;
use crate::records::provenance::ProvenanceNode;
use crate::records::{
    Author, BasedOn, CollectionId, Educational, Entry, Record, RecordBook, RecordDraft,
};
use crate::repo::Repo;
use crate::store::Store;
use crate::unixfs::importer::{self, ImportError, Imported, TreeBuilder, TreeSink};
use crate::unixfs::profile::Profile;

pub use error::{one_line, ErrorCode, NodeError};
pub use group::RepairedCopy;
pub use service::Service;
pub use views::*;

pub type Result<T, E = NodeError> = std::result::Result<T, E>;

/// An open node: the repository and everything built on it. Cheap to clone; every clone
/// is the same node. Holding one holds the repository's lock.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    repo: Repo,
    config: RwLock<Config>,
    /// Rebuilt whenever the trusted publishers change (config or this node's own keys).
    records: RwLock<Arc<RecordBook<Store>>>,
    /// Edits of this node's own collections, publishing included, one at a time: a
    /// version number is never handed out twice.
    collection_edits: Mutex<()>,
    /// Trust, key and static-peer changes, one at a time, so that config.toml and the
    /// trusted set never lose an edit.
    trust_edits: Mutex<()>,
    /// The running daemon's network, while there is one.
    online: RwLock<Option<crate::daemon::Online>>,
}

impl Node {
    /// Opens the repository at `root`, taking its lock.
    pub fn open(root: &Path) -> Result<Node> {
        Node::from_repo(Repo::open(root)?)
    }

    /// Creates a repository at `root` and opens it.
    pub fn init(root: &Path) -> Result<Node> {
        Node::from_repo(Repo::init(root)?)
    }

    /// Opens the repository, creating it first if there is none (the daemon's start).
    /// The flag says whether it was created.
    pub fn open_or_init(root: &Path) -> Result<(Node, bool)> {
        let (repo, created) = Repo::open_or_init(root)?;
        Ok((Node::from_repo(repo)?, created))
    }

    pub fn from_repo(repo: Repo) -> Result<Node> {
        let config = repo.config().clone();
        let records = Arc::new(repo.records()?);
        Ok(Node {
            inner: Arc::new(Inner {
                repo,
                config: RwLock::new(config),
                records: RwLock::new(records),
                collection_edits: Mutex::new(()),
                trust_edits: Mutex::new(()),
                online: RwLock::new(None),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        self.inner.repo.root()
    }

    /// How many handles of this node exist: the daemon waits for its tasks' handles to
    /// go before it reports the repository released.
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    pub fn store(&self) -> &Store {
        self.inner.repo.store()
    }

    /// The record layer, with this node's current trusted publishers.
    pub fn records(&self) -> Arc<RecordBook<Store>> {
        self.inner
            .records
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The configuration as loaded at start, with edits made since (trust).
    pub fn config(&self) -> Config {
        self.inner
            .config
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Marks the repository as held by a daemon (see [`Repo::mark_daemon`]).
    pub fn mark_daemon(&self) -> Result<()> {
        Ok(self.inner.repo.mark_daemon()?)
    }

    pub fn node_key_path(&self) -> PathBuf {
        self.inner.repo.node_key_path()
    }

    fn keys_dir(&self) -> PathBuf {
        self.inner.repo.keys_dir()
    }

    /// Re-reads the trusted set (config plus own keys) into a fresh record book.
    fn refresh_trust(&self) -> Result<()> {
        let mut trusted_dids = self.config().trust.publishers;
        let keys_dir = self.keys_dir();
        if keys_dir.is_dir() {
            trusted_dids.extend(keys::list(&keys_dir)?.into_iter().map(|key| key.did));
        }
        let trusted = crate::records::TrustedPublishers::new(trusted_dids.iter())?;
        let book = RecordBook::open(self.store().db(), self.store().clone(), trusted)?;
        *self
            .inner
            .records
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(book);
        Ok(())
    }

    // ---- files ----

    /// Adds a file or folder tree and pins its root for the user, then signs a record for
    /// it when `options.record` asks for one. `feed` hands the tree over (a folder before
    /// what it holds, depth first); `events` hears progress and each finished entry.
    ///
    /// Nothing is pinned or reported as added until every block is durable. When the
    /// record is refused, the content goes back to unpinned (unless it was pinned before),
    /// so the repository is as it was.
    pub fn add(
        &self,
        options: &AddOptions,
        feed: &mut dyn FnMut(&mut AddSession<'_>) -> Result<()>,
        events: &mut dyn FnMut(AddEvent),
    ) -> Result<AddOutcome> {
        let profile = self.profile(options)?;
        let events = std::cell::RefCell::new(events);
        let batch = self.store().batch();
        let started = std::time::Instant::now();
        let mut on_entry = |path: &str, imported: &Imported| {
            (events.borrow_mut())(AddEvent::Entry {
                path: path.to_string(),
                cid: imported.cid,
            })
        };
        let progress = |bytes: u64| (events.borrow_mut())(AddEvent::Progress { bytes });
        let mut session = AddSession {
            builder: TreeBuilder::new(&profile, &batch, &mut on_entry, &progress),
        };
        feed(&mut session)?;
        let root = session.builder.finish()?;
        tracing::debug!(bytes = root.size, elapsed = ?started.elapsed(), "imported");
        let pinned_before = !self.store().pin_reasons(&root.cid)?.is_empty();
        batch.commit_and_pin(&[root.cid], "user")?;
        let mut outcome = AddOutcome {
            root: root.cid,
            size: root.size,
            record: None,
            warnings: Vec::new(),
        };
        if let Some(fields) = &options.record {
            match self.sign_for_content(root.cid, fields) {
                Ok((record, warnings)) => {
                    outcome.record = Some(record);
                    outcome.warnings = warnings;
                }
                Err(err) => {
                    if !pinned_before {
                        self.store().unpin(&root.cid, Some("user"))?;
                    }
                    return Err(err);
                }
            }
        }
        Ok(outcome)
    }

    /// The block layout `add` uses for `options`.
    pub fn profile(&self, options: &AddOptions) -> Result<Profile> {
        let default = self.config().add.profile;
        resolve_profile(options, &default)
    }

    /// A block's verified bytes.
    pub fn block(&self, cid: &Cid) -> Result<Vec<u8>> {
        Ok(self.store().get_block(cid)?)
    }

    /// Writes the file `cid` to `out`, every block checked against its CID, and returns
    /// its length.
    pub fn cat(&self, cid: &Cid, out: &mut dyn Write) -> Result<u64> {
        Ok(crate::unixfs::reader::read_file(self.store(), cid, out)?)
    }

    /// Checks that what `options` names is all in the store, and pins it when asked.
    /// Peers are reached through a running daemon, whose API fetches what is missing;
    /// without one, a missing block is an error that says so.
    pub fn fetch(&self, options: &FetchOptions) -> Result<Fetched> {
        let checked =
            crate::exchange::fetch::check_here(self.store(), &options.cid, &options.path)?;
        match checked {
            Ok(target) => {
                if options.pin {
                    self.store().pin(&target, "user")?;
                }
                Ok(Fetched {
                    root: options.cid,
                    target,
                    blocks: 0,
                    bytes: 0,
                    peers: 0,
                })
            }
            Err(missing) => Err(NodeError::not_found(format!(
                "block {missing} of {} is not in the store (a running daemon fetches it from peers: `oermesh daemon`)",
                options.cid
            ))),
        }
    }

    // ---- pins, gc, stat, verify ----

    pub fn pins(&self) -> Result<Vec<PinView>> {
        Ok(self
            .store()
            .pins()?
            .into_iter()
            .map(|(cid, reasons)| PinView { cid, reasons })
            .collect())
    }

    /// Pins a CID for the user; its root block must be here.
    pub fn pin_add(&self, cid: &Cid) -> Result<()> {
        if !self.store().has(cid)? {
            return Err(NodeError::not_found(format!(
                "cannot pin {cid}: its root block is not in the store (add or import it first)"
            )));
        }
        self.store().pin(cid, "user")?;
        Ok(())
    }

    /// Removes the user's pins (`user` and `import`) of a CID; returns what still holds it.
    pub fn pin_rm(&self, cid: &Cid) -> Result<Vec<String>> {
        if self.store().pin_reasons(cid)?.is_empty() {
            return Err(NodeError::not_found(format!("{cid} is not pinned")));
        }
        self.store().unpin(cid, Some("user"))?;
        Ok(self.store().unpin(cid, Some("import"))?)
    }

    /// Removes every block that neither a pin nor the record layer holds.
    /// The record layer's roots are read once the gc has begun (see `Store::gc_with`).
    pub fn gc(&self) -> Result<crate::store::GcReport> {
        let book = self.records();
        book.clear_listing_cache()?;
        let report = self.store().gc_with(|| present_roots(&book), |_| {})?;
        // Room freed may let a fetch stopped by a full disk or the quota go on.
        self.wake_mirror();
        Ok(report)
    }

    pub fn stat(&self) -> Result<StatView> {
        let stat = self.store().stat()?;
        Ok(StatView {
            repository: self.root().display().to_string(),
            blocks: stat.blocks,
            inline_blocks: stat.inline_blocks,
            bytes: stat.bytes,
            pins: stat.pins,
            disk_bytes: stat.disk_bytes,
        })
    }

    /// Re-hashes every block and checks that every pinned or record-layer DAG is complete.
    pub fn verify(&self) -> Result<VerifyView> {
        let book = self.records();
        let report = self.store().verify_with(|| present_roots(&book))?;
        Ok(VerifyView {
            blocks_checked: report.blocks_checked,
            bytes_checked: report.bytes_checked,
            damage: report.damage.iter().map(ToString::to_string).collect(),
        })
    }

    // ---- CAR files ----

    /// Writes a CARv1: complete DAGs, or a collection's newest version with everything it
    /// needs. Nothing is written when a root is missing.
    pub fn export(
        &self,
        target: &ExportTarget,
        out: &mut dyn Write,
    ) -> Result<crate::car::ExportSummary> {
        match target {
            ExportTarget::Collection(id) => {
                let id = parse_collection_id(id)?;
                Ok(crate::transfer::export_collection(
                    self.store(),
                    &self.records(),
                    &id,
                    out,
                )?)
            }
            ExportTarget::Dags(roots) => {
                for root in roots {
                    if !self.store().has(root)? {
                        return Err(NodeError::not_found(format!(
                            "cannot export {root}: it is not in the store"
                        )));
                    }
                }
                Ok(crate::car::export_dag(self.store(), roots, out)?)
            }
        }
    }

    /// Imports a CAR: every block verified, every signature checked, all or nothing.
    pub fn import(&self, input: &mut dyn Read) -> Result<ImportView> {
        let report = crate::transfer::import_car(self.store(), &self.records(), input)?;
        for (id, _, _) in &report.collections {
            self.announce(id);
        }
        Ok(ImportView {
            blocks: report.blocks,
            bytes: report.bytes,
            pinned: report.pinned,
            records: report.records,
            retractions: report.retractions,
            collections: report
                .collections
                .into_iter()
                .map(|(id, seq, trusted)| ImportedCollection {
                    publisher: id.publisher_did(),
                    id: id.to_string(),
                    seq,
                    trusted,
                })
                .collect(),
        })
    }

    // ---- keys ----

    pub fn key_gen(&self, name: &str) -> Result<KeyView> {
        let _edits = self.lock_trust_edits();
        let info = keys::generate(&self.keys_dir(), name)?;
        self.refresh_trust()?;
        Ok(KeyView {
            name: info.name,
            did: info.did,
        })
    }

    pub fn key_list(&self) -> Result<Vec<KeyView>> {
        Ok(keys::list(&self.keys_dir())?
            .into_iter()
            .map(|info| KeyView {
                name: info.name,
                did: info.did,
            })
            .collect())
    }

    /// A key's file text, to be written elsewhere (a backup, another machine).
    pub fn key_export(&self, name: &str) -> Result<KeyExport> {
        let key = keys::load(&self.keys_dir(), name)?;
        Ok(KeyExport {
            name: name.to_string(),
            did: keys::did_key(&key.verifying_key()),
            key_file: keys::key_file_text(&key),
        })
    }

    /// Adds a key from a key file's text, as `name`.
    pub fn key_import(&self, name: &str, key_file: &str) -> Result<KeyView> {
        let key = keys::parse_key_file_text(key_file).map_err(|reason| {
            NodeError::invalid(format!("not a valid oermesh key file: {reason}"))
        })?;
        let _edits = self.lock_trust_edits();
        let info = keys::store_key(&self.keys_dir(), name, &key)?;
        self.refresh_trust()?;
        Ok(KeyView {
            name: info.name,
            did: info.did,
        })
    }

    /// The publisher key named, or the only one there is.
    fn signing_key(&self, name: Option<&str>) -> Result<(String, SigningKey)> {
        let dir = self.keys_dir();
        let name = match name {
            Some(name) => name.to_string(),
            None => match keys::list(&dir)?.as_slice() {
                [] => {
                    return Err(NodeError::not_found(
                        "no publisher key yet: create one with `oermesh key gen NAME`",
                    ))
                }
                [only] => only.name.clone(),
                several => {
                    return Err(NodeError::invalid(format!(
                        "several publisher keys ({}): choose one with --key",
                        several
                            .iter()
                            .map(|k| k.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            },
        };
        let key = keys::load(&dir, &name)?;
        Ok((name, key))
    }

    // ---- records ----

    /// Signs a record for content already stored. Returns its CID and the licence notes.
    fn sign_for_content(
        &self,
        content: Cid,
        fields: &RecordFields,
    ) -> Result<(Cid, Vec<LicenceNote>)> {
        let title = fields
            .title
            .clone()
            .ok_or_else(|| NodeError::invalid("a record needs --title"))?;
        let licence = fields.license.clone().ok_or_else(|| {
            NodeError::invalid("a record needs --license (an SPDX id such as CC-BY-4.0)")
        })?;
        if fields.authors.is_empty() {
            return Err(NodeError::invalid("a record needs at least one --author"));
        }
        let authors = fields
            .authors
            .iter()
            .map(|a| parse_author(a))
            .collect::<Result<Vec<_>>>()?;
        let based_on = fields
            .based_on
            .iter()
            .map(|text| {
                Ok(BasedOn {
                    record: parse_cid(text)?,
                    note: fields.changes.clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let draft = RecordDraft {
            content,
            title,
            description: fields.description.clone(),
            language: fields.language.clone().unwrap_or_else(|| "und".to_string()),
            authors,
            licence,
            licence_url: fields.license_url.clone(),
            source: fields.source.clone(),
            based_on,
            educational: Educational {
                learning_resource_type: fields.resource_types.clone(),
                educational_level: fields.levels.clone(),
                educational_use: Vec::new(),
                typical_age_range: fields.age.clone(),
                teaches: fields.teaches.clone(),
                subjects: fields.subjects.clone(),
                time_required: fields.time_required.clone(),
            },
            created: None,
        };
        let (_, key) = self.signing_key(fields.key.as_deref())?;
        let signed = self.records().sign_record(&key, draft)?;
        self.store().flush()?;
        let warnings = signed
            .warnings
            .into_iter()
            .map(|warning| LicenceNote {
                parent: warning.parent,
                message: warning.message,
            })
            .collect();
        Ok((signed.cid, warnings))
    }

    /// A record, or every record describing a content CID.
    pub fn record_show(&self, cid: &Cid) -> Result<Vec<RecordShow>> {
        let book = self.records();
        if cid.codec() == crate::block::codec::DAG_CBOR {
            return Ok(vec![RecordShow::Valid(Box::new(record_view(
                book.show_record(cid)?,
            )))]);
        }
        let listings = book.records_for_content(cid)?;
        if listings.is_empty() {
            return Err(NodeError::not_found(format!("no record describes {cid}")));
        }
        Ok(listings
            .iter()
            .map(|listing| match book.show_record(&listing.cid) {
                Ok(view) => RecordShow::Valid(Box::new(record_view(view))),
                Err(err) => RecordShow::Invalid {
                    cid: listing.cid,
                    reason: one_line(&err),
                },
            })
            .collect())
    }

    /// Re-checks a stored record: block, strict decoding, signature.
    pub fn record_verify(&self, cid: &Cid) -> Result<RecordCheck> {
        let book = self.records();
        let record = match book.verify_record(cid) {
            Ok(record) => record,
            Err(err) => {
                let message = format!("record {cid} does not verify: {}", one_line(&err));
                return Err(NodeError::refused(NodeError::from(err).code(), message));
            }
        };
        Ok(RecordCheck {
            cid: *cid,
            trusted: book.is_trusted(&record.publisher),
            publisher: record.publisher,
            retracted: book.is_retracted(cid)?,
        })
    }

    /// Signs a retraction of one of this node's records.
    pub fn record_retract(&self, cid: &Cid, reason: &str, key: Option<&str>) -> Result<Retracted> {
        let (_, key) = self.signing_key(key)?;
        let retraction = self.records().retract(&key, cid, reason)?;
        self.store().flush()?;
        Ok(Retracted {
            record: *cid,
            retraction,
        })
    }

    /// The is-based-on tree of a record; problems are nodes of the tree, not errors.
    pub fn provenance(&self, cid: &Cid) -> Result<ProvenanceNode> {
        Ok(self.records().provenance(cid))
    }

    // ---- collections ----

    fn lock_collection_edits(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .collection_edits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_trust_edits(&self) -> std::sync::MutexGuard<'_, ()> {
        self.inner
            .trust_edits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn collection_create(&self, name: &str, key: Option<&str>) -> Result<CollectionCreated> {
        let (key_name, key) = self.signing_key(key)?;
        let _edits = self.lock_collection_edits();
        let id = self
            .records()
            .create_collection(name, &key_name, &key.verifying_key())?;
        self.store().flush()?;
        Ok(CollectionCreated {
            name: name.to_string(),
            id: id.to_string(),
        })
    }

    /// Adds records (or content that exactly one record describes) to a collection.
    pub fn collection_add(
        &self,
        name: &str,
        cids: &[String],
        path: Option<&str>,
        title: Option<&str>,
    ) -> Result<CollectionEdited> {
        if cids.len() > 1 && (path.is_some() || title.is_some()) {
            return Err(NodeError::invalid(
                "--path and --title apply to one entry: add one CID at a time to set them",
            ));
        }
        let book = self.records();
        let mut entries = Vec::with_capacity(cids.len());
        for text in cids {
            let mut entry = Entry::new(entry_record(&book, text)?);
            entry.path = path.map(str::to_string);
            entry.title = title.map(str::to_string);
            entries.push(entry);
        }
        let _edits = self.lock_collection_edits();
        let outcome = book.add_entries(name, entries)?;
        self.store().flush()?;
        Ok(CollectionEdited {
            name: name.to_string(),
            count: outcome.count,
        })
    }

    /// Removes a record from a collection.
    pub fn collection_rm(&self, name: &str, cid: &Cid) -> Result<CollectionEdited> {
        let _edits = self.lock_collection_edits();
        let book = self.records();
        if !book.remove_entry(name, cid)? {
            return Err(NodeError::not_found(format!(
                "{cid} is not in collection {name}"
            )));
        }
        self.store().flush()?;
        Ok(CollectionEdited {
            name: name.to_string(),
            count: book.draft_info(name)?.state.entry_count,
        })
    }

    /// Signs the next version of one of this node's collections.
    pub fn collection_publish(&self, name: &str) -> Result<CollectionPublished> {
        let _edits = self.lock_collection_edits();
        let book = self.records();
        let info = book.draft_info(name)?;
        let key = keys::load(&self.keys_dir(), &info.state.key_name)?;
        let published = book.publish(name, &key)?;
        book.warm_listing(&published.id);
        self.store().flush()?;
        self.announce(&published.id);
        Ok(CollectionPublished {
            name: name.to_string(),
            id: published.id.to_string(),
            seq: published.seq,
            entry_count: published.entry_count,
            head: published.head,
        })
    }

    /// A collection's newest version, retracted entries hidden.
    pub fn collection_show(&self, id: &str) -> Result<CollectionShow> {
        let id = parse_collection_id(id)?;
        let view = self
            .records()
            .collection_show(&id)
            .map_err(|err| match err {
                crate::records::RecordError::UnknownCollection(_) => {
                    NodeError::not_found(format!("no published version of {id} is known here"))
                }
                other => other.into(),
            })?;
        Ok(CollectionShow {
            id: view.id.to_string(),
            publisher: view.id.publisher_did(),
            trusted: view.trusted,
            seq: view.seq,
            time: view.time,
            head: view.head,
            retracted_hidden: view.retracted_hidden,
            equivocations: follow::equivocation_views(&self.records(), &view.id)?,
            remote_pins: self.remote_pins(&view.id)?,
            entries: view
                .entries
                .iter()
                .map(|entry| CollectionEntryView {
                    record: entry.entry.record,
                    licence: entry.summary.as_ref().map(|s| s.licence.clone()),
                    title: entry.title().map(str::to_string),
                    path: entry.entry.path.clone(),
                })
                .collect(),
        })
    }

    /// Collections known here: this node's own and those received.
    pub fn collection_list(&self) -> Result<Vec<CollectionRow>> {
        Ok(self
            .records()
            .collection_list()?
            .into_iter()
            .map(|listing| CollectionRow {
                id: listing.id.to_string(),
                seq: listing.newest.map(|(seq, _)| seq),
                trusted: listing.trusted,
                own: listing.draft.is_some(),
            })
            .collect())
    }

    /// A collection's versions, newest first.
    pub fn collection_history(&self, id: &str) -> Result<Vec<HistoryRow>> {
        let id = parse_collection_id(id)?;
        Ok(self
            .records()
            .history(&id)?
            .into_iter()
            .map(|step| match step {
                HistoryEntry::Version {
                    cid,
                    seq,
                    time,
                    entry_count,
                    ..
                } => HistoryRow::Version {
                    cid,
                    seq,
                    time,
                    entry_count,
                },
                HistoryEntry::Missing { cid } => HistoryRow::Missing { cid },
                HistoryEntry::Invalid { cid, reason } => HistoryRow::Invalid { cid, reason },
            })
            .collect())
    }

    // ---- trust ----

    /// Trusts a publisher (a did:key, or the publisher of a collection id). Returns its did.
    pub fn trust_add(&self, publisher: &str) -> Result<String> {
        let did = normalize_publisher(publisher)?;
        let _edits = self.lock_trust_edits();
        let mut publishers = self.config().trust.publishers;
        if !publishers.contains(&did) {
            publishers.push(did.clone());
            self.save_trusted(publishers)?;
        }
        Ok(did)
    }

    /// Stops trusting a publisher. Returns its did.
    pub fn trust_rm(&self, publisher: &str) -> Result<String> {
        let did = normalize_publisher(publisher)?;
        let _edits = self.lock_trust_edits();
        let mut publishers = self.config().trust.publishers;
        let before = publishers.len();
        publishers.retain(|p| *p != did);
        if publishers.len() == before {
            return Err(NodeError::not_found(format!("{did} is not trusted")));
        }
        self.save_trusted(publishers)?;
        Ok(did)
    }

    pub fn trust_list(&self) -> Result<Vec<String>> {
        Ok(self.config().trust.publishers)
    }

    fn save_trusted(&self, publishers: Vec<String>) -> Result<()> {
        Config::save_trusted(&self.inner.repo.config_path(), &publishers)
            .map_err(crate::repo::RepoError::from)?;
        self.inner
            .config
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .trust
            .publishers = publishers;
        self.refresh_trust()
    }
}

/// What the record layer keeps, as gc and verify take it.
fn record_roots(book: &RecordBook<Store>) -> Result<crate::store::GcRoots> {
    let roots = book.gc_roots()?;
    Ok(crate::store::GcRoots {
        keep: roots.keep,
        let_go: roots.retracted,
    })
}

/// What `gc` keeps and `verify` walks: the record layer's roots, except what a node
/// may lack by design (gc would otherwise stop at the first block missing below a root,
/// on every mirror halfway through a version and every node that follows metadata
/// only). A record describes content this node need not keep (a collection followed
/// for its metadata, a mirror halfway through a version: the block exchange writes a
/// DAG's root last), so content is required whole once its root is here. A follower
/// that joined at version N has no version before N, so a head's chain of previous
/// versions is required only as far back as it is here. What is here is re-hashed
/// all the same.
fn present_roots(book: &RecordBook<Store>) -> Result<crate::store::GcRoots> {
    let mut roots = record_roots(book)?;
    let store = book.blocks();
    for item in book.summaries() {
        let (_, summary) = item?;
        if !store.has(&summary.content)? {
            roots.let_go.push(summary.content);
        }
    }
    let candidates: Vec<Cid> = roots
        .keep
        .iter()
        .filter(|cid| cid.codec() == crate::block::codec::DAG_CBOR)
        .copied()
        .collect();
    for mut current in candidates {
        // A root that is missing is named by the walk; only earlier versions may lack.
        while let Ok(bytes) = store.get_block(&current) {
            if crate::records::codec::kind_of(&bytes) != Some(crate::records::Kind::Head) {
                break;
            }
            let previous = crate::records::Head::decode_and_verify(&bytes)
                .ok()
                .and_then(|head| head.previous);
            let Some(previous) = previous else {
                break;
            };
            if !store.has(&previous)? {
                roots.let_go.push(previous);
                break;
            }
            current = previous;
        }
    }
    Ok(roots)
}

/// Where an `add` puts what it is handed: a [`TreeSink`] for trees walked on this machine,
/// and [`AddSession::file_from`] for bytes that arrive from elsewhere.
pub struct AddSession<'a> {
    builder: TreeBuilder<'a, crate::store::WriteBatch>,
}

impl AddSession<'_> {
    /// Opens a folder; what it holds follows.
    pub fn dir(&mut self, path: &str) -> Result<()> {
        Ok(self.builder.dir(path)?)
    }

    /// A file whose bytes come from `content` (`size` of them, if known; 0 otherwise).
    /// `source` names where they come from, for messages.
    pub fn file_from(
        &mut self,
        path: &str,
        content: &mut (dyn Read + Send),
        size: u64,
        source: &str,
    ) -> Result<()> {
        let source = source.to_string();
        self.builder
            .file(path, content, size, &|err| ImportError::Unreadable {
                path: PathBuf::from(&source),
                source: err,
            })?;
        Ok(())
    }
}

impl AddSession<'_> {
    /// A regular file handed over open (see [`TreeBuilder::file_at`]); `interrupt` can
    /// stop the add between reads.
    pub fn file_at(
        &mut self,
        path: &str,
        file: &std::fs::File,
        source: &str,
        interrupt: &(dyn Fn() -> std::io::Result<()> + Sync),
    ) -> Result<()> {
        self.builder
            .file_at(path, file, Path::new(source), interrupt)?;
        Ok(())
    }
}

impl TreeSink for AddSession<'_> {
    fn dir(&mut self, path: &str) -> Result<(), ImportError> {
        self.builder.dir(path)
    }

    fn file(
        &mut self,
        path: &str,
        file: &mut std::fs::File,
        size: u64,
        source: &Path,
    ) -> Result<(), ImportError> {
        TreeSink::file(&mut self.builder, path, file, size, source)
    }
}

/// What `export` is asked for: one collection id, or root CIDs.
pub fn export_target(args: &[String]) -> Result<ExportTarget> {
    if let [only] = args {
        if let Ok(id) = only.parse::<CollectionId>() {
            return Ok(ExportTarget::Collection(id.to_string()));
        }
    }
    let roots = args
        .iter()
        .map(|text| parse_cid(text))
        .collect::<Result<Vec<_>>>()?;
    Ok(ExportTarget::Dags(roots))
}

/// The profile for `options` over the repository's default.
pub fn resolve_profile(options: &AddOptions, default: &str) -> Result<Profile> {
    let name = options.profile.as_deref().unwrap_or(default);
    let invalid = |err: &dyn std::fmt::Display| NodeError::invalid(err.to_string());
    let mut profile = Profile::by_name(name).map_err(|err| invalid(&err))?;
    if let Some(version) = options.cid_version {
        profile = profile
            .with_cid_version(u64::from(version))
            .map_err(|err| invalid(&err))?;
    }
    if let Some(chunker) = &options.chunker {
        profile = profile.with_chunker(chunker).map_err(|err| invalid(&err))?;
    }
    Ok(profile)
}

/// Walks a file or folder on this machine into an `add`.
pub fn walk_into(path: &Path, recursive: bool, sink: &mut dyn TreeSink) -> Result<()> {
    Ok(importer::walk(path, recursive, sink)?)
}

pub fn parse_cid(text: &str) -> Result<Cid> {
    Cid::try_from(text.trim())
        .map_err(|err| NodeError::invalid(format!("`{text}` is not a valid CID: {err}")))
}

pub fn parse_collection_id(text: &str) -> Result<CollectionId> {
    text.trim()
        .parse::<CollectionId>()
        .map_err(|err| NodeError::invalid(err.to_string()))
}

fn parse_author(text: &str) -> Result<Author> {
    let text = text.trim();
    if let Some((name, rest)) = text.split_once('<') {
        let url = rest.strip_suffix('>').ok_or_else(|| {
            NodeError::invalid(format!("author `{text}`: expected \"Name <URL>\""))
        })?;
        Ok(Author {
            name: name.trim().to_string(),
            url: Some(url.trim().to_string()),
        })
    } else {
        Ok(Author {
            name: text.to_string(),
            url: None,
        })
    }
}

/// A did:key, or the publisher of a collection id, in its canonical form.
fn normalize_publisher(text: &str) -> Result<String> {
    let text = text.trim();
    if text.starts_with("did:key:") {
        let key = keys::parse_did_key(text)?;
        Ok(keys::did_key(&key))
    } else {
        Ok(parse_collection_id(text)
            .map_err(|_| {
                NodeError::invalid(format!("`{text}` is neither a did:key nor a collection id"))
            })?
            .publisher_did())
    }
}

/// A record CID, or content that exactly one record describes.
fn entry_record(book: &RecordBook<Store>, text: &str) -> Result<Cid> {
    let cid = parse_cid(text)?;
    if book.summary(&cid)?.is_some() {
        return Ok(cid);
    }
    match book.records_for_content(&cid)?.as_slice() {
        [only] => Ok(only.cid),
        [] => Err(NodeError::not_found(format!(
            "{cid} is neither a known record nor content with a record: sign one with `oermesh add --title ...`"
        ))),
        _ => Err(NodeError::invalid(format!(
            "{cid} has several records: name the record CID (see `oermesh record show {cid}`)"
        ))),
    }
}

fn record_view(view: crate::records::book::RecordView) -> RecordView {
    let record: Record = view.record;
    let licence = match record.parsed_licence() {
        Ok(licence) => LicenceView {
            id: licence.spdx_id(),
            name: Some(licence.name()),
            url: Some(licence.url()),
        },
        Err(_) => LicenceView {
            id: record.licence.clone(),
            name: None,
            url: None,
        },
    };
    let ed = record.educational;
    RecordView {
        cid: view.cid,
        content: record.content,
        title: record.title,
        description: record.description,
        language: record.language,
        authors: record
            .authors
            .into_iter()
            .map(|a| AuthorView {
                name: a.name,
                url: a.url,
            })
            .collect(),
        licence,
        source: record.source,
        based_on: record
            .based_on
            .into_iter()
            .map(|p| BasedOnView {
                record: p.record,
                note: p.note,
            })
            .collect(),
        educational: EducationalView {
            learning_resource_type: ed.learning_resource_type,
            educational_level: ed.educational_level,
            educational_use: ed.educational_use,
            typical_age_range: ed.typical_age_range,
            teaches: ed.teaches,
            subjects: ed.subjects,
            time_required: ed.time_required,
        },
        created: record.created,
        publisher: record.publisher,
        trusted: view.trusted,
        retracted: view.retracted,
        attribution: view.attribution,
    }
}
