//! Directories: resolving paths and listing entries, through plain and HAMT-sharded
//! directories.

use cid::Cid;
use rayon::prelude::*;

use super::node::{load, stat, HamtShard, Node};
use super::{malformed, DirEntry, EntryKind, ReadError, MAX_DEPTH};
use crate::block::{codec, BlockGet};
use crate::unixfs::hamt::{self, ShardStep};

/// Follows `path` (segments separated by `/`, already percent-decoded) from `root` through
/// plain and sharded directories. An empty path, or `/`, names the root. Symlinks are not
/// followed.
pub fn resolve<B: BlockGet + ?Sized>(store: &B, root: &Cid, path: &str) -> Result<Cid, ReadError> {
    let segments = split_path(path)?;
    if segments.len() > MAX_DEPTH {
        return Err(ReadError::TooDeep {
            cid: *root,
            limit: MAX_DEPTH,
        });
    }
    let mut current = *root;
    for segment in segments {
        let found = match load(store, &current)? {
            Node::Directory(links) => links
                .iter()
                .find(|link| link.name.as_deref() == Some(segment))
                .map(|link| link.cid),
            Node::Hamt(shard) => hamt_lookup(store, &current, shard, segment)?,
            Node::File(_) | Node::Symlink(_) => return Err(ReadError::NotADirectory(current)),
        };
        current = found.ok_or_else(|| ReadError::NoSuchEntry {
            dir: current,
            segment: segment.into(),
        })?;
    }
    Ok(current)
}

fn split_path(path: &str) -> Result<Vec<&str>, ReadError> {
    let relative = path.strip_prefix('/').unwrap_or(path);
    if relative.is_empty() {
        return Ok(Vec::new());
    }
    let invalid = |reason| ReadError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    relative
        .split('/')
        .map(|segment| match segment {
            "" => Err(invalid("empty segment")),
            "." | ".." => Err(invalid("`.` and `..` segments are not allowed")),
            _ if segment.contains('\0') => Err(invalid("NUL byte in segment")),
            _ => Ok(segment),
        })
        .collect()
}

/// The entries of the directory `cid`, sorted by name, HAMT shards flattened. Each
/// dag-pb entry's root block is read to learn its kind and size.
pub fn list_dir<B: BlockGet + Sync + ?Sized>(
    store: &B,
    cid: &Cid,
) -> Result<Vec<DirEntry>, ReadError> {
    let links = directory_links(store, cid, load(store, cid)?, 0)?;
    entries_of(store, links)
}

/// Each link's entry: a dag-pb entry's root block is read (in parallel) to learn its
/// kind and size.
fn entries_of<B: BlockGet + Sync + ?Sized>(
    store: &B,
    links: Vec<NamedLink>,
) -> Result<Vec<DirEntry>, ReadError> {
    links
        .into_par_iter()
        .map(|link| {
            let (kind, size) = if link.cid.codec() == codec::RAW {
                (EntryKind::Raw, link.tsize.unwrap_or(0))
            } else {
                let entry = stat(store, &link.cid)?;
                (entry.kind, entry.size)
            };
            Ok(DirEntry {
                name: link.name,
                cid: link.cid,
                kind,
                size,
            })
        })
        .collect()
}

/// One page of a directory's entries (see [`list_dir_page`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirPage {
    pub entries: Vec<DirEntry>,
    /// The name to ask for the next page after, when more entries follow.
    pub next: Option<String>,
    /// Whether the directory is HAMT-sharded: its pages then follow the shards' order
    /// (by a hash of the names), not the names' order.
    pub sharded: bool,
    /// The number of entries in the whole directory, for a plain one; a sharded one
    /// would have to be read whole to count them.
    pub total: Option<usize>,
}

/// At most `limit` entries of the directory `cid` after the entry named `after` (from
/// the first without it). A plain directory is one block, sorted by name; a sharded
/// one is read shard by shard, only as far as the page reaches, skipping the buckets
/// before `after`'s, so a page of a folder of millions of entries holds one page of
/// entries and one shard node per level, whatever page it is.
pub fn list_dir_page<B: BlockGet + Sync + ?Sized>(
    store: &B,
    cid: &Cid,
    after: Option<&str>,
    limit: usize,
) -> Result<DirPage, ReadError> {
    let limit = limit.max(1);
    let node = load(store, cid)?;
    let (mut links, sharded, total) = match node {
        Node::Hamt(shard) => {
            let mut page = Vec::with_capacity(limit + 1);
            shard_page(store, cid, shard, 0, after, limit + 1, &mut page)?;
            (page, true, None)
        }
        node => {
            let links = directory_links(store, cid, node, 0)?;
            let total = links.len();
            let page: Vec<NamedLink> = links
                .into_iter()
                .filter(|link| after.is_none_or(|after| link.name.as_str() > after))
                .take(limit + 1)
                .collect();
            (page, false, Some(total))
        }
    };
    let more = links.len() > limit;
    links.truncate(limit);
    let next = more
        .then(|| links.last().map(|link| link.name.clone()))
        .flatten();
    Ok(DirPage {
        entries: entries_of(store, links)?,
        next,
        sharded,
        total,
    })
}

/// Adds to `page` the entries of a shard node (and its sub-shards, depth first) that
/// come after the entry named `after`, until `page` holds `wanted`. An entry's place is
/// its bucket at each level, so the buckets before `after`'s at this level are skipped
/// unread, its own bucket is followed down (or, holding an entry, skipped: that is
/// where `after` itself sits), and the ones after it are read in full.
fn shard_page<B: BlockGet + ?Sized>(
    store: &B,
    cid: &Cid,
    shard: HamtShard,
    depth: usize,
    after: Option<&str>,
    wanted: usize,
    page: &mut Vec<NamedLink>,
) -> Result<(), ReadError> {
    if depth > MAX_DEPTH {
        return Err(ReadError::TooDeep {
            cid: *cid,
            limit: MAX_DEPTH,
        });
    }
    let bits = hamt::fanout_bits(shard.fanout)
        .ok_or_else(|| malformed(cid, hamt::ShardError::Fanout(shard.fanout).to_string()))?;
    let after_bucket = after.map(|name| hamt::bucket_index(name, depth, bits));
    for link in shard.links {
        if page.len() >= wanted {
            break;
        }
        let label = link
            .name
            .as_deref()
            .ok_or_else(|| malformed(cid, hamt::ShardError::UnnamedLink.to_string()))?;
        let (index, entry_name) = hamt::split_label(label, shard.fanout)
            .map_err(|err| malformed(cid, err.to_string()))?;
        let below = match after_bucket {
            Some(bucket) if index < bucket => continue,
            Some(bucket) if index == bucket => {
                if !entry_name.is_empty() {
                    continue;
                }
                after
            }
            _ => None,
        };
        if entry_name.is_empty() {
            match load(store, &link.cid)? {
                Node::Hamt(child) => {
                    shard_page(store, &link.cid, child, depth + 1, below, wanted, page)?
                }
                _ => {
                    return Err(malformed(
                        &link.cid,
                        "HAMT sub-shard link to a non-shard node",
                    ))
                }
            }
        } else {
            page.push(NamedLink {
                name: entry_name.to_string(),
                cid: link.cid,
                tsize: link.tsize,
            });
        }
    }
    Ok(())
}

pub(super) struct NamedLink {
    pub(super) name: String,
    pub(super) cid: Cid,
    pub(super) tsize: Option<u64>,
}

/// A directory's links, sorted by name, shards flattened; duplicate names are an error
/// because they make the directory ambiguous.
pub(super) fn directory_links<B: BlockGet + ?Sized>(
    store: &B,
    cid: &Cid,
    node: Node,
    depth: usize,
) -> Result<Vec<NamedLink>, ReadError> {
    let mut named = Vec::new();
    match node {
        Node::Directory(links) => {
            for link in links {
                let name = link
                    .name
                    .ok_or_else(|| malformed(cid, "directory link without a name"))?;
                named.push(NamedLink {
                    name,
                    cid: link.cid,
                    tsize: link.tsize,
                });
            }
        }
        Node::Hamt(shard) => collect_shard(store, cid, shard, depth, &mut named)?,
        Node::File(_) | Node::Symlink(_) => return Err(ReadError::NotADirectory(*cid)),
    }
    named.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = named.windows(2).find(|pair| pair[0].name == pair[1].name) {
        return Err(malformed(
            cid,
            format!("two entries named {:?}", pair[0].name),
        ));
    }
    Ok(named)
}

fn collect_shard<B: BlockGet + ?Sized>(
    store: &B,
    cid: &Cid,
    shard: HamtShard,
    depth: usize,
    named: &mut Vec<NamedLink>,
) -> Result<(), ReadError> {
    if depth > MAX_DEPTH {
        return Err(ReadError::TooDeep {
            cid: *cid,
            limit: MAX_DEPTH,
        });
    }
    for link in shard.links {
        let label = link
            .name
            .as_deref()
            .ok_or_else(|| malformed(cid, hamt::ShardError::UnnamedLink.to_string()))?;
        let (_, entry_name) = hamt::split_label(label, shard.fanout)
            .map_err(|err| malformed(cid, err.to_string()))?;
        if entry_name.is_empty() {
            match load(store, &link.cid)? {
                Node::Hamt(child) => collect_shard(store, &link.cid, child, depth + 1, named)?,
                _ => {
                    return Err(malformed(
                        &link.cid,
                        "HAMT sub-shard link to a non-shard node",
                    ))
                }
            }
        } else {
            named.push(NamedLink {
                name: entry_name.to_string(),
                cid: link.cid,
                tsize: link.tsize,
            });
        }
    }
    Ok(())
}

/// Finds `name` in a HAMT-sharded directory by following its hash, reading only the
/// shards on its path.
fn hamt_lookup<B: BlockGet + ?Sized>(
    store: &B,
    root: &Cid,
    mut shard: HamtShard,
    name: &str,
) -> Result<Option<Cid>, ReadError> {
    let mut shard_cid = *root;
    for depth in 0..MAX_DEPTH {
        let step = hamt::lookup_step(&shard.links, name, depth, shard.fanout)
            .map_err(|err| malformed(&shard_cid, err.to_string()))?;
        let next = match step {
            ShardStep::Found(link) => return Ok(Some(link.cid)),
            ShardStep::Absent => return Ok(None),
            ShardStep::Descend(link) => link.cid,
        };
        shard = match load(store, &next)? {
            Node::Hamt(shard) => shard,
            _ => return Err(malformed(&next, "HAMT sub-shard link to a non-shard node")),
        };
        shard_cid = next;
    }
    Err(ReadError::TooDeep {
        cid: *root,
        limit: MAX_DEPTH,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_reject_dot_segments_and_empty_segments() {
        assert_eq!(split_path("").unwrap(), Vec::<&str>::new());
        assert_eq!(split_path("/a/b").unwrap(), vec!["a", "b"]);
        for bad in ["a//b", "a/../b", "./a", "a/", "a\0b"] {
            assert!(
                matches!(split_path(bad), Err(ReadError::InvalidPath { .. })),
                "{bad:?}"
            );
        }
    }

    use crate::block::{cid_v1, BlockPut, MemoryBlocks};
    use crate::unixfs::pb::{DataType, PbLink, PbNode, UnixfsData};

    fn put_shard(store: &MemoryBlocks, links: Vec<(String, Cid)>) -> Cid {
        put_shard_of(store, 256, links)
    }

    fn put_shard_of(store: &MemoryBlocks, fanout: u64, links: Vec<(String, Cid)>) -> Cid {
        let mut unixfs = UnixfsData::new(DataType::HamtShard);
        unixfs.hash_type = Some(hamt::HASH_TYPE);
        unixfs.fanout = Some(fanout);
        unixfs.data = Some(vec![0; 32]);
        let links = links
            .into_iter()
            .map(|(name, cid)| PbLink {
                cid,
                name: Some(name),
                tsize: Some(1),
            })
            .collect();
        let bytes = PbNode {
            links,
            data: Some(unixfs.encode()),
        }
        .encode();
        let cid = cid_v1(codec::DAG_PB, &bytes);
        store.put_block(&cid, &bytes).unwrap();
        cid
    }

    fn put_raw(store: &MemoryBlocks, text: &str) -> Cid {
        let cid = cid_v1(codec::RAW, text.as_bytes());
        store.put_block(&cid, text.as_bytes()).unwrap();
        cid
    }

    fn hash_byte(name: &str, level: usize) -> u8 {
        hamt::hash_name(name)[level]
    }

    #[test]
    fn resolves_names_through_nested_hamt_shards() {
        let store = MemoryBlocks::new();
        // Two names that share a bucket at the first level force a sub-shard.
        let names: Vec<String> = (0..100).map(|i| format!("lesson-{i}.html")).collect();
        let (first, second) = names
            .iter()
            .enumerate()
            .find_map(|(i, a)| {
                names[i + 1..]
                    .iter()
                    .find(|b| hash_byte(a, 0) == hash_byte(b, 0))
                    .map(|b| (a, b))
            })
            .expect("100 names over 256 buckets collide");
        assert_ne!(hash_byte(first, 1), hash_byte(second, 1));
        let label = |name: &str, level| format!("{:02X}{name}", hash_byte(name, level));
        let sub = put_shard(
            &store,
            vec![
                (label(first, 1), put_raw(&store, first)),
                (label(second, 1), put_raw(&store, second)),
            ],
        );
        let loner = names
            .iter()
            .find(|n| hash_byte(n, 0) != hash_byte(first, 0))
            .unwrap();
        let root = put_shard(
            &store,
            vec![
                (format!("{:02X}", hash_byte(first, 0)), sub),
                (label(loner, 0), put_raw(&store, loner)),
            ],
        );
        for name in [first, second, loner] {
            let found = resolve(&store, &root, name).unwrap();
            assert_eq!(store.get_block(&found).unwrap(), name.as_bytes());
        }
        let listed: Vec<String> = list_dir(&store, &root)
            .unwrap()
            .into_iter()
            .map(|entry| entry.name)
            .collect();
        let mut expected = vec![first.clone(), second.clone(), loner.clone()];
        expected.sort();
        assert_eq!(listed, expected);

        // A name whose bucket holds someone else, and one whose bucket is empty.
        let same_bucket = names
            .iter()
            .find(|n| *n != loner && hash_byte(n, 0) == hash_byte(loner, 0))
            .cloned()
            .unwrap_or_else(|| "absent".into());
        for missing in [same_bucket.as_str(), "no-such-lesson.html"] {
            assert!(matches!(
                resolve(&store, &root, missing),
                Err(ReadError::NoSuchEntry { .. })
            ));
        }

        // A sub-shard label that points at a file is malformed.
        let bogus = put_shard(
            &store,
            vec![(format!("{:02X}", hash_byte(first, 0)), put_raw(&store, "x"))],
        );
        assert!(matches!(
            resolve(&store, &bogus, first),
            Err(ReadError::Malformed { .. })
        ));
    }

    #[test]
    fn a_name_below_the_first_64_hash_bits_is_found_as_the_builder_places_it() {
        // Fanout 16 takes 4 bits a level: 16 levels use the first 64 bits, and the 17th
        // bucket comes from the name hashed again, as `hamt::bucket_index` (the builder's
        // rule) says.
        let store = MemoryBlocks::new();
        let name = "deep.txt";
        let file = put_raw(&store, "at the bottom");
        let label = |depth: usize| hamt::label_prefix(hamt::bucket_index(name, depth, 4), 16);
        let mut shard = put_shard_of(&store, 16, vec![(format!("{}{name}", label(16)), file)]);
        for depth in (0..16).rev() {
            shard = put_shard_of(&store, 16, vec![(label(depth), shard)]);
        }
        assert_eq!(resolve(&store, &shard, name).unwrap(), file);
        let listed: Vec<String> = list_dir(&store, &shard)
            .unwrap()
            .into_iter()
            .map(|entry| entry.name)
            .collect();
        assert_eq!(listed, [name]);
    }

    /// Pages through the directory `cid` `limit` entries at a time; returns the names in
    /// page order and the largest page.
    fn every_page(store: &MemoryBlocks, cid: &Cid, limit: usize) -> (Vec<String>, usize) {
        let mut names = Vec::new();
        let mut largest = 0;
        let mut after: Option<String> = None;
        loop {
            let page = list_dir_page(store, cid, after.as_deref(), limit).unwrap();
            largest = largest.max(page.entries.len());
            names.extend(page.entries.into_iter().map(|entry| entry.name));
            match page.next {
                Some(next) => after = Some(next),
                None => return (names, largest),
            }
        }
    }

    fn directory_of(store: &MemoryBlocks, count: usize) -> Cid {
        let links = (0..count)
            .map(|i| {
                let name = format!("entry-{i:05}.txt");
                crate::unixfs::importer::DirLink {
                    cid: put_raw(store, &name),
                    name,
                    tsize: 1,
                }
            })
            .collect();
        crate::unixfs::importer::build_directory(
            links,
            &crate::unixfs::profile::Profile::default(),
            store,
        )
        .unwrap()
        .cid
    }

    #[test]
    fn a_sharded_directory_pages_through_every_entry_once() {
        let store = MemoryBlocks::new();
        let cid = directory_of(&store, 6000);
        let first = list_dir_page(&store, &cid, None, 100).unwrap();
        assert!(first.sharded);
        assert_eq!(first.total, None);
        let (names, largest) = every_page(&store, &cid, 100);
        assert_eq!(largest, 100);
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 6000, "every entry once");
        let all: Vec<String> = list_dir(&store, &cid)
            .unwrap()
            .into_iter()
            .map(|entry| entry.name)
            .collect();
        assert_eq!(sorted, all);
        // A name that is no entry still leads on, from where it would sit.
        assert!(list_dir_page(&store, &cid, Some("no such entry"), 10).is_ok());
    }

    #[test]
    fn a_plain_directory_pages_in_name_order() {
        let store = MemoryBlocks::new();
        let cid = directory_of(&store, 25);
        let first = list_dir_page(&store, &cid, None, 10).unwrap();
        assert!(!first.sharded);
        assert_eq!(first.total, Some(25));
        assert_eq!(first.next.as_deref(), Some("entry-00009.txt"));
        let (names, largest) = every_page(&store, &cid, 10);
        assert_eq!(largest, 10);
        let expected: Vec<String> = (0..25).map(|i| format!("entry-{i:05}.txt")).collect();
        assert_eq!(names, expected);
        let last = list_dir_page(&store, &cid, Some("entry-00019.txt"), 10).unwrap();
        assert_eq!(last.entries.len(), 5);
        assert_eq!(last.next, None);
    }
}
