//! Strict DAG-CBOR encoding and decoding shared by every record-layer kind, and signing.
//!
//! Decoding is deliberately unforgiving, in this order: size cap (before any parsing), CBOR map
//! with the expected kind tag, no unknown or missing fields, field types, and finally canonical
//! form: the decoded value must re-encode to exactly the bytes received. The last check means
//! there is one byte string per value, so CIDs and signatures cannot be varied by re-encoding.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_ipld_dagcbor::DecodeError;

use super::error::{Kind, RecordError, Result};

/// Name of the field that carries every object's kind tag.
pub const KIND_FIELD: &str = "k";

impl Kind {
    /// The value of the `k` field for this kind.
    pub fn tag(self) -> &'static str {
        match self {
            Kind::Record => "record/1",
            Kind::Head => "collection-head/1",
            Kind::Retraction => "retraction/1",
            Kind::EntryRoot => "entries-root/1",
            Kind::EntryChunk => "entries-chunk/1",
        }
    }

    /// The kind whose tag is `tag`.
    pub fn from_tag(tag: &str) -> Option<Kind> {
        [
            Kind::Record,
            Kind::Head,
            Kind::Retraction,
            Kind::EntryRoot,
            Kind::EntryChunk,
        ]
        .into_iter()
        .find(|kind| kind.tag() == tag)
    }

    /// Largest encoded size accepted, checked before parsing.
    pub const fn max_size(self) -> usize {
        match self {
            Kind::Record => 64 * 1024,
            Kind::Head => 4 * 1024,
            Kind::Retraction => 4 * 1024,
            Kind::EntryRoot => 1024 * 1024,
            Kind::EntryChunk => 256 * 1024,
        }
    }

    /// The domain string that prefixes this kind's signing payload.
    pub fn signing_domain(self) -> &'static [u8] {
        match self {
            Kind::Record => b"oermesh-record-v1\0",
            Kind::Head => b"oermesh-collection-head-v1\0",
            Kind::Retraction => b"oermesh-retraction-v1\0",
            // Entry lists are not signed themselves; they are covered by the head's CID link.
            Kind::EntryRoot => b"oermesh-entries-root-v1\0",
            Kind::EntryChunk => b"oermesh-entries-chunk-v1\0",
        }
    }
}

/// The canonical DAG-CBOR bytes of `value`.
pub fn encode<T: Serialize>(kind: Kind, value: &T) -> Result<Vec<u8>> {
    serde_ipld_dagcbor::to_vec(value).map_err(|e| RecordError::Encode {
        kind,
        reason: e.to_string(),
    })
}

/// The kind tag of a record-layer object, read without the rest of it: the one probe,
/// for routing received blocks and for explaining refusals.
#[derive(Deserialize)]
struct KindProbe {
    #[serde(rename = "k")]
    kind: Option<String>,
}

/// Which kind a block claims to be; `None` if it is not a CBOR map with a known tag.
pub fn kind_of(bytes: &[u8]) -> Option<Kind> {
    let probe: KindProbe = serde_ipld_dagcbor::from_slice(bytes).ok()?;
    Kind::from_tag(&probe.kind?)
}

const CBOR_MAJOR_MAP: u8 = 5;

/// An object that carries its kind tag in the `k` field.
pub trait Tagged {
    fn kind_tag(&self) -> &str;
}

/// Decodes `bytes` as a `kind` object, refusing anything but its one canonical encoding.
pub fn decode<T: DeserializeOwned + Serialize + Tagged>(kind: Kind, bytes: &[u8]) -> Result<T> {
    let value: T = decode_linked(kind, bytes)?;
    if encode(kind, &value)? != bytes {
        return Err(RecordError::NonCanonical { kind });
    }
    Ok(value)
}

/// Decodes `bytes` as a `kind` object with every check of [`decode`] but the canonical-form
/// one, for unsigned blocks that were fetched by a CID from an already verified object and
/// hashed against it. Canonical form keeps others from varying a CID or a signed payload by
/// re-encoding; such a block's bytes are fixed by the link that led to them, so re-encoding
/// it would only repeat the work.
pub fn decode_linked<T: DeserializeOwned + Tagged>(kind: Kind, bytes: &[u8]) -> Result<T> {
    let limit = kind.max_size();
    if bytes.len() > limit {
        return Err(RecordError::TooLarge {
            kind,
            size: bytes.len(),
            limit,
        });
    }
    match bytes.first() {
        None => {
            return Err(RecordError::MalformedCbor {
                kind,
                reason: "empty input".into(),
            })
        }
        Some(first) if first >> 5 != CBOR_MAJOR_MAP => return Err(RecordError::NotAMap { kind }),
        Some(_) => {}
    }
    let value: T = match serde_ipld_dagcbor::from_slice(bytes) {
        Ok(value) => value,
        // Only a refused input pays for the second, tag-only parse that explains the refusal.
        Err(error) => return Err(explain_refusal(kind, bytes, error)),
    };
    if value.kind_tag() != kind.tag() {
        return Err(RecordError::WrongKind {
            expected: kind,
            expected_tag: kind.tag(),
            found: value.kind_tag().into(),
        });
    }
    Ok(value)
}

/// A wrong kind tag explains a refusal better than the field errors it causes, so it is
/// looked for first.
fn explain_refusal<E: std::fmt::Debug>(
    kind: Kind,
    bytes: &[u8],
    error: DecodeError<E>,
) -> RecordError {
    match serde_ipld_dagcbor::from_slice::<KindProbe>(bytes) {
        Err(probe_error) => RecordError::MalformedCbor {
            kind,
            reason: probe_error.to_string(),
        },
        Ok(KindProbe { kind: None }) => RecordError::MissingField {
            kind,
            field: KIND_FIELD.into(),
        },
        Ok(KindProbe { kind: Some(found) }) if found != kind.tag() => RecordError::WrongKind {
            expected: kind,
            expected_tag: kind.tag(),
            found,
        },
        Ok(_) => classify_decode_error(kind, error),
    }
}

/// serde reports field problems only as messages; turn the ones that have their own variant
/// back into that variant.
fn classify_decode_error<E: std::fmt::Debug>(kind: Kind, error: DecodeError<E>) -> RecordError {
    match error {
        DecodeError::Msg(message) => {
            let quoted_name = |prefix: &str| {
                message
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.split('`').next())
                    .map(str::to_string)
            };
            if let Some(field) = quoted_name("unknown field `") {
                RecordError::UnknownField { kind, field }
            } else if let Some(field) = quoted_name("missing field `") {
                RecordError::MissingField { kind, field }
            } else {
                RecordError::InvalidField {
                    kind,
                    reason: message,
                }
            }
        }
        other => RecordError::MalformedCbor {
            kind,
            reason: format!("{other:?}"),
        },
    }
}

/// An ed25519 signature, encoded as a 64-byte CBOR byte string.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignatureBytes(pub [u8; 64]);

impl std::fmt::Debug for SignatureBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "SignatureBytes({hex})")
    }
}

impl Serialize for SignatureBytes {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for SignatureBytes {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        struct SignatureVisitor;
        impl serde::de::Visitor<'_> for SignatureVisitor {
            type Value = SignatureBytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a 64-byte signature")
            }
            fn visit_bytes<E: serde::de::Error>(
                self,
                bytes: &[u8],
            ) -> std::result::Result<SignatureBytes, E> {
                let array: [u8; 64] = bytes
                    .try_into()
                    .map_err(|_| E::invalid_length(bytes.len(), &self))?;
                Ok(SignatureBytes(array))
            }
        }
        deserializer.deserialize_bytes(SignatureVisitor)
    }
}

/// The bytes a signature of `kind` covers: the kind's domain string, then the object's
/// canonical DAG-CBOR without its signature field.
pub fn signing_payload(kind: Kind, unsigned_body: &[u8]) -> Vec<u8> {
    let domain = kind.signing_domain();
    let mut payload = Vec::with_capacity(domain.len() + unsigned_body.len());
    payload.extend_from_slice(domain);
    payload.extend_from_slice(unsigned_body);
    payload
}

pub fn sign(kind: Kind, key: &SigningKey, unsigned_body: &[u8]) -> SignatureBytes {
    SignatureBytes(key.sign(&signing_payload(kind, unsigned_body)).to_bytes())
}

/// Strict ed25519 verification (no small-order keys, no malleable signatures).
pub fn verify(
    kind: Kind,
    publisher: &VerifyingKey,
    unsigned_body: &[u8],
    signature: &SignatureBytes,
) -> bool {
    let signature = Signature::from_bytes(&signature.0);
    publisher
        .verify_strict(&signing_payload(kind, unsigned_body), &signature)
        .is_ok()
}
