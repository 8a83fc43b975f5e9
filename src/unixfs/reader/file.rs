//! Streaming a file, or a byte range of it, with blocks fetched and verified ahead on a
//! pool shared by every read in the process.

use std::collections::VecDeque;
use std::io::Write;
use std::ops::Range;
use std::sync::mpsc::{self, Receiver};
use std::sync::LazyLock;

use cid::Cid;

use super::node::{decode_node, load, FileChild, FileNode, Node};
use super::{malformed, ReadError, MAX_DEPTH};
use crate::block::{BlockError, BlockGet};
use crate::links::get_verified;

/// Blocks fetched ahead among one node's children, and in total. Bounds memory to
/// about `PREFETCH_TOTAL` blocks while keeping every core busy hashing.
const PREFETCH_PER_NODE: usize = 8;
const PREFETCH_TOTAL: usize = 16;

/// Streams the content of the file (or raw node) `cid` to `out` and returns the number of
/// bytes written. Memory stays bounded whatever the file size; leaves are fetched and
/// verified on the shared fetch threads while earlier ones are written.
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

/// The threads that fetch and verify blocks ahead of file readers: one pool for the whole
/// process, whatever the number of reads at once, so that a read starts no thread of its
/// own. `None` if no thread could be started; reads then fetch one block at a time.
static FETCH_POOL: LazyLock<Option<rayon::ThreadPool>> = LazyLock::new(|| {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|index| format!("oermesh-fetch-{index}"))
        .build()
        .inspect_err(|err| tracing::warn!(%err, "no block fetch threads"))
        .ok()
});

pub(super) fn read_loaded_file<B, W>(
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
        ahead: None,
        in_flight: 0,
        range: offset..end,
        out,
        written: 0,
    };
    match FETCH_POOL.as_ref() {
        // Fetches are spawned into the scope, which ends once every one of them has (the
        // reader waits for each it uses; at most `PREFETCH_TOTAL` are in flight).
        Some(pool) if !root.children.is_empty() => pool.in_place_scope(|scope| {
            let mut reader = FileReader {
                ahead: Some(scope),
                ..reader
            };
            reader.read_node(cid, root, 0, 0)?;
            Ok(reader.written)
        }),
        _ => {
            reader.read_node(cid, root, 0, 0)?;
            Ok(reader.written)
        }
    }
}

type FetchResult = Result<Vec<u8>, BlockError>;

struct FileReader<'a, 's, B: ?Sized, W: ?Sized> {
    store: &'a B,
    /// Where fetches are spawned to run ahead on the fetch pool.
    ahead: Option<&'s rayon::Scope<'a>>,
    in_flight: usize,
    range: Range<u64>,
    out: &'a mut W,
    written: u64,
}

impl<'a, B: BlockGet + Sync + ?Sized, W: Write + ?Sized> FileReader<'a, '_, B, W> {
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
        let scope = self.ahead?;
        let (reply, receiver) = mpsc::sync_channel(1);
        let (store, cid) = (self.store, *cid);
        scope.spawn(move |_| {
            // A closed reply channel means the read already stopped; nothing to do.
            let _ = reply.send(get_verified(store, &cid));
        });
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
