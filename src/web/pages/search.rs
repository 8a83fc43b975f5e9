//! `/search`: full-text search across every record on this node, with filters. It
//! works without JavaScript: the form reloads the page.

use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};

use super::{
    error_page, html_page, in_language, language_label, layout, licence_badge, query_value,
    trust_label, Nav,
};
use crate::web::search::{SearchQuery, SearchResults};
use crate::web::App;

/// Longest query text taken, in bytes.
const MAX_QUERY_BYTES: usize = 500;

pub fn render(app: &App, pairs: &[(String, String)]) -> Response {
    let mut text = query_value(pairs, "q").unwrap_or_default();
    if text.len() > MAX_QUERY_BYTES {
        let mut end = MAX_QUERY_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    let query = SearchQuery {
        text,
        language: query_value(pairs, "language"),
        licence: query_value(pairs, "licence"),
        level: query_value(pairs, "level"),
        kind: query_value(pairs, "type"),
    };
    let results = if query.is_empty() {
        None
    } else {
        match app.search.search(&query) {
            Ok(results) => Some(results),
            Err(err) => {
                tracing::warn!(%err, "search failed");
                return error_page(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The search could not be done; see the node's log.",
                );
            }
        }
    };
    let facets = app.search.facets();
    let title = if query.text.is_empty() {
        "Search".to_string()
    } else {
        format!("Search: {}", query.text)
    };
    let main = html! {
        h1 { "Search the resources on this node" }
        form role="search" action="/search" method="get" {
            div class="searchbox" {
                label for="q" { "Words to look for" }
                input id="q" type="search" name="q" value=(query.text) autocomplete="off";
                button type="submit" { "Search" }
            }
            fieldset class="filters" {
                legend { "Only show resources" }
                (filter("language", "In language", &facets.languages, &query.language, language_label))
                (filter("licence", "With licence", &facets.licences, &query.licence, |v| v.to_string()))
                (filter("level", "For level", &facets.levels, &query.level, |v| v.to_string()))
                (filter("type", "Of type", &facets.kinds, &query.kind, |v| v.to_string()))
            }
        }
        @if !app.search.is_ready() {
            p class="note" { "The search index is still being built: results may be incomplete for a moment." }
        }
        @match &results {
            None => p { "Type a few words from a title, a subject or an author, in any language. A small typing mistake is fine." }
            Some(results) => (result_list(app, &query, results))
        }
    };
    html_page(
        StatusCode::OK,
        layout(&title, Nav::Search, &query.text, main),
    )
}

fn filter(
    name: &str,
    label: &str,
    values: &[String],
    chosen: &Option<String>,
    show: impl Fn(&str) -> String,
) -> Markup {
    let id = format!("filter-{name}");
    html! {
        div {
            label for=(id) { (label) }
            select id=(id) name=(name) {
                option value="" { "Any" }
                @for value in values {
                    option value=(value) selected[chosen.as_deref() == Some(value.as_str())] { (show(value)) }
                }
            }
        }
    }
}

fn result_list(app: &App, query: &SearchQuery, results: &SearchResults) -> Markup {
    html! {
        section aria-labelledby="results-h" {
            h2 id="results-h" {
                @match results.total {
                    0 => "No resources found",
                    1 => "1 resource found",
                    n => { (n) " resources found" }
                }
                @if !query.text.is_empty() { " for “" (query.text) "”" }
            }
            @if results.total > results.hits.len() {
                p class="note" { "Showing the best " (results.hits.len()) ". Add words or filters to narrow the search." }
            }
            @if results.total == 0 {
                p { "Try other words, fewer words, or remove a filter." }
            }
            ol class="cards" {
                @for hit in &results.hits {
                    li class="card" {
                        h3 { a href={ "/resources/" (hit.record) } { (in_language(&hit.language, &hit.title)) } }
                        @if !hit.description.is_empty() {
                            p lang=(super::lang::lang_attr(&hit.language)) dir=(super::lang::direction(&hit.language)) {
                                (hit.description)
                            }
                        }
                        ul class="meta" {
                            li { (licence_badge(&hit.licence, None)) }
                            li { "Language: " (language_label(&hit.language)) }
                            @if !hit.authors.is_empty() {
                                li { "By " (in_language(&hit.language, &hit.authors.join(", "))) }
                            }
                            @if !hit.levels.is_empty() { li { "Level: " (hit.levels.join(", ")) } }
                            @if !hit.kinds.is_empty() { li { "Type: " (hit.kinds.join(", ")) } }
                            li { "Publisher: " (trust_label(app.records().is_trusted(&hit.publisher))) }
                        }
                    }
                }
            }
        }
    }
}
