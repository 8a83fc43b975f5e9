//! The set of publishers this node trusts. Trust is only ever reported (`trusted: bool` on
//! results); nothing here follows or fetches anything on its own.

use std::collections::HashSet;

use super::error::Result;
use crate::keys;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedPublishers {
    dids: HashSet<String>,
}

impl TrustedPublishers {
    /// Trusts no one.
    pub fn none() -> TrustedPublishers {
        TrustedPublishers::default()
    }

    /// Trusts the given `did:key` strings; each must be a valid, canonical ed25519 did:key.
    pub fn new<I, S>(dids: I) -> Result<TrustedPublishers>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = HashSet::new();
        for did in dids {
            keys::parse_did_key(did.as_ref())?;
            set.insert(did.as_ref().to_string());
        }
        Ok(TrustedPublishers { dids: set })
    }

    pub fn is_trusted(&self, did: &str) -> bool {
        self.dids.contains(did)
    }

    pub fn len(&self) -> usize {
        self.dids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dids.is_empty()
    }
}
