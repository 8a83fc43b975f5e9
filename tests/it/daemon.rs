//! Real daemons on loopback, with real repositories in temp dirs. mDNS stays off and
//! nothing leaves 127.0.0.1. Waits poll with generous deadlines, so a slow machine
//! makes the tests slower, not red.

use std::path::Path;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use oermesh::daemon::{Daemon, DaemonOptions};
use oermesh::node::Node;
use oermesh::repo::Repo;

const CONNECT_DEADLINE: Duration = Duration::from_secs(60);

fn loopback_options(listen: &str) -> DaemonOptions {
    DaemonOptions {
        http_listen: Some("127.0.0.1:0".into()),
        listen: Some(vec![listen.parse().unwrap()]),
        mdns: Some(false),
        static_peers: None,
    }
}

async fn start(root: &Path, options: DaemonOptions) -> Daemon {
    let (repo, _) = Repo::open_or_init(root).unwrap();
    Daemon::start(Node::from_repo(repo).unwrap(), options)
        .await
        .unwrap()
}

/// A GET over a plain TCP stream: status code, lower-cased headers, body.
async fn http_get(daemon: &Daemon, path: &str) -> (u16, Vec<(String, String)>, String) {
    let addr = daemon.http_addr();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    // Blocking std I/O on its own thread keeps the test free of an HTTP client stack.
    let raw = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        raw
    })
    .await
    .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

async fn connected_to(daemon: &Daemon, other: PeerId) -> bool {
    daemon
        .client()
        .peers()
        .await
        .unwrap()
        .iter()
        .any(|peer| peer.peer_id == other)
}

/// Polls until both daemons list each other as connected.
async fn wait_until_connected(a: &Daemon, b: &Daemon) {
    let deadline = tokio::time::Instant::now() + CONNECT_DEADLINE;
    loop {
        if connected_to(a, b.peer_id()).await && connected_to(b, a.peer_id()).await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "peers not connected within {CONNECT_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_until_disconnected(daemon: &Daemon, other: PeerId) {
    let deadline = tokio::time::Instant::now() + CONNECT_DEADLINE;
    while connected_to(daemon, other).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still connected after {CONNECT_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tcp_port(addr: &Multiaddr) -> u16 {
    addr.iter()
        .find_map(|protocol| match protocol {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap()
}

/// Writes `static_peers` into a fresh repository's config.toml.
fn init_with_static_peer(root: &Path, peer: &Multiaddr) {
    drop(Repo::init(root).unwrap());
    let config = root.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("static_peers = []", &format!("static_peers = [\"{peer}\"]"));
    std::fs::write(&config, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_on_an_empty_dir_creates_the_repository_and_serves_its_page_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("node");
    let (repo, created) = Repo::open_or_init(&root).unwrap();
    assert!(created);
    let daemon = Daemon::start(
        Node::from_repo(repo).unwrap(),
        loopback_options("/ip4/127.0.0.1/tcp/0"),
    )
    .await
    .unwrap();
    assert!(root.join("config.toml").is_file() && root.join("node.key").is_file());
    assert!(
        tcp_port(&daemon.listen_addrs()[0]) != 0,
        "the real port is reported"
    );
    let summary = daemon.summary();
    for part in [
        root.display().to_string(),
        daemon.peer_id().to_string(),
        daemon.page_url(),
    ] {
        assert!(summary.contains(&part), "{summary} lacks {part}");
    }

    let (status, headers, body) = http_get(&daemon, "/").await;
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type")
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    let csp = header(&headers, "content-security-policy").unwrap();
    assert!(
        csp.starts_with("default-src 'none'") && csp.contains("style-src 'self'"),
        "{csp}"
    );
    assert!(body.contains("<html lang=\"en\" dir=\"ltr\">"));
    assert!(
        body.contains("This node holds no learning materials yet"),
        "an empty node says how to add material"
    );
    let (status, _, body) = http_get(&daemon, "/peers").await;
    assert_eq!(status, 200);
    assert!(body.contains(&daemon.peer_id().to_string()));
    assert!(body.contains("No peers connected"));

    let (status, headers, body) = http_get(&daemon, "/api/status").await;
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type")
        .unwrap()
        .starts_with("application/json"));
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["peer_id"], daemon.peer_id().to_string());
    assert_eq!(json["peers"], serde_json::json!([]));
    assert_eq!(
        (json["blocks"].as_u64(), json["bytes"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(json["pins"], serde_json::json!([]));
    assert_eq!(
        json["listen_addrs"][0],
        daemon.listen_addrs()[0].to_string()
    );

    let (status, headers, _) = http_get(&daemon, "/no/such/page").await;
    assert_eq!(status, 404);
    assert_eq!(header(&headers, "x-content-type-options"), Some("nosniff"));

    daemon.shutdown().await.unwrap();
    let (_reopened, created) = Repo::open_or_init(&root).unwrap();
    assert!(!created, "shutdown released the repository");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_show_on_the_page_and_in_the_status() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = Repo::open_or_init(dir.path()).unwrap();
    let data = b"a lesson plan";
    let cid = oermesh::block::cid_v1(oermesh::block::codec::RAW, data);
    let batch = repo.store().batch();
    oermesh::block::BlockPut::put_block(&batch, &cid, data).unwrap();
    batch.commit().unwrap();
    repo.store().pin(&cid, "user").unwrap();
    let daemon = Daemon::start(
        Node::from_repo(repo).unwrap(),
        loopback_options("/ip4/127.0.0.1/tcp/0"),
    )
    .await
    .unwrap();

    let (_, _, page) = http_get(&daemon, "/").await;
    assert!(page.contains(&cid.to_string()));
    let (_, _, status) = http_get(&daemon, "/api/status").await;
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(json["pins"][0]["cid"], cid.to_string());
    assert_eq!(json["pins"][0]["reasons"], serde_json::json!(["user"]));
    assert_eq!(
        (json["blocks"].as_u64(), json["bytes"].as_u64()),
        (Some(1), Some(data.len() as u64))
    );
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_collections_show_on_the_page_with_their_trust() {
    use oermesh::records::{Author, Educational, Entry, RecordDraft};
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = Repo::open_or_init(dir.path()).unwrap();
    let own = oermesh::keys::generate(&repo.keys_dir(), "school").unwrap();
    let stranger = oermesh::keys::generate_signing_key().unwrap();
    let book = repo.records().unwrap();
    let mut record_cids = Vec::new();
    for (title, key) in [
        (
            "Fractions <explained>",
            oermesh::keys::load(&repo.keys_dir(), "school").unwrap(),
        ),
        ("Usanisinuru", stranger),
    ] {
        let data = title.as_bytes();
        let content = oermesh::block::cid_v1(oermesh::block::codec::RAW, data);
        let batch = repo.store().batch();
        oermesh::block::BlockPut::put_block(&batch, &content, data).unwrap();
        batch.commit_and_pin(&[content], "user").unwrap();
        let draft = RecordDraft {
            content,
            title: title.to_string(),
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
        record_cids.push(book.sign_record(&key, draft).unwrap().cid);
    }
    let signing = oermesh::keys::load(&repo.keys_dir(), "school").unwrap();
    book.create_collection("maths", "school", &signing.verifying_key())
        .unwrap();
    book.add_entries("maths", vec![Entry::new(record_cids[0])])
        .unwrap();
    let published = book.publish("maths", &signing).unwrap();
    // A third record, withdrawn: its title must no longer be listed.
    let withdrawn_content = oermesh::block::cid_v1(oermesh::block::codec::RAW, b"withdrawn");
    let batch = repo.store().batch();
    oermesh::block::BlockPut::put_block(&batch, &withdrawn_content, b"withdrawn").unwrap();
    batch.commit_and_pin(&[withdrawn_content], "user").unwrap();
    let withdrawn = book
        .sign_record(
            &signing,
            RecordDraft {
                content: withdrawn_content,
                title: "Taken down".into(),
                description: None,
                language: "en".into(),
                authors: vec![Author {
                    name: "A. Teacher".into(),
                    url: None,
                }],
                licence: "CC-BY-4.0".into(),
                licence_url: None,
                source: None,
                based_on: vec![],
                educational: Educational::default(),
                created: None,
            },
        )
        .unwrap();
    book.retract(&signing, &withdrawn.cid, "rights holder asked")
        .unwrap();
    drop(book);
    let daemon = Daemon::start(
        Node::from_repo(repo).unwrap(),
        loopback_options("/ip4/127.0.0.1/tcp/0"),
    )
    .await
    .unwrap();

    let (_, _, page) = http_get(&daemon, "/").await;
    assert!(
        page.contains("Fractions &lt;explained&gt;"),
        "titles are shown, escaped"
    );
    assert!(page.contains("CC BY-SA 3.0 IGO") && page.contains("title=\"CC-BY-SA-3.0-IGO\""));
    assert!(page.contains("Usanisinuru") && page.contains(">not trusted</strong>"));
    assert!(page.contains(&published.id.to_string()), "{}", own.did);
    assert!(
        !page.contains("Taken down"),
        "a retracted record is no longer listed"
    );
    daemon.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_peer_is_connected_and_redialled_after_it_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let (root_a, root_b) = (dir.path().join("a"), dir.path().join("b"));
    let a = start(&root_a, loopback_options("/ip4/127.0.0.1/tcp/0")).await;
    let a_addr = a.listen_addrs()[0].clone();
    let a_id = a.peer_id();

    // Configured the way an administrator would: an address, no peer id.
    init_with_static_peer(&root_b, &a_addr);
    let b = start(&root_b, loopback_options("/ip4/127.0.0.1/tcp/0")).await;
    wait_until_connected(&a, &b).await;

    let (_, _, body) = http_get(&b, "/peers").await;
    assert!(body.contains(&a_id.to_string()), "B's page lists A");
    let (_, _, status) = http_get(&a, "/api/status").await;
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(json["peers"][0]["peer_id"], b.peer_id().to_string());

    a.shutdown().await.unwrap();
    wait_until_disconnected(&b, a_id).await;
    // Same repository, same port: the same node coming back.
    let a = start(
        &root_a,
        loopback_options(&format!("/ip4/127.0.0.1/tcp/{}", tcp_port(&a_addr))),
    )
    .await;
    assert_eq!(
        a.peer_id(),
        a_id,
        "identity comes from the repository's node key"
    );
    wait_until_connected(&a, &b).await;

    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialling_through_the_client_reports_the_peer_or_the_failure() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(
        &dir.path().join("a"),
        loopback_options("/ip4/127.0.0.1/tcp/0"),
    )
    .await;
    let b = start(
        &dir.path().join("b"),
        loopback_options("/ip4/127.0.0.1/tcp/0"),
    )
    .await;

    let with_id: Multiaddr = format!("{}/p2p/{}", a.listen_addrs()[0], a.peer_id())
        .parse()
        .unwrap();
    assert_eq!(b.client().dial(with_id.clone()).await.unwrap(), a.peer_id());
    wait_until_connected(&a, &b).await;
    assert_eq!(
        b.client().dial(with_id).await.unwrap(),
        a.peer_id(),
        "dialling a connected peer is not an error"
    );

    // A peer id that is not the one listening there is refused.
    let wrong: Multiaddr = format!("{}/p2p/{}", a.listen_addrs()[0], b.peer_id())
        .parse()
        .unwrap();
    let c = start(
        &dir.path().join("c"),
        loopback_options("/ip4/127.0.0.1/tcp/0"),
    )
    .await;
    assert!(c.client().dial(wrong).await.is_err());
    assert_eq!(c.client().listen_addrs().await.unwrap(), c.listen_addrs());

    for daemon in [a, b, c] {
        daemon.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_http_port_is_reported_and_the_repository_released() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (repo, _) = Repo::open_or_init(dir.path()).unwrap();
    let options = DaemonOptions {
        http_listen: Some(taken.local_addr().unwrap().to_string()),
        ..loopback_options("/ip4/127.0.0.1/tcp/0")
    };
    let err = Daemon::start(Node::from_repo(repo).unwrap(), options)
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("cannot serve the web page"),
        "{err}"
    );
    Repo::open(dir.path()).unwrap();
}
