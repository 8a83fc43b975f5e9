//! Formatting shared by the commands.

use anyhow::{anyhow, Result};
use cid::Cid;

/// An error and its causes on one line, without repeating a cause that the message
/// above it already quotes.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// Sizes for people: 1.5 MiB, 12.0 GiB.
pub fn bytes(count: u64) -> String {
    oermesh::units::human_bytes(count)
}

pub fn parse_cid(text: &str) -> Result<Cid> {
    Cid::try_from(text.trim()).map_err(|err| anyhow!("`{text}` is not a valid CID: {err}"))
}

/// Splits `CID/sub/path` into the CID and the path below it.
pub fn split_cid_path(text: &str) -> Result<(Cid, String)> {
    let text = text.strip_prefix("/ipfs/").unwrap_or(text);
    let (cid, rest) = text.split_once('/').unwrap_or((text, ""));
    Ok((parse_cid(cid)?, rest.to_string()))
}
