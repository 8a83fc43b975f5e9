//! The Content-Type of served files: from the file name where it says, else from the
//! first bytes. Responses also carry `X-Content-Type-Options: nosniff`, so browsers
//! use the type given here and never guess their own.

/// Bytes read from the start of a file to decide its type.
pub const SNIFF_BYTES: u64 = 512;

const OCTET_STREAM: &str = "application/octet-stream";

/// The type a file name implies, if its extension is known.
pub fn from_name(name: &str) -> Option<String> {
    let guess = mime_guess::from_path(name).first_raw()?;
    (guess != OCTET_STREAM).then(|| guess.to_string())
}

/// Whether the type from the name still needs the content's first bytes: unknown, or
/// text, whose charset is read off the bytes.
pub fn needs_sniffing(from_name: Option<&str>) -> bool {
    from_name.is_none_or(|t| t.starts_with("text/"))
}

/// The final type: `from_name` if given (with a UTF-8 charset for text that is UTF-8),
/// else what the first bytes look like.
pub fn decide(from_name: Option<String>, head: &[u8]) -> String {
    match from_name {
        Some(text) if text.starts_with("text/") => {
            if looks_utf8(head) {
                format!("{text}; charset=utf-8")
            } else {
                text
            }
        }
        Some(other) => other,
        None => sniff(head),
    }
}

/// What the first bytes of a file look like, after the WHATWG MIME sniffing rules for
/// the common cases: known binary signatures, HTML and SVG markup, plain text.
pub fn sniff(head: &[u8]) -> String {
    let text = trim_start(head);
    if looks_like_html(text) {
        return "text/html; charset=utf-8".into();
    }
    if starts_with_ignore_case(text, b"<svg")
        || (starts_with_ignore_case(text, b"<?xml") && contains(text, b"<svg"))
    {
        return "image/svg+xml".into();
    }
    if starts_with_ignore_case(text, b"<?xml") {
        return "text/xml".into();
    }
    if let Some(kind) = infer::get(head) {
        return kind.mime_type().to_string();
    }
    if head.iter().any(|byte| is_binary_byte(*byte)) {
        return OCTET_STREAM.into();
    }
    if looks_utf8(head) {
        "text/plain; charset=utf-8".into()
    } else {
        "text/plain".into()
    }
}

/// Types a browser would run as a document with scripts of its own.
pub fn is_active_document(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "text/html" | "application/xhtml+xml" | "image/svg+xml" | "text/xml" | "application/xml"
    )
}

/// UTF-8, allowing a character cut off by the end of the sample.
fn looks_utf8(head: &[u8]) -> bool {
    match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(err) => err.error_len().is_none(),
    }
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c'))
        .unwrap_or(bytes.len());
    &bytes[start..]
}

fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes.len() >= prefix.len() && bytes[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

/// The WHATWG "scriptable MIME type" patterns: a known HTML tag (or a comment) at the
/// start, followed by a space or `>`.
fn looks_like_html(text: &[u8]) -> bool {
    const TAGS: &[&[u8]] = &[
        b"<!doctype html",
        b"<html",
        b"<head",
        b"<script",
        b"<iframe",
        b"<h1",
        b"<div",
        b"<font",
        b"<table",
        b"<a",
        b"<style",
        b"<title",
        b"<b",
        b"<body",
        b"<br",
        b"<p",
    ];
    if text.starts_with(b"<!--") {
        return true;
    }
    TAGS.iter().any(|tag| {
        starts_with_ignore_case(text, tag)
            && matches!(
                text.get(tag.len()),
                Some(b' ' | b'>' | b'\t' | b'\n' | b'\r' | b'/')
            )
    })
}

fn is_binary_byte(byte: u8) -> bool {
    matches!(byte, 0x00..=0x08 | 0x0B | 0x0E..=0x1A | 0x1C..=0x1F)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_decide_where_they_can() {
        assert_eq!(from_name("lesson.mp4").as_deref(), Some("video/mp4"));
        assert_eq!(from_name("a.pdf").as_deref(), Some("application/pdf"));
        assert_eq!(from_name("noextension"), None);
        assert_eq!(
            decide(from_name("notes.txt"), "درس".as_bytes()),
            "text/plain; charset=utf-8"
        );
        assert_eq!(decide(from_name("x.png"), b"anything"), "image/png");
    }

    #[test]
    fn content_decides_for_files_without_a_known_name() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), "image/png");
        assert_eq!(sniff(b"%PDF-1.7\n"), "application/pdf");
        assert_eq!(sniff(b"\n  <!DOCTYPE html><p>"), "text/html; charset=utf-8");
        assert_eq!(sniff(b"<P>hello"), "text/html; charset=utf-8");
        assert_eq!(
            sniff(b"<svg xmlns='http://www.w3.org/2000/svg'>"),
            "image/svg+xml"
        );
        assert_eq!(sniff("مرحبا".as_bytes()), "text/plain; charset=utf-8");
        assert_eq!(sniff(b"\x00\x01\x02binary"), "application/octet-stream");
        assert!(is_active_document("text/html; charset=utf-8"));
        assert!(is_active_document("image/svg+xml"));
        assert!(!is_active_document("text/plain"));
    }
}
