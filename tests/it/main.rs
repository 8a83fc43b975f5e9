//! The integration test binary: one module per area.

mod gen;
mod store;
mod unixfs_import;
