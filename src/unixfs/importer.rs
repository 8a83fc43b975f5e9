//! Turns files and folder trees into UnixFS DAGs whose CIDs match the IPFS reference
//! importer (js-ipfs-unixfs `ipfs-unixfs-importer`, and kubo for the same settings).
//!
//! Files are cut into fixed-size chunks and laid out as a balanced tree: leaves are grouped
//! `max_links` at a time under File nodes, those nodes again `max_links` at a time, until one
//! root is left. A file of one chunk is that chunk's leaf. Folders become UnixFS Directory
//! nodes, or HAMT shards (see [`crate::unixfs::hamt`]) once they grow past the profile's
//! threshold.
//!
//! Reading and hashing overlap: while one batch of chunks is hashed on the rayon pool, the
//! next batch is read, and the reading thread joins the hashing once its read is done, so a
//! large file is added at the speed of the disk or of all cores hashing, whichever is
//! slower. Memory stays at two batches.
//!
//! Folder rules, chosen for what a teacher sharing a folder expects:
//! - entries whose names start with `.` inside a folder (`.git`, `.DS_Store`) are left out,
//!   as `ipfs add -r` does without `--hidden`; a hidden path named explicitly is added;
//! - symbolic links are followed and their targets added as ordinary files and folders,
//!   because a link stored as a link (kubo's default) would dangle on every other computer;
//!   a link that leads back into one of its own parent folders is an error rather than an
//!   endless tree;
//! - names must be UTF-8 (UnixFS stores names as UTF-8); devices, sockets and pipes are errors.

use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cid::Cid;
use rayon::prelude::*;

use crate::block::{cid_v0, cid_v1, codec, BlockError, BlockPut};
use crate::unixfs::hamt;
use crate::unixfs::pb::{DataType, PbLink, PbNode, UnixfsData};
use crate::unixfs::profile::{Profile, ShardMeasure};
use crate::varint;

/// What an import produced: the root CID, the file bytes under it, and its Tsize (the
/// encoded bytes of every block of its DAG, as a parent link records it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub cid: Cid,
    pub size: u64,
    pub tsize: u64,
}

/// Why an import failed. Each message is one line naming the thing that went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("cannot read the input: {0}")]
    Input(io::Error),
    #[error("{0} is a folder: use -r to add it with everything in it")]
    IsDirectory(PathBuf),
    #[error("{0} is a symbolic link loop: it leads back into a folder that contains it")]
    SymlinkLoop(PathBuf),
    #[error("{0} is neither a file nor a folder (a device, socket or pipe) and cannot be added")]
    NotAFileOrFolder(PathBuf),
    #[error("{0} has a name that is not valid UTF-8, which UnixFS requires")]
    NameNotUtf8(PathBuf),
    #[error("cannot store a block: {0}")]
    Store(#[from] BlockError),
    #[error("entry {path:?}: {reason}")]
    BadEntryPath { path: String, reason: String },
    #[error("{0} changed while it was being added; add it again once it is finished")]
    ChangedWhileAdded(PathBuf),
    #[error("nothing to add: the tree has no entries")]
    EmptyTree,
}

/// Bytes read per batch: large enough to keep both cores hashing while the next batch is
/// read, small enough that two batches in memory do not matter.
const BATCH_BYTES: usize = 16 << 20;

/// Imports one stream of bytes as a UnixFS file. `progress` receives the number of bytes
/// read so far after each batch.
pub fn import_reader<R: Read + Send>(
    reader: R,
    profile: &Profile,
    sink: &impl BlockPut,
    progress: &dyn Fn(u64),
) -> Result<Imported, ImportError> {
    import_stream(
        reader,
        None,
        0,
        profile,
        sink,
        &ImportError::Input,
        progress,
    )
}

/// Imports a file, or with `recursive` a folder and everything in it: [`walk`] feeding a
/// [`TreeBuilder`]. `on_entry` is called for every file and folder once its CID is known,
/// with its path relative to the parent of `path` (so the root itself is reported as its
/// own name, last). `progress` receives the file bytes read so far across the whole
/// import; [`total_bytes`] gives the total.
pub fn import_path(
    path: &Path,
    recursive: bool,
    profile: &Profile,
    sink: &impl BlockPut,
    on_entry: &mut dyn FnMut(&str, &Imported),
    progress: &dyn Fn(u64),
) -> Result<Imported, ImportError> {
    let mut builder = TreeBuilder::new(profile, sink, on_entry, progress);
    walk(path, recursive, &mut builder)?;
    builder.finish()
}

/// Receives a tree in depth-first order, each folder before what it holds: what [`walk`]
/// produces and [`TreeBuilder`] (or anything sending a tree elsewhere) consumes. Paths are
/// relative, `/`-separated, and start with the root's own name.
pub trait TreeSink {
    fn dir(&mut self, path: &str) -> Result<(), ImportError>;
    /// A regular file, open for reading; `source` is its path on disk, for messages.
    fn file(
        &mut self,
        path: &str,
        file: &mut File,
        size: u64,
        source: &Path,
    ) -> Result<(), ImportError>;
}

/// Walks `path` (a file, or with `recursive` a folder tree) by the folder rules above and
/// hands each entry to `sink`: entries of a folder in byte order of their names.
pub fn walk(path: &Path, recursive: bool, sink: &mut dyn TreeSink) -> Result<(), ImportError> {
    let metadata = metadata_of(path)?;
    let root_name = display_name(path)?;
    if metadata.is_dir() {
        if !recursive {
            return Err(ImportError::IsDirectory(path.to_path_buf()));
        }
        walk_folder(path, &root_name, &metadata, sink, &mut Vec::new())
    } else if metadata.is_file() {
        walk_file(path, &root_name, &metadata, sink)
    } else {
        Err(ImportError::NotAFileOrFolder(path.to_path_buf()))
    }
}

fn walk_file(
    path: &Path,
    relative: &str,
    metadata: &Metadata,
    sink: &mut dyn TreeSink,
) -> Result<(), ImportError> {
    let mut file = File::open(path).map_err(|source| unreadable(path, source))?;
    sink.file(relative, &mut file, metadata.len(), path)
}

fn walk_folder(
    path: &Path,
    relative: &str,
    metadata: &Metadata,
    sink: &mut dyn TreeSink,
    ancestors: &mut Vec<(u64, u64)>,
) -> Result<(), ImportError> {
    enter(path, metadata, ancestors)?;
    sink.dir(relative)?;
    for entry in list_folder(path)? {
        let child = format!("{relative}/{}", entry.name);
        if entry.metadata.is_dir() {
            walk_folder(&entry.path, &child, &entry.metadata, sink, ancestors)?;
        } else if entry.metadata.is_file() {
            walk_file(&entry.path, &child, &entry.metadata, sink)?;
        } else {
            return Err(ImportError::NotAFileOrFolder(entry.path));
        }
    }
    ancestors.pop();
    Ok(())
}

/// The file bytes [`import_path`] would read for `path`, following the same rules, so a
/// progress bar can show a total and an ETA before the import starts.
pub fn total_bytes(path: &Path, recursive: bool) -> Result<u64, ImportError> {
    fn folder(
        path: &Path,
        metadata: &Metadata,
        ancestors: &mut Vec<(u64, u64)>,
    ) -> Result<u64, ImportError> {
        enter(path, metadata, ancestors)?;
        let mut total = 0;
        for entry in list_folder(path)? {
            total += if entry.metadata.is_dir() {
                folder(&entry.path, &entry.metadata, ancestors)?
            } else {
                entry.metadata.len()
            };
        }
        ancestors.pop();
        Ok(total)
    }
    let metadata = metadata_of(path)?;
    if metadata.is_dir() {
        if !recursive {
            return Err(ImportError::IsDirectory(path.to_path_buf()));
        }
        folder(path, &metadata, &mut Vec::new())
    } else {
        Ok(metadata.len())
    }
}

/// A directory link: an entry's name, CID and Tsize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirLink {
    pub name: String,
    pub cid: Cid,
    pub tsize: u64,
}

/// Builds a UnixFS directory from its entries (any order; names must be unique), as a
/// plain Directory node or, past the profile's threshold, a HAMT shard. Every block goes
/// to `sink`; the result's `size` is 0 because entries carry no file sizes.
pub fn build_directory(
    entries: Vec<DirLink>,
    profile: &Profile,
    sink: &impl BlockPut,
) -> Result<Imported, BlockError> {
    let all_count: Vec<(DirLink, bool)> = entries.into_iter().map(|link| (link, true)).collect();
    directory_node(all_count, profile, sink)
}

/// `entries` pairs each link with whether it counts toward the sharding threshold. The
/// reference measures a folder while its sub-folders that have entries are still without
/// a CID, so their links add nothing; an importer that measures finished sub-folders would
/// count them. That changes the outcome only for a folder within one link of the threshold,
/// and the reference is what the vectors check.
fn directory_node(
    entries: Vec<(DirLink, bool)>,
    profile: &Profile,
    sink: &impl BlockPut,
) -> Result<Imported, BlockError> {
    let measured: usize = entries
        .iter()
        .filter(|(_, counts)| *counts)
        .map(|(link, _)| measured_link_size(profile.shard_measure, link))
        .sum();
    let base = match profile.shard_measure {
        ShardMeasure::LinkBytes => 0,
        ShardMeasure::BlockBytes => EMPTY_DIRECTORY_DATA_FIELD,
    };
    let mut links: Vec<DirLink> = entries.into_iter().map(|(link, _)| link).collect();
    if base + measured > profile.shard_threshold {
        let (cid, tsize) = hamt::build_shard(links, profile.cid_version, sink)?;
        return Ok(Imported {
            cid,
            size: 0,
            tsize,
        });
    }
    links.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    let children_tsize: u64 = links.iter().map(|link| link.tsize).sum();
    let node = PbNode {
        links: links
            .into_iter()
            .map(|link| PbLink {
                cid: link.cid,
                name: Some(link.name),
                tsize: Some(link.tsize),
            })
            .collect(),
        data: Some(UnixfsData::new(DataType::Directory).encode()),
    };
    let (cid, block_len) = store_node(&node, profile.cid_version, sink)?;
    Ok(Imported {
        cid,
        size: 0,
        tsize: block_len as u64 + children_tsize,
    })
}

/// The Data field of a plain directory node: key, length, and `Type = Directory`.
const EMPTY_DIRECTORY_DATA_FIELD: usize = 4;

fn measured_link_size(measure: ShardMeasure, link: &DirLink) -> usize {
    let name_len = link.name.len();
    let cid_len = link.cid.encoded_len();
    match measure {
        ShardMeasure::LinkBytes => name_len + cid_len,
        ShardMeasure::BlockBytes => {
            // Each field is a one-byte key, then a length or value varint.
            let hash_field = 1 + varint::encoded_len(cid_len as u64) + cid_len;
            let name_field = 1 + varint::encoded_len(name_len as u64) + name_len;
            let tsize_field = 1 + varint::encoded_len(link.tsize);
            let link_message = hash_field + name_field + tsize_field;
            1 + varint::encoded_len(link_message as u64) + link_message
        }
    }
}

/// Encodes a dag-pb node, names it and hands it to `sink`; returns its CID and length.
pub(crate) fn store_node(
    node: &PbNode,
    cid_version: u8,
    sink: &impl BlockPut,
) -> Result<(Cid, usize), BlockError> {
    let bytes = node.encode();
    let cid = if cid_version == 0 {
        cid_v0(&bytes)
    } else {
        cid_v1(codec::DAG_PB, &bytes)
    };
    sink.put_hashed_block(&cid, &bytes)?;
    Ok((cid, bytes.len()))
}

/// A finished part of a file's DAG, as its parent needs it.
#[derive(Debug, Clone, Copy)]
struct Child {
    cid: Cid,
    tsize: u64,
    file_bytes: u64,
}

/// Imports one file's bytes from `reader`. With `origin`, `reader` reads that file from
/// its start, and the store may copy raw leaves from it instead of writing them out.
fn import_stream<R: Read + Send>(
    mut reader: R,
    origin: Option<&File>,
    size_hint: u64,
    profile: &Profile,
    sink: &impl BlockPut,
    read_error: &dyn Fn(io::Error) -> ImportError,
    progress: &dyn Fn(u64),
) -> Result<Imported, ImportError> {
    let chunks_per_batch = (BATCH_BYTES / profile.chunk_size).max(1);
    let batch_bytes = chunks_per_batch * profile.chunk_size;
    // Most files in a folder are small: size the first buffer for the file when its size
    // is known (one byte more, so the read that finds the end needs no room of its own).
    let first_len = usize::try_from(size_hint.saturating_add(1))
        .map_or(batch_bytes, |len| len.min(batch_bytes));
    let mut current = Batch {
        buffer: vec![0; first_len],
        len: 0,
    };
    let mut next = Batch {
        buffer: Vec::new(),
        len: 0,
    };
    current.fill(&mut reader, batch_bytes).map_err(read_error)?;

    let mut layout = BalancedLayout::new(profile, sink);
    let mut bytes_read = 0u64;
    loop {
        let batch_start = bytes_read;
        bytes_read += current.len as u64;
        progress(bytes_read);
        let origin = origin.map(|file| (file, batch_start));
        if current.len < batch_bytes {
            if bytes_read == 0 {
                // An empty file is one empty leaf, as in the reference.
                layout.push_leaf(hash_leaf(&[], None, profile, sink)?)?;
            }
            for leaf in hash_batch(current.bytes(), origin, profile, sink)? {
                layout.push_leaf(leaf)?;
            }
            break;
        }
        // Both halves run on the pool, so the thread that reads joins in the hashing as
        // soon as its read is done.
        let (read, hashed) = rayon::join(
            || next.fill(&mut reader, batch_bytes),
            || hash_batch(current.bytes(), origin, profile, sink),
        );
        for leaf in hashed? {
            layout.push_leaf(leaf)?;
        }
        read.map_err(read_error)?;
        std::mem::swap(&mut current, &mut next);
    }
    let root = layout.finish()?;
    Ok(Imported {
        cid: root.cid,
        size: root.file_bytes,
        tsize: root.tsize,
    })
}

/// A reusable read buffer and how much of it the last fill used.
struct Batch {
    buffer: Vec<u8>,
    len: usize,
}

impl Batch {
    /// Reads until `limit` bytes are in or the stream ends, so chunk boundaries do not
    /// depend on how the reader splits its reads. Reads go straight into the buffer, which
    /// only grows, and is zeroed only when it does.
    fn fill(&mut self, reader: &mut impl Read, limit: usize) -> io::Result<()> {
        self.len = 0;
        loop {
            if self.len == self.buffer.len() {
                if self.len >= limit {
                    return Ok(());
                }
                let grown = (self.buffer.len() * 2).max(64 * 1024).min(limit);
                self.buffer.resize(grown, 0);
            }
            let room = limit.min(self.buffer.len());
            match reader.read(&mut self.buffer[self.len..room]) {
                Ok(0) => return Ok(()),
                Ok(read) => self.len += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

/// Hashes a batch's leaves on the pool. `origin` is the file and offset the batch was
/// read from, when it was read from a file.
fn hash_batch(
    batch: &[u8],
    origin: Option<(&File, u64)>,
    profile: &Profile,
    sink: &impl BlockPut,
) -> Result<Vec<Child>, BlockError> {
    let chunk_size = profile.chunk_size;
    batch
        .par_chunks(chunk_size)
        .enumerate()
        .map(|(index, chunk)| {
            let origin = origin.map(|(file, start)| (file, start + (index * chunk_size) as u64));
            hash_leaf(chunk, origin, profile, sink)
        })
        .collect()
}

fn hash_leaf(
    chunk: &[u8],
    origin: Option<(&File, u64)>,
    profile: &Profile,
    sink: &impl BlockPut,
) -> Result<Child, BlockError> {
    let file_bytes = chunk.len() as u64;
    if profile.raw_leaves {
        // Raw blocks can only be named by CIDv1, whatever the profile's version.
        let cid = cid_v1(codec::RAW, chunk);
        match origin {
            Some((file, offset)) => sink.put_hashed_block_from(&cid, chunk, file, offset)?,
            None => sink.put_hashed_block(&cid, chunk)?,
        }
        return Ok(Child {
            cid,
            tsize: file_bytes,
            file_bytes,
        });
    }
    let block = file_leaf_block(chunk);
    let cid = if profile.cid_version == 0 {
        cid_v0(&block)
    } else {
        cid_v1(codec::DAG_PB, &block)
    };
    sink.put_hashed_block(&cid, &block)?;
    Ok(Child {
        cid,
        tsize: block.len() as u64,
        file_bytes,
    })
}

/// A dag-pb leaf holding `chunk` in a UnixFS File message, written straight into one buffer
/// to avoid copying each chunk twice. Empty data is left out, as the reference does.
fn file_leaf_block(chunk: &[u8]) -> Vec<u8> {
    let data_field = if chunk.is_empty() {
        0
    } else {
        1 + varint::encoded_len(chunk.len() as u64) + chunk.len()
    };
    let unixfs_len = 2 + data_field + 1 + varint::encoded_len(chunk.len() as u64);
    let mut block = Vec::with_capacity(1 + varint::encoded_len(unixfs_len as u64) + unixfs_len);
    block.push(0x0a); // PBNode.Data
    varint::put(&mut block, unixfs_len as u64);
    block.extend_from_slice(&[0x08, DataType::File as u8]);
    if !chunk.is_empty() {
        block.push(0x12); // Data.Data
        varint::put(&mut block, chunk.len() as u64);
        block.extend_from_slice(chunk);
    }
    block.push(0x18); // Data.filesize
    varint::put(&mut block, chunk.len() as u64);
    block
}

/// The balanced layout, built as leaves arrive: level 0 collects leaves, and whenever a
/// level holds `max_links` children they become one File node on the level above. This is
/// the reference's layout (group the leaves by `max_links`, then group those nodes, until
/// one is left) without holding a file's leaves in memory.
struct BalancedLayout<'a, S> {
    levels: Vec<Vec<Child>>,
    max_links: usize,
    cid_version: u8,
    sink: &'a S,
}

impl<'a, S: BlockPut> BalancedLayout<'a, S> {
    fn new(profile: &Profile, sink: &'a S) -> Self {
        BalancedLayout {
            levels: vec![Vec::new()],
            max_links: profile.max_links,
            cid_version: profile.cid_version,
            sink,
        }
    }

    fn push_leaf(&mut self, leaf: Child) -> Result<(), BlockError> {
        self.push(0, leaf)
    }

    fn push(&mut self, level: usize, child: Child) -> Result<(), BlockError> {
        if self.levels.len() == level {
            self.levels.push(Vec::new());
        }
        self.levels[level].push(child);
        if self.levels[level].len() == self.max_links {
            let full = std::mem::take(&mut self.levels[level]);
            let node = self.file_node(&full)?;
            self.push(level + 1, node)?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Child, BlockError> {
        let mut level = 0;
        loop {
            let higher_levels_used = self.levels[level + 1..]
                .iter()
                .any(|children| !children.is_empty());
            let children = std::mem::take(&mut self.levels[level]);
            // One child left at the top is the root: a lone leaf is the file itself.
            if !higher_levels_used && children.len() == 1 {
                return Ok(children[0]);
            }
            if !children.is_empty() {
                let node = self.file_node(&children)?;
                if self.levels.len() == level + 1 {
                    self.levels.push(Vec::new());
                }
                self.levels[level + 1].push(node);
            }
            level += 1;
        }
    }

    /// A File node linking `children` in order: links before data, each link with an empty
    /// name and its child's Tsize, one blocksizes entry per child.
    fn file_node(&self, children: &[Child]) -> Result<Child, BlockError> {
        let mut data = UnixfsData::new(DataType::File);
        data.blocksizes = children.iter().map(|child| child.file_bytes).collect();
        let file_bytes = data.blocksizes.iter().sum();
        data.filesize = Some(file_bytes);
        let node = PbNode {
            links: children
                .iter()
                .map(|child| PbLink {
                    cid: child.cid,
                    name: Some(String::new()),
                    tsize: Some(child.tsize),
                })
                .collect(),
            data: Some(data.encode()),
        };
        let (cid, block_len) = store_node(&node, self.cid_version, self.sink)?;
        let tsize = block_len as u64 + children.iter().map(|child| child.tsize).sum::<u64>();
        Ok(Child {
            cid,
            tsize,
            file_bytes,
        })
    }
}

/// Builds a UnixFS tree from entries that arrive one at a time, depth first, each folder
/// before what it holds (see [`TreeSink`]): from [`walk`] on this machine, or from a stream
/// sent by another program. A folder is finished, and its CID known, as soon as an entry
/// outside it arrives, so memory holds only the folders still open.
pub struct TreeBuilder<'a, S> {
    profile: &'a Profile,
    sink: &'a S,
    on_entry: &'a mut dyn FnMut(&str, &Imported),
    progress: &'a dyn Fn(u64),
    bytes_done: u64,
    open: Vec<OpenFolder>,
    root: Option<Imported>,
}

struct OpenFolder {
    path: String,
    links: Vec<(DirLink, bool)>,
    names: std::collections::HashSet<String>,
    size: u64,
}

impl<'a, S: BlockPut> TreeBuilder<'a, S> {
    pub fn new(
        profile: &'a Profile,
        sink: &'a S,
        on_entry: &'a mut dyn FnMut(&str, &Imported),
        progress: &'a dyn Fn(u64),
    ) -> Self {
        TreeBuilder {
            profile,
            sink,
            on_entry,
            progress,
            bytes_done: 0,
            open: Vec::new(),
            root: None,
        }
    }

    /// Opens a folder.
    pub fn dir(&mut self, path: &str) -> Result<(), ImportError> {
        let name = self.place(path)?;
        if let Some(parent) = self.open.last_mut() {
            parent.names.insert(name);
        }
        self.open.push(OpenFolder {
            path: path.to_string(),
            links: Vec::new(),
            names: Default::default(),
            size: 0,
        });
        Ok(())
    }

    /// Imports a file's bytes from `content`; `read_error` names the source when reading
    /// fails.
    pub fn file(
        &mut self,
        path: &str,
        content: &mut (dyn Read + Send),
        size_hint: u64,
        read_error: &dyn Fn(io::Error) -> ImportError,
    ) -> Result<Imported, ImportError> {
        let name = self.place(path)?;
        let base = self.bytes_done;
        let progress = self.progress;
        let imported = import_stream(
            content,
            None,
            size_hint,
            self.profile,
            self.sink,
            read_error,
            &|read| progress(base + read),
        )?;
        self.attach(path, name, imported);
        Ok(imported)
    }

    /// Imports a regular file from its start. Its raw leaves may be copied from `file`
    /// inside the kernel instead of written from memory, so the file must not change
    /// while it is read: its size and times are compared before and after, and a file
    /// that changed is refused. `interrupt` is asked before every read and stops the
    /// import with its error. `source` names the file in messages.
    pub fn file_at(
        &mut self,
        path: &str,
        file: &File,
        source: &Path,
        interrupt: &(dyn Fn() -> io::Result<()> + Sync),
    ) -> Result<Imported, ImportError> {
        let name = self.place(path)?;
        let before = file.metadata().map_err(|err| unreadable(source, err))?;
        let base = self.bytes_done;
        let progress = self.progress;
        let reader = FileFromStart {
            file,
            position: 0,
            interrupt,
        };
        let imported = import_stream(
            reader,
            Some(file),
            before.len(),
            self.profile,
            self.sink,
            &|err| unreadable(source, err),
            &|read| progress(base + read),
        )?;
        let after = file.metadata().map_err(|err| unreadable(source, err))?;
        let stamp = |m: &Metadata| {
            (
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            )
        };
        if stamp(&before) != stamp(&after) || imported.size != after.len() {
            return Err(ImportError::ChangedWhileAdded(source.to_path_buf()));
        }
        self.attach(path, name, imported);
        Ok(imported)
    }

    /// Records a finished file in its folder (or as the root).
    fn attach(&mut self, path: &str, name: String, imported: Imported) {
        self.bytes_done += imported.size;
        (self.on_entry)(path, &imported);
        match self.open.last_mut() {
            Some(parent) => {
                parent.size += imported.size;
                parent.names.insert(name.clone());
                parent.links.push((
                    DirLink {
                        name,
                        cid: imported.cid,
                        tsize: imported.tsize,
                    },
                    true,
                ));
            }
            None => self.root = Some(imported),
        }
    }

    /// Finishes every open folder and returns the root.
    pub fn finish(mut self) -> Result<Imported, ImportError> {
        while !self.open.is_empty() {
            self.close_folder()?;
        }
        self.root.ok_or(ImportError::EmptyTree)
    }

    /// Checks where `path` goes, finishing the folders it is not in; returns its name.
    fn place(&mut self, path: &str) -> Result<String, ImportError> {
        let bad = |reason: &str| ImportError::BadEntryPath {
            path: path.to_string(),
            reason: reason.to_string(),
        };
        let (parent, name) = match path.rsplit_once('/') {
            Some((parent, name)) => (Some(parent), name),
            None => (None, path),
        };
        if name.is_empty() || name == "." || name == ".." || name.contains('\0') {
            return Err(bad("not a valid file or folder name"));
        }
        if self.root.is_some() {
            return Err(bad("the tree's root was already complete"));
        }
        let Some(parent) = parent else {
            if self.open.is_empty() {
                return Ok(name.to_string());
            }
            return Err(bad("a second root"));
        };
        while self.open.last().is_some_and(|top| top.path != parent) {
            self.close_folder()?;
        }
        match self.open.last() {
            None => Err(bad(
                "its folder is not open: folders must come before what they hold, depth first",
            )),
            Some(top) if top.names.contains(name) => Err(bad("a second entry with this name")),
            Some(_) => Ok(name.to_string()),
        }
    }

    fn close_folder(&mut self) -> Result<(), ImportError> {
        let Some(folder) = self.open.pop() else {
            return Ok(());
        };
        let has_entries = !folder.links.is_empty();
        let mut imported = directory_node(folder.links, self.profile, self.sink)?;
        imported.size = folder.size;
        (self.on_entry)(&folder.path, &imported);
        let name = folder
            .path
            .rsplit_once('/')
            .map_or(folder.path.as_str(), |(_, name)| name)
            .to_string();
        match self.open.last_mut() {
            Some(parent) => {
                parent.size += imported.size;
                parent.links.push((
                    DirLink {
                        name,
                        cid: imported.cid,
                        tsize: imported.tsize,
                    },
                    // The reference measures a folder before its non-empty sub-folders
                    // have CIDs: see `directory_node`.
                    !has_entries,
                ));
            }
            None => self.root = Some(imported),
        }
        Ok(())
    }
}

impl<S: BlockPut> TreeSink for TreeBuilder<'_, S> {
    fn dir(&mut self, path: &str) -> Result<(), ImportError> {
        TreeBuilder::dir(self, path)
    }

    fn file(
        &mut self,
        path: &str,
        file: &mut File,
        _size: u64,
        source: &Path,
    ) -> Result<(), ImportError> {
        TreeBuilder::file_at(self, path, file, source, &|| Ok(())).map(|_| ())
    }
}

/// A file read from its start with positioned reads, which leave the descriptor's own
/// offset alone (it may be shared with the process that handed it over).
struct FileFromStart<'a> {
    file: &'a File,
    position: u64,
    interrupt: &'a (dyn Fn() -> io::Result<()> + Sync),
}

impl Read for FileFromStart<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        (self.interrupt)()?;
        let read = self.file.read_at(buf, self.position)?;
        self.position += read as u64;
        Ok(read)
    }
}

struct FolderEntry {
    name: String,
    path: PathBuf,
    metadata: Metadata,
}

/// The entries of a folder that get added, sorted by name, with symbolic links resolved.
fn list_folder(path: &Path) -> Result<Vec<FolderEntry>, ImportError> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(path).map_err(|source| unreadable(path, source))? {
        let entry = entry.map_err(|source| unreadable(path, source))?;
        let entry_path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| ImportError::NameNotUtf8(entry_path.clone()))?;
        if name.starts_with('.') {
            continue;
        }
        let metadata = metadata_of(&entry_path)?;
        entries.push(FolderEntry {
            name,
            path: entry_path,
            metadata,
        });
    }
    entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    Ok(entries)
}

/// Records entering a folder; fails if the folder is already being walked, which only a
/// symbolic link pointing back up can cause.
fn enter(
    path: &Path,
    metadata: &Metadata,
    ancestors: &mut Vec<(u64, u64)>,
) -> Result<(), ImportError> {
    let identity = (metadata.dev(), metadata.ino());
    if ancestors.contains(&identity) {
        return Err(ImportError::SymlinkLoop(path.to_path_buf()));
    }
    ancestors.push(identity);
    Ok(())
}

/// Metadata with symbolic links followed; a chain of links that never ends is a loop.
fn metadata_of(path: &Path) -> Result<Metadata, ImportError> {
    fs::metadata(path).map_err(|source| {
        if source.raw_os_error() == Some(libc::ELOOP) {
            ImportError::SymlinkLoop(path.to_path_buf())
        } else {
            unreadable(path, source)
        }
    })
}

fn unreadable(path: &Path, source: io::Error) -> ImportError {
    ImportError::Unreadable {
        path: path.to_path_buf(),
        source,
    }
}

/// The name an imported root is reported under: its last component, or the folder's own
/// name for paths such as `.`.
fn display_name(path: &Path) -> Result<String, ImportError> {
    let name = match path.file_name() {
        Some(name) => name.to_os_string(),
        None => {
            let canonical = fs::canonicalize(path).map_err(|source| unreadable(path, source))?;
            canonical
                .file_name()
                .map(|name| name.to_os_string())
                .unwrap_or_default()
        }
    };
    name.into_string()
        .map_err(|_| ImportError::NameNotUtf8(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockGet, MemoryBlocks};

    fn tiny_profile(max_links: usize) -> Profile {
        Profile {
            chunk_size: 4,
            max_links,
            ..Profile::UNIXFS_V1_2025
        }
    }

    fn decode(blocks: &MemoryBlocks, cid: &Cid) -> (PbNode, UnixfsData) {
        let node = PbNode::decode(&blocks.get_block(cid).unwrap()).unwrap();
        let data = UnixfsData::decode(node.data.as_deref().unwrap()).unwrap();
        (node, data)
    }

    #[test]
    fn a_file_that_changes_while_it_is_added_is_refused() {
        use std::io::{Seek, SeekFrom, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lesson.txt");
        std::fs::write(&path, b"first draft of the lesson").unwrap();
        let file = File::open(&path).unwrap();
        let blocks = MemoryBlocks::new();
        let profile = tiny_profile(174);
        let mut on_entry = |_: &str, _: &Imported| {};
        let progress = |_| {};
        let mut builder = TreeBuilder::new(&profile, &blocks, &mut on_entry, &progress);
        // The file is edited in place, same size, after its bytes were read.
        let reads = AtomicUsize::new(0);
        let edit_after_the_first_read = || {
            if reads.fetch_add(1, Ordering::SeqCst) == 1 {
                let mut editor = std::fs::OpenOptions::new().write(true).open(&path)?;
                editor.seek(SeekFrom::Start(0))?;
                editor.write_all(b"FINAL")?;
            }
            Ok(())
        };
        let refused = builder.file_at("lesson.txt", &file, &path, &edit_after_the_first_read);
        assert!(
            matches!(refused, Err(ImportError::ChangedWhileAdded(ref named)) if *named == path),
            "{refused:?}"
        );
        let mut builder = TreeBuilder::new(&profile, &blocks, &mut on_entry, &progress);
        let added = builder
            .file_at("lesson.txt", &file, &path, &|| Ok(()))
            .unwrap();
        let expected = import_reader(
            &b"FINAL draft of the lesson"[..],
            &profile,
            &blocks,
            &|_| {},
        );
        assert_eq!(added.cid, expected.unwrap().cid);
    }

    #[test]
    fn one_level_tsize_and_blocksizes() {
        let blocks = MemoryBlocks::new();
        let imported =
            import_reader(&b"abcdefghij"[..], &tiny_profile(3), &blocks, &|_| {}).unwrap();
        let (node, data) = decode(&blocks, &imported.cid);
        assert_eq!(data.data_type, DataType::File);
        assert_eq!(data.filesize, Some(10));
        assert_eq!(data.blocksizes, [4, 4, 2]);
        let tsizes: Vec<_> = node.links.iter().map(|link| link.tsize).collect();
        assert_eq!(tsizes, [Some(4), Some(4), Some(2)]);
        assert!(node
            .links
            .iter()
            .all(|link| link.name.as_deref() == Some("")));
        // Each link: 2 + 36 (CID) + 2 (empty name) + 2 (Tsize) inside 2 bytes of framing = 44;
        // data: Type, filesize and three blocksizes = 10 bytes inside 2 of framing = 12.
        assert_eq!(imported.tsize, 3 * 44 + 12 + 10);
        assert_eq!(imported.size, 10);
    }

    #[test]
    fn two_levels_wrap_a_lone_trailing_leaf() {
        let blocks = MemoryBlocks::new();
        let imported =
            import_reader(&b"abcdefghij"[..], &tiny_profile(2), &blocks, &|_| {}).unwrap();
        let (root, data) = decode(&blocks, &imported.cid);
        assert_eq!(data.blocksizes, [8, 2]);
        let (second, second_data) = decode(&blocks, &root.links[1].cid);
        assert_eq!(
            second.links.len(),
            1,
            "the last leaf gets a node of its own"
        );
        assert_eq!(second_data.blocksizes, [2]);
        // Tsize counts every block of the DAG exactly once.
        let all_bytes: usize = blocks.into_blocks().values().map(Vec::len).sum();
        assert_eq!(imported.tsize, all_bytes as u64);
    }

    #[test]
    fn single_chunk_file_is_its_leaf() {
        let blocks = MemoryBlocks::new();
        let imported = import_reader(
            &b"hello world"[..],
            &Profile::UNIXFS_V1_2025,
            &blocks,
            &|_| {},
        )
        .unwrap();
        assert_eq!(
            imported.cid.to_string(),
            "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
        );
        let v0 = import_reader(
            &b"hello world"[..],
            &Profile::UNIXFS_V0_2015,
            &blocks,
            &|_| {},
        )
        .unwrap();
        assert_eq!(
            v0.cid.to_string(),
            "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD"
        );
        assert_eq!(blocks.len(), 2);
    }

    #[test]
    fn file_leaf_matches_generic_encoding() {
        for chunk in [&b""[..], b"x", &[7u8; 300]] {
            let mut data = UnixfsData::new(DataType::File);
            data.data = (!chunk.is_empty()).then(|| chunk.to_vec());
            data.filesize = Some(chunk.len() as u64);
            let generic = PbNode {
                links: vec![],
                data: Some(data.encode()),
            }
            .encode();
            assert_eq!(file_leaf_block(chunk), generic);
        }
    }

    #[test]
    fn empty_directories() {
        let sink = MemoryBlocks::discarding();
        let v0 = build_directory(Vec::new(), &Profile::UNIXFS_V0_2015, &sink).unwrap();
        assert_eq!(
            v0.cid.to_string(),
            "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
        );
        let v1 = build_directory(Vec::new(), &Profile::UNIXFS_V1_2025, &sink).unwrap();
        assert_eq!(
            v1.cid.to_string(),
            "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
        );
        assert_eq!(v1.tsize, 4);
    }

    #[test]
    fn measured_link_size_matches_encoding() {
        let link = DirLink {
            name: "μάθημα.txt".into(),
            cid: cid_v1(codec::RAW, b"x"),
            tsize: 300,
        };
        let node = PbNode {
            links: vec![PbLink {
                cid: link.cid,
                name: Some(link.name.clone()),
                tsize: Some(link.tsize),
            }],
            data: Some(UnixfsData::new(DataType::Directory).encode()),
        };
        assert_eq!(
            measured_link_size(ShardMeasure::BlockBytes, &link) + EMPTY_DIRECTORY_DATA_FIELD,
            node.encode().len()
        );
        assert_eq!(
            measured_link_size(ShardMeasure::LinkBytes, &link),
            link.name.len() + 36
        );
    }
}
