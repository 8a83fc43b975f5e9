//! The summaries index: what a listing needs of each record, in a form read without a
//! general CBOR parser, and the ordered scan that joins an entry list with it.

use super::*;

/// First byte of a summary in the index's own binary format. Summaries are read once per entry
/// of every listing, so they are kept in a form that decodes without a general CBOR parser.
const SUMMARY_FORMAT_V1: u8 = 1;
const SUMMARY_RETRACTED: u8 = 1;

/// Version byte, flags, then title, licence and publisher each as a 4-byte little-endian
/// length and UTF-8 bytes, then the content CID's bytes up to the end.
pub(super) fn encode_summary(summary: &RecordSummary) -> Vec<u8> {
    let content = summary.content.to_bytes();
    let texts = [&summary.title, &summary.licence, &summary.publisher];
    let mut value =
        Vec::with_capacity(2 + texts.iter().map(|t| 4 + t.len()).sum::<usize>() + content.len());
    value.push(SUMMARY_FORMAT_V1);
    value.push(if summary.retracted {
        SUMMARY_RETRACTED
    } else {
        0
    });
    for text in texts {
        // Record fields are capped far below 4 GiB before a record is accepted.
        value.extend_from_slice(&(text.len() as u32).to_le_bytes());
        value.extend_from_slice(text.as_bytes());
    }
    value.extend_from_slice(&content);
    value
}

pub(super) fn decode_summary(value: &[u8]) -> Result<RecordSummary> {
    let short = || damaged("summary entry too short");
    let (&version, rest) = value.split_first().ok_or_else(short)?;
    if version != SUMMARY_FORMAT_V1 {
        return Err(damaged(format!(
            "summary entry has unknown format {version}"
        )));
    }
    let (&flags, mut rest) = rest.split_first().ok_or_else(short)?;
    let mut text = || -> Result<String> {
        let (length, tail) = rest.split_first_chunk::<4>().ok_or_else(short)?;
        let (text, tail) = tail
            .split_at_checked(u32::from_le_bytes(*length) as usize)
            .ok_or_else(short)?;
        rest = tail;
        String::from_utf8(text.to_vec()).map_err(|_| damaged("summary text is not UTF-8"))
    };
    let (title, licence, publisher) = (text()?, text()?, text()?);
    Ok(RecordSummary {
        title,
        licence,
        publisher,
        content: cid_from_bytes(rest)?,
        retracted: flags & SUMMARY_RETRACTED != 0,
    })
}

/// Looks up the summaries of keys given in ascending order with one ordered scan of the
/// index instead of a tree descent per key. A key far ahead of the scan starts a new scan
/// there, so a small collection in a large index still costs about one lookup per entry.
pub(super) struct SummaryScan<'a> {
    tree: &'a sled::Tree,
    scan: Option<sled::Iter>,
    current: Option<(sled::IVec, sled::IVec)>,
}

/// Index entries stepped over before the scan is restarted at the wanted key instead.
const SCAN_SKIP_LIMIT: usize = 16;

impl<'a> SummaryScan<'a> {
    pub(super) fn new(tree: &'a sled::Tree) -> SummaryScan<'a> {
        SummaryScan {
            tree,
            scan: None,
            current: None,
        }
    }

    /// The summary stored under `key`; keys must be asked for in ascending order.
    pub(super) fn get(&mut self, key: &[u8]) -> Result<Option<RecordSummary>> {
        self.get_raw(key)?
            .map(|value| decode_summary(&value))
            .transpose()
    }

    /// The index bytes stored under `key`; keys must be asked for in ascending order.
    pub(super) fn get_raw(&mut self, key: &[u8]) -> Result<Option<sled::IVec>> {
        let mut skipped = 0;
        loop {
            match (&self.current, &mut self.scan) {
                (Some((found, value)), _) if found.as_ref() == key => {
                    return Ok(Some(value.clone()))
                }
                (Some((found, _)), _) if found.as_ref() > key => return Ok(None),
                // The scan ran off the end of the index: no later key is there either.
                (None, Some(_)) => return Ok(None),
                (_, Some(scan)) if skipped < SCAN_SKIP_LIMIT => {
                    self.current = scan.next().transpose()?;
                    skipped += 1;
                }
                _ => {
                    let mut scan = self.tree.range(key..);
                    self.current = scan.next().transpose()?;
                    self.scan = Some(scan);
                }
            }
        }
    }
}

impl<B: BlockGet + HoldBlocks> RecordBook<B> {
    /// Marks every listing cache stale. Called after the summaries changed, never
    /// before: a listing reads the generation first, so a cache built from summaries
    /// older than a change always carries a generation older than the change's bump.
    pub(super) fn bump_summary_generation(&self) -> Result<()> {
        self.meta.update_and_fetch(SUMMARY_GENERATION, |old| {
            let current = old
                .and_then(|bytes| bytes.try_into().ok())
                .map_or(0, u64::from_le_bytes);
            Some(current.wrapping_add(1).to_le_bytes().to_vec())
        })?;
        Ok(())
    }

    /// A number that changes after every change to the summaries: an index built from
    /// them is current while it is unchanged.
    pub fn summary_generation(&self) -> Result<u64> {
        Ok(self
            .meta
            .get(SUMMARY_GENERATION)?
            .and_then(|bytes| bytes.as_ref().try_into().ok())
            .map_or(0, u64::from_le_bytes))
    }

    /// Every accepted record with its summary, retracted ones included, in the order of
    /// their CIDs' bytes.
    pub fn summaries(&self) -> impl Iterator<Item = Result<(Cid, RecordSummary)>> + '_ {
        self.summaries.iter().map(|item| {
            let (key, value) = item?;
            Ok((cid_from_bytes(&key)?, decode_summary(&value)?))
        })
    }

    /// A feed of every later change to the summaries (a record accepted, a record
    /// retracted), for indexes kept beside the record layer. Subscribe before reading
    /// the summaries, so that no change falls between the two.
    pub fn watch_summaries(&self) -> sled::Subscriber {
        self.summaries.watch_prefix(Vec::new())
    }

    /// Decodes a summary as carried by a [`RecordBook::watch_summaries`] event.
    pub fn decode_summary_event(key: &[u8], value: &[u8]) -> Result<(Cid, RecordSummary)> {
        Ok((cid_from_bytes(key)?, decode_summary(value)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(i: u32) -> RecordSummary {
        RecordSummary {
            title: format!("Lesson {i} – fractions"),
            licence: "CC-BY-4.0".into(),
            publisher: "did:key:z6MkexamplePublisher".into(),
            content: cid_v1(block_codec::RAW, &i.to_le_bytes()),
            retracted: i.is_multiple_of(3),
        }
    }

    #[test]
    fn summaries_round_trip_and_refuse_damage() -> Result<()> {
        let value = encode_summary(&summary(7));
        assert_eq!(decode_summary(&value)?, summary(7));
        assert!(decode_summary(&value[..value.len() / 2]).is_err());
        let mut unknown = value.clone();
        unknown[0] = 0xa5;
        assert!(decode_summary(&unknown).is_err());
        Ok(())
    }

    #[test]
    fn summary_scan_finds_what_point_lookups_find() -> Result<()> {
        let db = sled::Config::new().temporary(true).open()?;
        let tree = db.open_tree(TREE_SUMMARIES)?;
        let key = |i: u32| cid_v1(block_codec::RAW, &i.to_le_bytes()).to_bytes();
        // Every fifth key is missing; the rest are present.
        for i in (0..500u32).filter(|i| !i.is_multiple_of(5)) {
            tree.insert(key(i), encode_summary(&summary(i)))?;
        }
        // Wanted keys in ascending order, with runs far apart so the scan has to restart.
        let mut wanted: Vec<(u32, Vec<u8>)> = (0..500u32)
            .filter(|i| i.is_multiple_of(7) || *i < 40)
            .map(|i| (i, key(i)))
            .collect();
        wanted.push((1000, key(1000)));
        wanted.sort_by(|a, b| a.1.cmp(&b.1));
        let mut scan = SummaryScan::new(&tree);
        for (i, wanted_key) in &wanted {
            let expected = (*i < 500 && !i.is_multiple_of(5)).then(|| summary(*i));
            assert_eq!(scan.get(wanted_key)?, expected, "key of {i}");
        }
        Ok(())
    }
}
