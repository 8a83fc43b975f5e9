//! A node's repository on disk: config, node key, lock, and the block store.
//!
//! ```text
//! REPO/
//!   config.toml   documented settings (see config.rs)
//!   node.key      the node's ed25519 identity (mode 0600)
//!   keys/         publisher keys (mode 0600 each)
//!   repo.lock     held by the one process that has the repository open
//!   db/           sled: block index, small blocks, pins, records, collections
//!   blocks/       large blocks, one file each
//!   tmp/          block files being written; emptied on open
//!   search/       the search index of the records (derived; rebuilt when missing)
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError, DEFAULT_CONFIG};
use crate::records::{RecordBook, RecordError, TrustedPublishers};
use crate::store::{Store, StoreConfig, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("no oermesh repository at {0}; create one with `oermesh init` (or choose another with --repo or OERMESH_REPO)")]
    Missing(PathBuf),
    #[error("{0} already holds an oermesh repository")]
    Exists(PathBuf),
    #[error("repository {path} is in use by another oermesh process{pid}; stop it or use another --repo")]
    Locked {
        path: PathBuf,
        pid: String,
        /// The holder is a daemon, whose API other commands can use instead.
        daemon: bool,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error(transparent)]
    Records(#[from] RecordError),
}

/// An open repository. Holding it holds the repository's lock.
pub struct Repo {
    root: PathBuf,
    config: Config,
    store: Store,
    _lock: File,
}

impl Repo {
    /// `~/.oermesh`, or `./.oermesh` where no home directory is known.
    pub fn default_path() -> PathBuf {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".oermesh")
    }

    /// Creates a repository at `root`. Refuses to touch a directory that already is one.
    pub fn init(root: &Path) -> Result<Repo, RepoError> {
        let io_err = |action, path: &Path| {
            let path = path.to_path_buf();
            move |source| RepoError::Io {
                action,
                path,
                source,
            }
        };
        if root.join("config.toml").exists() {
            return Err(RepoError::Exists(root.to_path_buf()));
        }
        fs::create_dir_all(root).map_err(io_err("create", root))?;
        let key_path = root.join("node.key");
        if !key_path.exists() {
            crate::keys::write_key_file(&key_path, &crate::keys::generate_signing_key()?)?;
        }
        let config_path = root.join("config.toml");
        write_new(&config_path, DEFAULT_CONFIG.as_bytes())
            .map_err(io_err("write", &config_path))?;
        Repo::open(root)
    }

    /// Opens an existing repository, taking its lock.
    pub fn open(root: &Path) -> Result<Repo, RepoError> {
        let config_path = root.join("config.toml");
        if !config_path.is_file() {
            return Err(RepoError::Missing(root.to_path_buf()));
        }
        let lock = lock_repo(root)?;
        let config = Config::load(&config_path)?;
        let store_config = StoreConfig {
            cache_bytes: config.store.cache_mb * 1024 * 1024,
        };
        let store = Store::open(root, &store_config)?;
        Ok(Repo {
            root: root.to_path_buf(),
            config,
            store,
            _lock: lock,
        })
    }

    /// Opens the repository, creating it first if there is none (the daemon's start).
    pub fn open_or_init(root: &Path) -> Result<(Repo, bool), RepoError> {
        if root.join("config.toml").is_file() {
            Ok((Repo::open(root)?, false))
        } else {
            Ok((Repo::init(root)?, true))
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Records in the lock file that the holder is the daemon, so that a command that
    /// finds the repository held waits for the daemon's API instead of giving up.
    pub fn mark_daemon(&self) -> Result<(), RepoError> {
        use std::os::unix::fs::FileExt;
        let text = format!("{} daemon\n", std::process::id());
        self._lock
            .set_len(0)
            .and_then(|()| self._lock.write_all_at(text.as_bytes(), 0))
            .map_err(|source| RepoError::Io {
                action: "write",
                path: self.root.join("repo.lock"),
                source,
            })
    }

    pub fn node_key_path(&self) -> PathBuf {
        self.root.join("node.key")
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }

    /// The record layer over this repository's store. It trusts the publishers in the
    /// config and this node's own publisher keys: what a school signs itself needs no
    /// separate vouching.
    pub fn records(&self) -> Result<RecordBook<Store>, RepoError> {
        Ok(RecordBook::open(
            self.store.db(),
            self.store.clone(),
            self.trusted_publishers()?,
        )?)
    }

    /// The publishers in the config and this node's own publisher keys.
    pub fn trusted_publishers(&self) -> Result<TrustedPublishers, RepoError> {
        let mut dids = self.config.trust.publishers.clone();
        if self.keys_dir().is_dir() {
            dids.extend(
                crate::keys::list(&self.keys_dir())?
                    .into_iter()
                    .map(|key| key.did),
            );
        }
        Ok(TrustedPublishers::new(dids.iter())?)
    }
}

fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// How long opening waits for a lock this process itself holds to be released.
const OWN_LOCK_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Takes an advisory lock on `repo.lock` and records our pid in it, so a second
/// process can say who holds the repository. The OS drops the lock if we die.
fn lock_repo(root: &Path) -> Result<File, RepoError> {
    let path = root.join("repo.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| RepoError::Io {
            action: "open",
            path: path.clone(),
            source,
        })?;
    // A child process that another thread of this process is starting holds a copy of
    // every descriptor, and so of the lock, until it runs its program: when the holder is
    // this very process, the lock is being released, so wait for it, briefly.
    let deadline = std::time::Instant::now() + OWN_LOCK_RELEASE_WAIT;
    let ours = std::process::id().to_string();
    let locked = loop {
        match file.try_lock() {
            Err(fs::TryLockError::WouldBlock)
                if std::time::Instant::now() < deadline
                    && fs::read_to_string(&path)
                        .is_ok_and(|holder| holder.split_whitespace().next() == Some(&ours)) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => break other,
        }
    };
    match locked {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            let mut words = holder.split_whitespace();
            let pid = words.next();
            return Err(RepoError::Locked {
                path: root.to_path_buf(),
                pid: pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default(),
                daemon: words.next() == Some("daemon"),
            });
        }
        Err(fs::TryLockError::Error(source)) => {
            return Err(RepoError::Io {
                action: "lock",
                path,
                source,
            })
        }
    }
    file.set_len(0)
        .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .map_err(|source| RepoError::Io {
            action: "write",
            path,
            source,
        })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// A child process started by another thread holds a copy of every descriptor of
    /// this process until it runs its program; the repository's lock goes with it.
    #[test]
    fn a_repository_closed_and_opened_again_at_once_waits_out_children_being_started() {
        let dir = tempfile::tempdir().unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::process::Command::new("true").status();
                }
            });
            for _ in 0..1500 {
                let lock = lock_repo(dir.path());
                if lock.is_err() {
                    stop.store(true, Ordering::Relaxed);
                }
                drop(lock.unwrap());
            }
            stop.store(true, Ordering::Relaxed);
        });
    }
}
