//! Collections: a publisher's named, versioned list of records. Each version is a signed head.

use std::fmt;
use std::str::FromStr;

use cid::Cid;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::codec::{self, SignatureBytes};
use super::error::{Kind, RecordError, Result};
use super::validate;
use crate::block::{cid_v1, codec as block_codec};
use crate::keys;

const MAX_NAME_LEN: usize = 64;

/// Checks a collection name: 1 to 64 of `a-z 0-9 -`, starting with a letter or digit. Lower
/// case only, so a name read off a poster is typed back unambiguously.
pub fn validate_collection_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RecordError::InvalidCollectionName(name.to_string()))
    }
}

/// A collection's stable identity: its publisher and its name. Written as
/// `<publisher key in base58btc, the did:key without "did:key:">/<name>`, e.g.
/// `z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK/maths-grade-5`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CollectionId {
    publisher: VerifyingKey,
    name: String,
}

impl CollectionId {
    pub fn new(publisher: VerifyingKey, name: &str) -> Result<CollectionId> {
        validate_collection_name(name)?;
        Ok(CollectionId {
            publisher,
            name: name.to_string(),
        })
    }

    pub fn from_did(publisher_did: &str, name: &str) -> Result<CollectionId> {
        CollectionId::new(keys::parse_did_key(publisher_did)?, name)
    }

    pub fn publisher(&self) -> &VerifyingKey {
        &self.publisher
    }

    pub fn publisher_did(&self) -> String {
        keys::did_key(&self.publisher)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for CollectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let did = self.publisher_did();
        let key_part = did.strip_prefix("did:key:").unwrap_or(&did);
        write!(f, "{key_part}/{}", self.name)
    }
}

impl FromStr for CollectionId {
    type Err = RecordError;

    fn from_str(id: &str) -> Result<CollectionId> {
        let invalid = |reason: &str| RecordError::InvalidCollectionId {
            id: id.to_string(),
            reason: reason.to_string(),
        };
        let (key_part, name) = id
            .split_once('/')
            .ok_or_else(|| invalid("expected <publisher key>/<name>"))?;
        let publisher = keys::parse_did_key(&format!("did:key:{key_part}"))
            .map_err(|e| invalid(&e.to_string()))?;
        validate_collection_name(name).map_err(|e| invalid(&e.to_string()))?;
        Ok(CollectionId {
            publisher,
            name: name.to_string(),
        })
    }
}

/// One signed version of a collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    #[serde(rename = "k")]
    kind: String,
    #[serde(rename = "pub")]
    pub publisher: String,
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "s")]
    pub seq: u64,
    #[serde(rename = "e")]
    pub entries: Cid,
    #[serde(rename = "cnt")]
    pub entry_count: u64,
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Cid>,
    #[serde(rename = "t")]
    pub time: String,
    #[serde(rename = "sig", default, skip_serializing_if = "Option::is_none")]
    signature: Option<SignatureBytes>,
}

/// What goes into a new head.
#[derive(Debug, Clone)]
pub struct HeadDraft {
    pub name: String,
    pub seq: u64,
    pub entries: Cid,
    pub entry_count: u64,
    pub previous: Option<Cid>,
    pub time: Option<String>,
}

impl Head {
    pub fn sign(key: &SigningKey, draft: HeadDraft) -> Result<(Cid, Head, Vec<u8>)> {
        let mut head = Head {
            kind: Kind::Head.tag().to_string(),
            publisher: keys::did_key(&key.verifying_key()),
            name: draft.name,
            seq: draft.seq,
            entries: draft.entries,
            entry_count: draft.entry_count,
            previous: draft.previous,
            time: draft.time.unwrap_or_else(validate::now_utc),
            signature: None,
        };
        head.validate()?;
        let body = codec::encode(Kind::Head, &head)?;
        head.signature = Some(codec::sign(Kind::Head, key, &body));
        let bytes = codec::encode(Kind::Head, &head)?;
        Ok((cid_v1(block_codec::DAG_CBOR, &bytes), head, bytes))
    }

    /// Strictly decodes a head and verifies its signature. Whether its seq is acceptable
    /// depends on what is already known, which is `RecordBook::accept_head`'s business.
    pub fn decode_and_verify(bytes: &[u8]) -> Result<Head> {
        let head: Head = codec::decode(Kind::Head, bytes)?;
        head.validate()?;
        let publisher = keys::parse_did_key(&head.publisher)?;
        let bad = || RecordError::BadSignature {
            kind: Kind::Head,
            publisher: head.publisher.clone(),
        };
        let signature = head.signature.ok_or_else(bad)?;
        let body = codec::encode(
            Kind::Head,
            &Head {
                signature: None,
                ..head.clone()
            },
        )?;
        if !codec::verify(Kind::Head, &publisher, &body, &signature) {
            return Err(bad());
        }
        Ok(head)
    }

    pub fn collection_id(&self) -> Result<CollectionId> {
        CollectionId::from_did(&self.publisher, &self.name)
    }

    fn validate(&self) -> Result<()> {
        self.collection_id()?;
        match (self.seq, &self.previous) {
            (0, _) => Err(RecordError::InvalidSequence("seq starts at 1")),
            (1, Some(_)) => Err(RecordError::InvalidSequence(
                "seq 1 cannot have a previous head",
            )),
            (2.., None) => Err(RecordError::InvalidSequence(
                "seq above 1 needs a previous head",
            )),
            _ => validate::time(&self.time),
        }
    }
}

/// A publisher's signed withdrawal of one of its records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retraction {
    #[serde(rename = "k")]
    kind: String,
    #[serde(rename = "r")]
    pub record: Cid,
    #[serde(rename = "why")]
    pub reason: String,
    #[serde(rename = "t")]
    pub time: String,
    #[serde(rename = "pub")]
    pub publisher: String,
    #[serde(rename = "sig", default, skip_serializing_if = "Option::is_none")]
    signature: Option<SignatureBytes>,
}

const MAX_REASON_BYTES: usize = 1024;

impl Retraction {
    pub fn sign(
        key: &SigningKey,
        record: Cid,
        reason: &str,
        time: Option<String>,
    ) -> Result<(Cid, Retraction, Vec<u8>)> {
        let mut retraction = Retraction {
            kind: Kind::Retraction.tag().to_string(),
            record,
            reason: reason.to_string(),
            time: time.unwrap_or_else(validate::now_utc),
            publisher: keys::did_key(&key.verifying_key()),
            signature: None,
        };
        retraction.validate()?;
        let body = codec::encode(Kind::Retraction, &retraction)?;
        retraction.signature = Some(codec::sign(Kind::Retraction, key, &body));
        let bytes = codec::encode(Kind::Retraction, &retraction)?;
        Ok((cid_v1(block_codec::DAG_CBOR, &bytes), retraction, bytes))
    }

    /// Strictly decodes a retraction and verifies that its `pub` key signed it. Whether that key
    /// published the record is checked against the record by `RecordBook::accept_retraction`.
    pub fn decode_and_verify(bytes: &[u8]) -> Result<Retraction> {
        let retraction: Retraction = codec::decode(Kind::Retraction, bytes)?;
        retraction.validate()?;
        let publisher = keys::parse_did_key(&retraction.publisher)?;
        let bad = || RecordError::BadSignature {
            kind: Kind::Retraction,
            publisher: retraction.publisher.clone(),
        };
        let signature = retraction.signature.ok_or_else(bad)?;
        let body = codec::encode(
            Kind::Retraction,
            &Retraction {
                signature: None,
                ..retraction.clone()
            },
        )?;
        if !codec::verify(Kind::Retraction, &publisher, &body, &signature) {
            return Err(bad());
        }
        Ok(retraction)
    }

    fn validate(&self) -> Result<()> {
        validate::text("retraction reason", &self.reason, MAX_REASON_BYTES)?;
        validate::time(&self.time)?;
        keys::parse_did_key(&self.publisher)?;
        Ok(())
    }
}

impl codec::Tagged for Head {
    fn kind_tag(&self) -> &str {
        &self.kind
    }
}

impl codec::Tagged for Retraction {
    fn kind_tag(&self) -> &str {
        &self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_id_round_trips_exactly() {
        let key = SigningKey::from_bytes(&[3u8; 32]).verifying_key();
        let id = CollectionId::new(key, "maths-grade-5").map_err(|e| e.to_string());
        let text = id.as_ref().map(|id| id.to_string()).unwrap_or_default();
        assert!(
            text.starts_with("z6Mk") && text.ends_with("/maths-grade-5"),
            "{text}"
        );
        assert_eq!(text.parse::<CollectionId>().map_err(|e| e.to_string()), id);
        for bad in [
            "",
            "maths",
            "z6Mk/maths",
            "did:key:z6Mk/x",
            &format!("{text}/x"),
            &text.replace("maths", "Maths"),
        ] {
            assert!(bad.parse::<CollectionId>().is_err(), "{bad}");
        }
    }
}
