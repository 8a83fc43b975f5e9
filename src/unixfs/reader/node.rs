//! Decoding UnixFS nodes: what a block is (file data, directory, shard, symlink), with
//! the size checks that every read relies on.

use cid::Cid;

use super::{malformed, Entry, EntryKind, ReadError};
use crate::block::{codec, BlockGet};
use crate::links::get_verified;
use crate::unixfs::hamt;
use crate::unixfs::pb::{DataType, PbLink, PbNode, UnixfsData};

/// A child of a file node with the content size its parent declares for it.
pub(super) struct FileChild {
    pub(super) cid: Cid,
    pub(super) size: u64,
}

/// Content-bearing node: a raw block, or a UnixFS File or Raw node. Its content is
/// `data` followed by the content of each child in order.
pub(super) struct FileNode {
    pub(super) kind: EntryKind,
    pub(super) data: Vec<u8>,
    pub(super) children: Vec<FileChild>,
    pub(super) size: u64,
}

/// A node of a HAMT-sharded directory, its fanout checked.
pub(super) struct HamtShard {
    pub(super) links: Vec<PbLink>,
    pub(super) fanout: u64,
}

pub(super) enum Node {
    File(FileNode),
    Directory(Vec<PbLink>),
    Hamt(HamtShard),
    Symlink(Vec<u8>),
}

pub(super) fn load<B: BlockGet + ?Sized>(store: &B, cid: &Cid) -> Result<Node, ReadError> {
    decode_node(cid, get_verified(store, cid)?)
}

pub(super) fn decode_node(cid: &Cid, block: Vec<u8>) -> Result<Node, ReadError> {
    match cid.codec() {
        codec::RAW => {
            let size = block.len() as u64;
            Ok(Node::File(FileNode {
                kind: EntryKind::Raw,
                data: block,
                children: Vec::new(),
                size,
            }))
        }
        codec::DAG_PB => decode_dag_pb(cid, &block),
        other => Err(ReadError::UnsupportedCodec {
            cid: *cid,
            codec: other,
        }),
    }
}

fn decode_dag_pb(cid: &Cid, block: &[u8]) -> Result<Node, ReadError> {
    let node = PbNode::decode(block).map_err(|err| malformed(cid, err.to_string()))?;
    let data = node
        .data
        .ok_or_else(|| malformed(cid, "dag-pb node without UnixFS data"))?;
    let unixfs = UnixfsData::decode(&data).map_err(|err| malformed(cid, err.to_string()))?;
    match unixfs.data_type {
        DataType::File | DataType::Raw => {
            if unixfs.blocksizes.len() != node.links.len() {
                return Err(malformed(
                    cid,
                    format!(
                        "{} links but {} blocksizes",
                        node.links.len(),
                        unixfs.blocksizes.len()
                    ),
                ));
            }
            let inline = unixfs.data.unwrap_or_default();
            let total = unixfs
                .blocksizes
                .iter()
                .try_fold(inline.len() as u64, |sum, size| sum.checked_add(*size))
                .ok_or_else(|| malformed(cid, "blocksizes overflow"))?;
            if let Some(filesize) = unixfs.filesize {
                if filesize != total {
                    return Err(ReadError::SizeMismatch {
                        cid: *cid,
                        declared: filesize,
                        actual: total,
                    });
                }
            }
            let children = node
                .links
                .into_iter()
                .zip(unixfs.blocksizes)
                .map(|(link, size)| FileChild {
                    cid: link.cid,
                    size,
                })
                .collect();
            let kind = if unixfs.data_type == DataType::File {
                EntryKind::File
            } else {
                EntryKind::Raw
            };
            Ok(Node::File(FileNode {
                kind,
                data: inline,
                children,
                size: total,
            }))
        }
        DataType::Directory => Ok(Node::Directory(node.links)),
        DataType::HamtShard => {
            if unixfs.hash_type != Some(hamt::HASH_TYPE) {
                return Err(malformed(
                    cid,
                    "HAMT shard without murmur3-x64-64 hash type",
                ));
            }
            let fanout = unixfs
                .fanout
                .ok_or_else(|| malformed(cid, "HAMT shard without fanout"))?;
            if hamt::fanout_bits(fanout).is_none() {
                return Err(malformed(cid, format!("unsupported HAMT fanout {fanout}")));
            }
            Ok(Node::Hamt(HamtShard {
                links: node.links,
                fanout,
            }))
        }
        DataType::Symlink => Ok(Node::Symlink(unixfs.data.unwrap_or_default())),
        DataType::Metadata => Err(malformed(cid, "UnixFS Metadata nodes are not supported")),
    }
}

/// How a file node's content is laid out: `inline` bytes of its own data, then each
/// child's content in order, with the size its parent declares for it. For walking a
/// byte range without reading the leaves (the block exchange does, on both ends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLayout {
    pub inline: u64,
    pub children: Vec<(Cid, u64)>,
}

/// The layout of the file (or raw) node `cid` whose verified bytes are `block`.
pub fn file_layout(cid: &Cid, block: &[u8]) -> Result<FileLayout, ReadError> {
    if cid.codec() == codec::RAW {
        return Ok(FileLayout {
            inline: block.len() as u64,
            children: Vec::new(),
        });
    }
    match decode_node(cid, block.to_vec())? {
        Node::File(file) => Ok(FileLayout {
            inline: file.data.len() as u64,
            children: file
                .children
                .into_iter()
                .map(|child| (child.cid, child.size))
                .collect(),
        }),
        _ => Err(ReadError::NotAFile(*cid)),
    }
}

/// The kind and size of the node `cid` names.
pub fn stat<B: BlockGet + ?Sized>(store: &B, cid: &Cid) -> Result<Entry, ReadError> {
    let block = get_verified(store, cid)?;
    let block_len = block.len();
    Ok(match decode_node(cid, block)? {
        Node::File(file) => Entry {
            kind: file.kind,
            size: file.size,
        },
        Node::Directory(links) => Entry {
            kind: EntryKind::Directory,
            size: dag_size(block_len, &links),
        },
        Node::Hamt(shard) => Entry {
            kind: EntryKind::Directory,
            size: dag_size(block_len, &shard.links),
        },
        Node::Symlink(target) => Entry {
            kind: EntryKind::Symlink,
            size: target.len() as u64,
        },
    })
}

fn dag_size(block_len: usize, links: &[PbLink]) -> u64 {
    links.iter().fold(block_len as u64, |sum, link| {
        sum.saturating_add(link.tsize.unwrap_or(0))
    })
}
