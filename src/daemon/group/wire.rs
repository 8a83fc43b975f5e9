//! `/oermesh/group/1`: what the members of a replication group say to each other.
//! Formats and limits: docs/PROTOCOL.md ("Replication groups").
//!
//! One stream per request: the asking member opens a stream, writes one request
//! message and reads one response message; then both close it. A message is
//! `varint(length) || DAG-CBOR body`.

use cid::Cid;
use futures_util::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::varint;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/oermesh/group/1");

/// The largest message either way: holdings of `MAX_COLLECTIONS` collections of up to
/// a million resources fit (a bit per resource), and so does a challenge's answer of a
/// path of blocks.
pub const MAX_MESSAGE: usize = 4 << 20;
/// Collections named in one holdings message.
pub const MAX_COLLECTIONS: usize = 64;
/// Link choices in one challenge: deeper than any UnixFS DAG oermesh writes.
pub const MAX_PICKS: usize = 16;
/// The most bytes a range challenge asks to be hashed.
pub const MAX_RANGE: u64 = 256 * 1024;
/// A nonce's length.
pub const NONCE_BYTES: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    /// The asking member's holdings; the answer is the other member's.
    Holdings(Holdings),
    Challenge(Challenge),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    Holdings(Holdings),
    Answer(Answer),
    /// The request was not served: not a member of the same group, or malformed.
    Refused(String),
}

/// What a member holds of the group's collections, and the room it has left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holdings {
    /// The group's name: members of another group are refused.
    pub group: String,
    /// Bytes this member can still store.
    pub free: u64,
    pub collections: Vec<CollectionHoldings>,
}

/// Which resources of one version of a collection a member holds whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionHoldings {
    pub id: String,
    /// The version the bitmap is about; a member reading it for another version
    /// counts none of it.
    pub seq: u64,
    /// Bit `i` (byte `i / 8`, bit `i % 8` from the least significant) set: the member
    /// holds the whole DAG of the content of entry `i` of the version's entry list, in
    /// the list's order.
    pub held: ByteBuf,
}

/// Prove you hold part of `root`: walk from it, taking at each block the link
/// `picks[depth] % links`, until a block without links or the end of `picks`; then
/// answer with the SHA-256 of `nonce || bytes[offset .. offset + length]` of that
/// block (`range` given), or with every block of the path (no `range`: the asking
/// member does not hold the resource and checks the blocks against their CIDs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub root: Cid,
    pub picks: Vec<u32>,
    pub nonce: ByteBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<(u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    Digest(ByteBuf),
    Blocks(Vec<ByteBuf>),
    /// The member cannot answer: it does not hold the resource, or cannot read it.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message of {length} bytes, above the limit of {limit}")]
    Oversized { length: usize, limit: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("the stream ended inside a message")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one message of at most `MAX_MESSAGE` bytes.
pub async fn read<T, R>(reader: &mut R) -> Result<T, WireError>
where
    T: for<'de> Deserialize<'de>,
    R: AsyncRead + Unpin,
{
    let mut decoder = varint::Decoder::new(4);
    let length = loop {
        let mut byte = [0u8; 1];
        if reader.read(&mut byte).await? == 0 {
            return Err(WireError::Truncated);
        }
        match decoder.push(byte[0]) {
            Ok(Some(length)) => break length as usize,
            Ok(None) => {}
            Err(err) => return Err(WireError::Malformed(format!("length: {err}"))),
        }
    };
    if length > MAX_MESSAGE {
        return Err(WireError::Oversized {
            length,
            limit: MAX_MESSAGE,
        });
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await.map_err(|err| {
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            WireError::Truncated
        } else {
            WireError::Io(err)
        }
    })?;
    serde_ipld_dagcbor::from_slice(&body).map_err(|err| WireError::Malformed(err.to_string()))
}

/// Writes one message; one above `MAX_MESSAGE` is refused before anything is sent.
pub async fn write<T, W>(writer: &mut W, message: &T) -> Result<(), WireError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let body =
        serde_ipld_dagcbor::to_vec(message).map_err(|err| WireError::Malformed(err.to_string()))?;
    if body.len() > MAX_MESSAGE {
        return Err(WireError::Oversized {
            length: body.len(),
            limit: MAX_MESSAGE,
        });
    }
    let mut frame = Vec::with_capacity(body.len() + 4);
    varint::put(&mut frame, body.len() as u64);
    frame.extend_from_slice(&body);
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Whether bit `index` of a holdings bitmap is set.
pub fn is_held(held: &[u8], index: usize) -> bool {
    held.get(index / 8)
        .is_some_and(|byte| byte & (1 << (index % 8)) != 0)
}

/// A bitmap with the given bits set, as long as `count` bits need.
pub fn bitmap(count: usize, held: impl IntoIterator<Item = usize>) -> Vec<u8> {
    let mut bits = vec![0u8; count.div_ceil(8)];
    for index in held {
        if let Some(byte) = bits.get_mut(index / 8) {
            *byte |= 1 << (index % 8);
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::futures::executor::block_on;

    #[test]
    fn messages_survive_a_round_trip_and_oversized_ones_are_refused() {
        let root = crate::block::cid_v1(crate::block::codec::RAW, b"lesson");
        let messages = [
            Request::Holdings(Holdings {
                group: "district-7".into(),
                free: 1 << 40,
                collections: vec![CollectionHoldings {
                    id: "z6Mk/x".into(),
                    seq: 3,
                    held: ByteBuf::from(bitmap(10, [0, 9])),
                }],
            }),
            Request::Challenge(Challenge {
                root,
                picks: vec![1, 2],
                nonce: ByteBuf::from(vec![7; NONCE_BYTES]),
                range: Some((5, 10)),
            }),
        ];
        for message in messages {
            let mut bytes = Vec::new();
            block_on(write(&mut bytes, &message)).unwrap();
            let read: Request = block_on(read(&mut bytes.as_slice())).unwrap();
            assert_eq!(read, message);
        }
        let mut huge = Vec::new();
        varint::put(&mut huge, MAX_MESSAGE as u64 + 1);
        let err = block_on(read::<Request, _>(&mut huge.as_slice())).unwrap_err();
        assert!(matches!(err, WireError::Oversized { .. }), "{err}");
    }

    #[test]
    fn bitmaps_name_the_bits_set() {
        let bits = bitmap(17, [0, 8, 16]);
        assert_eq!(bits.len(), 3);
        assert!(is_held(&bits, 0) && is_held(&bits, 8) && is_held(&bits, 16));
        assert!(!is_held(&bits, 1) && !is_held(&bits, 17) && !is_held(&bits, 1000));
    }
}
