//! Which blocks a block points to, and walking a DAG from its roots.
//!
//! Export, garbage-collection marking, repository verification, pinning and the
//! completeness check of an import all need the same walk: every reachable block once.
//! [`walk`] is that walk; each user says how it learns a block's children.

use std::collections::HashSet;

use cid::Cid;
use ipld_core::ipld::Ipld;

use crate::block::{codec, hash_code, BlockError, BlockGet};
use crate::dag_pb::{PbError, PbNode};

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

/// The one DAG walk: visits every block reachable from `roots` once, depth first,
/// parents before children, children in link order, and returns how many blocks were
/// visited. Blocks in `skip` are neither visited nor followed.
///
/// `step` is handed each block's CID and returns the CIDs to follow from it: it decides
/// how to learn them (reading the block, looking a raw leaf up, asking a map of blocks
/// already in memory) and what a missing block means (an error, or a note and no
/// children). The first error stops the walk. Memory holds the CIDs visited and those
/// still to visit, never block bytes.
pub fn walk<E>(
    roots: &[Cid],
    skip: &[Cid],
    mut step: impl FnMut(&Cid) -> Result<Vec<Cid>, E>,
) -> Result<u64, E> {
    let mut visited: HashSet<Cid> = skip.iter().copied().collect();
    let skipped = visited.len();
    let mut pending: Vec<Cid> = roots.iter().rev().copied().collect();
    while let Some(cid) = pending.pop() {
        if !visited.insert(cid) {
            continue;
        }
        let children = step(&cid)?;
        pending.extend(
            children
                .into_iter()
                .rev()
                .filter(|child| !visited.contains(child)),
        );
    }
    Ok((visited.len() - skipped) as u64)
}

/// The links of the block `cid` in `store`, or `None` if the store does not have it.
/// Raw and identity blocks have no links, so they are only looked up, not read.
pub fn children_if_present<B: BlockGet + ?Sized>(
    store: &B,
    cid: &Cid,
) -> Result<Option<Vec<Cid>>, LinkError> {
    if matches!(cid.codec(), codec::RAW | IDENTITY_CODEC) {
        return Ok(store.has_block(cid)?.then(Vec::new));
    }
    match get_verified(store, cid) {
        Ok(data) => Ok(Some(links(cid, &data)?)),
        Err(BlockError::NotFound(_)) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// Visits every block reachable from `roots` once, in the order of [`walk`], handing
/// `visit` its verified bytes; returns how many blocks were visited. A missing, corrupt
/// or undecodable block, or an error from `visit`, stops the walk.
pub fn walk_dag<B, E, F>(store: &B, roots: &[Cid], mut visit: F) -> Result<u64, E>
where
    B: BlockGet + ?Sized,
    E: From<LinkError>,
    F: FnMut(&Cid, &[u8]) -> Result<(), E>,
{
    walk(roots, &[], |cid| {
        let data = get_verified(store, cid).map_err(LinkError::from)?;
        let children = links(cid, &data)?;
        visit(cid, &data)?;
        Ok(children)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{cid_v1, BlockPut, MemoryBlocks};
    use crate::dag_pb::PbLink;
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
