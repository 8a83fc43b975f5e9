//! Checking request paths before anything is looked up.
//!
//! Every request path is checked in its raw, percent-encoded form, so that no encoding
//! trick reaches a handler: `..` and `.` segments (also as `%2e%2e`, `.%2E` and the
//! like), encoded slashes (`%2F`), backslashes (raw or `%5C`), NUL and other control
//! characters, malformed percent-encoding, text that is not UTF-8, empty segments and
//! paths longer than [`MAX_PATH_BYTES`] are all refused with 400.

use cid::Cid;
use percent_encoding::percent_decode_str;

use crate::block::hash_code;

/// The longest request path accepted, in bytes as sent.
pub const MAX_PATH_BYTES: usize = 4096;

/// Why a path was refused; the text is shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadPath(pub String);

fn bad(reason: impl Into<String>) -> BadPath {
    BadPath(reason.into())
}

/// Checks a raw request path and returns its decoded segments (the empty string before
/// the first `/` is not one of them). A trailing `/` gives no empty last segment; it is
/// reported by [`has_trailing_slash`].
pub fn decode_path(raw: &str) -> Result<Vec<String>, BadPath> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(bad(format!(
            "the path is longer than {MAX_PATH_BYTES} bytes"
        )));
    }
    let Some(relative) = raw.strip_prefix('/') else {
        return Err(bad("the path does not start with /"));
    };
    if relative.is_empty() {
        return Ok(Vec::new());
    }
    let relative = relative.strip_suffix('/').unwrap_or(relative);
    relative.split('/').map(decode_segment).collect()
}

pub fn has_trailing_slash(raw: &str) -> bool {
    raw.len() > 1 && raw.ends_with('/')
}

fn decode_segment(raw: &str) -> Result<String, BadPath> {
    if raw.is_empty() {
        return Err(bad("the path has an empty segment (//)"));
    }
    if raw.contains('\\') {
        return Err(bad("the path contains a backslash"));
    }
    let bytes = raw.as_bytes();
    for (index, byte) in bytes.iter().enumerate() {
        if *byte == b'%' {
            let hex = bytes
                .get(index + 1..index + 3)
                .ok_or_else(|| bad("the path has a % that is not followed by two hex digits"))?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(bad(
                    "the path has a % that is not followed by two hex digits",
                ));
            }
        }
    }
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| bad("the path is not UTF-8 text"))?;
    if decoded == "." || decoded == ".." {
        return Err(bad("the path has a . or .. segment"));
    }
    if decoded.contains('/') {
        return Err(bad("the path has an encoded slash (%2F)"));
    }
    if decoded.contains('\\') {
        return Err(bad("the path has an encoded backslash (%5C)"));
    }
    if decoded.chars().any(char::is_control) {
        return Err(bad("the path has a NUL or another control character"));
    }
    Ok(decoded.into_owned())
}

/// A parsed `/ipfs/{cid}[/{path}]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentPath {
    pub root: Cid,
    /// Decoded segments below the root.
    pub segments: Vec<String>,
    pub trailing_slash: bool,
}

impl ContentPath {
    /// Parses a raw request path that starts with `/ipfs`.
    pub fn parse(raw: &str) -> Result<ContentPath, BadPath> {
        let mut segments = decode_path(raw)?.into_iter();
        if segments.next().as_deref() != Some("ipfs") {
            return Err(bad("not an /ipfs/ path"));
        }
        let cid_text = segments
            .next()
            .ok_or_else(|| bad("the path names no CID: use /ipfs/{cid}"))?;
        let root = Cid::try_from(cid_text.as_str())
            .map_err(|err| bad(format!("{cid_text:?} is not a valid CID: {err}")))?;
        let hash = root.hash().code();
        if hash != hash_code::SHA2_256 && hash != hash_code::IDENTITY {
            return Err(bad(format!(
                "CID {root} uses hash function 0x{hash:x}, which this node cannot check"
            )));
        }
        Ok(ContentPath {
            root,
            segments: segments.collect(),
            trailing_slash: has_trailing_slash(raw),
        })
    }

    /// The path below the root, `/`-joined (empty for the root itself).
    pub fn sub_path(&self) -> String {
        self.segments.join("/")
    }

    /// The canonical URL path, each segment percent-encoded again.
    pub fn url_path(&self) -> String {
        let mut path = format!("/ipfs/{}", self.root);
        for segment in &self.segments {
            path.push('/');
            path.push_str(&encode_segment(segment));
        }
        if self.trailing_slash {
            path.push('/');
        }
        path
    }
}

/// Percent-encodes one path segment for use in a URL.
pub fn encode_segment(segment: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
    /// Everything but unreserved characters and a few harmless sub-delimiters.
    const SEGMENT: &AsciiSet = &CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'%')
        .add(b'/')
        .add(b'<')
        .add(b'>')
        .add(b'?')
        .add(b'\\')
        .add(b'^')
        .add(b'`')
        .add(b'{')
        .add(b'|')
        .add(b'}')
        .add(b'\'');
    utf8_percent_encode(segment, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e";

    #[test]
    fn good_paths_decode_to_their_segments() {
        assert_eq!(decode_path("/").unwrap(), Vec::<String>::new());
        assert_eq!(decode_path("/a/b%20c/").unwrap(), vec!["a", "b c"]);
        assert_eq!(
            decode_path("/ipfs/x/%D8%AF%D8%B1%D8%B3").unwrap(),
            vec!["ipfs", "x", "درس"]
        );
        let parsed = ContentPath::parse(&format!("/ipfs/{HELLO}/a/b.txt")).unwrap();
        assert_eq!(parsed.root.to_string(), HELLO);
        assert_eq!(parsed.sub_path(), "a/b.txt");
        assert!(!parsed.trailing_slash);
        assert!(
            ContentPath::parse(&format!("/ipfs/{HELLO}/"))
                .unwrap()
                .trailing_slash
        );
    }

    #[test]
    fn every_traversal_and_encoding_trick_is_refused() {
        let long = format!("/{}", "a".repeat(MAX_PATH_BYTES));
        for bad_path in [
            "/a/../b",
            "/a/./b",
            "/a/%2e%2e/b",
            "/a/%2E%2E/b",
            "/a/.%2e/b",
            "/a/%2e/b",
            "/a/b%2fc",
            "/a/b%2Fc",
            "/a\\b",
            "/a/b%5cc",
            "/a/b%5Cc",
            "/a/b%00c",
            "/a/b%0ac",
            "/a//b",
            "/a/%zz",
            "/a/%4",
            "/a/%ff%fe",
            "relative",
            long.as_str(),
        ] {
            assert!(decode_path(bad_path).is_err(), "{bad_path:?} was accepted");
        }
    }

    #[test]
    fn ipfs_paths_need_a_valid_cid_with_a_hash_this_node_checks() {
        for bad_path in ["/ipfs", "/ipfs/", "/ipfs/not-a-cid", "/ipns/x"] {
            assert!(ContentPath::parse(bad_path).is_err(), "{bad_path}");
        }
        // blake2b-256 (0xb220): a valid CID whose hash the store cannot verify.
        let blake = Cid::new_v1(0x55, multihash::Multihash::wrap(0xb220, &[7; 32]).unwrap());
        let err = ContentPath::parse(&format!("/ipfs/{blake}")).unwrap_err();
        assert!(err.0.contains("hash function"), "{err}");
    }

    #[test]
    fn segments_survive_a_round_trip_through_the_url() {
        let parsed = ContentPath::parse(&format!("/ipfs/{HELLO}/a%20b/%D8%AF%3F")).unwrap();
        assert_eq!(parsed.segments, vec!["a b", "د?"]);
        assert_eq!(
            ContentPath::parse(&parsed.url_path()).unwrap().segments,
            parsed.segments
        );
    }
}
