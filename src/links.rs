//! Links between blocks, whatever their format, and walks over whole DAGs.

use std::collections::HashSet;

use cid::Cid;
use ipld_core::ipld::Ipld;

use crate::block::{codec, hash_code, BlockError, BlockGet};
use crate::unixfs::pb::PbNode;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("block {cid} is not valid dag-pb: {reason}")]
    DagPb { cid: Cid, reason: String },
    #[error("block {cid} is not valid dag-cbor: {reason}")]
    DagCbor { cid: Cid, reason: String },
    #[error("block {cid} uses codec 0x{codec:x}, which oermesh cannot follow links in")]
    UnknownCodec { cid: Cid, codec: u64 },
    #[error(transparent)]
    Block(#[from] BlockError),
}

/// The CIDs a block links to, in the order they appear.
pub fn links(cid: &Cid, data: &[u8]) -> Result<Vec<Cid>, LinkError> {
    match cid.codec() {
        codec::RAW => Ok(Vec::new()),
        codec::DAG_PB => PbNode::decode(data)
            .map(|node| node.links.into_iter().map(|link| link.cid).collect())
            .map_err(|err| LinkError::DagPb { cid: *cid, reason: err.to_string() }),
        codec::DAG_CBOR => {
            let value: Ipld = serde_ipld_dagcbor::from_slice(data)
                .map_err(|err| LinkError::DagCbor { cid: *cid, reason: err.to_string() })?;
            let mut out = Vec::new();
            collect_cbor_links(&value, &mut out);
            Ok(out)
        }
        codec => Err(LinkError::UnknownCodec { cid: *cid, codec }),
    }
}

fn collect_cbor_links(value: &Ipld, out: &mut Vec<Cid>) {
    match value {
        Ipld::Link(cid) => out.push(*cid),
        Ipld::List(items) => items.iter().for_each(|item| collect_cbor_links(item, out)),
        Ipld::Map(map) => map.values().for_each(|item| collect_cbor_links(item, out)),
        _ => {}
    }
}

/// Visits every block reachable from `roots` once, depth first, parents before
/// children. Any block that is missing, corrupt or undecodable stops the walk.
pub fn walk<B: BlockGet + ?Sized>(
    store: &B,
    roots: &[Cid],
    mut visit: impl FnMut(&Cid, &[u8]),
) -> Result<(), LinkError> {
    let mut seen: HashSet<Cid> = HashSet::new();
    let mut stack: Vec<Cid> = roots.iter().rev().copied().collect();
    while let Some(cid) = stack.pop() {
        if !seen.insert(cid) {
            continue;
        }
        let data = store.get_block(&cid)?;
        visit(&cid, &data);
        if cid.hash().code() == hash_code::IDENTITY && cid.codec() == codec::RAW {
            continue;
        }
        let children = links(&cid, &data)?;
        stack.extend(children.into_iter().rev().filter(|child| !seen.contains(child)));
    }
    Ok(())
}

/// A problem a lenient walk found and stepped over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkProblem {
    Missing,
    Undecodable(String),
}

/// Like [`walk`] but reports missing, corrupt and undecodable blocks and goes on;
/// only a failure of the store itself stops it.
pub fn walk_lenient<B: BlockGet + ?Sized>(
    store: &B,
    roots: &[Cid],
    report: &mut dyn FnMut(&Cid, WalkProblem),
) -> Result<(), BlockError> {
    let mut seen: HashSet<Cid> = HashSet::new();
    let mut stack: Vec<Cid> = roots.iter().rev().copied().collect();
    while let Some(cid) = stack.pop() {
        if !seen.insert(cid) {
            continue;
        }
        let data = match store.get_block(&cid) {
            Ok(data) => data,
            Err(BlockError::NotFound(_)) => {
                report(&cid, WalkProblem::Missing);
                continue;
            }
            Err(err @ (BlockError::Corrupt(_) | BlockError::UnsupportedHash { .. })) => {
                report(&cid, WalkProblem::Undecodable(err.to_string()));
                continue;
            }
            Err(err) => return Err(err),
        };
        match links(&cid, &data) {
            Ok(children) => stack.extend(children.into_iter().rev().filter(|child| !seen.contains(child))),
            Err(err) => report(&cid, WalkProblem::Undecodable(err.to_string())),
        }
    }
    Ok(())
}
