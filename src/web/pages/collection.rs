//! `/collections/{publisher key}/{name}`: a collection's newest version, its resources
//! with licence, authors, language, level, size and a ready-to-copy attribution.

use axum::http::StatusCode;
use axum::response::Response;
use cid::Cid;
use maud::{html, Markup};
use rayon::prelude::*;

use super::{
    content_entry, error_page, html_page, in_language, language_label, layout, licence_badge,
    load_record, short_did, trust_label, Nav,
};
use crate::records::book::EntryView;
use crate::records::{attribution, CollectionId, Record, RecordError};
use crate::units::human_bytes;
use crate::web::App;

/// Resources per page: a page stays light on a slow link whatever the collection's size.
pub const PAGE_SIZE: usize = 50;

/// One resource of the page, with what was read for it.
pub(super) struct Item {
    pub record_cid: Cid,
    pub title: String,
    pub record: Option<Record>,
    pub size: Option<u64>,
    pub attribution: Option<String>,
    pub trusted: bool,
}

pub fn render(app: &App, key: &str, name: &str, page: usize) -> Response {
    let Ok(id) = format!("{key}/{name}").parse::<CollectionId>() else {
        return error_page(
            StatusCode::NOT_FOUND,
            "This is not a collection id: it should look like z6Mk…/collection-name.",
        );
    };
    let view = match app.records().collection_show(&id) {
        Ok(view) => view,
        Err(RecordError::UnknownCollection(_)) => {
            return error_page(
                StatusCode::NOT_FOUND,
                "This node knows no published version of that collection.",
            )
        }
        Err(err) => {
            tracing::warn!(collection = %id, %err, "collection page failed");
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The collection could not be read; see the node's log.",
            );
        }
    };
    let pages = view.entries.len().div_ceil(PAGE_SIZE).max(1);
    let page = page.clamp(1, pages);
    let shown = &view.entries[(page - 1) * PAGE_SIZE..(page * PAGE_SIZE).min(view.entries.len())];
    let items: Vec<Item> = shown.par_iter().map(|entry| item(app, entry)).collect();
    let base = format!("/collections/{id}");
    let main = html! {
        h1 { (id.name()) }
        dl class="facts" {
            dt { "Publisher" }
            dd { abbr title=(id.publisher_did()) { (short_did(&id.publisher_did())) } ": " (trust_label(view.trusted)) }
            dt { "Version" }
            dd { (view.seq) ", published " time datetime=(view.time) { (view.time) } }
            dt { "Resources" }
            dd {
                (view.entries.len())
                @if view.retracted_hidden > 0 {
                    " (" (view.retracted_hidden) " withdrawn by their publisher, not shown)"
                }
            }
            dt { "Collection id" }
            dd { code { (id) } }
        }
        @if !view.trusted {
            p class="untrusted" {
                "This node does not trust this collection's publisher. Its content is shown in a sandbox. "
                "To trust it, run " code { "oermesh trust add " (id.publisher_did()) } " on the server."
            }
        }
        h2 { "Resources" }
        @if items.is_empty() {
            p { "This version lists no resources." }
        } @else {
            ul class="cards" {
                @for (index, item) in items.iter().enumerate() {
                    (resource_card(item, index))
                }
            }
            @if pages > 1 {
                nav class="pager" aria-label="Pages of this collection" {
                    @if page > 1 {
                        a href={ (base) "?page=" (page - 1) } rel="prev" { "Previous page" }
                    }
                    span { "Page " (page) " of " (pages) }
                    @if page < pages {
                        a href={ (base) "?page=" (page + 1) } rel="next" { "Next page" }
                    }
                }
            }
        }
    };
    html_page(StatusCode::OK, layout(id.name(), Nav::Home, "", main))
}

pub(super) fn item(app: &App, entry: &EntryView) -> Item {
    let record = load_record(app, &entry.entry.record);
    let size = record
        .as_ref()
        .and_then(|record| content_entry(app, &record.content))
        .map(|entry| entry.size);
    let attribution = record.as_ref().map(|record| {
        let parents: Vec<(Cid, Option<Record>)> = record
            .based_on
            .iter()
            .map(|parent| (parent.record, load_record(app, &parent.record)))
            .collect();
        attribution(record, &parents)
    });
    Item {
        record_cid: entry.entry.record,
        title: entry
            .title()
            .map(str::to_string)
            .unwrap_or_else(|| entry.entry.record.to_string()),
        record,
        size,
        attribution,
        trusted: entry.trusted,
    }
}

/// A resource in a list, with its attribution and a button that copies it.
pub(super) fn resource_card(item: &Item, index: usize) -> Markup {
    let language = item
        .record
        .as_ref()
        .map(|record| record.language.as_str())
        .unwrap_or("und");
    let attribution_id = format!("attribution-{index}");
    html! {
        li class="card" {
            h3 {
                a href={ "/resources/" (item.record_cid) } { (in_language(language, &item.title)) }
            }
            @match &item.record {
                Some(record) => {
                    ul class="meta" {
                        li { (licence_badge(&record.licence, record.licence_url.as_deref())) }
                        @if !record.authors.is_empty() {
                            li {
                                "By "
                                @for (i, author) in record.authors.iter().enumerate() {
                                    @if i > 0 { ", " }
                                    (in_language(&record.language, &author.name))
                                }
                            }
                        }
                        li { "Language: " (language_label(&record.language)) }
                        @if !record.educational.educational_level.is_empty() {
                            li { "Level: " (record.educational.educational_level.join(", ")) }
                        }
                        @if !record.educational.learning_resource_type.is_empty() {
                            li { "Type: " (record.educational.learning_resource_type.join(", ")) }
                        }
                        li {
                            @match item.size {
                                Some(size) => { "Size: " (human_bytes(size)) }
                                None => { "Content not on this node" }
                            }
                        }
                        li { "Publisher: " (trust_label(item.trusted)) }
                    }
                    @if let Some(attribution) = &item.attribution {
                        div class="attribution" {
                            p id=(attribution_id) {
                                span class="visually-hidden" { "Attribution: " }
                                // Mixed text: the record's title in its language, the rest in English.
                                span dir="auto" { (attribution) }
                            }
                            button type="button" class="secondary" data-copy=(attribution_id) hidden {
                                "Copy attribution"
                                span class="visually-hidden" { " of " (item.title) }
                            }
                        }
                    }
                }
                None => {
                    p class="note" { "The record of this resource is not on this node yet." }
                }
            }
        }
    }
}
