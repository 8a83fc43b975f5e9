//! The directory of large blocks: one file per block, named by its multihash.
//!
//! A block file is written under `tmp/`, then renamed into `blocks/`; nothing refers to
//! it until the sled index entry for it commits, and that happens only after the
//! files have been synced (see `WriteBatch::commit_held`). A file in `blocks/` without an index
//! entry is an orphan left by a crash: reads never see it and `gc` deletes it.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cid::multibase::{self, Base};
use multihash::Multihash;

use crate::block::BlockError;

pub(crate) struct BlockDir {
    blocks: PathBuf,
    tmp: PathBuf,
    next_tmp: AtomicU64,
}

impl BlockDir {
    /// Opens the directory, removing temp files of writes a crash interrupted.
    pub(crate) fn open(repo: &Path) -> io::Result<Self> {
        let blocks = repo.join("blocks");
        let tmp = repo.join("tmp");
        fs::create_dir_all(&blocks)?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        Ok(BlockDir {
            blocks,
            tmp,
            next_tmp: AtomicU64::new(0),
        })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.blocks
    }

    /// `blocks/<shard>/<multihash in base32>`; the shard is two characters near the
    /// end of the name, which are uniformly distributed (unlike the multihash prefix).
    pub(crate) fn path_of(&self, hash: &Multihash<64>) -> PathBuf {
        let name = file_name(hash);
        let shard = &name[name.len() - 3..name.len() - 1];
        self.blocks.join(shard).join(name)
    }

    /// Writes `data` as the block file for `hash`, replacing whatever is there: a file
    /// left without an index entry may be torn, so it is never trusted.
    pub(crate) fn write(&self, hash: &Multihash<64>, data: &[u8]) -> io::Result<()> {
        self.place(hash, false, |mut file| file.write_all(data))
    }

    /// Like [`BlockDir::write`], but the file and its name are on disk when this returns:
    /// for single blocks written outside a batch.
    pub(crate) fn write_durable(&self, hash: &Multihash<64>, data: &[u8]) -> io::Result<()> {
        self.place(hash, true, |mut file| file.write_all(data))
    }

    /// Writes the block file for `hash` by copying `data.len()` bytes of `source` from
    /// `offset` inside the kernel (`copy_file_range`), which on this kind of machine costs
    /// a fraction of writing the same bytes from memory. Falls back to writing `data` where
    /// the kernel cannot copy between the two files (another file system, say). The bytes
    /// are the caller's responsibility: it hashed `data`, read from the same place.
    pub(crate) fn copy_from(
        &self,
        hash: &Multihash<64>,
        data: &[u8],
        source: &File,
        offset: u64,
    ) -> io::Result<()> {
        self.place(hash, false, |mut file| {
            if !copy_range(source, offset, file, data.len())? {
                file.write_all(data)?;
            }
            Ok(())
        })
    }

    /// Fills a temp file with `fill`, then renames it to the block's place, so that a
    /// block file is never seen half written; a failure leaves no temp file behind.
    fn place(
        &self,
        hash: &Multihash<64>,
        durable: bool,
        fill: impl FnOnce(&File) -> io::Result<()>,
    ) -> io::Result<()> {
        let final_path = self.path_of(hash);
        let tmp_path = self.tmp_path();
        let result = (|| {
            let file = File::create(&tmp_path)?;
            fill(&file)?;
            if durable {
                file.sync_data()?;
            }
            drop(file);
            let parent = final_path.parent().unwrap_or(&self.blocks);
            fs::create_dir_all(parent)?;
            fs::rename(&tmp_path, &final_path)?;
            if durable {
                File::open(parent)?.sync_all()?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp_path);
        }
        result
    }

    fn tmp_path(&self) -> PathBuf {
        self.tmp.join(format!(
            "{}-{}",
            std::process::id(),
            self.next_tmp.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// The error for a block file that could not be written, naming the file (a full
    /// disk says "No space left on device" here).
    pub(crate) fn write_error(&self, hash: &Multihash<64>, err: io::Error) -> BlockError {
        BlockError::Backend(format!(
            "cannot write block file {}: {err}",
            self.path_of(hash).display()
        ))
    }

    /// Reads the block file of `hash`, which its index entry says holds `size` bytes (the
    /// caller has checked that against the largest block size). At most one byte more is
    /// read: enough to tell a longer file from a whole one.
    pub(crate) fn read(&self, hash: &Multihash<64>, size: u64) -> io::Result<Vec<u8>> {
        let file = File::open(self.path_of(hash))?;
        let mut data = Vec::with_capacity(size as usize);
        file.take(size + 1).read_to_end(&mut data)?;
        Ok(data)
    }

    pub(crate) fn remove(&self, hash: &Multihash<64>) -> io::Result<()> {
        match fs::remove_file(self.path_of(hash)) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Makes every renamed block file durable with one `syncfs` instead of an fsync per
    /// file: block files and their renames all live on this one file system.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let dir = File::open(&self.blocks)?;
        sync_file_system(&dir)
    }

    /// Every block file present, as (multihash, bytes on disk).
    pub(crate) fn scan(&self) -> io::Result<Vec<(Multihash<64>, PathBuf)>> {
        let mut found = Vec::new();
        for shard in fs::read_dir(&self.blocks)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let entry = entry?;
                let name = entry.file_name();
                if let Some(hash) = name.to_str().and_then(parse_file_name) {
                    found.push((hash, entry.path()));
                }
            }
        }
        Ok(found)
    }
}

/// Copies `len` bytes of `source` from `offset` to the start of `target` in the kernel.
/// `false` when the kernel cannot copy between these two files and nothing was written.
fn copy_range(source: &File, offset: u64, target: &File, len: usize) -> io::Result<bool> {
    use std::os::fd::AsFd;
    let mut from = i64::try_from(offset).map_err(io::Error::other)?;
    let mut copied = 0usize;
    while copied < len {
        match nix::fcntl::copy_file_range(
            source.as_fd(),
            Some(&mut from),
            target.as_fd(),
            None,
            len - copied,
        ) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file being added became shorter while it was read",
                ))
            }
            Ok(count) => copied += count,
            Err(nix::errno::Errno::EINTR) => {}
            Err(
                nix::errno::Errno::EXDEV
                | nix::errno::Errno::EINVAL
                | nix::errno::Errno::ENOSYS
                | nix::errno::Errno::EOPNOTSUPP,
            ) if copied == 0 => return Ok(false),
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(true)
}

fn file_name(hash: &Multihash<64>) -> String {
    multibase::encode(Base::Base32Lower, hash.to_bytes())[1..].to_string()
}

fn parse_file_name(name: &str) -> Option<Multihash<64>> {
    let (_, bytes) = multibase::decode(format!("b{name}")).ok()?;
    Multihash::from_bytes(&bytes).ok()
}

#[cfg(target_os = "linux")]
fn sync_file_system(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is valid for the lifetime of `file`.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn sync_file_system(_file: &File) -> io::Result<()> {
    // SAFETY: `sync` takes no arguments and cannot fail.
    unsafe { libc::sync() };
    Ok(())
}
