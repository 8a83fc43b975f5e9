//! Resource records: signed descriptions of one piece of content.

use cid::Cid;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::codec::{self, SignatureBytes};
use super::error::{Kind, RecordError, Result};
use super::licence::Licence;
use super::validate;
use crate::block::{cid_v1, codec as block_codec};
use crate::keys;

const MAX_TITLE_BYTES: usize = 1024;
const MAX_DESCRIPTION_BYTES: usize = 16 * 1024;
const MAX_NAME_BYTES: usize = 512;
const MAX_NOTE_BYTES: usize = 2048;
const MAX_TERM_BYTES: usize = 256;
const MAX_LIST_ITEMS: usize = 64;

/// An author as credited in attributions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Author {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A parent work this one adapts, and what was changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasedOn {
    #[serde(rename = "r")]
    pub record: Cid,
    #[serde(rename = "n")]
    pub note: String,
}

/// LRMI / schema.org LearningResource fields. All optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Educational {
    /// learningResourceType, e.g. "lesson plan", "exercise".
    #[serde(rename = "lrt", default, skip_serializing_if = "Vec::is_empty")]
    pub learning_resource_type: Vec<String>,
    /// educationalLevel, e.g. "primary school", "ISCED 2".
    #[serde(rename = "lvl", default, skip_serializing_if = "Vec::is_empty")]
    pub educational_level: Vec<String>,
    /// educationalUse, e.g. "assignment".
    #[serde(rename = "use", default, skip_serializing_if = "Vec::is_empty")]
    pub educational_use: Vec<String>,
    /// typicalAgeRange: "7-10", "16-" or "12".
    #[serde(rename = "age", default, skip_serializing_if = "Option::is_none")]
    pub typical_age_range: Option<String>,
    /// teaches: competencies or learning objectives.
    #[serde(rename = "tch", default, skip_serializing_if = "Vec::is_empty")]
    pub teaches: Vec<String>,
    /// about: subjects.
    #[serde(rename = "sub", default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// timeRequired as an ISO 8601 duration, e.g. "PT45M".
    #[serde(rename = "tr", default, skip_serializing_if = "Option::is_none")]
    pub time_required: Option<String>,
}

impl Educational {
    pub fn is_empty(&self) -> bool {
        *self == Educational::default()
    }

    fn validate(&self) -> Result<()> {
        let lists = [
            ("learningResourceType", &self.learning_resource_type),
            ("educationalLevel", &self.educational_level),
            ("educationalUse", &self.educational_use),
            ("teaches", &self.teaches),
            ("subject", &self.subjects),
        ];
        for (field, items) in lists {
            if items.len() > MAX_LIST_ITEMS {
                return Err(RecordError::InvalidText {
                    field,
                    reason: format!("has more than {MAX_LIST_ITEMS} items"),
                });
            }
            for item in items {
                validate::line(field, item, MAX_TERM_BYTES)?;
            }
        }
        if let Some(age) = &self.typical_age_range {
            validate::age_range(age)?;
        }
        if let Some(duration) = &self.time_required {
            validate::duration(duration)?;
        }
        Ok(())
    }
}

/// What a publisher fills in; signing adds the publisher, the kind tag and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordDraft {
    pub content: Cid,
    pub title: String,
    pub description: Option<String>,
    pub language: String,
    pub authors: Vec<Author>,
    /// SPDX id: one of the accepted Creative Commons ids or `LicenseRef-...`.
    pub licence: String,
    /// Only for `LicenseRef-...`: where the licence terms are.
    pub licence_url: Option<String>,
    pub source: Option<String>,
    pub based_on: Vec<BasedOn>,
    pub educational: Educational,
    /// RFC 3339 UTC time; the signing time when `None`.
    pub created: Option<String>,
}

/// A resource record as it travels: see docs/PROTOCOL.md for the field table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    #[serde(rename = "k")]
    kind: String,
    #[serde(rename = "c")]
    pub content: Cid,
    #[serde(rename = "ti")]
    pub title: String,
    #[serde(rename = "de", default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(rename = "la")]
    pub language: String,
    #[serde(rename = "au")]
    pub authors: Vec<Author>,
    #[serde(rename = "li")]
    pub licence: String,
    #[serde(rename = "lu", default, skip_serializing_if = "Option::is_none")]
    pub licence_url: Option<String>,
    #[serde(rename = "src", default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(rename = "bo", default, skip_serializing_if = "Vec::is_empty")]
    pub based_on: Vec<BasedOn>,
    #[serde(rename = "ed", default, skip_serializing_if = "Educational::is_empty")]
    pub educational: Educational,
    #[serde(rename = "cr")]
    pub created: String,
    #[serde(rename = "pub")]
    pub publisher: String,
    /// Absent only while the signing payload is encoded.
    #[serde(rename = "sig", default, skip_serializing_if = "Option::is_none")]
    signature: Option<SignatureBytes>,
}

const MAX_AUTHORS: usize = 64;
const MAX_PARENTS: usize = 64;

impl Record {
    /// Validates the draft, fills in publisher and time, and signs. Licence compatibility with
    /// parents needs the parents, so it is checked by `RecordBook::sign_record`, not here.
    pub fn sign(key: &SigningKey, draft: RecordDraft) -> Result<(Cid, Record, Vec<u8>)> {
        let mut record = Record {
            kind: Kind::Record.tag().to_string(),
            content: draft.content,
            title: draft.title,
            description: draft.description,
            language: draft.language,
            authors: draft.authors,
            licence: draft.licence,
            licence_url: draft.licence_url,
            source: draft.source,
            based_on: draft.based_on,
            educational: draft.educational,
            created: draft.created.unwrap_or_else(validate::now_utc),
            publisher: keys::did_key(&key.verifying_key()),
            signature: None,
        };
        record.validate()?;
        let body = codec::encode(Kind::Record, &record)?;
        record.signature = Some(codec::sign(Kind::Record, key, &body));
        let bytes = codec::encode(Kind::Record, &record)?;
        if bytes.len() > Kind::Record.max_size() {
            return Err(RecordError::TooLarge {
                kind: Kind::Record,
                size: bytes.len(),
                limit: Kind::Record.max_size(),
            });
        }
        Ok((cid_v1(block_codec::DAG_CBOR, &bytes), record, bytes))
    }

    /// Strictly decodes, validates and verifies a record block.
    pub fn decode_and_verify(bytes: &[u8]) -> Result<Record> {
        let record: Record = codec::decode(Kind::Record, bytes)?;
        let publisher = record.validate()?;
        record.verify_signature(&publisher)?;
        Ok(record)
    }

    /// The licence as a checked value.
    pub fn parsed_licence(&self) -> Result<Licence> {
        Licence::parse(&self.licence, self.licence_url.as_deref())
    }

    pub fn signature(&self) -> Option<[u8; 64]> {
        self.signature.map(|s| s.0)
    }

    /// Checks every field; returns the publisher's key, parsed on the way.
    fn validate(&self) -> Result<VerifyingKey> {
        validate::line("title", &self.title, MAX_TITLE_BYTES)?;
        if let Some(description) = &self.description {
            validate::text("description", description, MAX_DESCRIPTION_BYTES)?;
        }
        validate::language(&self.language)?;
        if self.authors.is_empty() || self.authors.len() > MAX_AUTHORS {
            return Err(RecordError::InvalidText {
                field: "authors",
                reason: format!("must list 1 to {MAX_AUTHORS} authors (use the organisation if no person is named)"),
            });
        }
        for author in &self.authors {
            validate::line("author name", &author.name, MAX_NAME_BYTES)?;
            if let Some(url) = &author.url {
                validate::url("author URL", url)?;
            }
        }
        self.parsed_licence()?;
        if let Some(url) = &self.licence_url {
            validate::url("licence URL", url)?;
        }
        if let Some(source) = &self.source {
            validate::url("source URL", source)?;
        }
        if self.based_on.len() > MAX_PARENTS {
            return Err(RecordError::InvalidText {
                field: "is-based-on",
                reason: format!("has more than {MAX_PARENTS} parents"),
            });
        }
        for parent in &self.based_on {
            validate::text("is-based-on note", &parent.note, MAX_NOTE_BYTES)?;
        }
        self.educational.validate()?;
        validate::time(&self.created)?;
        Ok(keys::parse_did_key(&self.publisher)?)
    }

    fn verify_signature(&self, publisher: &VerifyingKey) -> Result<()> {
        let bad = || RecordError::BadSignature {
            kind: Kind::Record,
            publisher: self.publisher.clone(),
        };
        let signature = self.signature.ok_or_else(bad)?;
        let unsigned = Record {
            signature: None,
            ..self.clone()
        };
        let body = codec::encode(Kind::Record, &unsigned)?;
        if codec::verify(Kind::Record, publisher, &body, &signature) {
            Ok(())
        } else {
            Err(bad())
        }
    }

    /// The TASL credit line for this work alone, e.g.
    /// `“Title” by A and B, Source: URL, licensed under CC BY-SA 4.0 (URL)`.
    pub fn credit(&self) -> String {
        let names: Vec<&str> = self.authors.iter().map(|a| a.name.as_str()).collect();
        let mut line = format!("\u{201c}{}\u{201d} by {}", self.title, join_names(&names));
        if let Some(source) = &self.source {
            line.push_str(&format!(", Source: {source}"));
        }
        match self.parsed_licence() {
            Ok(licence) => line.push_str(&format!(", {}", licence.attribution_phrase())),
            Err(_) => line.push_str(&format!(", licence {}", self.licence)),
        }
        line
    }
}

fn join_names(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The full TASL attribution of a work: its own credit line, then, for an adaptation,
/// `adapted from` and the parents' credit lines. Parents not available are credited by CID.
pub fn attribution(record: &Record, parents: &[(Cid, Option<Record>)]) -> String {
    let mut line = record.credit();
    if !parents.is_empty() {
        let parent_credits: Vec<String> = parents
            .iter()
            .map(|(cid, parent)| match parent {
                Some(parent) => parent.credit(),
                None => format!("record {cid} (not available locally)"),
            })
            .collect();
        let parent_refs: Vec<&str> = parent_credits.iter().map(String::as_str).collect();
        line.push_str(", adapted from ");
        line.push_str(&join_names(&parent_refs));
    }
    line
}

impl codec::Tagged for Record {
    fn kind_tag(&self) -> &str {
        &self.kind
    }
}
