//! Listings: a collection's entries joined with the summaries index (cached per entry
//! chunk), the collections known here, and the blocks of a version.

use super::summaries::SummaryScan;
use super::*;

impl<B: BlockGet + HoldBlocks> RecordBook<B> {
    /// The newest version of a collection with its entries, joined with the record index.
    /// Entries whose record is retracted are left out (and counted).
    pub fn collection_show(&self, id: &CollectionId) -> Result<CollectionView>
    where
        B: Sync,
    {
        let (seq, head_cid) = self
            .newest_head(id)?
            .ok_or_else(|| RecordError::UnknownCollection(id.to_string()))?;
        let head = self.load_head(&head_cid)?;
        let (views, retracted_hidden) = self.list_entries(&head.entries)?;
        Ok(CollectionView {
            id: id.clone(),
            head: head_cid,
            seq,
            time: head.time,
            trusted: self.trusted.is_trusted(&head.publisher),
            entries: views,
            retracted_hidden,
        })
    }

    /// The entries of an entry list joined with the record index, retracted ones left
    /// out (and counted). Each half of the chunks is joined on its own core.
    fn list_entries(&self, entries_root: &Cid) -> Result<(Vec<EntryView>, usize)>
    where
        B: Sync,
    {
        let generation = self.summary_generation()?;
        let mut first_half = entries::read_chunks(&self.blocks, entries_root)?;
        let second_half = first_half.split_off(first_half.len() / 2);
        let (first, second) = rayon::join(
            || self.join_summaries(first_half, generation),
            || self.join_summaries(second_half, generation),
        );
        let (mut views, first_hidden) = first?;
        let (second_views, second_hidden) = second?;
        views.extend(second_views);
        Ok((views, first_hidden + second_hidden))
    }

    /// Fills the listing cache for the newest version of a collection, so that the first
    /// `collection_show` after a publish or an import is as fast as later ones. Best
    /// effort: a cache that cannot be filled is filled by the next listing.
    pub fn warm_listing(&self, id: &CollectionId)
    where
        B: Sync,
    {
        let warmed = self.newest_head(id).and_then(|newest| match newest {
            Some((_, head_cid)) => {
                let head = self.load_head(&head_cid)?;
                self.list_entries(&head.entries).map(drop)
            }
            None => Ok(()),
        });
        if let Err(err) = warmed {
            tracing::debug!(collection = %id, %err, "listing cache not filled");
        }
    }

    /// Drops every cached listing (they are rebuilt on demand): `gc` calls this so that
    /// caches of versions nobody lists any more do not pile up.
    pub fn clear_listing_cache(&self) -> Result<()> {
        self.listing_cache.clear()?;
        Ok(())
    }

    /// Joins chunks of entries (in record-CID order) with their summaries, leaving out
    /// retracted records; returns the views and how many were left out. A chunk's
    /// summaries are read from the listing cache when it is of `generation`, else from
    /// the index by one ordered scan, and then cached.
    fn join_summaries(
        &self,
        chunks: Vec<(Cid, Vec<Entry>)>,
        generation: u64,
    ) -> Result<(Vec<EntryView>, usize)> {
        let mut retracted_hidden = 0;
        let mut scan = SummaryScan::new(&self.summaries);
        // Entries of one collection mostly share a publisher: ask the trust set once per run.
        let mut last_trust: Option<(String, bool)> = None;
        let mut views = Vec::with_capacity(chunks.iter().map(|(_, entries)| entries.len()).sum());
        for (chunk, entries) in chunks {
            let summaries = match self.cached_summaries(&chunk, generation, entries.len())? {
                Some(summaries) => summaries,
                None => self.summaries_by_scan(&mut scan, &chunk, &entries, generation)?,
            };
            for (entry, summary) in entries.into_iter().zip(summaries) {
                if summary.as_ref().is_some_and(|s| s.retracted) {
                    retracted_hidden += 1;
                    continue;
                }
                let trusted = match &summary {
                    None => false,
                    Some(s) => match &last_trust {
                        Some((publisher, trusted)) if *publisher == s.publisher => *trusted,
                        _ => {
                            let trusted = self.trusted.is_trusted(&s.publisher);
                            last_trust = Some((s.publisher.clone(), trusted));
                            trusted
                        }
                    },
                };
                views.push(EntryView {
                    entry,
                    summary,
                    trusted,
                });
            }
        }
        Ok((views, retracted_hidden))
    }

    /// The summaries of a chunk's entries from the listing cache, if it holds them for
    /// this generation. Cache value: generation (u64 LE), then per entry a u32 LE length
    /// (`u32::MAX` for "no record here") and the summary's index bytes.
    fn cached_summaries(
        &self,
        chunk: &Cid,
        generation: u64,
        count: usize,
    ) -> Result<Option<Vec<Option<RecordSummary>>>> {
        let Some(value) = self.listing_cache.get(chunk.to_bytes())? else {
            return Ok(None);
        };
        let Some((stored_generation, mut rest)) = value.split_first_chunk::<8>() else {
            return Ok(None);
        };
        if u64::from_le_bytes(*stored_generation) != generation {
            return Ok(None);
        }
        let mut summaries = Vec::with_capacity(count);
        while let Some((length, tail)) = rest.split_first_chunk::<4>() {
            let length = u32::from_le_bytes(*length);
            if length == u32::MAX {
                summaries.push(None);
                rest = tail;
                continue;
            }
            let Some((bytes, tail)) = tail.split_at_checked(length as usize) else {
                return Ok(None);
            };
            summaries.push(Some(decode_summary(bytes)?));
            rest = tail;
        }
        // A cache entry that does not fit the chunk is ignored and rebuilt.
        Ok((rest.is_empty() && summaries.len() == count).then_some(summaries))
    }

    fn summaries_by_scan(
        &self,
        scan: &mut SummaryScan<'_>,
        chunk: &Cid,
        entries: &[Entry],
        generation: u64,
    ) -> Result<Vec<Option<RecordSummary>>> {
        let mut cache = generation.to_le_bytes().to_vec();
        let mut summaries = Vec::with_capacity(entries.len());
        let mut key = Vec::new();
        for entry in entries {
            key.clear();
            entry
                .record
                .write_bytes(&mut key)
                .map_err(|e| damaged(format!("cannot encode CID: {e}")))?;
            match scan.get_raw(&key)? {
                Some(value) => {
                    // Index values are small: a record's title and licence are capped.
                    cache.extend_from_slice(&(value.len() as u32).to_le_bytes());
                    cache.extend_from_slice(&value);
                    summaries.push(Some(decode_summary(&value)?));
                }
                None => {
                    cache.extend_from_slice(&u32::MAX.to_le_bytes());
                    summaries.push(None);
                }
            }
        }
        self.listing_cache.insert(chunk.to_bytes(), cache)?;
        Ok(summaries)
    }

    /// Every collection known here: accepted heads and this node's own collections.
    pub fn collection_list(&self) -> Result<Vec<CollectionListing>> {
        let mut listings: Vec<CollectionListing> = Vec::new();
        for item in self.heads.iter() {
            let (key, value) = item?;
            let id_text =
                std::str::from_utf8(&key).map_err(|_| damaged("collection id is not UTF-8"))?;
            let id: CollectionId = id_text.parse()?;
            let trusted = self.trusted.is_trusted(&id.publisher_did());
            listings.push(CollectionListing {
                id,
                newest: Some(decode_newest(&value)?),
                trusted,
                draft: None,
            });
        }
        for draft in self.drafts()? {
            match listings.iter_mut().find(|l| l.id == draft.id) {
                Some(listing) => listing.draft = Some(draft.state),
                None => listings.push(CollectionListing {
                    trusted: self.trusted.is_trusted(&draft.state.publisher),
                    id: draft.id,
                    newest: None,
                    draft: Some(draft.state),
                }),
            }
        }
        listings.sort_by_key(|l| l.id.to_string());
        Ok(listings)
    }

    /// Every block of one collection version: the head, the entry-list blocks, the records
    /// present locally, and the records' content roots.
    pub fn collection_blocks(&self, head_cid: &Cid) -> Result<CollectionBlocks> {
        let head = self.load_head(head_cid)?;
        let mut blocks = CollectionBlocks {
            head: Some(*head_cid),
            entry_blocks: entries::block_cids(&self.blocks, &head.entries)?,
            ..CollectionBlocks::default()
        };
        let mut summaries = SummaryScan::new(&self.summaries);
        for entry in entries::read_all(&self.blocks, &head.entries)? {
            match summaries.get(&entry.record.to_bytes())? {
                Some(summary) => {
                    blocks.records.push(entry.record);
                    blocks.content_roots.push(summary.content);
                }
                None => blocks.missing_records.push(entry.record),
            }
        }
        blocks.content_roots.sort_by_cached_key(|c| c.to_bytes());
        blocks.content_roots.dedup();
        Ok(blocks)
    }
}
