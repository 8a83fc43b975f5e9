//! The UnixFS `Data` message, carried in the data field of a dag-pb node, and the dag-pb
//! types themselves (from [`crate::dag_pb`]) for the code that builds and reads UnixFS.
//!
//! Written by hand for the same reason as the dag-pb codec; decoding skips unknown fields
//! so that newer writers stay readable.

use crate::dag_pb::wire::{
    self, put_bytes_field, put_key, put_varint_field, skip_field, take_fixed, take_key,
    take_len_delimited, take_varint,
};
pub use crate::dag_pb::{PbError, PbLink, PbNode};

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
        put_varint_field(&mut out, 1, self.data_type as u64);
        if let Some(data) = &self.data {
            put_bytes_field(&mut out, 2, data);
        }
        if let Some(filesize) = self.filesize {
            put_varint_field(&mut out, 3, filesize);
        }
        for size in &self.blocksizes {
            put_varint_field(&mut out, 4, *size);
        }
        if let Some(hash_type) = self.hash_type {
            put_varint_field(&mut out, 5, hash_type);
        }
        if let Some(fanout) = self.fanout {
            put_varint_field(&mut out, 6, fanout);
        }
        if let Some(mode) = self.mode {
            put_varint_field(&mut out, 7, u64::from(mode));
        }
        if let Some(mtime) = self.mtime {
            let mut inner = Vec::new();
            put_varint_field(&mut inner, 1, mtime.seconds as u64);
            if let Some(nanos) = mtime.nanos {
                put_key(&mut inner, 2, wire::I32);
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
                (1, wire::VARINT) => {
                    data_type = Some(DataType::from_u64(take_varint(&mut bytes)?)?)
                }
                (2, wire::LEN) => message.data = Some(take_len_delimited(&mut bytes)?.to_vec()),
                (3, wire::VARINT) => message.filesize = Some(take_varint(&mut bytes)?),
                (4, wire::VARINT) => message.blocksizes.push(take_varint(&mut bytes)?),
                (4, wire::LEN) => {
                    // Some writers emit blocksizes packed; accept both forms.
                    let mut packed = take_len_delimited(&mut bytes)?;
                    while !packed.is_empty() {
                        message.blocksizes.push(take_varint(&mut packed)?);
                    }
                }
                (5, wire::VARINT) => message.hash_type = Some(take_varint(&mut bytes)?),
                (6, wire::VARINT) => message.fanout = Some(take_varint(&mut bytes)?),
                (7, wire::VARINT) => message.mode = Some(take_varint(&mut bytes)? as u32),
                (8, wire::LEN) => {
                    let mut inner = take_len_delimited(&mut bytes)?;
                    let mut mtime = UnixTime {
                        seconds: 0,
                        nanos: None,
                    };
                    while !inner.is_empty() {
                        let (field, wire_type) = take_key(&mut inner)?;
                        match (field, wire_type) {
                            (1, wire::VARINT) => mtime.seconds = take_varint(&mut inner)? as i64,
                            (2, wire::I32) => {
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
}
