//! The integration test binary: one module per area.

mod car;
mod cli;
mod daemon;
mod gen;
mod publishing;
mod reliability;
mod records;
mod store;
mod unixfs_import;
mod unixfs_read;
