//! Replication groups: members that share the keeping of a collection, each resource
//! on `replicas` of them, and check each other's claims. Real daemons on loopback
//! (mDNS off, static peers), real stores in temp dirs; waits poll with generous
//! deadlines, and the group's intervals are a second so that each step takes seconds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use cid::Cid;
use libp2p::{Multiaddr, PeerId};
use oermesh::daemon::Daemon;
use oermesh::node::Node;
use oermesh::records::CollectionId;

use crate::exchange::scratch_dir;
use crate::network::{dial_addr, on_node, start_node, wait_until, wait_until_compatible};
use crate::replication::{add_resource, add_to_collection, publish, Resource};

/// Single blocks (each a file of its own in the store) and one file of two chunks.
const SIZES: [u64; 8] = [
    5_000, 9_000, 17_000, 30_000, 45_000, 60_000, 80_000, 1_500_000,
];

/// Creates a repository at `root` and returns its peer id.
fn init(root: &Path) -> PeerId {
    let (node, _) = Node::open_or_init(root).unwrap();
    node.peer_id().unwrap()
}

/// Puts `root`'s node in the group `district` with `members`, keeping `id` on
/// `replicas` members, with one-second intervals.
fn join_group(root: &Path, members: &[PeerId], id: &CollectionId, replicas: u32) {
    let path = root.join("config.toml");
    let members: Vec<String> = members.iter().map(|p| format!("\"{p}\"")).collect();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("name = \"\"", "name = \"district\"")
        .replace(
            "members = []",
            &format!("members = [{}]", members.join(", ")),
        )
        .replace("exchange_interval_secs = 30", "exchange_interval_secs = 1")
        .replace(
            "challenge_interval_secs = 60",
            "challenge_interval_secs = 1",
        )
        // The same room on every member whatever the shared disk does meanwhile: the
        // members rank each other by it.
        .replace("quota_mb = 0", "quota_mb = 1024");
    let text = format!("{text}\n[[group.collections]]\nid = \"{id}\"\nreplicas = {replicas}\n");
    std::fs::write(&path, text).unwrap();
}

/// The members holding each resource, by their own pins.
async fn holders(members: &[Daemon], resources: &[Resource]) -> HashMap<Cid, Vec<PeerId>> {
    let mut holders: HashMap<Cid, Vec<PeerId>> = HashMap::new();
    for member in members {
        let contents: Vec<Cid> = resources.iter().map(|r| r.content).collect();
        let held = on_node(member, move |node| {
            contents
                .into_iter()
                .filter(|cid| !node.store().pin_reasons(cid).unwrap().is_empty())
                .collect::<Vec<_>>()
        })
        .await;
        for cid in held {
            holders.entry(cid).or_default().push(member.peer_id());
        }
    }
    holders
}

/// Whether `member` can read `resource` back whole and byte-identical.
async fn reads_back(member: &Daemon, resource: &Resource) -> bool {
    let node = member.node().clone();
    let (content, file) = (resource.content, resource.file.clone());
    tokio::task::spawn_blocking(move || {
        let mut read = Vec::new();
        oermesh::unixfs::reader::read_file(node.store(), &content, &mut read).is_ok()
            && read == std::fs::read(&file).unwrap()
    })
    .await
    .unwrap()
}

/// Removes every block file under `root/blocks`, as a failing disk or an admin would,
/// without the node knowing.
fn delete_block_files(root: &Path) -> usize {
    let mut removed = 0;
    let mut dirs = vec![root.join("blocks")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path: PathBuf = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                std::fs::remove_file(&path).unwrap();
                removed += 1;
            }
        }
    }
    removed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_keeps_two_real_copies_and_a_member_that_lost_its_blocks_fails_its_challenges() {
    let dir = tempfile::tempdir().unwrap();
    let files = scratch_dir();

    // P publishes the collection; it is not a member.
    let p = start_node(&dir.path().join("p"), vec![]).await;
    let id: CollectionId = on_node(&p, |node| {
        node.key_gen("ministry").unwrap();
        node.collection_create("lessons", Some("ministry"))
            .unwrap()
            .id
    })
    .await
    .parse()
    .unwrap();
    let mut resources = Vec::new();
    for (seed, size) in SIZES.iter().enumerate() {
        resources.push(add_resource(&p, files.path(), *size, 500 + seed as u32).await);
    }
    add_to_collection(&p, &resources.iter().collect::<Vec<_>>()).await;
    assert_eq!(publish(&p).await, 1);

    // Four members keep it with replicas = 2.
    let roots: Vec<PathBuf> = (0..4).map(|i| dir.path().join(format!("m{i}"))).collect();
    let peers: Vec<PeerId> = roots.iter().map(|root| init(root)).collect();
    for root in &roots {
        join_group(root, &peers, &id, 2);
    }
    let mut members: Vec<Daemon> = Vec::new();
    for root in &roots {
        let mut dial: Vec<Multiaddr> = vec![dial_addr(&p)];
        dial.extend(members.iter().map(dial_addr));
        members.push(start_node(root, dial).await);
    }
    for (i, member) in members.iter().enumerate() {
        wait_until_compatible(member, p.peer_id()).await;
        for (j, other) in members.iter().enumerate() {
            if i != j {
                wait_until_compatible(member, other.peer_id()).await;
            }
        }
    }
    for member in &members {
        let id = id.to_string();
        on_node(member, move |node| {
            node.trust_add(&id).unwrap();
            node.follow(&id, false).unwrap();
        })
        .await;
    }

    let started = std::time::Instant::now();
    // Every resource ends up on two or three members, not on all four, and every
    // member shares the work... each copy real.
    wait_until("every resource held by two members", || async {
        let holders = holders(&members, &resources).await;
        resources.iter().all(|r| {
            holders
                .get(&r.content)
                .is_some_and(|h| (2..=3).contains(&h.len()))
        })
    })
    .await;
    eprintln!(
        "{:?}: every resource on two or three members",
        started.elapsed()
    );
    let before = holders(&members, &resources).await;
    let copies: usize = before.values().map(Vec::len).sum();
    assert!(
        copies < 4 * resources.len(),
        "every member holds everything: {before:?}"
    );
    for resource in &resources {
        for peer in &before[&resource.content] {
            let member = members.iter().find(|m| m.peer_id() == *peer).unwrap();
            assert!(
                reads_back(member, resource).await,
                "{peer} lacks {}",
                resource.content
            );
        }
    }
    // Each member learns what the others hold, and counts the copies.
    for member in &members {
        wait_until("the group's view settles on every member", || async {
            let id = id.to_string();
            let (follow, status) = on_node(member, move |node| {
                (
                    node.follow_status(&id).unwrap(),
                    node.group_status().unwrap(),
                )
            })
            .await;
            follow.state == "complete"
                && follow
                    .resources
                    .iter()
                    .all(|r| r.replicas.is_some_and(|n| n >= 2))
                && status.collections[0].resources == SIZES.len() as u64
                && status.collections[0].below.is_empty()
                && status.members.iter().all(|m| m.reachable && m.counted)
        })
        .await;
    }

    eprintln!("{:?}: every member's view settled", started.elapsed());
    // The member that is one of two holders of the most resources loses every block
    // file behind its node's back.
    let (victim, _) = members
        .iter()
        .enumerate()
        .max_by_key(|(_, m)| {
            before
                .values()
                .filter(|h| h.len() == 2 && h.contains(&m.peer_id()))
                .count()
        })
        .unwrap();
    let victim_id = members[victim].peer_id();
    let lost: Vec<&Resource> = resources
        .iter()
        .filter(|r| before[&r.content].len() == 2 && before[&r.content].contains(&victim_id))
        .collect();
    assert!(!lost.is_empty(), "{before:?}");
    assert!(delete_block_files(&roots[victim]) > 0);
    eprintln!(
        "{victim_id} lost its copies, and {} resources their second copy",
        lost.len()
    );

    // Its challenges fail, its claims stop counting, and the others restore two real
    // copies of everything it held.
    let others: Vec<&Daemon> = members
        .iter()
        .filter(|m| m.peer_id() != victim_id)
        .collect();
    wait_until("the others see the member's challenges fail", || async {
        let mut all = true;
        for other in &others {
            let status = on_node(other, |node| node.group_status().unwrap()).await;
            let seen = status
                .members
                .iter()
                .find(|m| m.peer_id == victim_id.to_string());
            all &= seen.is_some_and(|m| {
                !m.counted && m.challenges.last().is_some_and(|c| c.outcome == "failed")
            });
        }
        all
    })
    .await;
    eprintln!("{:?}: challenges failed", started.elapsed());
    wait_until("two real copies of everything again", || async {
        for resource in &resources {
            let mut real = 0;
            for other in &others {
                let held = {
                    let content = resource.content;
                    on_node(other, move |node| {
                        !node.store().pin_reasons(&content).unwrap().is_empty()
                    })
                    .await
                };
                if held && reads_back(other, resource).await {
                    real += 1;
                }
            }
            if real < 2 {
                return false;
            }
        }
        true
    })
    .await;
    eprintln!("{:?}: two real copies again", started.elapsed());
    // Every other member counts two copies of everything without the lost ones, and
    // reports the failed challenges.
    for other in &others {
        wait_until("the group's view counts two copies again", || async {
            let status = on_node(other, |node| node.group_status().unwrap()).await;
            let victim = status
                .members
                .iter()
                .find(|m| m.peer_id == victim_id.to_string())
                .unwrap();
            status.collections[0].below.is_empty()
                && !victim.counted
                && victim
                    .challenges
                    .iter()
                    .any(|c| c.outcome == "failed" && c.reason.is_some())
        })
        .await;
    }
    eprintln!("{:?}: every member's view settled again", started.elapsed());

    for member in members {
        member.shutdown().await.unwrap();
    }
    p.shutdown().await.unwrap();
}
