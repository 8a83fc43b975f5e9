//! A school's local network: daemons in network namespaces of their own, joined by a
//! bridge, each run with the configuration `oermesh init` writes and nothing else.
//! They must find each other by mDNS and follow a collection across the LAN. Network
//! namespaces need root; where they cannot be made the test fails saying so, it never
//! skips. Nothing leaves the namespaces: they have no route anywhere else.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::cli::Node;
use crate::tools;

/// Generous: mDNS answers within seconds, a busy machine is slower, never red.
const DEADLINE: Duration = Duration::from_secs(90);

/// Network namespaces, one per host, each with an `eth0` on one bridge (in a namespace
/// of its own, so the machine's own interfaces stay untouched). Removed on drop, which
/// also removes their interfaces.
struct Lan {
    switch: String,
    hosts: Vec<String>,
}

impl Lan {
    fn new(hosts: usize) -> Lan {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // Namespaces are machine-wide: the process id keeps test runs side by side apart.
        let prefix = format!(
            "oermesh-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut lan = Lan {
            switch: format!("{prefix}-switch"),
            hosts: Vec::new(),
        };
        add_netns(&lan.switch);
        ip(&["-n", &lan.switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan.switch, "link", "set", "br0", "up"]);
        for n in 1..=hosts {
            let host = format!("{prefix}-host{n}");
            add_netns(&host);
            lan.hosts.push(host.clone());
            let port = format!("port{n}");
            ip(&[
                "-n",
                &lan.switch,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &host,
            ]);
            ip(&["-n", &lan.switch, "link", "set", &port, "master", "br0"]);
            ip(&["-n", &lan.switch, "link", "set", &port, "up"]);
            let address = format!("10.77.0.{n}/24");
            ip(&["-n", &host, "addr", "add", &address, "dev", "eth0"]);
            ip(&["-n", &host, "link", "set", "eth0", "up"]);
            ip(&["-n", &host, "link", "set", "lo", "up"]);
        }
        lan
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for netns in self.hosts.iter().chain([&self.switch]) {
            let _ = Command::new(tools::ip())
                .args(["netns", "del", netns])
                .output();
        }
    }
}

fn add_netns(name: &str) {
    let output = Command::new(tools::ip())
        .args(["netns", "add", name])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "cannot create the network namespace {name} for the LAN test: {}\
         the test needs root on a kernel with network namespaces",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn ip(args: &[&str]) {
    let output = Command::new(tools::ip()).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Polls `check` every 100 ms until it holds; fails with `what` after `DEADLINE`.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {DEADLINE:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn peer_id(node: &Node) -> String {
    let id = node.ok(&["id"]);
    id.lines()
        .next()
        .and_then(|line| line.strip_prefix("peer id  "))
        .unwrap_or_else(|| panic!("no peer id in: {id}"))
        .to_string()
}

/// `oermesh peers` as (peer id, the ways it was found).
fn peers(node: &Node) -> Vec<(String, BTreeSet<String>)> {
    let listed = node.ok(&["peers"]);
    listed
        .lines()
        .filter(|line| *line != "no peers connected")
        .map(|line| {
            let peer = line.split("  ").next().unwrap().to_string();
            let found_by = line
                .split("found by ")
                .nth(1)
                .unwrap_or_else(|| panic!("no `found by` in: {line}"))
                .split("  ")
                .next()
                .unwrap()
                .split(',')
                .map(str::to_string)
                .collect();
            (peer, found_by)
        })
        .collect()
}

/// Adds a small lesson with its signed record; returns the record's CID.
fn lesson(node: &Node, name: &str) -> String {
    let path = node.write(name, format!("the lesson {name}").as_bytes());
    let out = node.ok(&[
        "add",
        "-Q",
        &path.display().to_string(),
        "--title",
        name,
        "--license",
        "CC-BY-SA-3.0-IGO",
        "--author",
        "A. Teacher",
    ]);
    out.lines()
        .nth(1)
        .unwrap_or_else(|| panic!("no record CID in: {out}"))
        .to_string()
}

#[test]
fn nodes_on_one_lan_find_each_other_by_mdns_with_no_configuration_and_follow_a_collection() {
    let lan = Lan::new(3);

    let publisher = Node::init();
    publisher.ok(&["key", "gen", "ministry"]);
    let first = lesson(&publisher, "one.md");
    publisher.ok(&["collection", "create", "lessons"]);
    publisher.ok(&["collection", "add", "lessons", &first]);
    let id = publisher
        .ok(&["collection", "publish", "lessons"])
        .trim()
        .to_string();
    let followers = [Node::init(), Node::init()];
    for follower in &followers {
        follower.ok(&["trust", "add", &id]);
        follower.ok(&["follow", &id, "--metadata-only"]);
    }
    let nodes = [&publisher, &followers[0], &followers[1]];
    for (node, netns) in nodes.iter().zip(&lan.hosts) {
        node.start_daemon_in_netns(netns);
    }
    let ids: Vec<String> = nodes.iter().map(|node| peer_id(node)).collect();

    // Every node reaches the two others; with no static peers and no bootstrap nodes
    // configured, only mDNS can have brought them together.
    for (node, own) in nodes.iter().zip(&ids) {
        wait_until(&format!("{own} connects to both other nodes"), || {
            let connected: BTreeSet<String> = peers(node).into_iter().map(|(p, _)| p).collect();
            ids.iter()
                .filter(|id| *id != own)
                .all(|id| connected.contains(id))
        });
    }
    let found: Vec<Vec<(String, BTreeSet<String>)>> = nodes.iter().map(|n| peers(n)).collect();
    for (i, listed) in found.iter().enumerate() {
        for (peer, ways) in listed {
            assert!(
                ways.iter().all(|way| way == "mdns" || way == "inbound"),
                "{} found {peer} by {ways:?}",
                ids[i]
            );
        }
    }
    for i in 0..ids.len() {
        for j in i + 1..ids.len() {
            let dialled_after_mdns = |from: usize, to: usize| {
                found[from]
                    .iter()
                    .any(|(peer, ways)| *peer == ids[to] && ways.contains("mdns"))
            };
            assert!(
                dialled_after_mdns(i, j) || dialled_after_mdns(j, i),
                "neither {} nor {} dialled the other after finding it by mDNS",
                ids[i],
                ids[j]
            );
        }
    }

    // Version 1 was published before any daemon ran: it can only arrive through the
    // newest heads exchanged when the connections open.
    for follower in &followers {
        wait_until("version 1 reaches the follower", || {
            follower
                .ok(&["follow", "list"])
                .contains("version 1 (1 entries)")
        });
    }
    // Version 2 is published while every node runs: gossip carries it over the LAN.
    let second = lesson(&publisher, "two.md");
    publisher.ok(&["collection", "add", "lessons", &second]);
    publisher.ok(&["collection", "publish", "lessons"]);
    for follower in &followers {
        wait_until("version 2 reaches the follower", || {
            follower
                .ok(&["follow", "list"])
                .contains("version 2 (2 entries)")
        });
        let shown = follower.ok(&["collection", "show", &id]);
        assert!(
            shown.contains("one.md") && shown.contains("two.md"),
            "{shown}"
        );
    }

    for node in nodes {
        node.stop_daemon();
    }
    drop(lan);
}
