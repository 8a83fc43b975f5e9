//! Reading UnixFS DAGs built by hand in the shapes other writers produce.

use std::fs;
use std::path::Path;

use cid::Cid;
use multihash::Multihash;
use oermesh::block::{cid_v0, cid_v1, codec, BlockPut, MemoryBlocks};
use oermesh::unixfs::pb::{DataType, PbLink, PbNode, UnixfsData};
use oermesh::unixfs::reader::{self, EntryKind, ReadError};

/// Deterministic bytes that differ from chunk to chunk.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Leaf {
    RawV1,
    PbFileV0,
    PbRawV1,
    Identity,
}

/// A node as built: its CID, content size and cumulative DAG size (Tsize).
#[derive(Clone, Copy)]
struct Built {
    cid: Cid,
    size: u64,
    tsize: u64,
}

struct Dag {
    store: MemoryBlocks,
}

impl Dag {
    fn new() -> Self {
        Dag {
            store: MemoryBlocks::new(),
        }
    }

    fn put(&self, cid: Cid, bytes: &[u8]) -> Cid {
        self.store.put_block(&cid, bytes).unwrap();
        cid
    }

    fn put_pb(&self, node: &PbNode, v0: bool) -> (Cid, u64) {
        let bytes = node.encode();
        let cid = if v0 {
            cid_v0(&bytes)
        } else {
            cid_v1(codec::DAG_PB, &bytes)
        };
        (self.put(cid, &bytes), bytes.len() as u64)
    }

    fn leaf(&self, data: &[u8], kind: Leaf) -> Built {
        let size = data.len() as u64;
        match kind {
            Leaf::RawV1 => Built {
                cid: self.put(cid_v1(codec::RAW, data), data),
                size,
                tsize: size,
            },
            Leaf::Identity => {
                let cid = Cid::new_v1(codec::RAW, Multihash::wrap(0, data).unwrap());
                Built {
                    cid,
                    size,
                    tsize: size,
                }
            }
            Leaf::PbFileV0 | Leaf::PbRawV1 => {
                let data_type = if matches!(kind, Leaf::PbFileV0) {
                    DataType::File
                } else {
                    DataType::Raw
                };
                let mut unixfs = UnixfsData::new(data_type);
                unixfs.data = Some(data.to_vec());
                unixfs.filesize = Some(size);
                let node = PbNode {
                    links: vec![],
                    data: Some(unixfs.encode()),
                };
                let (cid, len) = self.put_pb(&node, matches!(kind, Leaf::PbFileV0));
                Built {
                    cid,
                    size,
                    tsize: len,
                }
            }
        }
    }

    fn file_node(&self, inline: &[u8], children: &[Built], v0: bool) -> Built {
        let mut unixfs = UnixfsData::new(DataType::File);
        if !inline.is_empty() {
            unixfs.data = Some(inline.to_vec());
        }
        let size = inline.len() as u64 + children.iter().map(|c| c.size).sum::<u64>();
        unixfs.filesize = Some(size);
        unixfs.blocksizes = children.iter().map(|c| c.size).collect();
        let links = children
            .iter()
            .map(|c| PbLink {
                cid: c.cid,
                name: Some(String::new()),
                tsize: Some(c.tsize),
            })
            .collect();
        let (cid, len) = self.put_pb(
            &PbNode {
                links,
                data: Some(unixfs.encode()),
            },
            v0,
        );
        Built {
            cid,
            size,
            tsize: len + children.iter().map(|c| c.tsize).sum::<u64>(),
        }
    }

    fn directory(&self, entries: &[(&str, Built)]) -> Built {
        let links = entries
            .iter()
            .map(|(name, c)| PbLink {
                cid: c.cid,
                name: Some(name.to_string()),
                tsize: Some(c.tsize),
            })
            .collect();
        let node = PbNode {
            links,
            data: Some(UnixfsData::new(DataType::Directory).encode()),
        };
        let (cid, len) = self.put_pb(&node, false);
        Built {
            cid,
            size: 0,
            tsize: len + entries.iter().map(|(_, c)| c.tsize).sum::<u64>(),
        }
    }

    fn symlink(&self, target: &str) -> Built {
        let mut unixfs = UnixfsData::new(DataType::Symlink);
        unixfs.data = Some(target.as_bytes().to_vec());
        let (cid, len) = self.put_pb(
            &PbNode {
                links: vec![],
                data: Some(unixfs.encode()),
            },
            false,
        );
        Built {
            cid,
            size: target.len() as u64,
            tsize: len,
        }
    }

    fn read(&self, cid: &Cid) -> Result<Vec<u8>, ReadError> {
        let mut out = Vec::new();
        let written = reader::read_file(&self.store, cid, &mut out)?;
        assert_eq!(written, out.len() as u64);
        Ok(out)
    }
}

/// The shape of a file DAG: leaves of given sizes, inner nodes with optional inline data.
enum Shape {
    Leaf(usize),
    Node { inline: usize, children: Vec<Shape> },
}

/// Builds `shape`, cycling through leaf kinds and CID versions so that every DAG mixes
/// them, and appends the expected content to `content`.
fn build(dag: &Dag, shape: &Shape, content: &mut Vec<u8>, counter: &mut u64) -> Built {
    *counter += 1;
    match shape {
        Shape::Leaf(len) => {
            let data = pattern(*len, *counter);
            content.extend_from_slice(&data);
            let kinds = [
                Leaf::RawV1,
                Leaf::PbFileV0,
                Leaf::RawV1,
                Leaf::PbRawV1,
                Leaf::Identity,
            ];
            let mut kind = kinds[*counter as usize % kinds.len()];
            if matches!(kind, Leaf::Identity) && *len > 32 {
                kind = Leaf::RawV1;
            }
            dag.leaf(&data, kind)
        }
        Shape::Node { inline, children } => {
            let inline_data = pattern(*inline, *counter + 1000);
            content.extend_from_slice(&inline_data);
            let v0 = (*counter).is_multiple_of(2);
            let built: Vec<Built> = children
                .iter()
                .map(|child| build(dag, child, content, counter))
                .collect();
            dag.file_node(&inline_data, &built, v0)
        }
    }
}

/// A trickle-shaped DAG: some leaves, then pairs of subtrees of growing depth.
fn trickle(depth: usize, leaf_len: usize) -> Shape {
    let mut children: Vec<Shape> = (0..3).map(|i| Shape::Leaf(leaf_len + i * 7)).collect();
    for sub_depth in 1..depth {
        for _ in 0..2 {
            children.push(trickle(sub_depth, leaf_len));
        }
    }
    Shape::Node {
        inline: 0,
        children,
    }
}

/// A balanced DAG of `leaves` equal leaves, at most `width` links per node.
fn balanced(leaves: usize, width: usize, leaf_len: usize) -> Shape {
    let mut level: Vec<Shape> = (0..leaves).map(|_| Shape::Leaf(leaf_len)).collect();
    while level.len() > 1 {
        let mut next = Vec::new();
        let mut iter = level.into_iter().peekable();
        while iter.peek().is_some() {
            next.push(Shape::Node {
                inline: 0,
                children: iter.by_ref().take(width).collect(),
            });
        }
        level = next;
    }
    level.pop().unwrap()
}

fn check_all_ranges(dag: &Dag, cid: &Cid, content: &[u8]) {
    let len = content.len() as u64;
    let points: Vec<u64> = [
        0,
        1,
        2,
        99,
        100,
        101,
        len / 3,
        len / 2,
        len - 1,
        len,
        len + 5,
    ]
    .into_iter()
    .filter(|p| *p <= len + 5)
    .collect();
    for &offset in &points {
        for &span in &[0u64, 1, 7, 100, 1000, len, u64::MAX] {
            let mut out = Vec::new();
            let written = reader::read_range(&dag.store, cid, offset, span, &mut out).unwrap();
            let start = (offset as usize).min(content.len());
            let end = (offset.saturating_add(span)).min(len) as usize;
            let expected = if start < end {
                &content[start..end]
            } else {
                &[][..]
            };
            assert_eq!(out, expected, "offset {offset} len {span}");
            assert_eq!(written, expected.len() as u64);
        }
    }
}

#[test]
fn reads_balanced_dag() {
    let dag = Dag::new();
    let mut content = Vec::new();
    let root = build(&dag, &balanced(23, 4, 1000), &mut content, &mut 0);
    assert_eq!(dag.read(&root.cid).unwrap(), content);
    let entry = reader::stat(&dag.store, &root.cid).unwrap();
    assert_eq!(
        (entry.kind, entry.size),
        (EntryKind::File, content.len() as u64)
    );
    check_all_ranges(&dag, &root.cid, &content);
}

#[test]
fn reads_trickle_dag_with_mixed_leaves_versions_and_inline_data() {
    let dag = Dag::new();
    let mut content = Vec::new();
    let mut shape = trickle(4, 50);
    if let Shape::Node { inline, children } = &mut shape {
        // Inner nodes may carry data of their own, read before their children.
        *inline = 33;
        children.insert(
            1,
            Shape::Node {
                inline: 5,
                children: vec![Shape::Leaf(3), Shape::Leaf(0)],
            },
        );
    }
    let root = build(&dag, &shape, &mut content, &mut 0);
    assert!(content.len() > 1000);
    assert_eq!(dag.read(&root.cid).unwrap(), content);
    check_all_ranges(&dag, &root.cid, &content);
}

#[test]
fn reads_single_block_files_of_every_kind() {
    let dag = Dag::new();
    for kind in [Leaf::RawV1, Leaf::PbFileV0, Leaf::PbRawV1, Leaf::Identity] {
        let data = pattern(20, 7);
        let leaf = dag.leaf(&data, kind);
        assert_eq!(dag.read(&leaf.cid).unwrap(), data, "{kind:?}");
        assert_eq!(reader::stat(&dag.store, &leaf.cid).unwrap().size, 20);
    }
    let empty_raw = dag.leaf(b"", Leaf::RawV1);
    assert_eq!(dag.read(&empty_raw.cid).unwrap(), b"");
    let empty_file = dag.file_node(b"", &[], false);
    assert_eq!(dag.read(&empty_file.cid).unwrap(), b"");
    let entry = reader::stat(&dag.store, &empty_raw.cid).unwrap();
    assert_eq!((entry.kind, entry.size), (EntryKind::Raw, 0));
}

/// A directory with a file, a subdirectory holding a file and an empty directory, and a
/// symlink.
fn sample_tree(dag: &Dag) -> (Built, Vec<u8>, Vec<u8>) {
    let mut big = Vec::new();
    let big_file = build(dag, &balanced(9, 3, 300), &mut big, &mut 0);
    let small = b"hello world".to_vec();
    let small_file = dag.leaf(&small, Leaf::RawV1);
    let empty = dag.directory(&[]);
    let sub = dag.directory(&[("empty", empty), ("notes.txt", small_file)]);
    let link = dag.symlink("sub/notes.txt");
    let root = dag.directory(&[("big.bin", big_file), ("link", link), ("sub", sub)]);
    (root, big, small)
}

#[test]
fn resolves_paths_and_lists_directories() {
    let dag = Dag::new();
    let (root, big, small) = sample_tree(&dag);
    let notes = reader::resolve(&dag.store, &root.cid, "sub/notes.txt").unwrap();
    assert_eq!(dag.read(&notes).unwrap(), small);
    let big_cid = reader::resolve(&dag.store, &root.cid, "/big.bin").unwrap();
    assert_eq!(dag.read(&big_cid).unwrap(), big);
    assert_eq!(
        reader::resolve(&dag.store, &root.cid, "").unwrap(),
        root.cid
    );

    let listing = reader::list_dir(&dag.store, &root.cid).unwrap();
    let summary: Vec<(&str, EntryKind)> = listing
        .iter()
        .map(|entry| (entry.name.as_str(), entry.kind))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("big.bin", EntryKind::File),
            ("link", EntryKind::Symlink),
            ("sub", EntryKind::Directory)
        ]
    );
    assert_eq!(listing[0].size, big.len() as u64);
    assert_eq!(listing[1].size, "sub/notes.txt".len() as u64);
    assert_eq!(
        reader::stat(&dag.store, &root.cid).unwrap().size,
        root.tsize
    );

    let missing = reader::resolve(&dag.store, &root.cid, "sub/nope").unwrap_err();
    assert!(matches!(&missing, ReadError::NoSuchEntry { segment, .. } if &**segment == "nope"));
    assert!(missing.to_string().contains("\"nope\""));
    assert!(matches!(
        reader::resolve(&dag.store, &root.cid, "big.bin/x"),
        Err(ReadError::NotADirectory(cid)) if cid == big_cid
    ));
    for bad in ["sub/../big.bin", "sub//notes.txt", "./sub"] {
        assert!(matches!(
            reader::resolve(&dag.store, &root.cid, bad),
            Err(ReadError::InvalidPath { .. })
        ));
    }
    assert!(matches!(dag.read(&root.cid), Err(ReadError::NotAFile(_))));
    assert!(matches!(
        reader::list_dir(&dag.store, &big_cid),
        Err(ReadError::NotADirectory(_))
    ));
}

#[test]
fn get_tree_writes_files_folders_and_symlinks() {
    let dag = Dag::new();
    let (root, big, small) = sample_tree(&dag);
    let temp = tempfile::tempdir().unwrap();
    let dest = temp.path().join("out");
    reader::get_tree(&dag.store, &root.cid, &dest).unwrap();
    assert_eq!(fs::read(dest.join("big.bin")).unwrap(), big);
    assert_eq!(fs::read(dest.join("sub/notes.txt")).unwrap(), small);
    assert!(dest.join("sub/empty").is_dir());
    assert_eq!(fs::read_dir(dest.join("sub/empty")).unwrap().count(), 0);
    let link = dest.join("link");
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("sub/notes.txt"));

    // Existing non-empty destinations are refused; empty directories are filled.
    assert!(matches!(
        reader::get_tree(&dag.store, &root.cid, &dest),
        Err(ReadError::DestinationExists(_))
    ));
    let empty_dest = temp.path().join("empty");
    fs::create_dir(&empty_dest).unwrap();
    reader::get_tree(&dag.store, &root.cid, &empty_dest).unwrap();
    assert_eq!(fs::read(empty_dest.join("sub/notes.txt")).unwrap(), small);

    // A single file is written as a file.
    let file_dest = temp.path().join("single");
    let big_cid = reader::resolve(&dag.store, &root.cid, "big.bin").unwrap();
    reader::get_tree(&dag.store, &big_cid, &file_dest).unwrap();
    assert_eq!(fs::read(&file_dest).unwrap(), big);
}

#[test]
fn get_tree_refuses_names_that_escape_the_destination() {
    let dag = Dag::new();
    let payload = dag.leaf(b"owned", Leaf::RawV1);
    for name in ["..", ".", "a/b", "../escape", "", "nul\0byte"] {
        let inner = dag.directory(&[(name, payload)]);
        let root = dag.directory(&[("fine.txt", payload), ("inner", inner)]);
        let temp = tempfile::tempdir().unwrap();
        let dest = temp.path().join("out");
        let err = reader::get_tree(&dag.store, &root.cid, &dest).unwrap_err();
        assert!(
            matches!(&err, ReadError::UnsafeName { name: n, .. } if &**n == name),
            "{name:?}: {err}"
        );
        // Nothing stays behind, inside or outside the destination.
        assert_eq!(fs::read_dir(temp.path()).unwrap().count(), 0, "{name:?}");
    }
}

#[test]
fn lists_and_writes_hamt_sharded_directories() {
    let dag = Dag::new();
    let file = |text: &str| dag.leaf(text.as_bytes(), Leaf::RawV1);
    let shard = |links: Vec<(String, Built)>| {
        let mut unixfs = UnixfsData::new(DataType::HamtShard);
        unixfs.hash_type = Some(0x22);
        unixfs.fanout = Some(256);
        unixfs.data = Some(vec![0; 32]);
        let links = links
            .into_iter()
            .map(|(name, c)| PbLink {
                cid: c.cid,
                name: Some(name),
                tsize: Some(c.tsize),
            })
            .collect();
        let (cid, len) = dag.put_pb(
            &PbNode {
                links,
                data: Some(unixfs.encode()),
            },
            false,
        );
        Built {
            cid,
            size: 0,
            tsize: len,
        }
    };
    let nested = shard(vec![
        ("0Bdeep.txt".into(), file("deep")),
        ("C0other.txt".into(), file("other")),
    ]);
    let root = shard(vec![
        ("00alpha.txt".into(), file("alpha")),
        ("4F".into(), nested),
        ("FFzulu.txt".into(), file("zulu")),
    ]);
    let names: Vec<String> = reader::list_dir(&dag.store, &root.cid)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["alpha.txt", "deep.txt", "other.txt", "zulu.txt"]);
    assert_eq!(
        reader::stat(&dag.store, &root.cid).unwrap().kind,
        EntryKind::Directory
    );
    let temp = tempfile::tempdir().unwrap();
    let dest = temp.path().join("hamt");
    reader::get_tree(&dag.store, &root.cid, &dest).unwrap();
    assert_eq!(fs::read(dest.join("deep.txt")).unwrap(), b"deep");

    let bad_label = shard(vec![("zzname".into(), file("x"))]);
    assert!(matches!(
        reader::list_dir(&dag.store, &bad_label.cid),
        Err(ReadError::Malformed { .. })
    ));
}

#[test]
fn lying_sizes_are_caught_before_bad_bytes_are_written() {
    let dag = Dag::new();
    let first = dag.leaf(&pattern(100, 1), Leaf::RawV1);
    let second = dag.leaf(&pattern(100, 2), Leaf::RawV1);
    // The parent claims the second leaf holds 150 bytes.
    let liar = Built {
        size: 150,
        ..second
    };
    let root = dag.file_node(b"", &[first, liar], false);
    let mut out = Vec::new();
    let err = reader::read_file(&dag.store, &root.cid, &mut out).unwrap_err();
    assert!(
        matches!(err, ReadError::SizeMismatch { cid, declared: 150, actual: 100 } if cid == second.cid),
        "{err}"
    );
    assert_eq!(out, pattern(100, 1), "only the honest leaf was written");

    // A child hiding its bytes behind a declared size of zero.
    let hidden = Built { size: 0, ..second };
    let root = dag.file_node(b"", &[first, hidden], true);
    assert!(matches!(
        dag.read(&root.cid),
        Err(ReadError::SizeMismatch {
            declared: 0,
            actual: 100,
            ..
        })
    ));

    // filesize disagreeing with blocksizes.
    let mut unixfs = UnixfsData::new(DataType::File);
    unixfs.filesize = Some(999);
    unixfs.blocksizes = vec![100];
    let node = PbNode {
        links: vec![PbLink {
            cid: first.cid,
            name: Some(String::new()),
            tsize: Some(100),
        }],
        data: Some(unixfs.encode()),
    };
    let (cid, _) = dag.put_pb(&node, false);
    assert!(matches!(
        reader::stat(&dag.store, &cid),
        Err(ReadError::SizeMismatch { .. })
    ));

    // More links than blocksizes.
    unixfs.filesize = None;
    unixfs.blocksizes = vec![];
    let (cid, _) = dag.put_pb(
        &PbNode {
            data: Some(unixfs.encode()),
            ..node
        },
        false,
    );
    assert!(matches!(dag.read(&cid), Err(ReadError::Malformed { .. })));
}

#[test]
fn missing_corrupt_foreign_and_too_deep_blocks_are_errors() {
    let dag = Dag::new();
    let leaves: Vec<Built> = (0..20)
        .map(|i| dag.leaf(&pattern(1000, i), Leaf::RawV1))
        .collect();
    let root = dag.file_node(b"", &leaves, false);

    // A flipped bit in a stored leaf is caught while streaming.
    let mut damaged = pattern(1000, 13);
    damaged[500] ^= 0x10;
    dag.store.put_block(&leaves[13].cid, &damaged).unwrap();
    let err = dag.read(&root.cid).unwrap_err();
    assert!(
        matches!(err, ReadError::Corrupt(cid) if cid == leaves[13].cid),
        "{err}"
    );

    let absent = cid_v1(codec::RAW, b"never stored");
    let with_hole = dag.file_node(
        b"",
        &[
            leaves[0],
            Built {
                cid: absent,
                size: 12,
                tsize: 12,
            },
        ],
        false,
    );
    let err = dag.read(&with_hole.cid).unwrap_err();
    assert!(matches!(err, ReadError::NotFound(cid) if cid == absent));
    assert!(err.to_string().contains(&absent.to_string()));

    let cbor = dag.put(cid_v1(codec::DAG_CBOR, b"\xa0"), b"\xa0");
    assert!(matches!(
        dag.read(&cbor),
        Err(ReadError::UnsupportedCodec { codec: 0x71, .. })
    ));

    let directory = dag.directory(&[]);
    let file_of_dir = dag.file_node(
        b"",
        &[Built {
            size: 5,
            ..directory
        }],
        false,
    );
    assert!(matches!(
        dag.read(&file_of_dir.cid),
        Err(ReadError::Malformed { .. })
    ));

    let mut chain = leaves[0];
    for _ in 0..70 {
        chain = dag.file_node(b"", &[chain], false);
    }
    assert!(matches!(
        dag.read(&chain.cid),
        Err(ReadError::TooDeep { .. })
    ));
}

/// Throughput of `read_file` over a 1 GiB file of 1 MiB raw leaves held in memory.
/// Run with `cargo test --release --test it -- --ignored --nocapture read_throughput`.
#[test]
#[ignore = "slow; measures throughput in release builds"]
fn read_throughput_1gib_of_1mib_raw_leaves() {
    const CHUNK: usize = 1 << 20;
    let dag = Dag::new();
    let mut chunk = pattern(CHUNK, 1);
    let leaves: Vec<Built> = (0..1024u32)
        .map(|index| {
            chunk[..4].copy_from_slice(&index.to_le_bytes());
            dag.leaf(&chunk, Leaf::RawV1)
        })
        .collect();
    let root = dag.file_node(b"", &leaves, false);
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let written = reader::read_file(&dag.store, &root.cid, &mut std::io::sink()).unwrap();
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(written, 1 << 30);
        println!(
            "read_file: {:.0} MB/s ({seconds:.3} s for 1 GiB)",
            written as f64 / seconds / 1e6
        );
    }
}

/// What the importer writes, the reader reads back: a sharded folder of 5,000 files and
/// a nested tree, entry by entry and byte for byte.
#[test]
fn imported_trees_read_back_exactly() {
    use oermesh::unixfs::importer::import_path;
    use oermesh::unixfs::profile::Profile;
    use oermesh::unixfs::reader;

    for (name, profile) in [
        ("wide", Profile::UNIXFS_V1_2025),
        ("nested", Profile::UNIXFS_V0_2015),
    ] {
        let scratch = tempfile::tempdir_in(if std::path::Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        })
        .unwrap();
        let (name, entries) = crate::gen::tree(name);
        let name = name.as_str();
        crate::gen::write_tree(scratch.path(), &entries).unwrap();
        let blocks = oermesh::block::MemoryBlocks::new();
        let root = import_path(
            &scratch.path().join(name),
            true,
            &profile,
            &blocks,
            &mut |_, _| {},
            &|_| {},
        )
        .unwrap();
        let top = reader::list_dir(&blocks, &root.cid).unwrap();
        let mut names: Vec<&str> = top.iter().map(|entry| entry.name.as_str()).collect();
        let sorted = {
            let mut s = names.clone();
            s.sort();
            s
        };
        assert_eq!(names, sorted, "listings come sorted");
        names.dedup();
        assert_eq!(names.len(), top.len());
        // Every file of the nested tree, and a sample across the shards of the wide one.
        for entry in entries.iter().step_by(if name == "wide" { 97 } else { 1 }) {
            if let crate::gen::TreeEntry::File { path, size, seed } = entry {
                let relative = path.strip_prefix(&format!("{name}/")).unwrap();
                let cid = reader::resolve(&blocks, &root.cid, relative).unwrap();
                let mut bytes = Vec::new();
                reader::read_file(&blocks, &cid, &mut bytes).unwrap();
                assert_eq!(bytes, crate::gen::generated_bytes(*size, *seed), "{path}");
            }
        }
        let copy = scratch.path().join("copy");
        reader::get_tree(&blocks, &root.cid, &copy).unwrap();
        let again = import_path(
            &copy,
            true,
            &profile,
            &oermesh::block::MemoryBlocks::discarding(),
            &mut |_, _| {},
            &|_| {},
        )
        .unwrap();
        assert_eq!(
            again.cid, root.cid,
            "a tree written out and added again has the same CID"
        );
    }
}
