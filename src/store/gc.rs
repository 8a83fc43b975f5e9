//! Garbage collection beside readers and writers.
//!
//! gc marks without closing the gate (readers and writers go on), then sweeps in steps
//! of at most [`SWEEP_STEP`] entries, each with the gate closed; readers never wait for
//! it. What keeps a block that a writer is still working on is the gate: see
//! `gate.rs` and docs/DESIGN.md ("gc beside writers").

use std::collections::HashSet;
use std::ops::Bound;

use cid::Cid;
use multihash::Multihash;

use super::gate::{fingerprint, Fingerprint, Gate};
use super::index::{recorded_size, FIRST_BLOCK_KEY, TAG_FILE, TOTALS_KEY};
use super::{Store, StoreError};
use crate::block::{hash_code, BlockError};
use crate::links;

/// Index entries one sweep step removes while the gate is closed to writers.
const SWEEP_STEP: usize = 256;

/// Blocks a layer above the store keeps alive: gc marks from `keep` as from pins, and
/// neither keeps nor follows a block in `let_go` unless a pin names it (the record layer
/// uses it for the content of retracted records).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcRoots {
    pub keep: Vec<Cid>,
    pub let_go: Vec<Cid>,
}

/// What `gc` removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    pub blocks_removed: u64,
    pub bytes_freed: u64,
    pub orphan_files_removed: u64,
}

/// Where a running gc is: for progress reports, and for acting between its phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcPhase {
    /// Roots read and every block reachable from them marked; nothing removed yet.
    Marked { live_blocks: u64 },
    /// One sweep step done.
    Swept { blocks_removed: u64 },
}

/// Ends a gc's sparing when the gc ends, however it ends.
struct Running<'a>(&'a Gate);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.end_gc();
    }
}

impl Store {
    /// Removes every block not reachable from a pin or from `extra_roots`, and block
    /// files nothing indexes. Blocks in `let_go` are neither kept nor followed unless a
    /// pin names them.
    pub fn gc(&self, extra_roots: &[Cid], let_go: &[Cid]) -> Result<GcReport, StoreError> {
        let roots = GcRoots {
            keep: extra_roots.to_vec(),
            let_go: let_go.to_vec(),
        };
        self.gc_with(|| Ok::<_, StoreError>(roots), |_| {})
    }

    /// Like [`Store::gc`], with the layers above's roots read by `roots` once the gc has
    /// begun: roots named before that are read, and blocks written for roots named after
    /// it are held, so no root is missed in between. `progress` hears of each phase.
    pub fn gc_with<E: From<StoreError>>(
        &self,
        roots: impl FnOnce() -> Result<GcRoots, E>,
        mut progress: impl FnMut(GcPhase),
    ) -> Result<GcReport, E> {
        let inner = &self.inner;
        let _maintenance = inner
            .maintenance
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.gate.begin_gc();
        let _running = Running(&inner.gate);

        let extra = roots()?;
        let pinned: HashSet<Cid> = self.pins()?.into_iter().map(|(cid, _)| cid).collect();
        let skipped: Vec<Cid> = extra
            .let_go
            .iter()
            .filter(|cid| !pinned.contains(cid))
            .copied()
            .collect();
        let mut roots: Vec<Cid> = pinned.into_iter().collect();
        roots.extend(extra.keep.iter().filter(|cid| !skipped.contains(cid)));
        let live = self.mark_live(&roots, &skipped)?;
        progress(GcPhase::Marked {
            live_blocks: live.len() as u64,
        });

        let mut report = GcReport::default();
        self.sweep(&live, &mut report, &mut progress)?;
        self.remove_orphan_files(&mut report)?;
        Ok(report)
    }

    /// The fingerprints of every block reachable from `roots`. Raw leaves have no
    /// links, so they are only looked up, not read: marking costs the size of the DAG's
    /// inner nodes, not of its data. A missing or damaged inner node stops gc, since
    /// deleting around a hole could remove what the hole links to.
    fn mark_live(
        &self,
        roots: &[Cid],
        skipped: &[Cid],
    ) -> Result<HashSet<Fingerprint>, StoreError> {
        let stopped = |err: &dyn std::fmt::Display| {
            StoreError::Block(BlockError::Backend(format!(
                "gc stopped, nothing removed: {err} (run `oermesh verify`)"
            )))
        };
        let mut live = HashSet::new();
        links::walk(roots, skipped, |cid| {
            if cid.hash().code() == hash_code::IDENTITY {
                return Ok(Vec::new());
            }
            // Visited by CID, live by multihash: the same bytes may be linked both as a
            // raw leaf and as a dag-pb node, and only the latter has links.
            live.insert(fingerprint(cid.hash()));
            match links::children_if_present(self, cid) {
                Ok(Some(children)) => Ok(children),
                Ok(None) => Err(stopped(&BlockError::NotFound(*cid))),
                Err(err) => Err(stopped(&err)),
            }
        })?;
        Ok(live)
    }

    /// Removes index entries not in `live`, a step at a time: candidates are found
    /// without the gate (only gc removes entries, and one gc runs at a time), then
    /// removed with it closed, sparing what writers registered meanwhile. Each step's
    /// entries are durably gone before their files are: a crash leaves orphan files,
    /// never an entry without its file.
    fn sweep(
        &self,
        live: &HashSet<Fingerprint>,
        report: &mut GcReport,
        progress: &mut impl FnMut(GcPhase),
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut from = Bound::Included(FIRST_BLOCK_KEY.to_vec());
        loop {
            let mut candidates = Vec::with_capacity(SWEEP_STEP);
            let mut scanned_to = None;
            for item in inner.index.range((from.clone(), Bound::Unbounded)) {
                let (key, value) = item?;
                let hash = Multihash::<64>::from_bytes(&key)
                    .map_err(|_| StoreError::DamagedIndex(format!("{:02x?}", key.as_ref())))?;
                scanned_to = Some(key.to_vec());
                if !live.contains(&fingerprint(&hash)) {
                    candidates.push((hash, key, value));
                    if candidates.len() == SWEEP_STEP {
                        break;
                    }
                }
            }
            let Some(scanned_to) = scanned_to else {
                return Ok(());
            };
            from = Bound::Excluded(scanned_to);
            if candidates.is_empty() {
                continue;
            }

            let removed = {
                let closed = inner.gate.close();
                let mut totals = self.totals()?;
                let mut batch = sled::Batch::default();
                let mut removed = Vec::with_capacity(candidates.len());
                for (hash, key, value) in candidates {
                    if closed.spares(fingerprint(&hash)) {
                        continue;
                    }
                    totals.remove(&value);
                    batch.remove(key);
                    removed.push((
                        hash,
                        value.first() == Some(&TAG_FILE),
                        recorded_size(&value),
                    ));
                }
                batch.insert(TOTALS_KEY, totals.encode());
                inner.index.apply_batch(batch)?;
                removed
            };
            inner.db.flush()?;
            let closed = inner.gate.close();
            for (hash, is_file, size) in removed {
                report.blocks_removed += 1;
                report.bytes_freed += size;
                // A writer that registered the block since its entry went may be
                // writing its file anew; the file it finds or writes is then its own.
                if is_file && !closed.spares(fingerprint(&hash)) {
                    inner.dir.remove(&hash).map_err(|source| StoreError::Io {
                        action: "remove block file",
                        path: inner.dir.path_of(&hash),
                        source,
                    })?;
                }
            }
            drop(closed);
            progress(GcPhase::Swept {
                blocks_removed: report.blocks_removed,
            });
        }
    }

    /// Removes block files no index entry names (left by a crash or an uncommitted
    /// batch), sparing those of writers still at work: a writer registers a block before
    /// it writes the file.
    fn remove_orphan_files(&self, report: &mut GcReport) -> Result<(), StoreError> {
        let inner = &self.inner;
        let files = inner.dir.scan().map_err(|source| StoreError::Io {
            action: "list block directory",
            path: inner.dir.root().to_path_buf(),
            source,
        })?;
        for step in files.chunks(SWEEP_STEP) {
            let closed = inner.gate.close();
            for (hash, path) in step {
                if closed.spares(fingerprint(hash)) || inner.index.contains_key(hash.to_bytes())? {
                    continue;
                }
                let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                match std::fs::remove_file(path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        return Err(StoreError::Io {
                            action: "remove orphan block file",
                            path: path.clone(),
                            source,
                        })
                    }
                }
                report.orphan_files_removed += 1;
                report.bytes_freed += size;
            }
        }
        Ok(())
    }
}
