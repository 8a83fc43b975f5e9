//! Blocks and their CIDs: the unit everything else in oermesh is made of.
//!
//! A block is a byte string named by a CID. This module knows how to name bytes
//! (sha2-256 multihash wrapped in a CIDv0 or CIDv1) and how to check that a block's
//! bytes really are what its CID names. It knows nothing about where blocks live.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cid::Cid;
use multihash::Multihash;
use sha2::{Digest, Sha256};

/// Multicodec codes of the block formats oermesh reads and writes.
pub mod codec {
    pub const RAW: u64 = 0x55;
    pub const DAG_PB: u64 = 0x70;
    pub const DAG_CBOR: u64 = 0x71;
}

/// Multihash codes oermesh can check.
pub mod hash_code {
    pub const IDENTITY: u64 = 0x00;
    pub const SHA2_256: u64 = 0x12;
}

/// The multihash of `data` under sha2-256.
pub fn sha256_multihash(data: &[u8]) -> Multihash<64> {
    let digest = Sha256::digest(data);
    Multihash::wrap(hash_code::SHA2_256, &digest).expect("a 32-byte digest fits in 64 bytes")
}

/// A CIDv1 naming `data` in format `codec`, hashed with sha2-256.
pub fn cid_v1(codec: u64, data: &[u8]) -> Cid {
    Cid::new_v1(codec, sha256_multihash(data))
}

/// A CIDv0 (`Qm...`): always dag-pb, always sha2-256.
pub fn cid_v0(data: &[u8]) -> Cid {
    Cid::new_v0(sha256_multihash(data)).expect("sha2-256 is valid for CIDv0")
}

/// Why a block could not be read, written or trusted.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("block {0} is not in the store")]
    NotFound(Cid),
    #[error("block {0} is corrupt: its bytes do not match its CID")]
    Corrupt(Cid),
    #[error("CID {cid} uses hash function 0x{code:x}, which oermesh cannot check")]
    UnsupportedHash { cid: Cid, code: u64 },
    #[error("block {cid} is {size} bytes, above the limit of {limit} bytes")]
    TooLarge { cid: Cid, size: usize, limit: usize },
    #[error("{0}")]
    Backend(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Checks that `data` is what `cid` names. Identity CIDs carry their data inline.
pub fn verify(cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
    let mh = cid.hash();
    match mh.code() {
        hash_code::SHA2_256 => {
            if mh.size() == 32 && Sha256::digest(data).as_slice() == mh.digest() {
                Ok(())
            } else {
                Err(BlockError::Corrupt(*cid))
            }
        }
        hash_code::IDENTITY => {
            if mh.digest() == data {
                Ok(())
            } else {
                Err(BlockError::Corrupt(*cid))
            }
        }
        code => Err(BlockError::UnsupportedHash { cid: *cid, code }),
    }
}

/// Something blocks can be read from. Implementations return only verified bytes.
pub trait BlockGet {
    fn get_block(&self, cid: &Cid) -> Result<Vec<u8>, BlockError>;

    /// Whether the block is there, without reading it where the implementation can
    /// tell otherwise (walks look up raw leaves this way instead of hashing them).
    fn has_block(&self, cid: &Cid) -> Result<bool, BlockError> {
        match self.get_block(cid) {
            Ok(_) => Ok(true),
            Err(BlockError::NotFound(_)) => Ok(false),
            Err(err) => Err(err),
        }
    }
}

/// Something blocks can be written to. Writers may be called from several threads.
pub trait BlockPut: Sync {
    /// Writes a block from anywhere: implementations that store it check it against its
    /// CID first.
    fn put_block(&self, cid: &Cid, data: &[u8]) -> Result<(), BlockError>;

    /// Writes a block whose CID the caller has just computed from these very bytes (the
    /// importer), so the writer may skip hashing them a second time.
    fn put_hashed_block(&self, cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
        self.put_block(cid, data)
    }

    /// Like [`BlockPut::put_hashed_block`] for a raw block whose bytes the caller read
    /// from `file` at `offset`: a store that keeps blocks in files may copy them from
    /// `file` inside the kernel instead of writing `data` out again. The caller makes sure
    /// `file` did not change meanwhile.
    fn put_hashed_block_from(
        &self,
        cid: &Cid,
        data: &[u8],
        _file: &std::fs::File,
        _offset: u64,
    ) -> Result<(), BlockError> {
        self.put_hashed_block(cid, data)
    }
}

/// A block store that a garbage collector may sweep while others write to it.
///
/// Writing a block and then naming it somewhere gc looks for roots (a pin, a record
/// index) are two steps; a gc between them would see an unnamed block. Writers therefore
/// go through a hold: every block written or read through it is kept from gc until the
/// hold is dropped, so a writer drops it only once what it wrote is named.
pub trait HoldBlocks {
    type Hold<'a>: BlockGet + BlockPut
    where
        Self: 'a;

    fn hold(&self) -> Self::Hold<'_>;
}

impl<T: BlockGet + ?Sized> BlockGet for &T {
    fn get_block(&self, cid: &Cid) -> Result<Vec<u8>, BlockError> {
        (**self).get_block(cid)
    }

    fn has_block(&self, cid: &Cid) -> Result<bool, BlockError> {
        (**self).has_block(cid)
    }
}

impl<T: HoldBlocks + ?Sized> HoldBlocks for &T {
    type Hold<'a>
        = T::Hold<'a>
    where
        Self: 'a;

    fn hold(&self) -> Self::Hold<'_> {
        (**self).hold()
    }
}

impl<T: BlockPut + ?Sized> BlockPut for &T {
    fn put_block(&self, cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
        (**self).put_block(cid, data)
    }

    fn put_hashed_block(&self, cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
        (**self).put_hashed_block(cid, data)
    }

    fn put_hashed_block_from(
        &self,
        cid: &Cid,
        data: &[u8],
        file: &std::fs::File,
        offset: u64,
    ) -> Result<(), BlockError> {
        (**self).put_hashed_block_from(cid, data, file, offset)
    }
}

/// Blocks held in memory: for computing CIDs without a repository (`add --only-hash`)
/// and for staging a CAR before any of it is committed. A cloned handle shares the
/// same blocks.
#[derive(Default, Clone)]
pub struct MemoryBlocks {
    blocks: Arc<Mutex<HashMap<Cid, Vec<u8>>>>,
    keep_data: bool,
}

impl MemoryBlocks {
    /// A block set that keeps every block's bytes.
    pub fn new() -> Self {
        MemoryBlocks {
            blocks: Arc::default(),
            keep_data: true,
        }
    }

    /// A sink that only counts: the bytes are dropped once hashed.
    pub fn discarding() -> Self {
        MemoryBlocks {
            blocks: Arc::default(),
            keep_data: false,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The blocks; taken without a copy when no other handle shares them.
    pub fn into_blocks(self) -> HashMap<Cid, Vec<u8>> {
        match Arc::try_unwrap(self.blocks) {
            Ok(blocks) => blocks
                .into_inner()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            Err(shared) => shared
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Cid, Vec<u8>>> {
        self.blocks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl BlockGet for MemoryBlocks {
    fn get_block(&self, cid: &Cid) -> Result<Vec<u8>, BlockError> {
        if cid.hash().code() == hash_code::IDENTITY {
            return Ok(cid.hash().digest().to_vec());
        }
        let data = self
            .lock()
            .get(cid)
            .cloned()
            .ok_or(BlockError::NotFound(*cid))?;
        verify(cid, &data)?;
        Ok(data)
    }

    fn has_block(&self, cid: &Cid) -> Result<bool, BlockError> {
        Ok(cid.hash().code() == hash_code::IDENTITY || self.lock().contains_key(cid))
    }
}

/// Nothing sweeps memory: a hold is the blocks themselves.
impl HoldBlocks for MemoryBlocks {
    type Hold<'a> = &'a MemoryBlocks;

    fn hold(&self) -> &MemoryBlocks {
        self
    }
}

impl BlockPut for MemoryBlocks {
    fn put_block(&self, cid: &Cid, data: &[u8]) -> Result<(), BlockError> {
        let stored = if self.keep_data {
            data.to_vec()
        } else {
            Vec::new()
        };
        self.lock().insert(*cid, stored);
        Ok(())
    }
}

/// Serde for CIDs as their text form (`bafy...`), for JSON. The `cid` crate's own serde
/// form is an IPLD link, which JSON cannot carry.
pub mod cid_text {
    use cid::Cid;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(cid: &Cid, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(cid)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Cid, D::Error> {
        let text = String::deserialize(deserializer)?;
        Cid::try_from(text.as_str()).map_err(serde::de::Error::custom)
    }

    /// The same for `Option<Cid>`.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            cid: &Option<Cid>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match cid {
                Some(cid) => serializer.collect_str(cid),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Cid>, D::Error> {
            Option::<String>::deserialize(deserializer)?
                .map(|text| Cid::try_from(text.as_str()).map_err(serde::de::Error::custom))
                .transpose()
        }
    }

    /// The same for `Vec<Cid>`.
    pub mod vec {
        use super::*;
        use serde::ser::SerializeSeq;

        pub fn serialize<S: Serializer>(cids: &[Cid], serializer: S) -> Result<S::Ok, S::Error> {
            let mut seq = serializer.serialize_seq(Some(cids.len()))?;
            for cid in cids {
                seq.serialize_element(&cid.to_string())?;
            }
            seq.end()
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Vec<Cid>, D::Error> {
            Vec::<String>::deserialize(deserializer)?
                .iter()
                .map(|text| Cid::try_from(text.as_str()).map_err(serde::de::Error::custom))
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(
            cid_v1(codec::RAW, b"hello world").to_string(),
            "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
        );
        assert_eq!(
            cid_v1(codec::RAW, b"").to_string(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
    }

    #[test]
    fn verify_rejects_flipped_bit() {
        let cid = cid_v1(codec::RAW, b"hello world");
        assert!(verify(&cid, b"hello world").is_ok());
        assert!(matches!(
            verify(&cid, b"hello worle"),
            Err(BlockError::Corrupt(_))
        ));
    }
}
