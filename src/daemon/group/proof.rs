//! Proof of holding: the challenge a member sets another, the answer, and the check.
//!
//! The asking member picks a resource the other claims, a path down its DAG (a link
//! choice per level) and a fresh nonce. When it holds the resource itself it also picks
//! a byte range of the block at the end of the path and expects the SHA-256 of the
//! nonce and those bytes: cheap to check, and impossible to answer without the bytes,
//! since the nonce is new each time. When it does not hold the resource it expects the
//! blocks of the path themselves and checks each against its CID.

use cid::Cid;
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use super::wire::{Answer, Challenge, MAX_MESSAGE, MAX_PICKS, MAX_RANGE, NONCE_BYTES};
use crate::block::BlockGet;
use crate::links;

/// Link choices in the challenges this node sets: deeper than the DAGs it meets, so
/// that the path ends at a leaf.
const PICKS: usize = 8;

/// What the asking member expects back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Digest(Vec<u8>),
    /// The path's blocks, checked against their CIDs.
    Path,
}

/// Why the path could not be walked: the reason, and the block that could not be read
/// (gone, or not matching its CID) when that is why.
type PathError = (String, Option<Cid>);

/// The blocks of the path `picks` names from `root`, root first.
fn path_blocks<B: BlockGet + ?Sized>(
    store: &B,
    root: &Cid,
    picks: &[u32],
) -> Result<Vec<(Cid, Vec<u8>)>, PathError> {
    let mut cid = *root;
    let mut path = Vec::new();
    for depth in 0..=picks.len() {
        let data = links::get_verified(store, &cid)
            .map_err(|err| (format!("cannot read {cid}: {err}"), Some(cid)))?;
        let children = links::links(&cid, &data).map_err(|err| (err.to_string(), None))?;
        path.push((cid, data));
        let Some(pick) = picks.get(depth) else { break };
        if children.is_empty() {
            break;
        }
        cid = children[*pick as usize % children.len()];
    }
    Ok(path)
}

fn digest(nonce: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(nonce);
    hasher.update(bytes);
    hasher.finalize().to_vec()
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    // The OS's generator does not fail on Linux once booted; a nonce of zeros would
    // still be a challenge, only a guessable one.
    if let Err(err) = getrandom::getrandom(&mut bytes) {
        tracing::warn!(%err, "no randomness from the OS for a challenge");
    }
    bytes
}

fn random_picks() -> Vec<u32> {
    (0..PICKS)
        .map(|_| random_below(u64::from(u32::MAX)) as u32)
        .collect()
}

fn random_below(bound: u64) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&random_bytes(8));
    if bound == 0 {
        0
    } else {
        u64::from_le_bytes(bytes) % bound
    }
}

/// A random index below `len`.
pub fn pick(len: usize) -> usize {
    random_below(len as u64) as usize
}

/// A fresh challenge on `root`. With `store` holding the resource, a range challenge;
/// without, or when this node's own copy cannot be read, a path challenge.
pub fn prepare<B: BlockGet + ?Sized>(store: Option<&B>, root: Cid) -> (Challenge, Expected) {
    let picks = random_picks();
    let nonce = random_bytes(NONCE_BYTES);
    let leaf = store.and_then(|store| match path_blocks(store, &root, &picks) {
        Ok(mut path) => path.pop().map(|(_, data)| data),
        Err((err, _)) => {
            tracing::warn!(%root, %err, "own copy unreadable; asking for the blocks instead");
            None
        }
    });
    let (range, expected) = match leaf {
        Some(leaf) => {
            let len = leaf.len() as u64;
            let offset = random_below(len);
            let length = 1 + random_below((len - offset).min(MAX_RANGE));
            let length = length.min(len - offset);
            let bytes = &leaf[offset as usize..(offset + length) as usize];
            (
                Some((offset, length)),
                Expected::Digest(digest(&nonce, bytes)),
            )
        }
        None => (None, Expected::Path),
    };
    (
        Challenge {
            root,
            picks,
            nonce: ByteBuf::from(nonce),
            range,
        },
        expected,
    )
}

/// The first block of a random path down this node's copy of `root` that cannot be
/// read (gone, or not matching its CID); `None` when the path reads whole. A cheap
/// look at a copy, as a challenge is.
pub fn damaged_on_random_path<B: BlockGet + ?Sized>(store: &B, root: Cid) -> Option<Cid> {
    path_blocks(store, &root, &random_picks())
        .err()
        .and_then(|(_, unreadable)| unreadable)
}

/// This node's answer to a challenge, from `store`, and the block of its own copy it
/// could not read (gone, or not matching its CID) when that is why it failed.
pub fn answer<B: BlockGet + ?Sized>(store: &B, challenge: &Challenge) -> (Answer, Option<Cid>) {
    if challenge.picks.len() > MAX_PICKS || challenge.nonce.len() != NONCE_BYTES {
        return (Answer::Failed("malformed challenge".into()), None);
    }
    let path = match path_blocks(store, &challenge.root, &challenge.picks) {
        Ok(path) => path,
        Err((err, unreadable)) => return (Answer::Failed(err), unreadable),
    };
    (answer_from_path(challenge, path), None)
}

fn answer_from_path(challenge: &Challenge, path: Vec<(Cid, Vec<u8>)>) -> Answer {
    match challenge.range {
        Some((offset, length)) => {
            let leaf = path.last().map(|(_, data)| data.as_slice()).unwrap_or(&[]);
            let end = offset.checked_add(length);
            match end {
                Some(end) if length <= MAX_RANGE && end <= leaf.len() as u64 => {
                    Answer::Digest(ByteBuf::from(digest(
                        &challenge.nonce,
                        &leaf[offset as usize..end as usize],
                    )))
                }
                _ => Answer::Failed("the range is outside the block".into()),
            }
        }
        None => {
            let total: usize = path.iter().map(|(_, data)| data.len()).sum();
            if total > MAX_MESSAGE - 64 * 1024 {
                return Answer::Failed("the path's blocks are too large to send".into());
            }
            Answer::Blocks(
                path.into_iter()
                    .map(|(_, data)| ByteBuf::from(data))
                    .collect(),
            )
        }
    }
}

/// Whether `answer` proves that the member holds what `challenge` asked about.
pub fn check(challenge: &Challenge, expected: &Expected, answer: &Answer) -> Result<(), String> {
    match (expected, answer) {
        (_, Answer::Failed(reason)) => Err(format!("it could not answer: {reason}")),
        (Expected::Digest(want), Answer::Digest(got)) if want == got.as_slice() => Ok(()),
        (Expected::Digest(_), Answer::Digest(_)) => Err("wrong digest".into()),
        (Expected::Path, Answer::Blocks(blocks)) => {
            let mut cid = challenge.root;
            for (depth, data) in blocks.iter().enumerate() {
                crate::block::verify(&cid, data)
                    .map_err(|_| format!("block {cid} does not match its CID"))?;
                let children = links::links(&cid, data).map_err(|err| err.to_string())?;
                let last = depth + 1 == blocks.len();
                let end = children.is_empty() || depth == challenge.picks.len();
                match (last, end) {
                    (true, true) => return Ok(()),
                    (true, false) => return Err("the path stops before its end".into()),
                    (false, true) => return Err("blocks beyond the path's end".into()),
                    (false, false) => {
                        cid = children[challenge.picks[depth] as usize % children.len()];
                    }
                }
            }
            Err("no blocks".into())
        }
        _ => Err("an answer of the wrong kind".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemoryBlocks;

    /// A two-level DAG from the importer, in memory.
    fn dag() -> (MemoryBlocks, Cid) {
        let blocks = MemoryBlocks::new();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let profile = crate::unixfs::profile::Profile::default();
        let root = crate::unixfs::importer::import_reader(&data[..], &profile, &blocks, &|_| {})
            .unwrap()
            .cid;
        (blocks, root)
    }

    #[test]
    fn a_holder_passes_both_kinds_and_a_member_without_the_bytes_fails() {
        let (blocks, root) = dag();
        for _ in 0..20 {
            let (challenge, expected) = prepare(Some(&blocks), root);
            assert!(matches!(expected, Expected::Digest(_)));
            let (answered, _) = answer(&blocks, &challenge);
            assert_eq!(check(&challenge, &expected, &answered), Ok(()));

            let (challenge, expected) = prepare(None::<&MemoryBlocks>, root);
            assert_eq!(expected, Expected::Path);
            let (answered, _) = answer(&blocks, &challenge);
            assert_eq!(check(&challenge, &expected, &answered), Ok(()));
        }
        // A member that kept only the root cannot answer either kind.
        let only_root = MemoryBlocks::new();
        crate::block::BlockPut::put_block(&only_root, &root, &blocks.get_block(&root).unwrap())
            .unwrap();
        let (challenge, expected) = prepare(Some(&blocks), root);
        assert!(check(&challenge, &expected, &answer(&only_root, &challenge).0).is_err());
        let (challenge, expected) = prepare(None::<&MemoryBlocks>, root);
        let (answered, unreadable) = answer(&only_root, &challenge);
        assert!(check(&challenge, &expected, &answered).is_err());
        // ...and knows which block of its own copy it lacks.
        assert!(unreadable.is_some_and(|cid| cid != root), "{unreadable:?}");
        assert_eq!(damaged_on_random_path(&blocks, root), None);
        assert!(damaged_on_random_path(&only_root, root).is_some());
        // An old answer does not fit a new nonce.
        let (first, _) = prepare(Some(&blocks), root);
        let (replayed, _) = answer(&blocks, &first);
        let (second, expected) = prepare(Some(&blocks), root);
        assert!(check(&second, &expected, &replayed).is_err() || first.nonce == second.nonce);
    }
}
