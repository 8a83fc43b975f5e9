//! Answering a peer's wantlist: WANT_BLOCK with the block, WANT_HAVE with HAVE, and
//! either with DONT_HAVE when the block is not here and the peer asked to be told.
//! Wants for blocks that are not here stay in the wantlist and are looked up again now
//! and then, so that a block that arrives later is sent then.
//!
//! Store reads run on the blocking pool, one message's worth at a time: a read takes a
//! serving place (of [`SERVE_SLOTS`](super::SERVE_SLOTS), and of the peer's
//! [`SERVE_SLOTS_PER_PEER`](super::SERVE_SLOTS_PER_PEER)) that the message keeps until
//! it is written, so serving holds at most that many messages in memory.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;

use super::ledger::{Answered, Task};
use super::peer::{Peer, Queued};
use super::wire::{self, Outgoing, OutgoingBlock, Presence, Version, WantType, Wantlist};
use super::Shared;
use crate::block::{BlockError, BlockGet};
use crate::store::Store;

/// Wantlist entries looked at for one message.
const TASKS_PER_MESSAGE: usize = 256;
/// How often wants for blocks that were not here are looked up again.
const LOOK_AGAIN: Duration = Duration::from_secs(2);

/// Applies a received wantlist and wakes the server if there is work.
pub(super) fn wantlist_received(shared: &Shared, peer: &Peer, wantlist: &Wantlist) {
    let applied = peer.ledger().apply(wantlist);
    if applied.refused > 0 {
        let refused = applied.refused as u64;
        peer.refused_wants.fetch_add(refused, Ordering::Relaxed);
        shared
            .counters
            .refused_wants
            .fetch_add(refused, Ordering::Relaxed);
    }
    if applied.new_work {
        peer.work.notify_one();
    }
}

/// Serves the peer's wantlist until the peer's state is dropped.
pub(super) async fn serve_loop(shared: Arc<Shared>, peer: Arc<Peer>) {
    let mut closed = peer.closed();
    let mut look_again = tokio::time::interval(LOOK_AGAIN);
    look_again.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while peer.ledger().has_pending() {
            let places = tokio::select! {
                _ = closed.wait_for(|closed| *closed) => return,
                places = take_places(&shared, &peer) => places,
            };
            let Some(places) = places else { return };
            let tasks = peer.ledger().take(TASKS_PER_MESSAGE);
            if tasks.is_empty() {
                break;
            }
            // A peer that has not opened a stream to us yet is spoken to in 1.2.0.
            let version = peer.version().unwrap_or(Version::V1_2);
            let store = shared.store.clone();
            let Ok(answer) = shared
                .pool
                .run(move || answer(&store, tasks, version))
                .await
            else {
                return;
            };
            {
                let mut ledger = peer.ledger();
                for (task, answered) in &answer.settled {
                    ledger.settle(task, *answered);
                }
            }
            if answer.message.is_empty() {
                continue;
            }
            let queued = Queued {
                message: answer.message,
                places: Some(places),
            };
            tokio::select! {
                _ = closed.wait_for(|closed| *closed) => return,
                sent = peer.outbox.send(queued) => if sent.is_err() { return },
            }
        }
        let look = tokio::select! {
            _ = closed.wait_for(|closed| *closed) => return,
            () = peer.work.notified() => false,
            _ = look_again.tick() => true,
        };
        if look {
            look_again_for_lacking(&shared, &peer).await;
        }
    }
}

async fn take_places(
    shared: &Shared,
    peer: &Peer,
) -> Option<(
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::OwnedSemaphorePermit,
)> {
    let own = peer.places.clone().acquire_owned().await.ok()?;
    let shared_place = shared.serve_slots.clone().acquire_owned().await.ok()?;
    Some((own, shared_place))
}

async fn look_again_for_lacking(shared: &Shared, peer: &Peer) {
    let lacking = peer.ledger().lacking();
    if lacking.is_empty() {
        return;
    }
    let store = shared.store.clone();
    let arrived = shared
        .pool
        .run(move || {
            lacking
                .into_iter()
                .filter(|cid| store.has(cid).unwrap_or(false))
                .collect::<Vec<Cid>>()
        })
        .await;
    if let Ok(arrived) = arrived {
        if peer.ledger().arrived(&arrived) {
            peer.work.notify_one();
        }
    }
}

struct Answer {
    message: Outgoing,
    settled: Vec<(Task, Answered)>,
}

/// Looks the tasks up and builds one message of at most
/// [`wire::MAX_OUTGOING_MESSAGE`] bytes (one block alone may pass it); what does not fit
/// is left for the next.
fn answer(store: &Store, tasks: Vec<Task>, version: Version) -> Answer {
    let mut message = Outgoing::default();
    let mut settled = Vec::with_capacity(tasks.len());
    let mut size = 0usize;
    let mut full = false;
    for task in tasks {
        if full || size + wire::ENTRY_OVERHEAD > wire::MAX_OUTGOING_MESSAGE {
            full = true;
            settled.push((task, Answered::Skipped));
            continue;
        }
        // Before 1.2.0 there is no WANT_HAVE (the field does not exist); an entry from
        // such a peer decodes as WANT_BLOCK anyway.
        let want_block = task.want_type == WantType::Block || !version.has_presences();
        let present = if want_block {
            match store.block_size(&task.cid) {
                Ok(Some(block_size)) => {
                    let block_size = block_size as usize + wire::block_overhead();
                    if !message.blocks.is_empty() && size + block_size > wire::MAX_OUTGOING_MESSAGE
                    {
                        full = true;
                        settled.push((task, Answered::Skipped));
                        continue;
                    }
                    match store.get_block(&task.cid) {
                        Ok(data) => {
                            size += block_size;
                            message.blocks.push(OutgoingBlock {
                                cid: task.cid,
                                data: Bytes::from(data),
                            });
                            true
                        }
                        Err(err) => not_served(&task.cid, err),
                    }
                }
                Ok(None) => false,
                Err(err) => not_served(&task.cid, err.into()),
            }
        } else {
            match store.has(&task.cid) {
                Ok(true) => {
                    size += wire::ENTRY_OVERHEAD;
                    message.presences.push((task.cid, Presence::Have));
                    true
                }
                Ok(false) => false,
                Err(err) => not_served(&task.cid, err.into()),
            }
        };
        if present {
            settled.push((task, Answered::Met));
            continue;
        }
        if task.send_dont_have && version.has_presences() {
            size += wire::ENTRY_OVERHEAD;
            message.presences.push((task.cid, Presence::DontHave));
        }
        settled.push((task, Answered::Lacking));
    }
    Answer { message, settled }
}

/// A block that is in the index but cannot be served is reported, and treated as absent.
fn not_served(cid: &Cid, err: BlockError) -> bool {
    match err {
        BlockError::NotFound(_) => {}
        err => tracing::warn!(%cid, %err, "cannot serve a block over bitswap"),
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitswap::ledger::Ledger;
    use crate::bitswap::wire::Entry;
    use crate::block::{cid_v1, codec, BlockPut};

    #[test]
    fn answers_fit_the_message_cap_and_say_dont_have_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &Default::default()).unwrap();
        let hold = store.hold();
        let mut present = Vec::new();
        for n in 0..3u8 {
            let data = vec![n; 1024 * 1024];
            let cid = cid_v1(codec::RAW, &data);
            hold.put_block(&cid, &data).unwrap();
            present.push(cid);
        }
        let absent = cid_v1(codec::RAW, b"absent");
        let quiet = cid_v1(codec::RAW, b"quiet");
        let mut entries: Vec<Entry> = present
            .iter()
            .map(|cid| Entry::want(*cid, WantType::Block, 1))
            .collect();
        entries.push(Entry::want(absent, WantType::Have, 1));
        let mut silent = Entry::want(quiet, WantType::Block, 1);
        silent.send_dont_have = false;
        entries.push(silent);
        entries.push(Entry::want(present[0], WantType::Have, 0));
        let mut ledger = Ledger::default();
        ledger.apply(&Wantlist {
            entries,
            full: false,
        });

        // Two 1 MiB blocks do not fit under 2 MiB with their framing: one per message.
        let mut messages = Vec::new();
        while ledger.has_pending() {
            let answer = answer(&store, ledger.take(TASKS_PER_MESSAGE), Version::V1_2);
            for (task, answered) in &answer.settled {
                ledger.settle(task, *answered);
            }
            let encoded = answer.message.encode(Version::V1_2).len();
            assert!(encoded <= wire::MAX_OUTGOING_MESSAGE, "{encoded}");
            messages.push(answer.message);
        }
        let blocks: Vec<usize> = messages.iter().map(|m| m.blocks.len()).collect();
        assert_eq!(blocks, vec![1, 1, 1]);
        let presences: Vec<(Cid, Presence)> =
            messages.iter().flat_map(|m| m.presences.clone()).collect();
        assert!(presences.contains(&(absent, Presence::DontHave)));
        assert!(!presences.iter().any(|(cid, _)| *cid == quiet));
        // The block was asked for as a block and sent; the want went with it.
        assert_eq!(ledger.len(), 2, "the two absent wants stay");
        assert_eq!(ledger.lacking().len(), 2);
    }
}
