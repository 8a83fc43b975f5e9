//! Import profiles: the settings that decide which CID a given file or folder gets.
//!
//! Two importers produce the same CID for the same bytes only if they agree on every one
//! of these settings, so IPIP-499 names the two combinations that matter:
//! `unixfs-v1-2025` (the modern default) and `unixfs-v0-2015` (kubo's classic defaults).

/// CID of every block is sha2-256; the rest is described here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// 0 gives `Qm...` CIDs for dag-pb nodes; 1 gives `bafy...`/`bafk...`.
    pub cid_version: u8,
    /// Leaves are the file's bytes as raw blocks rather than UnixFS File nodes. Raw leaves
    /// are always CIDv1, even under a CIDv0 root, because CIDv0 can only name dag-pb.
    pub raw_leaves: bool,
    /// Fixed chunk size in bytes.
    pub chunk_size: usize,
    /// Most links in one file node of the balanced layout.
    pub max_links: usize,
    /// How a plain directory's size is measured against `shard_threshold`.
    pub shard_measure: ShardMeasure,
    /// A directory whose measured size passes this many bytes becomes a HAMT shard.
    pub shard_threshold: usize,
}

/// How the size of a directory block is estimated when deciding to shard it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardMeasure {
    /// Sum of each link's name bytes plus CID bytes (kubo's classic estimate).
    LinkBytes,
    /// The exact encoded size of the directory block (IPIP-499).
    BlockBytes,
}

/// Why a profile or one of its options was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("unknown import profile `{0}` (known: unixfs-v1-2025, unixfs-v0-2015)")]
    UnknownProfile(String),
    #[error("unknown chunker `{0}`: expected size-N, for example size-262144")]
    BadChunker(String),
    #[error("chunk size {size} is out of range: it must be between 1 and {max} bytes")]
    ChunkSizeOutOfRange { size: usize, max: usize },
    #[error("CID version {0} does not exist: use 0 or 1")]
    BadCidVersion(u64),
}

/// Largest chunk accepted, as in kubo: larger leaves are refused by peers that cap blocks.
pub const MAX_CHUNK_SIZE: usize = 1 << 20;

impl Profile {
    /// IPIP-499 `unixfs-v1-2025`: CIDv1, raw leaves, 1 MiB chunks, 1024 links per node,
    /// HAMT once the exact directory block would pass 256 KiB.
    pub const UNIXFS_V1_2025: Profile = Profile {
        cid_version: 1,
        raw_leaves: true,
        chunk_size: 1 << 20,
        max_links: 1024,
        shard_measure: ShardMeasure::BlockBytes,
        shard_threshold: 256 * 1024,
    };

    /// IPIP-499 `unixfs-v0-2015`: kubo's classic defaults. CIDv0, dag-pb leaves,
    /// 256 KiB chunks, 174 links per node, HAMT once link names plus CIDs pass 256 KiB.
    pub const UNIXFS_V0_2015: Profile = Profile {
        cid_version: 0,
        raw_leaves: false,
        chunk_size: 256 * 1024,
        max_links: 174,
        shard_measure: ShardMeasure::LinkBytes,
        shard_threshold: 256 * 1024,
    };

    /// Looks a profile up by its IPIP-499 name.
    pub fn by_name(name: &str) -> Result<Profile, ProfileError> {
        match name {
            "unixfs-v1-2025" => Ok(Profile::UNIXFS_V1_2025),
            "unixfs-v0-2015" => Ok(Profile::UNIXFS_V0_2015),
            other => Err(ProfileError::UnknownProfile(other.to_owned())),
        }
    }

    /// Overrides the CID version as `ipfs add --cid-version` does: asking for version 1
    /// also turns on raw leaves, so `unixfs-v0-2015` with version 1 is plain
    /// `ipfs add --cid-version=1` (256 KiB chunks, 174 links, raw leaves).
    pub fn with_cid_version(self, version: u64) -> Result<Profile, ProfileError> {
        match version {
            0 => Ok(Profile {
                cid_version: 0,
                ..self
            }),
            1 => Ok(Profile {
                cid_version: 1,
                raw_leaves: true,
                ..self
            }),
            other => Err(ProfileError::BadCidVersion(other)),
        }
    }

    /// Overrides the chunk size with a kubo-style chunker, `size-N`.
    pub fn with_chunker(self, chunker: &str) -> Result<Profile, ProfileError> {
        Ok(Profile {
            chunk_size: parse_chunker(chunker)?,
            ..self
        })
    }
}

impl Default for Profile {
    fn default() -> Self {
        Profile::UNIXFS_V1_2025
    }
}

/// Parses a kubo fixed-size chunker, `size-N`, into N.
pub fn parse_chunker(chunker: &str) -> Result<usize, ProfileError> {
    let size = chunker
        .strip_prefix("size-")
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<usize>().ok())
        .ok_or_else(|| ProfileError::BadChunker(chunker.to_owned()))?;
    if size == 0 || size > MAX_CHUNK_SIZE {
        return Err(ProfileError::ChunkSizeOutOfRange {
            size,
            max: MAX_CHUNK_SIZE,
        });
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_overrides() {
        assert_eq!(
            Profile::by_name("unixfs-v1-2025"),
            Ok(Profile::UNIXFS_V1_2025)
        );
        assert!(matches!(
            Profile::by_name("v2"),
            Err(ProfileError::UnknownProfile(_))
        ));
        let plain_cid1 = Profile::UNIXFS_V0_2015.with_cid_version(1).unwrap();
        assert!(plain_cid1.raw_leaves);
        assert_eq!(
            (plain_cid1.chunk_size, plain_cid1.max_links),
            (262_144, 174)
        );
        assert!(Profile::UNIXFS_V0_2015.with_cid_version(2).is_err());
    }

    #[test]
    fn chunker_parsing() {
        assert_eq!(parse_chunker("size-1024"), Ok(1024));
        assert_eq!(parse_chunker("size-1048576"), Ok(1 << 20));
        for bad in ["size-", "size-abc", "rabin", "size--1", "size-+5", "1024"] {
            assert!(
                matches!(parse_chunker(bad), Err(ProfileError::BadChunker(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_chunker("size-0"),
            Err(ProfileError::ChunkSizeOutOfRange { .. })
        ));
        assert!(matches!(
            parse_chunker("size-1048577"),
            Err(ProfileError::ChunkSizeOutOfRange { .. })
        ));
    }
}
