//! Replication groups, as the service layer sees them: the entries of a collection the
//! group keeps, with what is here of each; the share this node lets go of; and
//! `group status`, from the running daemon's view of the other members or, without a
//! daemon, from this node's own store.

use cid::Cid;

use super::views::{
    GroupChallengeView, GroupCollectionView, GroupMemberView, GroupResourceView, GroupStatusView,
};
use super::{ErrorCode, Node, NodeError, Result};
use crate::block::BlockGet;
use crate::daemon::group::{GroupConfig, GroupEntries, GroupEntry};
use crate::records::{entries, CollectionId};
use crate::store::StoreError;

/// What [`Node::repair_resource`] found wrong with a copy, and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairedCopy {
    /// Damaged blocks removed from the store.
    pub dropped: usize,
    /// Blocks of the DAG not in the store at all.
    pub missing: usize,
    /// The collection pins let go.
    pub unpinned: Vec<String>,
}

impl Node {
    /// The group this node is in, from config.toml; `None` when it is in none.
    pub fn group_config(&self) -> Result<Option<GroupConfig>> {
        GroupConfig::from_section(&self.config().group)
            .map_err(|err| NodeError::refused(ErrorCode::InvalidArgument, err))
    }

    /// Every entry of the newest version of `id`, in the entry list's order (the order
    /// of the group's holdings bitmaps), each with its content, whether it is live
    /// (not retracted) and whether this node holds it whole (pinned, for any reason).
    /// `None` before a version is known.
    pub fn group_entries(&self, id: &CollectionId) -> Result<Option<GroupEntries>> {
        let book = self.records();
        let Some((seq, head)) = book.newest_head(id)? else {
            return Ok(None);
        };
        let head = crate::records::Head::decode_and_verify(&self.store().get_block(&head)?)?;
        let mut list = Vec::new();
        for entry in entries::read_all(self.store(), &head.entries)? {
            let summary = book.summary(&entry.record)?;
            let (content, live, title) = match summary {
                Some(summary) => (
                    Some(summary.content),
                    !summary.retracted,
                    entry.title.unwrap_or(summary.title),
                ),
                // Only a damaged index gets here: the entry keeps its place and counts
                // as not held.
                None => (None, false, String::new()),
            };
            let held = match content {
                Some(content) if live => !self.store().pin_reasons(&content)?.is_empty(),
                _ => false,
            };
            list.push(GroupEntry {
                content,
                title: entry.path.unwrap_or(title),
                live,
                held,
            });
        }
        Ok(Some(GroupEntries { seq, entries: list }))
    }

    /// Lets go of this node's copies of resources of `id` that the group holds enough
    /// of elsewhere: their pins for the collection go (gc reclaims the space).
    pub fn release_share(&self, id: &CollectionId, contents: &[Cid]) -> Result<()> {
        let reason = super::follow::pin_reason(id);
        for content in contents {
            if self.store().pin_reasons(content)?.contains(&reason) {
                tracing::info!(collection = %id, %content, "held by enough members elsewhere; unpinned");
                self.store().unpin(content, Some(&reason))?;
            }
        }
        self.store().flush()?;
        Ok(())
    }

    /// Reads every block of `root` here. Where some are gone or no longer match their
    /// CID, the damaged ones are dropped and so are this node's collection pins of
    /// `root`: the group stops counting the copy at once, and the mirror fetches it
    /// again from the others (verified, as every fetch). `None` when the copy is whole.
    pub fn repair_resource(&self, root: &Cid) -> Result<Option<RepairedCopy>> {
        let store = self.store();
        let mut damaged = Vec::new();
        let mut missing = 0;
        crate::links::walk(&[*root], &[], |cid| -> Result<Vec<Cid>> {
            match store.get_block(cid) {
                Ok(data) => Ok(crate::links::links(cid, &data).map_err(StoreError::from)?),
                Err(crate::block::BlockError::NotFound(_)) => {
                    missing += 1;
                    Ok(Vec::new())
                }
                Err(crate::block::BlockError::Corrupt(_)) => {
                    damaged.push(*cid);
                    Ok(Vec::new())
                }
                Err(err) => Err(err.into()),
            }
        })?;
        if damaged.is_empty() && missing == 0 {
            return Ok(None);
        }
        let dropped = store.drop_damaged(&damaged)?.len();
        let mut unpinned = Vec::new();
        for reason in store.pin_reasons(root)? {
            if reason.starts_with(super::follow::PIN_PREFIX) {
                store.unpin(root, Some(&reason))?;
                unpinned.push(reason);
            }
        }
        store.flush()?;
        Ok(Some(RepairedCopy {
            dropped,
            missing,
            unpinned,
        }))
    }

    /// Bytes this node can still store for followed collections: the file system's
    /// free space above `store.reserve_mb`, or what is left of `store.quota_mb` when
    /// that is less.
    pub fn free_space(&self) -> Result<u64> {
        let room = self.disk_free()?.saturating_sub(self.reserve());
        Ok(match self.quota()? {
            Some((quota, used)) => room.min(quota.saturating_sub(used)),
            None => room,
        })
    }

    /// The free space of the repository's file system.
    fn disk_free(&self) -> Result<u64> {
        let stat = nix::sys::statvfs::statvfs(self.root()).map_err(|err| {
            NodeError::refused(
                ErrorCode::Repository,
                format!(
                    "cannot read the free space of {}: {err}",
                    self.root().display()
                ),
            )
        })?;
        Ok((stat.blocks_available() as u64).saturating_mul(stat.fragment_size() as u64))
    }

    fn reserve(&self) -> u64 {
        self.config().store.reserve_mb.saturating_mul(1 << 20)
    }

    /// `store.quota_mb` in bytes and the bytes of blocks stored; `None` without a quota.
    fn quota(&self) -> Result<Option<(u64, u64)>> {
        let quota_mb = self.config().store.quota_mb;
        if quota_mb == 0 {
            return Ok(None);
        }
        Ok(Some((
            quota_mb.saturating_mul(1 << 20),
            self.store().stat()?.bytes,
        )))
    }

    /// Why followed content may not be fetched now: the disk is full (less free than
    /// `store.reserve_mb`), or the quota is reached. `None` while there is room.
    pub fn no_room(&self) -> Result<Option<String>> {
        let free = self.disk_free()?;
        if free <= self.reserve() {
            return Ok(Some(format!(
                "disk full: {} free on the file system of {}, store.reserve_mb keeps {}; \
                 free space (`oermesh gc`, or elsewhere on the disk) and fetching resumes",
                crate::units::human_bytes(free),
                self.root().display(),
                crate::units::human_bytes(self.reserve())
            )));
        }
        if let Some((quota, used)) = self.quota()? {
            if used >= quota {
                return Ok(Some(format!(
                    "quota reached: the store holds {} of blocks and store.quota_mb allows {}; \
                     `oermesh gc` or a larger quota lets fetching resume",
                    crate::units::human_bytes(used),
                    crate::units::human_bytes(quota)
                )));
            }
        }
        Ok(None)
    }

    /// `group status`: the members, and per collection the group keeps, the resources
    /// held by fewer members than its target, with who holds them.
    pub fn group_status(&self) -> Result<GroupStatusView> {
        let Some(config) = self.group_config()? else {
            return Err(NodeError::refused(
                ErrorCode::NotFound,
                "this node is in no replication group: set [group] name and members in \
                 config.toml",
            ));
        };
        let me = self.peer_id()?;
        let online = self.online();
        let snapshot = online.as_ref().map(|online| online.group().members());
        let members = config
            .members
            .iter()
            .filter(|peer| **peer != me)
            .map(|peer| {
                let state = snapshot
                    .as_ref()
                    .and_then(|members| members.iter().find(|m| m.peer == *peer));
                match state {
                    Some(state) => GroupMemberView {
                        peer_id: peer.to_string(),
                        reachable: state.reachable,
                        counted: state.counted,
                        free_bytes: state.free,
                        challenges: state
                            .challenges
                            .iter()
                            .map(|record| GroupChallengeView {
                                at: record.at.clone(),
                                resource: record.resource,
                                outcome: record.outcome.name().into(),
                                reason: record.outcome.reason().map(str::to_string),
                            })
                            .collect(),
                    },
                    None => GroupMemberView {
                        peer_id: peer.to_string(),
                        reachable: false,
                        counted: false,
                        free_bytes: None,
                        challenges: Vec::new(),
                    },
                }
            })
            .collect();
        let mut collections = Vec::new();
        for (id, replicas) in &config.collections {
            let Some(entries) = self.group_entries(id)? else {
                collections.push(GroupCollectionView {
                    id: id.to_string(),
                    replicas: *replicas,
                    seq: None,
                    resources: 0,
                    held_here: 0,
                    at_target: 0,
                    below: Vec::new(),
                });
                continue;
            };
            let holders = match &online {
                Some(online) => online.group().holders(id, &entries),
                None => crate::daemon::group::own_holders(&entries, me),
            };
            let mut view = GroupCollectionView {
                id: id.to_string(),
                replicas: *replicas,
                seq: Some(entries.seq),
                resources: holders.len() as u64,
                held_here: holders.iter().filter(|h| h.holders.contains(&me)).count() as u64,
                at_target: 0,
                below: Vec::new(),
            };
            for resource in holders {
                if resource.holders.len() >= *replicas as usize {
                    view.at_target += 1;
                    continue;
                }
                let title = entries
                    .entries
                    .iter()
                    .find(|e| e.content == Some(resource.content))
                    .map(|e| e.title.clone())
                    .unwrap_or_default();
                view.below.push(GroupResourceView {
                    content: resource.content,
                    title,
                    holders: resource.holders.iter().map(|p| p.to_string()).collect(),
                });
            }
            collections.push(view);
        }
        Ok(GroupStatusView {
            name: config.name.clone(),
            peer_id: me.to_string(),
            running: online.is_some(),
            members,
            collections,
        })
    }

    /// How many members hold each resource of `id`, as the running daemon sees the
    /// group; `None` when `id` is not kept by a group or no daemon runs.
    pub(crate) fn replica_counts(
        &self,
        id: &CollectionId,
    ) -> Result<Option<std::collections::HashMap<Cid, u32>>> {
        let Some(online) = self.online() else {
            return Ok(None);
        };
        if online.group().replicas(id).is_none() {
            return Ok(None);
        }
        let Some(entries) = self.group_entries(id)? else {
            return Ok(None);
        };
        Ok(Some(
            online
                .group()
                .holders(id, &entries)
                .into_iter()
                .map(|h| (h.content, h.holders.len() as u32))
                .collect(),
        ))
    }
}
