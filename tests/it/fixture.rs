//! Nodes with content and records for the web tests: real repositories in temp dirs,
//! real daemons on loopback.

use std::collections::BTreeMap;
use std::path::Path;

use cid::Cid;
use ed25519_dalek::SigningKey;
use oermesh::daemon::{Daemon, DaemonOptions};
use oermesh::node::Node;
use oermesh::records::{Author, Educational, RecordDraft};
use oermesh::unixfs::importer::import_path;
use oermesh::unixfs::profile::Profile;

pub fn options() -> DaemonOptions {
    DaemonOptions {
        http_listen: Some("127.0.0.1:0".into()),
        listen: Some(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()]),
        mdns: Some(false),
        static_peers: None,
    }
}

pub async fn start(node: Node) -> Daemon {
    Daemon::start(node, options()).await.unwrap()
}

/// A node on a fresh or existing repository at `root`.
pub fn node(root: &Path) -> Node {
    Node::open_or_init(root).unwrap().0
}

/// Sets keys of the `[gateway]` section in a repository's config.toml.
pub fn set_gateway_config(root: &Path, settings: &[(&str, &str)]) {
    let path = root.join("config.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (key, value) in settings {
        let start = text
            .find(&format!("\n{key} = "))
            .unwrap_or_else(|| panic!("{key} not in config.toml"))
            + 1;
        let end = start + text[start..].find('\n').unwrap();
        text.replace_range(start..end, &format!("{key} = {value}"));
    }
    std::fs::write(&path, text).unwrap();
}

/// Adds a file or folder tree and pins it; returns the CID of every entry by its path
/// relative to the parent of `path` (the root is its own name).
pub fn add(node: &Node, path: &Path) -> BTreeMap<String, Cid> {
    let mut cids = BTreeMap::new();
    let batch = node.store().batch();
    let root = import_path(
        path,
        true,
        &Profile::default(),
        &batch,
        &mut |relative, imported| {
            cids.insert(relative.to_string(), imported.cid);
        },
        &|_| {},
    )
    .unwrap();
    batch.commit_and_pin(&[root.cid], "user").unwrap();
    cids
}

/// Adds bytes as one file named `name`; returns its CID.
pub fn add_bytes(node: &Node, dir: &Path, name: &str, bytes: &[u8]) -> Cid {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    add(node, &path)[name]
}

/// What a test record says; the rest is filled in.
pub struct Described<'a> {
    pub title: &'a str,
    pub language: &'a str,
    pub description: Option<&'a str>,
    pub licence: &'a str,
    pub level: &'a [&'a str],
    pub kind: &'a [&'a str],
    pub subjects: &'a [&'a str],
}

impl Default for Described<'_> {
    fn default() -> Self {
        Described {
            title: "A lesson",
            language: "en",
            description: None,
            licence: "CC-BY-4.0",
            level: &[],
            kind: &[],
            subjects: &[],
        }
    }
}

/// Signs a record for `content` with `key`; returns the record's CID.
pub fn sign(node: &Node, key: &SigningKey, content: Cid, described: Described<'_>) -> Cid {
    node.records()
        .sign_record(key, draft(content, described))
        .unwrap()
        .cid
}

/// The record draft a test describes.
pub fn draft(content: Cid, described: Described<'_>) -> RecordDraft {
    let owned = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    RecordDraft {
        content,
        title: described.title.to_string(),
        description: described.description.map(str::to_string),
        language: described.language.into(),
        authors: vec![Author {
            name: "A. Teacher".into(),
            url: None,
        }],
        licence: described.licence.into(),
        licence_url: None,
        source: None,
        based_on: vec![],
        educational: Educational {
            educational_level: owned(described.level),
            learning_resource_type: owned(described.kind),
            subjects: owned(described.subjects),
            ..Educational::default()
        },
        created: None,
    }
}

/// A publisher key this node trusts (its own).
pub fn own_key(node: &Node, name: &str) -> SigningKey {
    node.key_gen(name).unwrap();
    oermesh::keys::load(&node.root().join("keys"), name).unwrap()
}

/// A publisher this node does not trust.
pub fn stranger() -> SigningKey {
    oermesh::keys::generate_signing_key().unwrap()
}

/// Polls `check` until it holds, failing after a generous deadline.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not so after 60 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
