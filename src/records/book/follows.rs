//! The collections this node follows, in sled so that following survives restarts.
//! What following does is the daemon's business; here is only what is followed.

use super::*;

/// What following a collection keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowMode {
    /// The newest head, its entry list and its records; not the works themselves.
    Metadata,
    /// All of that, and every block of every resource the newest version lists.
    Content,
}

/// A collection this node follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowState {
    #[serde(rename = "m")]
    pub mode: FollowMode,
    /// When following started (RFC 3339).
    #[serde(rename = "t")]
    pub since: String,
}

impl<B: BlockGet + HoldBlocks> RecordBook<B> {
    /// Records that this node follows a collection (or how: a new mode replaces the
    /// old one). Returns the state it had before.
    pub fn follow(&self, id: &CollectionId, state: &FollowState) -> Result<Option<FollowState>> {
        self.follows
            .insert(id.to_string().as_bytes(), to_cbor(state)?)?
            .map(|old| from_cbor(&old))
            .transpose()
    }

    /// Stops following a collection. Returns false when it was not followed.
    pub fn unfollow(&self, id: &CollectionId) -> Result<bool> {
        Ok(self.follows.remove(id.to_string().as_bytes())?.is_some())
    }

    pub fn follow_state(&self, id: &CollectionId) -> Result<Option<FollowState>> {
        self.follows
            .get(id.to_string().as_bytes())?
            .map(|value| from_cbor(&value))
            .transpose()
    }

    /// Every followed collection, by id.
    pub fn follows(&self) -> Result<Vec<(CollectionId, FollowState)>> {
        let mut follows = Vec::new();
        for item in self.follows.iter() {
            let (key, value) = item?;
            let id = std::str::from_utf8(&key)
                .map_err(|_| damaged("followed collection id is not UTF-8"))?
                .parse()?;
            follows.push((id, from_cbor(&value)?));
        }
        Ok(follows)
    }
}
