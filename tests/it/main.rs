//! The integration test binary: one module per area.

/// Runs each named test function (taking a `cli::Mode`) twice: on a repository the
/// command line opens itself, and through a daemon that holds the repository.
macro_rules! in_both_modes {
    ($($test:ident),* $(,)?) => {
        mod direct {
            $(
                #[test]
                fn $test() {
                    super::$test(crate::cli::Mode::Direct)
                }
            )*
        }
        mod with_daemon {
            $(
                #[test]
                fn $test() {
                    super::$test(crate::cli::Mode::Daemon)
                }
            )*
        }
    };
}

mod api;
mod bitswap;
mod browser;
mod car;
mod cli;
mod concurrency;
mod daemon;
mod dht;
mod exchange;
mod fixture;
mod gateway;
mod gen;
mod gossip;
mod group;
mod http;
mod interop;
mod lan;
mod metrics;
mod network;
mod pinning;
mod publishing;
mod records;
mod reliability;
mod replication;
mod space;
mod store;
mod tools;
mod transport;
mod unixfs_import;
mod unixfs_read;
mod web;
