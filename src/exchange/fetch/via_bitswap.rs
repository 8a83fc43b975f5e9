//! Fetching from peers that speak bitswap but not `/oermesh/blocks/1` (kubo, Helia, any
//! IPFS node): the same session, queue and peer scoring, with bitswap as the transport.
//!
//! Bitswap names blocks, not DAGs, so a request to such a peer asks for the blocks at
//! the top of its items; each block that arrives is opened on the spot and what is
//! missing below it goes back to the queue as newly found wants, to be handed out again
//! (to this peer or another) like any other. Blocks arrive hashed by the bitswap client
//! and go into the fetch's write batch without a second hash.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cid::Cid;
use libp2p::PeerId;
use tokio::sync::oneshot;

use super::{
    plan, resolve_here, Failure, FetchError, FetchRequest, Head, HeadReply, Here, Outcome,
    PutError, Requested, Session, Sink, Verified, STALL,
};
use crate::bitswap::{wire::WantType, Answer, Bitswap, BitswapError};
use crate::exchange::walk::Item;
use crate::exchange::Shared;
use crate::metrics::Protocol;

impl Session {
    /// The head from a bitswap peer: the path is resolved here, one block at a time,
    /// asking the peer for each block it needs that the store lacks.
    pub(super) async fn head_from_bitswap(
        &self,
        bitswap: &Bitswap,
        peer: PeerId,
        request: &FetchRequest,
    ) -> Result<HeadReply, Failure> {
        let mut received: Vec<(Cid, Vec<u8>)> = Vec::new();
        loop {
            let layered = Layered {
                received: Verified(received.iter().cloned().collect()),
                store: self.shared.store.clone(),
            };
            let (root, path) = (request.root, request.path.clone());
            let here = self
                .shared
                .pool
                .run(move || resolve_here(&layered, &root, &path))
                .await
                .map_err(|_| Failure::Cancelled)?;
            let missing = match here {
                Ok(Here::Found { target, block }) => {
                    return Ok(HeadReply::Found(Head {
                        target,
                        target_block: block,
                        received,
                        from: Some(peer),
                    }))
                }
                Ok(Here::Invalid(err)) => return Ok(HeadReply::Invalid(err)),
                Ok(Here::Missing(cid)) => cid,
                Err(FetchError::Store(err)) => return Err(Failure::Store(err)),
                Err(err) => return Err(Failure::Stream(err.to_string())),
            };
            if received.len() >= crate::exchange::wire::MAX_PATH_BLOCKS {
                return Err(Failure::Stream("a path of too many blocks".into()));
            }
            match want_one(bitswap, peer, missing).await? {
                Some(data) => received.push((missing, data)),
                None => return Ok(HeadReply::Lacks(missing)),
            }
        }
    }
}

/// One block from a bitswap peer; `None` if it says it does not have it.
async fn want_one(bitswap: &Bitswap, peer: PeerId, cid: Cid) -> Result<Option<Vec<u8>>, Failure> {
    let mut wants = bitswap
        .want(peer, vec![cid], WantType::Block)
        .await
        .map_err(failure)?;
    loop {
        match tokio::time::timeout(STALL, wants.next()).await {
            Err(_) => return Err(stalled()),
            Ok(None) => return Err(gone(bitswap, peer)),
            Ok(Some(Answer::Block { data, .. })) => return Ok(Some(data.to_vec())),
            Ok(Some(Answer::DontHave(_))) => return Ok(None),
            Ok(Some(Answer::Have(_))) => {}
        }
    }
}

impl Requested {
    /// This request, over bitswap: the blocks at the top of its items, each opened as
    /// it arrives.
    pub(super) async fn exchange_bitswap(
        &self,
        bitswap: &Bitswap,
        shared: &Arc<Shared>,
        sink: &Arc<Sink>,
        outcome: &mut Outcome,
        mut cancelled: oneshot::Receiver<()>,
    ) -> Result<(), Failure> {
        let slots = shared.slots(self.peer);
        let _slot = tokio::select! {
            slot = slots.acquire_owned() => slot.map_err(|_| Failure::Cancelled)?,
            _ = &mut cancelled => return Err(Failure::Cancelled),
        };
        let mut waiting: HashMap<Cid, Item> =
            self.items.iter().map(|item| (item.cid, *item)).collect();
        let cids: Vec<Cid> = self.items.iter().map(|item| item.cid).collect();
        let mut wants = tokio::select! {
            wants = bitswap.want(self.peer, cids, WantType::Block) => wants.map_err(failure)?,
            _ = &mut cancelled => return Err(Failure::Cancelled),
        };
        let prune: HashSet<Cid> = self.prune.iter().copied().collect();
        let result = loop {
            if waiting.is_empty() {
                break Ok(());
            }
            let answer = tokio::select! {
                biased;
                _ = &mut cancelled => break Err(Failure::Cancelled),
                answer = tokio::time::timeout(STALL, wants.next()) => answer,
            };
            let (cid, data) = match answer {
                Err(_) => break Err(stalled()),
                Ok(None) => break Err(gone(bitswap, self.peer)),
                Ok(Some(Answer::Have(_))) => continue,
                Ok(Some(Answer::DontHave(cid))) => {
                    if let Some(item) = waiting.remove(&cid) {
                        outcome.missing.push(item);
                    }
                    continue;
                }
                Ok(Some(Answer::Block { cid, data })) => (cid, data),
            };
            let Some(item) = waiting.remove(&cid) else {
                continue;
            };
            let bytes = data.len() as u64;
            self.received.fetch_add(bytes, Ordering::Relaxed);
            sink.frames.fetch_add(1, Ordering::Relaxed);
            shared.count_fetched(Protocol::Bitswap, bytes);
            if let Some(progress) = &self.progress {
                progress.add(self.peer, bytes);
            }
            let (store, job_sink, prune) = (shared.store.clone(), sink.clone(), prune.clone());
            let data = data.to_vec();
            let opened = shared
                .pool
                .run(move || {
                    job_sink.put_checked(&cid, &data).map_err(Opened::Put)?;
                    plan(&store, vec![(item, Some(data))], &prune)
                        .map_err(|err| Opened::Plan(Box::new(err)))
                })
                .await
                .unwrap_or(Err(Opened::Put(PutError::Stopped)));
            match opened {
                Ok(found) => {
                    outcome.blocks += 1;
                    outcome.discovered.extend(found);
                }
                Err(err) => {
                    outcome.remaining.push(item);
                    break Err(match err {
                        Opened::Put(PutError::Store(err)) => Failure::Store(err),
                        Opened::Put(PutError::Corrupt(reason)) => Failure::Violation(reason),
                        Opened::Put(PutError::Stopped) => Failure::Cancelled,
                        Opened::Plan(err) => match *err {
                            FetchError::Store(err) => Failure::Store(err),
                            FetchError::Dag(err) => Failure::Dag(err),
                            other => Failure::Stream(other.to_string()),
                        },
                    });
                }
            }
        };
        outcome.remaining.extend(waiting.into_values());
        result
    }
}

/// Why a block from a bitswap peer could not be taken.
enum Opened {
    Put(PutError),
    Plan(Box<FetchError>),
}

/// The store with the blocks received for a path on top.
struct Layered {
    received: Verified,
    store: crate::store::Store,
}

impl crate::block::BlockGet for Layered {
    fn get_block(&self, cid: &Cid) -> Result<Vec<u8>, crate::block::BlockError> {
        match self.received.get_block(cid) {
            Err(crate::block::BlockError::NotFound(_)) => self.store.get_block(cid),
            found => found,
        }
    }
}

fn failure(err: BitswapError) -> Failure {
    match err {
        BitswapError::Unsupported(_) => Failure::Unsupported,
        BitswapError::Stopped => Failure::Cancelled,
        err => Failure::Stream(err.to_string()),
    }
}

fn stalled() -> Failure {
    Failure::Stream(format!("no bitswap answer for {} s", STALL.as_secs()))
}

/// Why the answers ended before every block came.
fn gone(bitswap: &Bitswap, peer: PeerId) -> Failure {
    if bitswap.speaks_bitswap(&peer) == Some(false) {
        Failure::Unsupported
    } else {
        Failure::Stream("the bitswap peer went away".into())
    }
}
