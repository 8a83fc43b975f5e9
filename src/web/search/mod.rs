//! Search across the records this node holds: title, description, subjects, what a
//! resource teaches and its authors, with filters by language, licence, level and
//! resource type.
//!
//! The index is tantivy's, in `REPO/search/`. sled stays the store of record: the
//! index holds nothing that cannot be rebuilt from the record layer, and it is rebuilt
//! whenever it is missing, unreadable or older than the record layer's summaries
//! (each commit carries the record layer's summary generation). While the daemon
//! runs, a thread follows the record layer's summaries tree (sled's `watch_prefix`),
//! so a record accepted or retracted is searchable, or gone, within moments.
//!
//! Ranking is tantivy's BM25, titles weighing most; each word may also match with one
//! letter wrong, missing, extra or two letters swapped (words of four letters or
//! more), ranked below exact matches.

mod indexer;
pub mod tokenizer;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use cid::Cid;
use tantivy::collector::{Count, TopDocs};
use tantivy::query::{AllQuery, BooleanQuery, BoostQuery, FuzzyTermQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, STORED, STRING,
};
use tantivy::{Index, IndexReader, ReloadPolicy, TantivyDocument, Term};

use crate::metrics::Metrics;
use crate::records::RecordBook;
use crate::store::Store;

/// Results shown for one query.
pub const RESULTS_SHOWN: usize = 50;
/// Words shorter than this must match exactly.
const FUZZY_MIN_CHARS: usize = 4;
/// Words of a query taken into account.
const MAX_QUERY_TERMS: usize = 16;
/// Longest description kept in the index for result pages, in characters.
pub const DESCRIPTION_SHOWN: usize = 300;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index at {path}: {source}")]
    Index {
        path: PathBuf,
        source: tantivy::TantivyError,
    },
    #[error("cannot remove the old search index at {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("search failed: {0}")]
    Query(#[from] tantivy::TantivyError),
    #[error("cannot start the search indexer: {0}")]
    Thread(std::io::Error),
}

/// The index's fields.
#[derive(Clone, Copy)]
pub(crate) struct Fields {
    record: Field,
    content: Field,
    title: Field,
    description: Field,
    /// The start of the description, shown with results.
    snippet: Field,
    subjects: Field,
    teaches: Field,
    authors: Field,
    /// Primary language subtag in lower case (`ar` for `ar-EG`), for the filter.
    language: Field,
    /// The record's own language tag, for `lang` attributes.
    language_tag: Field,
    licence: Field,
    level: Field,
    kind: Field,
    publisher: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let text = |stored: bool| {
        let options = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(tokenizer::NAME)
                .set_index_option(IndexRecordOption::WithFreqs),
        );
        if stored {
            options.set_stored()
        } else {
            options
        }
    };
    let fields = Fields {
        record: builder.add_text_field("record", STRING | STORED),
        content: builder.add_text_field("content", STRING | STORED),
        title: builder.add_text_field("title", text(true)),
        description: builder.add_text_field("description", text(false)),
        snippet: builder.add_text_field("snippet", STORED),
        subjects: builder.add_text_field("subjects", text(false)),
        teaches: builder.add_text_field("teaches", text(false)),
        authors: builder.add_text_field("authors", text(true)),
        language: builder.add_text_field("language", STRING),
        language_tag: builder.add_text_field("language_tag", STORED),
        licence: builder.add_text_field("licence", STRING | STORED),
        level: builder.add_text_field("level", STRING | STORED),
        kind: builder.add_text_field("kind", STRING | STORED),
        publisher: builder.add_text_field("publisher", STRING | STORED),
    };
    (builder.build(), fields)
}

/// What a search asks for. Filters are exact values as listed in [`Facets`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchQuery {
    pub text: String,
    pub language: Option<String>,
    pub licence: Option<String>,
    pub level: Option<String>,
    pub kind: Option<String>,
}

impl SearchQuery {
    pub fn is_empty(&self) -> bool {
        self.text.trim().is_empty()
            && self.language.is_none()
            && self.licence.is_none()
            && self.level.is_none()
            && self.kind.is_none()
    }
}

/// One record found.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub record: Cid,
    pub content: Option<Cid>,
    pub title: String,
    pub description: String,
    pub language: String,
    pub licence: String,
    pub authors: Vec<String>,
    pub levels: Vec<String>,
    pub kinds: Vec<String>,
    pub publisher: String,
    pub score: f32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchResults {
    pub hits: Vec<Hit>,
    /// Records matching, of which the first [`RESULTS_SHOWN`] are in `hits`.
    pub total: usize,
}

/// The values each filter can take, from what is indexed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facets {
    pub languages: Vec<String>,
    pub licences: Vec<String>,
    pub levels: Vec<String>,
    pub kinds: Vec<String>,
}

/// State shared between the index handle and its indexer thread.
pub(crate) struct Shared {
    pub(crate) reader: IndexReader,
    pub(crate) fields: Fields,
    pub(crate) documents: AtomicU64,
    pub(crate) facets: RwLock<Facets>,
    /// Set once the index has caught up with the record layer after opening.
    pub(crate) ready: AtomicBool,
    pub(crate) stop: AtomicBool,
    pub(crate) metrics: Metrics,
}

impl Shared {
    /// Makes the latest commit visible to searches and updates the figures.
    pub(crate) fn reload(&self) -> tantivy::Result<()> {
        self.reader.reload()?;
        let searcher = self.reader.searcher();
        let documents = searcher.num_docs();
        self.documents.store(documents, Ordering::Relaxed);
        self.metrics.search_documents.set(documents as i64);
        let mut facets = Facets::default();
        for (field, values) in [
            (self.fields.language, &mut facets.languages),
            (self.fields.licence, &mut facets.licences),
            (self.fields.level, &mut facets.levels),
            (self.fields.kind, &mut facets.kinds),
        ] {
            let mut distinct = BTreeSet::new();
            for segment in searcher.segment_readers() {
                let inverted = segment.inverted_index(field)?;
                let mut terms = inverted.terms().stream()?;
                while terms.advance() {
                    if let Ok(value) = std::str::from_utf8(terms.key()) {
                        distinct.insert(value.to_string());
                    }
                }
            }
            *values = distinct.into_iter().collect();
        }
        *self.facets.write().unwrap_or_else(|e| e.into_inner()) = facets;
        Ok(())
    }
}

/// The search index of one repository, and the thread that keeps it current.
pub struct SearchIndex {
    shared: Arc<Shared>,
    indexer: Option<JoinHandle<()>>,
}

impl SearchIndex {
    /// Opens the index in `dir` (creating or rebuilding it as needed, on the indexer
    /// thread) and starts following `records`.
    pub fn open(
        dir: &Path,
        records: RecordBook<Store>,
        metrics: Metrics,
    ) -> Result<SearchIndex, SearchError> {
        let (schema, fields) = schema();
        let index = match open_index(dir, &schema) {
            Ok(index) => index,
            Err(err) => {
                // Derived data: an index that cannot be opened is built again.
                tracing::warn!(dir = %dir.display(), %err, "search index unreadable; rebuilding it");
                if dir.exists() {
                    std::fs::remove_dir_all(dir).map_err(|source| SearchError::Remove {
                        path: dir.to_path_buf(),
                        source,
                    })?;
                }
                open_index(dir, &schema)?
            }
        };
        index
            .tokenizers()
            .register(tokenizer::NAME, tokenizer::OerTokenizer::default());
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|source| SearchError::Index {
                path: dir.to_path_buf(),
                source,
            })?;
        let shared = Arc::new(Shared {
            reader,
            fields,
            documents: AtomicU64::new(0),
            facets: RwLock::new(Facets::default()),
            ready: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            metrics,
        });
        let _ = shared.reload();
        let indexer = indexer::start(index, records, shared.clone(), dir.to_path_buf())
            .map_err(SearchError::Thread)?;
        Ok(SearchIndex {
            shared,
            indexer: Some(indexer),
        })
    }

    /// Records in the index.
    pub fn documents(&self) -> u64 {
        self.shared.documents.load(Ordering::Relaxed)
    }

    /// Whether the index has caught up with the record layer since it was opened.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Relaxed)
    }

    pub fn facets(&self) -> Facets {
        self.shared
            .facets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The records matching `query`, best first.
    pub fn search(&self, query: &SearchQuery) -> Result<SearchResults, SearchError> {
        let started = Instant::now();
        let fields = self.shared.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for term in tokenizer::terms(&query.text)
            .into_iter()
            .take(MAX_QUERY_TERMS)
        {
            clauses.push((Occur::Must, Box::new(word_query(fields, &term))));
        }
        for (field, value) in [
            (fields.language, &query.language),
            (fields.licence, &query.licence),
            (fields.level, &query.level),
            (fields.kind, &query.kind),
        ] {
            if let Some(value) = value {
                clauses.push((
                    Occur::Must,
                    Box::new(TermQuery::new(
                        Term::from_field_text(field, value),
                        IndexRecordOption::Basic,
                    )),
                ));
            }
        }
        if clauses.is_empty() {
            if query.is_empty() {
                return Ok(SearchResults::default());
            }
            // Text that holds no word at all (punctuation only) finds nothing.
            return Ok(SearchResults::default());
        }
        if query.text.trim().is_empty() {
            clauses.push((Occur::Must, Box::new(AllQuery)));
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.shared.reader.searcher();
        let (top, total) = searcher.search(
            &query,
            &(TopDocs::with_limit(RESULTS_SHOWN).order_by_score(), Count),
        )?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher.doc(address)?;
            if let Some(hit) = to_hit(fields, &doc, score) {
                hits.push(hit);
            }
        }
        self.shared.metrics.search_queries.inc();
        self.shared
            .metrics
            .search_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(SearchResults { hits, total })
    }
}

impl Drop for SearchIndex {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(indexer) = self.indexer.take() {
            let _ = indexer.join();
        }
    }
}

fn open_index(dir: &Path, schema: &Schema) -> Result<Index, SearchError> {
    let wrap = |source| SearchError::Index {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|source| wrap(source.into()))?;
    let directory = tantivy::directory::MmapDirectory::open(dir)
        .map_err(|err| wrap(tantivy::TantivyError::from(err)))?;
    let index = Index::open_or_create(directory, schema.clone()).map_err(wrap)?;
    Ok(index)
}

/// One query word, in any field: exact matches first (titles weigh most), then, for
/// words long enough, matches one edit away.
fn word_query(fields: Fields, term: &tokenizer::Term) -> BooleanQuery {
    let weighted = [
        (fields.title, 4.0),
        (fields.subjects, 2.0),
        (fields.authors, 2.0),
        (fields.teaches, 1.5),
        (fields.description, 1.0),
    ];
    let mut alternatives: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    for (field, weight) in weighted {
        let exact = TermQuery::new(
            Term::from_field_text(field, &term.text),
            IndexRecordOption::WithFreqs,
        );
        alternatives.push((
            Occur::Should,
            Box::new(BoostQuery::new(Box::new(exact), weight)),
        ));
        if !term.unspaced && term.text.chars().count() >= FUZZY_MIN_CHARS {
            let near = FuzzyTermQuery::new(Term::from_field_text(field, &term.text), 1, true);
            alternatives.push((
                Occur::Should,
                Box::new(BoostQuery::new(Box::new(near), weight * 0.5)),
            ));
        }
    }
    BooleanQuery::new(alternatives)
}

fn to_hit(fields: Fields, doc: &TantivyDocument, score: f32) -> Option<Hit> {
    let first = |field: Field| {
        doc.get_first(field)
            .and_then(|value| value.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let all = |field: Field| {
        doc.get_all(field)
            .filter_map(|value| value.as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    Some(Hit {
        record: Cid::try_from(first(fields.record).as_str()).ok()?,
        content: Cid::try_from(first(fields.content).as_str()).ok(),
        title: first(fields.title),
        description: first(fields.snippet),
        language: first(fields.language_tag),
        licence: first(fields.licence),
        authors: all(fields.authors),
        levels: all(fields.level),
        kinds: all(fields.kind),
        publisher: first(fields.publisher),
        score,
    })
}
