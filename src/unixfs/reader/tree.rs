//! Writing a file, directory tree or symlink to disk.

use std::fs;
use std::io;
use std::path::Path;

use cid::Cid;

use super::dir::directory_links;
use super::file::read_loaded_file;
use super::node::{load, Node};
use super::{ReadError, MAX_DEPTH};
use crate::block::BlockGet;

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
