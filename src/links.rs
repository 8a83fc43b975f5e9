//! Which blocks a block points to, and walking a DAG from its roots.
//!
//! Export, garbage-collection marking and repository verification all need the same
//! walk: every reachable block once, each read through a [`BlockGet`] so that a corrupt
//! stored block stops the walk instead of being passed on.

use std::collections::HashSet;

use cid::Cid;
use ipld_core::ipld::Ipld;

use crate::block::{codec, hash_code, BlockError, BlockGet};
use crate::unixfs::pb::{PbError, PbNode};

/// Multicodec of the `identity` format: opaque bytes, like raw.
const IDENTITY_CODEC: u64 = 0x00;

/// Why the links of a block could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("block {cid} is in format 0x{codec:x}, whose links oermesh cannot read")]
    UnsupportedCodec { cid: Cid, codec: u64 },
    #[error("block {cid} is not valid dag-pb: {source}")]
    DagPb {
        cid: Cid,
        #[source]
        source: PbError,
    },
    #[error("block {cid} is not valid dag-cbor: {reason}")]
    DagCbor { cid: Cid, reason: String },
    #[error(transparent)]
    Block(#[from] BlockError),
}

/// The CIDs `data` links to, in the order they appear. `data` must be the block `cid` names.
pub fn links(cid: &Cid, data: &[u8]) -> Result<Vec<Cid>, LinkError> {
    match cid.codec() {
        codec::RAW | IDENTITY_CODEC => Ok(Vec::new()),
        codec::DAG_PB => {
            let node =
                PbNode::decode(data).map_err(|source| LinkError::DagPb { cid: *cid, source })?;
            Ok(node.links.into_iter().map(|link| link.cid).collect())
        }
        codec::DAG_CBOR => {
            let value: Ipld =
                serde_ipld_dagcbor::from_slice(data).map_err(|err| LinkError::DagCbor {
                    cid: *cid,
                    reason: err.to_string(),
                })?;
            Ok(cbor_links(&value))
        }
        other => Err(LinkError::UnsupportedCodec {
            cid: *cid,
            codec: other,
        }),
    }
}

/// Every link in an IPLD value, in document order. Iterative so that a deeply nested
/// value cannot exhaust the stack.
fn cbor_links(value: &Ipld) -> Vec<Cid> {
    let mut found = Vec::new();
    let mut pending = vec![value];
    while let Some(value) = pending.pop() {
        match value {
            Ipld::Link(cid) => found.push(*cid),
            Ipld::List(items) => pending.extend(items.iter().rev()),
            Ipld::Map(entries) => pending.extend(entries.values().rev()),
            _ => {}
        }
    }
    found
}

/// Reads a block through `store`. Identity CIDs carry their bytes inline, so they are
/// answered without asking the store (which may not hold them at all).
pub fn get_verified<B: BlockGet + ?Sized>(store: &B, cid: &Cid) -> Result<Vec<u8>, BlockError> {
    if cid.hash().code() == hash_code::IDENTITY {
        return Ok(cid.hash().digest().to_vec());
    }
    store.get_block(cid)
}

/// Visits every block reachable from `roots` once, depth first, parents before children,
/// children in link order, and returns how many blocks were visited.
///
/// Memory holds the set of visited CIDs and the CIDs still to visit, never block bytes
/// beyond the one being visited. The first error (a missing or corrupt block, an
/// undecodable one, or one from `visit`) stops the walk.
pub fn walk_dag<B, E, F>(store: &B, roots: &[Cid], mut visit: F) -> Result<u64, E>
where
    B: BlockGet + ?Sized,
    E: From<LinkError>,
    F: FnMut(&Cid, &[u8]) -> Result<(), E>,
{
    let mut visited: HashSet<Cid> = HashSet::new();
    let mut pending: Vec<Cid> = roots.iter().rev().copied().collect();
    while let Some(cid) = pending.pop() {
        if !visited.insert(cid) {
            continue;
        }
        let data = get_verified(store, &cid).map_err(LinkError::from)?;
        let children = links(&cid, &data)?;
        visit(&cid, &data)?;
        pending.extend(
            children
                .into_iter()
                .rev()
                .filter(|child| !visited.contains(child)),
        );
    }
    Ok(visited.len() as u64)
}

/// A problem a lenient walk found and stepped over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkProblem {
    Missing,
    Undecodable(String),
}

/// Like [`walk_dag`] but reports missing, corrupt and undecodable blocks and goes on;
/// only a failure of the store itself stops it. Blocks in `skip` are not visited.
pub fn walk_lenient<B: BlockGet + ?Sized>(
    store: &B,
    roots: &[Cid],
    skip: &[Cid],
    report: &mut dyn FnMut(&Cid, WalkProblem),
) -> Result<(), BlockError> {
    let mut seen: HashSet<Cid> = skip.iter().copied().collect();
    let mut stack: Vec<Cid> = roots.iter().rev().copied().collect();
    while let Some(cid) = stack.pop() {
        if !seen.insert(cid) {
            continue;
        }
        let data = match get_verified(store, &cid) {
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
            Ok(children) => stack.extend(
                children
                    .into_iter()
                    .rev()
                    .filter(|child| !seen.contains(child)),
            ),
            Err(err) => report(&cid, WalkProblem::Undecodable(err.to_string())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{cid_v1, BlockPut, MemoryBlocks};
    use crate::unixfs::pb::PbLink;
    use std::collections::BTreeMap;

    #[test]
    fn dag_cbor_links_are_found_at_any_depth() {
        let a = cid_v1(codec::RAW, b"a");
        let b = cid_v1(codec::RAW, b"b");
        let mut inner = BTreeMap::new();
        inner.insert(
            "deep".to_string(),
            Ipld::List(vec![Ipld::Integer(1), Ipld::Link(b)]),
        );
        let mut outer = BTreeMap::new();
        outer.insert("first".to_string(), Ipld::Link(a));
        outer.insert("second".to_string(), Ipld::Map(inner));
        let bytes = serde_ipld_dagcbor::to_vec(&Ipld::Map(outer)).unwrap();
        let cid = cid_v1(codec::DAG_CBOR, &bytes);
        assert_eq!(links(&cid, &bytes).unwrap(), vec![a, b]);
    }

    #[test]
    fn unknown_codec_and_bad_bytes_are_errors() {
        let json = Cid::new_v1(0x0129, crate::block::sha256_multihash(b"{}"));
        assert!(matches!(
            links(&json, b"{}"),
            Err(LinkError::UnsupportedCodec { codec: 0x0129, .. })
        ));
        let pb = cid_v1(codec::DAG_PB, b"\xff");
        assert!(matches!(links(&pb, b"\xff"), Err(LinkError::DagPb { .. })));
        let cbor = cid_v1(codec::DAG_CBOR, b"\xff");
        assert!(matches!(
            links(&cbor, b"\xff"),
            Err(LinkError::DagCbor { .. })
        ));
    }

    #[test]
    fn walk_visits_shared_blocks_once_in_depth_first_order() {
        let store = MemoryBlocks::new();
        let put = |codec: u64, data: Vec<u8>| {
            let cid = cid_v1(codec, &data);
            store.put_block(&cid, &data).unwrap();
            cid
        };
        let leaf = put(codec::RAW, b"shared".to_vec());
        let link = |cid| PbLink {
            cid,
            name: Some(String::new()),
            tsize: None,
        };
        let left = put(
            codec::DAG_PB,
            PbNode {
                links: vec![link(leaf)],
                data: None,
            }
            .encode(),
        );
        let right = put(
            codec::DAG_PB,
            PbNode {
                links: vec![link(leaf), link(left)],
                data: None,
            }
            .encode(),
        );
        let root = put(
            codec::DAG_PB,
            PbNode {
                links: vec![link(left), link(right)],
                data: None,
            }
            .encode(),
        );
        let mut order = Vec::new();
        let count = walk_dag::<_, LinkError, _>(&store, &[root, leaf], |cid, _| {
            order.push(*cid);
            Ok(())
        })
        .unwrap();
        assert_eq!(order, vec![root, left, leaf, right]);
        assert_eq!(count, 4);
    }
}
