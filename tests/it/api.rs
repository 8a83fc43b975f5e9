//! The daemon's local API with real daemons: who may use it, what a cut-off upload
//! leaves, many clients at once, and the work of several users racing on one node.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;

use oermesh::api::client::ApiClient;
use oermesh::node::{AddEvent, AddOptions, Service};
use oermesh::unixfs::importer::TreeSink;

use crate::cli::{Mode, Node};
use crate::gen::generated_bytes;

fn client(node: &Node) -> ApiClient {
    ApiClient::find(&node.repo)
        .unwrap()
        .expect("the daemon answers on its socket")
}

/// Adds one file's bytes through the API, as `oermesh add` does, and returns its CID.
fn add_bytes(api: &dyn Service, dir: &std::path::Path, name: &str, bytes: &[u8]) -> cid::Cid {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let outcome = api
        .add(
            &AddOptions::default(),
            &mut |sink: &mut dyn TreeSink| oermesh::node::walk_into(&path, false, sink),
            &mut |_: AddEvent| {},
        )
        .unwrap();
    outcome.root
}

fn cat(api: &dyn Service, cid: &cid::Cid) -> Vec<u8> {
    let blocks = oermesh::node::service::ServiceBlocks(api);
    let mut out = Vec::new();
    oermesh::unixfs::reader::read_file(&blocks, cid, &mut out).unwrap();
    out
}

#[test]
fn another_user_cannot_use_the_socket_and_is_told_why() {
    let node = Node::init_in(Mode::Daemon);
    let socket = node.repo.join("api.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is for its owner only");
    // Let the other user reach the repository directory, so that only the socket's
    // own permission stands in the way.
    let mut dir = node.repo.clone();
    while dir.pop() {
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
        if dir.as_os_str().len() <= 1 {
            break;
        }
    }
    std::fs::set_permissions(&node.repo, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_oermesh"))
        .args(["stat"])
        .env("OERMESH_REPO", &node.repo)
        .env_remove("OERMESH_LOG")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("api.sock") && err.contains("ermission denied"),
        "{err}"
    );
    // The owner still gets through.
    assert!(node.ok(&["stat"]).contains("blocks"));
}

#[test]
fn an_upload_cut_off_midway_leaves_nothing_visible() {
    let node = Node::init_in(Mode::Daemon);
    let api = client(&node);
    let kept = add_bytes(&api, &node.work, "kept.txt", b"kept");
    // Options, a folder, a file header and part of its content; then the client is gone.
    let mut stream = UnixStream::connect(node.repo.join("api.sock")).unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(b"{\"options\":{}}\n{\"dir\":{\"path\":\"lesson\"}}\n");
    body.extend_from_slice(b"{\"file\":{\"path\":\"lesson/video.bin\",\"size\":3000000}}\n");
    let content = generated_bytes(3_000_000, 77);
    for chunk in content[..2_500_000].chunks(250_000) {
        body.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        body.extend_from_slice(chunk);
    }
    let head = "POST /api/v1/add HTTP/1.1\r\nHost: oermesh\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    stream
        .write_all(format!("{:x}\r\n", body.len()).as_bytes())
        .unwrap();
    stream.write_all(&body).unwrap();
    stream.write_all(b"\r\n").unwrap();
    stream.flush().unwrap();
    drop(stream);

    // The daemon noticed; nothing of the upload is pinned, and the store verifies.
    let pins = node.ok(&["pin", "ls"]);
    assert_eq!(pins.lines().count(), 1, "{pins}");
    assert!(pins.contains(&kept.to_string()));
    assert!(node.ok(&["verify"]).contains("all good"));
    // The same content added whole afterwards is stored and reads back.
    let whole = add_bytes(&api, &node.work, "video.bin", &content);
    assert_eq!(cat(&api, &whole), content);
}

#[test]
fn the_browser_address_takes_no_writes() {
    let node = Node::init_in(Mode::Daemon);
    let file = node.write("a.txt", b"students may read this");
    let cid = node
        .ok(&["add", "-Q", file.to_str().unwrap()])
        .trim()
        .to_string();
    let web = node.web_address();
    for (method, path) in [
        ("POST", "/api/v1/pin/rm"),
        ("POST", "/api/v1/gc"),
        ("DELETE", "/"),
        ("PUT", "/api/status"),
        ("POST", "/"),
    ] {
        let mut stream = std::net::TcpStream::connect(&web).unwrap();
        let body = format!("{{\"cid\":\"{cid}\"}}");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {web}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let status: u16 = answer
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap();
        assert!(
            status == 404 || status == 405,
            "{method} {path} answered {status}"
        );
    }
    assert!(node.ok(&["pin", "ls"]).contains(&cid), "still pinned");
    assert_eq!(node.ok(&["cat", &cid]), "students may read this");
}

#[test]
fn fifty_clients_make_a_thousand_requests() {
    let node = Node::init_in(Mode::Daemon);
    let api = client(&node);
    let content = b"shared lesson".to_vec();
    let cid = add_bytes(&api, &node.work, "shared.txt", &content);
    let repo = Arc::new(node.repo.clone());
    let workers: Vec<_> = (0..50)
        .map(|worker| {
            let repo = repo.clone();
            let content = content.clone();
            std::thread::spawn(move || {
                let api = ApiClient::find(&repo).unwrap().unwrap();
                for request in 0..20 {
                    match request % 4 {
                        0 => assert!(api.stat().unwrap().blocks >= 1),
                        1 => assert!(api.pins().unwrap().iter().any(|pin| pin.cid == cid)),
                        2 => assert_eq!(cat(&api, &cid), content),
                        _ => assert!(api.collection_list().unwrap().is_empty(), "worker {worker}"),
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
}

#[test]
fn a_stale_socket_from_a_killed_daemon_is_replaced() {
    let node = Node::init_in(Mode::Daemon);
    let file = node.write("a.txt", b"survives a kill");
    let cid = node
        .ok(&["add", "-Q", file.to_str().unwrap()])
        .trim()
        .to_string();
    node.kill_daemon();
    assert!(
        node.repo.join("api.sock").exists(),
        "a killed daemon leaves its socket"
    );
    // Commands see that nobody answers there and open the repository themselves.
    assert_eq!(node.ok(&["cat", &cid]), "survives a kill");
    // A new daemon takes the socket's place.
    node.start_daemon();
    assert_eq!(node.ok(&["cat", &cid]), "survives a kill");
}

#[test]
fn the_tcp_api_needs_the_token() {
    let node = Node::init();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = node.repo.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "\nlisten = \"\"\n",
            &format!("\nlisten = \"127.0.0.1:{port}\"\n"),
        ),
    )
    .unwrap();
    node.start_daemon();
    let token_path = node.repo.join("api.token");
    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_path).unwrap();
    let request = |authorization: Option<&str>| -> String {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let header = authorization
            .map(|value| format!("Authorization: {value}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "POST /api/v1/stat HTTP/1.1\r\nHost: localhost\r\n{header}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    let refused = request(None);
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(refused.contains("\"code\":\"forbidden\""), "{refused}");
    let wrong = request(Some("Bearer 0000"));
    assert!(wrong.starts_with("HTTP/1.1 403"), "{wrong}");
    let allowed = request(Some(&format!("Bearer {}", token.trim())));
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    assert!(allowed.contains("\"blocks\""), "{allowed}");
}

#[test]
fn errors_carry_a_stable_code_and_the_line_the_command_prints() {
    let node = Node::init_in(Mode::Daemon);
    let mut stream = UnixStream::connect(node.repo.join("api.sock")).unwrap();
    let missing = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    let body = format!("{{\"cid\":\"{missing}\"}}");
    write!(
        stream,
        "POST /api/v1/pin/add HTTP/1.1\r\nHost: oermesh\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let json = answer.split("\r\n\r\n").nth(1).unwrap();
    let error: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(error["code"], "not_found");
    let printed = node.fails(&["pin", "add", missing]);
    assert_eq!(
        printed.trim_end(),
        format!("error: {}", error["message"].as_str().unwrap())
    );
}

#[test]
fn gc_in_a_loop_beside_adds_and_publishes_loses_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let node = Node::init_in(Mode::Daemon);
    node.ok(&["key", "gen", "school"]);
    node.ok(&["collection", "create", "shared"]);
    let repo = Arc::new(node.repo.clone());
    let work = Arc::new(node.work.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let (repo, stop) = (repo.clone(), stop.clone());
        std::thread::spawn(move || {
            let api = ApiClient::find(&repo).unwrap().unwrap();
            let mut runs = 0u32;
            while !stop.load(Ordering::Acquire) || runs == 0 {
                api.gc().unwrap();
                runs += 1;
            }
            runs
        })
    };
    // Sizes around the inline limit and the chunk size, and files of several chunks.
    let sizes = [
        0usize,
        1,
        4095,
        4096,
        10_000,
        (1 << 20) - 1,
        1 << 20,
        (1 << 20) + 1,
        3 << 20,
    ];
    let adders: Vec<_> = (0..24u32)
        .map(|i| {
            let (repo, work) = (repo.clone(), work.clone());
            let size = sizes[i as usize % sizes.len()] + i as usize;
            std::thread::spawn(move || {
                let api = ApiClient::find(&repo).unwrap().unwrap();
                let bytes = generated_bytes(size, 1000 + i);
                let cid = add_bytes(&api, &work, &format!("file-{i}.bin"), &bytes);
                (cid, bytes)
            })
        })
        .collect();
    let publishers: Vec<_> = (0..8u32)
        .map(|i| {
            let (repo, work) = (repo.clone(), work.clone());
            std::thread::spawn(move || {
                let api = ApiClient::find(&repo).unwrap().unwrap();
                let path = work.join(format!("lesson-{i}.txt"));
                std::fs::write(&path, format!("lesson {i}")).unwrap();
                let options = AddOptions {
                    record: Some(oermesh::node::RecordFields {
                        title: Some(format!("Lesson {i}")),
                        license: Some("CC-BY-4.0".into()),
                        authors: vec!["A. Teacher".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let added = api
                    .add(
                        &options,
                        &mut |sink: &mut dyn TreeSink| oermesh::node::walk_into(&path, false, sink),
                        &mut |_: AddEvent| {},
                    )
                    .unwrap();
                let record = added.record.unwrap().to_string();
                api.collection_add("shared", &[record], None, None).unwrap();
                let published = api.collection_publish("shared").unwrap();
                (added.root, format!("lesson {i}"), published.seq)
            })
        })
        .collect();
    let added: Vec<(cid::Cid, Vec<u8>)> = adders.into_iter().map(|t| t.join().unwrap()).collect();
    let published: Vec<_> = publishers.into_iter().map(|t| t.join().unwrap()).collect();
    stop.store(true, Ordering::Release);
    assert!(collector.join().unwrap() >= 1);

    let api = client(&node);
    api.gc().unwrap();
    for (cid, bytes) in &added {
        assert_eq!(&cat(&api, cid), bytes, "{cid} reads back whole");
    }
    let mut seqs: Vec<u64> = published.iter().map(|(_, _, seq)| *seq).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=8).collect::<Vec<u64>>(),
        "every version its own number"
    );
    for (cid, text, _) in &published {
        assert_eq!(cat(&api, cid), text.as_bytes());
    }
    let verify = api.verify().unwrap();
    assert!(verify.damage.is_empty(), "{:?}", verify.damage);
    let id = api.collection_list().unwrap().remove(0).id;
    let history = node.ok(&["collection", "history", &id]);
    assert_eq!(history.lines().count(), 8, "{history}");
}

#[test]
fn a_reader_streaming_beside_gc_gets_every_byte() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let node = Node::init_in(Mode::Daemon);
    let api = client(&node);
    let big = crate::gen::Generated::new(100 << 20, 9);
    let path = node.work.join("big.bin");
    std::io::copy(&mut { big }, &mut std::fs::File::create(&path).unwrap()).unwrap();
    let expected = std::fs::read(&path).unwrap();
    let cid = add_bytes(&api, &node.work, "big.bin", &expected);
    // Unpinned garbage for gc to find on every pass.
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let (repo, work, stop) = (node.repo.clone(), node.work.clone(), stop.clone());
        std::thread::spawn(move || {
            let api = ApiClient::find(&repo).unwrap().unwrap();
            let mut round = 0u32;
            while !stop.load(Ordering::Acquire) {
                let junk = add_bytes(&api, &work, "junk.bin", &generated_bytes(200_000, round));
                api.pin_rm(&junk).unwrap();
                api.gc().unwrap();
                round += 1;
            }
        })
    };
    for _ in 0..2 {
        assert!(cat(&api, &cid) == expected, "every byte, in order");
    }
    stop.store(true, Ordering::Release);
    collector.join().unwrap();
}

/// The daemon answers every file of a tree as it finishes; the client reads those
/// answers while it is still sending, so a tree whose answers outgrow every buffer on
/// the way (12,000 files: about 1.5 MB of answers) does not stall.
#[test]
fn a_tree_of_twelve_thousand_files_goes_through_without_stalling() {
    let node = Node::init_in(Mode::Daemon);
    let tree = node.work.join("many");
    for index in 0..12_000 {
        let folder = tree.join(format!("part-{}", index / 1000));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join(format!("note-{index:05}.txt")),
            index.to_string(),
        )
        .unwrap();
    }
    let mut add = Command::new(env!("CARGO_BIN_EXE_oermesh"))
        .args(["add", "-r", tree.to_str().unwrap()])
        .env("OERMESH_REPO", &node.repo)
        .env_remove("OERMESH_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read its output as it comes, so that only a stall between the CLI and the daemon
    // can stop it, and give up (failing) after a generous wait instead of hanging.
    let mut stdout = add.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).map(|_| text)
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let status = loop {
        if let Some(status) = add.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = add.kill();
            panic!("add -r of 12,000 files through the daemon stalled");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    add.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    let listing = reader.join().unwrap().unwrap();
    // One line per file, one per folder, one for the root.
    assert_eq!(listing.lines().count(), 12_000 + 12 + 1, "{stderr}");
    let root = listing.lines().last().unwrap().split(' ').nth(1).unwrap();
    let expected = node.ok(&["add", "-r", "-Q", "--only-hash", tree.to_str().unwrap()]);
    assert_eq!(root, expected.trim());
}
