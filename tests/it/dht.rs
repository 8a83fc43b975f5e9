//! The Kademlia DHT between real daemons on loopback: what a node provides and when,
//! and how a node that finds another through the DHT names it.
//!
//! In each test the providing node A is a DHT client (as behind NAT): no routing table
//! holds it, so only its provider records, stored on its neighbour B, lead a third
//! node C to it.

use std::path::Path;
use std::time::Duration;

use cid::Cid;
use libp2p::kad::RecordKey;
use libp2p::PeerId;
use oermesh::daemon::net::wire::{collection_key, content_key};
use oermesh::daemon::net::Discovery;
use oermesh::daemon::Daemon;

use crate::fixture;
use crate::network::{
    dial_addr, on_node, prepare_collection, start_node, wait_until, wait_until_compatible,
};

/// Makes the repository at `root` (created if missing) a DHT client.
fn dht_client(root: &Path) {
    drop(fixture::node(root));
    let config = root.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("dht_mode = \"server\""), "{text}");
    std::fs::write(
        &config,
        text.replace("dht_mode = \"server\"", "dht_mode = \"client\""),
    )
    .unwrap();
}

/// The daemon's count of provides that ended with `outcome`.
fn provides(daemon: &Daemon, outcome: &str) -> u64 {
    let series = format!("oermesh_dht_provides_total{{outcome=\"{outcome}\"}} ");
    daemon
        .metrics()
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .map_or(0, |value| value.trim().parse().unwrap())
}

/// Waits until `seeker` finds `provider` in the DHT as a provider of `key`.
async fn wait_until_found(seeker: &Daemon, key: RecordKey, provider: PeerId, what: &str) {
    wait_until(what, || async {
        let found = seeker
            .client()
            .find_providers(key.clone(), 1)
            .await
            .unwrap_or_default();
        if found.contains(&provider) {
            return true;
        }
        // Each lookup is a walk of the DHT: give the network a moment between them.
        tokio::time::sleep(Duration::from_millis(100)).await;
        false
    })
    .await;
}

/// Whether `daemon` is connected to `peer` and names the DHT as how it found it.
async fn found_by_dht(daemon: &Daemon, peer: PeerId) -> bool {
    daemon
        .client()
        .peers()
        .await
        .unwrap()
        .iter()
        .any(|info| info.peer_id == peer && info.found_by.contains(&Discovery::Dht))
}

/// A small file added and pinned on the node at `root`; returns its CID.
fn add_file(root: &Path, name: &str) -> Cid {
    let node = fixture::node(root);
    let bytes = format!("the lesson called {name}");
    fixture::add_bytes(&node, root.parent().unwrap(), name, bytes.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_provided_with_no_dht_peer_provides_again_once_it_has_one() {
    let dir = tempfile::tempdir().unwrap();
    let a_root = dir.path().join("a");
    dht_client(&a_root);
    let file = add_file(&a_root, "lesson.txt");
    let a = start_node(&a_root, vec![]).await;
    // Alone, A provides its file to a DHT of no other node.
    wait_until("A provides its file with no DHT peer", || async {
        provides(&a, "no_peers") >= 1
    })
    .await;

    let b = start_node(&dir.path().join("b"), vec![dial_addr(&a)]).await;
    let c_root = dir.path().join("c");
    let c = start_node(&c_root, vec![dial_addr(&b)]).await;
    wait_until_compatible(&c, b.peer_id()).await;
    wait_until_found(
        &c,
        content_key(&file),
        a.peer_id(),
        "C finds A through the DHT as the provider of A's file",
    )
    .await;
    assert!(provides(&a, "reached") >= 1);

    // A and C know of each other only through the DHT: C from A's provider record, A
    // from B's answer to its provide walk. Whichever dialled the other names the DHT as
    // how it found it, in `oermesh peers` too.
    let (seeker, seeker_root, found) = if found_by_dht(&c, a.peer_id()).await {
        (&c, &c_root, a.peer_id())
    } else {
        assert!(
            found_by_dht(&a, c.peer_id()).await,
            "neither A nor C names the DHT as how it found the other"
        );
        (&a, &a_root, c.peer_id())
    };
    let repo = seeker_root.clone();
    let listed = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_oermesh"))
            .arg("--repo")
            .arg(&repo)
            .arg("peers")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let text = String::from_utf8(listed.stdout).unwrap();
    let line = text
        .lines()
        .find(|line| line.contains(&found.to_string()))
        .unwrap_or_else(|| {
            panic!(
                "`oermesh peers` of {} lists {found}:\n{text}",
                seeker.peer_id()
            )
        });
    let ways = line.split("found by ").nth(1).unwrap_or_default();
    assert!(ways.split(',').any(|way| way == "dht"), "{line}");

    for daemon in [c, b, a] {
        daemon.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_added_and_collections_published_while_the_daemon_runs_are_provided() {
    let dir = tempfile::tempdir().unwrap();
    let a_root = dir.path().join("a");
    dht_client(&a_root);
    let a = start_node(&a_root, vec![]).await;
    let b = start_node(&dir.path().join("b"), vec![dial_addr(&a)]).await;
    let c = start_node(&dir.path().join("c"), vec![dial_addr(&b)]).await;
    wait_until_compatible(&a, b.peer_id()).await;
    wait_until_compatible(&c, b.peer_id()).await;

    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let file = on_node(&a, move |node| {
        fixture::add_bytes(node, &scratch, "added.txt", b"added while the daemon runs")
    })
    .await;
    wait_until_found(
        &c,
        content_key(&file),
        a.peer_id(),
        "C finds A as the provider of a file added while A runs",
    )
    .await;

    let id = on_node(&a, |node| {
        let id = prepare_collection(node, "lessons", 1);
        node.collection_publish("lessons").unwrap();
        id
    })
    .await;
    wait_until_found(
        &c,
        collection_key(&id),
        a.peer_id(),
        "C finds A as the provider of a collection published while A runs",
    )
    .await;

    for daemon in [c, b, a] {
        daemon.shutdown().await.unwrap();
    }
}
