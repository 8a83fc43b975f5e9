//! `verify`: every stored block re-hashed, every rooted DAG checked complete.

use std::io;

use cid::Cid;
use multihash::Multihash;
use rayon::prelude::*;

use super::gate::fingerprint;
use super::index::{
    decode_entry, inline_bytes, recorded_size, FIRST_BLOCK_KEY, TAG_FILE, TAG_INLINE, TOTALS_KEY,
};
use super::{hash_name, GcRoots, Store, StoreError};
use crate::block::{self, BlockError};
use crate::links::{self, LinkError};

/// Index entries `verify` holds in memory at a time.
const VERIFY_BATCH: usize = 4096;

/// One problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The stored bytes do not hash to the block's name.
    Corrupt(String),
    /// The index names a block whose bytes are gone.
    MissingData(String),
    /// The index entry of a block cannot be read (its parts disagree, or it claims a
    /// size no block can have).
    DamagedEntry(String),
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
            Damage::DamagedEntry(name) => {
                write!(f, "damaged index entry for block {name}")
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

impl Store {
    /// Re-hashes every stored block and checks that every DAG reachable from a pin or
    /// from `extra_roots` is complete.
    pub fn verify(&self, extra_roots: &[Cid], let_go: &[Cid]) -> Result<VerifyReport, StoreError> {
        let roots = GcRoots {
            keep: extra_roots.to_vec(),
            let_go: let_go.to_vec(),
        };
        self.verify_with(|| Ok::<_, StoreError>(roots))
    }

    /// Like [`Store::verify`], with the layers above's roots read by `roots` while no gc
    /// runs, so that no DAG is found incomplete because a gc was removing it.
    pub fn verify_with<E: From<StoreError>>(
        &self,
        roots: impl FnOnce() -> Result<GcRoots, E>,
    ) -> Result<VerifyReport, E> {
        let _maintenance = self
            .inner
            .maintenance
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let extra = roots()?;
        let mut report = self.verify_blocks()?;
        let mut roots: Vec<Cid> = self.pins()?.into_iter().map(|(cid, _)| cid).collect();
        roots.extend_from_slice(&extra.keep);
        let mut missing = Vec::new();
        links::walk(&roots, &extra.let_go, |cid| {
            match links::children_if_present(self, cid) {
                Ok(Some(children)) => return Ok(children),
                Ok(None) => missing.push(Damage::MissingBlock(*cid)),
                Err(LinkError::Block(
                    err @ (BlockError::Corrupt(_) | BlockError::UnsupportedHash { .. }),
                )) => missing.push(Damage::Undecodable(*cid, err.to_string())),
                Err(LinkError::Block(err)) => return Err(StoreError::from(err)),
                Err(err) => missing.push(Damage::Undecodable(*cid, err.to_string())),
            }
            Ok(Vec::new())
        })?;
        // A corrupt block is also unreadable during the walk; name it once.
        missing.retain(|damage| match damage {
            Damage::MissingBlock(cid) | Damage::Undecodable(cid, _) => {
                let name = hash_name(cid.hash());
                !report.damage.iter().any(|d| {
                    matches!(d, Damage::Corrupt(n) | Damage::MissingData(n) | Damage::DamagedEntry(n) if *n == name)
                })
            }
            _ => true,
        });
        report.damage.extend(missing);
        Ok(report)
    }

    /// Removes the blocks of `cids` whose stored bytes are gone or no longer match
    /// their CID, so that they can be fetched again (a writer skips a block the index
    /// names). Each is checked again with the gate closed, and one a writer holds at
    /// that moment is left alone. As in gc, the entries are durably gone before their
    /// files. Returns the blocks removed.
    pub fn drop_damaged(&self, cids: &[Cid]) -> Result<Vec<Cid>, StoreError> {
        let inner = &self.inner;
        let closed = inner.gate.close();
        let mut totals = self.totals()?;
        let mut batch = sled::Batch::default();
        let mut dropped = Vec::new();
        for cid in cids {
            if closed.held(fingerprint(cid.hash())) {
                continue;
            }
            let key = cid.hash().to_bytes();
            let Some(value) = inner.index.get(&key)? else {
                continue;
            };
            if !matches!(self.read_verified(cid), Err(BlockError::Corrupt(_))) {
                continue;
            }
            totals.remove(&value);
            batch.remove(key);
            dropped.push((*cid, value.first() == Some(&TAG_FILE)));
        }
        if dropped.is_empty() {
            return Ok(Vec::new());
        }
        batch.insert(TOTALS_KEY, totals.encode());
        inner.index.apply_batch(batch)?;
        inner.db.flush()?;
        for (cid, is_file) in &dropped {
            if *is_file {
                inner
                    .dir
                    .remove(cid.hash())
                    .map_err(|source| StoreError::Io {
                        action: "remove damaged block file",
                        path: inner.dir.path_of(cid.hash()),
                        source,
                    })?;
            }
        }
        drop(closed);
        Ok(dropped.into_iter().map(|(cid, _)| cid).collect())
    }

    /// Re-hashes every indexed block on all cores, in bounded batches: inline blocks are
    /// in the index values, and a large store's index does not fit in memory at once.
    fn verify_blocks(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let mut entries: Vec<(sled::IVec, sled::IVec)> = Vec::with_capacity(VERIFY_BATCH);
        let mut index = self.inner.index.range(FIRST_BLOCK_KEY..);
        loop {
            entries.clear();
            for item in index.by_ref().take(VERIFY_BATCH) {
                entries.push(item?);
            }
            if entries.is_empty() {
                return Ok(report);
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
    }

    /// Re-hashes one indexed block; `Some` names what is wrong with it.
    fn check_entry(&self, key: &[u8], value: &[u8]) -> Result<Option<Damage>, StoreError> {
        let hash = Multihash::<64>::from_bytes(key)
            .map_err(|_| StoreError::DamagedIndex(format!("{key:02x?}")))?;
        let name = hash_name(&hash);
        let probe = Cid::new_v1(block::codec::RAW, hash);
        let Ok(entry) = decode_entry(value, &probe) else {
            return Ok(Some(Damage::DamagedEntry(name)));
        };
        let data = match entry.tag {
            TAG_INLINE => inline_bytes(value).to_vec(),
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
}
