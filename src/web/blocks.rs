//! Where the gateway's blocks come from: the local store first, then, when the node
//! has a [`BlockFetcher`], its peers, for a bounded time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cid::Cid;

use crate::block::{self, BlockError, BlockGet};
use crate::store::Store;

/// Asks other nodes for a block the store does not hold. Implemented by the network
/// layer; called from blocking threads.
pub trait BlockFetcher: Send + Sync {
    /// The block's bytes, or `None` when no peer delivered it within `within`. The
    /// implementation may store what it fetched; the gateway checks the bytes against
    /// the CID either way.
    fn fetch(&self, cid: &Cid, within: Duration) -> Result<Option<Vec<u8>>, BlockError>;
}

/// The gateway's view of blocks: the store and, optionally, the network.
#[derive(Clone)]
pub struct BlockSource {
    store: Store,
    fetcher: Option<Arc<dyn BlockFetcher>>,
    fetch_timeout: Duration,
}

impl BlockSource {
    pub fn new(
        store: Store,
        fetcher: Option<Arc<dyn BlockFetcher>>,
        fetch_timeout: Duration,
    ) -> BlockSource {
        BlockSource {
            store,
            fetcher,
            fetch_timeout,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Block access for one request, which remembers whether a fetch timed out (the
    /// difference between 404 and 504).
    pub fn for_request(&self) -> RequestBlocks<'_> {
        RequestBlocks {
            source: self,
            timed_out: AtomicBool::new(false),
            local_only: false,
        }
    }

    /// Block access that never asks peers (`Cache-Control: only-if-cached`).
    pub fn local_only(&self) -> RequestBlocks<'_> {
        RequestBlocks {
            source: self,
            timed_out: AtomicBool::new(false),
            local_only: true,
        }
    }
}

pub struct RequestBlocks<'a> {
    source: &'a BlockSource,
    timed_out: AtomicBool,
    local_only: bool,
}

impl RequestBlocks<'_> {
    /// Whether a block was asked of peers and did not arrive in time.
    pub fn timed_out(&self) -> bool {
        self.timed_out.load(Ordering::Relaxed)
    }
}

impl BlockGet for RequestBlocks<'_> {
    fn get_block(&self, cid: &Cid) -> Result<Vec<u8>, BlockError> {
        match self.source.store.get_block(cid) {
            Err(BlockError::NotFound(_)) if !self.local_only => {}
            other => return other,
        }
        let Some(fetcher) = &self.source.fetcher else {
            return Err(BlockError::NotFound(*cid));
        };
        match fetcher.fetch(cid, self.source.fetch_timeout)? {
            Some(bytes) => {
                block::verify(cid, &bytes)?;
                Ok(bytes)
            }
            None => {
                self.timed_out.store(true, Ordering::Relaxed);
                Err(BlockError::NotFound(*cid))
            }
        }
    }
}

/// Remembers the CIDs read through it, in order: the blocks a path resolution
/// traversed, which a CAR for that path must carry.
pub struct Recording<'a, B: ?Sized> {
    inner: &'a B,
    seen: Mutex<Vec<Cid>>,
}

impl<'a, B: BlockGet + ?Sized> Recording<'a, B> {
    pub fn new(inner: &'a B) -> Self {
        Recording {
            inner,
            seen: Mutex::new(Vec::new()),
        }
    }

    pub fn into_cids(self) -> Vec<Cid> {
        self.seen.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl<B: BlockGet + ?Sized> BlockGet for Recording<'_, B> {
    fn get_block(&self, cid: &Cid) -> Result<Vec<u8>, BlockError> {
        let bytes = self.inner.get_block(cid)?;
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(*cid);
        Ok(bytes)
    }
}
