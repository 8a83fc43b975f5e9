//! dag-pb, the block format of UnixFS: a protobuf `PBNode` of links (`PBLink`) and
//! optional data. It sits below the store, which follows dag-pb links for gc and
//! verify; the UnixFS `Data` message carried in the data field is `unixfs::pb`.
//!
//! Written by hand rather than generated because dag-pb's canonical form puts field 2
//! (links) before field 1 (data), which protobuf code generators do not do, and the
//! message is small. Decoding follows the dag-pb spec strictly (field order, no unknown
//! fields, link hash required).

use cid::Cid;

use wire::{put_bytes_field, put_varint_field, take_key, take_len_delimited, take_varint};

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
                put_varint_field(&mut link_bytes, 3, tsize);
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
                (2, wire::LEN) => {
                    if node.data.is_some() {
                        return Err(PbError::OutOfOrder);
                    }
                    node.links
                        .push(decode_link(take_len_delimited(&mut bytes)?)?);
                }
                (1, wire::LEN) => {
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
            (1, wire::LEN) => {
                let raw = take_len_delimited(&mut bytes)?;
                cid = Some(Cid::try_from(raw).map_err(|_| PbError::BadLinkCid)?);
            }
            (2, wire::LEN) => {
                let raw = take_len_delimited(&mut bytes)?;
                name = Some(String::from_utf8(raw.to_vec()).map_err(|_| PbError::BadLinkName)?);
            }
            (3, wire::VARINT) => tsize = Some(take_varint(&mut bytes)?),
            (field, wire_type) => return Err(PbError::UnexpectedField { field, wire_type }),
        }
    }
    Ok(PbLink {
        cid: cid.ok_or(PbError::MissingLinkHash)?,
        name,
        tsize,
    })
}

/// The protobuf wire format, as dag-pb and the UnixFS `Data` message use it.
pub(crate) mod wire {
    use super::PbError;
    use crate::varint::{self, VarintError};

    pub(crate) const VARINT: u64 = 0;
    pub(crate) const I64: u64 = 1;
    pub(crate) const LEN: u64 = 2;
    pub(crate) const I32: u64 = 5;

    pub(crate) fn put_key(out: &mut Vec<u8>, field: u64, wire_type: u64) {
        varint::put(out, (field << 3) | wire_type);
    }

    pub(crate) fn put_varint_field(out: &mut Vec<u8>, field: u64, value: u64) {
        put_key(out, field, VARINT);
        varint::put(out, value);
    }

    pub(crate) fn put_bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
        put_key(out, field, LEN);
        varint::put(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }

    pub(crate) fn take_varint(bytes: &mut &[u8]) -> Result<u64, PbError> {
        varint::take(bytes, varint::MAX_U64_BYTES).map_err(|err| match err {
            VarintError::Truncated => PbError::Truncated,
            VarintError::TooLong(_) => PbError::VarintOverflow,
        })
    }

    pub(crate) fn take_key(bytes: &mut &[u8]) -> Result<(u64, u64), PbError> {
        let key = take_varint(bytes)?;
        Ok((key >> 3, key & 7))
    }

    pub(crate) fn take_len_delimited<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], PbError> {
        let len = take_varint(bytes)?;
        let len = usize::try_from(len).map_err(|_| PbError::Truncated)?;
        if len > bytes.len() {
            return Err(PbError::Truncated);
        }
        let (head, tail) = bytes.split_at(len);
        *bytes = tail;
        Ok(head)
    }

    pub(crate) fn take_fixed<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N], PbError> {
        let (head, tail) = bytes.split_first_chunk::<N>().ok_or(PbError::Truncated)?;
        *bytes = tail;
        Ok(*head)
    }

    pub(crate) fn skip_field(bytes: &mut &[u8], wire_type: u64) -> Result<(), PbError> {
        match wire_type {
            VARINT => take_varint(bytes).map(drop),
            I64 => take_fixed::<8>(bytes).map(drop),
            LEN => take_len_delimited(bytes).map(drop),
            I32 => take_fixed::<4>(bytes).map(drop),
            other => Err(PbError::UnexpectedField {
                field: 0,
                wire_type: other,
            }),
        }
    }
}
