//! The frames of `/oermesh/blocks/1` and their limits (docs/PROTOCOL.md, "Block
//! exchange"). Every frame is `varint(length) || kind || body`; `length` counts the kind
//! byte and the body and is checked against the limit of the direction before anything
//! is allocated.
//!
//! These types are the protocol: the server and the fetcher use them, and so do the
//! tests that play a hostile peer.

use cid::Cid;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::store::MAX_BLOCK_SIZE;
use crate::varint;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/oermesh/blocks/1");

/// Roots of one request, and blocks of its `prune` list.
pub const MAX_ROOTS: usize = 1024;
pub const MAX_PRUNE: usize = 1024;
/// Bytes of a request's `path`.
pub const MAX_PATH_BYTES: usize = 4096;
/// A request frame; a request within the other limits takes under 100 KiB.
pub const MAX_REQUEST_FRAME: usize = 128 * 1024;
/// A response frame: one block of at most 2 MiB with its CID.
pub const MAX_RESPONSE_FRAME: usize = MAX_BLOCK_SIZE + 256;
/// Blocks (sent or missing) one response walks before it ends as truncated: bounds the
/// set of visited blocks each side keeps for a stream.
pub const MAX_RESPONSE_BLOCKS: usize = 8192;
/// Blocks, and their bytes, a server sends to resolve a path.
pub const MAX_PATH_BLOCKS: usize = 64;
pub const MAX_PATH_BLOCK_BYTES: usize = 16 * 1024 * 1024;

/// Bytes of a frame's length: enough for every limit here.
const MAX_LENGTH_BYTES: usize = 4;

const KIND_REQUEST: u8 = 1;
const KIND_BLOCK: u8 = 2;
const KIND_MISSING: u8 = 3;
const KIND_RESOLVED: u8 = 4;
const KIND_END: u8 = 5;

/// What the client asks for: the blocks named by `roots` (`scope` block), or the DAG
/// under each root (`scope` dag), walked depth first, without the subtrees in `prune`.
/// With `path`, the single root is first resolved through UnixFS directories; with
/// `range`, only the blocks of a file that hold those bytes are walked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub roots: Vec<Cid>,
    pub scope: Scope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<ByteRange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prune: Vec<Cid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Only the blocks named.
    Block,
    /// Each named block and every block it links to, recursively.
    Dag,
}

/// Bytes `offset .. offset + length` of a file's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "[u64; 2]", into = "[u64; 2]")]
pub struct ByteRange {
    pub offset: u64,
    pub length: u64,
}

impl From<[u64; 2]> for ByteRange {
    fn from([offset, length]: [u64; 2]) -> Self {
        ByteRange { offset, length }
    }
}

impl From<ByteRange> for [u64; 2] {
    fn from(range: ByteRange) -> Self {
        [range.offset, range.length]
    }
}

impl ByteRange {
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }
}

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The walk is done: every block was sent or reported missing.
    Complete,
    /// The server stopped early (its per-response cap, or shutdown); the client asks
    /// again for what is left.
    Truncated,
    /// The server serves too many streams; ask another peer or later.
    Busy,
    /// The request cannot be served as asked (`message` says why): an invalid request,
    /// a path that does not resolve, a range over something that is not a file.
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A block as received: the frame's bytes, of which the block is the tail (no copy).
#[derive(Debug, Clone)]
pub struct BlockFrame {
    pub cid: Cid,
    frame: Vec<u8>,
    start: usize,
}

impl PartialEq for BlockFrame {
    fn eq(&self, other: &Self) -> bool {
        self.cid == other.cid && self.data() == other.data()
    }
}

impl Eq for BlockFrame {}

impl BlockFrame {
    pub fn new(cid: Cid, data: Vec<u8>) -> BlockFrame {
        BlockFrame {
            cid,
            frame: data,
            start: 0,
        }
    }

    pub fn data(&self) -> &[u8] {
        &self.frame[self.start..]
    }

    pub fn into_data(mut self) -> Vec<u8> {
        if self.start > 0 {
            self.frame.drain(..self.start);
        }
        self.frame
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Request(Request),
    Block(BlockFrame),
    /// The server does not hold this block; the walk does not go below it.
    Missing(Cid),
    /// The request's path names this CID; the walk starts here.
    Resolved(Cid),
    End(End),
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("a frame of {length} bytes is above the limit of {limit}")]
    Oversized { length: usize, limit: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("the stream ended inside a frame")]
    Truncated,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// Whether the peer broke the protocol (as opposed to the stream failing).
    pub fn is_violation(&self) -> bool {
        matches!(self, WireError::Oversized { .. } | WireError::Malformed(_))
    }
}

impl Frame {
    /// The frame's bytes, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let kind = match self {
            Frame::Request(request) => {
                body = cbor(request);
                KIND_REQUEST
            }
            Frame::Block(block) => {
                body.extend_from_slice(&block.cid.to_bytes());
                body.extend_from_slice(block.data());
                KIND_BLOCK
            }
            Frame::Missing(cid) => {
                body = cid.to_bytes();
                KIND_MISSING
            }
            Frame::Resolved(cid) => {
                body = cid.to_bytes();
                KIND_RESOLVED
            }
            Frame::End(end) => {
                body = cbor(end);
                KIND_END
            }
        };
        let mut out = Vec::with_capacity(body.len() + 6);
        varint::put(&mut out, body.len() as u64 + 1);
        out.push(kind);
        out.extend_from_slice(&body);
        out
    }

    /// Decodes the frame of `kind` whose body is `frame[1..]`.
    fn decode(frame: Vec<u8>) -> Result<Frame, WireError> {
        let malformed = |what: &str| WireError::Malformed(what.to_string());
        let kind = *frame.first().ok_or_else(|| malformed("empty frame"))?;
        let body = &frame[1..];
        match kind {
            KIND_REQUEST => {
                let request: Request = serde_ipld_dagcbor::from_slice(body)
                    .map_err(|err| WireError::Malformed(format!("request: {err}")))?;
                Ok(Frame::Request(request))
            }
            KIND_BLOCK => {
                let mut reader = body;
                let cid = Cid::read_bytes(&mut reader)
                    .map_err(|err| WireError::Malformed(format!("block CID: {err}")))?;
                let start = frame.len() - reader.len();
                if frame.len() - start > MAX_BLOCK_SIZE {
                    return Err(WireError::Oversized {
                        length: frame.len() - start,
                        limit: MAX_BLOCK_SIZE,
                    });
                }
                Ok(Frame::Block(BlockFrame { cid, frame, start }))
            }
            KIND_MISSING | KIND_RESOLVED => {
                let cid = Cid::try_from(body)
                    .map_err(|err| WireError::Malformed(format!("CID: {err}")))?;
                Ok(if kind == KIND_MISSING {
                    Frame::Missing(cid)
                } else {
                    Frame::Resolved(cid)
                })
            }
            KIND_END => {
                let end: End = serde_ipld_dagcbor::from_slice(body)
                    .map_err(|err| WireError::Malformed(format!("end: {err}")))?;
                Ok(Frame::End(end))
            }
            other => Err(WireError::Malformed(format!("unknown frame kind {other}"))),
        }
    }
}

fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of CIDs, strings and integers always encode.
    serde_ipld_dagcbor::to_vec(value).unwrap_or_default()
}

/// Reads one frame of at most `limit` bytes. `None` when the stream ends cleanly
/// between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<Frame>, WireError> {
    let mut decoder = varint::Decoder::new(MAX_LENGTH_BYTES);
    let mut started = false;
    let length = loop {
        let mut byte = [0u8; 1];
        if reader.read(&mut byte).await? == 0 {
            return if started {
                Err(WireError::Truncated)
            } else {
                Ok(None)
            };
        }
        started = true;
        match decoder.push(byte[0]) {
            Ok(Some(length)) => break length as usize,
            Ok(None) => {}
            Err(err) => return Err(WireError::Malformed(format!("frame length: {err}"))),
        }
    };
    if length > limit {
        return Err(WireError::Oversized { length, limit });
    }
    if length == 0 {
        return Err(WireError::Malformed("empty frame".into()));
    }
    let mut frame = vec![0u8; length];
    reader.read_exact(&mut frame).await.map_err(|err| {
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            WireError::Truncated
        } else {
            WireError::Io(err)
        }
    })?;
    Frame::decode(frame).map(Some)
}

/// Writes a block frame without copying the block into it.
pub async fn write_block<W: AsyncWrite + Unpin>(
    writer: &mut W,
    cid: &Cid,
    data: &[u8],
) -> std::io::Result<()> {
    let cid_bytes = cid.to_bytes();
    let mut head = Vec::with_capacity(cid_bytes.len() + 6);
    varint::put(&mut head, (1 + cid_bytes.len() + data.len()) as u64);
    head.push(KIND_BLOCK);
    head.extend_from_slice(&cid_bytes);
    writer.write_all(&head).await?;
    writer.write_all(data).await
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame,
) -> std::io::Result<()> {
    writer.write_all(&frame.encode()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{cid_v1, codec};
    use libp2p::futures::executor::block_on;

    fn round_trip(frame: &Frame, limit: usize) -> Result<Option<Frame>, WireError> {
        let bytes = frame.encode();
        block_on(read_frame(&mut bytes.as_slice(), limit))
    }

    #[test]
    fn every_frame_survives_a_round_trip() {
        let cid = cid_v1(codec::RAW, b"hello");
        let frames = [
            Frame::Request(Request {
                roots: vec![cid],
                scope: Scope::Dag,
                path: Some("a/b".into()),
                range: Some(ByteRange {
                    offset: 5,
                    length: 10,
                }),
                prune: vec![cid],
            }),
            Frame::Request(Request {
                roots: vec![cid],
                scope: Scope::Block,
                path: None,
                range: None,
                prune: vec![],
            }),
            Frame::Block(BlockFrame::new(cid, b"hello".to_vec())),
            Frame::Missing(cid),
            Frame::Resolved(cid),
            Frame::End(End {
                status: Status::Truncated,
                message: None,
            }),
        ];
        for frame in frames {
            let back = round_trip(&frame, MAX_RESPONSE_FRAME).unwrap().unwrap();
            assert_eq!(back, frame);
        }
    }

    #[test]
    fn block_frames_are_written_as_encoded() {
        let cid = cid_v1(codec::RAW, b"hello");
        let mut written = Vec::new();
        block_on(write_block(&mut written, &cid, b"hello")).unwrap();
        assert_eq!(
            written,
            Frame::Block(BlockFrame::new(cid, b"hello".to_vec())).encode()
        );
    }

    #[test]
    fn limits_are_checked_before_reading_the_body() {
        let cid = cid_v1(codec::RAW, b"x");
        let big = Frame::Block(BlockFrame::new(cid, vec![0; 2000])).encode();
        // Only the length prefix is there: the limit is refused before the body is awaited.
        let err = block_on(read_frame(&mut &big[..3], 1000)).unwrap_err();
        assert!(matches!(err, WireError::Oversized { limit: 1000, .. }));
        assert!(err.is_violation());
        let err = block_on(read_frame(&mut &big[..100], MAX_RESPONSE_FRAME)).unwrap_err();
        assert!(matches!(err, WireError::Truncated));
        assert!(!err.is_violation());
        let nothing: &[u8] = &[];
        assert!(block_on(read_frame(&mut &nothing[..], 1000))
            .unwrap()
            .is_none());
    }

    #[test]
    fn unknown_kinds_and_fields_are_refused() {
        let bad_kind = [1u8, 9];
        assert!(matches!(
            block_on(read_frame(&mut &bad_kind[..], 100)),
            Err(WireError::Malformed(_))
        ));
        #[derive(Serialize)]
        struct Extra {
            roots: Vec<Cid>,
            scope: Scope,
            extra: u8,
        }
        let mut bytes = Vec::new();
        let body = cbor(&Extra {
            roots: vec![],
            scope: Scope::Dag,
            extra: 1,
        });
        varint::put(&mut bytes, body.len() as u64 + 1);
        bytes.push(KIND_REQUEST);
        bytes.extend_from_slice(&body);
        assert!(matches!(
            block_on(read_frame(&mut bytes.as_slice(), MAX_REQUEST_FRAME)),
            Err(WireError::Malformed(_))
        ));
    }
}
