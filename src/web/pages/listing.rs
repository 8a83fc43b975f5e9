//! The page the gateway shows for a folder without an `index.html`: one page of its
//! entries at a time, with a link to the next.

use cid::Cid;
use maud::html;

use super::{layout, Nav};
use crate::units::human_bytes;
use crate::unixfs::reader::{DirPage, EntryKind};
use crate::web::path::{encode_segment, ContentPath};
use crate::web::App;

/// `page` of the folder `cid`; `later` when it is not the first page.
pub fn directory_listing(
    _app: &App,
    path: &ContentPath,
    cid: &Cid,
    page: &DirPage,
    later: bool,
) -> String {
    let shown = if path.segments.is_empty() {
        path.root.to_string()
    } else {
        path.segments.join("/")
    };
    let next = page.next.as_deref().map(|name| {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("after", name)
            .finish();
        format!("./?{query}")
    });
    let main = html! {
        h1 { "Folder " span dir="auto" { (shown) } }
        p class="note" {
            "Content ID " code { (cid) }
            @if let Some(total) = page.total {
                " · " (total) " entries"
            } @else if page.sharded {
                " · a large folder, shown in its storage order"
            }
        }
        table class="stack" {
            thead {
                tr {
                    th scope="col" { "Name" }
                    th scope="col" { "Size" }
                    th scope="col" { "Content ID" }
                }
            }
            tbody {
                @if !path.segments.is_empty() && !later {
                    tr {
                        td data-label="Name" { a href="../" { "Up one folder" } }
                        td data-label="Size" {}
                        td data-label="Content ID" {}
                    }
                }
                @for entry in &page.entries {
                    tr {
                        td data-label="Name" {
                            @if entry.kind == EntryKind::Directory {
                                a href={ "./" (encode_segment(&entry.name)) "/" } dir="auto" { (entry.name) "/" }
                            } @else {
                                a href={ "./" (encode_segment(&entry.name)) } dir="auto" { (entry.name) }
                            }
                        }
                        td data-label="Size" { (human_bytes(entry.size)) }
                        td data-label="Content ID" { a href={ "/ipfs/" (entry.cid) } { code { (entry.cid) } } }
                    }
                }
            }
        }
        @if later || next.is_some() {
            nav class="pager" aria-label="Pages of this folder" {
                @if later {
                    a href="./" { "First page" }
                }
                @if let Some(next) = &next {
                    a href=(next) rel="next" { "Next page" }
                }
            }
        }
    };
    layout(&format!("Folder {shown}"), Nav::None, "", main).into_string()
}
