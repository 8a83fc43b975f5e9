//! Asking peers for blocks: [`Bitswap::want`] sends WANT_BLOCK entries (asking to be
//! told DONT_HAVE) and returns [`Wants`], on which the peer's answers arrive. A block is
//! hashed first, on the blocking pool, since its CID is known only from its bytes; it is
//! handed on only if this node asked that peer for it, and dropped otherwise. Dropping
//! `Wants` cancels what it still waits for.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use cid::Cid;
use libp2p::PeerId;
use multihash::Multihash;
use tokio::sync::mpsc;

use super::peer::{Peer, Queued};
use super::wire::{Entry, Outgoing, Presence, ReceivedBlock, WantType};
use super::{Bitswap, BitswapError, Shared};

/// Answers buffered for one [`Wants`] before the stream that brings them waits.
const ANSWERS: usize = 16;

/// What a peer said about a block we want.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The block, hashed and found to be the one asked for.
    Block {
        cid: Cid,
        data: Bytes,
    },
    Have(Cid),
    DontHave(Cid),
}

/// Our wants of one peer, by multihash: a block is the same whatever codec its CID says.
#[derive(Default)]
pub(super) struct Registry {
    wants: HashMap<Multihash<64>, Vec<Waiter>>,
    next_id: u64,
}

struct Waiter {
    id: u64,
    cid: Cid,
    answers: mpsc::Sender<Answer>,
}

impl Registry {
    pub fn len(&self) -> usize {
        self.wants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.wants.is_empty()
    }

    pub fn clear(&mut self) {
        self.wants.clear();
    }
}

/// Blocks wanted of one peer. Answers arrive through [`Wants::next`]; it returns `None`
/// once every block has arrived, or when the peer went away.
pub struct Wants {
    peer: Arc<Peer>,
    id: u64,
    cids: Vec<Cid>,
    answers: mpsc::Receiver<Answer>,
}

impl Bitswap {
    /// Asks `peer` for `cids` (WANT_BLOCK, or WANT_HAVE), first ones first.
    pub async fn want(
        &self,
        peer: PeerId,
        cids: Vec<Cid>,
        want_type: WantType,
    ) -> Result<Wants, BitswapError> {
        let state = self.shared.peer(peer)?;
        if state.speaks_bitswap() == Some(false) {
            return Err(BitswapError::Unsupported(peer));
        }
        let (sender, answers) = mpsc::channel(ANSWERS);
        let id = {
            let mut registry = state.registry();
            let id = registry.next_id;
            registry.next_id += 1;
            for cid in &cids {
                registry.wants.entry(*cid.hash()).or_default().push(Waiter {
                    id,
                    cid: *cid,
                    answers: sender.clone(),
                });
            }
            id
        };
        let wants = Wants {
            peer: state.clone(),
            id,
            cids: cids.clone(),
            answers,
        };
        let count = cids.len() as i32;
        let entries = cids
            .into_iter()
            .enumerate()
            .map(|(index, cid)| Entry::want(cid, want_type, count - index as i32))
            .collect();
        let queued = Queued {
            message: Outgoing {
                wantlist: entries,
                ..Outgoing::default()
            },
            places: None,
        };
        state
            .outbox
            .send(queued)
            .await
            .map_err(|_| BitswapError::Disconnected(peer))?;
        Ok(wants)
    }
}

impl Wants {
    pub async fn next(&mut self) -> Option<Answer> {
        self.answers.recv().await
    }

    pub fn peer(&self) -> PeerId {
        self.peer.id
    }
}

impl Drop for Wants {
    fn drop(&mut self) {
        let mut cancels = Vec::new();
        {
            let mut registry = self.peer.registry();
            for cid in &self.cids {
                let Some(waiters) = registry.wants.get_mut(cid.hash()) else {
                    continue;
                };
                let before = waiters.len();
                waiters.retain(|waiter| waiter.id != self.id);
                if waiters.len() < before && waiters.is_empty() {
                    registry.wants.remove(cid.hash());
                    cancels.push(Entry::cancel(*cid));
                }
            }
        }
        if cancels.is_empty() || self.peer.is_closed() {
            return;
        }
        let queued = Queued {
            message: Outgoing {
                wantlist: cancels,
                ..Outgoing::default()
            },
            places: None,
        };
        if let Err(mpsc::error::TrySendError::Full(queued)) = self.peer.outbox.try_send(queued) {
            let outbox = self.peer.outbox.clone();
            tokio::spawn(async move {
                let _ = outbox.send(queued).await;
            });
        }
    }
}

/// Hands received blocks and presences to whoever asked this peer for them.
pub(super) async fn received(
    shared: &Shared,
    peer: &Peer,
    blocks: Vec<ReceivedBlock>,
    presences: Vec<(Cid, Presence)>,
) {
    let counters = &shared.counters;
    if !blocks.is_empty() && peer.registry().is_empty() {
        // Nothing asked of this peer: not even worth hashing.
        counters
            .unrequested_blocks
            .fetch_add(blocks.len() as u64, Ordering::Relaxed);
    } else if !blocks.is_empty() {
        let hashed = shared
            .pool
            .run(move || {
                blocks
                    .into_iter()
                    .map(|block| {
                        block
                            .prefix
                            .cid_of(&block.data)
                            .map(|cid| (cid, block.data))
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
        for hashed in hashed {
            let Ok((cid, data)) = hashed else {
                counters.invalid_blocks.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let waiters = peer.registry().wants.remove(cid.hash()).unwrap_or_default();
            if waiters.is_empty() {
                counters.unrequested_blocks.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            counters.blocks_received.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes_received
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            peer.blocks_received.fetch_add(1, Ordering::Relaxed);
            for waiter in waiters {
                let answer = Answer::Block {
                    cid: waiter.cid,
                    data: data.clone(),
                };
                let _ = waiter.answers.send(answer).await;
            }
        }
    }
    for (cid, presence) in presences {
        let waiters: Vec<(Cid, mpsc::Sender<Answer>)> = peer
            .registry()
            .wants
            .get(cid.hash())
            .map(|waiters| {
                waiters
                    .iter()
                    .map(|waiter| (waiter.cid, waiter.answers.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (cid, answers) in waiters {
            let answer = match presence {
                Presence::Have => Answer::Have(cid),
                Presence::DontHave => Answer::DontHave(cid),
            };
            let _ = answers.send(answer).await;
        }
    }
}
