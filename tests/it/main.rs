//! The integration test binary: one module per area.

mod car;
mod cli;
mod daemon;
mod gen;
mod interop;
mod publishing;
mod records;
mod reliability;
mod store;
mod tools;
mod unixfs_import;
mod unixfs_read;
