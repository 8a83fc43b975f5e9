//! The page the gateway shows for a folder without an `index.html`.

use cid::Cid;
use maud::html;

use super::{layout, Nav};
use crate::units::human_bytes;
use crate::unixfs::reader::{DirEntry, EntryKind};
use crate::web::path::{encode_segment, ContentPath};
use crate::web::App;

pub fn directory_listing(
    _app: &App,
    path: &ContentPath,
    cid: &Cid,
    entries: &[DirEntry],
) -> String {
    let shown = if path.segments.is_empty() {
        path.root.to_string()
    } else {
        path.segments.join("/")
    };
    let main = html! {
        h1 { "Folder " span dir="auto" { (shown) } }
        p class="note" { "Content ID " code { (cid) } " · " (entries.len()) " entries" }
        table class="stack" {
            thead {
                tr {
                    th scope="col" { "Name" }
                    th scope="col" { "Size" }
                    th scope="col" { "Content ID" }
                }
            }
            tbody {
                @if !path.segments.is_empty() {
                    tr {
                        td data-label="Name" { a href="../" { "Up one folder" } }
                        td data-label="Size" {}
                        td data-label="Content ID" {}
                    }
                }
                @for entry in entries {
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
    };
    layout(&format!("Folder {shown}"), Nav::None, "", main).into_string()
}
