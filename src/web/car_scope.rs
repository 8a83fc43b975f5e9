//! Which blocks a trustless CAR response carries: the blocks a path traversed, then
//! the terminal entity's blocks as `dag-scope` and `entity-bytes` ask, depth first,
//! each block once (`order=dfs; dups=n`).

use std::collections::HashSet;
use std::io::Write;

use cid::Cid;

use crate::block::{codec, hash_code, BlockGet};
use crate::car::{CarError, CarWriter};
use crate::links::{get_verified, walk_dag};
use crate::unixfs::pb::{DataType, PbNode, UnixfsData};
use crate::unixfs::reader::MAX_DEPTH;

/// How much of the DAG at the end of the path the CAR carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DagScope {
    /// Only the terminal block.
    Block,
    /// What it takes to read the terminal UnixFS file (or the given bytes of it) or to
    /// list the terminal directory; the terminal block for anything else.
    Entity,
    /// The whole DAG below the terminal.
    All,
}

/// An inclusive byte range of the terminal file, as `entity-bytes=from:to` gives it;
/// negative values count from the end, `None` for `to` is `*` (the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntityBytes {
    pub from: i64,
    pub to: Option<i64>,
}

impl EntityBytes {
    pub fn parse(text: &str) -> Option<EntityBytes> {
        let (from, to) = text.split_once(':')?;
        let from = from.parse().ok()?;
        let to = match to {
            "*" => None,
            to => Some(to.parse().ok()?),
        };
        Some(EntityBytes { from, to })
    }

    /// The byte offsets `[start, end)` of a file of `size` bytes, or `None` when the
    /// range holds no byte of the file.
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        let size_signed = i64::try_from(size).unwrap_or(i64::MAX);
        let from = if self.from < 0 {
            size_signed.saturating_add(self.from).max(0)
        } else {
            self.from
        };
        let last = match self.to {
            None => size_signed - 1,
            Some(to) if to < 0 => size_signed.saturating_add(to),
            Some(to) => to.min(size_signed - 1),
        };
        (from <= last && from < size_signed).then(|| (from as u64, last as u64 + 1))
    }
}

/// Writes blocks into a CAR, skipping identity CIDs (their bytes are in the CID) and
/// blocks already written.
pub struct CarEmitter<W: Write> {
    car: CarWriter<W>,
    written: HashSet<Cid>,
}

impl<W: Write> CarEmitter<W> {
    pub fn new(out: W, root: &Cid) -> Result<Self, CarError> {
        Ok(CarEmitter {
            car: CarWriter::new(out, std::slice::from_ref(root))?,
            written: HashSet::new(),
        })
    }

    pub fn emit(&mut self, cid: &Cid, data: &[u8]) -> Result<(), CarError> {
        if cid.hash().code() == hash_code::IDENTITY || !self.written.insert(*cid) {
            return Ok(());
        }
        self.car.write_block(cid, data)
    }

    pub fn finish(self) -> Result<W, CarError> {
        self.car.finish()
    }
}

fn malformed(cid: &Cid, reason: impl std::fmt::Display) -> CarError {
    CarError::Block(crate::block::BlockError::Backend(format!(
        "block {cid} is not valid UnixFS: {reason}"
    )))
}

/// Writes the blocks of the terminal `cid` that `scope` asks for; `range` limits a
/// file entity to the blocks holding those bytes.
pub fn write_terminal<B, W>(
    blocks: &B,
    emitter: &mut CarEmitter<W>,
    cid: &Cid,
    scope: DagScope,
    range: Option<(u64, u64)>,
) -> Result<(), CarError>
where
    B: BlockGet + ?Sized,
    W: Write,
{
    match scope {
        DagScope::Block => {
            let data = get_verified(blocks, cid)?;
            emitter.emit(cid, &data)
        }
        DagScope::All => {
            walk_dag(blocks, std::slice::from_ref(cid), |cid, data| {
                emitter.emit(cid, data)
            })?;
            Ok(())
        }
        DagScope::Entity => write_entity(blocks, emitter, cid, range, 0),
    }
}

fn write_entity<B, W>(
    blocks: &B,
    emitter: &mut CarEmitter<W>,
    cid: &Cid,
    range: Option<(u64, u64)>,
    depth: usize,
) -> Result<(), CarError>
where
    B: BlockGet + ?Sized,
    W: Write,
{
    let data = get_verified(blocks, cid)?;
    emitter.emit(cid, &data)?;
    if cid.codec() != codec::DAG_PB {
        return Ok(());
    }
    let node = PbNode::decode(&data).map_err(|err| malformed(cid, err))?;
    let Some(unixfs) = node.data.as_deref() else {
        return Ok(());
    };
    let unixfs = UnixfsData::decode(unixfs).map_err(|err| malformed(cid, err))?;
    match unixfs.data_type {
        DataType::File | DataType::Raw => {
            let start = unixfs.data.as_ref().map_or(0, |inline| inline.len() as u64);
            write_file_children(blocks, emitter, cid, &node, &unixfs, start, range, depth)
        }
        DataType::HamtShard => write_shard_children(blocks, emitter, cid, &node, &unixfs, depth),
        DataType::Directory | DataType::Symlink | DataType::Metadata => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn write_file_children<B, W>(
    blocks: &B,
    emitter: &mut CarEmitter<W>,
    cid: &Cid,
    node: &PbNode,
    unixfs: &UnixfsData,
    mut offset: u64,
    range: Option<(u64, u64)>,
    depth: usize,
) -> Result<(), CarError>
where
    B: BlockGet + ?Sized,
    W: Write,
{
    if depth >= MAX_DEPTH {
        return Err(malformed(cid, format!("more than {MAX_DEPTH} levels deep")));
    }
    if node.links.len() != unixfs.blocksizes.len() {
        return Err(malformed(cid, "links and blocksizes differ in number"));
    }
    for (link, size) in node.links.iter().zip(&unixfs.blocksizes) {
        let child_start = offset;
        let child_end = offset.saturating_add(*size);
        offset = child_end;
        let wanted = match range {
            None => true,
            Some((start, end)) => child_start < end && child_end > start,
        };
        if !wanted {
            continue;
        }
        let child_range = range.map(|(start, end)| {
            (
                start.saturating_sub(child_start),
                end.min(child_end) - child_start,
            )
        });
        write_child(blocks, emitter, &link.cid, child_range, depth + 1)?;
    }
    Ok(())
}

/// A child of a file node: a leaf, or a file node whose own children are filtered by
/// the part of the range that falls in it.
fn write_child<B, W>(
    blocks: &B,
    emitter: &mut CarEmitter<W>,
    cid: &Cid,
    range: Option<(u64, u64)>,
    depth: usize,
) -> Result<(), CarError>
where
    B: BlockGet + ?Sized,
    W: Write,
{
    let data = get_verified(blocks, cid)?;
    emitter.emit(cid, &data)?;
    if cid.codec() != codec::DAG_PB {
        return Ok(());
    }
    let node = PbNode::decode(&data).map_err(|err| malformed(cid, err))?;
    let unixfs = node
        .data
        .as_deref()
        .ok_or_else(|| malformed(cid, "file node without UnixFS data"))?;
    let unixfs = UnixfsData::decode(unixfs).map_err(|err| malformed(cid, err))?;
    if !matches!(unixfs.data_type, DataType::File | DataType::Raw) {
        return Err(malformed(
            cid,
            "a file links to a node that is not file data",
        ));
    }
    let start = unixfs.data.as_ref().map_or(0, |inline| inline.len() as u64);
    write_file_children(blocks, emitter, cid, &node, &unixfs, start, range, depth)
}

/// A HAMT directory's entity is every shard node of it, not the entries.
fn write_shard_children<B, W>(
    blocks: &B,
    emitter: &mut CarEmitter<W>,
    cid: &Cid,
    node: &PbNode,
    unixfs: &UnixfsData,
    depth: usize,
) -> Result<(), CarError>
where
    B: BlockGet + ?Sized,
    W: Write,
{
    if depth >= MAX_DEPTH {
        return Err(malformed(cid, format!("more than {MAX_DEPTH} levels deep")));
    }
    let fanout = unixfs
        .fanout
        .filter(|fanout| fanout.is_power_of_two() && *fanout >= 2)
        .ok_or_else(|| malformed(cid, "HAMT shard without a valid fanout"))?;
    let prefix_len = format!("{:X}", fanout - 1).len();
    for link in &node.links {
        let name = link
            .name
            .as_deref()
            .ok_or_else(|| malformed(cid, "HAMT link without a name"))?;
        if name.len() != prefix_len {
            continue;
        }
        let data = get_verified(blocks, &link.cid)?;
        emitter.emit(&link.cid, &data)?;
        let child = PbNode::decode(&data).map_err(|err| malformed(&link.cid, err))?;
        let child_unixfs = child
            .data
            .as_deref()
            .ok_or_else(|| malformed(&link.cid, "HAMT sub-shard without UnixFS data"))?;
        let child_unixfs =
            UnixfsData::decode(child_unixfs).map_err(|err| malformed(&link.cid, err))?;
        if child_unixfs.data_type != DataType::HamtShard {
            return Err(malformed(
                &link.cid,
                "HAMT sub-shard link to a non-shard node",
            ));
        }
        write_shard_children(blocks, emitter, &link.cid, &child, &child_unixfs, depth + 1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_bytes_follow_the_trustless_gateway_rules() {
        let parse = |text| EntityBytes::parse(text).unwrap();
        assert_eq!(parse("0:*").resolve(100), Some((0, 100)));
        assert_eq!(parse("10:19").resolve(100), Some((10, 20)));
        assert_eq!(parse("-10:*").resolve(100), Some((90, 100)));
        assert_eq!(parse("49:-10").resolve(100), Some((49, 91)));
        assert_eq!(parse("0:500").resolve(100), Some((0, 100)));
        assert_eq!(parse("-500:*").resolve(100), Some((0, 100)));
        assert_eq!(parse("100:*").resolve(100), None);
        assert_eq!(parse("20:10").resolve(100), None);
        assert_eq!(parse("0:*").resolve(0), None);
        for bad in ["", "1", "a:b", "1:x", "1-2"] {
            assert!(EntityBytes::parse(bad).is_none(), "{bad}");
        }
    }
}
