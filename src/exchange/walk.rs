//! The walk of a response. The server follows it to choose what to send; the client
//! follows the very same walk over what it receives, so it knows which block must come
//! next and refuses anything else. Depth first, parents before children, children in
//! link order; a block is visited once per request; `prune`d subtrees are skipped;
//! identity CIDs are not sent (their bytes are in the CID) but their links are followed.

use std::collections::HashSet;

use cid::Cid;

use super::wire::{ByteRange, Scope};
use crate::block::hash_code;
use crate::links::{self, LinkError};
use crate::unixfs::reader;

/// One place in a walk: a block, and the bytes of the file below it that matter (`None`:
/// all of them, i.e. the whole subtree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Item {
    pub cid: Cid,
    pub range: Option<ByteRange>,
}

impl Item {
    pub fn whole(cid: Cid) -> Item {
        Item { cid, range: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot walk below {cid}: {reason}")]
pub struct WalkError {
    pub cid: Cid,
    pub reason: String,
}

pub struct Walk {
    scope: Scope,
    stack: Vec<Item>,
    visited: HashSet<Item>,
    prune: HashSet<Cid>,
    visits: usize,
}

impl Walk {
    pub fn new(scope: Scope, start: &[Item], prune: &[Cid]) -> Walk {
        Walk {
            scope,
            stack: start.iter().rev().copied().collect(),
            visited: HashSet::new(),
            prune: prune.iter().copied().collect(),
            visits: 0,
        }
    }

    /// The next block to send (or to receive), or `None` when the walk is done.
    pub fn next_item(&mut self) -> Result<Option<Item>, WalkError> {
        while let Some(item) = self.stack.pop() {
            if self.skipped(&item) {
                continue;
            }
            self.visited.insert(item);
            if item.cid.hash().code() == hash_code::IDENTITY {
                let data = item.cid.hash().digest().to_vec();
                self.descend(&item, &data)?;
                continue;
            }
            self.visits += 1;
            return Ok(Some(item));
        }
        Ok(None)
    }

    /// Blocks handed out by [`Walk::next`] so far.
    pub fn visits(&self) -> usize {
        self.visits
    }

    fn skipped(&self, item: &Item) -> bool {
        self.prune.contains(&item.cid)
            || self.visited.contains(item)
            || self.visited.contains(&Item::whole(item.cid))
    }

    /// Follows the links of `item`, whose verified bytes are `data`.
    pub fn descend(&mut self, item: &Item, data: &[u8]) -> Result<(), WalkError> {
        if self.scope == Scope::Block {
            return Ok(());
        }
        let children = children(item, data)?;
        self.stack.extend(children.into_iter().rev());
        Ok(())
    }

    /// What the walk has yet to visit, in the order it would: for asking someone else.
    pub fn remaining(&self) -> Vec<Item> {
        let mut seen = HashSet::new();
        self.stack
            .iter()
            .rev()
            .filter(|item| !self.skipped(item) && seen.insert(**item))
            .copied()
            .collect()
    }
}

/// The children of `item` that its range reaches, each with the part of its own range
/// that matters (`None` when all of it does).
pub fn children(item: &Item, data: &[u8]) -> Result<Vec<Item>, WalkError> {
    let failed = |reason: String| WalkError {
        cid: item.cid,
        reason,
    };
    let Some(range) = item.range else {
        return match links::links(&item.cid, data) {
            Ok(children) => Ok(children.into_iter().map(Item::whole).collect()),
            // Blocks of formats without known links are walked as leaves.
            Err(LinkError::UnsupportedCodec { .. }) => Ok(Vec::new()),
            Err(err) => Err(failed(err.to_string())),
        };
    };
    let layout = reader::file_layout(&item.cid, data).map_err(|err| failed(err.to_string()))?;
    let mut children = Vec::new();
    let mut start = layout.inline;
    for (cid, size) in layout.children {
        let end = start.saturating_add(size);
        let from = range.offset.max(start);
        let to = range.end().min(end);
        if from < to {
            let sub = ByteRange {
                offset: from - start,
                length: to - from,
            };
            let range = (sub.offset != 0 || sub.length != size).then_some(sub);
            children.push(Item { cid, range });
        }
        start = end;
    }
    Ok(children)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{cid_v1, codec, BlockGet, MemoryBlocks};
    use crate::unixfs::importer::{TreeBuilder, TreeSink};
    use crate::unixfs::profile::Profile;

    /// A file of `chunks` chunks of 1 KiB, each chunk's bytes its index.
    fn file(chunks: u8, blocks: &MemoryBlocks) -> Cid {
        let data: Vec<u8> = (0..chunks)
            .flat_map(|i| std::iter::repeat_n(i, 1024))
            .collect();
        let profile = Profile::by_name("unixfs-v1-2025")
            .unwrap()
            .with_chunker("size-1024")
            .unwrap();
        let mut on_entry = |_: &str, _: &crate::unixfs::importer::Imported| {};
        let progress = |_| {};
        let mut builder = TreeBuilder::new(&profile, blocks, &mut on_entry, &progress);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, &data).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        TreeSink::file(&mut builder, "f", &mut f, data.len() as u64, &path).unwrap();
        builder.finish().unwrap().cid
    }

    fn walk_all(walk: &mut Walk, blocks: &MemoryBlocks) -> Vec<Item> {
        let mut seen = Vec::new();
        while let Some(item) = walk.next_item().unwrap() {
            let data = blocks.get_block(&item.cid).unwrap();
            walk.descend(&item, &data).unwrap();
            seen.push(item);
        }
        seen
    }

    #[test]
    fn a_range_walks_only_the_leaves_that_hold_it() {
        let blocks = MemoryBlocks::new();
        let root = file(8, &blocks);
        let range = ByteRange {
            offset: 1500,
            length: 1024,
        };
        let mut walk = Walk::new(
            Scope::Dag,
            &[Item {
                cid: root,
                range: Some(range),
            }],
            &[],
        );
        let seen = walk_all(&mut walk, &blocks);
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[0].cid, root);
        assert_eq!(
            seen[1].range,
            Some(ByteRange {
                offset: 476,
                length: 548
            })
        );
        assert_eq!(
            seen[2].range,
            Some(ByteRange {
                offset: 0,
                length: 476
            })
        );
        assert_eq!(
            blocks.get_block(&seen[1].cid).unwrap(),
            vec![1u8; 1024],
            "the second chunk holds byte 1500"
        );
    }

    #[test]
    fn shared_blocks_are_visited_once_and_pruned_subtrees_not_at_all() {
        let blocks = MemoryBlocks::new();
        let root = file(4, &blocks);
        let mut whole = Walk::new(Scope::Dag, &[Item::whole(root), Item::whole(root)], &[]);
        assert_eq!(walk_all(&mut whole, &blocks).len(), 5);
        let first_leaf = cid_v1(codec::RAW, &[0u8; 1024]);
        let mut pruned = Walk::new(Scope::Dag, &[Item::whole(root)], &[first_leaf]);
        let seen = walk_all(&mut pruned, &blocks);
        assert_eq!(seen.len(), 4);
        assert!(!seen.iter().any(|item| item.cid == first_leaf));
        let mut only_root = Walk::new(Scope::Dag, &[Item::whole(root)], &[root]);
        assert!(only_root.next_item().unwrap().is_none());
    }

    #[test]
    fn remaining_is_what_a_stopped_walk_has_not_visited() {
        let blocks = MemoryBlocks::new();
        let root = file(4, &blocks);
        let mut walk = Walk::new(Scope::Dag, &[Item::whole(root)], &[]);
        let first = walk.next_item().unwrap().unwrap();
        walk.descend(&first, &blocks.get_block(&root).unwrap())
            .unwrap();
        let leaf = walk.next_item().unwrap().unwrap();
        let remaining = walk.remaining();
        assert_eq!(remaining.len(), 3);
        assert!(!remaining.contains(&leaf));
        let mut block_scope = Walk::new(Scope::Block, &[Item::whole(root)], &[]);
        let item = block_scope.next_item().unwrap().unwrap();
        block_scope
            .descend(&item, &blocks.get_block(&root).unwrap())
            .unwrap();
        assert!(block_scope.next_item().unwrap().is_none());
    }

    #[test]
    fn a_range_over_a_directory_is_an_error() {
        let dir = crate::unixfs::pb::PbNode {
            links: vec![],
            data: Some(vec![0x08, 0x01]),
        }
        .encode();
        let cid = cid_v1(codec::DAG_PB, &dir);
        let item = Item {
            cid,
            range: Some(ByteRange {
                offset: 0,
                length: 1,
            }),
        };
        assert!(children(&item, &dir).is_err());
    }
}
