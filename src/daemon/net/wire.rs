//! The names and messages of oermesh's own peer-to-peer protocols, shared by both
//! ends (and by tests that play a peer). Formats and limits: docs/PROTOCOL.md.

use cid::Cid;
use libp2p::gossipsub::{IdentTopic, MessageId, TopicHash};
use libp2p::kad::RecordKey;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::StreamProtocol;
use multihash::Multihash;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

use crate::block::{cid_v1, codec};
use crate::records::{CollectionId, Kind};

/// Kademlia, on a name of our own so the DHT holds oermesh nodes only.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/oermesh/kad/1.0.0");
/// Newest heads of named collections, asked when a connection opens and when the
/// node starts following a collection: gossipsub does not replay old messages.
pub const HEADS_PROTOCOL: StreamProtocol = StreamProtocol::new("/oermesh/heads/1");
/// Record-layer blocks by CID (entry lists, records, their retractions), for
/// following a collection's metadata.
pub const OBJECTS_PROTOCOL: StreamProtocol = StreamProtocol::new("/oermesh/objects/1");

/// Gossip topics: one per collection, its id after this prefix.
pub const TOPIC_PREFIX: &str = "/oermesh/collection/1/";
/// A gossip message is one head's block bytes, and no more than a head may be.
pub const MAX_GOSSIP_MESSAGE: usize = Kind::Head.max_size();
/// What gossipsub reads in one frame (several messages and control data).
pub const MAX_GOSSIP_FRAME: usize = 64 * 1024;

/// Collections named in one heads request.
pub const MAX_HEADS_PER_REQUEST: usize = 64;
pub const MAX_HEADS_REQUEST_BYTES: u64 = 16 * 1024;
pub const MAX_HEADS_RESPONSE_BYTES: u64 =
    (MAX_HEADS_PER_REQUEST * (MAX_GOSSIP_MESSAGE + 16)) as u64 + 1024;
/// Blocks asked for in one objects request.
pub const MAX_OBJECTS_PER_REQUEST: usize = 64;
/// The largest object: an entry-list root.
pub const MAX_OBJECT_BYTES: usize = Kind::EntryRoot.max_size();
/// An objects response holds as many of the blocks asked for as fit in this; the
/// rest are asked again.
pub const OBJECTS_RESPONSE_BUDGET: usize = 4 << 20;
pub const MAX_OBJECTS_REQUEST_BYTES: u64 = 16 * 1024;
pub const MAX_OBJECTS_RESPONSE_BYTES: u64 = (OBJECTS_RESPONSE_BUDGET + MAX_OBJECT_BYTES) as u64;
/// Requests a peer may have open to us at once, per protocol and connection.
pub const MAX_CONCURRENT_REQUESTS: usize = 8;
/// How long an outgoing request may take.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `/oermesh/heads/1` request: the collections whose newest head is wanted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadsRequest {
    /// Collection ids, at most `MAX_HEADS_PER_REQUEST`.
    pub collections: Vec<String>,
}

/// `/oermesh/heads/1` response: the newest head block of each collection asked for
/// that the node knows; the others are left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadsResponse {
    pub heads: Vec<ByteBuf>,
}

/// `/oermesh/objects/1` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectsRequest {
    /// CIDs (binary), at most `MAX_OBJECTS_PER_REQUEST`.
    pub cids: Vec<ByteBuf>,
    /// Also send the retraction of each record asked for, where there is one.
    pub retractions: bool,
}

/// `/oermesh/objects/1` response: the blocks asked for that the node has and that
/// fit the budget, in the order asked, and retractions of records asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectsResponse {
    pub objects: Vec<Object>,
    pub retractions: Vec<ByteBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    /// The block's CID (binary).
    pub cid: ByteBuf,
    pub data: ByteBuf,
}

pub type HeadsBehaviour = request_response::cbor::Behaviour<HeadsRequest, HeadsResponse>;
pub type ObjectsBehaviour = request_response::cbor::Behaviour<ObjectsRequest, ObjectsResponse>;

fn request_config() -> request_response::Config {
    request_response::Config::default()
        .with_request_timeout(REQUEST_TIMEOUT)
        .with_max_concurrent_streams(MAX_CONCURRENT_REQUESTS)
}

/// `/oermesh/heads/1` with its size limits, both ways.
pub fn heads_behaviour() -> HeadsBehaviour {
    let codec = request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(MAX_HEADS_REQUEST_BYTES)
        .set_response_size_maximum(MAX_HEADS_RESPONSE_BYTES);
    request_response::Behaviour::with_codec(
        codec,
        [(HEADS_PROTOCOL, ProtocolSupport::Full)],
        request_config(),
    )
}

/// `/oermesh/objects/1` with its size limits, both ways.
pub fn objects_behaviour() -> ObjectsBehaviour {
    let codec = request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(MAX_OBJECTS_REQUEST_BYTES)
        .set_response_size_maximum(MAX_OBJECTS_RESPONSE_BYTES);
    request_response::Behaviour::with_codec(
        codec,
        [(OBJECTS_PROTOCOL, ProtocolSupport::Full)],
        request_config(),
    )
}

/// The gossip topic of a collection.
pub fn topic(id: &CollectionId) -> IdentTopic {
    IdentTopic::new(format!("{TOPIC_PREFIX}{id}"))
}

/// The collection a topic is about, if it is one of ours.
pub fn collection_of_topic(topic: &TopicHash) -> Option<CollectionId> {
    topic.as_str().strip_prefix(TOPIC_PREFIX)?.parse().ok()
}

/// A gossip message's id: the CID its bytes have as a DAG-CBOR block, so the same
/// head announced by several nodes is one message.
pub fn message_id(data: &[u8]) -> MessageId {
    MessageId::new(&head_cid(data).to_bytes())
}

/// The CID of a head's bytes.
pub fn head_cid(data: &[u8]) -> Cid {
    cid_v1(codec::DAG_CBOR, data)
}

/// The multihash code of SHA-256.
const SHA2_256: u64 = 0x12;

/// The DHT key under which nodes holding a collection provide it: the SHA-256
/// multihash of `oermesh-collection:` and the collection id. A content root is
/// provided under its own multihash (the key IPFS uses too).
pub fn collection_key(id: &CollectionId) -> RecordKey {
    let digest = Sha256::digest(format!("oermesh-collection:{id}").as_bytes());
    match Multihash::<64>::wrap(SHA2_256, &digest) {
        Ok(hash) => RecordKey::new(&hash.to_bytes()),
        // A 32-byte digest always fits a 64-byte multihash.
        Err(_) => RecordKey::new(&digest.as_slice()),
    }
}

/// The DHT key of a content root: its multihash, as IPFS uses.
pub fn content_key(cid: &cid::Cid) -> RecordKey {
    RecordKey::new(&cid.hash().to_bytes())
}

/// Whether a DHT key is one oermesh uses: a SHA-256 multihash. Provider records under
/// any other key are refused before they are stored.
pub fn is_valid_key(key: &RecordKey) -> bool {
    let bytes = key.as_ref();
    bytes.len() == 34 && bytes[0] == SHA2_256 as u8 && bytes[1] == 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_their_collection() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[6u8; 32]).verifying_key();
        let id = CollectionId::new(key, "maths").unwrap();
        assert_eq!(collection_of_topic(&topic(&id).hash()), Some(id));
        assert_eq!(collection_of_topic(&TopicHash::from_raw("/other/1")), None);
        assert_eq!(message_id(b"x"), message_id(b"x"));
        assert_ne!(message_id(b"x"), message_id(b"y"));
    }

    #[test]
    fn collection_and_content_keys_are_valid_dht_keys() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]).verifying_key();
        let id = CollectionId::new(key, "maths").unwrap();
        assert!(is_valid_key(&collection_key(&id)));
        let other = CollectionId::new(key, "physics").unwrap();
        assert_ne!(collection_key(&id), collection_key(&other));
        let cid = crate::block::cid_v1(crate::block::codec::RAW, b"hello");
        assert!(is_valid_key(&content_key(&cid)));
        assert!(!is_valid_key(&RecordKey::new(b"anything else")));
    }
}
