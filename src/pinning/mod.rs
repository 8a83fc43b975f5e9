//! The IPFS Pinning Service API's objects and the pin requests this node holds for
//! others (ipfs/pinning-services-api-spec): `Pin` in, `PinStatus` out, listed with the
//! spec's filters, persisted in the store's database so that they survive restarts.
//!
//! A request names a CID and, optionally, `origins` to fetch it from. The daemon's
//! pinning task (`daemon::pinning`) moves each request from `queued` through
//! `pinning` to `pinned` or `failed`, and holds the DAG with the pin reason
//! [`pin_reason`]. This module knows nothing of the network or of HTTP.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cid::Cid;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

/// Pin requests by request id.
const TREE_REQUESTS: &str = "pinning/requests";
/// The same requests in the order they were made: `created` (microseconds since
/// 1970, big-endian) then the request id, to an empty value.
const TREE_BY_CREATED: &str = "pinning/by_created";

/// What this node asked of remote pinning services: service name, a zero byte, then
/// the collection id, to a JSON [`RemotePin`].
const TREE_REMOTE: &str = "pinning/remote";

/// The spec's limits.
pub const MAX_NAME_CHARS: usize = 255;
pub const MAX_ORIGINS: usize = 20;
pub const MAX_META_ENTRIES: usize = 1000;
pub const MAX_LIMIT: usize = 1000;
pub const DEFAULT_LIMIT: usize = 10;
pub const MAX_CID_FILTER: usize = 10;
/// Longest `meta` key or value kept; the spec sets none, a node must.
pub const MAX_META_TEXT: usize = 1024;
/// Pin requests not yet settled (queued or pinning) at once; more are refused.
pub const MAX_UNSETTLED: usize = 4096;

/// The pin reason that holds the DAG of the request `requestid`.
pub fn pin_reason(requestid: &str) -> String {
    format!("pin-request:{requestid}")
}

#[derive(Debug, thiserror::Error)]
pub enum PinningError {
    #[error("{0}")]
    Invalid(String),
    #[error("no pin request {0}")]
    NotFound(String),
    #[error("{0}")]
    TooMany(String),
    #[error("pin request database: {0}")]
    Db(#[from] sled::Error),
    #[error("pin request {0} is damaged in the database")]
    Damaged(String),
}

/// A pin request as a client sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub cid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

impl Pin {
    /// Checks the request against the spec's limits; returns the CID it names.
    pub fn validate(&self) -> Result<Cid, PinningError> {
        let cid = Cid::try_from(self.cid.as_str())
            .map_err(|err| PinningError::Invalid(format!("cid {:?}: {err}", self.cid)))?;
        if let Some(name) = &self.name {
            if name.chars().count() > MAX_NAME_CHARS {
                return Err(PinningError::Invalid(format!(
                    "name is longer than {MAX_NAME_CHARS} characters"
                )));
            }
        }
        if self.origins.len() > MAX_ORIGINS {
            return Err(PinningError::Invalid(format!(
                "more than {MAX_ORIGINS} origins"
            )));
        }
        for origin in &self.origins {
            origin
                .parse::<libp2p::Multiaddr>()
                .map_err(|err| PinningError::Invalid(format!("origin {origin:?}: {err}")))?;
        }
        let mut unique = self.origins.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != self.origins.len() {
            return Err(PinningError::Invalid("origins repeat an address".into()));
        }
        if self.meta.len() > MAX_META_ENTRIES {
            return Err(PinningError::Invalid(format!(
                "more than {MAX_META_ENTRIES} meta entries"
            )));
        }
        if self
            .meta
            .iter()
            .any(|(key, value)| key.len() > MAX_META_TEXT || value.len() > MAX_META_TEXT)
        {
            return Err(PinningError::Invalid(format!(
                "a meta key or value is longer than {MAX_META_TEXT} bytes"
            )));
        }
        Ok(cid)
    }
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinState {
    Queued,
    Pinning,
    Pinned,
    Failed,
}

impl PinState {
    pub fn parse(text: &str) -> Option<PinState> {
        match text {
            "queued" => Some(PinState::Queued),
            "pinning" => Some(PinState::Pinning),
            "pinned" => Some(PinState::Pinned),
            "failed" => Some(PinState::Failed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PinState::Queued => "queued",
            PinState::Pinning => "pinning",
            PinState::Pinned => "pinned",
            PinState::Failed => "failed",
        }
    }

    /// Queued or pinning: the pinning task still has work to do.
    pub fn unsettled(self) -> bool {
        matches!(self, PinState::Queued | PinState::Pinning)
    }
}

/// A request as it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinRequest {
    pub requestid: String,
    /// Microseconds since 1970: unique across the node's requests (the spec pages by it).
    pub created_micros: u64,
    pub pin: Pin,
    pub status: PinState,
    /// Why it failed, or what it is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    /// The request this one replaced: its pin is let go once this one settles, so that
    /// blocks both share are held throughout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<Replaced>,
}

/// A request replaced by another, whose pin stays until the other settles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replaced {
    pub requestid: String,
    pub cid: String,
}

impl PinRequest {
    pub fn cid(&self) -> Result<Cid, PinningError> {
        Cid::try_from(self.pin.cid.as_str())
            .map_err(|_| PinningError::Damaged(self.requestid.clone()))
    }

    pub fn created(&self) -> String {
        rfc3339_micros(self.created_micros)
    }

    /// The spec's `PinStatus` for this request, with `delegates` (this node's addresses).
    pub fn status_view(&self, delegates: &[String]) -> PinStatus {
        let mut info = BTreeMap::new();
        if let Some(details) = &self.details {
            info.insert("status_details".to_string(), details.clone());
        }
        PinStatus {
            requestid: self.requestid.clone(),
            status: self.status,
            created: self.created(),
            pin: self.pin.clone(),
            delegates: delegates.to_vec(),
            info,
        }
    }
}

/// The spec's `PinStatus`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinStatus {
    pub requestid: String,
    pub status: PinState,
    pub created: String,
    pub pin: Pin,
    pub delegates: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub info: BTreeMap<String, String>,
}

/// The spec's `PinResults`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinResults {
    pub count: u64,
    pub results: Vec<PinStatus>,
}

/// The spec's `Failure`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub error: FailureError,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureError {
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

/// How `name` is compared (`match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextMatch {
    #[default]
    Exact,
    IExact,
    Partial,
    IPartial,
}

/// The filters of `GET /pins`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub cids: Vec<Cid>,
    pub name: Option<String>,
    pub text_match: TextMatch,
    /// Default: pinned only.
    pub statuses: Vec<PinState>,
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub limit: usize,
    pub meta: BTreeMap<String, String>,
}

impl Default for ListQuery {
    fn default() -> Self {
        ListQuery {
            cids: Vec::new(),
            name: None,
            text_match: TextMatch::Exact,
            statuses: vec![PinState::Pinned],
            before: None,
            after: None,
            limit: DEFAULT_LIMIT,
            meta: BTreeMap::new(),
        }
    }
}

impl ListQuery {
    /// Parses a query string (`cid=a,b&status=queued,pinning&limit=5&meta={...}`).
    pub fn parse(query: &str) -> Result<ListQuery, PinningError> {
        let mut parsed = ListQuery::default();
        let invalid = |what: String| PinningError::Invalid(what);
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "cid" => {
                    let cids: Vec<&str> = value.split(',').filter(|c| !c.is_empty()).collect();
                    if cids.is_empty() || cids.len() > MAX_CID_FILTER {
                        return Err(invalid(format!(
                            "cid takes 1 to {MAX_CID_FILTER} CIDs separated by commas"
                        )));
                    }
                    for cid in cids {
                        parsed.cids.push(
                            Cid::try_from(cid)
                                .map_err(|err| invalid(format!("cid {cid:?}: {err}")))?,
                        );
                    }
                }
                "name" => {
                    if value.chars().count() > MAX_NAME_CHARS {
                        return Err(invalid(format!(
                            "name is longer than {MAX_NAME_CHARS} characters"
                        )));
                    }
                    parsed.name = Some(value.into_owned());
                }
                "match" => {
                    parsed.text_match = match value.as_ref() {
                        "exact" => TextMatch::Exact,
                        "iexact" => TextMatch::IExact,
                        "partial" => TextMatch::Partial,
                        "ipartial" => TextMatch::IPartial,
                        other => {
                            return Err(invalid(format!(
                                "match {other:?} is not one of exact, iexact, partial, ipartial"
                            )))
                        }
                    }
                }
                "status" => {
                    let mut statuses = Vec::new();
                    for status in value.split(',') {
                        statuses.push(PinState::parse(status).ok_or_else(|| {
                            invalid(format!(
                                "status {status:?} is not one of queued, pinning, pinned, failed"
                            ))
                        })?);
                    }
                    parsed.statuses = statuses;
                }
                "before" => parsed.before = Some(parse_time(&value)?),
                "after" => parsed.after = Some(parse_time(&value)?),
                "limit" => {
                    let limit: usize = value
                        .parse()
                        .map_err(|_| invalid(format!("limit {value:?} is not a number")))?;
                    if !(1..=MAX_LIMIT).contains(&limit) {
                        return Err(invalid(format!("limit must be 1 to {MAX_LIMIT}")));
                    }
                    parsed.limit = limit;
                }
                "meta" => {
                    parsed.meta = serde_json::from_str(&value).map_err(|err| {
                        invalid(format!("meta must be a JSON object of strings: {err}"))
                    })?;
                }
                other => return Err(invalid(format!("unknown filter {other:?}"))),
            }
        }
        Ok(parsed)
    }

    fn matches(&self, request: &PinRequest) -> bool {
        if !self.statuses.contains(&request.status) {
            return false;
        }
        if self
            .before
            .is_some_and(|before| request.created_micros >= before)
            || self
                .after
                .is_some_and(|after| request.created_micros <= after)
        {
            return false;
        }
        if !self.cids.is_empty()
            && !Cid::try_from(request.pin.cid.as_str()).is_ok_and(|cid| self.cids.contains(&cid))
        {
            return false;
        }
        if let Some(wanted) = &self.name {
            let Some(name) = &request.pin.name else {
                return false;
            };
            let found = match self.text_match {
                TextMatch::Exact => name == wanted,
                TextMatch::IExact => name.to_lowercase() == wanted.to_lowercase(),
                TextMatch::Partial => name.contains(wanted.as_str()),
                TextMatch::IPartial => name.to_lowercase().contains(&wanted.to_lowercase()),
            };
            if !found {
                return false;
            }
        }
        self.meta
            .iter()
            .all(|(key, value)| request.pin.meta.get(key) == Some(value))
    }
}

fn parse_time(text: &str) -> Result<u64, PinningError> {
    let time = humantime::parse_rfc3339_weak(text)
        .or_else(|_| humantime::parse_rfc3339(text))
        .map_err(|_| PinningError::Invalid(format!("{text:?} is not an RFC 3339 time")))?;
    Ok(micros_since_epoch(time))
}

fn micros_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `2026-12-01T18:39:26.123456Z`.
pub fn rfc3339_micros(micros: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(micros)).to_string()
}

/// The pin requests in the store's database. Cheap to clone.
#[derive(Clone)]
pub struct PinRequests {
    requests: sled::Tree,
    by_created: sled::Tree,
    /// The newest `created` handed out, so that no two requests share one.
    last_created: Arc<Mutex<u64>>,
}

impl PinRequests {
    pub fn open(db: &sled::Db) -> Result<PinRequests, PinningError> {
        let requests = db.open_tree(TREE_REQUESTS)?;
        let by_created = db.open_tree(TREE_BY_CREATED)?;
        let last = match by_created.last()? {
            Some((key, _)) => key
                .first_chunk::<8>()
                .map(|bytes| u64::from_be_bytes(*bytes))
                .unwrap_or(0),
            None => 0,
        };
        Ok(PinRequests {
            requests,
            by_created,
            last_created: Arc::new(Mutex::new(last)),
        })
    }

    fn next_created(&self) -> u64 {
        let mut last = self
            .last_created
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *last = micros_since_epoch(SystemTime::now()).max(*last + 1);
        *last
    }

    /// Stores a new request, queued. `replaces` names the request it takes the place
    /// of (removed from the list at once; its pin is let go later by the pinning task).
    pub fn create(&self, pin: Pin, replaces: Option<String>) -> Result<PinRequest, PinningError> {
        pin.validate()?;
        if self.unsettled()?.len() >= MAX_UNSETTLED {
            return Err(PinningError::TooMany(format!(
                "{MAX_UNSETTLED} pin requests are waiting already; try again later"
            )));
        }
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id)
            .map_err(|err| PinningError::Invalid(format!("no random request id: {err}")))?;
        let old = match &replaces {
            Some(old) => Some(self.get(old)?),
            None => None,
        };
        let request = PinRequest {
            requestid: id.iter().map(|b| format!("{b:02x}")).collect(),
            created_micros: self.next_created(),
            pin,
            status: PinState::Queued,
            details: None,
            replaces: old.as_ref().map(|old| Replaced {
                requestid: old.requestid.clone(),
                cid: old.pin.cid.clone(),
            }),
        };
        let value =
            serde_json::to_vec(&request).map_err(|err| PinningError::Invalid(err.to_string()))?;
        (&self.requests, &self.by_created)
            .transaction(|(requests, by_created)| {
                if let Some(old) = &old {
                    if requests.remove(old.requestid.as_bytes())?.is_none() {
                        return Err(ConflictableTransactionError::Abort(()));
                    }
                    by_created.remove(created_key(old))?;
                }
                requests.insert(request.requestid.as_bytes(), value.as_slice())?;
                by_created.insert(created_key(&request), &[])?;
                Ok(())
            })
            .map_err(|err| match err {
                TransactionError::Abort(()) => {
                    PinningError::NotFound(replaces.clone().unwrap_or_default())
                }
                TransactionError::Storage(err) => PinningError::Db(err),
            })?;
        self.requests.flush()?;
        Ok(request)
    }

    pub fn get(&self, requestid: &str) -> Result<PinRequest, PinningError> {
        let value = self
            .requests
            .get(requestid.as_bytes())?
            .ok_or_else(|| PinningError::NotFound(requestid.to_string()))?;
        decode(requestid, &value)
    }

    /// Removes a request; returns it. Its pin is the caller's to let go.
    pub fn remove(&self, requestid: &str) -> Result<PinRequest, PinningError> {
        let request = self.get(requestid)?;
        (&self.requests, &self.by_created)
            .transaction(|(requests, by_created)| {
                requests.remove(requestid.as_bytes())?;
                by_created.remove(created_key(&request))?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|err| match err {
                TransactionError::Abort(()) => PinningError::NotFound(requestid.to_string()),
                TransactionError::Storage(err) => PinningError::Db(err),
            })?;
        self.requests.flush()?;
        Ok(request)
    }

    /// Sets the state of a request that still exists; `false` when it was removed
    /// meanwhile (the caller then lets go of what it pinned for it).
    pub fn set_state(
        &self,
        requestid: &str,
        status: PinState,
        details: Option<String>,
    ) -> Result<bool, PinningError> {
        let mut damaged = false;
        let updated = self
            .requests
            .update_and_fetch(requestid.as_bytes(), |old| {
                let old = old?;
                match serde_json::from_slice::<PinRequest>(old) {
                    Ok(mut request) => {
                        request.status = status;
                        request.details = details.clone();
                        serde_json::to_vec(&request).ok()
                    }
                    Err(_) => {
                        damaged = true;
                        Some(old.to_vec())
                    }
                }
            })?;
        if damaged {
            return Err(PinningError::Damaged(requestid.to_string()));
        }
        self.requests.flush()?;
        Ok(updated.is_some())
    }

    /// Requests still queued or pinning, oldest first.
    pub fn unsettled(&self) -> Result<Vec<PinRequest>, PinningError> {
        let mut out = Vec::new();
        for item in self.by_created.iter() {
            let (key, _) = item?;
            let Some(id) = key.get(8..).and_then(|id| std::str::from_utf8(id).ok()) else {
                continue;
            };
            match self.get(id) {
                Ok(request) if request.status.unsettled() => out.push(request),
                Ok(_) | Err(PinningError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(out)
    }

    /// Every request, oldest first.
    pub fn all(&self) -> Result<Vec<PinRequest>, PinningError> {
        let mut out = Vec::new();
        for item in self.requests.iter() {
            let (key, value) = item?;
            out.push(decode(&String::from_utf8_lossy(&key), &value)?);
        }
        out.sort_by_key(|request| request.created_micros);
        Ok(out)
    }

    /// The requests `query` selects, newest first: how many in all, and the first
    /// `query.limit` of them.
    pub fn list(&self, query: &ListQuery) -> Result<(u64, Vec<PinRequest>), PinningError> {
        let start = query.after.map_or(0, |after| after.saturating_add(1));
        let end = query.before.unwrap_or(u64::MAX);
        let mut count = 0u64;
        let mut results = Vec::new();
        if start >= end {
            return Ok((0, results));
        }
        let range = self
            .by_created
            .range(start.to_be_bytes().to_vec()..end.to_be_bytes().to_vec());
        for item in range.rev() {
            let (key, _) = item?;
            let Some(id) = key.get(8..).and_then(|id| std::str::from_utf8(id).ok()) else {
                continue;
            };
            let request = match self.get(id) {
                Ok(request) => request,
                Err(PinningError::NotFound(_)) => continue,
                Err(err) => return Err(err),
            };
            if query.matches(&request) {
                count += 1;
                if results.len() < query.limit {
                    results.push(request);
                }
            }
        }
        Ok((count, results))
    }
}

/// A collection version this node asked a remote pinning service to pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemotePin {
    pub service: String,
    pub collection: String,
    pub seq: u64,
    /// The head CID asked for.
    pub head: String,
    /// The service's request id; `None` while the service has not taken the request.
    #[serde(default)]
    pub requestid: Option<String>,
    /// The service's last word on it; `failed` also when the service could not be asked.
    pub status: PinState,
    #[serde(default)]
    pub details: Option<String>,
}

/// The remote pins in the store's database. Cheap to clone.
#[derive(Clone)]
pub struct RemotePins {
    tree: sled::Tree,
}

impl RemotePins {
    pub fn open(db: &sled::Db) -> Result<RemotePins, PinningError> {
        Ok(RemotePins {
            tree: db.open_tree(TREE_REMOTE)?,
        })
    }

    fn key(service: &str, collection: &str) -> Vec<u8> {
        let mut key = service.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(collection.as_bytes());
        key
    }

    pub fn get(&self, service: &str, collection: &str) -> Result<Option<RemotePin>, PinningError> {
        match self.tree.get(Self::key(service, collection))? {
            Some(value) => Ok(Some(decode_remote(collection, &value)?)),
            None => Ok(None),
        }
    }

    pub fn put(&self, pin: &RemotePin) -> Result<(), PinningError> {
        let value =
            serde_json::to_vec(pin).map_err(|err| PinningError::Invalid(err.to_string()))?;
        self.tree
            .insert(Self::key(&pin.service, &pin.collection), value)?;
        self.tree.flush()?;
        Ok(())
    }

    /// Every service's pin of `collection`.
    pub fn of_collection(&self, collection: &str) -> Result<Vec<RemotePin>, PinningError> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (_, value) = item?;
            let pin = decode_remote(collection, &value)?;
            if pin.collection == collection {
                out.push(pin);
            }
        }
        Ok(out)
    }
}

fn decode_remote(what: &str, value: &[u8]) -> Result<RemotePin, PinningError> {
    serde_json::from_slice(value)
        .map_err(|_| PinningError::Damaged(format!("remote pin of {what}")))
}

fn created_key(request: &PinRequest) -> Vec<u8> {
    let mut key = request.created_micros.to_be_bytes().to_vec();
    key.extend_from_slice(request.requestid.as_bytes());
    key
}

fn decode(requestid: &str, value: &[u8]) -> Result<PinRequest, PinningError> {
    serde_json::from_slice(value).map_err(|_| PinningError::Damaged(requestid.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(cid: &str, name: &str) -> Pin {
        Pin {
            cid: cid.into(),
            name: Some(name.into()),
            origins: vec![],
            meta: BTreeMap::from([("app".to_string(), name.to_string())]),
        }
    }

    const HELLO: &str = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e";
    const EMPTY: &str = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";

    #[test]
    fn requests_list_newest_first_with_the_specs_filters_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let requests = PinRequests::open(&db).unwrap();
        let a = requests.create(pin(HELLO, "Lesson One"), None).unwrap();
        let b = requests.create(pin(EMPTY, "lesson two"), None).unwrap();
        let c = requests.create(pin(HELLO, "three"), None).unwrap();
        assert!(a.created_micros < b.created_micros && b.created_micros < c.created_micros);
        // By default only pinned requests are listed.
        assert_eq!(requests.list(&ListQuery::default()).unwrap().0, 0);
        assert!(requests
            .set_state(&b.requestid, PinState::Pinned, None)
            .unwrap());
        let all = ListQuery::parse("status=queued,pinning,pinned,failed").unwrap();
        let (count, listed) = requests.list(&all).unwrap();
        assert_eq!(count, 3);
        let ids: Vec<&str> = listed.iter().map(|r| r.requestid.as_str()).collect();
        assert_eq!(ids, [&c.requestid, &b.requestid, &a.requestid]);

        let by = |query: &str| {
            let (count, listed) = requests.list(&ListQuery::parse(query).unwrap()).unwrap();
            (
                count,
                listed.into_iter().map(|r| r.requestid).collect::<Vec<_>>(),
            )
        };
        assert_eq!(by(""), (1, vec![b.requestid.clone()]));
        assert_eq!(
            by(&format!("status=queued&cid={HELLO}")),
            (2, vec![c.requestid.clone(), a.requestid.clone()])
        );
        assert_eq!(by("status=queued&limit=1").0, 2);
        assert_eq!(by("status=queued&limit=1").1, vec![c.requestid.clone()]);
        assert_eq!(by("status=queued,pinned&name=lesson&match=ipartial").0, 2);
        assert_eq!(by("status=queued,pinned&name=lesson&match=partial").0, 1);
        assert_eq!(
            by("status=queued,pinned&name=LESSON%20ONE&match=iexact").0,
            1
        );
        assert_eq!(by("status=queued,pinned&name=LESSON%20ONE").0, 0);
        let meta = url::form_urlencoded::byte_serialize(br#"{"app":"three"}"#).collect::<String>();
        assert_eq!(
            by(&format!("status=queued&meta={meta}")),
            (1, vec![c.requestid.clone()])
        );
        let before =
            url::form_urlencoded::byte_serialize(c.created().as_bytes()).collect::<String>();
        assert_eq!(
            by(&format!("status=queued&before={before}")),
            (1, vec![a.requestid.clone()])
        );
        let after =
            url::form_urlencoded::byte_serialize(a.created().as_bytes()).collect::<String>();
        assert_eq!(
            by(&format!("status=queued&after={after}")),
            (1, vec![c.requestid.clone()])
        );

        for bad in [
            "limit=0",
            "limit=1001",
            "status=done",
            "cid=nope",
            "match=fuzzy",
            "meta=[1]",
            "before=yesterday",
            "colour=red",
        ] {
            assert!(
                matches!(ListQuery::parse(bad), Err(PinningError::Invalid(_))),
                "{bad}"
            );
        }

        // A replacement takes the old request's place in one step.
        let d = requests
            .create(pin(EMPTY, "four"), Some(a.requestid.clone()))
            .unwrap();
        assert!(matches!(
            requests.get(&a.requestid),
            Err(PinningError::NotFound(_))
        ));
        assert_eq!(
            d.replaces.as_ref().map(|r| r.requestid.as_str()),
            Some(a.requestid.as_str())
        );
        assert!(matches!(
            requests.create(pin(EMPTY, "five"), Some(a.requestid.clone())),
            Err(PinningError::NotFound(_))
        ));
        requests.remove(&c.requestid).unwrap();
        assert!(!requests
            .set_state(&c.requestid, PinState::Pinned, None)
            .unwrap());
        let unsettled: Vec<String> = requests
            .unsettled()
            .unwrap()
            .into_iter()
            .map(|r| r.requestid)
            .collect();
        assert_eq!(unsettled, vec![d.requestid.clone()]);
        drop(requests);
        drop(db);

        let db = sled::open(dir.path()).unwrap();
        let reopened = PinRequests::open(&db).unwrap();
        assert_eq!(reopened.get(&d.requestid).unwrap(), d);
        assert_eq!(reopened.list(&all).unwrap().0, 2);
        let e = reopened.create(pin(HELLO, "six"), None).unwrap();
        assert!(e.created_micros > d.created_micros);
    }

    #[test]
    fn requests_made_at_once_get_distinct_created_times() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let requests = PinRequests::open(&db).unwrap();
        let made: Vec<u64> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        (0..50)
                            .map(|i| {
                                requests
                                    .create(pin(HELLO, &format!("{i}")), None)
                                    .unwrap()
                                    .created_micros
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        let mut distinct = made.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 400);
        let all = ListQuery::parse("status=queued&limit=1000").unwrap();
        assert_eq!(requests.list(&all).unwrap().0, 400);
    }

    #[test]
    fn pins_outside_the_specs_limits_are_refused() {
        let mut bad = pin(HELLO, "ok");
        bad.cid = "not a cid".into();
        assert!(bad.validate().is_err());
        let mut long = pin(HELLO, "ok");
        long.name = Some("n".repeat(256));
        assert!(long.validate().is_err());
        let mut origins = pin(HELLO, "ok");
        origins.origins = (0..21).map(|i| format!("/ip4/127.0.0.1/tcp/{i}")).collect();
        assert!(origins.validate().is_err());
        origins.origins = vec!["127.0.0.1:4001".into()];
        assert!(origins.validate().is_err());
        origins.origins = vec!["/ip4/127.0.0.1/tcp/1".into(), "/ip4/127.0.0.1/tcp/1".into()];
        assert!(origins.validate().is_err());
        let v0 = Pin {
            cid: "Qmf412jQZiuVUtdgnB36FXFX7xg5V6KEbSJ4dpQuhkLyfD".into(),
            ..pin(HELLO, "ok")
        };
        assert!(v0.validate().is_ok());
    }
}
