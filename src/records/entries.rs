//! A collection's entry list: a two-level structure of DAG-CBOR blocks.
//!
//! Entries are sorted by the bytes of their record CID and cut into chunks of at most
//! `MAX_CHUNK_ENTRIES`. A root block lists each chunk's CID, first record CID and entry count.
//! Adding or removing entries rewrites only the chunks they fall into, plus the root, so a new
//! version of a 100,000-entry list writes a few kilobytes of chunk and one root, not the list.
//! The shape depends on the order of edits (two lists with the same entries may have different
//! CIDs); readers only rely on the sorting and the counts, which are checked.

use std::collections::BTreeMap;

use cid::Cid;
use serde::{Deserialize, Serialize};

use super::codec;
use super::error::{Kind, RecordError, Result};
use super::validate;
use crate::block::{self, cid_v1, codec as block_codec, BlockGet, BlockPut};

/// A chunk is split when it would hold more than this many entries.
pub const MAX_CHUNK_ENTRIES: usize = 256;
/// Entries per chunk when a run of entries is cut into new chunks, leaving room to grow.
pub const FILL_CHUNK_ENTRIES: usize = 192;
/// The largest collection accepted.
pub const MAX_ENTRIES: u64 = 1_000_000;
/// Above this many chunks the list is repacked, which keeps the root under its size cap.
pub const MAX_CHUNKS: usize = 8192;
const MAX_PATH_BYTES: usize = 256;
const MAX_ENTRY_TITLE_BYTES: usize = 256;

/// One entry: a record, and optionally where it sits in the collection and a display title.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    #[serde(rename = "r")]
    pub record: Cid,
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

impl Entry {
    pub fn new(record: Cid) -> Entry {
        Entry {
            record,
            path: None,
            title: None,
        }
    }

    /// Paths are relative, `/`-separated, without `.` or `..` segments, so they can be used to
    /// lay a collection out as files without escaping the target directory.
    pub fn validate(&self) -> Result<()> {
        if let Some(path) = &self.path {
            validate::line("entry path", path, MAX_PATH_BYTES)?;
            let bad_segment = path
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..");
            if bad_segment || path.contains('\\') {
                return Err(RecordError::InvalidText {
                    field: "entry path",
                    reason: "must be relative, '/'-separated, without empty, '.' or '..' segments"
                        .into(),
                });
            }
        }
        if let Some(title) = &self.title {
            validate::line("entry title", title, MAX_ENTRY_TITLE_BYTES)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryChunk {
    #[serde(rename = "k")]
    kind: String,
    #[serde(rename = "e")]
    entries: Vec<Entry>,
}

/// The root's reference to one chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkRef {
    /// The chunk's first (smallest) record CID.
    #[serde(rename = "f")]
    pub first: Cid,
    #[serde(rename = "c")]
    pub chunk: Cid,
    #[serde(rename = "n")]
    pub count: u64,
}

/// The root block of an entry list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryRoot {
    #[serde(rename = "k")]
    kind: String,
    #[serde(rename = "n")]
    pub count: u64,
    #[serde(rename = "ch")]
    pub chunks: Vec<ChunkRef>,
}

fn sort_key(cid: &Cid) -> Vec<u8> {
    cid.to_bytes()
}

fn put<S: BlockPut + ?Sized, T: Serialize>(store: &S, kind: Kind, value: &T) -> Result<Cid> {
    let bytes = codec::encode(kind, value)?;
    if bytes.len() > kind.max_size() {
        return Err(RecordError::TooLarge {
            kind,
            size: bytes.len(),
            limit: kind.max_size(),
        });
    }
    let cid = cid_v1(block_codec::DAG_CBOR, &bytes);
    store.put_hashed_block(&cid, &bytes)?;
    Ok(cid)
}

/// Fetches a block and checks it against its CID, whatever the store promises.
fn get_verified<S: BlockGet + ?Sized>(store: &S, cid: &Cid) -> Result<Vec<u8>> {
    let bytes = store.get_block(cid)?;
    block::verify(cid, &bytes)?;
    Ok(bytes)
}

/// Writes the root of an empty list.
pub fn write_empty<S: BlockPut + ?Sized>(store: &S) -> Result<Cid> {
    put(
        store,
        Kind::EntryRoot,
        &EntryRoot {
            kind: Kind::EntryRoot.tag().into(),
            count: 0,
            chunks: Vec::new(),
        },
    )
}

/// Reads and checks a root block.
pub fn read_root<S: BlockGet + ?Sized>(store: &S, root: &Cid) -> Result<EntryRoot> {
    let decoded: EntryRoot = codec::decode(Kind::EntryRoot, &get_verified(store, root)?)?;
    let inconsistent = |what: &str| RecordError::InvalidEntryList(format!("root {root}: {what}"));
    if decoded.count > MAX_ENTRIES {
        return Err(RecordError::TooManyEntries {
            count: decoded.count,
            limit: MAX_ENTRIES,
        });
    }
    let mut total: u64 = 0;
    let mut previous_first: Option<Vec<u8>> = None;
    for chunk in &decoded.chunks {
        if chunk.count == 0 || chunk.count > MAX_CHUNK_ENTRIES as u64 {
            return Err(inconsistent("chunk entry count out of range"));
        }
        let first = sort_key(&chunk.first);
        if previous_first.as_ref().is_some_and(|p| *p >= first) {
            return Err(inconsistent("chunks are not sorted by first record CID"));
        }
        previous_first = Some(first);
        total += chunk.count;
    }
    if total != decoded.count {
        return Err(inconsistent(
            "entry count does not match the chunks' counts",
        ));
    }
    Ok(decoded)
}

/// Reads and checks one chunk against what the root says about it.
fn read_chunk<S: BlockGet + ?Sized>(store: &S, chunk_ref: &ChunkRef) -> Result<Vec<Entry>> {
    // Chunks are reached only through a root, whose links fix their bytes.
    let chunk: EntryChunk =
        codec::decode_linked(Kind::EntryChunk, &get_verified(store, &chunk_ref.chunk)?)?;
    let inconsistent =
        |what: &str| RecordError::InvalidEntryList(format!("chunk {}: {what}", chunk_ref.chunk));
    if chunk.entries.len() as u64 != chunk_ref.count {
        return Err(inconsistent("entry count differs from the root's"));
    }
    if chunk.entries.first().map(|e| e.record) != Some(chunk_ref.first) {
        return Err(inconsistent("first entry differs from the root's"));
    }
    // Two buffers reused for every entry, rather than two allocations per comparison.
    let (mut previous, mut current) = (Vec::new(), Vec::new());
    for (index, entry) in chunk.entries.iter().enumerate() {
        current.clear();
        entry
            .record
            .write_bytes(&mut current)
            .map_err(|e| inconsistent(&format!("cannot encode a record CID: {e}")))?;
        if index > 0 && previous >= current {
            return Err(inconsistent(
                "entries are not strictly sorted by record CID",
            ));
        }
        std::mem::swap(&mut previous, &mut current);
        entry.validate()?;
    }
    Ok(chunk.entries)
}

/// All entries in record-CID order, each chunk verified against its CID.
pub fn read_all<S: BlockGet + ?Sized>(store: &S, root: &Cid) -> Result<Vec<Entry>> {
    read_all_with(store, root, |entry| Ok(Some(entry)))
}

/// Reads all entries in record-CID order and maps each through `f` (dropping `None`s), one
/// chunk at a time. (Mapping chunks on several threads was measured slower: the index lookups
/// in `f` contend.)
pub fn read_all_with<S, T, F>(store: &S, root: &Cid, mut f: F) -> Result<Vec<T>>
where
    S: BlockGet + ?Sized,
    F: FnMut(Entry) -> Result<Option<T>>,
{
    let chunks = read_chunks(store, root)?;
    let mut mapped = Vec::with_capacity(chunks.iter().map(|(_, entries)| entries.len()).sum());
    for (_, entries) in chunks {
        for entry in entries {
            mapped.extend(f(entry)?);
        }
    }
    Ok(mapped)
}

/// Every chunk of the list with its entries, in record-CID order, each chunk verified
/// against its CID and against the root, and no two chunks overlapping.
pub fn read_chunks<S: BlockGet + ?Sized>(store: &S, root: &Cid) -> Result<Vec<(Cid, Vec<Entry>)>> {
    let decoded = read_root(store, root)?;
    let mut chunks = Vec::with_capacity(decoded.chunks.len());
    let mut previous_last: Option<Vec<u8>> = None;
    for chunk_ref in &decoded.chunks {
        let entries = read_chunk(store, chunk_ref)?;
        // Chunks are sorted by first entry; this also rules out overlapping chunks.
        let first = entries
            .first()
            .map(|e| sort_key(&e.record))
            .unwrap_or_default();
        if previous_last.is_some_and(|last| last >= first) {
            return Err(RecordError::InvalidEntryList(format!(
                "chunk {} overlaps its predecessor",
                chunk_ref.chunk
            )));
        }
        previous_last = entries.last().map(|e| sort_key(&e.record));
        chunks.push((chunk_ref.chunk, entries));
    }
    Ok(chunks)
}

/// The CIDs of the root and all chunk blocks.
pub fn block_cids<S: BlockGet + ?Sized>(store: &S, root: &Cid) -> Result<Vec<Cid>> {
    let decoded = read_root(store, root)?;
    Ok(std::iter::once(*root)
        .chain(decoded.chunks.iter().map(|c| c.chunk))
        .collect())
}

/// The result of editing a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditOutcome {
    pub root: Cid,
    pub count: u64,
    /// How many of the requested removals named an entry that was there.
    pub removed: usize,
    /// Chunk blocks written by this edit (the root not included).
    pub chunks_written: usize,
}

/// Adds (or replaces, by record CID) `additions` and removes `removals`, rewriting only the
/// touched chunks and the root. All new blocks are written before this returns.
pub fn edit<S: BlockGet + BlockPut + ?Sized>(
    store: &S,
    root: &Cid,
    additions: Vec<Entry>,
    removals: &[Cid],
) -> Result<EditOutcome> {
    for entry in &additions {
        entry.validate()?;
    }
    let old_root = read_root(store, root)?;
    let first_keys: Vec<Vec<u8>> = old_root.chunks.iter().map(|c| sort_key(&c.first)).collect();
    let chunk_for = |key: &[u8]| {
        first_keys
            .partition_point(|first| first.as_slice() <= key)
            .saturating_sub(1)
    };

    #[derive(Default)]
    struct ChunkEdits {
        additions: Vec<(Vec<u8>, Entry)>,
        removals: Vec<Vec<u8>>,
    }
    let mut edits: BTreeMap<usize, ChunkEdits> = BTreeMap::new();
    for entry in additions {
        let key = sort_key(&entry.record);
        edits
            .entry(chunk_for(&key))
            .or_default()
            .additions
            .push((key, entry));
    }
    for cid in removals {
        let key = sort_key(cid);
        edits.entry(chunk_for(&key)).or_default().removals.push(key);
    }

    let mut new_chunks: Vec<ChunkRef> = Vec::with_capacity(old_root.chunks.len() + 1);
    let mut removed = 0;
    let mut chunks_written = 0;
    let mut next_untouched = 0;
    for (index, chunk_edits) in edits {
        new_chunks.extend_from_slice(
            &old_root.chunks
                [next_untouched.min(old_root.chunks.len())..index.min(old_root.chunks.len())],
        );
        next_untouched = index + 1;
        let mut merged: BTreeMap<Vec<u8>, Entry> = match old_root.chunks.get(index) {
            Some(chunk_ref) => read_chunk(store, chunk_ref)?
                .into_iter()
                .map(|e| (sort_key(&e.record), e))
                .collect(),
            None => BTreeMap::new(),
        };
        for (key, entry) in chunk_edits.additions {
            merged.insert(key, entry);
        }
        for key in chunk_edits.removals {
            removed += usize::from(merged.remove(&key).is_some());
        }
        let entries: Vec<Entry> = merged.into_values().collect();
        for piece in split_evenly(entries) {
            new_chunks.push(write_chunk(store, piece)?);
            chunks_written += 1;
        }
    }
    new_chunks.extend_from_slice(&old_root.chunks[next_untouched.min(old_root.chunks.len())..]);

    let count: u64 = new_chunks.iter().map(|c| c.count).sum();
    if count > MAX_ENTRIES {
        return Err(RecordError::TooManyEntries {
            count,
            limit: MAX_ENTRIES,
        });
    }
    if new_chunks.len() > MAX_CHUNKS {
        new_chunks = repack(store, &new_chunks)?;
        chunks_written += new_chunks.len();
    }
    let root = put(
        store,
        Kind::EntryRoot,
        &EntryRoot {
            kind: Kind::EntryRoot.tag().into(),
            count,
            chunks: new_chunks,
        },
    )?;
    Ok(EditOutcome {
        root,
        count,
        removed,
        chunks_written,
    })
}

/// Cuts sorted entries into chunks: none if empty, one if it fits, else evenly sized pieces
/// of about `FILL_CHUNK_ENTRIES`.
fn split_evenly(entries: Vec<Entry>) -> Vec<Vec<Entry>> {
    if entries.is_empty() {
        return Vec::new();
    }
    if entries.len() <= MAX_CHUNK_ENTRIES {
        return vec![entries];
    }
    let pieces = entries.len().div_ceil(FILL_CHUNK_ENTRIES);
    let base = entries.len() / pieces;
    let larger = entries.len() % pieces;
    let mut rest = entries.into_iter();
    (0..pieces)
        .map(|i| rest.by_ref().take(base + usize::from(i < larger)).collect())
        .collect()
}

fn write_chunk<S: BlockPut + ?Sized>(store: &S, entries: Vec<Entry>) -> Result<ChunkRef> {
    let first = entries
        .first()
        .map(|e| e.record)
        .ok_or_else(|| RecordError::InvalidEntryList("empty chunk".into()))?;
    let count = entries.len() as u64;
    let chunk = put(
        store,
        Kind::EntryChunk,
        &EntryChunk {
            kind: Kind::EntryChunk.tag().into(),
            entries,
        },
    )?;
    Ok(ChunkRef {
        first,
        chunk,
        count,
    })
}

/// Rewrites many small chunks (left behind by removals) into full ones.
fn repack<S: BlockGet + BlockPut + ?Sized>(
    store: &S,
    chunks: &[ChunkRef],
) -> Result<Vec<ChunkRef>> {
    let mut entries = Vec::new();
    for chunk_ref in chunks {
        entries.extend(read_chunk(store, chunk_ref)?);
    }
    let mut rest = entries.into_iter().peekable();
    let mut repacked = Vec::new();
    while rest.peek().is_some() {
        repacked.push(write_chunk(
            store,
            rest.by_ref().take(FILL_CHUNK_ENTRIES).collect(),
        )?);
    }
    Ok(repacked)
}

impl codec::Tagged for EntryChunk {
    fn kind_tag(&self) -> &str {
        &self.kind
    }
}

impl codec::Tagged for EntryRoot {
    fn kind_tag(&self) -> &str {
        &self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemoryBlocks;

    fn record_cid(i: u32) -> Cid {
        cid_v1(block_codec::DAG_CBOR, &i.to_le_bytes())
    }

    #[test]
    fn edits_touch_only_their_chunk_and_keep_order() -> Result<()> {
        let store = MemoryBlocks::new();
        let empty = write_empty(&store)?;
        let all: Vec<Entry> = (0..5000).map(|i| Entry::new(record_cid(i))).collect();
        let built = edit(&store, &empty, all, &[])?;
        assert_eq!(built.count, 5000);
        let root = read_root(&store, &built.root)?;
        assert!(root
            .chunks
            .iter()
            .all(|c| c.count as usize <= MAX_CHUNK_ENTRIES));

        let added = edit(
            &store,
            &built.root,
            vec![Entry::new(record_cid(9999))],
            &[record_cid(7)],
        )?;
        assert_eq!(added.count, 5000);
        assert_eq!(added.removed, 1);
        assert!(added.chunks_written <= 2, "{}", added.chunks_written);

        let entries = read_all(&store, &added.root)?;
        assert_eq!(entries.len(), 5000);
        assert!(entries
            .windows(2)
            .all(|w| sort_key(&w[0].record) < sort_key(&w[1].record)));
        assert!(entries.iter().any(|e| e.record == record_cid(9999)));
        assert!(!entries.iter().any(|e| e.record == record_cid(7)));
        Ok(())
    }

    #[test]
    fn growing_one_entry_at_a_time_splits_chunks() -> Result<()> {
        let store = MemoryBlocks::new();
        let mut root = write_empty(&store)?;
        for i in 0..600 {
            root = edit(&store, &root, vec![Entry::new(record_cid(i))], &[])?.root;
        }
        let decoded = read_root(&store, &root)?;
        assert_eq!(decoded.count, 600);
        assert!(decoded.chunks.len() >= 3);
        assert_eq!(read_all(&store, &root)?.len(), 600);
        let emptied = edit(
            &store,
            &root,
            Vec::new(),
            &(0..600).map(record_cid).collect::<Vec<_>>(),
        )?;
        assert_eq!(emptied.count, 0);
        assert!(read_root(&store, &emptied.root)?.chunks.is_empty());
        Ok(())
    }

    #[test]
    fn paths_cannot_escape() {
        let with_path = |p: &str| Entry {
            path: Some(p.into()),
            ..Entry::new(record_cid(1))
        };
        assert!(with_path("maths/fractions.pdf").validate().is_ok());
        for bad in ["/etc/passwd", "../x", "a/../b", "a//b", "a\\b", "./a"] {
            assert!(with_path(bad).validate().is_err(), "{bad}");
        }
    }
}
