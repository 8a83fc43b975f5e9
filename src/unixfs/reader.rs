//! Reading UnixFS DAGs: resolving paths, listing directories, streaming files and byte
//! ranges, and writing whole trees to disk.
//!
//! Any valid UnixFS DAG is accepted, not only the ones oermesh builds: balanced or trickle
//! layouts (children are followed in order; `blocksizes` serve only to skip subtrees),
//! any chunk size, CIDv0 and CIDv1 mixed freely, raw leaves and dag-pb leaves, identity
//! CIDs, plain and HAMT-sharded directories.
//!
//! Every block comes through a [`BlockGet`], which returns only verified bytes; identity
//! CIDs are answered from the CID itself. Sizes are cross-checked as the DAG is read: a
//! node's `filesize` must equal its inline data plus its `blocksizes`, and each child's
//! actual size must equal the size its parent declares for it. The check happens before
//! the child's bytes are written, so a DAG that lies about sizes ends in
//! [`ReadError::SizeMismatch`] rather than in silently wrong output.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;

use cid::Cid;
use rayon::prelude::*;

use crate::block::{codec, BlockError, BlockGet};
use crate::links::get_verified;
use crate::unixfs::pb::{DataType, PbLink, PbNode, UnixfsData};

/// The deepest DAG the reader follows, counting file levels, directory nesting and HAMT
/// shard levels. Real DAGs stay far below it; hashes rule out cycles, and this bounds
/// what a hostile DAG can make the reader do.
pub const MAX_DEPTH: usize = 64;

/// UnixFS `hashType` of HAMT shards: murmur3-x64-64.
const HAMT_HASH_MURMUR3: u64 = 0x22;
/// Largest HAMT fanout accepted; kubo and js-unixfs use 256.
const MAX_HAMT_FANOUT: u64 = 4096;

/// Blocks fetched ahead among one node's children, and in total. Bounds memory to
/// about `PREFETCH_TOTAL` blocks while keeping every core busy hashing.
const PREFETCH_PER_NODE: usize = 8;
const PREFETCH_TOTAL: usize = 16;

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

/// A child of a file node with the content size its parent declares for it.
struct FileChild {
    cid: Cid,
    size: u64,
}

/// Content-bearing node: a raw block, or a UnixFS File or Raw node. Its content is
/// `data` followed by the content of each child in order.
struct FileNode {
    kind: EntryKind,
    data: Vec<u8>,
    children: Vec<FileChild>,
    size: u64,
}

struct HamtShard {
    links: Vec<PbLink>,
    /// Hash bits consumed per level: log2(fanout).
    bits: u32,
    /// Hex digits of the bucket index at the start of every link name.
    prefix_len: usize,
}

enum Node {
    File(FileNode),
    Directory(Vec<PbLink>),
    Hamt(HamtShard),
    Symlink(Vec<u8>),
}

fn load<B: BlockGet + ?Sized>(store: &B, cid: &Cid) -> Result<Node, ReadError> {
    decode_node(cid, get_verified(store, cid)?)
}

fn decode_node(cid: &Cid, block: Vec<u8>) -> Result<Node, ReadError> {
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
            if unixfs.hash_type != Some(HAMT_HASH_MURMUR3) {
                return Err(malformed(
                    cid,
                    "HAMT shard without murmur3-x64-64 hash type",
                ));
            }
            let fanout = unixfs
                .fanout
                .ok_or_else(|| malformed(cid, "HAMT shard without fanout"))?;
            if !fanout.is_power_of_two() || !(2..=MAX_HAMT_FANOUT).contains(&fanout) {
                return Err(malformed(cid, format!("unsupported HAMT fanout {fanout}")));
            }
            let shard = HamtShard {
                links: node.links,
                bits: fanout.trailing_zeros(),
                prefix_len: format!("{:X}", fanout - 1).len(),
            };
            Ok(Node::Hamt(shard))
        }
        DataType::Symlink => Ok(Node::Symlink(unixfs.data.unwrap_or_default())),
        DataType::Metadata => Err(malformed(cid, "UnixFS Metadata nodes are not supported")),
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

/// Follows `path` (segments separated by `/`, already percent-decoded) from `root` through
/// plain and sharded directories. An empty path, or `/`, names the root. Symlinks are not
/// followed.
pub fn resolve<B: BlockGet + ?Sized>(store: &B, root: &Cid, path: &str) -> Result<Cid, ReadError> {
    let segments = split_path(path)?;
    if segments.len() > MAX_DEPTH {
        return Err(ReadError::TooDeep {
            cid: *root,
            limit: MAX_DEPTH,
        });
    }
    let mut current = *root;
    for segment in segments {
        let found = match load(store, &current)? {
            Node::Directory(links) => links
                .iter()
                .find(|link| link.name.as_deref() == Some(segment))
                .map(|link| link.cid),
            Node::Hamt(shard) => hamt_lookup(store, &current, shard, segment)?,
            Node::File(_) | Node::Symlink(_) => return Err(ReadError::NotADirectory(current)),
        };
        current = found.ok_or_else(|| ReadError::NoSuchEntry {
            dir: current,
            segment: segment.into(),
        })?;
    }
    Ok(current)
}

fn split_path(path: &str) -> Result<Vec<&str>, ReadError> {
    let relative = path.strip_prefix('/').unwrap_or(path);
    if relative.is_empty() {
        return Ok(Vec::new());
    }
    let invalid = |reason| ReadError::InvalidPath {
        path: path.to_string(),
        reason,
    };
    relative
        .split('/')
        .map(|segment| match segment {
            "" => Err(invalid("empty segment")),
            "." | ".." => Err(invalid("`.` and `..` segments are not allowed")),
            _ if segment.contains('\0') => Err(invalid("NUL byte in segment")),
            _ => Ok(segment),
        })
        .collect()
}

/// The entries of the directory `cid`, sorted by name, HAMT shards flattened. Each
/// dag-pb entry's root block is read to learn its kind and size.
pub fn list_dir<B: BlockGet + Sync + ?Sized>(
    store: &B,
    cid: &Cid,
) -> Result<Vec<DirEntry>, ReadError> {
    let links = directory_links(store, cid, load(store, cid)?, 0)?;
    links
        .into_par_iter()
        .map(|link| {
            let (kind, size) = if link.cid.codec() == codec::RAW {
                (EntryKind::Raw, link.tsize.unwrap_or(0))
            } else {
                let entry = stat(store, &link.cid)?;
                (entry.kind, entry.size)
            };
            Ok(DirEntry {
                name: link.name,
                cid: link.cid,
                kind,
                size,
            })
        })
        .collect()
}

struct NamedLink {
    name: String,
    cid: Cid,
    tsize: Option<u64>,
}

/// A directory's links, sorted by name, shards flattened; duplicate names are an error
/// because they make the directory ambiguous.
fn directory_links<B: BlockGet + ?Sized>(
    store: &B,
    cid: &Cid,
    node: Node,
    depth: usize,
) -> Result<Vec<NamedLink>, ReadError> {
    let mut named = Vec::new();
    match node {
        Node::Directory(links) => {
            for link in links {
                let name = link
                    .name
                    .ok_or_else(|| malformed(cid, "directory link without a name"))?;
                named.push(NamedLink {
                    name,
                    cid: link.cid,
                    tsize: link.tsize,
                });
            }
        }
        Node::Hamt(shard) => collect_shard(store, cid, shard, depth, &mut named)?,
        Node::File(_) | Node::Symlink(_) => return Err(ReadError::NotADirectory(*cid)),
    }
    named.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = named.windows(2).find(|pair| pair[0].name == pair[1].name) {
        return Err(malformed(
            cid,
            format!("two entries named {:?}", pair[0].name),
        ));
    }
    Ok(named)
}

fn collect_shard<B: BlockGet + ?Sized>(
    store: &B,
    cid: &Cid,
    shard: HamtShard,
    depth: usize,
    named: &mut Vec<NamedLink>,
) -> Result<(), ReadError> {
    if depth > MAX_DEPTH {
        return Err(ReadError::TooDeep {
            cid: *cid,
            limit: MAX_DEPTH,
        });
    }
    for link in shard.links {
        let label = link
            .name
            .as_deref()
            .ok_or_else(|| malformed(cid, "HAMT link without a name"))?;
        let (_, entry_name) = split_shard_label(cid, label, shard.prefix_len)?;
        if entry_name.is_empty() {
            match load(store, &link.cid)? {
                Node::Hamt(child) => collect_shard(store, &link.cid, child, depth + 1, named)?,
                _ => {
                    return Err(malformed(
                        &link.cid,
                        "HAMT sub-shard link to a non-shard node",
                    ))
                }
            }
        } else {
            named.push(NamedLink {
                name: entry_name.to_string(),
                cid: link.cid,
                tsize: link.tsize,
            });
        }
    }
    Ok(())
}

/// Splits a HAMT link name into its bucket index and the entry name (empty for a link
/// to a sub-shard).
fn split_shard_label<'a>(
    cid: &Cid,
    label: &'a str,
    prefix_len: usize,
) -> Result<(u64, &'a str), ReadError> {
    let bad = || {
        malformed(
            cid,
            format!("HAMT link name {label:?} does not start with a bucket index"),
        )
    };
    let prefix = label.get(..prefix_len).ok_or_else(bad)?;
    if !prefix.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let index = u64::from_str_radix(prefix, 16).map_err(|_| bad())?;
    Ok((index, &label[prefix_len..]))
}

/// Finds `name` in a HAMT-sharded directory by following its hash, reading only the
/// shards on its path.
fn hamt_lookup<B: BlockGet + ?Sized>(
    store: &B,
    root: &Cid,
    mut shard: HamtShard,
    name: &str,
) -> Result<Option<Cid>, ReadError> {
    let hash = murmur3_x64_64(name.as_bytes());
    let mut bits_used = 0u32;
    let mut shard_cid = *root;
    for _ in 0..MAX_DEPTH {
        if bits_used + shard.bits > u64::BITS {
            // Entries this deep would need hash bits beyond the 64 that exist.
            return Ok(None);
        }
        let index = (hash << bits_used) >> (u64::BITS - shard.bits);
        bits_used += shard.bits;
        let mut sub_shard = None;
        for link in &shard.links {
            let label = link
                .name
                .as_deref()
                .ok_or_else(|| malformed(&shard_cid, "HAMT link without a name"))?;
            let (bucket, entry_name) = split_shard_label(&shard_cid, label, shard.prefix_len)?;
            if bucket != index {
                continue;
            }
            if entry_name == name {
                return Ok(Some(link.cid));
            }
            if entry_name.is_empty() {
                sub_shard = Some(link.cid);
            }
        }
        let Some(next) = sub_shard else {
            return Ok(None);
        };
        shard = match load(store, &next)? {
            Node::Hamt(shard) => shard,
            _ => return Err(malformed(&next, "HAMT sub-shard link to a non-shard node")),
        };
        shard_cid = next;
    }
    Err(ReadError::TooDeep {
        cid: *root,
        limit: MAX_DEPTH,
    })
}

/// The first 64 bits of MurmurHash3 x64_128 with seed 0, read big-endian: the hash that
/// places names in UnixFS HAMT shards.
fn murmur3_x64_64(input: &[u8]) -> u64 {
    super::hamt::murmur3_x64_128(input, 0).0
}

/// Streams the content of the file (or raw node) `cid` to `out` and returns the number of
/// bytes written. Memory stays bounded whatever the file size; leaves are fetched and
/// verified on other threads while earlier ones are written.
pub fn read_file<B, W>(store: &B, cid: &Cid, out: &mut W) -> Result<u64, ReadError>
where
    B: BlockGet + Sync + ?Sized,
    W: Write + ?Sized,
{
    read_range(store, cid, 0, u64::MAX, out)
}

/// Streams `len` bytes of the file `cid` starting at `offset`, clamped to the end of the
/// file, and returns the number of bytes written (0 when `offset` is past the end).
/// Subtrees outside the range are skipped without being read.
pub fn read_range<B, W>(
    store: &B,
    cid: &Cid,
    offset: u64,
    len: u64,
    out: &mut W,
) -> Result<u64, ReadError>
where
    B: BlockGet + Sync + ?Sized,
    W: Write + ?Sized,
{
    let Node::File(root) = load(store, cid)? else {
        return Err(ReadError::NotAFile(*cid));
    };
    read_loaded_file(store, cid, root, offset, len, out)
}

fn read_loaded_file<B, W>(
    store: &B,
    cid: &Cid,
    root: FileNode,
    offset: u64,
    len: u64,
    out: &mut W,
) -> Result<u64, ReadError>
where
    B: BlockGet + Sync + ?Sized,
    W: Write + ?Sized,
{
    let end = offset.saturating_add(len).min(root.size);
    if offset >= end {
        return Ok(0);
    }
    let mut reader = FileReader {
        store,
        jobs: None,
        in_flight: 0,
        range: offset..end,
        out,
        written: 0,
    };
    if root.children.is_empty() {
        reader.emit(&root.data, 0)?;
        return Ok(reader.written);
    }
    let (jobs, job_queue) = mpsc::channel::<FetchJob>();
    let job_queue = Arc::new(Mutex::new(job_queue));
    let workers = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8);
    thread::scope(|scope| {
        for _ in 0..workers {
            let job_queue = Arc::clone(&job_queue);
            scope.spawn(move || fetch_worker(store, &job_queue));
        }
        reader.jobs = Some(jobs);
        let result = reader.read_node(cid, root, 0, 0);
        // Dropping the sender lets the workers run out of jobs and exit.
        reader.jobs = None;
        result
    })?;
    Ok(reader.written)
}

type FetchResult = Result<Vec<u8>, BlockError>;

struct FetchJob {
    cid: Cid,
    reply: SyncSender<FetchResult>,
}

fn fetch_worker<B: BlockGet + ?Sized>(store: &B, jobs: &Mutex<Receiver<FetchJob>>) {
    loop {
        let job = match jobs.lock() {
            Ok(queue) => queue.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(job) = job else {
            return;
        };
        // A closed reply channel means the read already stopped; nothing to do.
        let _ = job.reply.send(get_verified(store, &job.cid));
    }
}

struct FileReader<'a, B: ?Sized, W: ?Sized> {
    store: &'a B,
    /// Where fetches are sent to be done ahead on worker threads.
    jobs: Option<Sender<FetchJob>>,
    in_flight: usize,
    range: Range<u64>,
    out: &'a mut W,
    written: u64,
}

impl<B: BlockGet + ?Sized, W: Write + ?Sized> FileReader<'_, B, W> {
    /// Writes the part of `data`, which starts at file offset `start`, that falls in range.
    fn emit(&mut self, data: &[u8], start: u64) -> Result<(), ReadError> {
        let end = start + data.len() as u64;
        let from = self.range.start.max(start);
        let to = self.range.end.min(end);
        if from < to {
            self.out
                .write_all(&data[(from - start) as usize..(to - start) as usize])?;
            self.written += to - from;
        }
        Ok(())
    }

    fn read_node(
        &mut self,
        cid: &Cid,
        node: FileNode,
        start: u64,
        depth: usize,
    ) -> Result<(), ReadError> {
        if depth > MAX_DEPTH {
            return Err(ReadError::TooDeep {
                cid: *cid,
                limit: MAX_DEPTH,
            });
        }
        self.emit(&node.data, start)?;
        let mut child_start = start + node.data.len() as u64;
        let mut wanted = Vec::new();
        for child in node.children {
            let child_end = child_start + child.size;
            // Empty children within the range are read too, so that one hiding data
            // behind a declared size of zero is caught.
            let in_range = if child.size == 0 {
                (self.range.start..=self.range.end).contains(&child_start)
            } else {
                child_start < self.range.end && child_end > self.range.start
            };
            if in_range {
                wanted.push((child, child_start));
            }
            child_start = child_end;
        }
        let mut pending: VecDeque<Receiver<FetchResult>> = VecDeque::new();
        let mut dispatched = 0;
        for (index, (child, child_start)) in wanted.iter().enumerate() {
            while dispatched < wanted.len()
                && dispatched < index + PREFETCH_PER_NODE
                && self.in_flight < PREFETCH_TOTAL
            {
                let Some(reply) = self.dispatch(&wanted[dispatched].0.cid) else {
                    break;
                };
                pending.push_back(reply);
                dispatched += 1;
            }
            let block = match pending.pop_front() {
                Some(reply) => {
                    self.in_flight -= 1;
                    reply
                        .recv()
                        .map_err(|_| BlockError::Backend("block fetch thread stopped".into()))??
                }
                None => {
                    dispatched = index + 1;
                    get_verified(self.store, &child.cid)?
                }
            };
            self.read_child(child, *child_start, block, depth + 1)?;
        }
        Ok(())
    }

    fn dispatch(&mut self, cid: &Cid) -> Option<Receiver<FetchResult>> {
        let jobs = self.jobs.as_ref()?;
        let (reply, receiver) = mpsc::sync_channel(1);
        jobs.send(FetchJob { cid: *cid, reply }).ok()?;
        self.in_flight += 1;
        Some(receiver)
    }

    fn read_child(
        &mut self,
        child: &FileChild,
        start: u64,
        block: Vec<u8>,
        depth: usize,
    ) -> Result<(), ReadError> {
        let Node::File(node) = decode_node(&child.cid, block)? else {
            return Err(malformed(
                &child.cid,
                "file links to a node that is not file data",
            ));
        };
        if node.size != child.size {
            return Err(ReadError::SizeMismatch {
                cid: child.cid,
                declared: child.size,
                actual: node.size,
            });
        }
        self.read_node(&child.cid, node, start, depth)
    }
}

/// Writes the file, directory tree or symlink `cid` to `dest`.
///
/// `dest` must not exist, except that a directory may be written into an existing empty
/// directory. Entry names that could escape `dest` or are not portable file names (empty,
/// `.`, `..`, containing `/` or NUL) are refused. Files are created fresh (never opened
/// through an existing path), symlinks are created as symlinks with their target as
/// stored and never followed. On error, everything written so far is removed.
pub fn get_tree<B: BlockGet + Sync + ?Sized>(
    store: &B,
    cid: &Cid,
    dest: &Path,
) -> Result<(), ReadError> {
    let root = load(store, cid)?;
    let is_directory = matches!(root, Node::Directory(_) | Node::Hamt(_));
    let into_existing = match fs::symlink_metadata(dest) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => false,
        Err(source) => {
            return Err(ReadError::WritePath {
                path: dest.to_path_buf(),
                source,
            })
        }
        Ok(meta) => {
            let empty_dir = meta.is_dir() && is_empty_dir(dest)?;
            if !(empty_dir && is_directory) {
                return Err(ReadError::DestinationExists(dest.to_path_buf()));
            }
            true
        }
    };
    let result = write_node(store, cid, root, dest, into_existing, 0);
    if result.is_err() {
        // Best effort: the tree is incomplete and must not be mistaken for a good one.
        if into_existing {
            if let Ok(entries) = fs::read_dir(dest) {
                for entry in entries.flatten() {
                    remove_path(&entry.path());
                }
            }
        } else {
            remove_path(dest);
        }
    }
    result
}

fn is_empty_dir(path: &Path) -> Result<bool, ReadError> {
    let mut entries = fs::read_dir(path).map_err(|source| ReadError::WritePath {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(entries.next().is_none())
}

fn remove_path(path: &Path) {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    };
    if let Err(err) = removed {
        tracing::warn!(
            "could not remove incomplete output {}: {err}",
            path.display()
        );
    }
}

fn write_node<B: BlockGet + Sync + ?Sized>(
    store: &B,
    cid: &Cid,
    node: Node,
    path: &Path,
    dir_exists: bool,
    depth: usize,
) -> Result<(), ReadError> {
    if depth > MAX_DEPTH {
        return Err(ReadError::TooDeep {
            cid: *cid,
            limit: MAX_DEPTH,
        });
    }
    let write_error = |source| ReadError::WritePath {
        path: path.to_path_buf(),
        source,
    };
    match node {
        Node::File(file) => {
            let mut out = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(write_error)?;
            read_loaded_file(store, cid, file, 0, u64::MAX, &mut out)?;
        }
        Node::Symlink(target) => create_symlink(&target, path).map_err(write_error)?,
        directory => {
            let links = directory_links(store, cid, directory, 0)?;
            for link in &links {
                check_entry_name(cid, &link.name)?;
            }
            if !dir_exists {
                fs::create_dir(path).map_err(write_error)?;
            }
            for link in links {
                let child = load(store, &link.cid)?;
                write_node(
                    store,
                    &link.cid,
                    child,
                    &path.join(&link.name),
                    false,
                    depth + 1,
                )?;
            }
        }
    }
    Ok(())
}

fn check_entry_name(dir: &Cid, name: &str) -> Result<(), ReadError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(ReadError::UnsafeName {
            dir: *dir,
            name: name.into(),
        });
    }
    Ok(())
}

#[cfg(unix)]
fn create_symlink(target: &[u8], path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), path)
}

#[cfg(not(unix))]
fn create_symlink(_target: &[u8], _path: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "symlinks are only written on Unix",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_reference_values() {
        // MurmurHash3_x64_128("hello", seed 0) = cbd8a7b341bd9b02 5b1e906a48ae1d19.
        assert_eq!(murmur3_x64_64(b"hello"), 0xcbd8_a7b3_41bd_9b02);
        assert_eq!(murmur3_x64_64(b""), 0);
    }

    #[test]
    fn paths_reject_dot_segments_and_empty_segments() {
        assert_eq!(split_path("").unwrap(), Vec::<&str>::new());
        assert_eq!(split_path("/a/b").unwrap(), vec!["a", "b"]);
        for bad in ["a//b", "a/../b", "./a", "a/", "a\0b"] {
            assert!(
                matches!(split_path(bad), Err(ReadError::InvalidPath { .. })),
                "{bad:?}"
            );
        }
    }

    use crate::block::{cid_v1, BlockPut, MemoryBlocks};

    fn put_shard(store: &MemoryBlocks, links: Vec<(String, Cid)>) -> Cid {
        let mut unixfs = UnixfsData::new(DataType::HamtShard);
        unixfs.hash_type = Some(HAMT_HASH_MURMUR3);
        unixfs.fanout = Some(256);
        unixfs.data = Some(vec![0; 32]);
        let links = links
            .into_iter()
            .map(|(name, cid)| PbLink {
                cid,
                name: Some(name),
                tsize: Some(1),
            })
            .collect();
        let bytes = PbNode {
            links,
            data: Some(unixfs.encode()),
        }
        .encode();
        let cid = cid_v1(codec::DAG_PB, &bytes);
        store.put_block(&cid, &bytes).unwrap();
        cid
    }

    fn put_raw(store: &MemoryBlocks, text: &str) -> Cid {
        let cid = cid_v1(codec::RAW, text.as_bytes());
        store.put_block(&cid, text.as_bytes()).unwrap();
        cid
    }

    fn hash_byte(name: &str, level: usize) -> u8 {
        murmur3_x64_64(name.as_bytes()).to_be_bytes()[level]
    }

    #[test]
    fn resolves_names_through_nested_hamt_shards() {
        let store = MemoryBlocks::new();
        // Two names that share a bucket at the first level force a sub-shard.
        let names: Vec<String> = (0..100).map(|i| format!("lesson-{i}.html")).collect();
        let (first, second) = names
            .iter()
            .enumerate()
            .find_map(|(i, a)| {
                names[i + 1..]
                    .iter()
                    .find(|b| hash_byte(a, 0) == hash_byte(b, 0))
                    .map(|b| (a, b))
            })
            .expect("100 names over 256 buckets collide");
        assert_ne!(hash_byte(first, 1), hash_byte(second, 1));
        let label = |name: &str, level| format!("{:02X}{name}", hash_byte(name, level));
        let sub = put_shard(
            &store,
            vec![
                (label(first, 1), put_raw(&store, first)),
                (label(second, 1), put_raw(&store, second)),
            ],
        );
        let loner = names
            .iter()
            .find(|n| hash_byte(n, 0) != hash_byte(first, 0))
            .unwrap();
        let root = put_shard(
            &store,
            vec![
                (format!("{:02X}", hash_byte(first, 0)), sub),
                (label(loner, 0), put_raw(&store, loner)),
            ],
        );
        for name in [first, second, loner] {
            let found = resolve(&store, &root, name).unwrap();
            assert_eq!(store.get_block(&found).unwrap(), name.as_bytes());
        }
        let listed: Vec<String> = list_dir(&store, &root)
            .unwrap()
            .into_iter()
            .map(|entry| entry.name)
            .collect();
        let mut expected = vec![first.clone(), second.clone(), loner.clone()];
        expected.sort();
        assert_eq!(listed, expected);

        // A name whose bucket holds someone else, and one whose bucket is empty.
        let same_bucket = names
            .iter()
            .find(|n| *n != loner && hash_byte(n, 0) == hash_byte(loner, 0))
            .cloned()
            .unwrap_or_else(|| "absent".into());
        for missing in [same_bucket.as_str(), "no-such-lesson.html"] {
            assert!(matches!(
                resolve(&store, &root, missing),
                Err(ReadError::NoSuchEntry { .. })
            ));
        }

        // A sub-shard label that points at a file is malformed.
        let bogus = put_shard(
            &store,
            vec![(format!("{:02X}", hash_byte(first, 0)), put_raw(&store, "x"))],
        );
        assert!(matches!(
            resolve(&store, &bogus, first),
            Err(ReadError::Malformed { .. })
        ));
    }

    #[test]
    fn shard_labels_need_a_hex_prefix() {
        let cid = crate::block::cid_v1(codec::DAG_PB, b"x");
        assert_eq!(split_shard_label(&cid, "0Aname", 2).unwrap(), (10, "name"));
        assert_eq!(split_shard_label(&cid, "FF", 2).unwrap(), (255, ""));
        assert!(split_shard_label(&cid, "+F", 2).is_err());
        assert!(split_shard_label(&cid, "é", 2).is_err());
        assert!(split_shard_label(&cid, "A", 2).is_err());
    }
}
