//! The web page: plain HTML from maud templates, one style sheet and one small script
//! built into the binary. No CDN, no web fonts: it works on a school network with no
//! internet. Every value is escaped by the template engine; record text carries the
//! record's own `lang` and `dir`.
//!
//! Accessibility (WCAG 2.2 AA): a skip link, `header`/`nav`/`main`/`footer` landmarks,
//! one `h1` per page with headings in order, labelled form fields, visible focus,
//! contrast of at least 7:1 for text, targets of at least 24 px, layouts that reflow
//! down to 320 px, and trust stated in words, never by colour alone.

mod collection;
mod home;
pub mod lang;
mod listing;
mod node;
mod resource;
mod search;

use std::sync::{Arc, LazyLock};

use axum::extract::{Path, RawQuery, State};
use axum::http::header::{self, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cid::Cid;
use maud::{html, Markup, DOCTYPE};
use sha2::{Digest, Sha256};

use super::App;
use crate::block::BlockGet;
use crate::records::{codec, Kind, Licence, Record};
use crate::unixfs::reader::{self, Entry};

pub use listing::directory_listing;

const STYLE: &str = include_str!("../assets/style.css");
const SCRIPT: &str = include_str!("../assets/app.js");

/// Short content hashes that make the asset URLs change with their content, so the
/// assets themselves can be cached for good.
static STYLE_VERSION: LazyLock<String> = LazyLock::new(|| short_hash(STYLE));
static SCRIPT_VERSION: LazyLock<String> = LazyLock::new(|| short_hash(SCRIPT));

fn short_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The pages' policy: their own style sheet, script, media and frames, nothing from
/// elsewhere, never framed by others.
pub fn page_csp() -> String {
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
     media-src 'self'; frame-src 'self'; object-src 'self'; connect-src 'self'; \
     form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        .to_string()
}

/// Which entry of the main navigation a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Home,
    Search,
    Node,
    None,
}

/// The frame every page shares.
pub fn layout(title: &str, nav: Nav, query: &str, main: Markup) -> Markup {
    let link = |href: &str, label: &str, this: Nav| {
        html! {
            li { a href=(href) aria-current=[(nav == this).then_some("page")] { (label) } }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" dir="ltr" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · oermesh" }
                link rel="stylesheet" href={ "/assets/style.css?v=" (*STYLE_VERSION) };
                script src={ "/assets/app.js?v=" (*SCRIPT_VERSION) } defer {}
            }
            body {
                a class="skip" href="#main" { "Skip to main content" }
                header class="site" {
                    div class="wrap" {
                        a class="brand" href="/" { "oermesh" }
                        nav aria-label="Main" {
                            ul {
                                (link("/", "Collections", Nav::Home))
                                (link("/search", "Search", Nav::Search))
                                (link("/peers", "Peers and replication", Nav::Node))
                            }
                        }
                        @if nav != Nav::Search {
                            form class="quick" role="search" action="/search" method="get" {
                                label class="visually-hidden" for="quick-q" { "Search resources" }
                                input id="quick-q" type="search" name="q" value=(query) autocomplete="off";
                                button type="submit" { "Search" }
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    div class="wrap" { (main) }
                }
                footer {
                    div class="wrap" {
                        p class="note" {
                            "Open educational resources, shared between schools. Served by oermesh "
                            (env!("CARGO_PKG_VERSION")) "."
                        }
                    }
                }
                div id="announce" class="visually-hidden" role="status" aria-live="polite" {}
            }
        }
    }
}

/// An HTML page response with the pages' policy.
pub fn html_page(status: StatusCode, markup: Markup) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response();
    if let Ok(csp) = HeaderValue::from_str(&page_csp()) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

/// An error shown as a page, for people following links.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let reason = status.canonical_reason().unwrap_or("Error");
    html_page(
        status,
        layout(
            reason,
            Nav::None,
            "",
            html! {
                h1 { (reason) }
                p { (message) }
                p { a href="/" { "Back to the collections" } }
            },
        ),
    )
}

pub async fn not_found() -> Response {
    error_page(
        StatusCode::NOT_FOUND,
        "There is no page at this address on this node.",
    )
}

/// Runs page work (sled, block files) on a blocking thread.
async fn blocking(work: impl FnOnce() -> Response + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(work).await {
        Ok(response) => response,
        Err(err) => {
            tracing::warn!(%err, "page task failed");
            error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The page could not be made; see the node's log.",
            )
        }
    }
}

/// Query parameters as pairs, decoded.
fn query_pairs(query: &Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn query_value(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

pub async fn home(State(app): State<Arc<App>>) -> Response {
    let snapshot = match app.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(reason) => return super::status::unavailable(reason),
    };
    blocking(move || home::render(&app, &snapshot)).await
}

pub async fn collection(
    State(app): State<Arc<App>>,
    Path((key, name)): Path<(String, String)>,
    query: RawQuery,
) -> Response {
    let pairs = query_pairs(&query.0);
    let page = query_value(&pairs, "page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1);
    blocking(move || collection::render(&app, &key, &name, page)).await
}

pub async fn resource(State(app): State<Arc<App>>, Path(record): Path<String>) -> Response {
    blocking(move || resource::render(&app, &record)).await
}

pub async fn search(State(app): State<Arc<App>>, query: RawQuery) -> Response {
    let pairs = query_pairs(&query.0);
    blocking(move || search::render(&app, &pairs)).await
}

pub async fn peers(State(app): State<Arc<App>>) -> Response {
    let snapshot = match app.snapshot().await {
        Ok(snapshot) => snapshot,
        Err(reason) => return super::status::unavailable(reason),
    };
    let network = app.network_view().await;
    blocking(move || node::render(&app, &snapshot, network.as_ref())).await
}

/// The style sheet and the script, cached for a year: their URLs change with them.
pub async fn asset(Path(name): Path<String>) -> Response {
    let (content_type, body) = match name.as_str() {
        "style.css" => ("text/css; charset=utf-8", STYLE),
        "app.js" => ("text/javascript; charset=utf-8", SCRIPT),
        _ => return not_found().await,
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

/// A record for display, read without checking its signature again (it was checked
/// when accepted; the resource page checks it anew).
fn load_record(app: &App, cid: &Cid) -> Option<Record> {
    let bytes = app.store().get_block(cid).ok()?;
    codec::decode_linked::<Record>(Kind::Record, &bytes).ok()
}

/// The kind and size of a content root, if it is here.
fn content_entry(app: &App, content: &Cid) -> Option<Entry> {
    reader::stat(app.store(), content).ok()
}

/// A licence as a badge linking to its terms; its SPDX id in the tooltip.
fn licence_badge(id: &str, url: Option<&str>) -> Markup {
    match Licence::parse(id, url) {
        Ok(licence) => html! {
            a class="licence" rel="license" href=(licence.url()) title=(id) { (licence.name()) }
        },
        Err(_) => html! { span class="licence" { (id) } },
    }
}

/// Trust in words, so it reaches screen readers and every display.
fn trust_label(trusted: bool) -> Markup {
    if trusted {
        html! { span class="trust" { "trusted publisher" } }
    } else {
        html! { strong class="trust untrusted" { "not trusted" } }
    }
}

/// Record text in its own language and direction.
fn in_language(tag: &str, text: &str) -> Markup {
    html! { span lang=(lang::lang_attr(tag)) dir=(lang::direction(tag)) { (text) } }
}

fn language_label(tag: &str) -> String {
    match lang::names(tag) {
        Some((english, own)) if english == own => english.to_string(),
        Some((english, own)) => format!("{english} ({own})"),
        None if tag.is_empty() || tag == "und" => "not given".to_string(),
        None => tag.to_string(),
    }
}

/// A publisher's did:key, shortened for the eye; the full key is in the title.
fn short_did(did: &str) -> String {
    let key = did.strip_prefix("did:key:").unwrap_or(did);
    if key.len() > 16 {
        format!("{}…{}", &key[..8], &key[key.len() - 6..])
    } else {
        key.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn licence_badges_link_their_terms() {
        let badge = licence_badge("CC-BY-SA-3.0-IGO", None).into_string();
        assert!(badge.contains("CC BY-SA 3.0 IGO"), "{badge}");
        assert!(
            badge.contains("href=\"https://creativecommons.org/licenses/by-sa/3.0/igo/\""),
            "{badge}"
        );
        let unknown = licence_badge("Mystery", None).into_string();
        assert!(unknown.contains("Mystery") && !unknown.contains("href"));
    }

    #[test]
    fn the_layout_has_landmarks_a_skip_link_and_escapes_text() {
        let page = layout("<T>", Nav::Home, "\"q", html! { h1 { "Hi" } }).into_string();
        assert!(page.contains("<html lang=\"en\" dir=\"ltr\">"));
        assert!(page.find("href=\"#main\"").unwrap() < page.find("<header").unwrap());
        for landmark in [
            "<header",
            "<nav aria-label=\"Main\"",
            "<main id=\"main\"",
            "<footer",
        ] {
            assert!(page.contains(landmark), "{landmark}");
        }
        assert!(page.contains("&lt;T&gt;") && page.contains("value=\"&quot;q\""));
        assert!(page.contains("aria-current=\"page\""));
    }
}
