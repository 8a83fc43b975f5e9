//! Space: a node that follows a collection stops fetching when its disk fills up or
//! its quota is reached, says so, keeps its store whole, and goes on when room is
//! freed. Real daemons on loopback; the full disk is a small tmpfs (root only).

use std::path::Path;

use oermesh::daemon::Daemon;
use oermesh::node::FollowRow;
use oermesh::records::CollectionId;

use crate::exchange::{add, scratch_dir, write_generated};
use crate::network::{dial_addr, on_node, start_node, wait_until, wait_until_compatible};
use crate::replication::{
    add_resource, add_to_collection, assert_identical, publish, start_publisher, Resource,
};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// A publisher with a collection of `count` resources of `size` bytes each.
async fn publisher(
    root: &Path,
    files: &Path,
    count: u32,
    size: u64,
) -> (Daemon, CollectionId, Vec<Resource>) {
    let (p, id) = start_publisher(root).await;
    let mut resources = Vec::new();
    for seed in 0..count {
        resources.push(add_resource(&p, files, size, 900 + seed).await);
    }
    add_to_collection(&p, &resources.iter().collect::<Vec<_>>()).await;
    assert_eq!(publish(&p).await, 1);
    (p, id, resources)
}

/// Replaces `key = old` by `key = new` in the repository's config.toml.
fn set_config(root: &Path, old: &str, new: &str) {
    let path = root.join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(old), "{old} not in config.toml");
    std::fs::write(&path, text.replace(old, new)).unwrap();
}

async fn follow(daemon: &Daemon, id: &CollectionId) {
    let id = id.to_string();
    on_node(daemon, move |node| {
        node.trust_add(&id).unwrap();
        node.follow(&id, false).unwrap();
    })
    .await;
}

async fn row(daemon: &Daemon) -> FollowRow {
    on_node(daemon, |node| node.follow_list().unwrap().remove(0)).await
}

/// The store is whole: `verify` finds nothing wrong.
async fn assert_consistent(daemon: &Daemon) {
    let verified = on_node(daemon, |node| node.verify().unwrap()).await;
    assert!(verified.damage.is_empty(), "{:?}", verified.damage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_at_its_quota_stops_says_why_and_goes_on_once_gc_frees_room() {
    let dir = tempfile::tempdir().unwrap();
    let files = scratch_dir();
    let (p, id, resources) = publisher(&dir.path().join("p"), files.path(), 6, 512 * KIB).await;

    // M keeps at most 4 MiB of blocks, and 3.5 MiB of them are an old file of its own.
    let m_root = dir.path().join("m");
    oermesh::node::Node::open_or_init(&m_root).unwrap();
    set_config(&m_root, "quota_mb = 0", "quota_mb = 4");
    let m = start_node(&m_root, vec![dial_addr(&p)]).await;
    let old_file = files.path().join("old.bin");
    write_generated(&old_file, 3 * MIB + 512 * KIB, 7);
    let old = add(&m, &old_file, false).await;
    wait_until_compatible(&m, p.peer_id()).await;
    follow(&m, &id).await;

    wait_until("M stops at its quota", || async {
        let row = row(&m).await;
        row.state == "stalled"
            && row
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("quota reached"))
    })
    .await;
    let stalled = row(&m).await;
    let content = stalled.content.clone().unwrap();
    assert!(content.complete < 6, "{stalled:?}");
    assert_consistent(&m).await;
    let text = {
        let root = m_root.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_oermesh"))
                .args(["--repo", root.to_str().unwrap(), "follow", "list"])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        })
        .await
        .unwrap()
    };
    assert!(text.contains("state: stalled: quota reached"), "{text}");

    // The old file goes; gc frees its room and the mirror goes on.
    on_node(&m, move |node| {
        node.pin_rm(&old).unwrap();
        node.gc().unwrap();
    })
    .await;
    wait_until("M completes once room is freed", || async {
        let row = row(&m).await;
        row.state == "complete" && row.content.is_some_and(|c| c.complete == 6)
    })
    .await;
    assert_consistent(&m).await;
    assert_identical(&m, &resources.iter().collect::<Vec<_>>()).await;
    m.shutdown().await.unwrap();
    p.shutdown().await.unwrap();
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size_mb: u64) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot mount a tmpfs at {}: this test needs root",
            path.display()
        );
        Tmpfs(path.to_path_buf())
    }

    fn resize(&self, size_mb: u64) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size_mb}m")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_on_a_full_disk_stops_keeps_its_store_whole_and_goes_on_when_the_disk_grows() {
    let dir = tempfile::tempdir().unwrap();
    let files = scratch_dir();
    let (p, id, resources) = publisher(&dir.path().join("p"), files.path(), 24, MIB).await;

    // M lives on a 24 MiB disk and keeps 8 MiB of it free (more than the four resources
    // it fetches at once): it has room for part of the 24 MiB collection only.
    let disk = Tmpfs::mount(&dir.path().join("disk"), 24);
    let m_root = disk.0.join("m");
    oermesh::node::Node::open_or_init(&m_root).unwrap();
    set_config(&m_root, "reserve_mb = 256", "reserve_mb = 8");
    set_config(&m_root, "cache_mb = 64", "cache_mb = 4");
    let m = start_node(&m_root, vec![dial_addr(&p)]).await;
    wait_until_compatible(&m, p.peer_id()).await;
    follow(&m, &id).await;

    let deadline = std::time::Instant::now() + crate::network::DEADLINE;
    loop {
        let row = row(&m).await;
        if row.state == "stalled"
            && row
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("disk full"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "M never stopped for a full disk: {row:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let stalled = row(&m).await;
    assert!(
        stalled.content.as_ref().unwrap().complete < 24,
        "{stalled:?}"
    );
    assert_consistent(&m).await;

    // The disk grows; the mirror notices by itself and completes.
    disk.resize(64);
    wait_until("M completes once the disk has room", || async {
        let row = row(&m).await;
        row.state == "complete" && row.content.is_some_and(|c| c.complete == 24)
    })
    .await;
    assert_consistent(&m).await;
    assert_identical(&m, &resources.iter().collect::<Vec<_>>()).await;
    m.shutdown().await.unwrap();
    p.shutdown().await.unwrap();
    drop(disk);
}
