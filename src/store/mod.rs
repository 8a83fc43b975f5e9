//! The block store: every block this node holds, named by CID, with pins.
//!
//! sled holds the index (one entry per block, keyed by multihash), the bytes of small
//! blocks inline, running totals, and the pins. Large blocks live as files in
//! `blockdir`. The store knows how to follow links between blocks (for `gc` and
//! `verify`) but nothing about files, records or the network.
//!
//! `Store` is a cheap, cloneable handle: sled serves concurrent readers and writers
//! itself, so one daemon can hand clones to every task. Writers keep what they write
//! from gc through a [`GcHold`] (a [`WriteBatch`] has one); gc runs beside readers and
//! writers and closes the gate to them only for short sweep steps (see `gate` and
//! docs/DESIGN.md).

mod blockdir;
mod gate;
mod gc;
mod index;
mod verify;
mod write;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cid::Cid;
use multihash::Multihash;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::block::{self, hash_code, BlockError, BlockGet, HoldBlocks};
use crate::links::LinkError;
use blockdir::BlockDir;
use gate::Gate;
use index::{decode_entry, inline_bytes, Totals, FIRST_BLOCK_KEY, TAG_INLINE, TOTALS_KEY};

pub use gc::{GcPhase, GcReport, GcRoots};
pub use verify::{Damage, VerifyReport};
pub use write::{GcHold, WriteBatch};

/// Blocks up to this size are kept inline in sled; larger ones get a file. Below one
/// file-system block (4 KiB) a file would waste most of its block and an inode; from
/// 4 KiB up a file costs exactly its size, while sled's log holds values at two to three
/// times theirs (measured: 10,000 blocks of 4 KiB took 108 MB inline, 45 MB as files).
pub const INLINE_LIMIT: usize = 4095;

/// The largest block the store accepts (UnixFS leaves are at most 1 MiB by default;
/// the IPFS ecosystem treats 2 MiB as the upper bound for a block).
pub const MAX_BLOCK_SIZE: usize = 2 * 1024 * 1024;

/// Where the pins tree keeps its count: one byte, shorter than any CID.
const PIN_COUNT_KEY: &[u8] = &[0];
/// The first key a pin can have.
const FIRST_PIN_KEY: &[u8] = &[1];

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
    #[error(transparent)]
    Links(Box<LinkError>),
    #[error("damaged index entry for block {0}")]
    DamagedIndex(String),
    #[error("cannot pin {}: {} blocks of its DAG are not in the store (first {})", .0.root, .0.missing, .0.first)]
    IncompleteDag(Box<IncompleteDag>),
}

/// A DAG that could not be pinned because blocks of it are absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncompleteDag {
    pub root: Cid,
    pub missing: usize,
    pub first: Cid,
}

impl From<LinkError> for StoreError {
    fn from(err: LinkError) -> Self {
        match err {
            LinkError::Block(err) => StoreError::Block(err),
            other => StoreError::Links(Box::new(other)),
        }
    }
}

impl From<StoreError> for BlockError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Block(err) => err,
            other => BlockError::Backend(other.to_string()),
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct StoreStat {
    pub blocks: u64,
    pub bytes: u64,
    pub inline_blocks: u64,
    pub pins: u64,
    /// Bytes the repository takes on disk, as `du` counts them: the database's files and
    /// the folders as they are, each block file rounded up to a 4 KiB file-system block.
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
    gate: Gate,
    /// Held by gc and verify: each reads the whole index and must not see the other's
    /// half-done work.
    maintenance: Mutex<()>,
    /// Counts changes to the pins since the store was opened: a daemon task that acts
    /// on the set of pins (providing them to the DHT) looks at this instead of the pins.
    pin_changes: AtomicU64,
}

/// How long opening waits for sled's lock to be released by a handle just dropped.
const SLED_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Store {
    /// Opens (creating if needed) the store under `repo`: `repo/db` and `repo/blocks`.
    pub fn open(repo: &Path, config: &StoreConfig) -> Result<Store, StoreError> {
        let db_path = repo.join("db");
        // sled's background threads release its lock a moment after the last handle is
        // dropped: a store closed and opened again at once (a daemon restarted in the
        // same process) waits for it, briefly, instead of failing.
        let deadline = std::time::Instant::now() + SLED_RELEASE_WAIT;
        let mut unfinished_snapshots_removed = false;
        let db = loop {
            let opened = sled::Config::new()
                .path(&db_path)
                .cache_capacity(config.cache_bytes)
                .flush_every_ms(Some(1000))
                .open();
            match opened {
                Err(sled::Error::Io(err))
                    if err.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(err @ sled::Error::Corruption { .. }) => {
                    if unfinished_snapshots_removed || remove_unfinished_snapshots(&db_path)? == 0 {
                        return Err(err.into());
                    }
                    unfinished_snapshots_removed = true;
                }
                other => break other?,
            }
        };
        let index = db.open_tree("blocks")?;
        let pins = db.open_tree("pins")?;
        let dir = BlockDir::open(repo).map_err(|source| StoreError::Io {
            action: "open block directory",
            path: repo.join("blocks"),
            source,
        })?;
        let store = Store {
            inner: Arc::new(Inner {
                root: repo.to_path_buf(),
                db,
                index,
                pins,
                dir,
                gate: Gate::default(),
                maintenance: Mutex::new(()),
                pin_changes: AtomicU64::new(0),
            }),
        };
        store.count_if_uncounted()?;
        Ok(store)
    }

    /// A store written before the totals were kept gets them counted once. Absent
    /// totals over an empty index are zero, and are written with the first block (a
    /// store that is only opened writes nothing).
    fn count_if_uncounted(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let uncounted = match inner.index.get(TOTALS_KEY)? {
            Some(value) => Totals::decode(&value).is_none(),
            None => inner.index.range(FIRST_BLOCK_KEY..).next().is_some(),
        };
        if uncounted {
            let mut totals = Totals::default();
            for item in inner.index.range(FIRST_BLOCK_KEY..) {
                totals.add(&item?.1);
            }
            inner.index.insert(TOTALS_KEY, totals.encode())?;
        }
        if inner.pins.get(PIN_COUNT_KEY)?.is_none()
            && inner.pins.range(FIRST_PIN_KEY..).next().is_some()
        {
            let count = inner.pins.range(FIRST_PIN_KEY..).count() as u64;
            inner.pins.insert(PIN_COUNT_KEY, &count.to_le_bytes())?;
        }
        Ok(())
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
    /// commit, and gc keeps them meanwhile.
    pub fn batch(&self) -> WriteBatch {
        WriteBatch::new(self.clone())
    }

    /// Opens a hold: what is written or relied on through it is kept from gc until it
    /// is dropped.
    pub fn hold(&self) -> GcHold {
        GcHold::new(self.clone())
    }

    /// Pins `cid` for `reason` ("user", "import", a collection id...), after checking
    /// that its whole DAG is in the store. A block stays while any reason holds it.
    pub fn pin(&self, cid: &Cid, reason: &str) -> Result<(), StoreError> {
        self.hold().pin_dag(cid, reason)
    }

    /// Adds `reason` to the pin of `cid`. Callers keep the DAG through a hold until this
    /// returns.
    fn write_pin(&self, cid: &Cid, reason: &str) -> Result<(), StoreError> {
        self.update_pin(cid, |reasons| {
            if !reasons.iter().any(|r| r == reason) {
                reasons.push(reason.to_string());
                reasons.sort();
            }
        })
        .map(drop)
    }

    /// Removes one reason (or every reason, with `None`). Returns the reasons left.
    pub fn unpin(&self, cid: &Cid, reason: Option<&str>) -> Result<Vec<String>, StoreError> {
        self.update_pin(cid, |reasons| match reason {
            Some(reason) => reasons.retain(|r| r != reason),
            None => reasons.clear(),
        })
    }

    /// Changes the reasons of one pin and the pin count together, durably.
    fn update_pin(
        &self,
        cid: &Cid,
        change: impl Fn(&mut Vec<String>),
    ) -> Result<Vec<String>, StoreError> {
        let key = cid.to_bytes();
        let left = self
            .inner
            .pins
            .transaction(|pins| {
                let mut reasons = decode_reasons(pins.get(&key)?.as_deref());
                let was_pinned = !reasons.is_empty();
                change(&mut reasons);
                let count = pins
                    .get(PIN_COUNT_KEY)?
                    .and_then(|value| Some(u64::from_le_bytes(*value.first_chunk::<8>()?)))
                    .unwrap_or(0);
                let count = match (was_pinned, reasons.is_empty()) {
                    (false, false) => count + 1,
                    (true, true) => count.saturating_sub(1),
                    _ => count,
                };
                if reasons.is_empty() {
                    pins.remove(key.as_slice())?;
                } else {
                    pins.insert(key.as_slice(), reasons.join("\n").into_bytes())?;
                }
                pins.insert(PIN_COUNT_KEY, &count.to_le_bytes())?;
                Ok::<_, ConflictableTransactionError<()>>(reasons)
            })
            .map_err(|err| match err {
                TransactionError::Storage(err) => StoreError::Db(err),
                TransactionError::Abort(()) => {
                    StoreError::DamagedIndex(format!("pin of {cid} could not be updated"))
                }
            })?;
        self.inner.pins.flush()?;
        self.inner.pin_changes.fetch_add(1, Ordering::Relaxed);
        Ok(left)
    }

    /// How many times a pin was added, changed or removed through this store since it
    /// was opened: equal numbers mean the same pins.
    pub fn pin_changes(&self) -> u64 {
        self.inner.pin_changes.load(Ordering::Relaxed)
    }

    pub fn pin_reasons(&self, cid: &Cid) -> Result<Vec<String>, StoreError> {
        Ok(decode_reasons(
            self.inner.pins.get(cid.to_bytes())?.as_deref(),
        ))
    }

    /// Every pin with its reasons, in CID byte order.
    pub fn pins(&self) -> Result<Vec<(Cid, Vec<String>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.pins.range(FIRST_PIN_KEY..) {
            let (key, value) = item?;
            let cid = Cid::try_from(key.as_ref())
                .map_err(|_| StoreError::DamagedIndex(format!("pin key {:02x?}", key.as_ref())))?;
            out.push((cid, decode_reasons(Some(&value))));
        }
        Ok(out)
    }

    /// The store's figures, from totals kept up to date with every write: no walk of the
    /// index or of the block files.
    pub fn stat(&self) -> Result<StoreStat, StoreError> {
        let totals = self.totals()?;
        let pins = self
            .inner
            .pins
            .get(PIN_COUNT_KEY)?
            .and_then(|value| Some(u64::from_le_bytes(*value.first_chunk::<8>()?)))
            .unwrap_or(0);
        Ok(StoreStat {
            blocks: totals.blocks,
            bytes: totals.bytes,
            inline_blocks: totals.inline_blocks,
            pins,
            disk_bytes: totals.file_bytes_allocated
                + disk_usage_outside_block_files(&self.inner.root),
        })
    }

    fn totals(&self) -> Result<Totals, StoreError> {
        match self.inner.index.get(TOTALS_KEY)? {
            None => Ok(Totals::default()),
            Some(value) => Totals::decode(&value)
                .ok_or_else(|| StoreError::DamagedIndex("store totals".into())),
        }
    }

    /// Waits until everything written so far is on disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner.db.flush()?;
        Ok(())
    }

    /// Indexes blocks whose bytes are durable, skipping those already indexed, and
    /// updates the totals in the same sled batch. The gate is closed meanwhile, so that
    /// the totals are changed by one writer (or one sweep step) at a time.
    fn index_new(&self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let index = &self.inner.index;
        let _closed = self.inner.gate.close();
        let mut totals = self.totals()?;
        let mut batch = sled::Batch::default();
        let mut seen = std::collections::HashSet::with_capacity(entries.len());
        for (key, value) in entries {
            if index.contains_key(&key)? || !seen.insert(key.clone()) {
                continue;
            }
            totals.add(&value);
            batch.insert(key, value);
        }
        batch.insert(TOTALS_KEY, totals.encode());
        index.apply_batch(batch)?;
        Ok(())
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
            .map_err(db_error)?
            .ok_or(BlockError::NotFound(*cid))?;
        let entry = decode_entry(&value, cid)?;
        let data = if entry.tag == TAG_INLINE {
            inline_bytes(&value).to_vec()
        } else {
            match self.inner.dir.read(cid.hash(), entry.size) {
                Ok(data) => data,
                // gc removes the entry before the file: an entry still there names a
                // file that should be.
                Err(err) if err.kind() == io::ErrorKind::NotFound => {
                    return match self.inner.index.contains_key(&key).map_err(db_error)? {
                        true => Err(BlockError::Corrupt(*cid)),
                        false => Err(BlockError::NotFound(*cid)),
                    };
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

    fn has_block(&self, cid: &Cid) -> Result<bool, BlockError> {
        Ok(self.has(cid)?)
    }
}

/// Writes go through holds: the store itself offers no unheld `put_block`.
impl HoldBlocks for Store {
    type Hold<'a> = GcHold;

    fn hold(&self) -> GcHold {
        Store::hold(self)
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

/// Removes the snapshots sled had not finished writing (`snap.LSN.generating`), and
/// says how many there were.
///
/// sled writes a snapshot under that name and renames it when it is complete, but when
/// it opens it takes the name that sorts last as the newest snapshot, finished or not:
/// a process killed while sled wrote one leaves a database that will not open
/// ("corrupt snapshot file found"). A snapshot only shortens the replay of sled's log,
/// which stays the record of every write, so an unfinished one can go; sled then
/// starts from the last finished snapshot. Called only after opening failed, by the
/// process that holds the repository's lock.
fn remove_unfinished_snapshots(db_path: &Path) -> Result<usize, StoreError> {
    let io_error = |source| StoreError::Io {
        action: "remove an unfinished database snapshot",
        path: db_path.to_path_buf(),
        source,
    };
    let mut removed = 0;
    for entry in std::fs::read_dir(db_path).map_err(io_error)? {
        let path = entry.map_err(io_error)?.path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("");
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(&path).map_err(io_error)?;
            tracing::warn!(path = %path.display(), "removed a database snapshot left unfinished by a killed process");
            removed += 1;
        }
    }
    Ok(removed)
}

fn db_error(err: sled::Error) -> BlockError {
    BlockError::Backend(format!("database error: {err}"))
}

/// Bytes allocated on disk under the repository, like `du`, except the block files
/// themselves, which the totals count: the database's few files and the folders.
fn disk_usage_outside_block_files(repo: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let blocks = repo.join("blocks");
    let mut total = 0;
    let mut stack = vec![repo.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let in_blocks = dir == blocks;
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            total += meta.blocks() * 512;
            // The shard folders count; what is in them is counted by the totals.
            if meta.is_dir() && !in_blocks {
                stack.push(entry.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{cid_v1, codec, BlockPut};

    fn counted(store: &Store) -> Totals {
        let mut totals = Totals::default();
        for item in store.inner.index.range(FIRST_BLOCK_KEY..) {
            totals.add(&item.unwrap().1);
        }
        totals
    }

    #[test]
    fn a_snapshot_left_unfinished_by_a_killed_process_does_not_stop_the_store_opening() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::default();
        let cid = {
            let store = Store::open(dir.path(), &config).unwrap();
            let cid = cid_v1(codec::RAW, b"kept");
            let batch = store.batch();
            batch.put_block(&cid, b"kept").unwrap();
            batch.commit().unwrap();
            cid
        };
        // What a kill halfway through sled's snapshot leaves: a partial file under the
        // name sled gives a snapshot until it is complete, sorting after every other.
        let unfinished = dir
            .path()
            .join("db")
            .join("snap.7FFFFFFFFFFFFFFF.generating");
        std::fs::write(&unfinished, b"half a snapshot, no checksum").unwrap();
        let store = Store::open(dir.path(), &config).unwrap();
        assert_eq!(store.get_block(&cid).unwrap(), b"kept");
        assert!(!unfinished.exists());
    }

    #[test]
    fn drop_damaged_removes_only_blocks_that_no_longer_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        let blocks: Vec<Vec<u8>> = (1..=3u8).map(|byte| vec![byte; 100_000]).collect();
        let cids: Vec<Cid> = blocks.iter().map(|data| cid_v1(codec::RAW, data)).collect();
        let batch = store.batch();
        for (cid, data) in cids.iter().zip(&blocks) {
            batch.put_block(cid, data).unwrap();
        }
        batch.commit().unwrap();
        // One file gone, one with other bytes, one whole.
        let path = |cid: &Cid| store.inner.dir.path_of(cid.hash());
        std::fs::remove_file(path(&cids[0])).unwrap();
        std::fs::remove_file(path(&cids[1])).unwrap();
        std::fs::write(path(&cids[1]), vec![9u8; 100_000]).unwrap();
        let before = store.stat().unwrap();

        assert_eq!(store.drop_damaged(&cids).unwrap(), cids[..2].to_vec());
        assert!(!store.has(&cids[0]).unwrap() && !store.has(&cids[1]).unwrap());
        assert!(!path(&cids[1]).exists());
        assert_eq!(store.get_block(&cids[2]).unwrap(), blocks[2]);
        let after = store.stat().unwrap();
        assert_eq!(after.blocks, before.blocks - 2);
        assert_eq!(after.bytes, before.bytes - 200_000);
        assert_eq!(counted(&store), store.totals().unwrap());
        // Nothing left to drop; fetched again, a block is stored anew.
        assert!(store.drop_damaged(&cids).unwrap().is_empty());
        let hold = store.hold();
        hold.put_block(&cids[0], &blocks[0]).unwrap();
        assert_eq!(store.get_block(&cids[0]).unwrap(), blocks[0]);
    }

    #[test]
    fn totals_match_the_index_through_writes_duplicates_and_gc() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        let blocks: Vec<Vec<u8>> = [10, 4095, 4096, 100_000]
            .iter()
            .map(|&size| vec![size as u8; size])
            .collect();
        let batch = store.batch();
        for data in blocks.iter().chain(&blocks) {
            batch.put_block(&cid_v1(codec::RAW, data), data).unwrap();
        }
        let hold = store.hold();
        hold.put_block(&cid_v1(codec::RAW, b"single"), b"single")
            .unwrap();
        batch
            .commit_and_pin(&[cid_v1(codec::RAW, &blocks[3])], "user")
            .unwrap();
        assert_eq!(store.totals().unwrap(), counted(&store));
        assert_eq!(store.stat().unwrap().blocks, 5);
        assert_eq!(store.stat().unwrap().pins, 1);
        drop(hold);
        store.gc(&[], &[]).unwrap();
        assert_eq!(store.totals().unwrap(), counted(&store));
        assert_eq!(store.stat().unwrap().blocks, 1);

        // A store opened without totals counts them once.
        store.inner.index.remove(TOTALS_KEY).unwrap();
        store.inner.pins.remove(PIN_COUNT_KEY).unwrap();
        store.count_if_uncounted().unwrap();
        let stat = store.stat().unwrap();
        assert_eq!((stat.blocks, stat.pins), (1, 1));
    }
}
