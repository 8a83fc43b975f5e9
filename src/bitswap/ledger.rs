//! What one peer wants of this node: its wantlist, as its messages built it, capped at
//! [`MAX_WANTLIST`] entries (boxo's limit since CVE-2023-25568, a memory exhaustion by
//! wantlist flooding). The server takes entries from here in priority order, answers
//! them, and settles them back.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use cid::Cid;

use super::wire::{Entry, WantType, Wantlist};

/// Entries one peer's wantlist holds at most; wants beyond it are refused (dropped
/// unanswered) until some go.
pub const MAX_WANTLIST: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the server to look it up.
    Pending,
    /// Taken by the server; `again` if it changed meanwhile and must be looked at anew.
    Taken { again: bool },
    /// Looked up and not here (DONT_HAVE sent if asked for); looked up again now and
    /// then, and answered once the block arrives, as the spec asks of a server.
    Lacking,
}

#[derive(Debug, Clone)]
struct Want {
    want_type: WantType,
    send_dont_have: bool,
    priority: i32,
    /// Arrival order, for equal priorities; also tells a settled entry from a newer one.
    seq: u64,
    state: State,
}

/// An entry handed to the server to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    pub cid: Cid,
    pub want_type: WantType,
    pub send_dont_have: bool,
    seq: u64,
}

/// How the server answered a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// The block (for WANT_BLOCK) or HAVE (for WANT_HAVE) went out: the want is met.
    Met,
    /// The block is not here (DONT_HAVE went out if asked for).
    Lacking,
    /// Not looked at (the message was full): back in line.
    Skipped,
}

#[derive(Debug, Default)]
pub struct Ledger {
    wants: HashMap<Cid, Want>,
    /// Pending entries in the order they are served: highest priority, then oldest.
    queue: BTreeSet<(Reverse<i32>, u64, Cid)>,
    next_seq: u64,
}

/// What applying a message did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Wants refused because the wantlist was full.
    pub refused: usize,
    /// Whether there is new work for the server.
    pub new_work: bool,
}

impl Ledger {
    pub fn len(&self) -> usize {
        self.wants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.wants.is_empty()
    }

    /// Applies a received wantlist: a full one replaces what was there; entries add,
    /// update or (with `cancel`) remove wants.
    pub fn apply(&mut self, wantlist: &Wantlist) -> Applied {
        let mut applied = Applied::default();
        if wantlist.full {
            self.wants.clear();
            self.queue.clear();
        }
        for entry in &wantlist.entries {
            if entry.cancel {
                self.remove(&entry.cid);
                continue;
            }
            match self.upsert(entry) {
                Some(new_work) => applied.new_work |= new_work,
                None => applied.refused += 1,
            }
        }
        applied
    }

    /// Adds or updates a want; `None` if the wantlist is full. Returns whether the
    /// entry needs the server.
    fn upsert(&mut self, entry: &Entry) -> Option<bool> {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(want) = self.wants.get_mut(&entry.cid) {
            // A WANT_HAVE does not weaken a WANT_BLOCK already there.
            let want_type = match (want.want_type, entry.want_type) {
                (WantType::Block, _) => WantType::Block,
                (WantType::Have, new) => new,
            };
            if let State::Pending = want.state {
                self.queue
                    .remove(&(Reverse(want.priority), want.seq, entry.cid));
            }
            want.want_type = want_type;
            want.send_dont_have = entry.send_dont_have;
            want.priority = entry.priority;
            want.seq = seq;
            match want.state {
                State::Pending => {
                    self.queue.insert((Reverse(want.priority), seq, entry.cid));
                    return Some(true);
                }
                State::Taken { .. } => {
                    want.state = State::Taken { again: true };
                    return Some(false);
                }
                // Asked again: looked up again, and told again if still lacking.
                State::Lacking => {
                    want.state = State::Pending;
                    self.queue.insert((Reverse(want.priority), seq, entry.cid));
                    return Some(true);
                }
            }
        }
        if self.wants.len() >= MAX_WANTLIST {
            return None;
        }
        self.wants.insert(
            entry.cid,
            Want {
                want_type: entry.want_type,
                send_dont_have: entry.send_dont_have,
                priority: entry.priority,
                seq,
                state: State::Pending,
            },
        );
        self.queue.insert((Reverse(entry.priority), seq, entry.cid));
        Some(true)
    }

    fn remove(&mut self, cid: &Cid) {
        if let Some(want) = self.wants.remove(cid) {
            if want.state == State::Pending {
                self.queue.remove(&(Reverse(want.priority), want.seq, *cid));
            }
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Takes up to `max` pending entries, in serving order.
    pub fn take(&mut self, max: usize) -> Vec<Task> {
        let mut tasks = Vec::new();
        while tasks.len() < max {
            let Some((_, seq, cid)) = self.queue.pop_first() else {
                break;
            };
            let Some(want) = self.wants.get_mut(&cid) else {
                continue;
            };
            want.state = State::Taken { again: false };
            tasks.push(Task {
                cid,
                want_type: want.want_type,
                send_dont_have: want.send_dont_have,
                seq,
            });
        }
        tasks
    }

    /// Records how a task was answered. A want that changed while it was being
    /// answered goes back in line.
    pub fn settle(&mut self, task: &Task, answered: Answered) {
        let Some(want) = self.wants.get_mut(&task.cid) else {
            return;
        };
        let changed = want.seq != task.seq || want.state == (State::Taken { again: true });
        let met_as_asked = answered == Answered::Met && want.want_type == task.want_type;
        match answered {
            _ if !matches!(want.state, State::Taken { .. }) => {}
            Answered::Met if met_as_asked => {
                self.wants.remove(&task.cid);
            }
            Answered::Lacking if !changed => want.state = State::Lacking,
            _ => {
                want.state = State::Pending;
                self.queue
                    .insert((Reverse(want.priority), want.seq, task.cid));
            }
        }
    }

    /// The wants looked up and found lacking, to look up again.
    pub fn lacking(&self) -> Vec<Cid> {
        self.wants
            .iter()
            .filter(|(_, want)| want.state == State::Lacking)
            .map(|(cid, _)| *cid)
            .collect()
    }

    /// Puts lacking wants whose blocks have arrived back in line.
    pub fn arrived(&mut self, cids: &[Cid]) -> bool {
        let mut any = false;
        for cid in cids {
            if let Some(want) = self.wants.get_mut(cid) {
                if want.state == State::Lacking {
                    want.state = State::Pending;
                    self.queue.insert((Reverse(want.priority), want.seq, *cid));
                    any = true;
                }
            }
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{cid_v1, codec};

    fn cid(n: usize) -> Cid {
        cid_v1(codec::RAW, &n.to_le_bytes())
    }

    fn wants(entries: Vec<Entry>, full: bool) -> Wantlist {
        Wantlist { entries, full }
    }

    #[test]
    fn the_wantlist_is_capped_and_cancels_make_room() {
        let mut ledger = Ledger::default();
        let flood: Vec<Entry> = (0..MAX_WANTLIST + 500)
            .map(|n| Entry::want(cid(n), WantType::Have, 1))
            .collect();
        let applied = ledger.apply(&wants(flood, false));
        assert_eq!(applied.refused, 500);
        assert_eq!(ledger.len(), MAX_WANTLIST);
        // An update of a want already there is not refused.
        let again = ledger.apply(&wants(vec![Entry::want(cid(3), WantType::Block, 9)], false));
        assert_eq!(again.refused, 0);
        ledger.apply(&wants(vec![Entry::cancel(cid(0))], false));
        let room = ledger.apply(&wants(
            vec![Entry::want(cid(99_999), WantType::Have, 1)],
            false,
        ));
        assert_eq!(room.refused, 0);
        assert_eq!(ledger.len(), MAX_WANTLIST);
        // A full wantlist replaces everything.
        ledger.apply(&wants(vec![Entry::want(cid(1), WantType::Block, 1)], true));
        assert_eq!(ledger.len(), 1);
    }

    #[test]
    fn entries_are_served_by_priority_then_arrival_and_met_wants_go() {
        let mut ledger = Ledger::default();
        ledger.apply(&wants(
            vec![
                Entry::want(cid(1), WantType::Block, 1),
                Entry::want(cid(2), WantType::Block, 5),
                Entry::want(cid(3), WantType::Have, 1),
            ],
            false,
        ));
        let tasks = ledger.take(10);
        let order: Vec<Cid> = tasks.iter().map(|t| t.cid).collect();
        assert_eq!(order, vec![cid(2), cid(1), cid(3)]);
        ledger.settle(&tasks[0], Answered::Met);
        ledger.settle(&tasks[1], Answered::Lacking);
        ledger.settle(&tasks[2], Answered::Skipped);
        assert_eq!(ledger.len(), 2);
        assert_eq!(ledger.lacking(), vec![cid(1)]);
        assert_eq!(
            ledger.take(10).iter().map(|t| t.cid).collect::<Vec<_>>(),
            vec![cid(3)]
        );
        // The lacking block arrives: served again.
        assert!(ledger.arrived(&[cid(1)]));
        assert_eq!(ledger.take(10)[0].cid, cid(1));
    }

    #[test]
    fn a_want_changed_while_answered_is_answered_again() {
        let mut ledger = Ledger::default();
        ledger.apply(&wants(vec![Entry::want(cid(1), WantType::Have, 1)], false));
        let task = ledger.take(1)[0];
        // Upgraded to WANT_BLOCK while the HAVE was being sent.
        ledger.apply(&wants(vec![Entry::want(cid(1), WantType::Block, 1)], false));
        ledger.settle(&task, Answered::Met);
        let again = ledger.take(1);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].want_type, WantType::Block);
        // Cancelled while being answered: nothing comes back.
        ledger.apply(&wants(vec![Entry::cancel(cid(1))], false));
        ledger.settle(&again[0], Answered::Lacking);
        assert!(ledger.is_empty() && !ledger.has_pending());
    }
}
