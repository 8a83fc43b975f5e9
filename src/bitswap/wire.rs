//! Bitswap's messages (specs.ipfs.tech, "Bitswap Protocol"): one protobuf `Message` per
//! frame, each frame an unsigned varint length and that many bytes.
//!
//! The codec is written here, not generated: the decoder must stop keeping wantlist
//! entries and presences at a cap while it reads (a few bytes of input per empty entry
//! would otherwise become tens of bytes of memory each), and it hands out block data as
//! slices of the frame instead of copies.
//!
//! These types are the protocol: the server, the client and the tests that play a
//! hostile peer all use them.

use bytes::Bytes;
use cid::Cid;
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use multihash::Multihash;

use crate::block::{codec, hash_code, sha256_multihash};
use crate::dag_pb::wire::{put_bytes_field, put_key, put_varint_field, skip_field, take_key};
use crate::dag_pb::wire::{take_len_delimited, take_varint, LEN, VARINT};
use crate::dag_pb::PbError;
use crate::varint;

/// The protocol names, newest first. `/ipfs/bitswap` is what 1.0.0 peers called it.
pub const PROTOCOL_1_2_0: StreamProtocol = StreamProtocol::new("/ipfs/bitswap/1.2.0");
pub const PROTOCOL_1_1_0: StreamProtocol = StreamProtocol::new("/ipfs/bitswap/1.1.0");
pub const PROTOCOL_1_0_0: StreamProtocol = StreamProtocol::new("/ipfs/bitswap/1.0.0");
pub const PROTOCOL_LEGACY: StreamProtocol = StreamProtocol::new("/ipfs/bitswap");

/// The largest frame read: boxo and Helia send up to 4 MiB.
pub const MAX_INCOMING_MESSAGE: usize = 4 * 1024 * 1024;
/// The largest frame sent, unless one block alone is larger: Helia aborts a stream on
/// which several 1 MiB blocks arrive in one message.
pub const MAX_OUTGOING_MESSAGE: usize = 2 * 1024 * 1024;
/// Longer CIDs are not CIDs we could hold (boxo refuses the same way).
pub const MAX_CID_BYTES: usize = 128;
/// Wantlist entries and presences one decoded message keeps; more are counted and
/// dropped. A peer's whole wantlist is capped separately (see the server).
pub const MAX_DECODED_ENTRIES: usize = 2048;

/// Bytes a frame's length takes at most: enough for [`MAX_INCOMING_MESSAGE`].
const MAX_LENGTH_BYTES: usize = 4;

/// A bitswap version, as negotiated by a stream's protocol name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// Blocks travel as bare bytes (CIDv0 implied); no presences.
    V1_0,
    /// Blocks travel with their CID prefix; no presences.
    V1_1,
    /// WANT_HAVE, HAVE and DONT_HAVE.
    V1_2,
}

impl Version {
    pub const NEWEST_FIRST: [Version; 3] = [Version::V1_2, Version::V1_1, Version::V1_0];

    pub fn protocol(self) -> StreamProtocol {
        match self {
            Version::V1_2 => PROTOCOL_1_2_0,
            Version::V1_1 => PROTOCOL_1_1_0,
            Version::V1_0 => PROTOCOL_1_0_0,
        }
    }

    /// Whether HAVE and DONT_HAVE can be said.
    pub fn has_presences(self) -> bool {
        self == Version::V1_2
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1_2 => "1.2.0",
            Version::V1_1 => "1.1.0",
            Version::V1_0 => "1.0.0",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WantType {
    Block,
    Have,
}

/// One wantlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub cid: Cid,
    pub priority: i32,
    pub cancel: bool,
    pub want_type: WantType,
    pub send_dont_have: bool,
}

impl Entry {
    pub fn want(cid: Cid, want_type: WantType, priority: i32) -> Entry {
        Entry {
            cid,
            priority,
            cancel: false,
            want_type,
            send_dont_have: true,
        }
    }

    pub fn cancel(cid: Cid) -> Entry {
        Entry {
            cid,
            priority: 0,
            cancel: true,
            want_type: WantType::Block,
            send_dont_have: false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wantlist {
    pub entries: Vec<Entry>,
    /// The entries replace the whole wantlist the receiver keeps for the sender.
    pub full: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Presence {
    Have,
    DontHave,
}

/// What a CID says about its block apart from the digest: enough, with the block's
/// bytes, to compute the CID again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prefix {
    pub version: u64,
    pub codec: u64,
    pub hash_code: u64,
    pub hash_len: u64,
}

impl Prefix {
    /// What a 1.0.0 peer's bare blocks are: CIDv0, dag-pb, sha2-256.
    pub const V0: Prefix = Prefix {
        version: 0,
        codec: codec::DAG_PB,
        hash_code: hash_code::SHA2_256,
        hash_len: 32,
    };

    pub fn of(cid: &Cid) -> Prefix {
        Prefix {
            version: cid.version() as u64,
            codec: cid.codec(),
            hash_code: cid.hash().code(),
            hash_len: cid.hash().size() as u64,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8);
        for value in [self.version, self.codec, self.hash_code, self.hash_len] {
            varint::put(&mut out, value);
        }
        out
    }

    pub fn decode(mut bytes: &[u8]) -> Result<Prefix, WireError> {
        let mut next = || {
            varint::take(&mut bytes, varint::MAX_U64_BYTES)
                .map_err(|_| WireError::Malformed("a block prefix that is not four varints".into()))
        };
        let prefix = Prefix {
            version: next()?,
            codec: next()?,
            hash_code: next()?,
            hash_len: next()?,
        };
        Ok(prefix)
    }

    /// The CID of `data` under this prefix: the block is hashed. Only hashes this node
    /// can check are accepted.
    pub fn cid_of(&self, data: &[u8]) -> Result<Cid, WireError> {
        let hash: Multihash<64> = match (self.hash_code, self.hash_len) {
            (hash_code::SHA2_256, 32) => sha256_multihash(data),
            (hash_code::IDENTITY, len) if len == data.len() as u64 => {
                Multihash::wrap(hash_code::IDENTITY, data)
                    .map_err(|_| WireError::Malformed("an identity hash above 64 bytes".into()))?
            }
            (code, len) => {
                return Err(WireError::UnsupportedHash { code, len });
            }
        };
        match self.version {
            0 if self.codec == codec::DAG_PB && self.hash_code == hash_code::SHA2_256 => {
                Cid::new_v0(hash).map_err(|err| WireError::Malformed(err.to_string()))
            }
            1 => Ok(Cid::new_v1(self.codec, hash)),
            _ => Err(WireError::Malformed(format!(
                "a block prefix of CID version {} with codec 0x{:x}",
                self.version, self.codec
            ))),
        }
    }
}

/// A block as received: its prefix and its bytes, a slice of the frame. Its CID is
/// known only once it is hashed ([`Prefix::cid_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedBlock {
    pub prefix: Prefix,
    pub data: Bytes,
}

/// A decoded message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub wantlist: Option<Wantlist>,
    pub blocks: Vec<ReceivedBlock>,
    pub presences: Vec<(Cid, Presence)>,
    /// Entries and presences left out: above [`MAX_DECODED_ENTRIES`], or naming no
    /// valid CID.
    pub dropped: usize,
}

/// A block to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingBlock {
    pub cid: Cid,
    pub data: Bytes,
}

/// A message to send. Encoded for the version of the stream it goes on: a 1.0.0 or
/// 1.1.0 peer is told nothing of presences.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outgoing {
    pub wantlist: Vec<Entry>,
    pub full: bool,
    pub blocks: Vec<OutgoingBlock>,
    pub presences: Vec<(Cid, Presence)>,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("a bitswap message of {size} bytes, above the limit of {limit}")]
    Oversized { size: u64, limit: usize },
    #[error("a malformed bitswap message: {0}")]
    Malformed(String),
    #[error("a block hashed with 0x{code:x} ({len} bytes), which this node cannot check")]
    UnsupportedHash { code: u64, len: u64 },
    #[error("the stream ended inside a message")]
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

impl From<PbError> for WireError {
    fn from(err: PbError) -> Self {
        WireError::Malformed(err.to_string())
    }
}

// Field numbers of bitswap's `message.proto`.
const MESSAGE_WANTLIST: u64 = 1;
const MESSAGE_BLOCKS: u64 = 2;
const MESSAGE_PAYLOAD: u64 = 3;
const MESSAGE_PRESENCES: u64 = 4;
const WANTLIST_ENTRIES: u64 = 1;
const WANTLIST_FULL: u64 = 2;
const ENTRY_BLOCK: u64 = 1;
const ENTRY_PRIORITY: u64 = 2;
const ENTRY_CANCEL: u64 = 3;
const ENTRY_WANT_TYPE: u64 = 4;
const ENTRY_SEND_DONT_HAVE: u64 = 5;
const PAYLOAD_PREFIX: u64 = 1;
const PAYLOAD_DATA: u64 = 2;
const PRESENCE_CID: u64 = 1;
const PRESENCE_TYPE: u64 = 2;

impl Message {
    /// Decodes one frame. Unknown fields are skipped, as protobuf allows; entries and
    /// presences beyond the cap, or naming no valid CID, are counted in `dropped`.
    pub fn decode(frame: Bytes) -> Result<Message, WireError> {
        let mut message = Message::default();
        let mut rest: &[u8] = &frame;
        while !rest.is_empty() {
            let (field, wire_type) = take_key(&mut rest)?;
            match (field, wire_type) {
                (MESSAGE_WANTLIST, LEN) => {
                    let bytes = take_len_delimited(&mut rest)?;
                    let wantlist = message.wantlist.get_or_insert_with(Wantlist::default);
                    decode_wantlist(bytes, wantlist, &mut message.dropped)?;
                }
                (MESSAGE_BLOCKS, LEN) => {
                    let data = take_len_delimited(&mut rest)?;
                    message.blocks.push(ReceivedBlock {
                        prefix: Prefix::V0,
                        data: frame.slice_ref(data),
                    });
                }
                (MESSAGE_PAYLOAD, LEN) => {
                    let bytes = take_len_delimited(&mut rest)?;
                    message.blocks.push(decode_payload(&frame, bytes)?);
                }
                (MESSAGE_PRESENCES, LEN) => {
                    let bytes = take_len_delimited(&mut rest)?;
                    match decode_presence(bytes)? {
                        Some(presence) if message.presences.len() < MAX_DECODED_ENTRIES => {
                            message.presences.push(presence)
                        }
                        _ => message.dropped += 1,
                    }
                }
                (_, wire_type) => skip_field(&mut rest, wire_type)?,
            }
        }
        Ok(message)
    }
}

fn decode_wantlist(
    mut bytes: &[u8],
    wantlist: &mut Wantlist,
    dropped: &mut usize,
) -> Result<(), WireError> {
    while !bytes.is_empty() {
        let (field, wire_type) = take_key(&mut bytes)?;
        match (field, wire_type) {
            (WANTLIST_ENTRIES, LEN) => {
                let entry = take_len_delimited(&mut bytes)?;
                match decode_entry(entry)? {
                    Some(entry) if wantlist.entries.len() < MAX_DECODED_ENTRIES => {
                        wantlist.entries.push(entry)
                    }
                    _ => *dropped += 1,
                }
            }
            (WANTLIST_FULL, VARINT) => wantlist.full = take_varint(&mut bytes)? != 0,
            (_, wire_type) => skip_field(&mut bytes, wire_type)?,
        }
    }
    Ok(())
}

/// An entry, or `None` when it names no CID we could hold.
fn decode_entry(mut bytes: &[u8]) -> Result<Option<Entry>, WireError> {
    let mut cid = None;
    let mut entry = Entry {
        cid: Cid::default(),
        priority: 0,
        cancel: false,
        want_type: WantType::Block,
        send_dont_have: false,
    };
    while !bytes.is_empty() {
        let (field, wire_type) = take_key(&mut bytes)?;
        match (field, wire_type) {
            (ENTRY_BLOCK, LEN) => cid = Some(parse_cid(take_len_delimited(&mut bytes)?)),
            // int32 on the wire: a negative value is sign-extended to ten bytes.
            (ENTRY_PRIORITY, VARINT) => entry.priority = take_varint(&mut bytes)? as i32,
            (ENTRY_CANCEL, VARINT) => entry.cancel = take_varint(&mut bytes)? != 0,
            (ENTRY_WANT_TYPE, VARINT) => {
                entry.want_type = match take_varint(&mut bytes)? {
                    0 => WantType::Block,
                    1 => WantType::Have,
                    other => {
                        return Err(WireError::Malformed(format!("want type {other}")));
                    }
                }
            }
            (ENTRY_SEND_DONT_HAVE, VARINT) => entry.send_dont_have = take_varint(&mut bytes)? != 0,
            (_, wire_type) => skip_field(&mut bytes, wire_type)?,
        }
    }
    Ok(cid.flatten().map(|cid| Entry { cid, ..entry }))
}

fn decode_payload(frame: &Bytes, mut bytes: &[u8]) -> Result<ReceivedBlock, WireError> {
    let mut prefix = None;
    let mut data: &[u8] = &[];
    while !bytes.is_empty() {
        let (field, wire_type) = take_key(&mut bytes)?;
        match (field, wire_type) {
            (PAYLOAD_PREFIX, LEN) => {
                prefix = Some(Prefix::decode(take_len_delimited(&mut bytes)?)?)
            }
            (PAYLOAD_DATA, LEN) => data = take_len_delimited(&mut bytes)?,
            (_, wire_type) => skip_field(&mut bytes, wire_type)?,
        }
    }
    let prefix = prefix.ok_or_else(|| WireError::Malformed("a block without a prefix".into()))?;
    Ok(ReceivedBlock {
        prefix,
        data: frame.slice_ref(data),
    })
}

fn decode_presence(mut bytes: &[u8]) -> Result<Option<(Cid, Presence)>, WireError> {
    let mut cid = None;
    let mut presence = Presence::Have;
    while !bytes.is_empty() {
        let (field, wire_type) = take_key(&mut bytes)?;
        match (field, wire_type) {
            (PRESENCE_CID, LEN) => cid = Some(parse_cid(take_len_delimited(&mut bytes)?)),
            (PRESENCE_TYPE, VARINT) => {
                presence = match take_varint(&mut bytes)? {
                    0 => Presence::Have,
                    1 => Presence::DontHave,
                    other => {
                        return Err(WireError::Malformed(format!("presence type {other}")));
                    }
                }
            }
            (_, wire_type) => skip_field(&mut bytes, wire_type)?,
        }
    }
    Ok(cid.flatten().map(|cid| (cid, presence)))
}

fn parse_cid(bytes: &[u8]) -> Option<Cid> {
    if bytes.len() > MAX_CID_BYTES {
        return None;
    }
    Cid::try_from(bytes).ok()
}

/// A CID as a wantlist or presence names it: the bare multihash for CIDv0.
fn cid_bytes(cid: &Cid) -> Vec<u8> {
    cid.to_bytes()
}

impl Outgoing {
    pub fn is_empty(&self) -> bool {
        self.wantlist.is_empty()
            && !self.full
            && self.blocks.is_empty()
            && self.presences.is_empty()
    }

    /// Whether anything of it can be said to a peer of `version`.
    pub fn says_anything(&self, version: Version) -> bool {
        !self.wantlist.is_empty()
            || self.full
            || !self.blocks.is_empty()
            || (version.has_presences() && !self.presences.is_empty())
    }

    /// The message's bytes for a peer of `version`, without the frame's length.
    pub fn encode(&self, version: Version) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.estimated_len());
        if !self.wantlist.is_empty() || self.full {
            let mut wantlist = Vec::with_capacity(self.wantlist.len() * 48 + 4);
            for entry in &self.wantlist {
                let mut bytes = Vec::with_capacity(48);
                put_bytes_field(&mut bytes, ENTRY_BLOCK, &cid_bytes(&entry.cid));
                if entry.priority != 0 {
                    // int32: negative values are sign-extended, as protobuf does.
                    put_varint_field(&mut bytes, ENTRY_PRIORITY, entry.priority as i64 as u64);
                }
                if entry.cancel {
                    put_varint_field(&mut bytes, ENTRY_CANCEL, 1);
                }
                if version.has_presences() {
                    if entry.want_type == WantType::Have {
                        put_varint_field(&mut bytes, ENTRY_WANT_TYPE, 1);
                    }
                    if entry.send_dont_have {
                        put_varint_field(&mut bytes, ENTRY_SEND_DONT_HAVE, 1);
                    }
                }
                put_bytes_field(&mut wantlist, WANTLIST_ENTRIES, &bytes);
            }
            if self.full {
                put_varint_field(&mut wantlist, WANTLIST_FULL, 1);
            }
            put_bytes_field(&mut out, MESSAGE_WANTLIST, &wantlist);
        }
        for block in &self.blocks {
            if version == Version::V1_0 {
                put_bytes_field(&mut out, MESSAGE_BLOCKS, &block.data);
            } else {
                let prefix = Prefix::of(&block.cid).encode();
                put_key(&mut out, MESSAGE_PAYLOAD, LEN);
                let inner = field_len(PAYLOAD_PREFIX, prefix.len())
                    + field_len(PAYLOAD_DATA, block.data.len());
                varint::put(&mut out, inner as u64);
                put_bytes_field(&mut out, PAYLOAD_PREFIX, &prefix);
                put_bytes_field(&mut out, PAYLOAD_DATA, &block.data);
            }
        }
        if version.has_presences() {
            for (cid, presence) in &self.presences {
                let mut bytes = Vec::with_capacity(48);
                put_bytes_field(&mut bytes, PRESENCE_CID, &cid_bytes(cid));
                if *presence == Presence::DontHave {
                    put_varint_field(&mut bytes, PRESENCE_TYPE, 1);
                }
                put_bytes_field(&mut out, MESSAGE_PRESENCES, &bytes);
            }
        }
        out
    }

    /// An upper bound of the encoded size, for packing messages under the cap.
    pub fn estimated_len(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .map(|block| block_overhead() + block.data.len())
            .sum();
        blocks + (self.wantlist.len() + self.presences.len()) * ENTRY_OVERHEAD + 16
    }
}

/// What an entry or presence adds to a message at most: a CID of up to
/// [`MAX_CID_BYTES`] and a few small fields.
pub const ENTRY_OVERHEAD: usize = MAX_CID_BYTES + 32;

/// What a block adds to a message beyond its bytes, at most: field keys, lengths and
/// the prefix.
pub const fn block_overhead() -> usize {
    64
}

fn field_len(field: u64, len: usize) -> usize {
    varint::encoded_len(field << 3) + varint::encoded_len(len as u64) + len
}

/// Reads one frame, or `None` at a clean end of the stream. The length is checked
/// against the limit before anything is allocated.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<Message>, WireError> {
    let mut decoder = varint::Decoder::new(MAX_LENGTH_BYTES);
    let mut first = true;
    let length = loop {
        let mut byte = [0u8; 1];
        if reader.read(&mut byte).await? == 0 {
            return if first {
                Ok(None)
            } else {
                Err(WireError::Truncated)
            };
        }
        first = false;
        match decoder.push(byte[0]) {
            Ok(Some(length)) => break length,
            Ok(None) => {}
            Err(_) => {
                return Err(WireError::Oversized {
                    size: u64::MAX,
                    limit,
                })
            }
        }
    };
    if length > limit as u64 {
        return Err(WireError::Oversized {
            size: length,
            limit,
        });
    }
    let mut frame = vec![0u8; length as usize];
    reader.read_exact(&mut frame).await.map_err(|err| {
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            WireError::Truncated
        } else {
            WireError::Io(err)
        }
    })?;
    Message::decode(Bytes::from(frame)).map(Some)
}

/// Writes one frame: the length, then the message.
pub async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &[u8],
) -> std::io::Result<()> {
    let mut length = Vec::with_capacity(varint::MAX_U64_BYTES);
    varint::put(&mut length, message.len() as u64);
    writer.write_all(&length).await?;
    writer.write_all(message).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{cid_v0, cid_v1};
    use libp2p::futures::executor::block_on;

    fn decode(outgoing: &Outgoing, version: Version) -> Message {
        Message::decode(Bytes::from(outgoing.encode(version))).unwrap()
    }

    #[test]
    fn a_message_survives_a_round_trip_in_1_2_0() {
        let raw = cid_v1(codec::RAW, b"leaf");
        let v0 = cid_v0(b"node");
        let outgoing = Outgoing {
            wantlist: vec![
                Entry::want(raw, WantType::Have, 7),
                Entry::want(v0, WantType::Block, -3),
                Entry::cancel(raw),
            ],
            full: true,
            blocks: vec![OutgoingBlock {
                cid: raw,
                data: Bytes::from_static(b"leaf"),
            }],
            presences: vec![(v0, Presence::DontHave), (raw, Presence::Have)],
        };
        let message = decode(&outgoing, Version::V1_2);
        let wantlist = message.wantlist.unwrap();
        assert!(wantlist.full);
        assert_eq!(wantlist.entries, outgoing.wantlist);
        assert_eq!(message.presences, outgoing.presences);
        assert_eq!(message.blocks.len(), 1);
        let block = &message.blocks[0];
        assert_eq!(block.prefix.cid_of(&block.data).unwrap(), raw);
        assert!(outgoing.encode(Version::V1_2).len() <= outgoing.estimated_len());
    }

    #[test]
    fn older_versions_hear_no_presences_and_1_0_0_gets_bare_blocks() {
        let v0 = cid_v0(b"node");
        let outgoing = Outgoing {
            blocks: vec![OutgoingBlock {
                cid: v0,
                data: Bytes::from_static(b"node"),
            }],
            presences: vec![(v0, Presence::Have)],
            ..Outgoing::default()
        };
        for version in [Version::V1_0, Version::V1_1] {
            let message = decode(&outgoing, version);
            assert!(message.presences.is_empty());
            let block = &message.blocks[0];
            assert_eq!(block.prefix.cid_of(&block.data).unwrap(), v0, "{version}");
        }
        let presences_only = Outgoing {
            presences: vec![(v0, Presence::DontHave)],
            ..Outgoing::default()
        };
        assert!(!presences_only.says_anything(Version::V1_1));
        assert!(presences_only.says_anything(Version::V1_2));
    }

    #[test]
    fn entries_past_the_cap_and_bad_cids_are_dropped_not_kept() {
        let mut wantlist = Vec::new();
        for n in 0..MAX_DECODED_ENTRIES + 10 {
            let mut entry = Vec::new();
            put_bytes_field(
                &mut entry,
                ENTRY_BLOCK,
                &cid_v1(codec::RAW, &n.to_le_bytes()).to_bytes(),
            );
            put_bytes_field(&mut wantlist, WANTLIST_ENTRIES, &entry);
        }
        // An entry whose CID does not parse, and one far too long.
        for bad in [vec![0xff; 5], vec![0x01; MAX_CID_BYTES + 1]] {
            let mut entry = Vec::new();
            put_bytes_field(&mut entry, ENTRY_BLOCK, &bad);
            put_bytes_field(&mut wantlist, WANTLIST_ENTRIES, &entry);
        }
        let mut frame = Vec::new();
        put_bytes_field(&mut frame, MESSAGE_WANTLIST, &wantlist);
        let message = Message::decode(Bytes::from(frame)).unwrap();
        assert_eq!(message.wantlist.unwrap().entries.len(), MAX_DECODED_ENTRIES);
        assert_eq!(message.dropped, 12);
    }

    #[test]
    fn a_block_under_another_hash_is_not_taken_for_ours() {
        let cid = cid_v1(codec::RAW, b"x");
        let mut prefix = Prefix::of(&cid);
        prefix.hash_code = 0x1e;
        assert!(matches!(
            prefix.cid_of(b"x"),
            Err(WireError::UnsupportedHash { code: 0x1e, .. })
        ));
    }

    #[test]
    fn frames_are_checked_against_the_limit_before_the_body_is_read() {
        let outgoing = Outgoing {
            blocks: vec![OutgoingBlock {
                cid: cid_v1(codec::RAW, &[0; 5000]),
                data: Bytes::from(vec![0; 5000]),
            }],
            ..Outgoing::default()
        };
        let mut framed = Vec::new();
        block_on(write_message(&mut framed, &outgoing.encode(Version::V1_2))).unwrap();
        // Only the length is there: refused without waiting for the rest.
        let err = block_on(read_message(&mut &framed[..2], 1000)).unwrap_err();
        assert!(err.is_violation(), "{err}");
        let err = block_on(read_message(&mut &framed[..100], MAX_INCOMING_MESSAGE)).unwrap_err();
        assert!(matches!(err, WireError::Truncated));
        let message = block_on(read_message(&mut framed.as_slice(), MAX_INCOMING_MESSAGE))
            .unwrap()
            .unwrap();
        assert_eq!(message.blocks[0].data.len(), 5000);
        let nothing: &[u8] = &[];
        assert!(block_on(read_message(&mut &nothing[..], 1000))
            .unwrap()
            .is_none());
    }
}
