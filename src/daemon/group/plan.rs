//! Who in a group fetches a resource and who lets it go. Every member runs the same
//! rule over the same view (the members it can reach and counts, their free space,
//! who holds what), so members that agree on the view make the same choice without
//! talking about it; a member whose view lags at most adds a copy, which the rule for
//! surplus copies takes away again.

use std::collections::HashSet;

use cid::Cid;
use libp2p::PeerId;
use sha2::{Digest, Sha256};

/// A member that may hold copies: reachable, and its claims counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub peer: PeerId,
    /// Bytes it can still store.
    pub free: u64,
}

/// One resource and the members whose copies count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holders {
    pub content: Cid,
    pub holders: Vec<PeerId>,
}

/// What this member does about a collection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub fetch: Vec<Cid>,
    pub release: Vec<Cid>,
}

/// Members whose free space is within the same power of two count as equally free.
fn free_class(free: u64) -> u32 {
    64 - free.leading_zeros()
}

/// A score of the pair that every member computes alike (rendezvous hashing), so that
/// equally free members share the resources out instead of all picking the same one.
fn score(content: &Cid, peer: &PeerId) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(content.to_bytes());
    hasher.update(peer.to_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The resources `me` fetches and lets go of, for a target of `replicas` copies.
///
/// A resource counted on fewer than `replicas` members is fetched by the members that
/// do not hold it with the most free space, as many as are missing; one counted on
/// more than `replicas + 1` is let go by the fullest holders down to `replicas + 1`,
/// but only while every other holder passed its last challenge (`verified`): a copy
/// is never given up for one that was not checked.
pub fn decide(
    me: PeerId,
    replicas: usize,
    members: &[Member],
    verified: &HashSet<PeerId>,
    resources: &[Holders],
) -> Decision {
    let class_of = |peer: &PeerId| {
        members
            .iter()
            .find(|member| member.peer == *peer)
            .map_or(0, |member| free_class(member.free))
    };
    let mut decision = Decision::default();
    for resource in resources {
        let held_here = resource.holders.contains(&me);
        let count = resource.holders.len();
        if !held_here && count < replicas {
            let mut candidates: Vec<&Member> = members
                .iter()
                .filter(|member| !resource.holders.contains(&member.peer))
                .collect();
            candidates.sort_by_key(|member| {
                std::cmp::Reverse((
                    free_class(member.free),
                    score(&resource.content, &member.peer),
                ))
            });
            let chosen = candidates
                .iter()
                .take(replicas - count)
                .any(|member| member.peer == me);
            if chosen {
                decision.fetch.push(resource.content);
            }
        }
        if held_here
            && count > replicas + 1
            && resource
                .holders
                .iter()
                .all(|peer| *peer == me || verified.contains(peer))
        {
            let mut fullest = resource.holders.clone();
            fullest.sort_by_key(|peer| (class_of(peer), score(&resource.content, peer)));
            if fullest[..count - replicas - 1].contains(&me) {
                decision.release.push(resource.content);
            }
        }
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    fn resources(n: u32, holders: &[PeerId]) -> Vec<Holders> {
        (0..n)
            .map(|i| Holders {
                content: crate::block::cid_v1(crate::block::codec::RAW, &i.to_be_bytes()),
                holders: holders.to_vec(),
            })
            .collect()
    }

    #[test]
    fn each_missing_copy_is_fetched_by_exactly_one_member_and_the_work_is_shared() {
        let group = peers(4);
        let members: Vec<Member> = group
            .iter()
            .map(|peer| Member {
                peer: *peer,
                free: 10 << 30,
            })
            .collect();
        let wanted = resources(40, &[]);
        let mut copies = vec![0; wanted.len()];
        let mut per_member = Vec::new();
        for me in &group {
            let decision = decide(*me, 2, &members, &HashSet::new(), &wanted);
            assert!(decision.release.is_empty());
            per_member.push(decision.fetch.len());
            for cid in decision.fetch {
                copies[wanted.iter().position(|r| r.content == cid).unwrap()] += 1;
            }
        }
        assert!(copies.iter().all(|c| *c == 2), "{copies:?}");
        assert!(
            per_member.iter().all(|n| *n > 0 && *n < 40),
            "{per_member:?}"
        );

        // One copy already there: one more member fetches, never its holder.
        let one_held = resources(10, &group[..1]);
        let fetching: usize = group
            .iter()
            .map(|me| {
                decide(*me, 2, &members, &HashSet::new(), &one_held)
                    .fetch
                    .len()
            })
            .sum();
        assert_eq!(fetching, 10);
        assert!(decide(group[0], 2, &members, &HashSet::new(), &one_held)
            .fetch
            .is_empty());
    }

    #[test]
    fn the_emptier_members_fetch_and_the_fullest_let_go() {
        let group = peers(5);
        let mut members: Vec<Member> = group
            .iter()
            .map(|peer| Member {
                peer: *peer,
                free: 100 << 30,
            })
            .collect();
        members[0].free = 1 << 30;
        let wanted = resources(20, &[]);
        assert!(decide(group[0], 2, &members, &HashSet::new(), &wanted)
            .fetch
            .is_empty());

        // Held by all five, target 2: two let go (down to 3), the fullest first, and
        // only when the others' copies passed their challenges.
        let everywhere = resources(20, &group);
        let verified: HashSet<PeerId> = group.iter().copied().collect();
        let releasing: Vec<usize> = group
            .iter()
            .map(|me| {
                decide(*me, 2, &members, &verified, &everywhere)
                    .release
                    .len()
            })
            .collect();
        assert_eq!(releasing.iter().sum::<usize>(), 40);
        assert_eq!(releasing[0], 20, "the fullest lets go of everything");
        let unchecked: HashSet<PeerId> = group[..4].iter().copied().collect();
        assert!(decide(group[0], 2, &members, &unchecked, &everywhere)
            .release
            .is_empty());
        // At replicas + 1 nobody lets go.
        let three = resources(5, &group[..3]);
        assert!(group
            .iter()
            .all(|me| decide(*me, 2, &members, &verified, &three)
                .release
                .is_empty()));
    }
}
