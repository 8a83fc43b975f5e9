//! `/`: the collections on this node, material outside collections, and what to do
//! on a node that holds nothing yet.

use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};

use super::{html_page, layout, licence_badge, short_did, trust_label, Nav};
use crate::block::BlockGet;
use crate::records::{codec, Head, Kind};
use crate::units::human_bytes;
use crate::web::status::StoreSnapshot;
use crate::web::App;

/// A collection as listed on the front page.
struct CollectionCard {
    id: String,
    name: String,
    publisher: String,
    trusted: bool,
    version: Option<u64>,
    entries: Option<u64>,
    published: Option<String>,
    own: bool,
}

pub fn render(app: &App, snapshot: &StoreSnapshot) -> Response {
    let cards: Vec<CollectionCard> = snapshot
        .collections
        .iter()
        .map(|listing| {
            let head = listing.newest.and_then(|(_, head)| {
                let bytes = app.store().get_block(&head).ok()?;
                codec::decode_linked::<Head>(Kind::Head, &bytes).ok()
            });
            CollectionCard {
                id: listing.id.to_string(),
                name: listing.id.name().to_string(),
                publisher: listing.id.publisher_did(),
                trusted: listing.trusted,
                version: listing.newest.map(|(seq, _)| seq),
                entries: head.as_ref().map(|head| head.entry_count),
                published: head.map(|head| head.time),
                own: listing.draft.is_some(),
            }
        })
        .collect();
    let empty = cards.is_empty() && snapshot.pins.is_empty();
    let main = html! {
        h1 { "Learning materials on this node" }
        form role="search" action="/search" method="get" class="searchbox" {
            label for="home-q" { "Search all resources" }
            input id="home-q" type="search" name="q" autocomplete="off";
            button type="submit" { "Search" }
        }
        @if empty {
            (empty_node())
        } @else {
            section aria-labelledby="collections-h" {
                h2 id="collections-h" { "Collections" }
                @if cards.is_empty() {
                    p { "No collections yet. Publish one with " code { "oermesh collection publish" }
                        ", or import one from a USB stick with " code { "oermesh import" } "." }
                } @else {
                    ul class="cards" {
                        @for card in &cards { (collection_card(card)) }
                    }
                }
            }
            (pinned(snapshot))
        }
    };
    html_page(StatusCode::OK, layout("Collections", Nav::Home, "", main))
}

fn collection_card(card: &CollectionCard) -> Markup {
    html! {
        li class="card" {
            h3 { a href={ "/collections/" (card.id) } { (card.name) } }
            ul class="meta" {
                li {
                    @match card.version {
                        Some(version) => { "Version " (version) }
                        None => { "Not published yet" }
                    }
                }
                @if let Some(entries) = card.entries {
                    li { (entries) @if entries == 1 { " resource" } @else { " resources" } }
                }
                @if let Some(published) = &card.published {
                    li { "Published " time datetime=(published) { (published) } }
                }
                li {
                    "Publisher " abbr title=(card.publisher) { (short_did(&card.publisher)) } ": "
                    (trust_label(card.trusted))
                    @if card.own { " (this node's own)" }
                }
            }
        }
    }
}

fn pinned(snapshot: &StoreSnapshot) -> Markup {
    html! {
        section aria-labelledby="pins-h" {
            h2 id="pins-h" { "Everything this node keeps" }
            @if snapshot.pins.is_empty() {
                p { "Nothing is pinned yet. Add files with " code { "oermesh add" } "." }
            } @else {
                table class="stack" {
                    caption class="visually-hidden" { "Pinned items, with the record that describes each" }
                    thead {
                        tr {
                            th scope="col" { "Title" }
                            th scope="col" { "Licence" }
                            th scope="col" { "Publisher" }
                            th scope="col" { "Content" }
                            th scope="col" { "Kept because" }
                        }
                    }
                    tbody {
                        @for (cid, reasons) in &snapshot.pins {
                            tr {
                                @match snapshot.described.get(cid) {
                                    Some(listing) => {
                                        td data-label="Title" {
                                            a href={ "/resources/" (listing.cid) } { (listing.summary.title) }
                                        }
                                        td data-label="Licence" { (licence_badge(&listing.summary.licence, None)) }
                                        td data-label="Publisher" { (trust_label(listing.trusted)) }
                                    }
                                    None => {
                                        td data-label="Title" { span class="note" { "no record" } }
                                        td data-label="Licence" {}
                                        td data-label="Publisher" {}
                                    }
                                }
                                td data-label="Content" { a href={ "/ipfs/" (cid) "/" } { code { (cid) } } }
                                td data-label="Kept because" { (reasons.join(", ")) }
                            }
                        }
                    }
                }
                @if snapshot.pins_total > snapshot.pins.len() {
                    p class="note" {
                        "Showing the first " (snapshot.pins.len()) " of " (snapshot.pins_total) " pinned items."
                    }
                }
                p class="note" {
                    (human_bytes(snapshot.stat.bytes)) " in " (snapshot.stat.blocks) " blocks. "
                    a href="/peers" { "More about this node" }
                }
            }
        }
    }
}

/// What an administrator of an empty node does next.
fn empty_node() -> Markup {
    html! {
        section class="empty" aria-labelledby="empty-h" {
            h2 id="empty-h" { "This node holds no learning materials yet" }
            p { "Whoever runs this server can add some in one of these ways:" }
            ul {
                li { "Add a file with its licence: " code { "oermesh add lesson.pdf --title \"Fractions\" --license CC-BY-4.0 --author \"A. Teacher\"" } }
                li { "Import a collection another school exported to a USB stick: " code { "oermesh import collection.car" } }
                li { "Trust a publisher whose collections other nodes on this network share: " code { "oermesh trust add did:key:…" } }
            }
            p { "Materials appear here as soon as they are added." }
        }
    }
}
