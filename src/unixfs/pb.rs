//! The two protobuf messages UnixFS is built from: the dag-pb node (`PBNode`/`PBLink`)
//! and the UnixFS `Data` message carried in its data field.
//!
//! Written by hand rather than generated because dag-pb's canonical form puts field 2
//! (links) before field 1 (data), which protobuf code generators do not do, and both
//! messages are small. Decoding follows the dag-pb spec strictly (field order, no
//! unknown fields, link hash required); the UnixFS message skips unknown fields so
//! that newer writers stay readable.

use cid::Cid;

/// Why a dag-pb or UnixFS message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PbError {
    #[error("truncated protobuf message")]
    Truncated,
    #[error("varint longer than 10 bytes")]
    VarintOverflow,
    #[error("unexpected field {field} with wire type {wire_type}")]
    UnexpectedField { field: u64, wire_type: u64 },
    #[error("dag-pb fields out of canonical order")]
    OutOfOrder,
    #[error("dag-pb link without a hash")]
    MissingLinkHash,
    #[error("dag-pb link hash is not a valid CID")]
    BadLinkCid,
    #[error("dag-pb link name is not UTF-8")]
    BadLinkName,
    #[error("UnixFS data without a type")]
    MissingType,
    #[error("unknown UnixFS type {0}")]
    UnknownType(u64),
    #[error("dag-pb node has more than one data field")]
    DuplicateData,
}

const WIRE_VARINT: u64 = 0;
const WIRE_I64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_I32: u64 = 5;

/// One link of a dag-pb node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbLink {
    pub cid: Cid,
    /// `None` means the field is absent; `Some("")` is the empty name kubo writes.
    pub name: Option<String>,
    pub tsize: Option<u64>,
}

/// A dag-pb node: links, then optional data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PbNode {
    pub links: Vec<PbLink>,
    pub data: Option<Vec<u8>>,
}

/// UnixFS node types, as numbered in unixfs.proto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Raw = 0,
    Directory = 1,
    File = 2,
    Metadata = 3,
    Symlink = 4,
    HamtShard = 5,
}

impl DataType {
    fn from_u64(value: u64) -> Result<Self, PbError> {
        Ok(match value {
            0 => DataType::Raw,
            1 => DataType::Directory,
            2 => DataType::File,
            3 => DataType::Metadata,
            4 => DataType::Symlink,
            5 => DataType::HamtShard,
            other => return Err(PbError::UnknownType(other)),
        })
    }
}

/// The UnixFS `Data` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixfsData {
    pub data_type: DataType,
    pub data: Option<Vec<u8>>,
    pub filesize: Option<u64>,
    pub blocksizes: Vec<u64>,
    pub hash_type: Option<u64>,
    pub fanout: Option<u64>,
    pub mode: Option<u32>,
    pub mtime: Option<UnixTime>,
}

/// Modification time as UnixFS 1.5 stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixTime {
    pub seconds: i64,
    pub nanos: Option<u32>,
}

impl UnixfsData {
    pub fn new(data_type: DataType) -> Self {
        UnixfsData {
            data_type,
            data: None,
            filesize: None,
            blocksizes: Vec::new(),
            hash_type: None,
            fanout: None,
            mode: None,
            mtime: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.blocksizes.len() * 4);
        put_key(&mut out, 1, WIRE_VARINT);
        put_varint(&mut out, self.data_type as u64);
        if let Some(data) = &self.data {
            put_bytes_field(&mut out, 2, data);
        }
        if let Some(filesize) = self.filesize {
            put_key(&mut out, 3, WIRE_VARINT);
            put_varint(&mut out, filesize);
        }
        for size in &self.blocksizes {
            put_key(&mut out, 4, WIRE_VARINT);
            put_varint(&mut out, *size);
        }
        if let Some(hash_type) = self.hash_type {
            put_key(&mut out, 5, WIRE_VARINT);
            put_varint(&mut out, hash_type);
        }
        if let Some(fanout) = self.fanout {
            put_key(&mut out, 6, WIRE_VARINT);
            put_varint(&mut out, fanout);
        }
        if let Some(mode) = self.mode {
            put_key(&mut out, 7, WIRE_VARINT);
            put_varint(&mut out, u64::from(mode));
        }
        if let Some(mtime) = self.mtime {
            let mut inner = Vec::new();
            put_key(&mut inner, 1, WIRE_VARINT);
            put_varint(&mut inner, mtime.seconds as u64);
            if let Some(nanos) = mtime.nanos {
                put_key(&mut inner, 2, WIRE_I32);
                inner.extend_from_slice(&nanos.to_le_bytes());
            }
            put_bytes_field(&mut out, 8, &inner);
        }
        out
    }

    pub fn decode(mut bytes: &[u8]) -> Result<Self, PbError> {
        let mut data_type = None;
        let mut message = UnixfsData::new(DataType::Raw);
        while !bytes.is_empty() {
            let (field, wire_type) = take_key(&mut bytes)?;
            match (field, wire_type) {
                (1, WIRE_VARINT) => data_type = Some(DataType::from_u64(take_varint(&mut bytes)?)?),
                (2, WIRE_LEN) => message.data = Some(take_len_delimited(&mut bytes)?.to_vec()),
                (3, WIRE_VARINT) => message.filesize = Some(take_varint(&mut bytes)?),
                (4, WIRE_VARINT) => message.blocksizes.push(take_varint(&mut bytes)?),
                (4, WIRE_LEN) => {
                    // Some writers emit blocksizes packed; accept both forms.
                    let mut packed = take_len_delimited(&mut bytes)?;
                    while !packed.is_empty() {
                        message.blocksizes.push(take_varint(&mut packed)?);
                    }
                }
                (5, WIRE_VARINT) => message.hash_type = Some(take_varint(&mut bytes)?),
                (6, WIRE_VARINT) => message.fanout = Some(take_varint(&mut bytes)?),
                (7, WIRE_VARINT) => message.mode = Some(take_varint(&mut bytes)? as u32),
                (8, WIRE_LEN) => {
                    let mut inner = take_len_delimited(&mut bytes)?;
                    let mut mtime = UnixTime {
                        seconds: 0,
                        nanos: None,
                    };
                    while !inner.is_empty() {
                        let (field, wire_type) = take_key(&mut inner)?;
                        match (field, wire_type) {
                            (1, WIRE_VARINT) => mtime.seconds = take_varint(&mut inner)? as i64,
                            (2, WIRE_I32) => {
                                let raw = take_fixed::<4>(&mut inner)?;
                                mtime.nanos = Some(u32::from_le_bytes(raw));
                            }
                            (_, wire_type) => skip_field(&mut inner, wire_type)?,
                        }
                    }
                    message.mtime = Some(mtime);
                }
                (_, wire_type) => skip_field(&mut bytes, wire_type)?,
            }
        }
        message.data_type = data_type.ok_or(PbError::MissingType)?;
        Ok(message)
    }
}

impl PbNode {
    /// Canonical dag-pb bytes: links first, each link's fields in order, then data.
    pub fn encode(&self) -> Vec<u8> {
        let data_len = self.data.as_ref().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(self.links.len() * 48 + data_len + 8);
        let mut link_bytes = Vec::with_capacity(64);
        for link in &self.links {
            link_bytes.clear();
            put_bytes_field(&mut link_bytes, 1, &link.cid.to_bytes());
            if let Some(name) = &link.name {
                put_bytes_field(&mut link_bytes, 2, name.as_bytes());
            }
            if let Some(tsize) = link.tsize {
                put_key(&mut link_bytes, 3, WIRE_VARINT);
                put_varint(&mut link_bytes, tsize);
            }
            put_bytes_field(&mut out, 2, &link_bytes);
        }
        if let Some(data) = &self.data {
            put_bytes_field(&mut out, 1, data);
        }
        out
    }

    /// Decodes a dag-pb node as the dag-pb spec defines it.
    pub fn decode(mut bytes: &[u8]) -> Result<Self, PbError> {
        let mut node = PbNode::default();
        while !bytes.is_empty() {
            let (field, wire_type) = take_key(&mut bytes)?;
            match (field, wire_type) {
                (2, WIRE_LEN) => {
                    if node.data.is_some() {
                        return Err(PbError::OutOfOrder);
                    }
                    node.links
                        .push(decode_link(take_len_delimited(&mut bytes)?)?);
                }
                (1, WIRE_LEN) => {
                    if node.data.is_some() {
                        return Err(PbError::DuplicateData);
                    }
                    node.data = Some(take_len_delimited(&mut bytes)?.to_vec());
                }
                (field, wire_type) => return Err(PbError::UnexpectedField { field, wire_type }),
            }
        }
        Ok(node)
    }
}

fn decode_link(mut bytes: &[u8]) -> Result<PbLink, PbError> {
    let mut cid = None;
    let mut name = None;
    let mut tsize = None;
    let mut last_field = 0;
    while !bytes.is_empty() {
        let (field, wire_type) = take_key(&mut bytes)?;
        if field <= last_field {
            return Err(PbError::OutOfOrder);
        }
        last_field = field;
        match (field, wire_type) {
            (1, WIRE_LEN) => {
                let raw = take_len_delimited(&mut bytes)?;
                cid = Some(Cid::try_from(raw).map_err(|_| PbError::BadLinkCid)?);
            }
            (2, WIRE_LEN) => {
                let raw = take_len_delimited(&mut bytes)?;
                name = Some(String::from_utf8(raw.to_vec()).map_err(|_| PbError::BadLinkName)?);
            }
            (3, WIRE_VARINT) => tsize = Some(take_varint(&mut bytes)?),
            (field, wire_type) => return Err(PbError::UnexpectedField { field, wire_type }),
        }
    }
    Ok(PbLink {
        cid: cid.ok_or(PbError::MissingLinkHash)?,
        name,
        tsize,
    })
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_key(out: &mut Vec<u8>, field: u64, wire_type: u64) {
    put_varint(out, (field << 3) | wire_type);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Bytes a varint of `value` takes: dag-pb Tsize arithmetic needs it.
pub fn varint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

fn take_varint(bytes: &mut &[u8]) -> Result<u64, PbError> {
    let mut value = 0u64;
    for (index, byte) in bytes.iter().enumerate() {
        if index == 10 {
            return Err(PbError::VarintOverflow);
        }
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            *bytes = &bytes[index + 1..];
            return Ok(value);
        }
    }
    Err(PbError::Truncated)
}

fn take_key(bytes: &mut &[u8]) -> Result<(u64, u64), PbError> {
    let key = take_varint(bytes)?;
    Ok((key >> 3, key & 7))
}

fn take_len_delimited<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], PbError> {
    let len = take_varint(bytes)?;
    let len = usize::try_from(len).map_err(|_| PbError::Truncated)?;
    if len > bytes.len() {
        return Err(PbError::Truncated);
    }
    let (head, tail) = bytes.split_at(len);
    *bytes = tail;
    Ok(head)
}

fn take_fixed<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N], PbError> {
    if bytes.len() < N {
        return Err(PbError::Truncated);
    }
    let (head, tail) = bytes.split_at(N);
    *bytes = tail;
    let mut out = [0u8; N];
    out.copy_from_slice(head);
    Ok(out)
}

fn skip_field(bytes: &mut &[u8], wire_type: u64) -> Result<(), PbError> {
    match wire_type {
        WIRE_VARINT => take_varint(bytes).map(drop),
        WIRE_I64 => take_fixed::<8>(bytes).map(drop),
        WIRE_LEN => take_len_delimited(bytes).map(drop),
        WIRE_I32 => take_fixed::<4>(bytes).map(drop),
        other => Err(PbError::UnexpectedField {
            field: 0,
            wire_type: other,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{cid_v1, codec};

    #[test]
    fn node_round_trips_with_links_before_data() {
        let child = cid_v1(codec::RAW, b"chunk");
        let mut file = UnixfsData::new(DataType::File);
        file.filesize = Some(5);
        file.blocksizes = vec![5];
        let node = PbNode {
            links: vec![PbLink {
                cid: child,
                name: Some(String::new()),
                tsize: Some(5),
            }],
            data: Some(file.encode()),
        };
        let bytes = node.encode();
        assert_eq!(bytes[0], 0x12, "links (field 2) come first");
        let decoded = PbNode::decode(&bytes).unwrap();
        assert_eq!(decoded, node);
        assert_eq!(
            UnixfsData::decode(decoded.data.as_deref().unwrap()).unwrap(),
            file
        );
    }

    #[test]
    fn empty_directory_matches_known_bytes() {
        // The well-known empty UnixFS directory, QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn.
        let node = PbNode {
            links: vec![],
            data: Some(UnixfsData::new(DataType::Directory).encode()),
        };
        let cid = crate::block::cid_v0(&node.encode());
        assert_eq!(
            cid.to_string(),
            "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
        );
    }

    #[test]
    fn rejects_data_before_links_and_truncation() {
        let link = PbNode {
            links: vec![PbLink {
                cid: cid_v1(codec::RAW, b"x"),
                name: None,
                tsize: None,
            }],
            data: None,
        }
        .encode();
        let mut bad = vec![0x0a, 0x00];
        bad.extend_from_slice(&link);
        assert_eq!(PbNode::decode(&bad), Err(PbError::OutOfOrder));
        assert_eq!(
            PbNode::decode(&link[..link.len() - 1]),
            Err(PbError::Truncated)
        );
        assert!(matches!(
            PbNode::decode(&[0x18, 0x01]),
            Err(PbError::UnexpectedField { .. })
        ));
    }

    #[test]
    fn varint_lengths() {
        for value in [0u64, 1, 127, 128, 16383, 16384, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
        }
    }
}
