//! The block store: every block this node holds, named by CID, with pins.
//!
//! sled holds the index (one entry per block, keyed by multihash), the bytes of small
//! blocks inline, and the pins. Large blocks live as files in [`blockdir`]. The store
//! knows how to follow links between blocks (for `gc` and `verify`) but nothing about
//! files, records or the network.
//!
//! `Store` is a cheap, cloneable handle: sled serves concurrent readers and writers
//! itself, so one daemon can hand clones to every task. The one cross-operation rule,
//! "gc never runs while a write batch is open", is a read-write lock.

mod blockdir;

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use cid::Cid;
use multihash::Multihash;
use rayon::prelude::*;

use crate::block::{self, hash_code, BlockError, BlockGet, BlockPut};
use blockdir::BlockDir;

/// Blocks up to this size are kept inline in sled; larger ones get a file. Below one
/// file-system block (4 KiB) a file would waste most of its block and an inode; from
/// 4 KiB up a file costs exactly its size, while sled's log holds values at two to three
/// times theirs (measured: 10,000 blocks of 4 KiB took 108 MB inline, 45 MB as files).
pub const INLINE_LIMIT: usize = 4095;

/// The largest block the store accepts (UnixFS leaves are at most 1 MiB by default;
/// the IPFS ecosystem treats 2 MiB as the upper bound for a block).
pub const MAX_BLOCK_SIZE: usize = 2 * 1024 * 1024;

/// Index entries `verify` holds in memory at a time.
const VERIFY_BATCH: usize = 4096;

/// Inline bytes a write batch holds in memory before handing them to sled early.
const PENDING_INLINE_LIMIT: usize = 64 * 1024 * 1024;

const TAG_INLINE: u8 = 0;
const TAG_FILE: u8 = 1;

/// Tunables of the store, from the repository's config.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// sled's page cache; sled's own default of 1 GiB is too much for a school server.
    pub cache_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sled::Error),
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("damaged index entry for block {0}")]
    DamagedIndex(String),
}

/// What `gc` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    pub blocks_removed: u64,
    pub bytes_freed: u64,
    pub orphan_files_removed: u64,
}

/// One problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The stored bytes do not hash to the block's name.
    Corrupt(String),
    /// The index names a block whose bytes are gone.
    MissingData(String),
    /// A pinned DAG links to a block the store does not hold.
    MissingBlock(Cid),
    /// A block of a pinned DAG could not be decoded to follow its links.
    Undecodable(Cid, String),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Corrupt(name) => {
                write!(f, "corrupt block {name}: its bytes do not match its hash")
            }
            Damage::MissingData(name) => {
                write!(f, "missing data for block {name}: its file is gone")
            }
            Damage::MissingBlock(cid) => write!(f, "missing block {cid}: linked from a pinned DAG"),
            Damage::Undecodable(cid, why) => write!(f, "undecodable block {cid}: {why}"),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct VerifyReport {
    pub blocks_checked: u64,
    pub bytes_checked: u64,
    pub damage: Vec<Damage>,
}

#[derive(Debug, Default, Clone)]
pub struct StoreStat {
    pub blocks: u64,
    pub bytes: u64,
    pub inline_blocks: u64,
    pub pins: u64,
    /// Bytes the repository takes on disk (allocated blocks, as `du` counts).
    pub disk_bytes: u64,
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    db: sled::Db,
    index: sled::Tree,
    pins: sled::Tree,
    dir: BlockDir,
    gc_lock: RwLock<()>,
}

impl Store {
    /// Opens (creating if needed) the store under `repo`: `repo/db` and `repo/blocks`.
    pub fn open(repo: &Path, config: &StoreConfig) -> Result<Store, StoreError> {
        let db_path = repo.join("db");
        let db = sled::Config::new()
            .path(&db_path)
            .cache_capacity(config.cache_bytes)
            .flush_every_ms(Some(1000))
            .open()?;
        let index = db.open_tree("blocks")?;
        let pins = db.open_tree("pins")?;
        let dir = BlockDir::open(repo).map_err(|source| StoreError::Io {
            action: "open block directory",
            path: repo.join("blocks"),
            source,
        })?;
        Ok(Store {
            inner: Arc::new(Inner {
                root: repo.to_path_buf(),
                db,
                index,
                pins,
                dir,
                gc_lock: RwLock::new(()),
            }),
        })
    }

    /// The database, for layers above the store (records, collections, peers) to open
    /// their own trees in.
    pub fn db(&self) -> &sled::Db {
        &self.inner.db
    }

    pub fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        if cid.hash().code() == hash_code::IDENTITY {
            return Ok(true);
        }
        Ok(self.inner.index.contains_key(cid.hash().to_bytes())?)
    }

    /// Size in bytes of a stored block, if present.
    pub fn block_size(&self, cid: &Cid) -> Result<Option<u64>, StoreError> {
        match self.inner.index.get(cid.hash().to_bytes())? {
            Some(entry) => Ok(Some(decode_entry(&entry, cid)?.size)),
            None => Ok(None),
        }
    }

    /// Starts a write batch. Blocks written through it become durable together at
    /// [`WriteBatch::commit`]; `gc` waits until the batch is committed or dropped.
    pub fn batch(&self) -> WriteBatch<'_> {
        WriteBatch {
            store: self,
            _gc_guard: self
                .inner
                .gc_lock
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            pending: Mutex::new(Vec::new()),
            pending_inline_bytes: AtomicU64::new(0),
            wrote_files: AtomicBool::new(false),
        }
    }

    /// Pins `cid` for `reason` ("user", "import", a collection id...). A block stays
    /// while any reason holds it.
    pub fn pin(&self, cid: &Cid, reason: &str) -> Result<(), StoreError> {
        self.inner.pins.update_and_fetch(cid.to_bytes(), |old| {
            let mut reasons = decode_reasons(old);
            if !reasons.iter().any(|r| r == reason) {
                reasons.push(reason.to_string());
                reasons.sort();
            }
            Some(reasons.join("\n").into_bytes())
        })?;
        self.inner.pins.flush()?;
        Ok(())
    }

    /// Removes one reason (or every reason, with `None`). Returns the reasons left.
    pub fn unpin(&self, cid: &Cid, reason: Option<&str>) -> Result<Vec<String>, StoreError> {
        let left = self.inner.pins.update_and_fetch(cid.to_bytes(), |old| {
            let mut reasons = decode_reasons(old);
            match reason {
                Some(reason) => reasons.retain(|r| r != reason),
                None => reasons.clear(),
            }
            (!reasons.is_empty()).then(|| reasons.join("\n").into_bytes())
        })?;
        self.inner.pins.flush()?;
        Ok(decode_reasons(left.as_deref()))
    }

    pub fn pin_reasons(&self, cid: &Cid) -> Result<Vec<String>, StoreError> {
        Ok(decode_reasons(
            self.inner.pins.get(cid.to_bytes())?.as_deref(),
        ))
    }

    /// Every pin with its reasons, in CID byte order.
    pub fn pins(&self) -> Result<Vec<(Cid, Vec<String>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.pins.iter() {
            let (key, value) = item?;
            let cid = Cid::try_from(key.as_ref())
                .map_err(|_| StoreError::DamagedIndex(format!("pin key {:02x?}", key.as_ref())))?;
            out.push((cid, decode_reasons(Some(&value))));
        }
        Ok(out)
    }

    /// Removes every block not reachable from a pin or from `extra_roots`, and block
    /// files nothing indexes. Blocks in `let_go` are neither kept nor followed unless a
    /// pin names them: the layer above uses it for retracted records.
    pub fn gc(&self, extra_roots: &[Cid], let_go: &[Cid]) -> Result<GcReport, StoreError> {
        let _exclusive = self
            .inner
            .gc_lock
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let pinned: HashSet<Cid> = self.pins()?.into_iter().map(|(cid, _)| cid).collect();
        let skipped: HashSet<Cid> = let_go
            .iter()
            .filter(|cid| !pinned.contains(cid))
            .copied()
            .collect();
        let mut roots: Vec<Cid> = pinned.into_iter().collect();
        roots.extend(extra_roots.iter().filter(|cid| !skipped.contains(cid)));
        let live = self.mark_live(&roots, skipped)?;

        let mut report = GcReport::default();
        for item in self.inner.index.iter() {
            let (key, value) = item?;
            if live.contains(key.as_ref()) {
                continue;
            }
            let hash = Multihash::<64>::from_bytes(&key)
                .map_err(|_| StoreError::DamagedIndex(format!("{:02x?}", key.as_ref())))?;
            let entry = decode_entry(&value, &Cid::new_v1(block::codec::RAW, hash))?;
            // Drop the index entry first: a crash between the two steps leaves an
            // orphan file (removed by the next gc), never an entry without its data.
            self.inner.index.remove(&key)?;
            if entry.tag == TAG_FILE {
                self.inner
                    .dir
                    .remove(&hash)
                    .map_err(|source| StoreError::Io {
                        action: "remove block file",
                        path: self.inner.dir.path_of(&hash),
                        source,
                    })?;
            }
            report.blocks_removed += 1;
            report.bytes_freed += entry.size;
        }
        self.inner.db.flush()?;
        for (hash, path) in self.scan_block_files()? {
            if !self.inner.index.contains_key(hash.to_bytes())? {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(&path).map_err(|source| StoreError::Io {
                    action: "remove orphan block file",
                    path,
                    source,
                })?;
                report.orphan_files_removed += 1;
                report.bytes_freed += size;
            }
        }
        Ok(report)
    }

    /// Re-hashes every stored block and checks that every DAG reachable from a pin or
    /// from `extra_roots` is complete.
    pub fn verify(&self, extra_roots: &[Cid], let_go: &[Cid]) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        // Bounded batches: inline blocks are in the index values, and a large store's
        // index does not fit in memory at once.
        let mut entries: Vec<(sled::IVec, sled::IVec)> = Vec::with_capacity(VERIFY_BATCH);
        let mut index = self.inner.index.iter();
        loop {
            entries.clear();
            for item in index.by_ref().take(VERIFY_BATCH) {
                entries.push(item?);
            }
            if entries.is_empty() {
                break;
            }
            let results: Vec<Result<Option<Damage>, StoreError>> = entries
                .par_iter()
                .map(|(key, value)| self.check_entry(key, value))
                .collect();
            for ((_, value), result) in entries.iter().zip(results) {
                report.blocks_checked += 1;
                report.bytes_checked += recorded_size(value);
                if let Some(damage) = result? {
                    report.damage.push(damage);
                }
            }
        }

        let mut roots: Vec<Cid> = self.pins()?.into_iter().map(|(cid, _)| cid).collect();
        roots.extend_from_slice(extra_roots);
        let mut missing = Vec::new();
        crate::links::walk_lenient(self, &roots, let_go, &mut |cid, problem| match problem {
            crate::links::WalkProblem::Missing => missing.push(Damage::MissingBlock(*cid)),
            crate::links::WalkProblem::Undecodable(why) => {
                missing.push(Damage::Undecodable(*cid, why))
            }
        })?;
        // A corrupt block is also unreadable during the walk; name it once.
        missing.retain(|damage| match damage {
            Damage::MissingBlock(cid) | Damage::Undecodable(cid, _) => {
                let name = hash_name(cid.hash());
                !report
                    .damage
                    .iter()
                    .any(|d| matches!(d, Damage::Corrupt(n) | Damage::MissingData(n) if *n == name))
            }
            _ => true,
        });
        report.damage.extend(missing);
        Ok(report)
    }

    /// Re-hashes one indexed block; `Some` names what is wrong with it.
    fn check_entry(&self, key: &[u8], value: &[u8]) -> Result<Option<Damage>, StoreError> {
        let hash = Multihash::<64>::from_bytes(key)
            .map_err(|_| StoreError::DamagedIndex(format!("{:02x?}", key)))?;
        let name = hash_name(&hash);
        let probe = Cid::new_v1(block::codec::RAW, hash);
        let entry = decode_entry(value, &probe)?;
        let data = match entry.tag {
            TAG_INLINE => value[9..].to_vec(),
            _ => match self.inner.dir.read(&hash, entry.size) {
                Ok(data) => data,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    return Ok(Some(Damage::MissingData(name)))
                }
                Err(source) => {
                    return Err(StoreError::Io {
                        action: "read block file",
                        path: self.inner.dir.path_of(&hash),
                        source,
                    })
                }
            },
        };
        match block::verify(&probe, &data) {
            Ok(()) if data.len() as u64 == entry.size => Ok(None),
            Ok(()) | Err(BlockError::Corrupt(_)) => Ok(Some(Damage::Corrupt(name))),
            Err(err) => Err(err.into()),
        }
    }

    pub fn stat(&self) -> Result<StoreStat, StoreError> {
        let mut stat = StoreStat::default();
        for item in self.inner.index.iter() {
            let (_, value) = item?;
            stat.blocks += 1;
            if value.first() == Some(&TAG_INLINE) {
                stat.inline_blocks += 1;
            }
            stat.bytes += recorded_size(&value);
        }
        stat.pins = self.inner.pins.len() as u64;
        stat.disk_bytes = disk_usage(&self.inner.root);
        Ok(stat)
    }

    /// Waits until everything written so far is on disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        Ok(())
    }

    /// The multihashes of every block reachable from `roots`. Raw leaves have no
    /// links, so they are only looked up, not read: marking costs the size of the
    /// DAG's inner nodes, not of its data. A missing or damaged inner node stops gc,
    /// since deleting around a hole could remove what the hole links to.
    fn mark_live(
        &self,
        roots: &[Cid],
        skipped: HashSet<Cid>,
    ) -> Result<HashSet<Vec<u8>>, StoreError> {
        let mut live: HashSet<Vec<u8>> = HashSet::new();
        let mut visited: HashSet<Cid> = skipped;
        let mut stack: Vec<Cid> = roots.to_vec();
        let stopped = |err: &dyn std::fmt::Display| {
            StoreError::Block(BlockError::Backend(format!(
                "gc stopped, nothing removed: {err} (run `oermesh verify`)"
            )))
        };
        while let Some(cid) = stack.pop() {
            // Visited by CID, live by multihash: the same bytes may be linked both as
            // a raw leaf and as a dag-pb node, and only the latter has links.
            if cid.hash().code() == hash_code::IDENTITY || !visited.insert(cid) {
                continue;
            }
            live.insert(cid.hash().to_bytes());
            if cid.codec() == block::codec::RAW {
                if !self.has(&cid)? {
                    return Err(stopped(&BlockError::NotFound(cid)));
                }
                continue;
            }
            let data = self.read_verified(&cid).map_err(|err| stopped(&err))?;
            let children = crate::links::links(&cid, &data).map_err(|err| stopped(&err))?;
            stack.extend(
                children
                    .into_iter()
                    .filter(|child| !visited.contains(child)),
            );
        }
        Ok(live)
    }

    fn scan_block_files(&self) -> Result<Vec<(Multihash<64>, PathBuf)>, StoreError> {
        self.inner.dir.scan().map_err(|source| StoreError::Io {
            action: "list block directory",
            path: self.inner.dir.root().to_path_buf(),
            source,
        })
    }

    /// The checks every incoming block passes before anything of it is written: size,
    /// hash against CID. Returns the index key, or `None` when there is nothing to
    /// write (an identity CID, or a block already stored).
    fn admit(
        &self,
        cid: &Cid,
        data: &[u8],
        hashed_by_caller: bool,
    ) -> Result<Option<Vec<u8>>, BlockError> {
        if data.len() > MAX_BLOCK_SIZE {
            return Err(BlockError::TooLarge {
                cid: *cid,
                size: data.len(),
                limit: MAX_BLOCK_SIZE,
            });
        }
        if !hashed_by_caller {
            block::verify(cid, data)?;
        }
        if cid.hash().code() == hash_code::IDENTITY {
            return Ok(None);
        }
        let key = cid.hash().to_bytes();
        let stored = self.inner.index.contains_key(&key).map_err(db_error)?;
        Ok((!stored).then_some(key))
    }

    fn read_verified(&self, cid: &Cid) -> Result<Vec<u8>, BlockError> {
        if cid.hash().code() == hash_code::IDENTITY {
            return Ok(cid.hash().digest().to_vec());
        }
        let key = cid.hash().to_bytes();
        let value = self
            .inner
            .index
            .get(&key)
            .map_err(|err| BlockError::Backend(format!("database error: {err}")))?
            .ok_or(BlockError::NotFound(*cid))?;
        let entry =
            decode_entry(&value, cid).map_err(|err| BlockError::Backend(err.to_string()))?;
        let data = if entry.tag == TAG_INLINE {
            value[9..].to_vec()
        } else {
            match self.inner.dir.read(cid.hash(), entry.size) {
                Ok(data) => data,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    return Err(BlockError::Corrupt(*cid))
                }
                Err(err) => return Err(BlockError::Io(err)),
            }
        };
        block::verify(cid, &data)?;
        Ok(data)
    }
}

impl BlockGet for Store {
    fn get_block(&self, cid: &Cid) -> Result<Vec<u8>, BlockError> {
        self.read_verified(cid)
    }
}

/// Single blocks written outside a batch (records, collection heads): each is verified,
/// and a large one is synced before its index entry is written. Inline blocks become
/// durable at the next [`Store::flush`].
impl BlockPut for Store {
    fn put_block(&self, cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
        let _gc_guard = self
            .inner
            .gc_lock
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(key) = self.admit(cid, data, false)? else {
            return Ok(());
        };
        if data.len() > INLINE_LIMIT {
            let written = self.inner.dir.write_durable(cid.hash(), data);
            written.map_err(|err| self.inner.dir.write_error(cid.hash(), err))?;
        }
        self.inner
            .index
            .insert(key, index_value(data))
            .map_err(db_error)?;
        Ok(())
    }
}

/// Writes that become durable together. Implements [`BlockPut`]; every block is
/// checked against its CID before anything of it is stored.
pub struct WriteBatch<'a> {
    store: &'a Store,
    _gc_guard: RwLockReadGuard<'a, ()>,
    pending: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    pending_inline_bytes: AtomicU64,
    wrote_files: AtomicBool,
}

impl WriteBatch<'_> {
    /// Makes every block of the batch durable, then indexes the large ones: a block
    /// file is synced before any index entry names it.
    pub fn commit(self) -> Result<(), StoreError> {
        let inner = &self.store.inner;
        let started = std::time::Instant::now();
        if self.wrote_files.load(Ordering::Acquire) {
            inner.dir.sync().map_err(|source| StoreError::Io {
                action: "sync block directory",
                path: inner.dir.root().to_path_buf(),
                source,
            })?;
        }
        let synced = started.elapsed();
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let entries = pending.len();
        let mut batch = sled::Batch::default();
        for (key, value) in pending {
            batch.insert(key, value);
        }
        inner.index.apply_batch(batch)?;
        inner.db.flush()?;
        tracing::debug!(entries, ?synced, total = ?started.elapsed(), "write batch committed");
        Ok(())
    }

    /// Commits, then pins each root for `reason`: the pins never name blocks that are
    /// not yet durable.
    pub fn commit_and_pin(self, roots: &[Cid], reason: &str) -> Result<(), StoreError> {
        let store = self.store.clone();
        self.commit()?;
        for root in roots {
            store.pin(root, reason)?;
        }
        Ok(())
    }

    fn spill_inline(&self) -> Result<(), BlockError> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        let mut kept = Vec::new();
        for (key, value) in pending.drain(..) {
            if value.first() == Some(&TAG_INLINE) {
                batch.insert(key, value);
            } else {
                kept.push((key, value));
            }
        }
        *pending = kept;
        self.pending_inline_bytes.store(0, Ordering::Release);
        self.store
            .inner
            .index
            .apply_batch(batch)
            .map_err(|err| BlockError::Backend(format!("database error: {err}")))
    }
}

impl BlockPut for WriteBatch<'_> {
    fn put_block(&self, cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
        self.put(cid, data, false)
    }

    fn put_hashed_block(&self, cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
        self.put(cid, data, true)
    }
}

impl WriteBatch<'_> {
    fn put(&self, cid: &Cid, data: &[u8], hashed_by_caller: bool) -> Result<(), BlockError> {
        let Some(key) = self.store.admit(cid, data, hashed_by_caller)? else {
            return Ok(());
        };
        let inner = &self.store.inner;
        if data.len() <= INLINE_LIMIT {
            let held = self
                .pending_inline_bytes
                .fetch_add(data.len() as u64, Ordering::AcqRel);
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((key, index_value(data)));
            if held as usize + data.len() > PENDING_INLINE_LIMIT {
                self.spill_inline()?;
            }
        } else {
            let written = inner.dir.write(cid.hash(), data);
            written.map_err(|err| inner.dir.write_error(cid.hash(), err))?;
            self.wrote_files.store(true, Ordering::Release);
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((key, index_value(data)));
        }
        Ok(())
    }
}

/// The index value of a block: tag, size, and the bytes themselves when small.
fn index_value(data: &[u8]) -> Vec<u8> {
    let inline = data.len() <= INLINE_LIMIT;
    let mut value = Vec::with_capacity(9 + if inline { data.len() } else { 0 });
    value.push(if inline { TAG_INLINE } else { TAG_FILE });
    value.extend_from_slice(&(data.len() as u64).to_le_bytes());
    if inline {
        value.extend_from_slice(data);
    }
    value
}

/// The block size an index value records; 0 for a damaged value (which `verify` and
/// reads report on their own).
fn recorded_size(value: &[u8]) -> u64 {
    value
        .get(1..9)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

struct IndexEntry {
    tag: u8,
    size: u64,
}

fn decode_entry(value: &[u8], cid: &Cid) -> Result<IndexEntry, StoreError> {
    let damaged = || StoreError::DamagedIndex(cid.to_string());
    let tag = *value.first().ok_or_else(damaged)?;
    let size = u64::from_le_bytes(
        value
            .get(1..9)
            .ok_or_else(damaged)?
            .try_into()
            .map_err(|_| damaged())?,
    );
    match tag {
        TAG_INLINE if value.len() as u64 == 9 + size => Ok(IndexEntry { tag, size }),
        TAG_FILE if value.len() == 9 => Ok(IndexEntry { tag, size }),
        _ => Err(damaged()),
    }
}

fn decode_reasons(value: Option<&[u8]>) -> Vec<String> {
    value
        .map(|bytes| {
            String::from_utf8_lossy(bytes)
                .split('\n')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// A block's name when only its multihash is known: the CIDv1 raw form, which is how
/// `verify` reports stored bytes that no longer match.
fn hash_name(hash: &Multihash<64>) -> String {
    Cid::new_v1(block::codec::RAW, *hash).to_string()
}

fn db_error(err: sled::Error) -> BlockError {
    BlockError::Backend(format!("database error: {err}"))
}

/// Bytes allocated on disk under `path`, like `du`.
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total += meta.blocks() * 512;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}
