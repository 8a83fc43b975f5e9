//! CARv1 archives: a header naming root CIDs, then the blocks, each prefixed by its length
//! and CID.
//!
//! Layout: `varint(len) + DAG-CBOR {roots: [CID, ...], version: 1}`, then sections of
//! `varint(len(CID) + len(data)) + CID bytes + data`. A CAR carries no integrity of its own
//! beyond the CIDs, so [`CarReader`] checks every block against its CID before handing it
//! out, and checks every length against a limit before allocating for it.
//!
//! Choices where the format leaves room:
//! - A header must list at least one root, on writing and on reading.
//! - Blocks are at most [`MAX_BLOCK_BYTES`] (2 MiB, the most Helia's trustless client and
//!   bitswap peers accept); the writer refuses larger blocks so that every CAR it writes
//!   can be read back.
//! - Bytes after the last section that do not form a whole section are an error, reported
//!   as truncation: a stream cut short and trailing garbage look the same.

use std::io::{self, BufReader, Read, Write};

use cid::Cid;
use ipld_core::ipld::Ipld;

use crate::block::{verify, BlockError, BlockGet};
use crate::links::{walk_dag, LinkError};
use crate::varint;

/// The largest header accepted: room for about 25,000 roots.
pub const MAX_HEADER_BYTES: u64 = 1 << 20;
/// The largest block accepted or written.
pub const MAX_BLOCK_BYTES: usize = 2 << 20;
/// Allowance for the CID in a section; a sha2-256 CIDv1 takes 36 bytes and an identity
/// CID at most a few more than its 64-byte digest.
const MAX_CID_BYTES: usize = 128;
/// The largest section accepted.
pub const MAX_SECTION_BYTES: u64 = (MAX_BLOCK_BYTES + MAX_CID_BYTES) as u64;

/// Unsigned varints in CARs are at most 9 bytes (63 bits).
const MAX_VARINT_BYTES: usize = 9;

/// Why a CAR could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CarError {
    #[error("CAR ends inside the {what} starting at byte {offset} (truncated, or trailing bytes)")]
    Truncated { what: &'static str, offset: u64 },
    #[error("malformed varint at byte {offset}")]
    BadVarint { offset: u64 },
    #[error("CAR header is {len} bytes, above the limit of {limit}")]
    HeaderTooLarge { len: u64, limit: u64 },
    #[error("CAR header is invalid: {0}")]
    BadHeader(String),
    #[error("CAR version {0} is not supported (only version 1 is)")]
    UnsupportedVersion(i128),
    #[error("CAR header lists no roots")]
    NoRoots,
    #[error("section at byte {offset} is {len} bytes, above the limit of {limit}")]
    SectionTooLarge { offset: u64, len: u64, limit: u64 },
    #[error("section at byte {offset} does not start with a valid CID")]
    BadCid { offset: u64 },
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Links(Box<LinkError>),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<LinkError> for CarError {
    fn from(err: LinkError) -> Self {
        CarError::Links(Box::new(err))
    }
}

/// Writes a CARv1 stream. Callers that write to a file should pass a buffered writer.
pub struct CarWriter<W: Write> {
    out: W,
}

impl<W: Write> CarWriter<W> {
    /// Starts a CAR by writing its header.
    pub fn new(mut out: W, roots: &[Cid]) -> Result<Self, CarError> {
        if roots.is_empty() {
            return Err(CarError::NoRoots);
        }
        // Field order matters only for readability: the encoder sorts map keys into
        // DAG-CBOR's canonical order ("roots" before "version").
        #[derive(serde::Serialize)]
        struct Header<'a> {
            roots: &'a [Cid],
            version: u64,
        }
        let header = serde_ipld_dagcbor::to_vec(&Header { roots, version: 1 })
            .map_err(|err| CarError::BadHeader(err.to_string()))?;
        if header.len() as u64 > MAX_HEADER_BYTES {
            return Err(CarError::HeaderTooLarge {
                len: header.len() as u64,
                limit: MAX_HEADER_BYTES,
            });
        }
        let mut prefix = Vec::with_capacity(MAX_VARINT_BYTES);
        varint::put(&mut prefix, header.len() as u64);
        out.write_all(&prefix)?;
        out.write_all(&header)?;
        Ok(CarWriter { out })
    }

    /// Appends one block. The caller vouches that `data` is what `cid` names; readers
    /// will check.
    pub fn write_block(&mut self, cid: &Cid, data: &[u8]) -> Result<(), CarError> {
        if data.len() > MAX_BLOCK_BYTES {
            return Err(BlockError::TooLarge {
                cid: *cid,
                size: data.len(),
                limit: MAX_BLOCK_BYTES,
            }
            .into());
        }
        let cid_bytes = cid.to_bytes();
        let mut prefix = Vec::with_capacity(MAX_VARINT_BYTES + cid_bytes.len());
        varint::put(&mut prefix, (cid_bytes.len() + data.len()) as u64);
        prefix.extend_from_slice(&cid_bytes);
        self.out.write_all(&prefix)?;
        self.out.write_all(data)?;
        Ok(())
    }

    /// Flushes and hands back the underlying writer.
    pub fn finish(mut self) -> Result<W, CarError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Reads a CARv1 stream block by block, verifying each block against its CID.
pub struct CarReader<R: Read> {
    input: BufReader<R>,
    roots: Vec<Cid>,
    /// Bytes consumed so far, for error messages.
    offset: u64,
    /// Set after the end or the first error: nothing more is read.
    finished: bool,
}

impl<R: Read> CarReader<R> {
    /// Reads and checks the header.
    pub fn new(input: R) -> Result<Self, CarError> {
        let mut reader = CarReader {
            input: BufReader::new(input),
            roots: Vec::new(),
            offset: 0,
            finished: false,
        };
        let len = reader
            .read_varint("header length")?
            .ok_or(CarError::Truncated {
                what: "header length",
                offset: 0,
            })?;
        if len == 0 {
            return Err(CarError::BadHeader("zero-length header".into()));
        }
        if len > MAX_HEADER_BYTES {
            return Err(CarError::HeaderTooLarge {
                len,
                limit: MAX_HEADER_BYTES,
            });
        }
        let start = reader.offset;
        let header = reader.read_exact_vec(len as usize, "header", start)?;
        reader.roots = decode_header(&header)?;
        Ok(reader)
    }

    /// The root CIDs the header names (at least one).
    pub fn roots(&self) -> &[Cid] {
        &self.roots
    }

    /// The next verified block, `None` at a clean end. After an error, returns `None`.
    pub fn next_block(&mut self) -> Option<Result<(Cid, Vec<u8>), CarError>> {
        if self.finished {
            return None;
        }
        match self.read_section() {
            Ok(Some(block)) => Some(Ok(block)),
            Ok(None) => {
                self.finished = true;
                None
            }
            Err(err) => {
                self.finished = true;
                Some(Err(err))
            }
        }
    }

    fn read_section(&mut self) -> Result<Option<(Cid, Vec<u8>)>, CarError> {
        let start = self.offset;
        let Some(len) = self.read_varint("section length")? else {
            return Ok(None);
        };
        if len > MAX_SECTION_BYTES {
            return Err(CarError::SectionTooLarge {
                offset: start,
                len,
                limit: MAX_SECTION_BYTES,
            });
        }
        let mut section = self.read_exact_vec(len as usize, "section", start)?;
        let mut rest = section.as_slice();
        let cid = Cid::read_bytes(&mut rest).map_err(|_| CarError::BadCid { offset: start })?;
        let cid_len = section.len() - rest.len();
        if rest.len() > MAX_BLOCK_BYTES {
            return Err(BlockError::TooLarge {
                cid,
                size: rest.len(),
                limit: MAX_BLOCK_BYTES,
            }
            .into());
        }
        section.drain(..cid_len);
        verify(&cid, &section)?;
        Ok(Some((cid, section)))
    }

    /// Reads an unsigned varint; `None` if the input ends before its first byte.
    fn read_varint(&mut self, what: &'static str) -> Result<Option<u64>, CarError> {
        let start = self.offset;
        let mut decoder = varint::Decoder::new(MAX_VARINT_BYTES);
        loop {
            let mut byte = [0u8; 1];
            if let Err(err) = self.input.read_exact(&mut byte) {
                return match err.kind() {
                    io::ErrorKind::UnexpectedEof if self.offset == start => Ok(None),
                    io::ErrorKind::UnexpectedEof => Err(CarError::Truncated {
                        what,
                        offset: start,
                    }),
                    _ => Err(err.into()),
                };
            }
            self.offset += 1;
            match decoder.push(byte[0]) {
                Ok(Some(value)) => return Ok(Some(value)),
                Ok(None) => {}
                Err(_) => return Err(CarError::BadVarint { offset: start }),
            }
        }
    }

    fn read_exact_vec(
        &mut self,
        len: usize,
        what: &'static str,
        start: u64,
    ) -> Result<Vec<u8>, CarError> {
        let mut buffer = vec![0u8; len];
        self.input
            .read_exact(&mut buffer)
            .map_err(|err| match err.kind() {
                io::ErrorKind::UnexpectedEof => CarError::Truncated {
                    what,
                    offset: start,
                },
                _ => err.into(),
            })?;
        self.offset += len as u64;
        Ok(buffer)
    }
}

impl<R: Read> Iterator for CarReader<R> {
    type Item = Result<(Cid, Vec<u8>), CarError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_block()
    }
}

fn decode_header(bytes: &[u8]) -> Result<Vec<Cid>, CarError> {
    let value: Ipld = serde_ipld_dagcbor::from_slice(bytes)
        .map_err(|err| CarError::BadHeader(err.to_string()))?;
    let Ipld::Map(fields) = value else {
        return Err(CarError::BadHeader("not a map".into()));
    };
    // The version comes first so that a CARv2 pragma (a map with only `version: 2`)
    // reports its version rather than a missing roots field.
    match fields.get("version") {
        Some(Ipld::Integer(1)) => {}
        Some(Ipld::Integer(other)) => return Err(CarError::UnsupportedVersion(*other)),
        Some(_) => return Err(CarError::BadHeader("version is not an integer".into())),
        None => return Err(CarError::BadHeader("no version".into())),
    }
    let Some(Ipld::List(items)) = fields.get("roots") else {
        return Err(CarError::BadHeader("roots missing or not a list".into()));
    };
    let roots = items
        .iter()
        .map(|item| match item {
            Ipld::Link(cid) => Ok(*cid),
            _ => Err(CarError::BadHeader("a root is not a CID".into())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if roots.is_empty() {
        return Err(CarError::NoRoots);
    }
    Ok(roots)
}

/// What [`export_dag`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportSummary {
    pub blocks: u64,
    pub bytes: u64,
}

/// Writes every block reachable from `roots` once, depth first with roots first, as a
/// CARv1 to `out`. Blocks are read through `store`, so a missing or corrupt block aborts
/// the export with an error (the output is then incomplete and must be discarded).
pub fn export_dag<B, W>(store: &B, roots: &[Cid], out: W) -> Result<ExportSummary, CarError>
where
    B: BlockGet + ?Sized,
    W: Write,
{
    let mut writer = CarWriter::new(out, roots)?;
    let mut bytes = 0u64;
    let blocks = walk_dag(store, roots, |cid, data| {
        bytes += data.len() as u64;
        writer.write_block(cid, data)
    })?;
    writer.finish()?;
    Ok(ExportSummary { blocks, bytes })
}
