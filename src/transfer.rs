//! Moving content and collections in and out of a repository as CAR files: the USB
//! stick path between schools.
//!
//! Import is all or nothing for what becomes visible: every block is verified against
//! its CID, every record, head and retraction against its signature, and the head
//! rules are checked, before any record is indexed, any head accepted or any root pinned.
//! From the moment a block is written until it is named (indexed or pinned), the batch's
//! hold keeps it from gc, as it keeps every block the CAR relies on without carrying it.
//! Each block is hashed once: by the CAR reader.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};

use cid::Cid;

use crate::block::{codec, BlockError, BlockGet, BlockPut};
use crate::car::{CarError, CarReader, CarWriter, ExportSummary};
use crate::links;
use crate::records::codec::kind_of;
use crate::records::{CollectionId, Head, Kind, Record, RecordBook, RecordError, Retraction};
use crate::store::{GcHold, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Car(#[from] CarError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Links(Box<links::LinkError>),
    #[error("block {cid} in the CAR is not a valid {kind}: {source}")]
    Invalid {
        cid: String,
        kind: Kind,
        source: Box<RecordError>,
    },
    #[error(transparent)]
    Records(#[from] RecordError),
    #[error(
        "the CAR holds version {offered} of {collection}, older than version {known} already here"
    )]
    OlderVersion {
        collection: String,
        offered: u64,
        known: u64,
    },
    #[error("the CAR does not hold the complete DAG of {root} ({missing} blocks missing, first {first})")]
    Incomplete {
        root: String,
        missing: usize,
        first: String,
    },
    #[error("no published version of {0} is known here")]
    UnknownCollection(String),
}

/// What an import brought in.
impl From<links::LinkError> for TransferError {
    fn from(err: links::LinkError) -> Self {
        TransferError::Links(Box::new(err))
    }
}

#[derive(Debug, Default, Clone)]
pub struct ImportReport {
    pub blocks: u64,
    pub bytes: u64,
    /// Roots pinned (content roots of plain CARs).
    pub pinned: Vec<Cid>,
    pub records: usize,
    pub retractions: usize,
    /// Collections whose version was accepted: (id, seq, trusted publisher).
    pub collections: Vec<(CollectionId, u64, bool)>,
}

/// The signed objects found among a CAR's blocks, already verified.
#[derive(Default)]
struct Signed {
    records: Vec<(Cid, Vec<u8>, Record)>,
    retractions: Vec<(Cid, Vec<u8>, Retraction)>,
    heads: Vec<(Cid, Vec<u8>, Head)>,
}

/// Imports a CAR: plain DAGs (roots pinned) or a collection (head, entries, records,
/// retractions, content).
pub fn import_car<R: Read>(
    store: &Store,
    book: &RecordBook<Store>,
    input: R,
) -> Result<ImportReport, TransferError> {
    let mut reader = CarReader::new(input)?;
    let roots = reader.roots().to_vec();
    let mut report = ImportReport::default();
    // Signed objects are small (records are capped at 64 KiB); keep them to check
    // signatures once the whole CAR has verified.
    let mut signed_blocks = Vec::new();
    // The links of every other block that has any, learnt while its bytes are at hand,
    // so that the completeness check reads nothing back.
    let mut car_links: HashMap<Cid, Vec<Cid>> = HashMap::new();
    let batch = store.batch();
    while let Some(next) = reader.next_block() {
        let (cid, data) = next?;
        // The CAR reader has checked these bytes against the CID.
        batch.put_hashed_block(&cid, &data)?;
        report.blocks += 1;
        report.bytes += data.len() as u64;
        let signed_kind = match cid.codec() {
            codec::DAG_CBOR => kind_of(&data)
                .filter(|kind| matches!(kind, Kind::Record | Kind::Head | Kind::Retraction)),
            _ => None,
        };
        match signed_kind {
            Some(kind) => signed_blocks.push((cid, kind, data)),
            // A block whose links cannot be read is left to the check, which reports it
            // if anything leads to it.
            None if cid.codec() != codec::RAW => {
                if let Ok(children) = links::links(&cid, &data) {
                    car_links.insert(cid, children);
                }
            }
            None => {}
        }
    }
    let signed = verify_signed(signed_blocks)?;
    let hold = batch.commit_held()?;

    let newest_heads = newest_per_collection(&signed.heads)?;
    for (id, (cid, bytes, head)) in newest_heads.values() {
        if let Some((known, known_cid)) = book.newest_head(id)? {
            if head.seq < known {
                return Err(TransferError::OlderVersion {
                    collection: id.to_string(),
                    offered: head.seq,
                    known,
                });
            }
            if head.seq == known && known_cid != *cid {
                // Records the equivocation as evidence and reports it.
                book.accept_verified_head(cid, bytes, head)?;
            }
        }
    }

    // Blocks a retraction lets go of may be absent: the retracted records' content.
    let mut retracted: HashSet<Cid> = signed
        .retractions
        .iter()
        .map(|(_, _, r)| r.record)
        .collect();
    let retracted_content: Vec<Cid> = signed
        .records
        .iter()
        .filter(|(cid, _, _)| retracted.contains(cid))
        .map(|(_, _, record)| record.content)
        .collect();
    retracted.extend(retracted_content);
    let is_retracted =
        |cid: &Cid| retracted.contains(cid) || book.is_retracted(cid).unwrap_or(false);
    let signed_roots: HashSet<Cid> = signed
        .heads
        .iter()
        .map(|h| h.0)
        .chain(signed.retractions.iter().map(|r| r.0))
        .collect();
    let plain_roots = roots.iter().filter(|root| !signed_roots.contains(root));
    let collection_roots = newest_heads
        .values()
        .map(|(_, (cid, _, head))| (head.entries, Some(*cid)));
    let in_car = InCar {
        links: &car_links,
        signed: signed
            .records
            .iter()
            .map(|(cid, bytes, _)| (*cid, bytes.as_slice()))
            .chain(
                signed
                    .heads
                    .iter()
                    .map(|(cid, bytes, _)| (*cid, bytes.as_slice())),
            )
            .chain(
                signed
                    .retractions
                    .iter()
                    .map(|(cid, bytes, _)| (*cid, bytes.as_slice())),
            )
            .collect(),
    };
    for (root, newest_head) in plain_roots
        .map(|root| (*root, None))
        .chain(collection_roots)
    {
        let missing = missing_below(&hold, &in_car, root, newest_head.as_ref(), &is_retracted)?;
        if let Some(first) = missing.first() {
            return Err(TransferError::Incomplete {
                root: root.to_string(),
                missing: missing.len(),
                first: first.to_string(),
            });
        }
    }

    for (cid, bytes, record) in &signed.records {
        book.store_verified_record(cid, bytes, record)?;
        report.records += 1;
    }
    for (cid, bytes, retraction) in signed.retractions {
        book.accept_verified_retraction(&cid, &bytes, retraction)?;
        report.retractions += 1;
    }
    for (id, (cid, bytes, head)) in newest_heads.into_values() {
        let accepted = book.accept_verified_head(&cid, &bytes, &head)?;
        book.warm_listing(&id);
        report
            .collections
            .push((id, accepted.seq, accepted.trusted));
    }
    for root in roots.iter().filter(|root| !signed_roots.contains(root)) {
        if !signed.records.iter().any(|(cid, _, _)| cid == root) {
            hold.pin(root, "import")?;
            report.pinned.push(*root);
        }
    }
    store.flush()?;
    Ok(report)
}

fn verify_signed(blocks: Vec<(Cid, Kind, Vec<u8>)>) -> Result<Signed, TransferError> {
    let mut signed = Signed::default();
    for (cid, kind, bytes) in blocks {
        let invalid = |source| TransferError::Invalid {
            cid: cid.to_string(),
            kind,
            source: Box::new(source),
        };
        match kind {
            Kind::Record => {
                let record = Record::decode_and_verify(&bytes).map_err(invalid)?;
                signed.records.push((cid, bytes, record));
            }
            Kind::Retraction => {
                let retraction = Retraction::decode_and_verify(&bytes).map_err(invalid)?;
                signed.retractions.push((cid, bytes, retraction));
            }
            Kind::Head => {
                let head = Head::decode_and_verify(&bytes).map_err(invalid)?;
                signed.heads.push((cid, bytes, head));
            }
            Kind::EntryRoot | Kind::EntryChunk => {}
        }
    }
    // A retraction only counts when the record's own publisher signed it.
    for (cid, _, retraction) in &signed.retractions {
        if let Some((_, _, record)) = signed
            .records
            .iter()
            .find(|(c, _, _)| *c == retraction.record)
        {
            if record.publisher != retraction.publisher {
                return Err(TransferError::Invalid {
                    cid: cid.to_string(),
                    kind: Kind::Retraction,
                    source: Box::new(RecordError::RetractionByOtherKey(Box::new(
                        crate::records::error::ForeignRetraction {
                            record: retraction.record,
                            publisher: record.publisher.clone(),
                            retractor: retraction.publisher.clone(),
                        },
                    ))),
                });
            }
        }
    }
    Ok(signed)
}

type HeadEntry = (Cid, Vec<u8>, Head);

/// The blocks a collection CAR carries below a block: for the newest head, its entry
/// list and the head before it; for an older head, only the head before it (history,
/// without old entry lists); for a record, its content only (the works it adapts travel
/// in their own collections); for anything else, every link. Export and the import's
/// completeness check follow the same rule. Signatures were checked when these blocks
/// were accepted, so only the links are decoded here.
fn collection_children(
    cid: &Cid,
    data: &[u8],
    newest_head: Option<&Cid>,
) -> Result<Vec<Cid>, TransferError> {
    if cid.codec() == codec::DAG_CBOR {
        match kind_of(data) {
            Some(Kind::Head) if Some(cid) != newest_head => {
                let head: Head = crate::records::codec::decode(Kind::Head, data)?;
                return Ok(head.previous.into_iter().collect());
            }
            Some(Kind::Record) => {
                let record: Record = crate::records::codec::decode(Kind::Record, data)?;
                return Ok(vec![record.content]);
            }
            _ => {}
        }
    }
    Ok(links::links(cid, data)?)
}

/// What an import learnt of its CAR's blocks while reading them.
struct InCar<'a> {
    /// The links of the blocks that have any, other than signed ones.
    links: &'a HashMap<Cid, Vec<Cid>>,
    /// The bytes of the signed blocks (records, heads, retractions).
    signed: HashMap<Cid, &'a [u8]>,
}

/// Blocks below `root` (by [`collection_children`]) that the store does not hold,
/// except those `may_be_missing` lets go. Blocks of the CAR are known without reading
/// them; every other block is looked up (raw leaves) or read through `hold`, which keeps
/// it from gc from then on: the import now relies on it.
fn missing_below(
    hold: &GcHold,
    in_car: &InCar<'_>,
    root: Cid,
    newest_head: Option<&Cid>,
    may_be_missing: &dyn Fn(&Cid) -> bool,
) -> Result<Vec<Cid>, TransferError> {
    let mut missing = Vec::new();
    links::walk(&[root], &[], |cid| {
        if let Some(children) = in_car.links.get(cid) {
            return Ok(children.clone());
        }
        if let Some(data) = in_car.signed.get(cid) {
            return collection_children(cid, data, newest_head);
        }
        let present = if cid.codec() == codec::RAW {
            hold.has_block(cid)?
        } else {
            match links::get_verified(hold, cid) {
                Ok(data) => return collection_children(cid, &data, newest_head),
                Err(BlockError::NotFound(_)) => false,
                Err(err) => return Err(err.into()),
            }
        };
        if !present && !may_be_missing(cid) {
            missing.push(*cid);
        }
        Ok(Vec::new())
    })?;
    Ok(missing)
}

/// The newest head of each collection in the CAR; older ones travel as history.
fn newest_per_collection(
    heads: &[HeadEntry],
) -> Result<BTreeMap<String, (CollectionId, HeadEntry)>, TransferError> {
    let mut newest: HashMap<String, (CollectionId, HeadEntry)> = HashMap::new();
    for entry in heads {
        let id = entry.2.collection_id()?;
        let key = id.to_string();
        let replace = newest
            .get(&key)
            .is_none_or(|(_, current)| entry.2.seq > current.2.seq);
        if replace {
            newest.insert(key, (id, entry.clone()));
        }
    }
    Ok(newest.into_iter().collect())
}

/// Writes the newest version of a collection into a CAR: its head, the heads before it
/// (history, without their old entry lists), the entry list, every record that is not
/// retracted with its content, and the retractions, so the receiving node learns them.
pub fn export_collection<W: Write>(
    store: &Store,
    book: &RecordBook<Store>,
    id: &CollectionId,
    out: W,
) -> Result<ExportSummary, TransferError> {
    let (_, head_cid) = book
        .newest_head(id)?
        .ok_or_else(|| TransferError::UnknownCollection(id.to_string()))?;
    let head = Head::decode_and_verify(&store.get_block(&head_cid)?)?;
    let entries = crate::records::entries::read_all(store, &head.entries)?;
    let mut retractions = Vec::new();
    let mut skip = HashSet::new();
    for entry in &entries {
        if let Some(retraction) = book.retraction_of(&entry.record)? {
            retractions.push(retraction);
            skip.insert(entry.record);
        }
    }
    let skip_records: Vec<Cid> = skip.iter().copied().collect();
    let mut roots = vec![head_cid];
    roots.extend(&retractions);
    let mut writer = CarWriter::new(out, &roots)?;
    let mut summary = ExportSummary {
        blocks: 0,
        bytes: 0,
    };
    let mut write =
        |writer: &mut CarWriter<W>, cid: &Cid, data: &[u8]| -> Result<(), TransferError> {
            writer.write_block(cid, data)?;
            summary.blocks += 1;
            summary.bytes += data.len() as u64;
            Ok(())
        };
    let mut written: HashSet<Cid> = HashSet::new();
    links::walk(&[head_cid], &skip_records, |cid| {
        let data = links::get_verified(store, cid)?;
        write(&mut writer, cid, &data)?;
        written.insert(*cid);
        collection_children(cid, &data, Some(&head_cid))
    })?;
    // Retracted records travel without their content, so that the receiving node can
    // check that each retraction was signed by the record's own publisher.
    for retracted_record in &skip_records {
        let data = store.get_block(retracted_record)?;
        write(&mut writer, retracted_record, &data)?;
    }
    for retraction in &retractions {
        if written.insert(*retraction) {
            let data = store.get_block(retraction)?;
            write(&mut writer, retraction, &data)?;
        }
    }
    writer.finish()?;
    Ok(summary)
}
