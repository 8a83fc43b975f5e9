//! UnixFS: files and folders as DAGs of dag-pb and raw blocks, byte for byte as the
//! IPFS reference importer builds them.

pub mod hamt;
pub mod importer;
pub mod pb;
pub mod profile;
pub mod reader;
