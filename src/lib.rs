//! oermesh: a peer-to-peer, content-addressed distribution node for Open Educational Resources.

pub mod block;
pub mod keys;
pub mod records;
