//! The thread that keeps the search index level with the record layer.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use cid::Cid;
use rayon::prelude::*;
use tantivy::{Index, IndexWriter, TantivyDocument, Term};

use super::{Fields, Shared, DESCRIPTION_SHOWN};
use crate::block::BlockGet;
use crate::records::codec;
use crate::records::{Kind, Record, RecordBook};
use crate::store::Store;

/// Memory tantivy may use to build segments before writing them out.
const WRITER_MEMORY: usize = 50 * 1024 * 1024;
/// How often the thread looks up from waiting to see whether it should stop.
const STOP_CHECK: Duration = Duration::from_millis(200);
/// Changes gathered after the first one before a commit, so a burst (an import of a
/// whole collection) becomes a few commits rather than one per record.
const GATHER: Duration = Duration::from_millis(100);
/// Most changes applied in one commit.
const BATCH: usize = 4096;
/// Records loaded at once while rebuilding.
const REBUILD_CHUNK: usize = 2048;

pub(super) fn start(
    index: Index,
    records: RecordBook<Store>,
    shared: Arc<Shared>,
    dir: PathBuf,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("search-indexer".into())
        .spawn(move || {
            if let Err(err) = run(&index, &records, &shared) {
                tracing::error!(dir = %dir.display(), %err, "search index stopped following the records; restart the daemon to rebuild it");
            }
        })
}

fn run(index: &Index, records: &RecordBook<Store>, shared: &Shared) -> Result<(), String> {
    let mut writer: IndexWriter<TantivyDocument> = index
        .writer_with_num_threads(1, WRITER_MEMORY)
        .map_err(|err| err.to_string())?;
    // Subscribed before anything is read, so no change falls between the two.
    let mut changes = records.watch_summaries();
    let generation = records.summary_generation().map_err(|e| e.to_string())?;
    let indexed = index
        .load_metas()
        .ok()
        .and_then(|metas| metas.payload)
        .and_then(|payload| payload.parse::<u64>().ok());
    if indexed != Some(generation) {
        tracing::info!("building the search index from the record layer");
        rebuild(&writer, records, shared.fields)?;
        commit(&mut writer, generation)?;
    }
    shared.reload().map_err(|err| err.to_string())?;
    shared.ready.store(true, Ordering::Relaxed);

    while !shared.stop.load(Ordering::Relaxed) {
        let first = match changes.next_timeout(STOP_CHECK) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        };
        thread::sleep(GATHER);
        // Read before the queue is drained: every change counted in this generation
        // has its event queued already, so the commit below covers the generation.
        let generation = records.summary_generation().map_err(|e| e.to_string())?;
        let mut batch: HashMap<sled::IVec, Option<sled::IVec>> = HashMap::new();
        take(&mut batch, first);
        while batch.len() < BATCH {
            match changes.next_timeout(Duration::ZERO) {
                Ok(event) => take(&mut batch, event),
                Err(_) => break,
            }
        }
        for (key, value) in batch {
            apply(&writer, records, shared.fields, &key, value.as_deref());
        }
        commit(&mut writer, generation)?;
        shared.reload().map_err(|err| err.to_string())?;
    }
    Ok(())
}

/// Keeps the newest state of each changed key: a later event replaces an earlier one.
fn take(batch: &mut HashMap<sled::IVec, Option<sled::IVec>>, event: sled::Event) {
    match event {
        sled::Event::Insert { key, value } => {
            batch.insert(key, Some(value));
        }
        sled::Event::Remove { key } => {
            batch.insert(key, None);
        }
    }
}

fn commit(writer: &mut IndexWriter<TantivyDocument>, generation: u64) -> Result<(), String> {
    let mut prepared = writer.prepare_commit().map_err(|err| err.to_string())?;
    prepared.set_payload(&generation.to_string());
    prepared.commit().map_err(|err| err.to_string())?;
    Ok(())
}

/// One change to the summaries: the record's document is replaced, or removed when
/// the record was retracted.
fn apply(
    writer: &IndexWriter<TantivyDocument>,
    records: &RecordBook<Store>,
    fields: Fields,
    key: &[u8],
    value: Option<&[u8]>,
) {
    let Ok(record) = Cid::try_from(key) else {
        tracing::warn!("summaries key is not a CID; not indexed");
        return;
    };
    writer.delete_term(Term::from_field_text(fields.record, &record.to_string()));
    let Some(value) = value else {
        return;
    };
    match RecordBook::<Store>::decode_summary_event(key, value) {
        Ok((_, summary)) if summary.retracted => {}
        Ok(_) => match load(records, &record) {
            Ok(loaded) => {
                if let Err(err) = writer.add_document(document(fields, &record, &loaded)) {
                    tracing::warn!(%record, %err, "record not indexed");
                }
            }
            Err(err) => tracing::warn!(%record, %err, "record not indexed"),
        },
        Err(err) => tracing::warn!(%record, %err, "record summary unreadable; not indexed"),
    }
}

/// A record as accepted earlier: its block is verified against its CID on read, and its
/// signature was checked when it was accepted, so it is not checked again here.
fn load(records: &RecordBook<Store>, cid: &Cid) -> Result<Record, String> {
    let bytes = records.blocks().get_block(cid).map_err(|e| e.to_string())?;
    codec::decode_linked::<Record>(Kind::Record, &bytes).map_err(|e| e.to_string())
}

fn rebuild(
    writer: &IndexWriter<TantivyDocument>,
    records: &RecordBook<Store>,
    fields: Fields,
) -> Result<(), String> {
    writer.delete_all_documents().map_err(|e| e.to_string())?;
    let mut live = records.summaries().filter_map(|item| match item {
        Ok((cid, summary)) => (!summary.retracted).then_some(cid),
        Err(err) => {
            tracing::warn!(%err, "unreadable summary skipped while building the search index");
            None
        }
    });
    loop {
        let chunk: Vec<Cid> = live.by_ref().take(REBUILD_CHUNK).collect();
        if chunk.is_empty() {
            return Ok(());
        }
        chunk.par_iter().for_each(|cid| match load(records, cid) {
            Ok(record) => {
                if let Err(err) = writer.add_document(document(fields, cid, &record)) {
                    tracing::warn!(record = %cid, %err, "record not indexed");
                }
            }
            Err(err) => tracing::warn!(record = %cid, %err, "record not indexed"),
        });
    }
}

/// The primary language subtag in lower case: `ar` for `ar-EG`.
pub fn primary_language(tag: &str) -> String {
    tag.split('-').next().unwrap_or(tag).to_ascii_lowercase()
}

fn facet_value(text: &str) -> String {
    text.trim().to_lowercase()
}

fn document(fields: Fields, cid: &Cid, record: &Record) -> TantivyDocument {
    let mut doc = TantivyDocument::new();
    doc.add_text(fields.record, cid.to_string());
    doc.add_text(fields.content, record.content.to_string());
    doc.add_text(fields.title, &record.title);
    if let Some(description) = &record.description {
        doc.add_text(fields.description, description);
        let snippet: String = description.chars().take(DESCRIPTION_SHOWN).collect();
        doc.add_text(fields.snippet, snippet);
    }
    let educational = &record.educational;
    for subject in &educational.subjects {
        doc.add_text(fields.subjects, subject);
    }
    for objective in &educational.teaches {
        doc.add_text(fields.teaches, objective);
    }
    for author in &record.authors {
        doc.add_text(fields.authors, &author.name);
    }
    doc.add_text(fields.language, primary_language(&record.language));
    doc.add_text(fields.language_tag, &record.language);
    doc.add_text(fields.licence, &record.licence);
    for level in &educational.educational_level {
        doc.add_text(fields.level, facet_value(level));
    }
    for kind in &educational.learning_resource_type {
        doc.add_text(fields.kind, facet_value(kind));
    }
    doc.add_text(fields.publisher, &record.publisher);
    doc
}
