//! The values of the `blocks` tree, and the running totals kept in the same tree.
//!
//! A block's entry is keyed by its multihash: `tag (1 byte) | size (u64 LE) | data?`, the
//! bytes themselves following for a block kept inline. The totals that `stat` reports
//! live under a key no multihash can be, and every change to the entries writes them in
//! the same sled batch, so they are exact after any crash.

use cid::Cid;

use super::{StoreError, INLINE_LIMIT, MAX_BLOCK_SIZE};

pub(super) const TAG_INLINE: u8 = 0;
pub(super) const TAG_FILE: u8 = 1;

/// Where the totals are kept: one byte, shorter than any multihash (every key of a stored
/// block starts with its hash function's code and digest length, `0x12 0x20` for sha2-256).
pub(super) const TOTALS_KEY: &[u8] = &[0];
/// The first key a block can have; iterating from here skips the totals.
pub(super) const FIRST_BLOCK_KEY: &[u8] = &[1];

/// The unit a file system allocates file space in: the disk figure counts each block
/// file rounded up to it, as `du` does.
const ALLOCATION_UNIT: u64 = 4096;

/// The index value of a block: tag, size, and the bytes themselves when small.
pub(super) fn index_value(data: &[u8]) -> Vec<u8> {
    let inline = data.len() <= INLINE_LIMIT;
    let mut value = Vec::with_capacity(9 + if inline { data.len() } else { 0 });
    value.push(if inline { TAG_INLINE } else { TAG_FILE });
    value.extend_from_slice(&(data.len() as u64).to_le_bytes());
    if inline {
        value.extend_from_slice(data);
    }
    value
}

#[derive(Debug, Clone, Copy)]
pub(super) struct IndexEntry {
    pub(super) tag: u8,
    pub(super) size: u64,
}

/// Decodes an index value, refusing one whose parts disagree, and a size above the
/// largest block the store accepts: a damaged entry never decides how much is allocated
/// for a read.
pub(super) fn decode_entry(value: &[u8], cid: &Cid) -> Result<IndexEntry, StoreError> {
    let damaged = || StoreError::DamagedIndex(cid.to_string());
    let (&tag, rest) = value.split_first().ok_or_else(damaged)?;
    let size = u64::from_le_bytes(*rest.first_chunk::<8>().ok_or_else(damaged)?);
    if size > MAX_BLOCK_SIZE as u64 {
        return Err(damaged());
    }
    match tag {
        TAG_INLINE if value.len() as u64 == 9 + size => Ok(IndexEntry { tag, size }),
        TAG_FILE if value.len() == 9 => Ok(IndexEntry { tag, size }),
        _ => Err(damaged()),
    }
}

/// The inline bytes of a decoded inline entry.
pub(super) fn inline_bytes(value: &[u8]) -> &[u8] {
    &value[9..]
}

/// The block size an index value records; 0 for a damaged value (which `verify` and
/// reads report on their own).
pub(super) fn recorded_size(value: &[u8]) -> u64 {
    value
        .get(1..9)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// What the index holds, kept up to date with every change to it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Totals {
    pub(super) blocks: u64,
    pub(super) bytes: u64,
    pub(super) inline_blocks: u64,
    /// Space the block files take, each rounded up to the allocation unit.
    pub(super) file_bytes_allocated: u64,
}

impl Totals {
    pub(super) fn add(&mut self, value: &[u8]) {
        let size = recorded_size(value);
        self.blocks += 1;
        self.bytes += size;
        if value.first() == Some(&TAG_INLINE) {
            self.inline_blocks += 1;
        } else {
            self.file_bytes_allocated += size.next_multiple_of(ALLOCATION_UNIT);
        }
    }

    pub(super) fn remove(&mut self, value: &[u8]) {
        let size = recorded_size(value);
        self.blocks = self.blocks.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(size);
        if value.first() == Some(&TAG_INLINE) {
            self.inline_blocks = self.inline_blocks.saturating_sub(1);
        } else {
            self.file_bytes_allocated = self
                .file_bytes_allocated
                .saturating_sub(size.next_multiple_of(ALLOCATION_UNIT));
        }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        [
            self.blocks,
            self.bytes,
            self.inline_blocks,
            self.file_bytes_allocated,
        ]
        .iter()
        .flat_map(|n| n.to_le_bytes())
        .collect()
    }

    /// `None` for a value that is not four numbers: the totals are then counted again.
    pub(super) fn decode(value: &[u8]) -> Option<Totals> {
        let (numbers, rest) = value.as_chunks::<8>();
        match (numbers, rest) {
            ([blocks, bytes, inline_blocks, allocated], []) => Some(Totals {
                blocks: u64::from_le_bytes(*blocks),
                bytes: u64::from_le_bytes(*bytes),
                inline_blocks: u64::from_le_bytes(*inline_blocks),
                file_bytes_allocated: u64::from_le_bytes(*allocated),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_follow_entries_in_and_out() {
        let small = index_value(&[7; 100]);
        let large = index_value(&vec![7; INLINE_LIMIT + 2]);
        let mut totals = Totals::default();
        totals.add(&small);
        totals.add(&large);
        assert_eq!(
            totals,
            Totals {
                blocks: 2,
                bytes: 100 + INLINE_LIMIT as u64 + 2,
                inline_blocks: 1,
                file_bytes_allocated: 8192,
            }
        );
        assert_eq!(Totals::decode(&totals.encode()), Some(totals));
        totals.remove(&small);
        totals.remove(&large);
        assert_eq!(totals, Totals::default());
        assert_eq!(Totals::decode(&[0; 31]), None);
    }

    #[test]
    fn a_size_above_the_block_limit_is_damage() {
        let cid = crate::block::cid_v1(crate::block::codec::RAW, b"x");
        let mut value = vec![TAG_FILE];
        value.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            decode_entry(&value, &cid),
            Err(StoreError::DamagedIndex(_))
        ));
    }
}
