//! HAMT-sharded UnixFS directories: the name hash, the bucket and label arithmetic, and
//! building the shard nodes.
//!
//! # How a name finds its bucket
//!
//! The hash is murmur3-x64-64: the first 64 bits (`h1`) of MurmurHash3 x64 128 with seed 0,
//! over the name's UTF-8 bytes, written big endian ([`hash_name`]). A shard with fanout
//! `2^bits` consumes `bits` bits of that hash per level, most significant bit first: with the
//! usual fanout of 256 the bucket at depth `d` is simply byte `d` of [`hash_name`].
//! When a lookup runs past 64 bits, the next 64 come from hashing the name followed by one
//! byte holding the round number (1, 2, ...), as go-unixfs and js-ipfs-unixfs do.
//!
//! A shard node's UnixFS data holds the set of occupied buckets as a big-endian bitfield
//! with leading zero bytes dropped (bucket `i` is bit `i` counted from the least
//! significant end), `hashType` 0x22 and `fanout`. Each link's name starts with the bucket
//! index as upper-case hex padded to the width of `fanout - 1` ([`label_prefix`]): a link
//! whose name is just that prefix is a sub-shard one level deeper; otherwise the rest of the
//! name is the entry's name.

use cid::Cid;

use crate::block::{BlockError, BlockPut};
use crate::unixfs::importer::{store_node, DirLink};
use crate::unixfs::pb::{DataType, PbLink, PbNode, UnixfsData};

/// Multihash code of murmur3-x64-64, stored in a shard's `hashType`.
pub const HASH_TYPE: u64 = 0x22;
/// Bits of the hash each shard level consumes in the shards oermesh writes.
pub const FANOUT_BITS: u32 = 8;
/// Buckets per shard node in the shards oermesh writes.
pub const FANOUT: usize = 1 << FANOUT_BITS;

/// MurmurHash3 x64 128 (`h1`, `h2`), as in Austin Appleby's reference implementation.
pub fn murmur3_x64_128(data: &[u8], seed: u32) -> (u64, u64) {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let mix_k1 = |k1: u64| k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
    let mix_k2 = |k2: u64| k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);

    let mut h1 = u64::from(seed);
    let mut h2 = u64::from(seed);
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        let (low, high) = block.split_at(8);
        let k1 = u64::from_le_bytes(low.try_into().expect("8 bytes"));
        let k2 = u64::from_le_bytes(high.try_into().expect("8 bytes"));
        h1 ^= mix_k1(k1);
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        h2 ^= mix_k2(k2);
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let tail = blocks.remainder();
    if tail.len() > 8 {
        let k2 = tail[8..]
            .iter()
            .rev()
            .fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte));
        h2 ^= mix_k2(k2);
    }
    if !tail.is_empty() {
        let k1 = tail[..tail.len().min(8)]
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        h1 ^= mix_k1(k1);
    }

    let len = data.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// murmur3-x64-64 of a name: the 8 bytes whose bits, most significant first, pick the
/// name's bucket at each shard level.
pub fn hash_name(name: &str) -> [u8; 8] {
    murmur3_x64_128(name.as_bytes(), 0).0.to_be_bytes()
}

/// The bucket of `name` in a shard at `depth` (0 for the shard's root node) whose fanout
/// is `2^bits`.
pub fn bucket_index(name: &str, depth: usize, bits: u32) -> usize {
    let first_bit = depth * bits as usize;
    let mut round = usize::MAX;
    let mut hash = 0u64;
    let mut index = 0usize;
    for bit in first_bit..first_bit + bits as usize {
        if bit / 64 != round {
            round = bit / 64;
            hash = hash_round(name, round);
        }
        let shift = 63 - (bit % 64);
        index = (index << 1) | ((hash >> shift) & 1) as usize;
    }
    index
}

fn hash_round(name: &str, round: usize) -> u64 {
    if round == 0 {
        return murmur3_x64_128(name.as_bytes(), 0).0;
    }
    let mut salted = Vec::with_capacity(name.len() + 1);
    salted.extend_from_slice(name.as_bytes());
    // The round number is a single byte in the reference implementations; no shard is deep
    // enough for it to wrap.
    salted.push(round as u8);
    murmur3_x64_128(&salted, 0).0
}

/// The largest fanout a shard node may declare; kubo and js-unixfs write 256.
pub const MAX_FANOUT: u64 = 4096;

/// Bits per level for a shard node's `fanout` field: `None` unless it is a power of two
/// from 2 to [`MAX_FANOUT`], since a bucket must be a whole number of hash bits.
pub fn fanout_bits(fanout: u64) -> Option<u32> {
    (fanout.is_power_of_two() && (2..=MAX_FANOUT).contains(&fanout))
        .then(|| fanout.trailing_zeros())
}

/// Hex digits of a bucket index in a label: the width of `fanout - 1`.
fn label_width(fanout: usize) -> usize {
    format!("{:X}", fanout.saturating_sub(1)).len()
}

/// Upper-case hex of `index`, padded to the width of `fanout - 1` ("00".."FF" for 256).
pub fn label_prefix(index: usize, fanout: usize) -> String {
    let width = label_width(fanout);
    format!("{index:0width$X}")
}

/// Why a shard node's links cannot be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("unsupported HAMT fanout {0}")]
    Fanout(u64),
    #[error("HAMT link without a name")]
    UnnamedLink,
    #[error("HAMT link name {0:?} does not start with a bucket index")]
    BadLabel(String),
}

/// Splits a shard link's name into its bucket index and the entry's name (empty for a
/// link to a sub-shard), for a shard whose fanout is `fanout`.
pub fn split_label(label: &str, fanout: u64) -> Result<(usize, &str), ShardError> {
    let width = label_width(usize::try_from(fanout).map_err(|_| ShardError::Fanout(fanout))?);
    let bad = || ShardError::BadLabel(label.to_string());
    let prefix = label.get(..width).ok_or_else(bad)?;
    if !prefix.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let index = usize::from_str_radix(prefix, 16).map_err(|_| bad())?;
    Ok((index, &label[width..]))
}

/// The occupied-bucket bitfield as a shard node stores it: big endian, bucket `i` at bit
/// `i` from the least significant end, without leading zero bytes.
pub fn bitfield_bytes(occupied: &[bool]) -> Vec<u8> {
    let mut little_endian = vec![0u8; occupied.len().div_ceil(8)];
    for (index, _) in occupied.iter().enumerate().filter(|(_, taken)| **taken) {
        little_endian[index / 8] |= 1 << (index % 8);
    }
    while little_endian.len() > 1 && little_endian.last() == Some(&0) {
        little_endian.pop();
    }
    little_endian.reverse();
    little_endian
}

/// Where a lookup goes from one shard node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardStep<'a> {
    /// The link to the entry itself.
    Found(&'a PbLink),
    /// The link to the sub-shard one level deeper that may hold the entry.
    Descend(&'a PbLink),
    /// The shard has no entry of that name.
    Absent,
}

/// Finds where `name` lives among the `links` of a shard node at `depth` (0 for the root
/// node) whose `fanout` field is `fanout`: the one lookup every reader of shards uses.
/// Every link's label is checked, not only those of the name's bucket, so a damaged shard
/// is refused the same way whatever is looked up in it.
pub fn lookup_step<'a>(
    links: &'a [PbLink],
    name: &str,
    depth: usize,
    fanout: u64,
) -> Result<ShardStep<'a>, ShardError> {
    let bits = fanout_bits(fanout).ok_or(ShardError::Fanout(fanout))?;
    let bucket = bucket_index(name, depth, bits);
    let mut step = ShardStep::Absent;
    for link in links {
        let label = link.name.as_deref().ok_or(ShardError::UnnamedLink)?;
        let (index, entry) = split_label(label, fanout)?;
        if index != bucket {
            continue;
        }
        if entry.is_empty() {
            step = ShardStep::Descend(link);
        } else if entry == name {
            return Ok(ShardStep::Found(link));
        }
    }
    Ok(step)
}

/// Builds the shard for a directory's entries, writing every shard node to `sink`.
/// Returns the root shard's CID and its Tsize (its bytes plus everything below it).
pub(crate) fn build_shard(
    entries: Vec<DirLink>,
    cid_version: u8,
    sink: &impl BlockPut,
) -> Result<(Cid, u64), BlockError> {
    build_level(entries, 0, cid_version, sink)
}

fn build_level(
    entries: Vec<DirLink>,
    depth: usize,
    cid_version: u8,
    sink: &impl BlockPut,
) -> Result<(Cid, u64), BlockError> {
    let mut buckets: Vec<Vec<DirLink>> = (0..FANOUT).map(|_| Vec::new()).collect();
    for entry in entries {
        buckets[bucket_index(&entry.name, depth, FANOUT_BITS)].push(entry);
    }

    let mut links = Vec::new();
    let mut occupied = [false; FANOUT];
    let mut children_tsize = 0u64;
    for (index, mut bucket) in buckets.into_iter().enumerate() {
        let prefix = label_prefix(index, FANOUT);
        let link = match bucket.len() {
            0 => continue,
            1 => {
                let entry = bucket.pop().expect("one entry");
                PbLink {
                    cid: entry.cid,
                    name: Some(prefix + &entry.name),
                    tsize: Some(entry.tsize),
                }
            }
            _ => {
                let (cid, tsize) = build_level(bucket, depth + 1, cid_version, sink)?;
                PbLink {
                    cid,
                    name: Some(prefix),
                    tsize: Some(tsize),
                }
            }
        };
        occupied[index] = true;
        children_tsize += link.tsize.unwrap_or(0);
        links.push(link);
    }

    let mut data = UnixfsData::new(DataType::HamtShard);
    data.data = Some(bitfield_bytes(&occupied));
    data.hash_type = Some(HASH_TYPE);
    data.fanout = Some(FANOUT as u64);
    // Labels start with fixed-width upper-case hex, so bucket order is name-byte order.
    let node = PbNode {
        links,
        data: Some(data.encode()),
    };
    let (cid, block_len) = store_node(&node, cid_version, sink)?;
    Ok((cid, block_len as u64 + children_tsize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{cid_v1, codec, BlockGet, MemoryBlocks};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn murmur3_matches_reference_digests() {
        // Digests (h1 || h2, big endian) printed by the reference's murmur3-128 hasher.
        let cases = [
            ("", "00000000000000000000000000000000"),
            ("a", "85555565f6597889e6b53a48510e895a"),
            ("hello", "cbd8a7b341bd9b025b1e906a48ae1d19"),
            (
                "lesson-00000-worksheet.txt",
                "d257410153b80ee8333fb30bdd62537a",
            ),
            ("ζήτημα-3.txt", "6bacb054e00fd92c73e2223052e5890f"),
            ("0123456789abcdef0", "eb24ae8785a5c07573fb68b3313128ca"),
        ];
        for (input, expected) in cases {
            let (h1, h2) = murmur3_x64_128(input.as_bytes(), 0);
            let digest = [h1.to_be_bytes(), h2.to_be_bytes()].concat();
            assert_eq!(hex(&digest), expected, "{input:?}");
        }
    }

    #[test]
    fn bucket_index_reads_hash_bytes_in_order() {
        let hash = hash_name("hello");
        assert_eq!(hash, [0xcb, 0xd8, 0xa7, 0xb3, 0x41, 0xbd, 0x9b, 0x02]);
        for (depth, byte) in hash.iter().enumerate() {
            assert_eq!(bucket_index("hello", depth, 8), usize::from(*byte));
        }
        // Fanout 16: two levels per byte, high nibble first.
        assert_eq!(bucket_index("hello", 0, 4), 0xc);
        assert_eq!(bucket_index("hello", 1, 4), 0xb);
        // Past 64 bits the name is hashed again with the round number appended.
        let salted = murmur3_x64_128(b"hello\x01", 0).0.to_be_bytes();
        assert_eq!(bucket_index("hello", 8, 8), usize::from(salted[0]));
    }

    /// Follows `lookup_step` from the root shard down; returns the entry's CID if found.
    fn find(blocks: &MemoryBlocks, root: Cid, name: &str) -> Option<Cid> {
        let mut node_cid = root;
        for depth in 0.. {
            let node = PbNode::decode(&blocks.get_block(&node_cid).unwrap()).unwrap();
            let data = UnixfsData::decode(node.data.as_deref().unwrap()).unwrap();
            match lookup_step(&node.links, name, depth, data.fanout.unwrap()).unwrap() {
                ShardStep::Found(link) => return Some(link.cid),
                ShardStep::Descend(link) => node_cid = link.cid,
                ShardStep::Absent => return None,
            }
        }
        unreachable!()
    }

    #[test]
    fn lookups_find_every_entry_and_nothing_else() {
        // 1,000 names in 256 buckets: many buckets need sub-shards.
        let entries: Vec<DirLink> = (0..1000)
            .map(|i| DirLink {
                name: format!("n{i}"),
                cid: cid_v1(codec::RAW, &[i as u8, (i >> 8) as u8]),
                tsize: 2,
            })
            .collect();
        let blocks = MemoryBlocks::new();
        let (root, tsize) = build_shard(entries.clone(), 1, &blocks).unwrap();
        for entry in &entries {
            assert_eq!(
                find(&blocks, root, &entry.name),
                Some(entry.cid),
                "{}",
                entry.name
            );
        }
        for missing in ["n1000", "n-1", "", "N1"] {
            assert_eq!(find(&blocks, root, missing), None, "{missing}");
        }
        // Tsize: every shard node once, plus each entry's own Tsize.
        let shard_bytes: usize = blocks.into_blocks().values().map(Vec::len).sum();
        assert_eq!(tsize, shard_bytes as u64 + 2 * 1000);
        assert_eq!(lookup_step(&[], "x", 0, 255), Err(ShardError::Fanout(255)));
    }

    #[test]
    fn fanout_bits_of_valid_fanouts_only() {
        assert_eq!(fanout_bits(256), Some(8));
        assert_eq!(fanout_bits(16), Some(4));
        assert_eq!(fanout_bits(0), None);
        assert_eq!(fanout_bits(1), None);
        assert_eq!(fanout_bits(255), None);
        assert_eq!(fanout_bits(4096), Some(12));
        assert_eq!(fanout_bits(8192), None);
    }

    #[test]
    fn labels_need_a_hex_bucket_index() {
        assert_eq!(split_label("0Aname", 256), Ok((10, "name")));
        assert_eq!(split_label("FF", 256), Ok((255, "")));
        assert_eq!(split_label("5x", 16), Ok((5, "x")));
        for bad in ["+F", "é", "A"] {
            assert_eq!(
                split_label(bad, 256),
                Err(ShardError::BadLabel(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn labels_and_bitfields() {
        assert_eq!(label_prefix(0, 256), "00");
        assert_eq!(label_prefix(0xab, 256), "AB");
        assert_eq!(label_prefix(5, 16), "5");
        let mut occupied = [false; 256];
        occupied[0] = true;
        assert_eq!(bitfield_bytes(&occupied), [0x01]);
        occupied[8] = true;
        assert_eq!(bitfield_bytes(&occupied), [0x01, 0x01]);
        occupied[255] = true;
        let bytes = bitfield_bytes(&occupied);
        assert_eq!(bytes.len(), 32);
        assert_eq!((bytes[0], bytes[30], bytes[31]), (0x80, 0x01, 0x01));
    }
}
