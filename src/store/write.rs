//! Writing blocks: [`GcHold`] (blocks kept from gc while a writer relies on them) and
//! [`WriteBatch`] (blocks that become durable together).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use cid::Cid;
use multihash::Multihash;

use super::gate::{fingerprint, Fingerprint};
use super::index::{index_value, TAG_INLINE};
use super::{IncompleteDag, Store, StoreError, INLINE_LIMIT};
use crate::block::{hash_code, BlockError, BlockGet, BlockPut};
use crate::links;

/// Inline bytes a write batch holds in memory before handing them to sled early.
const PENDING_INLINE_LIMIT: usize = 64 * 1024 * 1024;

/// Keeps blocks from gc while a writer relies on them: every block written, read, looked
/// up or pinned through the hold stays until the hold is dropped, even if gc runs
/// meanwhile. A writer drops it once what it wrote is named by a pin or by the record
/// layer's index, which is where gc looks for roots.
///
/// Owned and `Send`: it can be kept across tasks and threads. Blocks written through it
/// (outside a batch) are each made durable before they are indexed; small ones become
/// durable at the next [`Store::flush`].
pub struct GcHold {
    store: Store,
    keys: Mutex<HashSet<Fingerprint>>,
}

impl GcHold {
    pub(super) fn new(store: Store) -> GcHold {
        GcHold {
            store,
            keys: Mutex::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Registers `hash` before anything of its block is written or checked: a gc either
    /// removed the block before this (and the caller sees it absent) or keeps it.
    fn keep(&self, hash: &Multihash<64>) {
        if hash.code() == hash_code::IDENTITY {
            return;
        }
        let key = fingerprint(hash);
        let new = self
            .keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key);
        if new {
            self.store.inner.gate.hold(key);
        }
    }

    /// Keeps the block `cid` if it is there; returns whether it is.
    pub fn protect(&self, cid: &Cid) -> Result<bool, StoreError> {
        self.keep(cid.hash());
        self.store.has(cid)
    }

    /// Keeps every block of the DAG below `root` and returns the blocks of it that are
    /// absent (their own links cannot be followed). Raw leaves are looked up, not read.
    pub fn protect_dag(&self, root: &Cid) -> Result<Vec<Cid>, StoreError> {
        let mut missing = Vec::new();
        links::walk(&[*root], &[], |cid| {
            match links::children_if_present(self, cid)? {
                Some(children) => Ok(children),
                None => {
                    missing.push(*cid);
                    Ok::<_, StoreError>(Vec::new())
                }
            }
        })?;
        Ok(missing)
    }

    /// Pins a root whose DAG this hold already keeps (it wrote or protected every block
    /// of it). The pin is what keeps the DAG once the hold is dropped.
    pub fn pin(&self, cid: &Cid, reason: &str) -> Result<(), StoreError> {
        self.keep(cid.hash());
        self.store.write_pin(cid, reason)
    }

    /// Pins `root` after checking that its whole DAG is here, keeping every block of it
    /// meanwhile.
    pub fn pin_dag(&self, root: &Cid, reason: &str) -> Result<(), StoreError> {
        let missing = self.protect_dag(root)?;
        if let Some(first) = missing.first() {
            return Err(StoreError::IncompleteDag(Box::new(IncompleteDag {
                root: *root,
                missing: missing.len(),
                first: *first,
            })));
        }
        self.pin(root, reason)
    }

    fn keys(&mut self) -> HashSet<Fingerprint> {
        std::mem::take(
            self.keys
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    fn put(&self, cid: &Cid, data: &[u8], hashed_by_caller: bool) -> Result<(), BlockError> {
        self.keep(cid.hash());
        let Some(key) = self.store.admit(cid, data, hashed_by_caller)? else {
            return Ok(());
        };
        let dir = &self.store.inner.dir;
        if data.len() > INLINE_LIMIT {
            let written = dir.write_durable(cid.hash(), data);
            written.map_err(|err| dir.write_error(cid.hash(), err))?;
        }
        self.store
            .index_new(vec![(key, index_value(data))])
            .map_err(BlockError::from)
    }
}

impl Drop for GcHold {
    fn drop(&mut self) {
        let keys = self.keys();
        self.store.inner.gate.release(keys);
    }
}

/// Reads through a hold keep what they read: a writer that links to a block it did not
/// write relies on it as much as on one it wrote.
impl BlockGet for GcHold {
    fn get_block(&self, cid: &Cid) -> Result<Vec<u8>, BlockError> {
        self.keep(cid.hash());
        self.store.read_verified(cid)
    }

    fn has_block(&self, cid: &Cid) -> Result<bool, BlockError> {
        Ok(self.protect(cid)?)
    }
}

impl BlockPut for GcHold {
    fn put_block(&self, cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
        self.put(cid, data, false)
    }

    fn put_hashed_block(&self, cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
        self.put(cid, data, true)
    }
}

/// Writes that become durable together. Implements [`BlockPut`]; every block is
/// checked against its CID before anything of it is stored.
///
/// Owned and `Send`: a DAG that arrives over many messages can be staged in one batch
/// that moves between threads and tasks. Its blocks are kept from gc from the moment
/// they are written; after [`WriteBatch::commit_held`] the returned hold goes on keeping
/// them until the caller has named them.
pub struct WriteBatch {
    hold: GcHold,
    pending: Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
    pending_inline_bytes: AtomicU64,
    wrote_files: AtomicBool,
}

impl WriteBatch {
    pub(super) fn new(store: Store) -> WriteBatch {
        WriteBatch {
            hold: GcHold::new(store),
            pending: Mutex::default(),
            pending_inline_bytes: AtomicU64::new(0),
            wrote_files: AtomicBool::new(false),
        }
    }

    /// The batch's hold: blocks the batch relies on without writing them (a subtree the
    /// store already has) are protected through it.
    pub fn hold(&self) -> &GcHold {
        &self.hold
    }

    /// Makes every block of the batch durable and indexes it; the blocks are left to gc
    /// unless something names them. Use [`WriteBatch::commit_held`] or
    /// [`WriteBatch::commit_and_pin`] to name them first.
    pub fn commit(self) -> Result<(), StoreError> {
        self.commit_held().map(drop)
    }

    /// Commits, then pins each root for `reason`, with the blocks kept from gc
    /// throughout: the pins never name blocks that are not yet durable, and gc never
    /// sees the blocks unnamed.
    pub fn commit_and_pin(self, roots: &[Cid], reason: &str) -> Result<(), StoreError> {
        let hold = self.commit_held()?;
        for root in roots {
            hold.pin(root, reason)?;
        }
        Ok(())
    }

    /// Makes every block of the batch durable, then indexes it (a block file is synced
    /// before any index entry names it), and hands back the hold that keeps the blocks
    /// from gc: the caller pins them, or indexes records that name them, then drops it.
    pub fn commit_held(self) -> Result<GcHold, StoreError> {
        let WriteBatch {
            hold,
            pending,
            wrote_files,
            ..
        } = self;
        let inner = &hold.store.inner;
        let started = std::time::Instant::now();
        if wrote_files.load(Ordering::Acquire) {
            inner.dir.sync().map_err(|source| StoreError::Io {
                action: "sync block directory",
                path: inner.dir.root().to_path_buf(),
                source,
            })?;
        }
        let synced = started.elapsed();
        let pending = pending
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entries = pending.len();
        hold.store.index_new(pending)?;
        inner.db.flush()?;
        tracing::debug!(entries, ?synced, total = ?started.elapsed(), "write batch committed");
        Ok(hold)
    }

    fn spill_inline(&self) -> Result<(), BlockError> {
        let spilled: Vec<(Vec<u8>, Vec<u8>)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let (inline, files) = pending
                .drain(..)
                .partition(|(_, value)| value.first() == Some(&TAG_INLINE));
            *pending = files;
            self.pending_inline_bytes.store(0, Ordering::Release);
            inline
        };
        // Verified blocks that nothing names yet: harmless if the batch never commits.
        Ok(self.hold.store.index_new(spilled)?)
    }

    fn put(&self, cid: &Cid, data: &[u8], hashed_by_caller: bool) -> Result<(), BlockError> {
        self.put_with(cid, data, hashed_by_caller, None)
    }

    /// Stages a block; a large one is written from `data`, or copied from `origin` (a file
    /// and offset the caller read `data` from) when given.
    fn put_with(
        &self,
        cid: &Cid,
        data: &[u8],
        hashed_by_caller: bool,
        origin: Option<(&std::fs::File, u64)>,
    ) -> Result<(), BlockError> {
        self.hold.keep(cid.hash());
        let Some(key) = self.hold.store.admit(cid, data, hashed_by_caller)? else {
            return Ok(());
        };
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
            let dir = &self.hold.store.inner.dir;
            let written = match origin {
                Some((file, offset)) => dir.copy_from(cid.hash(), data, file, offset),
                None => dir.write(cid.hash(), data),
            };
            written.map_err(|err| dir.write_error(cid.hash(), err))?;
            self.wrote_files.store(true, Ordering::Release);
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((key, index_value(data)));
        }
        Ok(())
    }
}

impl BlockPut for WriteBatch {
    fn put_block(&self, cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
        self.put(cid, data, false)
    }

    fn put_hashed_block(&self, cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
        self.put(cid, data, true)
    }

    fn put_hashed_block_from(
        &self,
        cid: &Cid,
        data: &[u8],
        file: &std::fs::File,
        offset: u64,
    ) -> Result<(), BlockError> {
        self.put_with(cid, data, true, Some((file, offset)))
    }
}
