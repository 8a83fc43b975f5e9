//! [`Service`]: the user actions, whoever performs them. [`Node`] performs them on the
//! repository it holds; the API client asks the daemon that holds it. The command line
//! is written once, against this trait, so its output is the same either way.

use std::io::{Read, Write};

use cid::Cid;

use super::views::*;
use super::{Node, NodeError, Result};
use crate::block::{BlockError, BlockGet};
use crate::car::ExportSummary;
use crate::records::provenance::ProvenanceNode;
use crate::store::GcReport;
use crate::unixfs::importer::TreeSink;

/// A tree handed to `add`: walks something (a folder on this machine) into a sink.
pub type Feed<'a> = &'a mut (dyn FnMut(&mut dyn TreeSink) -> Result<()> + Send);

pub trait Service: Sync {
    /// Adds the tree `feed` produces; see [`Node::add`].
    fn add(
        &self,
        options: &AddOptions,
        feed: Feed<'_>,
        events: &mut (dyn FnMut(AddEvent) + Send),
    ) -> Result<AddOutcome>;
    /// A block's verified bytes.
    fn block(&self, cid: &Cid) -> Result<Vec<u8>>;
    /// Writes the file `cid` to `out`; see [`Node::cat`].
    fn cat(&self, cid: &Cid, out: &mut dyn Write) -> Result<u64>;
    /// Makes what `options` names complete here, from peers when a daemon runs.
    fn fetch(&self, options: &FetchOptions) -> Result<Fetched>;
    fn pins(&self) -> Result<Vec<PinView>>;
    fn pin_add(&self, cid: &Cid) -> Result<()>;
    fn pin_rm(&self, cid: &Cid) -> Result<Vec<String>>;
    fn gc(&self) -> Result<GcReport>;
    fn stat(&self) -> Result<StatView>;
    fn verify(&self) -> Result<VerifyView>;
    fn export(&self, target: &ExportTarget, out: &mut dyn Write) -> Result<ExportSummary>;
    /// Imports a CAR from an open file.
    fn import(&self, car: &mut std::fs::File) -> Result<ImportView>;
    fn key_gen(&self, name: &str) -> Result<KeyView>;
    fn key_list(&self) -> Result<Vec<KeyView>>;
    fn key_export(&self, name: &str) -> Result<KeyExport>;
    fn key_import(&self, name: &str, key_file: &str) -> Result<KeyView>;
    fn record_show(&self, cid: &Cid) -> Result<Vec<RecordShow>>;
    fn record_verify(&self, cid: &Cid) -> Result<RecordCheck>;
    fn record_retract(&self, cid: &Cid, reason: &str, key: Option<&str>) -> Result<Retracted>;
    fn provenance(&self, cid: &Cid) -> Result<ProvenanceNode>;
    fn collection_create(&self, name: &str, key: Option<&str>) -> Result<CollectionCreated>;
    fn collection_add(
        &self,
        name: &str,
        cids: &[String],
        path: Option<&str>,
        title: Option<&str>,
    ) -> Result<CollectionEdited>;
    fn collection_rm(&self, name: &str, cid: &Cid) -> Result<CollectionEdited>;
    fn collection_publish(&self, name: &str) -> Result<CollectionPublished>;
    fn collection_show(&self, id: &str) -> Result<CollectionShow>;
    fn collection_list(&self) -> Result<Vec<CollectionRow>>;
    fn collection_history(&self, id: &str) -> Result<Vec<HistoryRow>>;
    fn trust_add(&self, publisher: &str) -> Result<String>;
    fn trust_rm(&self, publisher: &str) -> Result<String>;
    fn trust_list(&self) -> Result<Vec<String>>;
    fn id(&self) -> Result<IdView>;
    fn peers(&self) -> Result<Vec<PeerView>>;
    fn peers_add(&self, addr: &str) -> Result<StaticPeerEdit>;
    fn peers_rm(&self, addr: &str) -> Result<StaticPeerEdit>;
    fn follow(&self, id: &str, metadata_only: bool) -> Result<FollowView>;
    fn unfollow(&self, id: &str) -> Result<FollowView>;
    fn follow_list(&self) -> Result<Vec<FollowRow>>;
    fn follow_status(&self, id: &str) -> Result<FollowStatusView>;
    fn group_status(&self) -> Result<GroupStatusView>;
}

impl Service for Node {
    fn add(
        &self,
        options: &AddOptions,
        feed: Feed<'_>,
        events: &mut (dyn FnMut(AddEvent) + Send),
    ) -> Result<AddOutcome> {
        Node::add(self, options, &mut |session| feed(session), events)
    }
    fn block(&self, cid: &Cid) -> Result<Vec<u8>> {
        Node::block(self, cid)
    }
    fn cat(&self, cid: &Cid, out: &mut dyn Write) -> Result<u64> {
        Node::cat(self, cid, out)
    }
    fn fetch(&self, options: &FetchOptions) -> Result<Fetched> {
        Node::fetch(self, options)
    }
    fn pins(&self) -> Result<Vec<PinView>> {
        Node::pins(self)
    }
    fn pin_add(&self, cid: &Cid) -> Result<()> {
        Node::pin_add(self, cid)
    }
    fn pin_rm(&self, cid: &Cid) -> Result<Vec<String>> {
        Node::pin_rm(self, cid)
    }
    fn gc(&self) -> Result<GcReport> {
        Node::gc(self)
    }
    fn stat(&self) -> Result<StatView> {
        Node::stat(self)
    }
    fn verify(&self) -> Result<VerifyView> {
        Node::verify(self)
    }
    fn export(&self, target: &ExportTarget, out: &mut dyn Write) -> Result<ExportSummary> {
        Node::export(self, target, out)
    }
    fn import(&self, car: &mut std::fs::File) -> Result<ImportView> {
        let mut buffered = std::io::BufReader::with_capacity(1 << 20, car);
        Node::import(self, &mut buffered as &mut dyn Read)
    }
    fn key_gen(&self, name: &str) -> Result<KeyView> {
        Node::key_gen(self, name)
    }
    fn key_list(&self) -> Result<Vec<KeyView>> {
        Node::key_list(self)
    }
    fn key_export(&self, name: &str) -> Result<KeyExport> {
        Node::key_export(self, name)
    }
    fn key_import(&self, name: &str, key_file: &str) -> Result<KeyView> {
        Node::key_import(self, name, key_file)
    }
    fn record_show(&self, cid: &Cid) -> Result<Vec<RecordShow>> {
        Node::record_show(self, cid)
    }
    fn record_verify(&self, cid: &Cid) -> Result<RecordCheck> {
        Node::record_verify(self, cid)
    }
    fn record_retract(&self, cid: &Cid, reason: &str, key: Option<&str>) -> Result<Retracted> {
        Node::record_retract(self, cid, reason, key)
    }
    fn provenance(&self, cid: &Cid) -> Result<ProvenanceNode> {
        Node::provenance(self, cid)
    }
    fn collection_create(&self, name: &str, key: Option<&str>) -> Result<CollectionCreated> {
        Node::collection_create(self, name, key)
    }
    fn collection_add(
        &self,
        name: &str,
        cids: &[String],
        path: Option<&str>,
        title: Option<&str>,
    ) -> Result<CollectionEdited> {
        Node::collection_add(self, name, cids, path, title)
    }
    fn collection_rm(&self, name: &str, cid: &Cid) -> Result<CollectionEdited> {
        Node::collection_rm(self, name, cid)
    }
    fn collection_publish(&self, name: &str) -> Result<CollectionPublished> {
        Node::collection_publish(self, name)
    }
    fn collection_show(&self, id: &str) -> Result<CollectionShow> {
        Node::collection_show(self, id)
    }
    fn collection_list(&self) -> Result<Vec<CollectionRow>> {
        Node::collection_list(self)
    }
    fn collection_history(&self, id: &str) -> Result<Vec<HistoryRow>> {
        Node::collection_history(self, id)
    }
    fn trust_add(&self, publisher: &str) -> Result<String> {
        Node::trust_add(self, publisher)
    }
    fn trust_rm(&self, publisher: &str) -> Result<String> {
        Node::trust_rm(self, publisher)
    }
    fn trust_list(&self) -> Result<Vec<String>> {
        Node::trust_list(self)
    }
    fn id(&self) -> Result<IdView> {
        Node::id(self)
    }
    fn peers(&self) -> Result<Vec<PeerView>> {
        Node::peers(self)
    }
    fn peers_add(&self, addr: &str) -> Result<StaticPeerEdit> {
        Node::peers_add(self, addr)
    }
    fn peers_rm(&self, addr: &str) -> Result<StaticPeerEdit> {
        Node::peers_rm(self, addr)
    }
    fn follow(&self, id: &str, metadata_only: bool) -> Result<FollowView> {
        Node::follow(self, id, metadata_only)
    }
    fn unfollow(&self, id: &str) -> Result<FollowView> {
        Node::unfollow(self, id)
    }
    fn follow_list(&self) -> Result<Vec<FollowRow>> {
        Node::follow_list(self)
    }
    fn follow_status(&self, id: &str) -> Result<FollowStatusView> {
        Node::follow_status(self, id)
    }
    fn group_status(&self) -> Result<GroupStatusView> {
        Node::group_status(self)
    }
}

/// The blocks a [`Service`] can hand out, as a [`BlockGet`]: the UnixFS reader runs over
/// it unchanged, on this machine, whether the blocks come from the repository or from the
/// daemon. The store that holds a block checks it against its CID on every read, so it
/// is not hashed a second time here.
pub struct ServiceBlocks<'a>(pub &'a dyn Service);

impl BlockGet for ServiceBlocks<'_> {
    fn get_block(&self, cid: &Cid) -> Result<Vec<u8>, BlockError> {
        let data = self.0.block(cid).map_err(|err| match err {
            NodeError::Block(err) => *err,
            err => match err.code() {
                super::ErrorCode::NotFound => BlockError::NotFound(*cid),
                super::ErrorCode::Corrupt => BlockError::Corrupt(*cid),
                _ => BlockError::Backend(super::one_line(&err)),
            },
        })?;
        Ok(data)
    }
}
