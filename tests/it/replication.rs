//! Replication: nodes that follow a collection with its content keep every resource,
//! byte for byte, and serve it on when the publisher is gone. Real daemons on
//! loopback (mDNS off, static peers), real stores in temp dirs; waits poll with
//! generous deadlines.

use std::path::Path;

use cid::Cid;
use oermesh::daemon::Daemon;
use oermesh::node::{FollowStatusView, Node};
use oermesh::records::{Author, CollectionId, Educational, RecordDraft};

use crate::exchange::{add, scratch_dir, write_generated};
use crate::network::{
    dial_addr, on_node, start_node, wait_until, wait_until_compatible, wait_until_in_topic,
};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Twenty resources of mixed sizes, about 30 MiB: single blocks, files of a few
/// chunks, and files of several levels.
const SIZES: [u64; 20] = [
    100,
    KIB,
    4 * KIB,
    17_000,
    64 * KIB,
    200_000,
    256 * KIB,
    500_000,
    800_000,
    MIB,
    MIB + 1,
    1_500_000,
    2 * MIB,
    2_500_000,
    3 * MIB,
    3 * MIB + 7,
    4 * MIB,
    4 * MIB + 100,
    5 * MIB,
    13,
];

/// A resource as its publisher added it.
pub struct Resource {
    pub record: Cid,
    pub content: Cid,
    pub file: std::path::PathBuf,
}

/// Adds a generated file to `daemon`'s node and signs a record for it.
pub async fn add_resource(daemon: &Daemon, dir: &Path, size: u64, seed: u32) -> Resource {
    let file = dir.join(format!("resource-{seed}.bin"));
    write_generated(&file, size, seed);
    let content = add(daemon, &file, false).await;
    let record = on_node(daemon, move |node| {
        let key = oermesh::keys::load(&node.root().join("keys"), "ministry").unwrap();
        let draft = RecordDraft {
            content,
            title: format!("lesson {seed}"),
            description: None,
            language: "en".into(),
            authors: vec![Author {
                name: "A. Teacher".into(),
                url: None,
            }],
            licence: "CC-BY-SA-3.0-IGO".into(),
            licence_url: None,
            source: None,
            based_on: vec![],
            educational: Educational::default(),
            created: None,
        };
        node.records().sign_record(&key, draft).unwrap().cid
    })
    .await;
    Resource {
        record,
        content,
        file,
    }
}

/// Starts a publisher whose key `ministry` owns the (empty) collection `lessons`.
pub async fn start_publisher(root: &Path) -> (Daemon, CollectionId) {
    let daemon = start_node(root, vec![]).await;
    let id = on_node(&daemon, |node| {
        node.key_gen("ministry").unwrap();
        node.collection_create("lessons", Some("ministry"))
            .unwrap()
            .id
    })
    .await
    .parse()
    .unwrap();
    (daemon, id)
}

pub async fn add_to_collection(daemon: &Daemon, resources: &[&Resource]) {
    let records: Vec<String> = resources.iter().map(|r| r.record.to_string()).collect();
    on_node(daemon, move |node| {
        node.collection_add("lessons", &records, None, None)
            .unwrap();
    })
    .await;
}

pub async fn publish(daemon: &Daemon) -> u64 {
    on_node(daemon, |node| {
        node.collection_publish("lessons").unwrap().seq
    })
    .await
}

/// Trusts the publisher and follows the collection with its content.
async fn follow(daemon: &Daemon, id: &CollectionId) {
    let id = id.to_string();
    on_node(daemon, move |node| {
        node.trust_add(&id).unwrap();
        let view = node.follow(&id, false).unwrap();
        assert!(view.content && view.running && view.changed, "{view:?}");
    })
    .await;
}

async fn status(daemon: &Daemon, id: &CollectionId) -> FollowStatusView {
    let id = id.to_string();
    on_node(daemon, move |node| node.follow_status(&id).unwrap()).await
}

/// Waits until `daemon` holds version `seq` of `id` with all of its `resources`.
async fn wait_complete(daemon: &Daemon, id: &CollectionId, seq: u64, resources: u64) {
    wait_until(
        &format!("{} holds version {seq} of {id} whole", daemon.peer_id()),
        || async {
            let view = status(daemon, id).await;
            view.seq == Some(seq)
                && view.state == "complete"
                && view
                    .content
                    .as_ref()
                    .is_some_and(|c| c.complete == resources && c.resources == resources)
        },
    )
    .await;
}

/// Every resource reads back byte-identical from `daemon`'s store, and `verify` finds
/// nothing wrong.
pub async fn assert_identical(daemon: &Daemon, resources: &[&Resource]) {
    let node = daemon.node().clone();
    let expected: Vec<(Cid, std::path::PathBuf)> = resources
        .iter()
        .map(|r| (r.content, r.file.clone()))
        .collect();
    tokio::task::spawn_blocking(move || {
        for (content, file) in expected {
            let mut read = Vec::new();
            oermesh::unixfs::reader::read_file(node.store(), &content, &mut read).unwrap();
            assert!(
                read == std::fs::read(&file).unwrap(),
                "{content} differs from {}",
                file.display()
            );
        }
        let verified = node.verify().unwrap();
        assert!(verified.damage.is_empty(), "{:?}", verified.damage);
    })
    .await
    .unwrap();
}

fn collection_pins(node: &Node, id: &CollectionId) -> Vec<Cid> {
    let reason = oermesh::node::follow::pin_reason(id);
    node.store()
        .pins()
        .unwrap()
        .into_iter()
        .filter(|(_, reasons)| reasons.contains(&reason))
        .map(|(cid, _)| cid)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_keep_a_collection_whole_without_its_publisher_and_follow_its_changes() {
    let dir = tempfile::tempdir().unwrap();
    let files = scratch_dir();

    // P publishes twenty resources; M1 and M2 follow them.
    let p_root = dir.path().join("p");
    let (p, id) = start_publisher(&p_root).await;
    let mut resources = Vec::new();
    for (seed, size) in SIZES.iter().enumerate() {
        resources.push(add_resource(&p, files.path(), *size, seed as u32).await);
    }
    add_to_collection(&p, &resources.iter().collect::<Vec<_>>()).await;
    assert_eq!(publish(&p).await, 1);

    let m1 = start_node(&dir.path().join("m1"), vec![dial_addr(&p)]).await;
    let m2 = start_node(&dir.path().join("m2"), vec![dial_addr(&p), dial_addr(&m1)]).await;
    for mirror in [&m1, &m2] {
        wait_until_compatible(mirror, p.peer_id()).await;
        follow(mirror, &id).await;
    }
    let all: Vec<&Resource> = resources.iter().collect();
    for mirror in [&m1, &m2] {
        wait_complete(mirror, &id, 1, 20).await;
        assert_identical(mirror, &all).await;
    }

    // P goes away; S, which knows only M1, gets everything from the mirrors.
    p.shutdown().await.unwrap();
    let s = start_node(&dir.path().join("s"), vec![dial_addr(&m1)]).await;
    wait_until_compatible(&s, m1.peer_id()).await;
    follow(&s, &id).await;
    wait_complete(&s, &id, 1, 20).await;
    assert_identical(&s, &all).await;
    let listed = on_node(&s, |node| node.follow_list().unwrap()).await;
    let content = listed[0].content.clone().unwrap();
    assert_eq!(listed[0].mode, "content");
    assert_eq!((content.complete, content.resources), (20, 20));
    assert_eq!(content.sizes_unknown, 0);
    assert_eq!(content.bytes_held, content.bytes_total);
    assert!(
        content.bytes_total >= SIZES.iter().sum::<u64>(),
        "{content:?}"
    );

    // P comes back and publishes a version that adds a resource and retracts one.
    let p = start_node(&p_root, vec![dial_addr(&m1), dial_addr(&m2)]).await;
    for mirror in [&m1, &m2] {
        wait_until_in_topic(&p, mirror.peer_id(), &id).await;
    }
    let added = add_resource(&p, files.path(), 2 * MIB + 3, 100).await;
    add_to_collection(&p, &[&added]).await;
    let withdrawn = resources.remove(12);
    on_node(&p, move |node| {
        node.record_retract(&withdrawn.record, "the rights holder asked", None)
            .unwrap()
    })
    .await;
    assert_eq!(publish(&p).await, 2);
    resources.push(added);
    let now: Vec<&Resource> = resources.iter().collect();
    for node in [&m1, &m2, &s] {
        wait_complete(node, &id, 2, 20).await;
        assert_identical(node, &now).await;
        let view = status(node, &id).await;
        let retracted: Vec<_> = view
            .resources
            .iter()
            .filter(|r| r.state == "retracted")
            .collect();
        assert_eq!(retracted.len(), 1, "{view:?}");
        let withdrawn_content = retracted[0].content;
        let pins = on_node(node, {
            let id = id.clone();
            move |node| collection_pins(node, &id)
        })
        .await;
        assert_eq!(pins.len(), 20);
        assert!(!pins.contains(&withdrawn_content), "still pinned");
        // gc lets the withdrawn resource go; everything else stays.
        let gone = on_node(node, move |node| {
            node.gc().unwrap();
            !node.store().has(&withdrawn_content).unwrap()
        })
        .await;
        assert!(gone, "the retracted resource outlived gc");
        assert_identical(node, &now).await;
    }

    // T follows through M1 and M2; M1 dies while T fetches, and T completes from M2.
    p.shutdown().await.unwrap();
    let t = start_node(&dir.path().join("t"), vec![dial_addr(&m1), dial_addr(&m2)]).await;
    wait_until_compatible(&t, m1.peer_id()).await;
    wait_until_compatible(&t, m2.peer_id()).await;
    follow(&t, &id).await;
    wait_until("T has a first resource", || async {
        let id = id.clone();
        on_node(&t, move |node| !collection_pins(node, &id).is_empty()).await
    })
    .await;
    let at_kill = status(&t, &id).await.content.unwrap();
    drop(m1);
    eprintln!("M1 stopped while T held {at_kill:?}");
    wait_complete(&t, &id, 2, 20).await;
    assert_identical(&t, &now).await;

    for node in [t, s, m2] {
        node.shutdown().await.unwrap();
    }
}

/// `follow list` on a node run from the command line, while its daemon runs or not.
fn listed(node: &crate::cli::Node) -> String {
    node.ok(&["follow", "list"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_killed_halfway_shows_only_whole_resources_and_resumes_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let files = scratch_dir();
    let (p, id) = start_publisher(&dir.path().join("p")).await;
    let mut resources = Vec::new();
    for (seed, size) in SIZES.iter().enumerate() {
        resources.push(add_resource(&p, files.path(), *size, seed as u32).await);
    }
    add_to_collection(&p, &resources.iter().collect::<Vec<_>>()).await;
    assert_eq!(publish(&p).await, 1);
    let expected: Vec<(String, Vec<u8>)> = resources
        .iter()
        .map(|r| (r.content.to_string(), std::fs::read(&r.file).unwrap()))
        .collect();
    let publisher = dial_addr(&p);

    let id_text = id.to_string();
    let mirror = tokio::task::spawn_blocking(move || {
        let mirror = crate::cli::Node::init();
        mirror.ok(&["trust", "add", &id_text]);
        let followed = mirror.ok(&["follow", &id_text]);
        assert!(
            followed.contains("(every resource)") && followed.contains("when it runs"),
            "{followed}"
        );
        mirror.start_daemon_with_peers(&[publisher]);
        // Killed as soon as it holds something of the collection.
        let deadline = std::time::Instant::now() + crate::network::DEADLINE;
        loop {
            let list = listed(&mirror);
            if !list.contains("resources 0/") && list.contains("resources ") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nothing fetched: {list}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        mirror.kill_daemon();

        // Without a daemon: every resource shown complete is whole, nothing is damaged.
        let list = listed(&mirror);
        assert!(
            list.contains("state: complete")
                || list.contains("state: paused: the daemon is not running"),
            "{list}"
        );
        let status = mirror.ok(&["follow", "status", &id_text]);
        for line in status.lines().filter(|l| l.starts_with("complete ")) {
            let cid = line.split_whitespace().nth(1).unwrap();
            let (_, bytes) = expected.iter().find(|(c, _)| c == cid).unwrap();
            assert!(mirror.run(&["cat", cid]).stdout == *bytes, "{cid} differs");
        }
        assert!(mirror.ok(&["verify"]).contains("all good"));

        // Restarted, it fetches the rest.
        mirror.start_daemon();
        let deadline = std::time::Instant::now() + crate::network::DEADLINE;
        loop {
            let list = listed(&mirror);
            if list.contains("resources 20/20 complete") && list.contains("state: complete") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "not resumed: {list}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let status = mirror.ok(&["follow", "status", &id_text]);
        assert_eq!(
            status
                .lines()
                .filter(|l| l.starts_with("complete "))
                .count(),
            20,
            "{status}"
        );
        for (cid, bytes) in &expected {
            assert!(mirror.run(&["cat", cid]).stdout == *bytes, "{cid} differs");
        }
        assert!(mirror.ok(&["verify"]).contains("all good"));
        mirror.stop_daemon();
    });
    mirror.await.unwrap();
    p.shutdown().await.unwrap();
}

/// Sets `[daemon] sync_hours` in the config of the repository at `root`.
fn set_sync_hours(root: &Path, from: u16, to: u16) {
    let config = root.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let window = format!(
        "sync_hours = \"{:02}:{:02}-{:02}:{:02}\"",
        from / 60,
        from % 60,
        to / 60,
        to % 60
    );
    let edited: Vec<String> = text
        .lines()
        .map(|line| {
            if line.starts_with("sync_hours =") {
                window.clone()
            } else {
                line.to_string()
            }
        })
        .collect();
    assert!(edited.contains(&window), "{text}");
    std::fs::write(&config, edited.join("\n")).unwrap();
}

/// A mirror told to sync only in some hours of the day says it is waiting for them and
/// fetches nothing outside them; restarted with hours that include now, it syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_fetches_content_only_within_its_sync_hours() {
    let dir = tempfile::tempdir().unwrap();
    let files = scratch_dir();
    let (p, id) = start_publisher(&dir.path().join("p")).await;
    let resource = add_resource(&p, files.path(), 300 * KIB, 7).await;
    add_to_collection(&p, &[&resource]).await;
    assert_eq!(publish(&p).await, 1);

    let m_root = dir.path().join("m");
    Node::open_or_init(&m_root).unwrap();
    let now = oermesh::bandwidth::local_minute_of_day();
    let day = 24 * 60;
    set_sync_hours(&m_root, (now + 120) % day, (now + 180) % day);
    let m = start_node(&m_root, vec![dial_addr(&p)]).await;
    wait_until_compatible(&m, p.peer_id()).await;
    follow(&m, &id).await;
    wait_until("M says it waits for its sync hours", || async {
        let view = status(&m, &id).await;
        view.seq == Some(1)
            && view
                .reason
                .is_some_and(|reason| reason.contains("waiting for the sync hours"))
    })
    .await;
    assert!(!m.node().store().has(&resource.content).unwrap());
    m.shutdown().await.unwrap();

    set_sync_hours(&m_root, (now + day - 60) % day, (now + 60) % day);
    let m = start_node(&m_root, vec![dial_addr(&p)]).await;
    wait_complete(&m, &id, 1, 1).await;
    assert_identical(&m, &[&resource]).await;
    m.shutdown().await.unwrap();
    p.shutdown().await.unwrap();
}
