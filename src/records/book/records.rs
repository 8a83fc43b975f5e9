//! Records and retractions: signing, accepting, indexing, and reading them back.

use super::*;

impl<B: BlockGet + HoldBlocks> RecordBook<B> {
    /// Signs a record after checking its licence against every parent's, and stores it.
    /// Parents must be in the block store: an unchecked licence is never signed.
    pub fn sign_record(&self, key: &SigningKey, draft: RecordDraft) -> Result<SignedRecord> {
        let child_licence =
            crate::records::Licence::parse(&draft.licence, draft.licence_url.as_deref())?;
        let mut parents = Vec::with_capacity(draft.based_on.len());
        for based_on in &draft.based_on {
            let parent = self.load_record(&based_on.record).map_err(|e| match e {
                RecordError::Block(BlockError::NotFound(cid)) => RecordError::ParentMissing(cid),
                other => RecordError::ParentInvalid {
                    cid: based_on.record,
                    reason: other.to_string(),
                },
            })?;
            let licence = parent
                .parsed_licence()
                .map_err(|e| RecordError::ParentInvalid {
                    cid: based_on.record,
                    reason: e.to_string(),
                })?;
            parents.push(ParentWork {
                cid: based_on.record,
                title: parent.title,
                licence,
            });
        }
        let warnings = check_adaptation(&child_licence, &parents)?;
        let (cid, record, bytes) = Record::sign(key, draft)?;
        // Held until indexed: the index is what keeps the record from gc afterwards.
        let hold = self.blocks.hold();
        hold.put_hashed_block(&cid, &bytes)?;
        self.index_record(&cid, &record)?;
        Ok(SignedRecord {
            cid,
            record,
            warnings,
        })
    }

    /// Accepts a record received from elsewhere: decoded strictly and verified before anything
    /// is stored.
    pub fn accept_record(&self, bytes: &[u8]) -> Result<Cid> {
        let record = Record::decode_and_verify(bytes)?;
        let cid = cid_v1(block_codec::DAG_CBOR, bytes);
        self.store_verified_record(&cid, bytes, &record)?;
        Ok(cid)
    }

    /// Stores and indexes a record that `Record::decode_and_verify` has just accepted
    /// from these very bytes, which `cid` names: an import checks every signature and
    /// every hash before it accepts anything, and need not check them twice.
    pub(crate) fn store_verified_record(
        &self,
        cid: &Cid,
        bytes: &[u8],
        record: &Record,
    ) -> Result<()> {
        let hold = self.blocks.hold();
        hold.put_hashed_block(cid, bytes)?;
        self.index_record(cid, record)
    }

    fn index_record(&self, cid: &Cid, record: &Record) -> Result<()> {
        let key = cid.to_bytes();
        let summary = RecordSummary {
            title: record.title.clone(),
            licence: record.licence.clone(),
            publisher: record.publisher.clone(),
            content: record.content,
            retracted: self.retractions.contains_key(&key)?,
        };
        self.summaries.insert(key, encode_summary(&summary))?;
        self.by_content
            .insert(content_key(&record.content, cid), &[])?;
        self.bump_summary_generation()
    }

    fn load_record(&self, cid: &Cid) -> Result<Record> {
        let bytes = self.blocks.get_block(cid)?;
        crate::block::verify(cid, &bytes)?;
        Record::decode_and_verify(&bytes)
    }

    /// Reads a record back, verifies it again, and builds its attribution.
    pub fn show_record(&self, cid: &Cid) -> Result<RecordView> {
        let record = self.load_record(cid)?;
        let parents: Vec<(Cid, Option<Record>)> = record
            .based_on
            .iter()
            .map(|p| (p.record, self.load_record(&p.record).ok()))
            .collect();
        Ok(RecordView {
            cid: *cid,
            trusted: self.trusted.is_trusted(&record.publisher),
            retracted: self.is_retracted(cid)?,
            attribution: attribution(&record, &parents),
            record,
        })
    }

    /// Re-checks a stored record: its block against its CID, strict decoding, signature.
    pub fn verify_record(&self, cid: &Cid) -> Result<Record> {
        self.load_record(cid)
    }

    /// The index summary of an accepted record.
    pub fn summary(&self, cid: &Cid) -> Result<Option<RecordSummary>> {
        self.summaries
            .get(cid.to_bytes())?
            .map(|v| decode_summary(&v))
            .transpose()
    }

    /// Non-retracted records describing `content`.
    pub fn records_for_content(&self, content: &Cid) -> Result<Vec<RecordListing>> {
        let mut listings = self.content_records(content)?;
        listings.retain(|listing| !listing.summary.retracted);
        Ok(listings)
    }

    /// Every record describing `content`, retracted ones included.
    pub fn content_records(&self, content: &Cid) -> Result<Vec<RecordListing>> {
        let content_bytes = content.to_bytes();
        let mut prefix = (content_bytes.len() as u16).to_be_bytes().to_vec();
        prefix.extend_from_slice(&content_bytes);
        let mut listings = Vec::new();
        for item in self.by_content.scan_prefix(&prefix) {
            let (key, _) = item?;
            let cid = cid_from_bytes(&key[prefix.len()..])?;
            let Some(summary) = self.summary(&cid)? else {
                continue;
            };
            listings.push(RecordListing {
                cid,
                trusted: self.trusted.is_trusted(&summary.publisher),
                summary,
            });
        }
        Ok(listings)
    }

    pub fn is_retracted(&self, cid: &Cid) -> Result<bool> {
        Ok(self.retractions.contains_key(cid.to_bytes())?)
    }

    /// The provenance tree of a record; problems become nodes, never errors.
    pub fn provenance(&self, cid: &Cid) -> ProvenanceNode {
        let is_retracted = |cid: &Cid| {
            self.retractions
                .contains_key(cid.to_bytes())
                .unwrap_or(false)
        };
        provenance::walk(
            &self.blocks,
            &self.trusted,
            is_retracted,
            cid,
            provenance::DEFAULT_MAX_DEPTH,
        )
    }

    /// Signs and accepts a retraction of one of `key`'s own records.
    pub fn retract(&self, key: &SigningKey, record: &Cid, reason: &str) -> Result<Cid> {
        let (_, _, bytes) = Retraction::sign(key, *record, reason, None)?;
        self.accept_retraction(&bytes)
    }

    /// Accepts a retraction signed by the record's own publisher. The record must be known
    /// locally, since its publisher is what the retraction is checked against.
    pub fn accept_retraction(&self, bytes: &[u8]) -> Result<Cid> {
        let retraction = Retraction::decode_and_verify(bytes)?;
        let cid = cid_v1(block_codec::DAG_CBOR, bytes);
        self.accept_verified_retraction(&cid, bytes, retraction)?;
        Ok(cid)
    }

    /// Accepts a retraction that `Retraction::decode_and_verify` has just accepted from
    /// these very bytes, which `cid` names.
    pub(crate) fn accept_verified_retraction(
        &self,
        cid: &Cid,
        bytes: &[u8],
        retraction: Retraction,
    ) -> Result<()> {
        let record = match self.load_record(&retraction.record) {
            Err(RecordError::Block(BlockError::NotFound(cid))) => {
                return Err(RecordError::UnknownRecord(cid))
            }
            other => other?,
        };
        if record.publisher != retraction.publisher {
            return Err(RecordError::RetractionByOtherKey(Box::new(
                ForeignRetraction {
                    record: retraction.record,
                    publisher: record.publisher,
                    retractor: retraction.publisher,
                },
            )));
        }
        let hold = self.blocks.hold();
        hold.put_hashed_block(cid, bytes)?;
        let key = retraction.record.to_bytes();
        let summary = RecordSummary {
            title: record.title,
            licence: record.licence,
            publisher: record.publisher,
            content: record.content,
            retracted: true,
        };
        let summary = encode_summary(&summary);
        (&self.retractions, &self.summaries)
            .transaction(|(retractions, summaries)| {
                retractions.insert(key.as_slice(), cid.to_bytes())?;
                summaries.insert(key.as_slice(), summary.as_slice())?;
                Ok::<_, ConflictableTransactionError<RecordError>>(())
            })
            .map_err(transaction_error)?;
        self.bump_summary_generation()
    }

    /// The retraction block of a retracted record.
    pub fn retraction_of(&self, record: &Cid) -> Result<Option<Cid>> {
        self.retractions
            .get(record.to_bytes())?
            .map(|v| cid_from_bytes(&v))
            .transpose()
    }
}
