//! The IPFS Pinning Service API served by the daemon: every answer checked against the
//! spec's OpenAPI document (as the IPFS project's npm package `mock-ipfs-pinning-service`
//! ships it), and a node asked through `/pins` to mirror another node's collection,
//! whose blocks come over bitswap from the `origins` it was given. Real daemons on
//! loopback, real sled stores in temp dirs.

use std::time::Duration;

use cid::Cid;
use oermesh::daemon::Daemon;
use oermesh::node::{ExportTarget, Node};
use serde_json::{json, Value};

use crate::exchange::address;
use crate::network::{on_node, prepare_collection, start_node};
use crate::tools;

/// A client of one daemon's Pinning Service API that keeps every exchange, to be
/// checked against the OpenAPI document at the end.
struct PinsClient {
    http: reqwest::Client,
    base: String,
    token: String,
    exchanges: Vec<Value>,
}

impl PinsClient {
    fn new(daemon: &Daemon) -> PinsClient {
        let token = std::fs::read_to_string(daemon.repo_root().join("pins.token")).unwrap();
        PinsClient {
            http: reqwest::Client::new(),
            base: format!(
                "http://{}",
                daemon.pins_tcp_addr().expect("pins_listen is set")
            ),
            token: token.trim().to_string(),
            exchanges: Vec::new(),
        }
    }

    /// Sends one request (`template` names the spec's path, `path` the real one) and
    /// returns the status and the JSON body (`null` when there is none).
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token.unwrap_or(&self.token));
        if let Some(body) = &body {
            request = request.json(body);
            self.exchanges.push(json!({
                "label": format!("request {method} {path}"), "kind": "request",
                "method": method.as_str(), "path": template, "body": body,
            }));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("{path}: not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        self.exchanges.push(json!({
            "label": format!("{method} {path} -> {status}"), "kind": "response",
            "method": method.as_str(), "path": template, "status": status, "body": value,
        }));
        (status, value)
    }

    async fn get(&mut self, path: &str) -> (u16, Value) {
        let template = if path.starts_with("/pins/") {
            "/pins/{requestid}"
        } else {
            "/pins"
        };
        self.call("GET", template, path, None, None).await
    }

    /// Polls a request until its status is `wanted`; returns its last status.
    async fn wait_for(&mut self, requestid: &str, wanted: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            let (status, answer) = self.get(&format!("/pins/{requestid}")).await;
            if status == 200 && answer["status"] == wanted {
                return answer;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "pin request {requestid} is not {wanted} after 90 s: {answer}"
            );
            // Only the last answer of a wait is kept for the document's check.
            self.exchanges.pop();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn set_api_config(root: &std::path::Path, key: &str, value: &str) {
    let path = root.join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace(
        &format!("\n{key} = \"\"\n"),
        &format!("\n{key} = \"{value}\"\n"),
    );
    assert!(
        text.contains(&format!("{key} = \"{value}\"")),
        "{key} not set"
    );
    std::fs::write(path, text).unwrap();
}

fn pin_reasons(node: &Node, cid: &Cid) -> Vec<String> {
    node.store().pin_reasons(cid).unwrap()
}

/// Starts the pinning node: a daemon whose config serves `/pins` on its own port.
async fn start_pinning_node(root: &std::path::Path) -> Daemon {
    if !root.join("config.toml").exists() {
        Node::open_or_init(root).unwrap();
        set_api_config(root, "pins_listen", "127.0.0.1:0");
    }
    start_node(root, vec![]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinning_service_api_answers_as_its_openapi_document_says_and_mirrors_a_collection_over_bitswap(
) {
    let spec = tokio::task::spawn_blocking(|| tools::pinning_service_spec().to_path_buf());
    let dir = tempfile::tempdir().unwrap();
    let publisher = start_node(&dir.path().join("publisher"), vec![]).await;
    let (id, head) = on_node(&publisher, |node| {
        let id = prepare_collection(node, "physics", 3);
        (id, node.collection_publish("physics").unwrap().head)
    })
    .await;
    let mirror_root = dir.path().join("mirror");
    let mut mirror = start_pinning_node(&mirror_root).await;
    let mut pins = PinsClient::new(&mirror);

    // Without the token, or with another, nothing is answered.
    let (status, _) = pins
        .call("GET", "/pins", "/pins", None, Some("wrong"))
        .await;
    assert_eq!(status, 401);
    let (status, listed) = pins.get("/pins").await;
    assert_eq!(
        (status, &listed),
        (200, &json!({"count": 0, "results": []}))
    );

    // A CID no peer has fails, with the reason.
    let absent = oermesh::block::cid_v1(oermesh::block::codec::RAW, b"held by nobody");
    let (status, queued) = pins
        .call(
            "POST",
            "/pins",
            "/pins",
            Some(json!({"cid": absent.to_string()})),
            None,
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let failed = pins
        .wait_for(queued["requestid"].as_str().unwrap(), "failed")
        .await;
    assert!(
        failed["info"]["status_details"]
            .as_str()
            .unwrap()
            .contains(&absent.to_string()),
        "{failed}"
    );

    // The collection, by its head: the mirror dials the origin it is given (it knows
    // no other node) and gets every block over bitswap.
    let origin = address(&publisher).to_string();
    let pin = json!({"cid": head.to_string(), "name": "physics grade 9", "origins": [origin],
                     "meta": {"collection": id.to_string()}});
    let (status, queued) = pins
        .call("POST", "/pins", "/pins", Some(pin.clone()), None)
        .await;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(queued["pin"], pin);
    let delegates = queued["delegates"].as_array().unwrap();
    assert!(
        delegates
            .iter()
            .any(|d| d.as_str().unwrap().ends_with(&mirror.peer_id().to_string())),
        "{queued}"
    );
    let requestid = queued["requestid"].as_str().unwrap().to_string();
    let pinned = pins.wait_for(&requestid, "pinned").await;
    assert_eq!(pinned["created"], queued["created"]);
    let sent = publisher.bitswap().stat().blocks_sent;
    assert!(
        sent >= 8,
        "head, entries, 3 records, 3 contents: {sent} blocks sent over bitswap"
    );
    let reason = format!("pin-request:{requestid}");
    let complete = on_node(&mirror, move |node| {
        let exported = node.export(&ExportTarget::Dags(vec![head]), &mut std::io::sink());
        (
            exported.map(|summary| summary.blocks),
            pin_reasons(node, &head),
        )
    })
    .await;
    assert!(
        matches!(complete.0, Ok(blocks) if blocks >= 8),
        "{complete:?}"
    );
    assert_eq!(complete.1, vec![reason.clone()]);
    // The version is registered in the mirror's record layer, as a followed one is:
    // `collection show` knows it, records and all.
    let shown = id.to_string();
    let view = on_node(&mirror, move |node| node.collection_show(&shown)).await;
    let view = view.unwrap_or_else(|err| panic!("collection show on the mirror: {err}"));
    assert_eq!((view.seq, view.head), (1, head), "{view:?}");
    assert_eq!(view.entries.len(), 3, "{view:?}");
    assert!(
        view.entries.iter().all(|entry| entry.licence.is_some()),
        "{view:?}"
    );

    // Filters.
    let (_, listed) = pins.get("/pins").await;
    assert_eq!(listed["count"], 1, "{listed}");
    assert_eq!(listed["results"][0]["requestid"], requestid.as_str());
    let (_, all) = pins
        .get("/pins?status=queued,pinning,pinned,failed&limit=1")
        .await;
    assert_eq!(
        (
            all["count"].clone(),
            all["results"].as_array().unwrap().len()
        ),
        (json!(2), 1)
    );
    let (_, by_cid) = pins
        .get(&format!("/pins?cid={head},{absent}&status=pinned,failed"))
        .await;
    assert_eq!(by_cid["count"], 2);
    let (_, by_name) = pins.get("/pins?name=PHYSICS&match=ipartial").await;
    assert_eq!(by_name["count"], 1);
    let (_, by_meta) = pins
        .get("/pins?meta=%7B%22collection%22%3A%22elsewhere%22%7D")
        .await;
    assert_eq!(by_meta["count"], 0);
    let created = pinned["created"].as_str().unwrap().replace(':', "%3A");
    let (_, before) = pins
        .get(&format!("/pins?status=pinned,failed&before={created}"))
        .await;
    assert_eq!(
        before["count"], 1,
        "only the failed request is older: {before}"
    );
    for bad in [
        "/pins?limit=0",
        "/pins?status=done",
        "/pins?cid=nope",
        "/pins?before=noon",
    ] {
        assert_eq!(pins.get(bad).await.0, 400, "{bad}");
    }
    let (status, _) = pins
        .call(
            "POST",
            "/pins",
            "/pins",
            Some(json!({"cid": "not a cid"})),
            None,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(pins.get("/pins/0123456789abcdef").await.0, 404);

    // Requests survive a restart, and so do their pins.
    let peer = mirror.peer_id();
    mirror.shutdown().await.unwrap();
    mirror = start_pinning_node(&mirror_root).await;
    assert_eq!(mirror.peer_id(), peer);
    pins.base = format!("http://{}", mirror.pins_tcp_addr().unwrap());
    let (status, again) = pins.get(&format!("/pins/{requestid}")).await;
    assert_eq!((status, &again["status"]), (200, &json!("pinned")));

    // Replacing: a new request id, the old one gone, its pin let go once the new one
    // holds the blocks.
    let renamed = json!({"cid": head.to_string(), "name": "physics, renamed"});
    let (status, replaced) = pins
        .call(
            "POST",
            "/pins/{requestid}",
            &format!("/pins/{requestid}"),
            Some(renamed),
            None,
        )
        .await;
    assert_eq!(status, 202, "{replaced}");
    let new_id = replaced["requestid"].as_str().unwrap().to_string();
    assert_ne!(new_id, requestid);
    pins.wait_for(&new_id, "pinned").await;
    assert_eq!(pins.get(&format!("/pins/{requestid}")).await.0, 404);
    let reasons = on_node(&mirror, move |node| pin_reasons(node, &head)).await;
    assert_eq!(reasons, vec![format!("pin-request:{new_id}")]);

    // Removing lets go of the pin.
    let path = format!("/pins/{new_id}");
    let (status, body) = pins
        .call("DELETE", "/pins/{requestid}", &path, None, None)
        .await;
    assert_eq!((status, body), (202, Value::Null));
    assert_eq!(pins.get(&path).await.0, 404);
    assert!(on_node(&mirror, move |node| pin_reasons(node, &head))
        .await
        .is_empty());

    // The browser-facing address knows nothing of /pins.
    let page = reqwest::Client::new();
    let web = format!("http://{}/pins", mirror.http_addr());
    let token = pins.token.clone();
    let got = page
        .get(&web)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .status();
    let posted = page
        .post(&web)
        .bearer_auth(&token)
        .json(&json!({"cid": head.to_string()}))
        .send()
        .await
        .unwrap()
        .status();
    assert!(
        got.is_client_error() && posted.is_client_error(),
        "{got} {posted}"
    );

    // Every exchange as the document says; a wrong answer is caught.
    let mut exchanges = pins.exchanges.clone();
    exchanges.push(json!({"label": "broken on purpose", "kind": "response", "method": "GET",
        "path": "/pins/{requestid}", "status": 200,
        "body": {"requestid": "x", "status": "done", "created": "noon", "pin": {"cid": "x"}, "delegates": []}}));
    let checked = check_against_spec(spec.await.unwrap(), exchanges).await;
    let failures = checked["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{checked}");
    assert_eq!(failures[0]["label"], "broken on purpose");
    assert!(checked["checked"].as_u64().unwrap() >= 25, "{checked}");

    mirror.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
}

/// Runs tests/interop/pins-openapi.mjs over the exchanges; returns its report.
pub async fn check_against_spec(spec: std::path::PathBuf, exchanges: Vec<Value>) -> Value {
    tokio::task::spawn_blocking(move || {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), serde_json::to_vec(&exchanges).unwrap()).unwrap();
        let output = tools::node_script("pins-openapi.mjs")
            .arg(&spec)
            .arg(file.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "pins-openapi.mjs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    })
    .await
    .unwrap()
}

/// The standard output of `oermesh --repo ROOT ARGS...`, which must succeed.
async fn oermesh_cli(root: &std::path::Path, args: &[&str]) -> String {
    let root = root.to_path_buf();
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_oermesh"))
            .arg("--repo")
            .arg(root)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// Sets `[replication] pinning_services` in a repository's config.toml.
fn use_pinning_service(root: &std::path::Path, service: &Daemon) {
    if !root.join("config.toml").exists() {
        Node::open_or_init(root).unwrap();
    }
    let token = std::fs::read_to_string(service.repo_root().join("pins.token")).unwrap();
    let url = format!("http://{}", service.pins_tcp_addr().unwrap());
    let path = root.join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "\npinning_services = []\n",
        &format!(
            "\npinning_services = [{{ name = \"library\", url = \"{url}\", token = \"{}\" }}]\n",
            token.trim()
        ),
    );
    assert!(text.contains("name = \"library\""));
    std::fs::write(path, text).unwrap();
}

fn remote_pins(node: &Node, id: &str) -> Vec<oermesh::pinning::RemotePin> {
    oermesh::pinning::RemotePins::open(node.store().db())
        .unwrap()
        .of_collection(id)
        .unwrap()
}

/// Waits until `daemon` has `library` holding version `seq` of collection `id`.
async fn wait_for_remote_pin(daemon: &Daemon, id: &str, seq: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let id = id.to_string();
        let pins = on_node(daemon, move |node| remote_pins(node, &id)).await;
        if pins
            .iter()
            .any(|pin| pin.seq == seq && pin.status.as_str() == "pinned")
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: version {seq} not pinned remotely after 90 s: {pins:?}",
            daemon.peer_id()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_and_follower_ask_a_pinning_service_to_pin_each_version() {
    let spec = tokio::task::spawn_blocking(|| tools::pinning_service_spec().to_path_buf());
    let dir = tempfile::tempdir().unwrap();
    let library = start_pinning_node(&dir.path().join("library")).await;
    let publisher_root = dir.path().join("publisher");
    use_pinning_service(&publisher_root, &library);
    let publisher = start_node(&publisher_root, vec![]).await;
    let id = on_node(&publisher, |node| {
        let id = prepare_collection(node, "biology", 2);
        node.collection_publish("biology").unwrap();
        id
    })
    .await
    .to_string();
    let follower_root = dir.path().join("follower");
    use_pinning_service(&follower_root, &library);
    let follower = start_node(&follower_root, vec![address(&publisher)]).await;
    let followed = id.clone();
    on_node(&follower, move |node| {
        node.trust_add(&followed).unwrap();
        node.follow(&followed, false).unwrap();
    })
    .await;

    // Both ask the library for version 1, naming themselves as origins; it fetches
    // from them over bitswap.
    wait_for_remote_pin(&publisher, &id, 1).await;
    wait_for_remote_pin(&follower, &id, 1).await;
    let mut pins = PinsClient::new(&library);
    let meta: String = url::form_urlencoded::byte_serialize(
        json!({"oermesh_collection": id}).to_string().as_bytes(),
    )
    .collect();
    let (_, listed) = pins.get(&format!("/pins?meta={meta}")).await;
    assert_eq!(listed["count"], 2, "{listed}");
    let origins: Vec<&str> = listed["results"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|status| status["pin"]["origins"].as_array().unwrap())
        .map(|origin| origin.as_str().unwrap())
        .collect();
    for node in [&publisher, &follower] {
        let peer = node.peer_id().to_string();
        assert!(origins.iter().any(|o| o.ends_with(&peer)), "{origins:?}");
    }
    assert!(publisher.bitswap().stat().blocks_sent + follower.bitswap().stat().blocks_sent > 0);

    // A new version replaces the request for the old one.
    on_node(&publisher, |node| {
        crate::network::publish_next(node, "biology")
    })
    .await;
    wait_for_remote_pin(&publisher, &id, 2).await;
    wait_for_remote_pin(&follower, &id, 2).await;
    let (_, listed) = pins
        .get(&format!(
            "/pins?meta={meta}&status=queued,pinning,pinned,failed"
        ))
        .await;
    assert_eq!(listed["count"], 2, "{listed}");
    assert!(
        listed["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["pin"]["meta"]["oermesh_version"] == "2"),
        "{listed}"
    );

    // `follow status` shows it.
    let text = oermesh_cli(&follower_root, &["follow", "status", &id]).await;
    assert!(
        text.contains("remote pin at library: version 2 pinned"),
        "{text}"
    );
    // ... and `collection show` on the publisher, which does not follow its own
    // collection.
    let text = oermesh_cli(&publisher_root, &["collection", "show", &id]).await;
    assert!(
        text.contains("remote pin at library: version 2 pinned"),
        "{text}"
    );

    let checked = check_against_spec(spec.await.unwrap(), pins.exchanges.clone()).await;
    assert_eq!(checked["failures"], json!([]), "{checked}");

    follower.shutdown().await.unwrap();
    publisher.shutdown().await.unwrap();
    library.shutdown().await.unwrap();
}
