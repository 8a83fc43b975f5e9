//! Publisher keys: ed25519 signing keys, their `did:key` names, and the key files they live in.
//!
//! A key directory holds one `NAME.key` file per key. A key file is a small TOML document:
//!
//! ```toml
//! # oermesh ed25519 signing key. Anyone who can read this file can sign as this publisher.
//! format = "oermesh-ed25519-key-v1"
//! did = "did:key:z6Mk..."
//! seed = "<32-byte ed25519 seed as 64 lowercase hex digits>"
//! ```
//!
//! The `did` line lets a person see whose key a file is without any tool; on reading, it must
//! match the key derived from the seed. Key files are created with mode 0600 from the start (never
//! widened and then narrowed), and a key file that group or others can read is refused.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use cid::multibase::{self, Base};
use ed25519_dalek::{SigningKey, VerifyingKey};

/// The multicodec prefix of an ed25519 public key (0xed as an unsigned varint).
const ED25519_PUB_PREFIX: [u8; 2] = [0xed, 0x01];
const DID_KEY_PREFIX: &str = "did:key:";
const KEY_FILE_FORMAT: &str = "oermesh-ed25519-key-v1";
const KEY_FILE_EXTENSION: &str = "key";
const MAX_KEY_NAME_LEN: usize = 64;
/// Key files are a few hundred bytes; anything much larger is not a key file.
const MAX_KEY_FILE_LEN: u64 = 4096;

/// Why a key or key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "invalid key name {0:?}: use 1 to {MAX_KEY_NAME_LEN} characters from A-Z a-z 0-9 . _ - \
         not starting with '.' or '-'"
    )]
    InvalidName(String),
    #[error("{0} already exists; refusing to overwrite a key")]
    AlreadyExists(PathBuf),
    #[error("no key file at {0}")]
    NotFound(PathBuf),
    #[error(
        "key file {path} can be read by other users (mode {mode:03o}); run `chmod 600 {path}` and \
         try again",
        path = .path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} is not a valid oermesh key file: {reason}", path = .path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("invalid did:key {did:?}: {reason}")]
    InvalidDid { did: String, reason: &'static str },
    #[error("could not get random bytes for a new key: {0}")]
    Random(String),
    #[error("{path}: {source}", path = .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The `did:key:z6Mk...` name of an ed25519 public key.
pub fn did_key(key: &VerifyingKey) -> String {
    let mut bytes = Vec::with_capacity(34);
    bytes.extend_from_slice(&ED25519_PUB_PREFIX);
    bytes.extend_from_slice(key.as_bytes());
    format!(
        "{DID_KEY_PREFIX}{}",
        multibase::encode(Base::Base58Btc, bytes)
    )
}

/// How many parsed did:keys are remembered. Parsing costs a curve point decompression, which
/// is a noticeable share of verifying a record, and records come from few publishers.
const DID_CACHE_CAPACITY: usize = 4096;

fn did_cache() -> &'static Mutex<HashMap<String, VerifyingKey>> {
    static CACHE: OnceLock<Mutex<HashMap<String, VerifyingKey>>> = OnceLock::new();
    CACHE.get_or_init(Mutex::default)
}

/// The public key named by an ed25519 `did:key`. Only the canonical spelling is accepted, so
/// one key has exactly one DID string (it is used as an identifier and compared as text).
pub fn parse_did_key(did: &str) -> Result<VerifyingKey, KeyError> {
    let lock = || {
        did_cache()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    if let Some(key) = lock().get(did) {
        return Ok(*key);
    }
    let key = parse_did_key_uncached(did)?;
    let mut cache = lock();
    if cache.len() >= DID_CACHE_CAPACITY {
        cache.clear();
    }
    cache.insert(did.to_string(), key);
    Ok(key)
}

fn parse_did_key_uncached(did: &str) -> Result<VerifyingKey, KeyError> {
    let invalid = |reason| KeyError::InvalidDid {
        did: did.to_string(),
        reason,
    };
    let multibase_part = did
        .strip_prefix(DID_KEY_PREFIX)
        .ok_or_else(|| invalid("does not start with did:key:"))?;
    if !multibase_part.starts_with('z') {
        return Err(invalid("key is not base58btc (must start with 'z')"));
    }
    let (_, bytes) =
        multibase::decode(multibase_part).map_err(|_| invalid("not valid base58btc"))?;
    let raw = bytes
        .strip_prefix(&ED25519_PUB_PREFIX[..])
        .ok_or_else(|| invalid("not an ed25519 key (multicodec 0xed)"))?;
    let raw: &[u8; 32] = raw
        .try_into()
        .map_err(|_| invalid("ed25519 key is not 32 bytes"))?;
    let key =
        VerifyingKey::from_bytes(raw).map_err(|_| invalid("not a point on the ed25519 curve"))?;
    if key.is_weak() {
        return Err(invalid("small-order ed25519 key"));
    }
    if did_key(&key) != did {
        return Err(invalid("not the canonical spelling of this key"));
    }
    Ok(key)
}

/// A key found in a key directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub name: String,
    pub did: String,
    pub path: PathBuf,
}

/// Checks a key name: it becomes a file name, so it must not be able to name anything else.
pub fn validate_key_name(name: &str) -> Result<(), KeyError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let ok = !name.is_empty()
        && name.len() <= MAX_KEY_NAME_LEN
        && !name.starts_with(['.', '-'])
        && name.chars().all(allowed);
    if ok {
        Ok(())
    } else {
        Err(KeyError::InvalidName(name.to_string()))
    }
}

/// Where key `name` lives in `dir`.
pub fn key_path(dir: &Path, name: &str) -> Result<PathBuf, KeyError> {
    validate_key_name(name)?;
    Ok(dir.join(format!("{name}.{KEY_FILE_EXTENSION}")))
}

/// The text of a key file holding `key`.
pub fn key_file_text(key: &SigningKey) -> String {
    let seed_hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "# oermesh ed25519 signing key. Anyone who can read this file can sign as this publisher.\n\
         format = \"{KEY_FILE_FORMAT}\"\n\
         did = \"{}\"\n\
         seed = \"{seed_hex}\"\n",
        did_key(&key.verifying_key())
    )
}

/// Writes a new key file at `path` with mode 0600. Never overwrites an existing file.
pub fn write_key_file(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::AlreadyExists(path.to_path_buf()),
            _ => KeyError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
    file.write_all(key_file_text(key).as_bytes())
        .map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))
}

/// Reads a key file, refusing one that group or others can read.
pub fn read_key_file(path: &Path) -> Result<SigningKey, KeyError> {
    let metadata = fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => KeyError::NotFound(path.to_path_buf()),
        _ => KeyError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    parse_key_file_at(path, &metadata)
}

fn parse_key_file_at(path: &Path, metadata: &fs::Metadata) -> Result<SigningKey, KeyError> {
    let malformed = |reason: String| KeyError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    if !metadata.is_file() {
        return Err(malformed("not a regular file".into()));
    }
    if metadata.len() > MAX_KEY_FILE_LEN {
        return Err(malformed(format!("larger than {MAX_KEY_FILE_LEN} bytes")));
    }
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    parse_key_file_text(&text).map_err(malformed)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFileFields {
    format: String,
    did: String,
    seed: String,
}

/// Reads a key file's text; the error says what is wrong with it.
pub fn parse_key_file_text(text: &str) -> Result<SigningKey, String> {
    let fields: KeyFileFields = toml::from_str(text).map_err(|e| e.message().to_string())?;
    if fields.format != KEY_FILE_FORMAT {
        return Err(format!(
            "format is {:?}, expected {KEY_FILE_FORMAT:?}",
            fields.format
        ));
    }
    let seed = decode_hex_32(&fields.seed).ok_or("seed is not 64 hex digits")?;
    let key = SigningKey::from_bytes(&seed);
    if did_key(&key.verifying_key()) != fields.did {
        return Err(format!(
            "did {} does not belong to the seed in the file",
            fields.did
        ));
    }
    Ok(key)
}

fn decode_hex_32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digits = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(digits, 16).ok()?;
    }
    Some(out)
}

fn ensure_key_dir(dir: &Path) -> Result<(), KeyError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error(dir))
}

/// A fresh key from the operating system's random source.
pub fn generate_signing_key() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Creates a fresh random key `name` in `dir` (created with mode 0700 if missing).
pub fn generate(dir: &Path, name: &str) -> Result<KeyInfo, KeyError> {
    let path = key_path(dir, name)?;
    let key = generate_signing_key()?;
    ensure_key_dir(dir)?;
    write_key_file(&path, &key)?;
    Ok(KeyInfo {
        name: name.to_string(),
        did: did_key(&key.verifying_key()),
        path,
    })
}

/// Loads key `name` from `dir`.
pub fn load(dir: &Path, name: &str) -> Result<SigningKey, KeyError> {
    read_key_file(&key_path(dir, name)?)
}

/// All keys in `dir`, sorted by name. A missing directory holds no keys. A file that fails to
/// read is an error rather than silently missing from the list: the user should learn about it.
pub fn list(dir: &Path) -> Result<Vec<KeyInfo>, KeyError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(KeyError::Io {
                path: dir.to_path_buf(),
                source: e,
            })
        }
    };
    let mut keys = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(KEY_FILE_EXTENSION) {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        if validate_key_name(name).is_err() {
            continue;
        }
        let key = read_key_file(&path)?;
        keys.push(KeyInfo {
            name: name.to_string(),
            did: did_key(&key.verifying_key()),
            path: path.clone(),
        });
    }
    keys.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(keys)
}

/// Copies key `name` to a new file `to_path` (mode 0600, never overwriting), e.g. for a backup.
pub fn export(dir: &Path, name: &str, to_path: &Path) -> Result<KeyInfo, KeyError> {
    let key = load(dir, name)?;
    write_key_file(to_path, &key)?;
    Ok(KeyInfo {
        name: name.to_string(),
        did: did_key(&key.verifying_key()),
        path: to_path.to_path_buf(),
    })
}

/// Imports the key file at `from_path` into `dir` as `name` (default: the file's stem).
pub fn import(dir: &Path, from_path: &Path, name: Option<&str>) -> Result<KeyInfo, KeyError> {
    let name = import_name(from_path, name)?;
    let key = read_key_for_import(from_path)?;
    store_key(dir, &name, &key)
}

/// The name a key imported from `from_path` gets: `name`, else the file's stem.
pub fn import_name(from_path: &Path, name: Option<&str>) -> Result<String, KeyError> {
    match name {
        Some(name) => Ok(name.to_string()),
        None => Ok(from_path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| KeyError::InvalidName(from_path.display().to_string()))?
            .to_string()),
    }
}

/// Reads a key file to import it. Its permissions are not checked: backups often sit on
/// removable media whose file system cannot express 0600. The copy made is 0600.
pub fn read_key_for_import(from_path: &Path) -> Result<SigningKey, KeyError> {
    let metadata = fs::metadata(from_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => KeyError::NotFound(from_path.to_path_buf()),
        _ => KeyError::Io {
            path: from_path.to_path_buf(),
            source: e,
        },
    })?;
    parse_key_file_at(from_path, &metadata)
}

/// Writes `key` into `dir` as `name` (mode 0600, never overwriting).
pub fn store_key(dir: &Path, name: &str, key: &SigningKey) -> Result<KeyInfo, KeyError> {
    let path = key_path(dir, name)?;
    ensure_key_dir(dir)?;
    write_key_file(&path, key)?;
    Ok(KeyInfo {
        name: name.to_string(),
        did: did_key(&key.verifying_key()),
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_key_round_trips_and_has_the_ed25519_prefix() {
        let key = SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        let did = did_key(&key);
        assert!(did.starts_with("did:key:z6Mk"), "{did}");
        assert_eq!(parse_did_key(&did).ok(), Some(key));
    }

    #[test]
    fn known_did_key_vector() {
        // The first ed25519 example of the did:key method specification.
        let did = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";
        let key = parse_did_key(did).map_err(|e| e.to_string());
        assert_eq!(key.map(|k| did_key(&k)), Ok(did.to_string()));
    }

    #[test]
    fn rejects_other_multicodecs_and_bases() {
        assert!(
            parse_did_key("did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme").is_err()
        );
        assert!(parse_did_key("did:web:example.org").is_err());
        assert!(parse_did_key("did:key:f00").is_err());
    }

    #[test]
    fn key_names_cannot_escape_the_directory() {
        for bad in ["", "../x", "a/b", ".hidden", "-flag", "a\\b", "é"] {
            assert!(validate_key_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_key_name("unesco-maths_2.v1").is_ok());
    }
}
