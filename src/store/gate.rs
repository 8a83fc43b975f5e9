//! What lets gc run beside writers: the keys writers hold, and the keys a running gc
//! must spare.
//!
//! A writer registers every block it writes or relies on before it writes or checks it
//! (through a [`GcHold`](super::GcHold)); gc removes a block only with the gate closed
//! and only if the block was neither reachable from the roots it read nor registered by
//! anyone since it began. The full argument is in docs/DESIGN.md ("gc beside writers").
//!
//! Keys are 64-bit fingerprints of multihashes: two blocks sharing one only means a
//! block that could have gone stays until the next gc, never that one is lost.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use multihash::Multihash;

/// A block's key as the gate knows it.
pub(super) type Fingerprint = u64;

/// The fingerprint of a block's multihash: its digest folded to 64 bits (a sha2-256
/// digest is uniform, so its first 8 bytes would do; folding also covers short digests).
pub(super) fn fingerprint(hash: &Multihash<64>) -> Fingerprint {
    let mut folded = [0u8; 8];
    for (index, byte) in hash.digest().iter().enumerate() {
        folded[index % 8] ^= byte;
    }
    u64::from_le_bytes(folded) ^ hash.code().rotate_left(32)
}

#[derive(Default)]
pub(super) struct Gate {
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    /// How many open holds registered each key.
    held: HashMap<Fingerprint, u32>,
    /// While a gc runs: every key held when it began or registered since.
    spared: Option<HashSet<Fingerprint>>,
}

/// The gate, closed: no key is registered until it is dropped.
pub(super) struct Closed<'a> {
    state: MutexGuard<'a, GateState>,
}

impl Closed<'_> {
    /// Whether the running gc must keep this key.
    pub(super) fn spares(&self, key: Fingerprint) -> bool {
        self.state
            .spared
            .as_ref()
            .is_some_and(|spared| spared.contains(&key))
    }

    /// Whether a writer holds this key now (it may be writing the block anew).
    pub(super) fn held(&self, key: Fingerprint) -> bool {
        self.state.held.contains_key(&key)
    }
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Closes the gate for one short step: a sweep step, or a change to the index and
    /// its totals.
    pub(super) fn close(&self) -> Closed<'_> {
        Closed { state: self.lock() }
    }

    /// Registers one more holder of `key`.
    pub(super) fn hold(&self, key: Fingerprint) {
        let mut state = self.lock();
        *state.held.entry(key).or_default() += 1;
        if let Some(spared) = &mut state.spared {
            spared.insert(key);
        }
    }

    /// Drops one holder of each key. A running gc still spares them: it may have read
    /// its roots before they were named.
    pub(super) fn release(&self, keys: impl IntoIterator<Item = Fingerprint>) {
        let mut state = self.lock();
        for key in keys {
            if let Some(count) = state.held.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    state.held.remove(&key);
                }
            }
        }
    }

    /// Starts sparing, for a gc that is about to read its roots, every key held now and
    /// every key registered from now on.
    pub(super) fn begin_gc(&self) {
        let mut state = self.lock();
        let spared = state.held.keys().copied().collect();
        state.spared = Some(spared);
    }

    pub(super) fn end_gc(&self) {
        self.lock().spared = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_gc_spares_what_was_held_at_its_start_and_what_is_registered_since() {
        let gate = Gate::default();
        gate.hold(1);
        gate.hold(2);
        gate.release([2]);
        assert!(!gate.close().spares(1), "nothing is spared outside a gc");
        gate.begin_gc();
        gate.release([1]);
        gate.hold(3);
        gate.release([3]);
        let closed = gate.close();
        assert!(closed.spares(1) && closed.spares(3));
        assert!(!closed.spares(2));
        drop(closed);
        gate.end_gc();
        assert!(!gate.close().spares(1));
    }
}
