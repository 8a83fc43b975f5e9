//! Record layer: keys, records, licences, collections, heads, retractions, vectors.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use cid::Cid;
use ed25519_dalek::SigningKey;
use ipld_core::ipld::Ipld;
use oermesh::block::{cid_v1, codec as block_codec, BlockPut, MemoryBlocks};
use oermesh::keys::{self, KeyError};
use oermesh::records::book::{HistoryEntry, RecordBook};
use oermesh::records::codec::{self, SignatureBytes};
use oermesh::records::collection::HeadDraft;
use oermesh::records::licence::ConflictRule;
use oermesh::records::provenance::{self, NodeStatus};
use oermesh::records::{
    Author, BasedOn, CollectionId, Educational, Entry, Head, Kind, Record, RecordDraft,
    RecordError, Retraction, TrustedPublishers,
};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;
/// A refusal predicate: does this error have the expected variant?
type Expectation = fn(&RecordError) -> bool;

const TIME: &str = "2024-05-01T12:00:00Z";

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn content(label: &str) -> Cid {
    cid_v1(block_codec::RAW, label.as_bytes())
}

fn draft(title: &str, licence: &str) -> RecordDraft {
    RecordDraft {
        content: content(title),
        title: title.to_string(),
        description: Some(format!("About {title}")),
        language: "en".into(),
        authors: vec![Author {
            name: "Ana Diaz".into(),
            url: Some("https://example.org/ana".into()),
        }],
        licence: licence.to_string(),
        licence_url: None,
        source: Some(format!("https://example.org/{}", title.replace(' ', "-"))),
        based_on: Vec::new(),
        educational: Educational {
            learning_resource_type: vec!["lesson plan".into()],
            educational_level: vec!["primary school".into()],
            typical_age_range: Some("9-11".into()),
            teaches: vec!["adding fractions".into()],
            subjects: vec!["mathematics".into()],
            time_required: Some("PT45M".into()),
            ..Educational::default()
        },
        created: Some(TIME.into()),
    }
}

fn derived(title: &str, licence: &str, parents: &[Cid]) -> RecordDraft {
    RecordDraft {
        based_on: parents
            .iter()
            .map(|p| BasedOn {
                record: *p,
                note: "translated".into(),
            })
            .collect(),
        ..draft(title, licence)
    }
}

struct Node {
    _dir: tempfile::TempDir,
    db: sled::Db,
    blocks: MemoryBlocks,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .expect("sled opens");
        Node {
            _dir: dir,
            db,
            blocks: MemoryBlocks::new(),
        }
    }

    fn book(&self, trusted: &[&SigningKey]) -> RecordBook<&MemoryBlocks> {
        let dids: Vec<String> = trusted
            .iter()
            .map(|k| keys::did_key(&k.verifying_key()))
            .collect();
        let trusted = TrustedPublishers::new(dids).expect("valid dids");
        RecordBook::open(&self.db, &self.blocks, trusted).expect("trees open")
    }
}

fn signed_bytes(key: &SigningKey, draft: RecordDraft) -> (Cid, Vec<u8>) {
    let (cid, _, bytes) = Record::sign(key, draft).expect("valid draft");
    (cid, bytes)
}

// ---------------------------------------------------------------- keys

#[test]
fn key_files_are_private_and_round_trip() -> TestResult {
    let dir = tempfile::tempdir()?;
    let keys_dir = dir.path().join("keys");
    let info = keys::generate(&keys_dir, "unesco")?;
    assert!(info.did.starts_with("did:key:z6Mk"));
    let mode = std::fs::metadata(&info.path)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let loaded = keys::load(&keys_dir, "unesco")?;
    assert_eq!(keys::did_key(&loaded.verifying_key()), info.did);
    assert!(matches!(
        keys::generate(&keys_dir, "unesco"),
        Err(KeyError::AlreadyExists(_))
    ));
    assert!(matches!(
        keys::generate(&keys_dir, "../evil"),
        Err(KeyError::InvalidName(_))
    ));

    let backup = dir.path().join("backup.key");
    keys::export(&keys_dir, "unesco", &backup)?;
    let imported = keys::import(&dir.path().join("other"), &backup, None)?;
    assert_eq!(
        (imported.name.as_str(), imported.did.as_str()),
        ("backup", info.did.as_str())
    );
    keys::import(&keys_dir, &backup, Some("copy"))?;
    let names: Vec<String> = keys::list(&keys_dir)?.into_iter().map(|k| k.name).collect();
    assert_eq!(names, ["copy", "unesco"]);
    Ok(())
}

#[test]
fn readable_key_file_is_refused_with_the_fix() -> TestResult {
    let dir = tempfile::tempdir()?;
    let info = keys::generate(dir.path(), "node")?;
    std::fs::set_permissions(&info.path, std::fs::Permissions::from_mode(0o644))?;
    let error = keys::read_key_file(&info.path)
        .err()
        .ok_or("open key file accepted")?;
    assert!(matches!(error, KeyError::TooOpen { mode: 0o644, .. }));
    assert!(
        error
            .to_string()
            .contains(&format!("chmod 600 {}", info.path.display())),
        "{error}"
    );
    Ok(())
}

#[test]
fn key_file_with_foreign_did_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("k.key");
    keys::write_key_file(&path, &key(1))?;
    let text = std::fs::read_to_string(&path)?;
    let other_did = keys::did_key(&key(2).verifying_key());
    let tampered = text.replace(&keys::did_key(&key(1).verifying_key()), &other_did);
    std::fs::remove_file(&path)?;
    std::fs::write(&path, tampered)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    assert!(matches!(
        keys::read_key_file(&path),
        Err(KeyError::Malformed { .. })
    ));
    Ok(())
}

// ---------------------------------------------------------------- encoding

#[test]
fn dagcbor_output_is_canonical_length_first() -> TestResult {
    let map: BTreeMap<String, u8> = [("ccc", 4), ("bb", 3), ("b", 2), ("a", 1)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    let bytes = serde_ipld_dagcbor::to_vec(&map)?;
    let expected = [
        0xa4, 0x61, b'a', 1, 0x61, b'b', 2, 0x62, b'b', b'b', 3, 0x63, b'c', b'c', b'c', 4,
    ];
    assert_eq!(bytes, expected);
    // Struct fields are sorted the same way whatever their declaration order.
    #[derive(serde::Serialize)]
    struct Declared {
        zzz: u8,
        a: u8,
        bb: u8,
    }
    let bytes = serde_ipld_dagcbor::to_vec(&Declared {
        zzz: 3,
        a: 1,
        bb: 2,
    })?;
    assert_eq!(
        bytes,
        [0xa3, 0x61, b'a', 1, 0x62, b'b', b'b', 2, 0x63, b'z', b'z', b'z', 3]
    );
    Ok(())
}

#[test]
fn multilingual_records_round_trip_byte_identical() -> TestResult {
    let node = Node::new();
    let book = node.book(&[]);
    let samples = [
        ("ar", "الكسور للصف الخامس", "محمد"),
        ("zh-Hans", "五年级分数", "李华"),
        ("hi", "भिन्न: कक्षा 5", "अनीता"),
        ("am", "ክፍልፋዮች", "አበበ"),
        ("sw", "Sehemu za darasa la tano", "Juma"),
        ("uk", "Дроби для 5 класу", "Олена"),
    ];
    for (language, title, author) in samples {
        let record_draft = RecordDraft {
            language: language.into(),
            authors: vec![Author {
                name: author.into(),
                url: None,
            }],
            ..draft(title, "CC-BY-4.0")
        };
        let signed = book.sign_record(&key(1), record_draft)?;
        let shown = book.show_record(&signed.cid)?;
        assert_eq!(shown.record.title, title);
        assert_eq!(shown.record.authors[0].name, author);
        let bytes = get(&node.blocks, &signed.cid)?;
        let decoded = Record::decode_and_verify(&bytes)?;
        assert_eq!(codec::encode(Kind::Record, &decoded)?, bytes);
        assert!(shown
            .attribution
            .contains(&format!("\u{201c}{title}\u{201d} by {author}")));
    }
    Ok(())
}

fn get(blocks: &MemoryBlocks, cid: &Cid) -> Result<Vec<u8>, oermesh::block::BlockError> {
    oermesh::block::BlockGet::get_block(blocks, cid)
}

#[test]
fn every_flipped_bit_is_rejected() {
    let (_, bytes) = signed_bytes(&key(1), draft("Fractions", "CC-BY-SA-4.0"));
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(
            Record::decode_and_verify(&flipped).is_err(),
            "bit {bit} flipped was accepted"
        );
    }
}

#[test]
fn signature_of_one_kind_never_verifies_as_another() {
    let signer = key(1);
    let body = b"the same canonical bytes";
    let kinds = [Kind::Record, Kind::Head, Kind::Retraction];
    for signed_as in kinds {
        let signature = codec::sign(signed_as, &signer, body);
        for checked_as in kinds {
            let verifies = codec::verify(checked_as, &signer.verifying_key(), body, &signature);
            assert_eq!(
                verifies,
                signed_as == checked_as,
                "{signed_as:?} as {checked_as:?}"
            );
        }
    }
}

#[test]
fn field_checks_reject_bad_drafts() {
    let cases: Vec<(RecordDraft, Expectation)> = vec![
        (draft("", "CC-BY-4.0"), |e| {
            matches!(e, RecordError::InvalidText { field: "title", .. })
        }),
        (draft("T", "GPL-3.0-only"), |e| {
            matches!(e, RecordError::UnknownLicence(_))
        }),
        (draft("T", "LicenseRef-Mine"), |e| {
            matches!(e, RecordError::LicenceUrlMissing(_))
        }),
        (
            RecordDraft {
                language: "english!".into(),
                ..draft("T", "CC-BY-4.0")
            },
            |e| matches!(e, RecordError::InvalidLanguage { .. }),
        ),
        (
            RecordDraft {
                created: Some("2024-05-01 12:00".into()),
                ..draft("T", "CC-BY-4.0")
            },
            |e| matches!(e, RecordError::InvalidTime(_)),
        ),
        (
            RecordDraft {
                source: Some("file:///etc/passwd".into()),
                ..draft("T", "CC-BY-4.0")
            },
            |e| matches!(e, RecordError::InvalidUrl { .. }),
        ),
        (
            RecordDraft {
                authors: Vec::new(),
                ..draft("T", "CC-BY-4.0")
            },
            |e| {
                matches!(
                    e,
                    RecordError::InvalidText {
                        field: "authors",
                        ..
                    }
                )
            },
        ),
        (
            RecordDraft {
                educational: Educational {
                    time_required: Some("45 minutes".into()),
                    ..Educational::default()
                },
                ..draft("T", "CC-BY-4.0")
            },
            |e| matches!(e, RecordError::InvalidDuration(_)),
        ),
    ];
    for (bad, expected) in cases {
        let title = bad.title.clone();
        match Record::sign(&key(1), bad) {
            Err(error) => assert!(expected(&error), "{title:?}: unexpected {error}"),
            Ok(_) => panic!("{title:?} was signed"),
        }
    }
    let custom = RecordDraft {
        licence_url: Some("https://example.org/terms".into()),
        ..draft("T", "LicenseRef-Mine")
    };
    assert!(Record::sign(&key(1), custom).is_ok());
}

// ---------------------------------------------------------------- licences and attribution

#[test]
fn adaptation_licences_are_checked_against_stored_parents() -> TestResult {
    let node = Node::new();
    let book = node.book(&[]);
    let signer = key(1);
    let nd = book
        .sign_record(&signer, draft("Original ND", "CC-BY-ND-4.0"))?
        .cid;
    let sa = book
        .sign_record(&signer, draft("Original SA", "CC-BY-SA-3.0-IGO"))?
        .cid;
    let nc = book
        .sign_record(&signer, draft("Original NC", "CC-BY-NC-4.0"))?
        .cid;
    let blocks_before = node.blocks.len();

    let refused = book
        .sign_record(&signer, derived("Adapted", "CC-BY-4.0", &[nd]))
        .err()
        .ok_or("ND adapted")?;
    let message = refused.to_string();
    assert!(
        message.contains(&nd.to_string()) && message.contains("Original ND"),
        "{message}"
    );
    assert!(
        matches!(&refused, RecordError::LicenceConflict(c) if c.rule == ConflictRule::NoDerivatives)
    );

    let refused = book
        .sign_record(&signer, derived("Adapted", "CC-BY-4.0", &[sa]))
        .err()
        .ok_or("SA to BY")?;
    assert!(
        matches!(&refused, RecordError::LicenceConflict(c) if c.rule == ConflictRule::ShareAlike { minimum_version: 3 })
    );
    let refused = book
        .sign_record(&signer, derived("Adapted", "CC-BY-SA-4.0", &[sa, nc]))
        .err()
        .ok_or("SA+NC")?;
    assert!(
        matches!(&refused, RecordError::LicenceConflict(c) if matches!(c.rule, ConflictRule::ShareAlikeWithNonCommercial { .. }))
    );
    let missing = content("not a record");
    let refused = book
        .sign_record(&signer, derived("Adapted", "CC-BY-4.0", &[missing]))
        .err()
        .ok_or("missing parent")?;
    assert!(matches!(refused, RecordError::ParentMissing(cid) if cid == missing));
    assert_eq!(
        node.blocks.len(),
        blocks_before,
        "nothing stored on refusal"
    );

    let ok = book.sign_record(&signer, derived("Adapted", "CC-BY-SA-4.0", &[sa]))?;
    assert!(ok.warnings.is_empty());
    let ok = book.sign_record(&signer, derived("Adapted NC", "CC-BY-NC-SA-4.0", &[nc]))?;
    assert!(book.summary(&ok.cid)?.is_some());
    Ok(())
}

#[test]
fn custom_licence_parent_needs_the_identical_licence_and_warns() -> TestResult {
    let node = Node::new();
    let book = node.book(&[]);
    let custom = |title: &str, url: &str| RecordDraft {
        licence_url: Some(url.into()),
        ..draft(title, "LicenseRef-School")
    };
    let parent = book
        .sign_record(&key(1), custom("Custom", "https://example.org/terms"))?
        .cid;
    let same = RecordDraft {
        based_on: vec![BasedOn {
            record: parent,
            note: "shortened".into(),
        }],
        ..custom("Child", "https://example.org/terms")
    };
    assert_eq!(book.sign_record(&key(1), same)?.warnings.len(), 1);
    let other_url = RecordDraft {
        based_on: vec![BasedOn {
            record: parent,
            note: "x".into(),
        }],
        ..custom("Child", "https://example.org/other")
    };
    let refused = book
        .sign_record(&key(1), other_url)
        .err()
        .ok_or("changed custom licence accepted")?;
    assert!(
        matches!(&refused, RecordError::LicenceConflict(c) if c.rule == ConflictRule::CustomLicence)
    );
    Ok(())
}

#[test]
fn tasl_attribution_lines() -> TestResult {
    let node = Node::new();
    let book = node.book(&[]);
    let parent = RecordDraft {
        authors: vec![Author {
            name: "UNESCO".into(),
            url: None,
        }],
        source: Some("https://unesdoc.unesco.org/ark:/48223/pf0000".into()),
        ..draft("Water for life", "CC-BY-SA-3.0-IGO")
    };
    let parent = book.sign_record(&key(1), parent)?.cid;
    let child = RecordDraft {
        authors: vec![
            Author {
                name: "Juma".into(),
                url: None,
            },
            Author {
                name: "Amina".into(),
                url: None,
            },
            Author {
                name: "Neema".into(),
                url: None,
            },
        ],
        source: Some("https://example.org/maji".into()),
        ..derived("Maji kwa uhai", "CC-BY-SA-4.0", &[parent])
    };
    let child = book.sign_record(&key(2), child)?.cid;
    assert_eq!(
        book.show_record(&child)?.attribution,
        "\u{201c}Maji kwa uhai\u{201d} by Juma, Amina and Neema, Source: https://example.org/maji, licensed under \
         CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/), adapted from \u{201c}Water for life\u{201d} \
         by UNESCO, Source: https://unesdoc.unesco.org/ark:/48223/pf0000, licensed under CC BY-SA 3.0 IGO \
         (https://creativecommons.org/licenses/by-sa/3.0/igo/)"
    );
    let zero = book
        .sign_record(
            &key(1),
            RecordDraft {
                source: None,
                ..draft("Open", "CC0-1.0")
            },
        )?
        .cid;
    assert_eq!(
        book.show_record(&zero)?.attribution,
        "\u{201c}Open\u{201d} by Ana Diaz, marked with CC0 1.0 (https://creativecommons.org/publicdomain/zero/1.0/)"
    );
    Ok(())
}

// ---------------------------------------------------------------- provenance

#[test]
fn provenance_reports_missing_invalid_and_shared_parents() -> TestResult {
    let node = Node::new();
    let book = node.book(&[&key(1)]);
    let grandparent = book
        .sign_record(&key(1), draft("Grandparent", "CC-BY-4.0"))?
        .cid;
    let parent_a = book
        .sign_record(&key(1), derived("Parent A", "CC-BY-4.0", &[grandparent]))?
        .cid;
    let parent_b = book
        .sign_record(&key(2), derived("Parent B", "CC-BY-4.0", &[grandparent]))?
        .cid;
    // A parent that was present when signing but has since disappeared, and one that is junk.
    let other_node = Node::new();
    let (gone, gone_bytes) = signed_bytes(&key(1), draft("Gone", "CC-BY-4.0"));
    other_node.book(&[]).accept_record(&gone_bytes)?;
    let junk_bytes = b"not a record".to_vec();
    let junk = cid_v1(block_codec::DAG_CBOR, &junk_bytes);
    node.blocks.put_block(&junk, &junk_bytes)?;
    // Sign the child without the parent check (that check is tested elsewhere).
    let (child, child_bytes) = signed_bytes(
        &key(1),
        derived("Child", "CC-BY-4.0", &[parent_a, parent_b, gone, junk]),
    );
    book.accept_record(&child_bytes)?;

    let tree = book.provenance(&child);
    assert_eq!(tree.status, NodeStatus::Verified);
    let statuses: Vec<&NodeStatus> = tree.parents.iter().map(|p| &p.status).collect();
    assert!(matches!(
        statuses[..],
        [
            NodeStatus::Verified,
            NodeStatus::Verified,
            NodeStatus::Missing(_),
            NodeStatus::Invalid(_)
        ]
    ));
    assert_eq!(tree.parents[0].parents[0].status, NodeStatus::Verified);
    assert_eq!(tree.parents[1].parents[0].status, NodeStatus::AlreadyShown);
    assert!(tree.parents[0].trusted && !tree.parents[1].trusted);
    assert_eq!(tree.parents[0].change_note.as_deref(), Some("translated"));
    let text = provenance::render(&tree);
    assert_eq!(text.lines().count(), 7, "{text}");
    assert!(
        text.contains("MISSING") && text.contains("INVALID") && text.contains("UNTRUSTED"),
        "{text}"
    );
    assert!(text.contains("\u{2514}\u{2500}\u{2500} "), "{text}");

    let shallow = provenance::walk(
        &node.blocks,
        &TrustedPublishers::none(),
        |_| false,
        &child,
        0,
    );
    assert!(shallow
        .parents
        .iter()
        .all(|p| p.status == NodeStatus::Truncated));
    Ok(())
}

// ---------------------------------------------------------------- collections and heads

fn entries(records: &[Cid]) -> Vec<Entry> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| Entry {
            record: *r,
            path: Some(format!("unit-{i}/lesson.pdf")),
            title: None,
        })
        .collect()
}

/// Sends one collection version from `from` to `to` the way the network would: the head goes
/// through `accept_head`, records through `accept_record`, entry blocks are copied.
fn transfer_version(
    from: &RecordBook<&MemoryBlocks>,
    from_blocks: &MemoryBlocks,
    to: &Node,
    head: &Cid,
) -> TestResult {
    let to_book = to.book(&[]);
    let blocks = from.collection_blocks(head)?;
    for cid in &blocks.entry_blocks {
        to.blocks.put_block(cid, &get(from_blocks, cid)?)?;
    }
    for cid in &blocks.records {
        to_book.accept_record(&get(from_blocks, cid)?)?;
    }
    to_book.accept_head(&get(from_blocks, head)?)?;
    Ok(())
}

#[test]
fn publish_show_and_follow_a_collection() -> TestResult {
    let publisher_node = Node::new();
    let publisher = key(1);
    let book = publisher_node.book(&[&publisher]);
    let records: Vec<Cid> = (0..5)
        .map(|i| {
            book.sign_record(&publisher, draft(&format!("Lesson {i}"), "CC-BY-4.0"))
                .map(|s| s.cid)
        })
        .collect::<Result<_, _>>()?;
    let id = book.create_collection("maths-grade-5", "unesco", &publisher.verifying_key())?;
    assert!(matches!(
        book.create_collection("maths-grade-5", "unesco", &publisher.verifying_key()),
        Err(RecordError::DraftExists(_))
    ));
    assert!(matches!(
        book.create_collection("Maths", "unesco", &publisher.verifying_key()),
        Err(RecordError::InvalidCollectionName(_))
    ));
    book.add_entries("maths-grade-5", entries(&records[..3]))?;
    let first = book.publish("maths-grade-5", &publisher)?;
    assert_eq!((first.seq, first.entry_count), (1, 3));
    assert_eq!(first.id, id);
    assert_eq!(id.to_string().parse::<CollectionId>()?, id);

    book.add_entries("maths-grade-5", entries(&records[3..]))?;
    assert!(book.remove_entry("maths-grade-5", &records[0])?);
    assert!(!book.remove_entry("maths-grade-5", &records[0])?);
    let second = book.publish("maths-grade-5", &publisher)?;
    assert_eq!((second.seq, second.entry_count), (2, 4));
    assert!(matches!(
        book.publish("maths-grade-5", &key(9)),
        Err(RecordError::KeyMismatch { .. })
    ));

    let shown = book.collection_show(&id)?;
    assert_eq!(
        (shown.seq, shown.head, shown.entries.len()),
        (2, second.head, 4)
    );
    assert!(
        shown.trusted
            && shown
                .entries
                .iter()
                .all(|e| e.trusted && e.summary.is_some())
    );
    let history = book.history(&id)?;
    assert!(matches!(
        history[..],
        [
            HistoryEntry::Version { seq: 2, .. },
            HistoryEntry::Version { seq: 1, .. }
        ]
    ));
    let listing = book.collection_list()?;
    assert_eq!(listing.len(), 1);
    assert_eq!(listing[0].newest, Some((2, second.head)));
    assert_eq!(
        listing[0].draft.as_ref().map(|d| d.key_name.as_str()),
        Some("unesco")
    );

    let blocks = book.collection_blocks(&second.head)?;
    assert_eq!(blocks.records.len(), 4);
    assert_eq!(blocks.content_roots.len(), 4);
    assert!(blocks.missing_records.is_empty());
    assert_eq!(
        blocks.record_layer_blocks().len(),
        1 + blocks.entry_blocks.len() + 4
    );

    // A follower that does not trust the publisher sees the same entries, marked untrusted.
    let follower = Node::new();
    transfer_version(&book, &publisher_node.blocks, &follower, &second.head)?;
    let followed = follower.book(&[]).collection_show(&id)?;
    assert_eq!(followed.entries.len(), 4);
    assert!(!followed.trusted && followed.entries.iter().all(|e| !e.trusted));
    // Its history stops at the first head it never received.
    let history = follower.book(&[]).history(&id)?;
    assert!(
        matches!(history[..], [HistoryEntry::Version { seq: 2, .. }, HistoryEntry::Missing { cid }] if cid == first.head)
    );
    Ok(())
}

fn head_bytes(
    signer: &SigningKey,
    name: &str,
    seq: u64,
    previous: Option<Cid>,
    entries: Cid,
) -> Result<(Cid, Vec<u8>), RecordError> {
    let draft = HeadDraft {
        name: name.into(),
        seq,
        entries,
        entry_count: 0,
        previous,
        time: Some(TIME.into()),
    };
    let (cid, _, bytes) = Head::sign(signer, draft)?;
    Ok((cid, bytes))
}

#[test]
fn replayed_and_equivocating_heads_are_refused() -> TestResult {
    let node = Node::new();
    let book = node.book(&[]);
    let publisher = key(1);
    let list_a = content("entries a");
    let list_b = content("entries b");
    let (head1, bytes1) = head_bytes(&publisher, "news", 1, None, list_a)?;
    let (head2, bytes2) = head_bytes(&publisher, "news", 2, Some(head1), list_a)?;
    let (head2_other, bytes2_other) = head_bytes(&publisher, "news", 2, Some(head1), list_b)?;

    assert_eq!(book.accept_head(&bytes1)?.seq, 1);
    assert_eq!(book.accept_head(&bytes2)?.seq, 2);
    assert!(book.accept_head(&bytes2)?.already_known);
    let replay = book.accept_head(&bytes1).err().ok_or("replay accepted")?;
    assert!(matches!(
        replay,
        RecordError::Replay {
            newest: 2,
            got: 1,
            ..
        }
    ));

    let blocks_before = node.blocks.len();
    let equivocation = book
        .accept_head(&bytes2_other)
        .err()
        .ok_or("equivocation accepted")?;
    let RecordError::Equivocation(evidence) = equivocation else {
        return Err("not an equivocation".into());
    };
    assert_eq!(
        (evidence.seq, evidence.known, evidence.conflicting),
        (2, head2, head2_other)
    );
    assert_eq!(
        node.blocks.len(),
        blocks_before + 1,
        "the conflicting head is kept as evidence"
    );
    let id = CollectionId::new(publisher.verifying_key(), "news")?;
    assert_eq!(book.equivocations(&id)?, vec![*evidence]);
    assert_eq!(book.newest_head(&id)?, Some((2, head2)));

    // Refused before anything is stored: bad sequence links, a forged signature.
    let blocks_before = node.blocks.len();
    assert!(matches!(
        head_bytes(&publisher, "news", 3, None, list_a),
        Err(RecordError::InvalidSequence(_))
    ));
    let (_, mut forged) = head_bytes(&publisher, "news", 3, Some(head2), list_a)?;
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(matches!(
        book.accept_head(&forged),
        Err(RecordError::BadSignature {
            kind: Kind::Head,
            ..
        })
    ));
    assert_eq!(node.blocks.len(), blocks_before);
    assert_eq!(book.newest_head(&id)?, Some((2, head2)));
    Ok(())
}

// ---------------------------------------------------------------- retractions

#[test]
fn retraction_hides_a_record_only_when_signed_by_its_publisher() -> TestResult {
    let node = Node::new();
    let publisher = key(1);
    let book = node.book(&[]);
    let kept = book
        .sign_record(&publisher, draft("Kept", "CC-BY-4.0"))?
        .cid;
    let withdrawn_draft = RecordDraft {
        content: content("Kept"),
        ..draft("Withdrawn", "CC-BY-4.0")
    };
    let withdrawn = book.sign_record(&publisher, withdrawn_draft)?.cid;
    book.create_collection("set", "k", &publisher.verifying_key())?;
    book.add_entries("set", entries(&[kept, withdrawn]))?;
    let published = book.publish("set", &publisher)?;
    assert_eq!(book.records_for_content(&content("Kept"))?.len(), 2);

    let (_, _, foreign) = Retraction::sign(&key(2), withdrawn, "not yours", Some(TIME.into()))?;
    let blocks_before = node.blocks.len();
    assert!(matches!(
        book.accept_retraction(&foreign),
        Err(RecordError::RetractionByOtherKey(_))
    ));
    assert_eq!(node.blocks.len(), blocks_before);
    assert!(!book.is_retracted(&withdrawn)?);
    let (_, _, unknown) =
        Retraction::sign(&publisher, content("nothing"), "gone", Some(TIME.into()))?;
    assert!(matches!(
        book.accept_retraction(&unknown),
        Err(RecordError::UnknownRecord(_))
    ));

    let retraction = book.retract(&publisher, &withdrawn, "contains an error in exercise 3")?;
    assert!(book.is_retracted(&withdrawn)?);
    assert_eq!(book.retraction_of(&withdrawn)?, Some(retraction));
    let listed: Vec<Cid> = book
        .records_for_content(&content("Kept"))?
        .into_iter()
        .map(|l| l.cid)
        .collect();
    assert_eq!(listed, vec![kept]);
    let shown = book.collection_show(&published.id)?;
    assert_eq!((shown.entries.len(), shown.retracted_hidden), (1, 1));
    assert!(book.show_record(&withdrawn)?.retracted);

    // A retraction presented as a record is refused as the wrong kind.
    let (_, _, retraction_bytes) = Retraction::sign(&publisher, kept, "x", Some(TIME.into()))?;
    assert!(matches!(
        book.accept_record(&retraction_bytes),
        Err(RecordError::WrongKind {
            expected: Kind::Record,
            ..
        })
    ));
    Ok(())
}

// ---------------------------------------------------------------- hand-made vectors

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/records")
}

const VECTOR_KEY: u8 = 0x11;
const VECTOR_OTHER_KEY: u8 = 0x22;

fn vector_draft() -> RecordDraft {
    RecordDraft {
        content: cid_v1(block_codec::RAW, b"hello world"),
        title: "Vector record".into(),
        description: None,
        language: "en".into(),
        authors: vec![Author {
            name: "Test Author".into(),
            url: None,
        }],
        licence: "CC-BY-4.0".into(),
        licence_url: None,
        source: Some("https://example.org/vector".into()),
        based_on: Vec::new(),
        educational: Educational::default(),
        created: Some(TIME.into()),
    }
}

/// Writes a CBOR map with its keys in the given order (to make non-canonical vectors).
fn write_map_in_order(out: &mut Vec<u8>, entries: &[(String, Ipld)]) -> TestResult {
    out.push(0xa0 | u8::try_from(entries.len())?);
    for (key, value) in entries {
        out.extend(serde_ipld_dagcbor::to_vec(key)?);
        out.extend(serde_ipld_dagcbor::to_vec(value)?);
    }
    Ok(())
}

/// Signs an arbitrary map as a `kind` object: the way a hostile or buggy signer would.
fn sign_map(
    kind: Kind,
    signer: &SigningKey,
    mut map: BTreeMap<String, Ipld>,
) -> TestResult<Vec<u8>> {
    map.remove("sig");
    let body = serde_ipld_dagcbor::to_vec(&map)?;
    let SignatureBytes(signature) = codec::sign(kind, signer, &body);
    map.insert("sig".into(), Ipld::Bytes(signature.to_vec()));
    Ok(serde_ipld_dagcbor::to_vec(&map)?)
}

fn vector_map() -> TestResult<BTreeMap<String, Ipld>> {
    let (_, bytes) = signed_bytes(&key(VECTOR_KEY), vector_draft());
    match serde_ipld_dagcbor::from_slice::<Ipld>(&bytes)? {
        Ipld::Map(map) => Ok(map),
        _ => Err("record is not a map".into()),
    }
}

fn make_vectors() -> TestResult<Vec<(&'static str, Vec<u8>)>> {
    let signer = key(VECTOR_KEY);
    let (_, good) = signed_bytes(&signer, vector_draft());
    let mut vectors = vec![("good-record.cbor", good.clone())];

    let mut alphabetical = Vec::new();
    let entries: Vec<(String, Ipld)> = vector_map()?.into_iter().collect();
    write_map_in_order(&mut alphabetical, &entries)?;
    vectors.push(("noncanonical-map-order.cbor", alphabetical));

    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    vectors.push(("flipped-bit-signature.cbor", flipped));

    let title_at = good
        .windows(6)
        .position(|w| w == b"Vector")
        .ok_or("title not found")?;
    let mut flipped_title = good.clone();
    flipped_title[title_at] ^= 0x20;
    vectors.push(("flipped-bit-title.cbor", flipped_title));

    vectors.push(("truncated.cbor", good[..good.len() - 10].to_vec()));

    let mut wrong_key = vector_map()?;
    wrong_key.insert(
        "pub".into(),
        Ipld::String(keys::did_key(&key(VECTOR_OTHER_KEY).verifying_key())),
    );
    vectors.push((
        "wrong-key-signature.cbor",
        sign_map(Kind::Record, &signer, wrong_key)?,
    ));

    let mut oversized = good.clone();
    oversized.resize(64 * 1024 + 1, 0);
    vectors.push(("oversized-record.cbor", oversized));

    let mut unknown_licence = vector_map()?;
    unknown_licence.insert("li".into(), Ipld::String("GPL-3.0-only".into()));
    vectors.push((
        "unknown-licence.cbor",
        sign_map(Kind::Record, &signer, unknown_licence)?,
    ));

    let mut missing_title = vector_map()?;
    missing_title.remove("ti");
    vectors.push((
        "missing-title.cbor",
        sign_map(Kind::Record, &signer, missing_title)?,
    ));

    let mut unknown_field = vector_map()?;
    unknown_field.insert("zz".into(), Ipld::String("surprise".into()));
    vectors.push((
        "unknown-field.cbor",
        sign_map(Kind::Record, &signer, unknown_field)?,
    ));

    let mut bad_language = vector_map()?;
    bad_language.insert("la".into(), Ipld::String("english!".into()));
    vectors.push((
        "bad-language.cbor",
        sign_map(Kind::Record, &signer, bad_language)?,
    ));

    let mut explicit_null = vector_map()?;
    explicit_null.insert("de".into(), Ipld::Null);
    vectors.push((
        "explicit-null-description.cbor",
        sign_map(Kind::Record, &signer, explicit_null)?,
    ));

    let mut ref_without_url = vector_map()?;
    ref_without_url.insert("li".into(), Ipld::String("LicenseRef-Custom".into()));
    vectors.push((
        "license-ref-without-url.cbor",
        sign_map(Kind::Record, &signer, ref_without_url)?,
    ));

    vectors.push((
        "not-a-map.cbor",
        serde_ipld_dagcbor::to_vec(&vec!["record/1"])?,
    ));

    vectors.push(("record-presented-as-head.cbor", good.clone()));

    let head_draft = HeadDraft {
        name: "vectors".into(),
        seq: 1,
        entries: cid_v1(block_codec::DAG_CBOR, b"x"),
        entry_count: 0,
        previous: None,
        time: Some(TIME.into()),
    };
    let (_, _, head) = Head::sign(&signer, head_draft)?;
    let head_map = match serde_ipld_dagcbor::from_slice::<Ipld>(&head)? {
        Ipld::Map(map) => map,
        _ => return Err("head is not a map".into()),
    };
    vectors.push((
        "head-signed-as-record.cbor",
        sign_map(Kind::Record, &signer, head_map)?,
    ));
    Ok(vectors)
}

/// Which entry point each vector goes through and the refusal expected.
fn expected_rejection(name: &str, error: &RecordError) -> bool {
    match name {
        "noncanonical-map-order.cbor" => {
            matches!(error, RecordError::NonCanonical { kind: Kind::Record })
        }
        "flipped-bit-signature.cbor" | "flipped-bit-title.cbor" | "wrong-key-signature.cbor" => {
            matches!(
                error,
                RecordError::BadSignature {
                    kind: Kind::Record,
                    ..
                }
            )
        }
        "truncated.cbor" => matches!(error, RecordError::MalformedCbor { .. }),
        "oversized-record.cbor" => matches!(
            error,
            RecordError::TooLarge {
                kind: Kind::Record,
                limit: 65536,
                ..
            }
        ),
        "unknown-licence.cbor" => {
            matches!(error, RecordError::UnknownLicence(id) if id == "GPL-3.0-only")
        }
        "missing-title.cbor" => {
            matches!(error, RecordError::MissingField { field, .. } if field == "ti")
        }
        "unknown-field.cbor" => {
            matches!(error, RecordError::UnknownField { field, .. } if field == "zz")
        }
        "bad-language.cbor" => matches!(error, RecordError::InvalidLanguage { .. }),
        "explicit-null-description.cbor" => matches!(error, RecordError::NonCanonical { .. }),
        "license-ref-without-url.cbor" => matches!(error, RecordError::LicenceUrlMissing(_)),
        "not-a-map.cbor" => matches!(error, RecordError::NotAMap { .. }),
        "record-presented-as-head.cbor" => matches!(
            error,
            RecordError::WrongKind {
                expected: Kind::Head,
                ..
            }
        ),
        "head-signed-as-record.cbor" => matches!(
            error,
            RecordError::WrongKind {
                expected: Kind::Record,
                ..
            }
        ),
        _ => false,
    }
}

#[test]
#[ignore = "rewrites tests/vectors/records; run by hand after a deliberate format change"]
fn regenerate_record_vectors() -> TestResult {
    for (name, bytes) in make_vectors()? {
        std::fs::write(vectors_dir().join(name), bytes)?;
    }
    Ok(())
}

#[test]
fn hand_made_vectors_are_rejected_for_the_documented_reason() -> TestResult {
    let readme = std::fs::read_to_string(vectors_dir().join("README.md"))?;
    let generated = make_vectors()?;
    for (name, expected_bytes) in &generated {
        let bytes = std::fs::read(vectors_dir().join(name))?;
        assert_eq!(
            &bytes, expected_bytes,
            "{name} differs from what the generator makes"
        );
        assert!(
            readme.contains(name),
            "{name} is not described in the README"
        );
        let node = Node::new();
        let book = node.book(&[]);
        let outcome = if *name == "record-presented-as-head.cbor" {
            book.accept_head(&bytes).map(|h| h.cid)
        } else {
            book.accept_record(&bytes)
        };
        match (name.starts_with("good-"), outcome) {
            (true, Ok(_)) => assert_eq!(node.blocks.len(), 1),
            (true, Err(error)) => panic!("{name} refused: {error}"),
            (false, Ok(_)) => panic!("{name} was accepted"),
            (false, Err(error)) => {
                assert!(
                    expected_rejection(name, &error),
                    "{name}: unexpected refusal {error:?}"
                );
                assert_eq!(node.blocks.len(), 0, "{name}: stored on rejection");
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- performance figures

#[test]
#[ignore = "prints performance figures; run: cargo test --release --test it record_layer_performance -- --ignored --nocapture"]
fn record_layer_performance_figures() -> TestResult {
    use rayon::prelude::*;
    use std::time::Instant;

    const RECORDS: usize = 100_000;
    let publisher = key(1);
    let started = Instant::now();
    let signed: Vec<(Cid, Vec<u8>)> = (0..RECORDS)
        .into_par_iter()
        .map(|i| {
            let title = format!("Lesson {i}: fractions and decimals");
            signed_bytes(
                &publisher,
                RecordDraft {
                    content: content(&title),
                    ..draft(&title, "CC-BY-SA-4.0")
                },
            )
        })
        .collect();
    println!(
        "signed {RECORDS} records in {:?} (all cores)",
        started.elapsed()
    );
    println!("record size: {} bytes", signed[0].1.len());

    let sample = &signed[..20_000];
    let started = Instant::now();
    for (_, bytes) in sample {
        Record::decode_and_verify(bytes)?;
    }
    let elapsed = started.elapsed();
    println!(
        "strict decode + verify_strict, one thread: {} records in {elapsed:?} = {:.0} records/s",
        sample.len(),
        sample.len() as f64 / elapsed.as_secs_f64()
    );

    let node = Node::new();
    let book = node.book(&[&publisher]);
    let started = Instant::now();
    signed
        .par_iter()
        .try_for_each(|(_, bytes)| book.accept_record(bytes).map(|_| ()))?;
    println!(
        "accepted (verified, stored, indexed) {RECORDS} records in {:?} (all cores)",
        started.elapsed()
    );

    book.create_collection("big", "k", &publisher.verifying_key())?;
    let all_entries: Vec<Entry> = signed.iter().map(|(cid, _)| Entry::new(*cid)).collect();
    let started = Instant::now();
    let built = book.add_entries("big", all_entries)?;
    println!(
        "built a {RECORDS}-entry list in {:?} ({} chunks)",
        started.elapsed(),
        built.chunks_written
    );
    let started = Instant::now();
    book.publish("big", &publisher)?;
    println!("published version 1 in {:?}", started.elapsed());

    let extra = book
        .sign_record(&publisher, draft("One more lesson", "CC-BY-4.0"))?
        .cid;
    let started = Instant::now();
    let edit = book.add_entries("big", vec![Entry::new(extra)])?;
    let removed = book.remove_entry("big", &signed[500].0)?;
    let published = book.publish("big", &publisher)?;
    println!(
        "next version (add 1, remove {}, publish seq {}): {:?}, {} chunk(s) rewritten",
        usize::from(removed),
        published.seq,
        started.elapsed(),
        edit.chunks_written
    );

    let started = Instant::now();
    let root = book.draft_info("big")?.state.entries;
    let plain = oermesh::records::entries::read_all(&node.blocks, &root)?;
    println!(
        "read and verified {} entries (no index lookups) in {:?}",
        plain.len(),
        started.elapsed()
    );
    let started = Instant::now();
    for entry in &plain {
        book.summary(&entry.record)?;
    }
    println!(
        "looked up {} index summaries on one thread in {:?}",
        plain.len(),
        started.elapsed()
    );

    // `collection publish` and `import` fill the listing cache of the new version, as
    // this does; a listing then reads the cache.
    let started = Instant::now();
    book.warm_listing(&published.id);
    println!("filled the listing cache in {:?}", started.elapsed());
    for when in ["listed", "listed again"] {
        let started = Instant::now();
        let shown = book.collection_show(&published.id)?;
        let with_titles = shown
            .entries
            .iter()
            .filter(|e| e.title().is_some() && e.summary.is_some())
            .count();
        println!(
            "{when}: {} entries with titles and licences in {:?}",
            with_titles,
            started.elapsed()
        );
        assert_eq!(with_titles, RECORDS);
    }

    let started = Instant::now();
    let blocks = book.collection_blocks(&published.head)?;
    println!(
        "collected {} record-layer blocks of the version in {:?}",
        blocks.record_layer_blocks().len(),
        started.elapsed()
    );
    Ok(())
}

/// Listings come from a cache once filled; every change to the record index (a record
/// arriving, a retraction) must show in the next listing all the same.
#[test]
fn cached_listings_follow_records_and_retractions() -> TestResult {
    let node = Node::new();
    let publisher = key(7);
    let book = node.book(&[&publisher]);
    let present = book
        .sign_record(&publisher, draft("Present", "CC-BY-4.0"))?
        .cid;
    // A record the collection names but this node has not received yet.
    let (late, late_bytes) = signed_bytes(&publisher, draft("Arrives later", "CC0-1.0"));
    book.create_collection("cache", "k", &publisher.verifying_key())?;
    book.add_entries("cache", entries(&[present, late]))?;
    let id = book.publish("cache", &publisher)?.id;
    book.warm_listing(&id);

    let titles = |book: &RecordBook<&MemoryBlocks>| -> Result<Vec<Option<String>>, RecordError> {
        let view = book.collection_show(&id)?;
        let mut titles: Vec<Option<String>> = view
            .entries
            .iter()
            .map(|e| e.summary.as_ref().map(|s| s.title.clone()))
            .collect();
        titles.sort();
        Ok(titles)
    };
    assert_eq!(titles(&book)?, vec![None, Some("Present".to_string())]);
    assert_eq!(
        titles(&book)?,
        vec![None, Some("Present".to_string())],
        "from the cache"
    );

    book.accept_record(&late_bytes)?;
    assert_eq!(
        titles(&book)?,
        vec![
            Some("Arrives later".to_string()),
            Some("Present".to_string())
        ]
    );

    book.retract(&publisher, &present, "licence problem")?;
    assert_eq!(titles(&book)?, vec![Some("Arrives later".to_string())]);
    assert_eq!(book.collection_show(&id)?.retracted_hidden, 1);

    book.clear_listing_cache()?;
    assert_eq!(titles(&book)?, vec![Some("Arrives later".to_string())]);
    Ok(())
}
