//! The block store over a real sled database and block directory in a temp dir.

use oermesh::block::{cid_v1, codec, BlockError, BlockGet, BlockPut};
use oermesh::repo::{Repo, RepoError};
use oermesh::store::{Damage, Store, StoreConfig, INLINE_LIMIT};
use oermesh::unixfs::pb::{PbLink, PbNode};

use crate::gen::generated_bytes;

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, &StoreConfig::default()).unwrap()
}

/// A dag-pb node linking to `children`, so gc and verify have a DAG to follow.
fn parent_of(children: &[cid::Cid]) -> (cid::Cid, Vec<u8>) {
    let node = PbNode {
        links: children
            .iter()
            .map(|cid| PbLink {
                cid: *cid,
                name: Some(String::new()),
                tsize: Some(1),
            })
            .collect(),
        data: Some(vec![0x08, 0x02]),
    };
    let bytes = node.encode();
    (cid_v1(codec::DAG_PB, &bytes), bytes)
}

fn block_file_of(dir: &std::path::Path, cid: &cid::Cid) -> std::path::PathBuf {
    let name = cid::multibase::encode(cid::multibase::Base::Base32Lower, cid.hash().to_bytes())
        [1..]
        .to_string();
    dir.join("blocks")
        .join(&name[name.len() - 3..name.len() - 1])
        .join(name)
}

#[test]
fn blocks_round_trip_inline_and_as_files_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let small = generated_bytes(INLINE_LIMIT, 1);
    let large = generated_bytes(INLINE_LIMIT + 1, 2);
    let (small_cid, large_cid) = (cid_v1(codec::RAW, &small), cid_v1(codec::RAW, &large));
    {
        let store = open(dir.path());
        let batch = store.batch();
        batch.put_block(&small_cid, &small).unwrap();
        batch.put_block(&large_cid, &large).unwrap();
        batch.commit().unwrap();
        assert!(
            !block_file_of(dir.path(), &small_cid).exists(),
            "small blocks live in sled"
        );
        assert!(
            block_file_of(dir.path(), &large_cid).exists(),
            "large blocks get a file"
        );
    }
    let store = open(dir.path());
    assert_eq!(store.get_block(&small_cid).unwrap(), small);
    assert_eq!(store.get_block(&large_cid).unwrap(), large);
    assert_eq!(
        store.block_size(&large_cid).unwrap(),
        Some(large.len() as u64)
    );
    let stat = store.stat().unwrap();
    assert_eq!(
        (stat.blocks, stat.bytes, stat.inline_blocks),
        (2, (small.len() + large.len()) as u64, 1)
    );
}

#[test]
fn a_block_that_does_not_match_its_cid_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let claimed = cid_v1(codec::RAW, b"the real bytes");
    let batch = store.batch();
    assert!(matches!(
        batch.put_block(&claimed, b"other bytes"),
        Err(BlockError::Corrupt(_))
    ));
    batch.commit().unwrap();
    assert!(!store.has(&claimed).unwrap());
    assert_eq!(store.stat().unwrap().blocks, 0);
}

#[test]
fn uncommitted_blocks_are_invisible() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let data = generated_bytes(100_000, 3);
    let cid = cid_v1(codec::RAW, &data);
    let batch = store.batch();
    batch.put_block(&cid, &data).unwrap();
    assert!(!store.has(&cid).unwrap());
    drop(batch);
    assert!(matches!(
        store.get_block(&cid),
        Err(BlockError::NotFound(_))
    ));
    // The orphaned file is removed by gc.
    let report = store.gc(&[], &[]).unwrap();
    assert_eq!(report.orphan_files_removed, 1);
}

#[test]
fn corrupt_and_missing_block_data_is_caught_on_read_and_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let flipped = generated_bytes(300_000, 4);
    let vanished = generated_bytes(300_000, 5);
    let (flipped_cid, vanished_cid) = (cid_v1(codec::RAW, &flipped), cid_v1(codec::RAW, &vanished));
    let batch = store.batch();
    batch.put_block(&flipped_cid, &flipped).unwrap();
    batch.put_block(&vanished_cid, &vanished).unwrap();
    batch.commit().unwrap();
    assert!(store.verify(&[], &[]).unwrap().damage.is_empty());

    let path = block_file_of(dir.path(), &flipped_cid);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[123_456] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    std::fs::remove_file(block_file_of(dir.path(), &vanished_cid)).unwrap();

    assert!(matches!(
        store.get_block(&flipped_cid),
        Err(BlockError::Corrupt(_))
    ));
    assert!(store.get_block(&vanished_cid).is_err());
    let report = store.verify(&[], &[]).unwrap();
    assert_eq!(report.blocks_checked, 2);
    assert!(
        report
            .damage
            .contains(&Damage::Corrupt(flipped_cid.to_string())),
        "{:?}",
        report.damage
    );
    assert!(
        report
            .damage
            .contains(&Damage::MissingData(vanished_cid.to_string())),
        "{:?}",
        report.damage
    );
}

#[test]
fn verify_names_blocks_missing_from_a_pinned_dag() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let absent = cid_v1(codec::RAW, b"never stored");
    let (root, bytes) = parent_of(&[absent]);
    let batch = store.batch();
    batch.put_block(&root, &bytes).unwrap();
    batch.commit_and_pin(&[root], "user").unwrap();
    let report = store.verify(&[], &[]).unwrap();
    assert_eq!(report.damage, vec![Damage::MissingBlock(absent)]);
    // gc refuses to work around a hole rather than guess.
    assert!(store.gc(&[], &[]).is_err());
}

#[test]
fn gc_keeps_pinned_dags_and_frees_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let kept_leaf = generated_bytes(200_000, 6);
    let lost_leaf = generated_bytes(200_000, 7);
    let lost_small = generated_bytes(100, 8);
    let (kept_cid, lost_cid, small_cid) = (
        cid_v1(codec::RAW, &kept_leaf),
        cid_v1(codec::RAW, &lost_leaf),
        cid_v1(codec::RAW, &lost_small),
    );
    let (root, root_bytes) = parent_of(&[kept_cid]);
    let batch = store.batch();
    for (cid, data) in [
        (&kept_cid, &kept_leaf),
        (&lost_cid, &lost_leaf),
        (&small_cid, &lost_small),
        (&root, &root_bytes),
    ] {
        batch.put_block(cid, data).unwrap();
    }
    batch.commit_and_pin(&[root], "user").unwrap();

    let report = store.gc(&[], &[]).unwrap();
    assert_eq!(report.blocks_removed, 2);
    assert_eq!(
        report.bytes_freed,
        (lost_leaf.len() + lost_small.len()) as u64
    );
    assert!(store.has(&root).unwrap() && store.has(&kept_cid).unwrap());
    assert!(!store.has(&lost_cid).unwrap() && !store.has(&small_cid).unwrap());
    assert!(!block_file_of(dir.path(), &lost_cid).exists());

    assert_eq!(
        store.unpin(&root, Some("user")).unwrap(),
        Vec::<String>::new()
    );
    store.gc(&[], &[]).unwrap();
    assert_eq!(store.stat().unwrap().blocks, 0);
}

#[test]
fn pins_hold_while_any_reason_remains() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let cid = cid_v1(codec::RAW, b"x");
    let batch = store.batch();
    batch.put_block(&cid, b"x").unwrap();
    batch.commit().unwrap();
    store.pin(&cid, "user").unwrap();
    store.pin(&cid, "collection:abc").unwrap();
    assert_eq!(
        store.unpin(&cid, Some("user")).unwrap(),
        vec!["collection:abc".to_string()]
    );
    assert_eq!(
        store.pins().unwrap(),
        vec![(cid, vec!["collection:abc".to_string()])]
    );
}

#[test]
fn a_repository_is_opened_by_one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    assert!(matches!(Repo::open(&root), Err(RepoError::Missing(_))));
    let first = Repo::init(&root).unwrap();
    let message = match Repo::open(&root) {
        Err(err @ RepoError::Locked { .. }) => err.to_string(),
        Err(other) => panic!("expected a lock error, got {other}"),
        Ok(_) => panic!("second open must fail"),
    };
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    drop(first);
    Repo::open(&root).unwrap();
    assert!(matches!(Repo::init(&root), Err(RepoError::Exists(_))));
}

/// Opens a sled database whose last handle was just dropped: sled's threads, or a child
/// process another test is starting, may hold its lock a moment longer.
fn open_sled_when_released(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match sled::open(path) {
            Err(sled::Error::Io(err))
                if err.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened.unwrap(),
        }
    }
}

#[test]
fn an_index_entry_claiming_a_huge_block_is_damage_not_an_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let data = generated_bytes(100_000, 9);
    let cid = cid_v1(codec::RAW, &data);
    {
        let store = open(dir.path());
        let batch = store.batch();
        batch.put_block(&cid, &data).unwrap();
        batch.commit_and_pin(&[cid], "user").unwrap();
    }
    {
        // The entry of a block file: tag 1, then the size; here one far above any block.
        let db = open_sled_when_released(&dir.path().join("db"));
        let mut entry = vec![1u8];
        entry.extend_from_slice(&(64u64 << 30).to_le_bytes());
        db.open_tree("blocks")
            .unwrap()
            .insert(cid.hash().to_bytes(), entry)
            .unwrap();
        db.flush().unwrap();
    }
    let store = open(dir.path());
    let err = store.get_block(&cid).unwrap_err();
    assert!(err.to_string().contains("damaged index entry"), "{err}");
    let report = store.verify(&[], &[]).unwrap();
    assert_eq!(report.damage, vec![Damage::DamagedEntry(cid.to_string())]);
}

#[test]
#[ignore = "prints performance figures; run: cargo test --release --test it store_stat_performance -- --ignored --nocapture"]
fn store_stat_performance_figures() {
    use std::time::Instant;
    const BLOCKS: u32 = 100_000;
    // One block in five a file (8 KiB), the rest inline (200 bytes), as a store of
    // lessons, small folders and records looks.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = open(dir.path());
    let started = Instant::now();
    for first in (0..BLOCKS).step_by(10_000) {
        let batch = store.batch();
        for i in first..first + 10_000 {
            let size = if i % 5 == 0 { 8192 } else { 200 };
            let mut data = vec![0u8; size];
            data[..4].copy_from_slice(&i.to_le_bytes());
            batch.put_block(&cid_v1(codec::RAW, &data), &data).unwrap();
        }
        batch.commit().unwrap();
    }
    println!("stored {BLOCKS} blocks in {:?}", started.elapsed());

    let mut times = Vec::new();
    let mut stat = store.stat().unwrap();
    for _ in 0..21 {
        let started = Instant::now();
        stat = store.stat().unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "stat with {} blocks: median {:?}, slowest {:?} (target: well under 50 ms)",
        stat.blocks, times[10], times[20]
    );
    assert_eq!(stat.blocks, u64::from(BLOCKS));

    store.flush().unwrap();
    let started = Instant::now();
    let du = std::process::Command::new("du")
        .args(["-s", "--block-size=1"])
        .arg(dir.path())
        .output()
        .unwrap();
    let du_elapsed = started.elapsed();
    let du_bytes: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    println!(
        "du -s of the repository (baseline): {du_elapsed:?}; it counts {du_bytes} bytes, stat says {} ({:+.2}%)",
        stat.disk_bytes,
        (stat.disk_bytes as f64 / du_bytes as f64 - 1.0) * 100.0
    );
}
