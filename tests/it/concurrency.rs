//! The store and the record layer under concurrent work: real sled stores in temp dirs,
//! real threads. Nothing here waits on time: work that could deadlock runs on its own
//! thread and is waited for with a generous deadline, so a deadlock fails the test.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Barrier};
use std::time::Duration;

use cid::Cid;
use ed25519_dalek::SigningKey;
use oermesh::block::{BlockError, BlockGet, BlockPut, HoldBlocks};
use oermesh::keys;
use oermesh::records::book::{HistoryEntry, RecordBook};
use oermesh::records::{Author, CollectionId, Educational, Entry, RecordDraft, TrustedPublishers};
use oermesh::repo::{Repo, RepoError};
use oermesh::store::{GcHold, GcPhase, GcReport, GcRoots, Store, StoreConfig, StoreError};
use oermesh::unixfs::importer;
use oermesh::unixfs::profile::Profile;
use oermesh::unixfs::reader;

use crate::gen::{generated_bytes, Generated};

const MIB: usize = 1 << 20;
/// How long work on another thread may take before it counts as stuck.
const DEADLINE: Duration = Duration::from_secs(600);

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, &StoreConfig::default()).expect("store opens")
}

/// Imports `data` as a file through a batch, commits and pins it, as `add` does.
fn add(store: &Store, data: &[u8]) -> Cid {
    let batch = store.batch();
    let root = importer::import_reader(data, &Profile::UNIXFS_V1_2025, &batch, &|_| {})
        .expect("import")
        .cid;
    batch.commit_and_pin(&[root], "user").expect("commit");
    root
}

fn read_back<B: BlockGet + Clone + Send + Sync + 'static>(store: &B, cid: &Cid) -> Vec<u8> {
    let mut out = Vec::new();
    reader::read_file(store, cid, &mut out).expect("file reads back");
    out
}

/// Runs `work` on its own thread and waits for it: a deadlock shows as a failure rather
/// than as a test that never ends.
fn on_another_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    result
        .recv_timeout(DEADLINE)
        .expect("the work finished (it panicked, or waited for gc)")
}

fn publisher() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn trusted(key: &SigningKey) -> TrustedPublishers {
    TrustedPublishers::new([keys::did_key(&key.verifying_key())]).expect("valid did")
}

fn record_draft(content: Cid, title: &str) -> RecordDraft {
    RecordDraft {
        content,
        title: title.to_string(),
        description: None,
        language: "en".into(),
        authors: vec![Author {
            name: "Ana Diaz".into(),
            url: None,
        }],
        licence: "CC-BY-4.0".into(),
        licence_url: None,
        source: None,
        based_on: Vec::new(),
        educational: Educational::default(),
        created: Some("2024-05-01T12:00:00Z".into()),
    }
}

/// The record layer's roots, as the node hands them to the store.
fn record_roots(store: &Store) -> Result<GcRoots, RepoError> {
    let book = RecordBook::open(store.db(), store.clone(), TrustedPublishers::default())?;
    let roots = book.gc_roots()?;
    Ok(GcRoots {
        keep: roots.keep,
        let_go: roots.retracted,
    })
}

/// gc over the pins and the record layer's roots, as `oermesh gc` runs it.
fn gc(store: &Store) -> GcReport {
    store
        .gc_with(|| record_roots(store), |_| {})
        .expect("gc runs")
}

fn assert_verify_clean(store: &Store) {
    let report = store
        .verify_with(|| record_roots(store))
        .expect("verify runs");
    assert!(report.damage.is_empty(), "{:?}", report.damage);
}

#[test]
fn a_write_batch_is_staged_on_one_thread_and_committed_on_another() {
    fn owned<T: Send + 'static>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let data = generated_bytes(3 * MIB + 5, 21);
    let batch = store.batch();
    owned(&batch);
    let staged = {
        let data = data.clone();
        std::thread::spawn(move || {
            let root =
                importer::import_reader(&data[..], &Profile::UNIXFS_V1_2025, &batch, &|_| {})
                    .expect("import")
                    .cid;
            (batch, root)
        })
        .join()
        .expect("staging thread")
    };
    let (batch, root) = staged;
    assert!(
        !store.has(&root).unwrap(),
        "nothing is visible before commit"
    );
    std::thread::spawn(move || batch.commit_and_pin(&[root], "user"))
        .join()
        .expect("committing thread")
        .unwrap();
    assert_eq!(read_back(&store, &root), data);
}

#[test]
fn gc_between_a_batch_commit_and_its_pin_keeps_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let garbage = {
        let batch = store.batch();
        let data = generated_bytes(2 * MIB, 22);
        let root = importer::import_reader(&data[..], &Profile::UNIXFS_V1_2025, &batch, &|_| {})
            .unwrap()
            .cid;
        batch.commit().unwrap();
        root
    };
    let data = generated_bytes(2 * MIB + 100, 23);
    let batch = store.batch();
    let root = importer::import_reader(&data[..], &Profile::UNIXFS_V1_2025, &batch, &|_| {})
        .unwrap()
        .cid;
    let hold = batch.commit_held().unwrap();

    // A whole gc runs between the commit and the pin, without waiting for the hold.
    let report = on_another_thread({
        let store = store.clone();
        move || store.gc(&[], &[]).unwrap()
    });
    assert!(
        !store.has(&garbage).unwrap(),
        "gc removed what nothing kept"
    );
    assert_eq!(report.blocks_removed, 3, "{report:?}");
    hold.pin(&root, "user").unwrap();
    drop(hold);

    store.gc(&[], &[]).unwrap();
    assert_eq!(read_back(&store, &root), data);
    assert!(store.verify(&[], &[]).unwrap().damage.is_empty());
}

/// A block store for a record book that runs a whole gc right after every block it is
/// handed: the moment between a record-layer block and the index entry naming it.
#[derive(Clone)]
struct GcAfterEachPut {
    store: Store,
    gc_runs: std::sync::Arc<AtomicUsize>,
}

struct HoldThenGc<'a> {
    hold: GcHold,
    outer: &'a GcAfterEachPut,
}

impl BlockGet for GcAfterEachPut {
    fn get_block(&self, cid: &Cid) -> Result<Vec<u8>, BlockError> {
        self.store.get_block(cid)
    }
}

impl HoldBlocks for GcAfterEachPut {
    type Hold<'a> = HoldThenGc<'a>;

    fn hold(&self) -> HoldThenGc<'_> {
        HoldThenGc {
            hold: self.store.hold(),
            outer: self,
        }
    }
}

impl HoldThenGc<'_> {
    fn gc(&self) -> Result<(), BlockError> {
        let store = &self.outer.store;
        store
            .gc_with(
                || {
                    record_roots(store)
                        .map_err(|err| StoreError::Block(BlockError::Backend(err.to_string())))
                },
                |_| {},
            )
            .map_err(BlockError::from)?;
        self.outer.gc_runs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl BlockGet for HoldThenGc<'_> {
    fn get_block(&self, cid: &Cid) -> Result<Vec<u8>, BlockError> {
        self.hold.get_block(cid)
    }
}

impl BlockPut for HoldThenGc<'_> {
    fn put_block(&self, cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
        self.hold.put_block(cid, data)?;
        self.gc()
    }

    fn put_hashed_block(&self, cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
        self.hold.put_hashed_block(cid, data)?;
        self.gc()
    }
}

#[test]
fn record_layer_blocks_are_kept_between_their_write_and_their_index() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::init(&dir.path().join("repo")).unwrap();
    let store = repo.store().clone();
    let key = publisher();
    let content = add(&store, b"a lesson on fractions");
    let blocks = GcAfterEachPut {
        store: store.clone(),
        gc_runs: Default::default(),
    };
    let book = RecordBook::open(store.db(), blocks.clone(), trusted(&key)).unwrap();

    let id = book
        .create_collection("lessons", "teacher", &key.verifying_key())
        .unwrap();
    let record = book
        .sign_record(&key, record_draft(content, "Fractions"))
        .unwrap()
        .cid;
    book.add_entries("lessons", vec![Entry::new(record)])
        .unwrap();
    let published = book.publish("lessons", &key).unwrap();
    let retraction = book.retract(&key, &record, "superseded").unwrap();
    assert!(blocks.gc_runs.load(Ordering::Relaxed) >= 5);

    assert_verify_clean(repo.store());
    let book = repo.records().unwrap();
    assert_eq!(book.show_record(&record).unwrap().record.title, "Fractions");
    assert_eq!(book.newest_head(&id).unwrap(), Some((1, published.head)));
    assert_eq!(book.retraction_of(&record).unwrap(), Some(retraction));
    assert_eq!(book.draft_entries("lessons").unwrap().len(), 1);
}

#[test]
fn reads_and_writes_go_on_while_gc_runs_and_what_they_write_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::init(&dir.path().join("repo")).unwrap();
    let store = repo.store().clone();
    let key = publisher();
    let pinned_data = generated_bytes(3 * MIB, 31);
    let pinned = add(&store, &pinned_data);
    let garbage = {
        let batch = store.batch();
        let data = generated_bytes(MIB + 1, 32);
        let root = importer::import_reader(&data[..], &Profile::UNIXFS_V1_2025, &batch, &|_| {})
            .unwrap()
            .cid;
        batch.commit().unwrap();
        root
    };
    let added_data = generated_bytes(2 * MIB + 7, 33);
    let held_data = generated_bytes(5000, 34);

    let mut during = None;
    let report = store
        .gc_with(
            || record_roots(&store),
            |phase| {
                if !matches!(phase, GcPhase::Marked { .. }) || during.is_some() {
                    return;
                }
                // gc has read its roots and marked; nothing it removes may be what these
                // write, and none of them may wait for it.
                let store = store.clone();
                let key = key.clone();
                let added_data = added_data.clone();
                let held_data = held_data.clone();
                during = Some(on_another_thread(move || {
                    let read = read_back(&store, &pinned);
                    let added = add(&store, &added_data);
                    let batch = store.batch();
                    let held = importer::import_reader(
                        &held_data[..],
                        &Profile::UNIXFS_V1_2025,
                        &batch,
                        &|_| {},
                    )
                    .unwrap()
                    .cid;
                    let hold: GcHold = batch.commit_held().unwrap();
                    let book = RecordBook::open(store.db(), store.clone(), trusted(&key)).unwrap();
                    let record = book
                        .sign_record(&key, record_draft(added, "Added while gc ran"))
                        .unwrap()
                        .cid;
                    (read, added, held, hold, record)
                }));
            },
        )
        .unwrap();
    let (read, added, held, hold, record) = during.expect("gc marked");
    assert_eq!(read, pinned_data);
    assert!(report.blocks_removed >= 2, "{report:?}");
    assert!(!store.has(&garbage).unwrap());

    // The held DAG is pinned only now, after the gc that began before it was written.
    hold.pin(&held, "user").unwrap();
    drop(hold);
    gc(&store);
    assert_eq!(read_back(&store, &added), added_data);
    assert_eq!(read_back(&store, &held), held_data);
    assert_eq!(read_back(&store, &pinned), pinned_data);
    let book = repo.records().unwrap();
    assert_eq!(
        book.show_record(&record).unwrap().record.title,
        "Added while gc ran"
    );
    assert_verify_clean(repo.store());
}

#[test]
fn a_record_named_after_gc_read_its_roots_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::init(&dir.path().join("repo")).unwrap();
    let store = repo.store().clone();
    let key = publisher();
    let content = add(&store, b"a lesson on decimals");
    let mut record = None;
    store
        .gc_with(
            || {
                let roots = record_roots(&store)?;
                // Signed and indexed after the roots were read, before anything is marked.
                let book = RecordBook::open(store.db(), store.clone(), trusted(&key))?;
                record = Some(
                    book.sign_record(&key, record_draft(content, "Decimals"))?
                        .cid,
                );
                Ok::<_, RepoError>(roots)
            },
            |_| {},
        )
        .unwrap();
    let record = record.expect("roots were read");
    assert_eq!(
        repo.records()
            .unwrap()
            .show_record(&record)
            .unwrap()
            .record
            .title,
        "Decimals"
    );
    assert_verify_clean(repo.store());
}

/// Checks streamed bytes against a generated stream as they arrive.
struct SameAs {
    expected: Generated,
    offset: u64,
    buffer: Vec<u8>,
}

impl Write for SameAs {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.resize(data.len(), 0);
        self.expected.read_exact(&mut self.buffer)?;
        if self.buffer != data {
            return Err(io::Error::other(format!(
                "bytes differ within {} bytes from offset {}",
                data.len(),
                self.offset
            )));
        }
        self.offset += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_reader_streaming_100_mib_while_gc_runs_gets_every_byte() {
    const SIZE: usize = 100 * MIB;
    const SEED: u32 = 41;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let batch = store.batch();
    let root = importer::import_reader(
        Generated::new(SIZE as u64, SEED),
        &Profile::UNIXFS_V1_2025,
        &batch,
        &|_| {},
    )
    .unwrap()
    .cid;
    batch.commit_and_pin(&[root], "user").unwrap();

    let reading = AtomicBool::new(true);
    let gc_runs = AtomicUsize::new(0);
    let read = std::thread::scope(|scope| {
        // gc runs over and over while the file is read, with garbage to remove each time.
        scope.spawn(|| {
            let mut seed = 100;
            while reading.load(Ordering::Acquire) || gc_runs.load(Ordering::Relaxed) == 0 {
                let batch = store.batch();
                let data = generated_bytes(MIB + 3, seed);
                seed += 1;
                importer::import_reader(&data[..], &Profile::UNIXFS_V1_2025, &batch, &|_| {})
                    .unwrap();
                batch.commit().unwrap();
                let report = store.gc(&[], &[]).unwrap();
                assert!(report.blocks_removed >= 2, "{report:?}");
                gc_runs.fetch_add(1, Ordering::Relaxed);
            }
        });
        let mut check = SameAs {
            expected: Generated::new(SIZE as u64, SEED),
            offset: 0,
            buffer: Vec::new(),
        };
        let read = reader::read_file(&store, &root, &mut check);
        reading.store(false, Ordering::Release);
        read.map(|written| (written, check.offset))
    });
    assert_eq!(read.unwrap(), (SIZE as u64, SIZE as u64));
    assert!(gc_runs.load(Ordering::Relaxed) >= 1);
}

#[test]
fn concurrent_publishes_of_one_collection_each_get_their_own_version() {
    const PUBLISHES: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::init(&dir.path().join("repo")).unwrap();
    let key = publisher();
    let book = repo.records().unwrap();
    let id = book
        .create_collection("shared", "teacher", &key.verifying_key())
        .unwrap();
    let start = Barrier::new(PUBLISHES);
    let seqs: Vec<u64> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..PUBLISHES)
            .map(|_| {
                scope.spawn(|| {
                    // A book per publish, as a request would open it.
                    let book = repo.records().unwrap();
                    start.wait();
                    book.publish("shared", &key).unwrap().seq
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let distinct: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(distinct, (1..=PUBLISHES as u64).collect(), "{seqs:?}");
    assert_history_is_one_chain(&repo.records().unwrap(), &id, PUBLISHES as u64);
}

#[test]
fn concurrent_entry_edits_of_one_draft_lose_no_entry() {
    const EDITORS: usize = 8;
    const ROUNDS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::init(&dir.path().join("repo")).unwrap();
    let store = repo.store();
    let key = publisher();
    let book = repo.records().unwrap();
    book.create_collection("shared", "teacher", &key.verifying_key())
        .unwrap();
    let records: Vec<Cid> = (0..EDITORS * ROUNDS)
        .map(|i| {
            let content = add(store, format!("lesson {i}").as_bytes());
            book.sign_record(&key, record_draft(content, &format!("Lesson {i}")))
                .unwrap()
                .cid
        })
        .collect();
    for round in records.chunks(EDITORS) {
        let start = Barrier::new(EDITORS);
        std::thread::scope(|scope| {
            for record in round {
                let (start, repo) = (&start, &repo);
                scope.spawn(move || {
                    // A book per edit, as a request would open it.
                    let book = repo.records().unwrap();
                    start.wait();
                    book.add_entries("shared", vec![Entry::new(*record)])
                        .unwrap();
                });
            }
        });
    }
    let entries: BTreeSet<Cid> = book
        .draft_entries("shared")
        .unwrap()
        .into_iter()
        .map(|entry| entry.record)
        .collect();
    assert_eq!(entries, records.iter().copied().collect());
}

/// Every version from `newest` down to 1 is there once, each linking to the one before.
fn assert_history_is_one_chain(book: &RecordBook<Store>, id: &CollectionId, newest: u64) {
    let seqs: Vec<u64> = book
        .history(id)
        .unwrap()
        .into_iter()
        .map(|entry| match entry {
            HistoryEntry::Version { seq, .. } => seq,
            other => panic!("history broken: {other:?}"),
        })
        .collect();
    assert_eq!(seqs, (1..=newest).rev().collect::<Vec<_>>());
}

#[test]
fn gc_in_a_loop_beside_24_adds_and_8_publishes_loses_nothing() {
    const PUBLISHES: usize = 8;
    let sizes = [
        0,
        1,
        100,
        4095,
        4096,
        4097,
        65_536,
        262_144,
        MIB - 1,
        MIB,
        MIB + 1,
        3 * MIB + 17,
    ];
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::init(&dir.path().join("repo")).unwrap();
    let store = repo.store();
    let key = publisher();
    let id = repo
        .records()
        .unwrap()
        .create_collection("shared", "teacher", &key.verifying_key())
        .unwrap();

    let working = AtomicUsize::new(24 + PUBLISHES);
    let gc_runs = AtomicUsize::new(0);
    let (added, published) = std::thread::scope(|scope| {
        scope.spawn(|| {
            while working.load(Ordering::Acquire) > 0 || gc_runs.load(Ordering::Relaxed) == 0 {
                gc(store);
                gc_runs.fetch_add(1, Ordering::Relaxed);
            }
        });
        let adds: Vec<_> = (0..24)
            .map(|i| {
                let working = &working;
                scope.spawn(move || {
                    let (size, seed) = (sizes[i % sizes.len()], 200 + i as u32);
                    let cid = add(store, &generated_bytes(size, seed));
                    working.fetch_sub(1, Ordering::Release);
                    (cid, size, seed)
                })
            })
            .collect();
        let publishes: Vec<_> = (0..PUBLISHES)
            .map(|i| {
                let (repo, key, working) = (&repo, &key, &working);
                scope.spawn(move || {
                    let content = add(repo.store(), format!("published lesson {i}").as_bytes());
                    let book = repo.records().unwrap();
                    let record = book
                        .sign_record(key, record_draft(content, &format!("Lesson {i}")))
                        .unwrap()
                        .cid;
                    book.add_entries("shared", vec![Entry::new(record)])
                        .unwrap();
                    let published = book.publish("shared", key).unwrap();
                    working.fetch_sub(1, Ordering::Release);
                    published
                })
            })
            .collect();
        let added: Vec<_> = adds.into_iter().map(|w| w.join().unwrap()).collect();
        let published: Vec<_> = publishes.into_iter().map(|w| w.join().unwrap()).collect();
        (added, published)
    });

    for (cid, size, seed) in added {
        assert_eq!(read_back(store, &cid), generated_bytes(size, seed), "{cid}");
    }
    let seqs: BTreeSet<u64> = published.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, (1..=PUBLISHES as u64).collect());
    let book = repo.records().unwrap();
    assert_history_is_one_chain(&book, &id, PUBLISHES as u64);
    assert_eq!(
        book.collection_show(&id).unwrap().entries.len(),
        PUBLISHES,
        "every entry reached the newest version"
    );
    assert_verify_clean(repo.store());
}

/// Blocks in memory that note which threads fetch them.
#[derive(Clone)]
struct Watched {
    blocks: oermesh::block::MemoryBlocks,
    fetchers: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<std::thread::ThreadId>>>,
}

impl BlockGet for Watched {
    fn get_block(&self, cid: &Cid) -> Result<Vec<u8>, BlockError> {
        self.fetchers
            .lock()
            .unwrap()
            .insert(std::thread::current().id());
        self.blocks.get_block(cid)
    }
}

#[test]
fn reads_fetch_ahead_on_one_shared_pool_of_threads() {
    const READS: usize = 20;
    let watched = Watched {
        blocks: oermesh::block::MemoryBlocks::new(),
        fetchers: Default::default(),
    };
    let data = generated_bytes(2 * MIB + 3, 51);
    let profile = Profile::UNIXFS_V1_2025.with_chunker("size-65536").unwrap();
    let root = importer::import_reader(&data[..], &profile, &watched.blocks, &|_| {})
        .unwrap()
        .cid;
    for _ in 0..READS {
        assert_eq!(read_back(&watched, &root), data);
    }
    // The calling thread, and the pool's threads (at most 8): never threads of a read's own.
    let fetchers = watched.fetchers.lock().unwrap().len();
    assert!(
        (2..=9).contains(&fetchers),
        "{fetchers} threads fetched blocks over {READS} reads"
    );
}
