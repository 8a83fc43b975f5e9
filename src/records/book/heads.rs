//! Collection heads: accepting others' heads under the seq rules, equivocation evidence,
//! and following a collection's history.

use super::*;

enum HeadCheck {
    Fresh,
    SameAsNewest,
    Replay { newest: u64 },
    Equivocation { known: Cid },
}

impl<B: BlockGet + HoldBlocks> RecordBook<B> {
    fn check_head(&self, id: &str, seq: u64, cid: &Cid) -> Result<HeadCheck> {
        if let Some(known) = self.head_log.get(seq_key(id, seq))? {
            let known = cid_from_bytes(&known)?;
            if known != *cid {
                return Ok(HeadCheck::Equivocation { known });
            }
        }
        match self.heads.get(id.as_bytes())? {
            None => Ok(HeadCheck::Fresh),
            Some(value) => {
                let (newest, newest_cid) = decode_newest(&value)?;
                if seq > newest {
                    Ok(HeadCheck::Fresh)
                } else if seq == newest && newest_cid == *cid {
                    Ok(HeadCheck::SameAsNewest)
                } else {
                    Ok(HeadCheck::Replay { newest })
                }
            }
        }
    }

    /// Verifies a head (strict decoding, signature) and says where it stands against
    /// the versions known here, storing nothing: the network checks a head this way
    /// before it forwards it.
    pub fn head_status(&self, bytes: &[u8]) -> Result<(Head, Cid, HeadStatus)> {
        let head = Head::decode_and_verify(bytes)?;
        let id = head.collection_id()?.to_string();
        let cid = cid_v1(block_codec::DAG_CBOR, bytes);
        let status = match self.check_head(&id, head.seq, &cid)? {
            HeadCheck::Fresh => HeadStatus::Fresh,
            HeadCheck::SameAsNewest => HeadStatus::Known,
            HeadCheck::Replay { newest } => HeadStatus::Stale { newest },
            HeadCheck::Equivocation { known } => HeadStatus::Equivocation { known },
        };
        Ok((head, cid, status))
    }

    /// Accepts a collection head: signature first, then the seq rules. A head with the seq of a
    /// known, different head is an equivocation: both heads are kept as evidence and the new
    /// one is refused.
    pub fn accept_head(&self, bytes: &[u8]) -> Result<AcceptedHead> {
        let head = Head::decode_and_verify(bytes)?;
        let cid = cid_v1(block_codec::DAG_CBOR, bytes);
        self.accept_verified_head(&cid, bytes, &head)
    }

    /// Accepts a head that `Head::decode_and_verify` has just accepted from these very
    /// bytes, which `cid` names (an import checks every signature and hash once).
    pub(crate) fn accept_verified_head(
        &self,
        cid: &Cid,
        bytes: &[u8],
        head: &Head,
    ) -> Result<AcceptedHead> {
        let cid = *cid;
        let id = head.collection_id()?;
        let id_text = id.to_string();
        let trusted = self.trusted.is_trusted(&head.publisher);
        match self.check_head(&id_text, head.seq, &cid)? {
            HeadCheck::SameAsNewest => {
                return Ok(AcceptedHead {
                    id,
                    cid,
                    seq: head.seq,
                    trusted,
                    already_known: true,
                })
            }
            HeadCheck::Replay { newest } => {
                return Err(RecordError::Replay {
                    collection: id_text,
                    newest,
                    got: head.seq,
                })
            }
            HeadCheck::Equivocation { known } => {
                let hold = self.blocks.hold();
                hold.put_hashed_block(&cid, bytes)?;
                let mut key = seq_key(&id_text, head.seq);
                key.extend_from_slice(&cid.to_bytes());
                self.equivocations.insert(key, known.to_bytes())?;
                return Err(RecordError::Equivocation(Box::new(Equivocation {
                    collection: id_text,
                    seq: head.seq,
                    known,
                    conflicting: cid,
                })));
            }
            HeadCheck::Fresh => {}
        }
        let hold = self.blocks.hold();
        hold.put_hashed_block(&cid, bytes)?;
        let seq = head.seq;
        // Checked again inside the transaction so two concurrent heads cannot both win.
        let outcome = (&self.heads, &self.head_log)
            .transaction(|(heads, head_log)| {
                let log_key = seq_key(&id_text, seq);
                if let Some(known) = head_log.get(&log_key)? {
                    let known =
                        cid_from_bytes(&known).map_err(ConflictableTransactionError::Abort)?;
                    if known != cid {
                        return Ok(HeadCheck::Equivocation { known });
                    }
                }
                if let Some(value) = heads.get(id_text.as_bytes())? {
                    let (newest, _) =
                        decode_newest(&value).map_err(ConflictableTransactionError::Abort)?;
                    if seq <= newest {
                        return Ok(HeadCheck::Replay { newest });
                    }
                }
                heads.insert(id_text.as_bytes(), encode_newest(seq, &cid))?;
                head_log.insert(log_key, cid.to_bytes())?;
                Ok(HeadCheck::Fresh)
            })
            .map_err(transaction_error)?;
        match outcome {
            HeadCheck::Fresh | HeadCheck::SameAsNewest => Ok(AcceptedHead {
                id,
                cid,
                seq,
                trusted,
                already_known: false,
            }),
            HeadCheck::Replay { newest } => Err(RecordError::Replay {
                collection: id_text,
                newest,
                got: seq,
            }),
            HeadCheck::Equivocation { known } => {
                Err(RecordError::Equivocation(Box::new(Equivocation {
                    collection: id_text,
                    seq,
                    known,
                    conflicting: cid,
                })))
            }
        }
    }

    /// Equivocations seen for a collection, oldest seq first.
    pub fn equivocations(&self, id: &CollectionId) -> Result<Vec<Equivocation>> {
        let id_text = id.to_string();
        let mut prefix = id_text.as_bytes().to_vec();
        prefix.push(0);
        let mut found = Vec::new();
        for item in self.equivocations.scan_prefix(&prefix) {
            let (key, value) = item?;
            let rest = &key[prefix.len()..];
            let (seq, conflicting) = rest
                .split_at_checked(8)
                .ok_or_else(|| damaged("equivocation key"))?;
            found.push(Equivocation {
                collection: id_text.clone(),
                seq: u64::from_be_bytes(seq.try_into().map_err(|_| damaged("equivocation seq"))?),
                known: cid_from_bytes(&value)?,
                conflicting: cid_from_bytes(conflicting)?,
            });
        }
        Ok(found)
    }

    /// The newest accepted head of a collection.
    pub fn newest_head(&self, id: &CollectionId) -> Result<Option<(u64, Cid)>> {
        self.heads
            .get(id.to_string().as_bytes())?
            .map(|v| decode_newest(&v))
            .transpose()
    }

    pub(super) fn load_head(&self, cid: &Cid) -> Result<Head> {
        let bytes = self.blocks.get_block(cid)?;
        crate::block::verify(cid, &bytes)?;
        Head::decode_and_verify(&bytes)
    }

    /// The collection's versions, newest first, following `previous` links through the block
    /// store until the first head or a head that is not available.
    pub fn history(&self, id: &CollectionId) -> Result<Vec<HistoryEntry>> {
        let (newest_seq, newest) = self
            .newest_head(id)?
            .ok_or_else(|| RecordError::UnknownCollection(id.to_string()))?;
        let mut history = Vec::new();
        let mut next = Some(newest);
        let mut expected_seq = newest_seq;
        while let Some(cid) = next.take() {
            let head = match self.load_head(&cid) {
                Ok(head) => head,
                Err(RecordError::Block(BlockError::NotFound(_))) => {
                    history.push(HistoryEntry::Missing { cid });
                    break;
                }
                Err(other) => {
                    history.push(HistoryEntry::Invalid {
                        cid,
                        reason: other.to_string(),
                    });
                    break;
                }
            };
            // Seqs must fall by at least one per step, which also bounds the walk.
            let belongs =
                head.collection_id().ok().as_ref() == Some(id) && head.seq <= expected_seq;
            if !belongs {
                history.push(HistoryEntry::Invalid {
                    cid,
                    reason: "not an earlier head of this collection".into(),
                });
                break;
            }
            expected_seq = head.seq.saturating_sub(1);
            next = head.previous;
            history.push(HistoryEntry::Version {
                cid,
                seq: head.seq,
                time: head.time,
                entry_count: head.entry_count,
                entries: head.entries,
            });
        }
        Ok(history)
    }
}
