//! The importer against CIDs computed by the reference importer (tests/vectors/unixfs.tsv,
//! written by scripts/vectors/generate.mjs), plus the folder rules that have no vector.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use oermesh::block::{BlockGet, MemoryBlocks};
use oermesh::unixfs::hamt;
use oermesh::unixfs::importer::{import_path, import_reader, total_bytes, ImportError, Imported};
use oermesh::unixfs::pb::{DataType, PbNode, UnixfsData};
use oermesh::unixfs::profile::Profile;

use crate::gen::{self, Generated};

struct Vector {
    case: String,
    profile: Profile,
    input: String,
    cid: String,
}

fn vectors() -> Vec<Vector> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/unixfs.tsv");
    let text = std::fs::read_to_string(path).expect("vector file");
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 4, "malformed vector line: {line}");
            Vector {
                case: fields[0].to_owned(),
                profile: profile_from_options(fields[1]),
                input: fields[2].to_owned(),
                cid: fields[3].to_owned(),
            }
        })
        .collect()
}

fn profile_from_options(options: &str) -> Profile {
    let mut profile = Profile::default();
    for option in options.split(';') {
        let (key, value) = option.split_once('=').expect("key=value");
        profile = match key {
            "profile" => Profile::by_name(value).unwrap(),
            "cid-version" => profile.with_cid_version(value.parse().unwrap()).unwrap(),
            "chunker" => profile.with_chunker(value).unwrap(),
            other => panic!("unknown vector option {other}"),
        };
    }
    profile
}

/// (size, seed) of a `bytes:SIZE:SEED` input.
fn bytes_input(input: &str) -> Option<(u64, u32)> {
    let mut parts = input.strip_prefix("bytes:")?.split(':');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn check_byte_vectors(wanted: impl Fn(u64) -> bool) -> usize {
    let mut checked = 0;
    for vector in vectors() {
        let Some((size, seed)) = bytes_input(&vector.input) else {
            continue;
        };
        if !wanted(size) {
            continue;
        }
        let sink = MemoryBlocks::discarding();
        let imported =
            import_reader(Generated::new(size, seed), &vector.profile, &sink, &|_| {}).unwrap();
        assert_eq!(imported.cid.to_string(), vector.cid, "case {}", vector.case);
        assert_eq!(imported.size, size, "case {}", vector.case);
        checked += 1;
    }
    checked
}

#[test]
fn file_vectors() {
    let checked = check_byte_vectors(|size| size < 1 << 30);
    assert!(checked >= 27, "only {checked} file vectors found");
}

/// 1 GiB + 1 MiB: the first v1-2025 file that needs a second level of links (about 15 s in
/// a debug build, mostly generating the input).
#[test]
fn file_vector_above_one_gib() {
    assert_eq!(check_byte_vectors(|size| size >= 1 << 30), 1);
}

/// Throughput of importing 1 GiB, against one core hashing with sha2-256. Run with
/// `cargo test --release --test it -- --ignored import_throughput --nocapture`.
#[test]
#[ignore]
fn import_throughput() {
    use rayon::prelude::*;
    use sha2::Digest;
    const SIZE: usize = 1 << 30;
    let mib_per_s = |bytes: usize, took: std::time::Duration| {
        bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
    };
    let data = gen::generated_bytes(SIZE, 99);

    let start = Instant::now();
    let digest = sha2::Sha256::digest(&data);
    let sha_speed = mib_per_s(SIZE, start.elapsed());
    assert_ne!(digest[0..4], [0; 4]);

    let start = Instant::now();
    let digests: Vec<_> = data.par_chunks(1 << 20).map(sha2::Sha256::digest).collect();
    let sha_all_cores = mib_per_s(SIZE, start.elapsed());
    assert_eq!(digests.len(), 1024);

    let sink = MemoryBlocks::discarding();
    let start = Instant::now();
    let imported = import_reader(&data[..], &Profile::default(), &sink, &|_| {}).unwrap();
    let memory_speed = mib_per_s(SIZE, start.elapsed());

    let scratch = scratch_dir();
    let path = scratch.path().join("one-gib.bin");
    std::fs::write(&path, &data).unwrap();
    drop(data);
    let start = Instant::now();
    let mut file = std::fs::File::open(&path).unwrap();
    let mut buffer = vec![0u8; 16 << 20];
    while file.read(&mut buffer).unwrap() > 0 {}
    let read_speed = mib_per_s(SIZE, start.elapsed());
    let sink = MemoryBlocks::discarding();
    let start = Instant::now();
    let from_file = import_path(
        &path,
        false,
        &Profile::default(),
        &sink,
        &mut |_, _| {},
        &|_| {},
    )
    .unwrap();
    let file_speed = mib_per_s(SIZE, start.elapsed());
    assert_eq!(imported, from_file);

    println!("sha2-256 on one core: {sha_speed:.0} MiB/s");
    println!(
        "sha2-256 on all cores ({}): {sha_all_cores:.0} MiB/s",
        rayon::current_num_threads()
    );
    println!("reading the file:     {read_speed:.0} MiB/s");
    println!("import from memory:   {memory_speed:.0} MiB/s");
    println!(
        "import from a file:   {file_speed:.0} MiB/s ({})",
        path.display()
    );
}

/// Time to import 9,520 small files from the disk, the shape of a folder of worksheets.
/// Run with `cargo test --release --test it -- --ignored small_files_throughput --nocapture`.
#[test]
#[ignore]
fn small_files_throughput() {
    let root = tempfile::tempdir().unwrap();
    gen::write_tree(root.path(), &gen::wide_tree()).unwrap();
    let sink = MemoryBlocks::discarding();
    let mut files = 0;
    let start = Instant::now();
    import_path(
        &root.path().join("wide"),
        true,
        &Profile::default(),
        &sink,
        &mut |_, _| files += 1,
        &|_| {},
    )
    .unwrap();
    let took = start.elapsed();
    println!(
        "{files} entries in {took:.2?}: {:.0} entries/s",
        f64::from(files) / took.as_secs_f64()
    );
}

/// A scratch folder in memory where there is one: creating thousands of files on the disk
/// costs most of a millisecond each on some machines.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().unwrap()
}

/// Checks every `tree:` vector whose spec starts with `prefix`; returns each case with
/// whether its root came out as a HAMT shard.
fn check_tree_vectors(prefix: &str) -> Vec<(String, bool)> {
    let mut by_spec: BTreeMap<String, Vec<Vector>> = BTreeMap::new();
    for vector in vectors() {
        if let Some(spec) = vector
            .input
            .strip_prefix("tree:")
            .filter(|spec| spec.starts_with(prefix))
        {
            by_spec.entry(spec.to_owned()).or_default().push(vector);
        }
    }
    let mut checked = Vec::new();
    for (spec, vectors) in by_spec {
        let (root_name, entries) = gen::tree(&spec);
        let root = scratch_dir();
        gen::write_tree(root.path(), &entries).unwrap();
        for vector in vectors {
            let blocks = MemoryBlocks::new();
            let imported = import_path(
                &root.path().join(&root_name),
                true,
                &vector.profile,
                &blocks,
                &mut |_, _| {},
                &|_| {},
            )
            .unwrap();
            assert_eq!(imported.cid.to_string(), vector.cid, "case {}", vector.case);
            let sharded = node_and_data(&blocks, &imported.cid).1.data_type == DataType::HamtShard;
            checked.push((vector.case, sharded));
        }
    }
    checked
}

#[test]
fn nested_tree_vectors() {
    assert_eq!(check_tree_vectors("nested").len(), 3);
}

#[test]
fn wide_tree_vectors() {
    let checked = check_tree_vectors("wide");
    assert_eq!(checked.len(), 3);
    assert!(checked.iter().all(|(_, sharded)| *sharded));
}

#[test]
fn sharding_threshold_vectors() {
    let checked = check_tree_vectors("flat");
    assert_eq!(checked.len(), 6);
    for (case, sharded) in checked {
        let expected = case.contains("over-limit") || case.contains("empty-folder");
        assert_eq!(sharded, expected, "case {case}");
    }
}

fn node_and_data(blocks: &MemoryBlocks, cid: &cid::Cid) -> (PbNode, UnixfsData) {
    let node = PbNode::decode(&blocks.get_block(cid).unwrap()).unwrap();
    let data = UnixfsData::decode(node.data.as_deref().unwrap()).unwrap();
    (node, data)
}

#[test]
fn wide_folders_are_nested_shards() {
    let root = scratch_dir();
    gen::write_tree(root.path(), &gen::wide_tree()).unwrap();
    let blocks = MemoryBlocks::new();
    let imported = import_path(
        &root.path().join("wide"),
        true,
        &Profile::default(),
        &blocks,
        &mut |_, _| {},
        &|_| {},
    )
    .unwrap();
    let (node, data) = node_and_data(&blocks, &imported.cid);
    assert_eq!(data.data_type, DataType::HamtShard);
    assert_eq!((data.fanout, data.hash_type), (Some(256), Some(0x22)));
    let sub_shards = node
        .links
        .iter()
        .filter(|link| link.name.as_deref().is_some_and(|n| n.len() == 2));
    assert!(
        sub_shards.count() > 0,
        "5,000 entries in 256 buckets need sub-shards"
    );
    let inner = find_in_shard(&blocks, imported.cid, "inner");
    assert_eq!(
        node_and_data(&blocks, &inner).1.data_type,
        DataType::HamtShard
    );
    let greek = find_in_shard(&blocks, imported.cid, "ζήτημα-7.txt");
    assert_eq!(
        blocks.get_block(&greek).unwrap(),
        gen::generated_bytes(7, 50_007)
    );
    let all_bytes: usize = blocks.into_blocks().values().map(Vec::len).sum();
    assert!(
        imported.tsize >= all_bytes as u64,
        "Tsize counts every block (duplicates included)"
    );
}

/// Looks `name` up in a shard the way a reader does: one bucket per level.
fn find_in_shard(blocks: &MemoryBlocks, shard: cid::Cid, name: &str) -> cid::Cid {
    let mut node_cid = shard;
    for depth in 0.. {
        let (node, data) = node_and_data(blocks, &node_cid);
        assert_eq!(data.data_type, DataType::HamtShard);
        match hamt::lookup_step(&node.links, name, depth, data.fanout.unwrap()).unwrap() {
            hamt::ShardStep::Found(link) => return link.cid,
            hamt::ShardStep::Descend(link) => node_cid = link.cid,
            hamt::ShardStep::Absent => panic!("{name} is not in the shard"),
        }
    }
    unreachable!()
}

/// A reader that hands out a few bytes at a time: chunk boundaries must not depend on it.
struct Trickle<R>(R, usize);

impl<R: Read> Read for Trickle<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.1 = self.1 % 4093 + 1;
        let len = buf.len().min(self.1);
        self.0.read(&mut buf[..len])
    }
}

#[test]
fn short_reads_and_progress() {
    let size = 3 * (1 << 20) + 12_345;
    let profile = Profile::UNIXFS_V1_2025.with_chunker("size-65536").unwrap();
    let sink = MemoryBlocks::discarding();
    let whole = import_reader(Generated::new(size, 3), &profile, &sink, &|_| {}).unwrap();
    let last_progress = RefCell::new(0);
    let trickled = import_reader(
        Trickle(Generated::new(size, 3), 0),
        &profile,
        &sink,
        &|read| {
            assert!(read >= *last_progress.borrow());
            *last_progress.borrow_mut() = read;
        },
    )
    .unwrap();
    assert_eq!(whole, trickled);
    assert_eq!(*last_progress.borrow(), size);
}

#[test]
fn folder_rules() {
    let root = tempfile::tempdir().unwrap();
    let lessons = root.path().join("lessons");
    gen::write_tree(&lessons, &gen::nested_tree()).unwrap();
    let tree = lessons.join("nested");
    std::fs::write(tree.join(".DS_Store"), b"finder noise").unwrap();
    std::fs::create_dir(tree.join(".git")).unwrap();
    std::fs::write(tree.join(".git/HEAD"), b"ref: refs/heads/main").unwrap();
    let profile = Profile::default();
    let sink = MemoryBlocks::discarding();
    let plain = import_path(&tree, true, &profile, &sink, &mut |_, _| {}, &|_| {}).unwrap();
    let expected = vectors()
        .into_iter()
        .find(|vector| vector.case == "v1-tree-nested")
        .unwrap();
    assert_eq!(
        plain.cid.to_string(),
        expected.cid,
        "hidden entries are left out"
    );
    assert_eq!(total_bytes(&tree, true).unwrap(), plain.size);

    let mut seen: Vec<(String, Imported)> = Vec::new();
    let last_progress = RefCell::new(0);
    import_path(
        &tree,
        true,
        &profile,
        &sink,
        &mut |path, imported| seen.push((path.to_owned(), *imported)),
        &|read| *last_progress.borrow_mut() = read,
    )
    .unwrap();
    assert_eq!(*last_progress.borrow(), plain.size);
    assert_eq!(
        seen.len(),
        15 + 2 + 9,
        "15 files, 2 empty folders and 9 folders with entries"
    );
    assert_eq!(seen.last().unwrap(), &("nested".to_string(), plain));
    assert!(seen
        .iter()
        .any(|(path, _)| path == "nested/Ελληνικά/Ασκήσεις/λύσεις.pdf"));

    let error = import_path(&tree, false, &profile, &sink, &mut |_, _| {}, &|_| {}).unwrap_err();
    assert!(matches!(error, ImportError::IsDirectory(_)));
    assert!(error.to_string().contains("use -r"), "{error}");

    let missing = root.path().join("missing.pdf");
    let error = import_path(&missing, false, &profile, &sink, &mut |_, _| {}, &|_| {}).unwrap_err();
    assert!(error.to_string().contains("missing.pdf"), "{error}");

    // A single file: reported under its own name, same CID as its bytes.
    let file = tree.join("README.md");
    let mut names = Vec::new();
    let single = import_path(
        &file,
        false,
        &profile,
        &sink,
        &mut |path, _| names.push(path.to_owned()),
        &|_| {},
    )
    .unwrap();
    let direct =
        import_reader(&gen::generated_bytes(1234, 1)[..], &profile, &sink, &|_| {}).unwrap();
    assert_eq!(single, direct);
    assert_eq!(names, [PathBuf::from("README.md")]);
}

#[test]
fn symbolic_links_are_followed_and_loops_refused() {
    let root = tempfile::tempdir().unwrap();
    let folder = root.path().join("course");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(root.path().join("shared.txt"), b"shared handout").unwrap();
    std::os::unix::fs::symlink(root.path().join("shared.txt"), folder.join("handout.txt")).unwrap();
    let profile = Profile::default();
    let sink = MemoryBlocks::discarding();
    let linked = import_path(&folder, true, &profile, &sink, &mut |_, _| {}, &|_| {}).unwrap();
    std::fs::remove_file(folder.join("handout.txt")).unwrap();
    std::fs::write(folder.join("handout.txt"), b"shared handout").unwrap();
    let copied = import_path(&folder, true, &profile, &sink, &mut |_, _| {}, &|_| {}).unwrap();
    assert_eq!(
        linked, copied,
        "a linked file is added as its target's bytes"
    );

    std::os::unix::fs::symlink(&folder, folder.join("back up")).unwrap();
    let error = import_path(&folder, true, &profile, &sink, &mut |_, _| {}, &|_| {}).unwrap_err();
    assert!(matches!(error, ImportError::SymlinkLoop(_)), "{error}");
    assert!(error.to_string().contains("back up"), "{error}");
    assert!(matches!(
        total_bytes(&folder, true),
        Err(ImportError::SymlinkLoop(_))
    ));
    std::fs::remove_file(folder.join("back up")).unwrap();

    std::os::unix::fs::symlink(folder.join("b"), folder.join("a")).unwrap();
    std::os::unix::fs::symlink(folder.join("a"), folder.join("b")).unwrap();
    let error = import_path(&folder, true, &profile, &sink, &mut |_, _| {}, &|_| {}).unwrap_err();
    assert!(matches!(error, ImportError::SymlinkLoop(_)), "{error}");
}

#[test]
fn refuses_what_unixfs_cannot_hold() {
    use std::os::unix::ffi::OsStrExt;
    let profile = Profile::default();
    let sink = MemoryBlocks::discarding();

    let root = scratch_dir();
    let folder = root.path().join("latin1");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(
        folder.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")),
        b"coffee",
    )
    .unwrap();
    let error = import_path(&folder, true, &profile, &sink, &mut |_, _| {}, &|_| {}).unwrap_err();
    assert!(matches!(error, ImportError::NameNotUtf8(_)), "{error}");

    let pipes = root.path().join("pipes");
    std::fs::create_dir(&pipes).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(pipes.join("queue"))
        .status();
    if made.is_ok_and(|status| status.success()) {
        let error =
            import_path(&pipes, true, &profile, &sink, &mut |_, _| {}, &|_| {}).unwrap_err();
        assert!(matches!(error, ImportError::NotAFileOrFolder(_)), "{error}");
        assert!(error.to_string().contains("queue"), "{error}");
    }
}
