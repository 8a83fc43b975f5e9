//! oermesh: a peer-to-peer, content-addressed distribution node for Open Educational Resources.

pub mod api;
pub mod bandwidth;
pub mod bitswap;
pub mod block;
pub mod car;
pub mod config;
pub mod daemon;
pub mod dag_pb;
pub mod exchange;
pub mod keys;
pub mod links;
pub mod metrics;
pub mod node;
pub mod pinning;
pub mod progress;
pub mod records;
pub mod repo;
pub mod store;
pub mod transfer;
pub mod units;
pub mod unixfs;
pub mod varint;
pub mod web;
