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
use crate::replication::{add_resource, add_to_collection, publish, start_publisher, Resource};

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

/// Sets `group.challenge_interval_secs` in `root`'s config.
fn set_challenge_interval(root: &Path, secs: u64) {
    let path = root.join("config.toml");
    let text: Vec<String> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|line| {
            if line.starts_with("challenge_interval_secs") {
                format!("challenge_interval_secs = {secs}")
            } else {
                line.to_string()
            }
        })
        .collect();
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
}

/// How `observer` sees `member`.
async fn seen_by(observer: &Daemon, member: PeerId) -> oermesh::node::GroupMemberView {
    let status = on_node(observer, |node| node.group_status().unwrap()).await;
    status
        .members
        .into_iter()
        .find(|m| m.peer_id == member.to_string())
        .unwrap()
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

/// The resources `member` claims (pins) but cannot read back whole.
async fn damaged_copies(member: &Daemon, resources: &[Resource]) -> Vec<Cid> {
    let mut damaged = Vec::new();
    for resource in resources {
        let content = resource.content;
        let pinned = on_node(member, move |node| {
            !node.store().pin_reasons(&content).unwrap().is_empty()
        })
        .await;
        if pinned && !reads_back(member, resource).await {
            damaged.push(content);
        }
    }
    damaged
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

/// A publisher P with a collection of `SIZES` resources, and `n` members keeping it on
/// `replicas` of them, each dialling P and the members started before it, each
/// following the collection.
struct Group {
    p: Daemon,
    id: CollectionId,
    resources: Vec<Resource>,
    roots: Vec<PathBuf>,
    members: Vec<Daemon>,
}

async fn start_group(
    dir: &Path,
    files: &Path,
    n: usize,
    replicas: u32,
    challenge_interval_secs: &[u64],
) -> Group {
    // P publishes the collection; it is not a member.
    let (p, id) = start_publisher(&dir.join("p")).await;
    let mut resources = Vec::new();
    for (seed, size) in SIZES.iter().enumerate() {
        resources.push(add_resource(&p, files, *size, 500 + seed as u32).await);
    }
    add_to_collection(&p, &resources.iter().collect::<Vec<_>>()).await;
    assert_eq!(publish(&p).await, 1);

    let roots: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("m{i}"))).collect();
    let peers: Vec<PeerId> = roots.iter().map(|root| init(root)).collect();
    for (i, root) in roots.iter().enumerate() {
        join_group(root, &peers, &id, replicas);
        if let Some(secs) = challenge_interval_secs.get(i) {
            set_challenge_interval(root, *secs);
        }
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
    Group {
        p,
        id,
        resources,
        roots,
        members,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_keeps_two_real_copies_and_a_member_that_lost_its_blocks_fails_its_challenges() {
    let dir = tempfile::tempdir().unwrap();
    let files = scratch_dir();
    // Four members keep it with replicas = 2.
    let Group {
        p,
        id,
        resources,
        roots,
        mut members,
    } = start_group(dir.path(), files.path(), 4, 2, &[]).await;

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
    // It restarts with no look at its own copies due for an hour, so that it finds out
    // about the loss from the others' challenges.
    let old = members.remove(victim);
    old.shutdown().await.unwrap();
    set_challenge_interval(&roots[victim], 3600);
    let mut dial = vec![dial_addr(&p)];
    dial.extend(members.iter().map(dial_addr));
    members.insert(victim, start_node(&roots[victim], dial).await);
    for (i, member) in members.iter().enumerate() {
        if i != victim {
            wait_until_compatible(&members[victim], member.peer_id()).await;
        }
    }
    assert!(delete_block_files(&roots[victim]) > 0);
    eprintln!(
        "{victim_id} lost its copies, and {} resources their second copy",
        lost.len()
    );

    // Its claims fail a challenge and stop counting...
    let others: Vec<&Daemon> = members
        .iter()
        .filter(|m| m.peer_id() != victim_id)
        .collect();
    wait_until(
        "another member sees the member's challenge fail",
        || async {
            for other in &others {
                let seen = seen_by(other, victim_id).await;
                if !seen.counted
                    && seen
                        .challenges
                        .iter()
                        .any(|c| c.outcome == "failed" && c.reason.is_some())
                {
                    return true;
                }
            }
            false
        },
    )
    .await;
    eprintln!("{:?}: a challenge failed", started.elapsed());
    // ...and the group restores two real copies of everything it held. The damaged
    // member finds out too, answering: it stops claiming the copies it lost (it lets
    // their pins go and drops what is left of them) and claims only what it holds
    // whole, fetched again where the group wants a copy there.
    wait_until("two real copies of everything again", || async {
        for resource in &resources {
            let mut real = 0;
            for member in &members {
                let held = {
                    let content = resource.content;
                    on_node(member, move |node| {
                        !node.store().pin_reasons(&content).unwrap().is_empty()
                    })
                    .await
                };
                if held && reads_back(member, resource).await {
                    real += 1;
                }
            }
            if real < 2 {
                return false;
            }
        }
        damaged_copies(&members[victim], &resources)
            .await
            .is_empty()
    })
    .await;
    eprintln!("{:?}: two real copies again", started.elapsed());
    // Every other member counts two copies of everything.
    for other in &others {
        wait_until("the group's view counts two copies again", || async {
            let status = on_node(other, |node| node.group_status().unwrap()).await;
            status.collections[0].below.is_empty()
        })
        .await;
    }
    eprintln!(
        "{:?}: the damaged member repaired its claims",
        started.elapsed()
    );

    for member in members {
        member.shutdown().await.unwrap();
    }
    p.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_copy_is_fetched_again_and_a_restarted_challenger_still_distrusts_it() {
    let dir = tempfile::tempdir().unwrap();
    let files = scratch_dir();
    // Two members, replicas = 2: each must hold everything. The second sets no
    // challenges of its own (it looks at its own copies only when challenged).
    let Group {
        p,
        id: _,
        resources,
        roots,
        mut members,
    } = start_group(dir.path(), files.path(), 2, 2, &[1, 3600]).await;
    wait_until("both members hold everything", || async {
        let holders = holders(&members, &resources).await;
        resources
            .iter()
            .all(|r| holders.get(&r.content).is_some_and(|h| h.len() == 2))
    })
    .await;
    // The publisher goes: the only other copy is the first member's.
    p.shutdown().await.unwrap();

    let damaged_id = members[1].peer_id();
    assert!(delete_block_files(&roots[1]) > 0);
    assert!(!damaged_copies(&members[1], &resources).await.is_empty());
    // The first member's challenge fails...
    wait_until("the damaged member fails a challenge", || async {
        let seen = seen_by(&members[0], damaged_id).await;
        !seen.counted && seen.challenges.iter().any(|c| c.outcome == "failed")
    })
    .await;
    // ...and it stops at once, to come back with no challenge due for an hour.
    let challenger = members.remove(0);
    challenger.shutdown().await.unwrap();
    set_challenge_interval(&roots[0], 3600);
    let challenger = start_node(&roots[0], vec![dial_addr(&members[0])]).await;
    wait_until_compatible(&challenger, damaged_id).await;
    wait_until("the restarted challenger hears from the member", || async {
        seen_by(&challenger, damaged_id).await.reachable
    })
    .await;
    let seen = seen_by(&challenger, damaged_id).await;
    assert!(
        !seen.counted,
        "a member that failed is trusted after a restart: {seen:?}"
    );

    // The damaged member, which found out answering the challenge, fetches its copies
    // again from the challenger, each verified.
    let damaged = &members[0];
    wait_until(
        "the damaged member holds every resource whole again",
        || async {
            let holders = holders(std::slice::from_ref(damaged), &resources).await;
            resources.iter().all(|r| holders.contains_key(&r.content))
                && damaged_copies(damaged, &resources).await.is_empty()
        },
    )
    .await;
    for resource in &resources {
        assert!(reads_back(damaged, resource).await);
    }
    let verify = on_node(damaged, |node| node.store().verify(&[], &[]).unwrap()).await;
    assert!(verify.damage.is_empty(), "{:?}", verify.damage);
    // Its claims still do not count with the challenger: nothing proved them yet.
    let status = on_node(&challenger, |node| node.group_status().unwrap()).await;
    let seen = seen_by(&challenger, damaged_id).await;
    assert!(seen.reachable && !seen.counted, "{seen:?}");
    assert_eq!(status.collections[0].below.len(), resources.len());

    // With challenges again, the member passes one and its claims count.
    challenger.shutdown().await.unwrap();
    set_challenge_interval(&roots[0], 1);
    let challenger = start_node(&roots[0], vec![dial_addr(damaged)]).await;
    wait_until(
        "the member passes a fresh challenge and counts again",
        || async {
            let status = on_node(&challenger, |node| node.group_status().unwrap()).await;
            let seen = seen_by(&challenger, damaged_id).await;
            seen.counted
                && seen.challenges.iter().any(|c| c.outcome == "passed")
                && status.collections[0].below.is_empty()
        },
    )
    .await;

    challenger.shutdown().await.unwrap();
    for member in members {
        member.shutdown().await.unwrap();
    }
}
