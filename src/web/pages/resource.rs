//! `/resources/{record}`: one resource: a preview, a download, its details, its
//! attribution, where it came from (each signature checked) and who holds it.

use axum::http::StatusCode;
use axum::response::Response;
use cid::Cid;
use maud::{html, Markup};

use super::{
    content_entry, error_page, html_page, in_language, language_label, layout, licence_badge,
    short_did, trust_label, Nav,
};
use crate::block::BlockError;
use crate::records::provenance::NodeStatus;
use crate::records::{ProvenanceNode, RecordError};
use crate::units::human_bytes;
use crate::unixfs::reader::{self, EntryKind};
use crate::web::{mime, App};

/// How the content can be shown in the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preview {
    Video,
    Audio,
    Image,
    Pdf,
    /// Text or HTML, in a sandboxed frame.
    Frame,
    /// A folder with an `index.html`: the site, in a sandboxed frame.
    Site,
    /// A folder without one: a link to its listing.
    Folder,
    None,
}

pub fn render(app: &App, record_text: &str) -> Response {
    let Ok(record_cid) = Cid::try_from(record_text) else {
        return error_page(StatusCode::NOT_FOUND, "This is not a record id (a CID).");
    };
    let view = match app.records().show_record(&record_cid) {
        Ok(view) => view,
        Err(RecordError::Block(BlockError::NotFound(_))) => {
            return error_page(StatusCode::NOT_FOUND, "This node holds no such record.")
        }
        Err(err) => {
            return error_page(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("This record is not valid: {err}"),
            )
        }
    };
    if view.retracted {
        let reason = crate::web::retraction_reason(app, &record_cid)
            .unwrap_or_else(|| "no reason could be read".into());
        return error_page(
            StatusCode::GONE,
            &format!("The publisher withdrew this resource: {reason}"),
        );
    }
    let record = &view.record;
    let content = record.content;
    let entry = content_entry(app, &content);
    let (preview, content_type) = match entry {
        Some(entry) => preview_of(app, &content, entry.kind),
        None => (Preview::None, None),
    };
    let extension = content_type
        .as_deref()
        .and_then(|t| mime_guess::get_mime_extensions_str(t.split(';').next().unwrap_or(t)))
        .and_then(|extensions| extensions.first().copied());
    let stem = file_stem(&record.title);
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    match (entry.map(|e| e.kind), extension) {
        (Some(EntryKind::Directory), _) => query
            .append_pair("format", "car")
            .append_pair("filename", &format!("{stem}.car")),
        (_, Some(extension)) => query
            .append_pair("download", "true")
            .append_pair("filename", &format!("{stem}.{extension}")),
        _ => query
            .append_pair("download", "true")
            .append_pair("filename", &stem),
    };
    let download = format!("/ipfs/{content}?{}", query.finish());
    let language = record.language.as_str();
    let provenance = app.records().provenance(&record_cid);
    let main = html! {
        h1 { (in_language(language, &record.title)) }
        @if let Some(description) = &record.description {
            p lang=(super::lang::lang_attr(language)) dir=(super::lang::direction(language)) { (description) }
        }
        @if !view.trusted {
            p class="untrusted" {
                "This node does not trust this resource's publisher: its content is shown in a sandbox, "
                "where it cannot run scripts."
            }
        }
        section aria-labelledby="preview-h" {
            h2 id="preview-h" { "Preview" }
            (preview_markup(preview, &content, &record.title, &download))
            @if entry.is_some() {
                p {
                    a class="button" href=(download) download {
                        @if preview == Preview::Folder || preview == Preview::Site {
                            "Download all files (CAR archive)"
                        } @else {
                            "Download"
                        }
                    }
                    " "
                    @if let Some(entry) = entry { span class="note" { (human_bytes(entry.size)) } }
                }
            }
        }
        section aria-labelledby="about-h" {
            h2 id="about-h" { "About this resource" }
            dl class="facts" {
                dt { "Licence" }
                dd { (licence_badge(&record.licence, record.licence_url.as_deref())) }
                @if !record.authors.is_empty() {
                    dt { "Authors" }
                    dd {
                        @for (i, author) in record.authors.iter().enumerate() {
                            @if i > 0 { ", " }
                            @match &author.url {
                                Some(url) => a href=(url) { (in_language(language, &author.name)) },
                                None => (in_language(language, &author.name)),
                            }
                        }
                    }
                }
                dt { "Language" }
                dd { (language_label(language)) }
                (list_fact("Level", &record.educational.educational_level))
                (list_fact("Type", &record.educational.learning_resource_type))
                (list_fact("Subjects", &record.educational.subjects))
                (list_fact("Teaches", &record.educational.teaches))
                (list_fact("Use", &record.educational.educational_use))
                @if let Some(age) = &record.educational.typical_age_range {
                    dt { "Ages" } dd { (age) }
                }
                @if let Some(time) = &record.educational.time_required {
                    dt { "Time required" } dd { (time) }
                }
                @if let Some(source) = &record.source {
                    dt { "Source" } dd { a href=(source) { (source) } }
                }
                dt { "Created" }
                dd { time datetime=(record.created) { (record.created) } }
                dt { "Content" }
                dd {
                    code { (content) }
                    @if entry.is_none() { " (not on this node)" }
                }
                dt { "Record" }
                dd { code { (record_cid) } }
            }
        }
        section aria-labelledby="attribution-h" {
            h2 id="attribution-h" { "Attribution" }
            p { "When you reuse this resource, credit it like this:" }
            div class="attribution" {
                p id="attribution" { span dir="auto" { (view.attribution) } }
                button type="button" class="secondary" data-copy="attribution" hidden { "Copy attribution" }
            }
        }
        section aria-labelledby="publisher-h" {
            h2 id="publisher-h" { "Publisher" }
            p {
                code { (record.publisher) } ": " (trust_label(view.trusted))
            }
            @if !view.trusted {
                p { "To trust this publisher, run " code { "oermesh trust add " (record.publisher) } " on the server." }
            }
        }
        section aria-labelledby="provenance-h" {
            h2 id="provenance-h" { "Where it comes from" }
            p { "Each version it adapts, with the check of its publisher's signature:" }
            ul class="tree" { (provenance_node(&provenance)) }
        }
        section aria-labelledby="holders-h" {
            h2 id="holders-h" { "Who holds it" }
            p {
                @if entry.is_some() { "This node holds a complete copy." }
                @else { "This node holds the record but not the content." }
                " Copies on other nodes are listed once they report what they hold."
            }
        }
    };
    html_page(StatusCode::OK, layout(&record.title, Nav::None, "", main))
}

fn list_fact(label: &str, values: &[String]) -> Markup {
    html! {
        @if !values.is_empty() {
            dt { (label) }
            dd { (values.join(", ")) }
        }
    }
}

/// What the content is, from its first bytes, and how it can be previewed.
fn preview_of(app: &App, content: &Cid, kind: EntryKind) -> (Preview, Option<String>) {
    match kind {
        EntryKind::Directory => {
            let site = reader::resolve(app.store(), content, "index.html").is_ok();
            (if site { Preview::Site } else { Preview::Folder }, None)
        }
        EntryKind::Symlink => (Preview::None, None),
        EntryKind::File | EntryKind::Raw => {
            let mut head = Vec::new();
            if reader::read_range(app.store(), content, 0, mime::SNIFF_BYTES, &mut head).is_err() {
                return (Preview::None, None);
            }
            let content_type = mime::sniff(&head);
            let essence = content_type.split(';').next().unwrap_or_default();
            let preview = match essence {
                t if t.starts_with("video/") => Preview::Video,
                t if t.starts_with("audio/") => Preview::Audio,
                t if t.starts_with("image/") => Preview::Image,
                "application/pdf" => Preview::Pdf,
                t if t.starts_with("text/") => Preview::Frame,
                _ => Preview::None,
            };
            (preview, Some(content_type))
        }
    }
}

fn preview_markup(preview: Preview, content: &Cid, title: &str, download: &str) -> Markup {
    let src = format!("/ipfs/{content}");
    let label = format!("Preview of {title}");
    html! {
        div class="preview" {
            @match preview {
                Preview::Video => {
                    video controls preload="metadata" src=(src) aria-label=(label) {
                        p { "This browser cannot play the video here. " a href=(download) { "Download it" } "." }
                    }
                }
                Preview::Audio => {
                    audio controls preload="metadata" src=(src) aria-label=(label) {
                        p { "This browser cannot play the recording here. " a href=(download) { "Download it" } "." }
                    }
                }
                Preview::Image => img src=(src) alt=(label);
                Preview::Pdf => {
                    object data=(src) type="application/pdf" aria-label=(label) {
                        p { "This browser cannot show the PDF here. " a href=(download) { "Download it" } "." }
                    }
                }
                Preview::Frame => iframe src=(src) sandbox="" title=(label) {}
                Preview::Site => iframe src={ (src) "/" } sandbox="" title=(label) {}
                Preview::Folder => {
                    p { "This resource is a folder of files. " a href={ (src) "/" } { "Open the folder" } "." }
                }
                Preview::None => p class="note" { "No preview for this kind of file." }
            }
        }
    }
}

fn provenance_node(node: &ProvenanceNode) -> Markup {
    let status = match &node.status {
        NodeStatus::Verified => "signature verified".to_string(),
        NodeStatus::Invalid(reason) => format!("invalid: {reason}"),
        NodeStatus::Missing(reason) => format!("not available: {reason}"),
        NodeStatus::AlreadyShown => "shown above".to_string(),
        NodeStatus::Cycle => "refers back to a work below it (a cycle)".to_string(),
        NodeStatus::Truncated => "not followed further".to_string(),
    };
    html! {
        li {
            @match &node.title {
                Some(title) if node.status == NodeStatus::Verified => {
                    a href={ "/resources/" (node.cid) } dir="auto" { (title) }
                }
                Some(title) => span dir="auto" { (title) },
                None => code { (node.cid) },
            }
            " — " span class="status" { (status) }
            @if let Some(licence) = &node.licence { ", " (licence_badge(licence, None)) }
            @if let Some(publisher) = &node.publisher {
                ", publisher " abbr title=(publisher) { (short_did(publisher)) } " " (trust_label(node.trusted))
            }
            @if node.retracted { ", " strong { "withdrawn by its publisher" } }
            @if let Some(note) = &node.change_note {
                br; span class="note" { "Changes: " span dir="auto" { (note) } }
            }
            @if !node.parents.is_empty() {
                ul { @for parent in &node.parents { (provenance_node(parent)) } }
            }
        }
    }
}

/// A file name from a title: letters and digits of any script kept, the rest dashes.
fn file_stem(title: &str) -> String {
    let mut stem = String::new();
    for c in title.chars() {
        if c.is_alphanumeric() {
            stem.push(c);
        } else if !stem.ends_with('-') && !stem.is_empty() {
            stem.push('-');
        }
        if stem.len() >= 80 {
            break;
        }
    }
    let stem = stem.trim_end_matches('-');
    if stem.is_empty() {
        "resource".to_string()
    } else {
        stem.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_keep_letters_of_any_script() {
        assert_eq!(file_stem("Fractions: part 1!"), "Fractions-part-1");
        assert_eq!(file_stem("الكسور العشرية"), "الكسور-العشرية");
        assert_eq!(file_stem("???"), "resource");
    }
}
