//! The integration test binary: one module per area.

mod gen;
mod unixfs_import;
