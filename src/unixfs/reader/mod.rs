//! Reading UnixFS DAGs: resolving paths, listing directories, streaming files and byte
//! ranges, and writing whole trees to disk.
//!
//! Any valid UnixFS DAG is accepted, not only the ones oermesh builds: balanced or trickle
//! layouts (children are followed in order; `blocksizes` serve only to skip subtrees),
//! any chunk size, CIDv0 and CIDv1 mixed freely, raw leaves and dag-pb leaves, identity
//! CIDs, plain and HAMT-sharded directories.
//!
//! Every block comes through a [`BlockGet`](crate::block::BlockGet), which returns only verified bytes; identity
//! CIDs are answered from the CID itself. Sizes are cross-checked as the DAG is read: a
//! node's `filesize` must equal its inline data plus its `blocksizes`, and each child's
//! actual size must equal the size its parent declares for it. The check happens before
//! the child's bytes are written, so a DAG that lies about sizes ends in
//! [`ReadError::SizeMismatch`] rather than in silently wrong output.
//!
//! `node` decodes what a block is; `dir` resolves paths and lists directories (HAMT
//! lookups through [`crate::unixfs::hamt`]); `file` streams files and ranges, fetching
//! ahead on one pool of threads shared by every read; `tree` writes trees to disk.

mod dir;
mod file;
mod node;
mod tree;

use std::io;
use std::path::PathBuf;

use cid::Cid;

use crate::block::BlockError;

pub use dir::{list_dir, list_dir_page, resolve, DirPage};
pub use file::{read_file, read_range};
pub use node::{file_layout, stat, FileLayout};
pub use tree::get_tree;

/// The deepest DAG the reader follows, counting file levels, directory nesting and HAMT
/// shard levels. Real DAGs stay far below it; hashes rule out cycles, and this bounds
/// what a hostile DAG can make the reader do.
pub const MAX_DEPTH: usize = 64;

/// What a CID names, as far as UnixFS is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A UnixFS file.
    File,
    /// A directory, plain or HAMT-sharded.
    Directory,
    /// A symbolic link; its size is the length of its target.
    Symlink,
    /// Bytes without UnixFS metadata: a raw block or a UnixFS Raw node. Read like a file.
    Raw,
}

/// The kind and size of a UnixFS node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    /// Files and raw nodes: bytes of content. Symlinks: bytes of target. Directories:
    /// cumulative size of the DAG (this block plus the Tsize of every link).
    pub size: u64,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub cid: Cid,
    pub kind: EntryKind,
    /// As [`Entry::size`], except raw-block entries, whose size is the link's Tsize so
    /// that listing does not hash every small file.
    pub size: u64,
}

/// Why a UnixFS read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("block {0} is not available")]
    NotFound(Cid),
    #[error("block {0} is corrupt: its bytes do not match its CID")]
    Corrupt(Cid),
    #[error(transparent)]
    Block(BlockError),
    #[error("{0} is not a file")]
    NotAFile(Cid),
    #[error("{0} is not a directory")]
    NotADirectory(Cid),
    #[error("directory {dir} has no entry named {segment:?}")]
    NoSuchEntry { dir: Cid, segment: Box<str> },
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("block {cid} is not valid UnixFS: {reason}")]
    Malformed { cid: Cid, reason: String },
    #[error("block {cid} has codec 0x{codec:x}, which is not UnixFS")]
    UnsupportedCodec { cid: Cid, codec: u64 },
    #[error("DAG below {cid} is more than {limit} levels deep")]
    TooDeep { cid: Cid, limit: usize },
    #[error("block {cid} holds {actual} bytes of file data, but {declared} were declared")]
    SizeMismatch {
        cid: Cid,
        declared: u64,
        actual: u64,
    },
    #[error("refusing to write directory entry {name:?} of {dir}")]
    UnsafeName { dir: Cid, name: Box<str> },
    #[error("destination {0} exists and is not an empty directory")]
    DestinationExists(PathBuf),
    #[error("cannot write {path}: {source}")]
    WritePath {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write output: {0}")]
    Io(#[from] io::Error),
}

impl From<BlockError> for ReadError {
    fn from(err: BlockError) -> Self {
        match err {
            BlockError::NotFound(cid) => ReadError::NotFound(cid),
            BlockError::Corrupt(cid) => ReadError::Corrupt(cid),
            other => ReadError::Block(other),
        }
    }
}

fn malformed(cid: &Cid, reason: impl Into<String>) -> ReadError {
    ReadError::Malformed {
        cid: *cid,
        reason: reason.into(),
    }
}
