//! Provenance: the tree of works a record adapts, followed through `is-based-on` links.
//!
//! The walk never fails as a whole: a parent that is missing, invalid, already shown, part of a
//! cycle or beyond the depth cap becomes a node saying so.

use std::collections::HashSet;

use cid::Cid;

use super::record::Record;
use super::trust::TrustedPublishers;
use crate::block::{self, BlockError, BlockGet};

/// How far up the tree the walk goes by default.
pub const DEFAULT_MAX_DEPTH: usize = 32;
/// A bound on the work one walk does, whatever the shape of the graph.
pub const MAX_NODES: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum NodeStatus {
    /// Decoded strictly and the signature verified.
    Verified,
    /// Present but refused; the reason is the decoding or verification error.
    Invalid(String),
    /// Not in the local store (or the store could not be read; the reason is kept).
    Missing(String),
    /// Already expanded elsewhere in this tree.
    AlreadyShown,
    /// A link back to one of its own descendants.
    Cycle,
    /// Not expanded: the depth cap or the node budget was reached.
    Truncated,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProvenanceNode {
    #[serde(with = "crate::block::cid_text")]
    pub cid: Cid,
    /// What the child changed, from the child's `is-based-on` entry (none for the root).
    pub change_note: Option<String>,
    pub status: NodeStatus,
    pub title: Option<String>,
    pub licence: Option<String>,
    pub publisher: Option<String>,
    pub trusted: bool,
    pub retracted: bool,
    pub parents: Vec<ProvenanceNode>,
}

struct Walk<'a, S: ?Sized, R> {
    store: &'a S,
    trusted: &'a TrustedPublishers,
    is_retracted: R,
    max_depth: usize,
    expanded: HashSet<Cid>,
    path: Vec<Cid>,
    nodes: usize,
}

/// Walks the provenance of `root` up to `max_depth` levels of parents.
pub fn walk<S: BlockGet + ?Sized, R: Fn(&Cid) -> bool>(
    store: &S,
    trusted: &TrustedPublishers,
    is_retracted: R,
    root: &Cid,
    max_depth: usize,
) -> ProvenanceNode {
    let mut walk = Walk {
        store,
        trusted,
        is_retracted,
        max_depth,
        expanded: HashSet::new(),
        path: Vec::new(),
        nodes: 0,
    };
    walk.node(root, None, 0)
}

impl<S: BlockGet + ?Sized, R: Fn(&Cid) -> bool> Walk<'_, S, R> {
    fn node(&mut self, cid: &Cid, change_note: Option<String>, depth: usize) -> ProvenanceNode {
        self.nodes += 1;
        let mut node = ProvenanceNode {
            cid: *cid,
            change_note,
            status: NodeStatus::Verified,
            title: None,
            licence: None,
            publisher: None,
            trusted: false,
            retracted: (self.is_retracted)(cid),
            parents: Vec::new(),
        };
        if self.path.contains(cid) {
            node.status = NodeStatus::Cycle;
            return node;
        }
        if self.expanded.contains(cid) {
            node.status = NodeStatus::AlreadyShown;
            return node;
        }
        if depth > self.max_depth || self.nodes > MAX_NODES {
            node.status = NodeStatus::Truncated;
            return node;
        }
        let bytes = match self
            .store
            .get_block(cid)
            .and_then(|bytes| block::verify(cid, &bytes).map(|_| bytes))
        {
            Ok(bytes) => bytes,
            Err(BlockError::NotFound(_)) => {
                node.status = NodeStatus::Missing("not in the local store".into());
                return node;
            }
            Err(other) => {
                node.status = NodeStatus::Missing(other.to_string());
                return node;
            }
        };
        let record = match Record::decode_and_verify(&bytes) {
            Ok(record) => record,
            Err(error) => {
                node.status = NodeStatus::Invalid(error.to_string());
                return node;
            }
        };
        node.trusted = self.trusted.is_trusted(&record.publisher);
        node.title = Some(record.title.clone());
        node.licence = Some(record.licence.clone());
        node.publisher = Some(record.publisher.clone());
        self.expanded.insert(*cid);
        self.path.push(*cid);
        for parent in &record.based_on {
            let child = self.node(&parent.record, Some(parent.note.clone()), depth + 1);
            node.parents.push(child);
        }
        self.path.pop();
        node
    }
}

/// Renders the tree as indented text, one node per line.
pub fn render(root: &ProvenanceNode) -> String {
    let mut out = String::new();
    render_node(root, "", "", &mut out);
    out
}

fn describe(node: &ProvenanceNode) -> String {
    let mut line = node.cid.to_string();
    if let Some(title) = &node.title {
        line.push_str(&format!(" \u{201c}{title}\u{201d}"));
    }
    if let Some(licence) = &node.licence {
        line.push_str(&format!(" [{licence}]"));
    }
    if let Some(publisher) = &node.publisher {
        let trust = if node.trusted { "trusted" } else { "UNTRUSTED" };
        line.push_str(&format!(" by {publisher} ({trust})"));
    }
    line.push_str(&match &node.status {
        NodeStatus::Verified => " signature ok".to_string(),
        NodeStatus::Invalid(reason) => format!(" INVALID: {reason}"),
        NodeStatus::Missing(reason) => format!(" MISSING: {reason}"),
        NodeStatus::AlreadyShown => " (shown above)".to_string(),
        NodeStatus::Cycle => " CYCLE: links back to its own descendant".to_string(),
        NodeStatus::Truncated => " (not expanded: depth or size limit)".to_string(),
    });
    if node.retracted {
        line.push_str(" RETRACTED");
    }
    if let Some(note) = &node.change_note {
        line.push_str(&format!(" \u{2014} changed: {}", note.replace('\n', " ")));
    }
    line
}

fn render_node(node: &ProvenanceNode, first_prefix: &str, rest_prefix: &str, out: &mut String) {
    out.push_str(first_prefix);
    out.push_str(&describe(node));
    out.push('\n');
    let count = node.parents.len();
    for (i, parent) in node.parents.iter().enumerate() {
        let last = i + 1 == count;
        let branch = if last {
            "\u{2514}\u{2500}\u{2500} "
        } else {
            "\u{251c}\u{2500}\u{2500} "
        };
        let continuation = if last { "    " } else { "\u{2502}   " };
        render_node(
            parent,
            &format!("{rest_prefix}{branch}"),
            &format!("{rest_prefix}{continuation}"),
            out,
        );
    }
}
