//! This node's own collections: drafts, entry edits and publishing, one at a time per
//! draft.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use super::*;

/// Locks of the drafts being edited or published, shared by every book over the same
/// database in this process: a book is opened per command or request, and the lock must
/// span them all. Keyed by database id and draft name.
type DraftLocks = HashMap<(u128, String), Weak<Mutex<()>>>;
static DRAFT_LOCKS: LazyLock<Mutex<DraftLocks>> = LazyLock::new(Mutex::default);

impl<B: BlockGet + HoldBlocks> RecordBook<B> {
    /// The lock of one draft: held while the draft is edited or published.
    fn draft_lock(&self, name: &str) -> Arc<Mutex<()>> {
        let mut locks = DRAFT_LOCKS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.retain(|_, lock| lock.strong_count() > 0);
        let key = (self.database_id, name.to_string());
        if let Some(lock) = locks.get(&key).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(Mutex::new(()));
        locks.insert(key, Arc::downgrade(&lock));
        lock
    }

    fn draft(&self, name: &str) -> Result<DraftState> {
        let value = self
            .drafts
            .get(name.as_bytes())?
            .ok_or_else(|| RecordError::NoSuchDraft(name.to_string()))?;
        from_cbor(&value)
    }

    fn save_draft(&self, name: &str, state: &DraftState) -> Result<()> {
        self.drafts.insert(name.as_bytes(), to_cbor(state)?)?;
        Ok(())
    }

    /// Starts a new, empty local collection published by `publisher`, whose signing key is
    /// `key_name` in the key directory.
    pub fn create_collection(
        &self,
        name: &str,
        key_name: &str,
        publisher: &VerifyingKey,
    ) -> Result<CollectionId> {
        let id = CollectionId::new(*publisher, name)?;
        keys::validate_key_name(key_name)?;
        let hold = self.blocks.hold();
        let empty = entries::write_empty(&hold)?;
        let state = DraftState {
            key_name: key_name.to_string(),
            publisher: keys::did_key(publisher),
            entries: empty,
            entry_count: 0,
            published_seq: 0,
            published_head: None,
        };
        let created = self.drafts.compare_and_swap(
            name.as_bytes(),
            None as Option<&[u8]>,
            Some(to_cbor(&state)?),
        )?;
        created.map_err(|_| RecordError::DraftExists(name.to_string()))?;
        Ok(id)
    }

    /// This node's own collections.
    pub fn drafts(&self) -> Result<Vec<DraftInfo>> {
        let mut drafts = Vec::new();
        for item in self.drafts.iter() {
            let (key, value) = item?;
            let name =
                String::from_utf8(key.to_vec()).map_err(|_| damaged("draft name is not UTF-8"))?;
            let state: DraftState = from_cbor(&value)?;
            drafts.push(DraftInfo {
                id: CollectionId::from_did(&state.publisher, &name)?,
                name,
                state,
            });
        }
        Ok(drafts)
    }

    pub fn draft_info(&self, name: &str) -> Result<DraftInfo> {
        let state = self.draft(name)?;
        Ok(DraftInfo {
            id: CollectionId::from_did(&state.publisher, name)?,
            name: name.to_string(),
            state,
        })
    }

    /// Adds entries (replacing any with the same record CID). Only touched chunks are rewritten.
    pub fn add_entries(&self, name: &str, additions: Vec<Entry>) -> Result<EditOutcome> {
        self.edit_entries(name, additions, &[])
    }

    /// Removes the entry for `record`; returns whether it was there.
    pub fn remove_entry(&self, name: &str, record: &Cid) -> Result<bool> {
        Ok(self
            .edit_entries(name, Vec::new(), std::slice::from_ref(record))?
            .removed
            > 0)
    }

    fn edit_entries(
        &self,
        name: &str,
        additions: Vec<Entry>,
        removals: &[Cid],
    ) -> Result<EditOutcome> {
        let lock = self.draft_lock(name);
        let _editing = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let hold = self.blocks.hold();
        let mut state = self.draft(name)?;
        let outcome = entries::edit(&hold, &state.entries, additions, removals)?;
        state.entries = outcome.root;
        state.entry_count = outcome.count;
        self.save_draft(name, &state)?;
        Ok(outcome)
    }

    /// The current (possibly unpublished) entries of a local collection.
    pub fn draft_entries(&self, name: &str) -> Result<Vec<Entry>> {
        entries::read_all(&self.blocks, &self.draft(name)?.entries)
    }

    /// Signs the next head of a local collection over its current entry list.
    ///
    /// The new seq is made durable (sled flush) before the head is returned, so a crash can
    /// never lead this node to sign two different heads with the same seq.
    pub fn publish(&self, name: &str, key: &SigningKey) -> Result<Published> {
        // One publish or edit of a draft at a time: two publishes reading the same seq
        // would sign two different heads with it.
        let lock = self.draft_lock(name);
        let _publishing = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let hold = self.blocks.hold();
        let mut state = self.draft(name)?;
        let signer = keys::did_key(&key.verifying_key());
        if signer != state.publisher {
            return Err(RecordError::KeyMismatch {
                name: name.to_string(),
                expected: state.publisher,
                got: signer,
            });
        }
        let seq = state.published_seq + 1;
        let draft = HeadDraft {
            name: name.to_string(),
            seq,
            entries: state.entries,
            entry_count: state.entry_count,
            previous: state.published_head,
            time: None,
        };
        let (head_cid, head, bytes) = Head::sign(key, draft)?;
        let id = head.collection_id()?;
        hold.put_hashed_block(&head_cid, &bytes)?;
        state.published_seq = seq;
        state.published_head = Some(head_cid);
        let draft_value = to_cbor(&state)?;
        let id_text = id.to_string();
        (&self.drafts, &self.heads, &self.head_log)
            .transaction(|(drafts, heads, head_log)| {
                drafts.insert(name.as_bytes(), draft_value.as_slice())?;
                heads.insert(id_text.as_bytes(), encode_newest(seq, &head_cid))?;
                head_log.insert(seq_key(&id_text, seq), head_cid.to_bytes())?;
                Ok::<_, ConflictableTransactionError<RecordError>>(())
            })
            .map_err(transaction_error)?;
        self.db.flush()?;
        Ok(Published {
            id,
            head: head_cid,
            seq,
            entry_count: state.entry_count,
        })
    }
}
