//! `/peers`: this node, the peers it is connected to, and how much of each collection
//! it holds. The figures refresh themselves every few seconds (the page's script
//! fetches the page again); a button pauses that.

use axum::http::StatusCode;
use axum::response::Response;
use libp2p::Multiaddr;
use maud::{html, Markup};

use super::{html_page, layout, short_did, trust_label, Nav};
use crate::units::human_bytes;
use crate::web::status::{NetworkView, StoreSnapshot};
use crate::web::App;

/// Seconds between refreshes of the figures.
const REFRESH_SECONDS: u32 = 10;

/// How much of a collection's newest version this node holds.
struct Holding {
    id: String,
    name: String,
    version: Option<u64>,
    trusted: bool,
    resources: usize,
    held: usize,
}

pub fn render(app: &App, snapshot: &StoreSnapshot, network: Option<&NetworkView>) -> Response {
    let holdings: Vec<Holding> = snapshot
        .collections
        .iter()
        .map(|listing| {
            let (resources, held) = match app.records().collection_show(&listing.id) {
                Ok(view) => {
                    let held = view
                        .entries
                        .iter()
                        .filter(|entry| {
                            entry
                                .summary
                                .as_ref()
                                .is_some_and(|s| app.store().has(&s.content).unwrap_or(false))
                        })
                        .count();
                    (view.entries.len(), held)
                }
                Err(_) => (0, 0),
            };
            Holding {
                id: listing.id.to_string(),
                name: listing.id.name().to_string(),
                version: listing.newest.map(|(seq, _)| seq),
                trusted: listing.trusted,
                resources,
                held,
            }
        })
        .collect();
    let main = html! {
        h1 { "Peers and replication" }
        p {
            button type="button" id="live-toggle" class="secondary" hidden { "Pause updates" }
        }
        div id="live" data-refresh-seconds=(REFRESH_SECONDS) {
            (identity(app, network))
            (storage(snapshot))
            (peers(network))
            (replication(&holdings))
        }
    };
    html_page(
        StatusCode::OK,
        layout("Peers and replication", Nav::Node, "", main),
    )
}

fn addresses(addrs: &[Multiaddr]) -> Markup {
    html! {
        @for (i, addr) in addrs.iter().enumerate() {
            @if i > 0 { br; }
            code { (addr) }
        }
    }
}

fn identity(app: &App, network: Option<&NetworkView>) -> Markup {
    html! {
        section aria-labelledby="node-h" {
            h2 id="node-h" { "This node" }
            dl class="facts" {
                dt { "Peer ID" }
                dd { code { (app.peer_id) } }
                dt { "Listening on" }
                dd {
                    @match network {
                        Some((_, listen)) if !listen.is_empty() => (addresses(listen)),
                        Some(_) => "No peer connections accepted (no listen address)",
                        None => "Unknown: the network part of the node did not answer",
                    }
                }
                dt { "Software" }
                dd { "oermesh " (env!("CARGO_PKG_VERSION")) }
            }
        }
    }
}

fn storage(snapshot: &StoreSnapshot) -> Markup {
    html! {
        section aria-labelledby="store-h" {
            h2 id="store-h" { "Storage" }
            dl class="facts" {
                dt { "Pinned items" } dd { (snapshot.pins_total) }
                dt { "Blocks" } dd { (snapshot.stat.blocks) }
                dt { "Content size" } dd { (human_bytes(snapshot.stat.bytes)) }
                dt { "Disk used" } dd { (human_bytes(snapshot.stat.disk_bytes)) }
            }
        }
    }
}

fn peers(network: Option<&NetworkView>) -> Markup {
    html! {
        section aria-labelledby="peers-h" {
            h2 id="peers-h" { "Connected peers" }
            @match network {
                None => p { "Unknown: the network part of the node did not answer." },
                Some((peers, _)) if peers.is_empty() => p {
                    "No peers connected. Other oermesh nodes on this network are found automatically, "
                    "or can be listed in " code { "static_peers" } " in the node's " code { "config.toml" } "."
                },
                Some((peers, _)) => {
                    p { (peers.len()) @if peers.len() == 1 { " peer connected." } @else { " peers connected." } }
                    table class="stack" {
                        thead {
                            tr {
                                th scope="col" { "Peer ID" }
                                th scope="col" { "Address" }
                                th scope="col" { "Software" }
                                th scope="col" { "Round trip" }
                            }
                        }
                        tbody {
                            @for peer in peers {
                                tr {
                                    td data-label="Peer ID" { code { (peer.peer_id) } }
                                    td data-label="Address" { (addresses(&peer.addresses)) }
                                    td data-label="Software" { (peer.agent_version.as_deref().unwrap_or("unknown")) }
                                    td data-label="Round trip" {
                                        @match peer.rtt {
                                            Some(rtt) => { (rtt.as_millis()) " ms" }
                                            None => "not measured yet",
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn replication(holdings: &[Holding]) -> Markup {
    html! {
        section aria-labelledby="replication-h" {
            h2 id="replication-h" { "Collections held here" }
            @if holdings.is_empty() {
                p { "This node holds no collection yet." }
            } @else {
                table class="stack" {
                    thead {
                        tr {
                            th scope="col" { "Collection" }
                            th scope="col" { "Version" }
                            th scope="col" { "Publisher" }
                            th scope="col" { "Resources held here" }
                        }
                    }
                    tbody {
                        @for holding in holdings {
                            tr {
                                td data-label="Collection" {
                                    a href={ "/collections/" (holding.id) } { (holding.name) }
                                    br; span class="note" { (short_did(&holding.id)) }
                                }
                                td data-label="Version" {
                                    @match holding.version { Some(v) => (v), None => "not published" }
                                }
                                td data-label="Publisher" { (trust_label(holding.trusted)) }
                                td data-label="Resources held here" {
                                    (holding.held) " of " (holding.resources)
                                    @if holding.resources > 0 {
                                        " (" (holding.held * 100 / holding.resources) "%)"
                                        progress max=(holding.resources) value=(holding.held) aria-hidden="true" {}
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
