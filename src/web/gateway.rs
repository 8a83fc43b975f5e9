//! `/ipfs/{cid}[/path]`: the IPFS path gateway (files, folders, ranges) and the
//! trustless gateway (`?format=raw`, `?format=car`), after the specifications at
//! specs.ipfs.tech/http-gateways.
//!
//! Blocking work (sled, block files, hashing) runs on blocking threads: the request's
//! plan (status, headers, what to stream) is made on one, and the body is produced on
//! another that writes into a bounded channel (see [`super::body`]).

use std::io::Write;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use cid::Cid;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

use super::blocks::{Recording, RequestBlocks};
use super::body::{self, ChannelWriter};
use super::car_scope::{self, CarEmitter, DagScope, EntityBytes};
use super::mime;
use super::path::{BadPath, ContentPath};
use super::range::{self, RangeRequest};
use super::App;
use crate::block::{codec, BlockError};
use crate::car::CarError;
use crate::links::get_verified;
use crate::metrics::{Protocol, ProtocolLabels};
use crate::unixfs::pb::{DataType, PbNode, UnixfsData};
use crate::unixfs::reader::{self, EntryKind, ReadError};

/// `Cache-Control` of everything under `/ipfs/`: content never changes under a CID.
const IMMUTABLE: &str = "public, max-age=29030400, immutable";
/// Policies for content under `/ipfs/`: content from a trusted publisher may only be
/// framed by this node's own pages; everything else is also sandboxed, so that it
/// cannot run scripts as this origin.
const CSP_TRUSTED: &str = "frame-ancestors 'self'";
const CSP_SANDBOX: &str = "sandbox; frame-ancestors 'self'";
/// Bumped when the generated folder listing changes, so caches drop old ones.
const DIR_INDEX_VERSION: &str = "oermesh-2";
/// Entries on one page of a folder listing: a folder of any size costs one page of
/// entries (and, sharded, one shard node per level) per request.
pub const LISTING_PAGE: usize = 500;
const X_IPFS_PATH: HeaderName = HeaderName::from_static("x-ipfs-path");
const X_IPFS_ROOTS: HeaderName = HeaderName::from_static("x-ipfs-roots");
const CAR_TYPE: &str = "application/vnd.ipld.car";
const RAW_TYPE: &str = "application/vnd.ipld.raw";

/// Why a request could not be answered, with the status it maps to.
#[derive(Debug)]
pub enum GatewayError {
    BadRequest(String),
    NotFound(String),
    NotAcceptable(String),
    Gone(String),
    PreconditionFailed,
    RangeNotSatisfiable { size: u64, reason: String },
    Timeout(String),
    Internal(String),
}

impl From<BadPath> for GatewayError {
    fn from(err: BadPath) -> Self {
        GatewayError::BadRequest(err.0)
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            GatewayError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            GatewayError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            GatewayError::NotAcceptable(m) => (StatusCode::NOT_ACCEPTABLE, m),
            GatewayError::Gone(m) => (StatusCode::GONE, m),
            GatewayError::PreconditionFailed => (
                StatusCode::PRECONDITION_FAILED,
                "the content is not stored on this node (only-if-cached)".into(),
            ),
            GatewayError::RangeNotSatisfiable { size, reason } => {
                let mut response = text_response(StatusCode::RANGE_NOT_SATISFIABLE, &reason);
                insert(
                    &mut response,
                    header::CONTENT_RANGE,
                    &format!("bytes */{size}"),
                );
                return response;
            }
            GatewayError::Timeout(m) => {
                let mut response = text_response(StatusCode::GATEWAY_TIMEOUT, &m);
                insert(&mut response, header::RETRY_AFTER, "30");
                return response;
            }
            GatewayError::Internal(m) => {
                tracing::warn!(error = %m, "gateway request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, m)
            }
        };
        text_response(status, &message)
    }
}

pub fn text_response(status: StatusCode, message: &str) -> Response {
    let reason = status.canonical_reason().unwrap_or("Error");
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{} {reason}: {message}\n", status.as_u16()),
    )
        .into_response()
}

fn insert(response: &mut Response, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

/// A read error in the words of the gateway specification: missing content is 404, or
/// 504 when peers were asked and did not answer in time; broken DAGs are 404 too (the
/// path cannot be followed); a corrupt local block is the node's own fault.
fn read_error(err: ReadError, blocks: &RequestBlocks<'_>) -> GatewayError {
    match err {
        ReadError::NotFound(cid) if blocks.timed_out() => GatewayError::Timeout(format!(
            "block {cid} is not on this node and no peer sent it in time"
        )),
        ReadError::NotFound(cid) => {
            GatewayError::NotFound(format!("block {cid} is not on this node"))
        }
        ReadError::InvalidPath { path, reason } => {
            GatewayError::BadRequest(format!("invalid path {path:?}: {reason}"))
        }
        err @ (ReadError::NoSuchEntry { .. }
        | ReadError::NotADirectory(_)
        | ReadError::NotAFile(_)
        | ReadError::Malformed { .. }
        | ReadError::UnsupportedCodec { .. }
        | ReadError::TooDeep { .. }
        | ReadError::SizeMismatch { .. }) => GatewayError::NotFound(err.to_string()),
        err => GatewayError::Internal(err.to_string()),
    }
}

fn block_error(err: BlockError, blocks: &RequestBlocks<'_>) -> GatewayError {
    read_error(ReadError::from(err), blocks)
}

/// What the client asked for, from `?format=` or else `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// The content itself: files, folder listings.
    Deserialized,
    Raw,
    Car,
}

/// The longest entry name `?after=` takes: longer than any file system allows.
const MAX_ENTRY_NAME: usize = 1024;

/// The query parameters the gateway reads; others are ignored.
#[derive(Debug, Default)]
struct Params {
    format: Option<String>,
    filename: Option<String>,
    download: bool,
    dag_scope: Option<DagScope>,
    entity_bytes: Option<EntityBytes>,
    /// A folder listing's page: the entries after the one of this name.
    after: Option<String>,
}

impl Params {
    fn parse(query: &str) -> Result<Params, GatewayError> {
        let mut params = Params::default();
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "format" => params.format = Some(value.into_owned()),
                "filename" => {
                    if value.is_empty()
                        || value.len() > 255
                        || value.contains(['/', '\\'])
                        || value.chars().any(char::is_control)
                    {
                        return Err(GatewayError::BadRequest(
                            "filename must be a plain file name (no slashes or control characters, at most 255 bytes)".into(),
                        ));
                    }
                    params.filename = Some(value.into_owned());
                }
                "download" => params.download = value == "true",
                "after" => {
                    if value.len() > MAX_ENTRY_NAME || value.chars().any(char::is_control) {
                        return Err(GatewayError::BadRequest(format!(
                            "after must be an entry name (no control characters, at most {MAX_ENTRY_NAME} bytes)"
                        )));
                    }
                    params.after = Some(value.into_owned());
                }
                "dag-scope" => {
                    params.dag_scope = Some(match value.as_ref() {
                        "block" => DagScope::Block,
                        "entity" => DagScope::Entity,
                        "all" => DagScope::All,
                        other => {
                            return Err(GatewayError::BadRequest(format!(
                                "dag-scope must be block, entity or all, not {other:?}"
                            )))
                        }
                    })
                }
                "entity-bytes" => {
                    params.entity_bytes = Some(EntityBytes::parse(&value).ok_or_else(|| {
                        GatewayError::BadRequest(format!(
                            "entity-bytes must be from:to (integers, or * for the end), not {value:?}"
                        ))
                    })?)
                }
                "car-version" if value != "1" => {
                    return Err(GatewayError::BadRequest(
                        "only CAR version 1 is served".into(),
                    ))
                }
                "car-order" if value != "dfs" && value != "unk" => {
                    return Err(GatewayError::BadRequest(
                        "car-order must be dfs or unk".into(),
                    ))
                }
                "car-dups" if value != "n" => {
                    return Err(GatewayError::BadRequest(
                        "only car-dups=n is served: each block once".into(),
                    ))
                }
                _ => {}
            }
        }
        Ok(params)
    }
}

/// Picks the response format. `?format=` wins over `Accept`; in `Accept`, the media
/// ranges are tried by falling quality, and a CAR range whose parameters this node
/// cannot meet (another version, `dups=y`) is passed over.
fn negotiate(params: &Params, accept: Option<&str>) -> Result<(Format, bool), GatewayError> {
    if let Some(format) = &params.format {
        return match format.as_str() {
            "raw" => Ok((Format::Raw, false)),
            "car" => Ok((Format::Car, false)),
            other => Err(GatewayError::BadRequest(format!(
                "format={other} is not served here; use raw or car"
            ))),
        };
    }
    let Some(accept) = accept else {
        return Ok((Format::Deserialized, false));
    };
    let mut ranges: Vec<(f32, &str)> = accept
        .split(',')
        .map(|range| {
            let quality = range
                .split(';')
                .skip(1)
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (quality, range.trim())
        })
        .filter(|(quality, _)| *quality > 0.0)
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut unmet_car = false;
    for (_, range) in ranges {
        let mut parts = range.split(';').map(str::trim);
        let essence = parts.next().unwrap_or_default().to_ascii_lowercase();
        match essence.as_str() {
            RAW_TYPE => return Ok((Format::Raw, true)),
            CAR_TYPE => {
                let acceptable = parts.all(|param| {
                    let (name, value) = param.split_once('=').unwrap_or((param, ""));
                    match name.trim().to_ascii_lowercase().as_str() {
                        "version" => value.trim() == "1",
                        "order" => matches!(value.trim(), "dfs" | "unk"),
                        "dups" => value.trim() == "n",
                        _ => true,
                    }
                });
                if acceptable {
                    return Ok((Format::Car, true));
                }
                unmet_car = true;
            }
            "*/*" | "text/html" | "text/*" | "application/xhtml+xml" => {
                return Ok((Format::Deserialized, false))
            }
            _ => {}
        }
    }
    if unmet_car {
        return Err(GatewayError::NotAcceptable(
            "this node serves CARs as version=1; order=dfs; dups=n".into(),
        ));
    }
    Ok((Format::Deserialized, false))
}

/// How content stands with this node's records.
struct ContentPolicy {
    /// A trusted publisher's record, not retracted, describes the root.
    trusted: bool,
}

/// Checks the root against the record layer: retracted content (every record that
/// describes it is retracted) is gone, with its publisher's reason.
fn content_policy(app: &App, root: &Cid) -> Result<ContentPolicy, GatewayError> {
    let records = app
        .records()
        .content_records(root)
        .map_err(|err| GatewayError::Internal(err.to_string()))?;
    let live: Vec<_> = records.iter().filter(|r| !r.summary.retracted).collect();
    if live.is_empty() {
        if let Some(retracted) = records.first() {
            let reason = super::retraction_reason(app, &retracted.cid)
                .unwrap_or_else(|| "no reason could be read".to_string());
            return Err(GatewayError::Gone(format!(
                "the publisher retracted this content (record {}): {reason}",
                retracted.cid
            )));
        }
    }
    Ok(ContentPolicy {
        trusted: live.iter().any(|record| record.trusted),
    })
}

/// What a request is answered with, decided before any body byte is produced.
enum Plan {
    Ready(Response),
    /// Headers now, then `length` bytes (when known) from `produce`.
    Stream {
        status: StatusCode,
        headers: HeaderMap,
        length: Option<u64>,
        produce: Producer,
    },
}

type Producer = Box<dyn FnOnce(&App, &mut ChannelWriter) -> Result<(), String> + Send>;

/// The request's parts the gateway reads.
struct Ask {
    head: bool,
    path: ContentPath,
    raw_path: String,
    query: String,
    params: Params,
    format: Format,
    format_from_accept: bool,
    headers: HeaderMap,
    max_ranges: usize,
}

pub async fn handle(State(app): State<Arc<App>>, request: Request) -> Response {
    let ask = match read_request(&request, app.config.max_ranges) {
        Ok(ask) => ask,
        Err(err) => return err.into_response(),
    };
    let planner = app.clone();
    let plan = match tokio::task::spawn_blocking(move || plan(&planner, ask)).await {
        Ok(Ok(plan)) => plan,
        Ok(Err(err)) => return err.into_response(),
        Err(err) => {
            return GatewayError::Internal(format!("request task failed: {err}")).into_response()
        }
    };
    match plan {
        Plan::Ready(response) => {
            if let Some(length) = http_body::Body::size_hint(response.body()).exact() {
                app.metrics
                    .bytes_served
                    .get_or_create(&ProtocolLabels {
                        protocol: Protocol::Http,
                    })
                    .inc_by(length);
            }
            response
        }
        Plan::Stream {
            status,
            mut headers,
            length,
            produce,
        } => {
            let served = app
                .metrics
                .bytes_served
                .get_or_create(&ProtocolLabels {
                    protocol: Protocol::Http,
                })
                .clone();
            let (mut writer, body) = body::channel(length, served);
            let producer = app.clone();
            tokio::task::spawn_blocking(move || match produce(&producer, &mut writer) {
                Ok(()) => {
                    let _ = writer.finish();
                }
                Err(reason) => {
                    tracing::warn!(%reason, "response stopped before its end");
                    writer.fail(std::io::Error::other(reason));
                }
            });
            if let Some(length) = length {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
            let mut response = Response::new(Body::new(body));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
    }
}

fn read_request(request: &Request, max_ranges: usize) -> Result<Ask, GatewayError> {
    let raw_path = request.uri().path().to_string();
    let path = ContentPath::parse(&raw_path)?;
    let query = request.uri().query().unwrap_or_default().to_string();
    let params = Params::parse(&query)?;
    let accept = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let (format, format_from_accept) = negotiate(&params, accept)?;
    // A service worker registered at /ipfs/{cid} would control every other CID.
    if request.headers().contains_key("service-worker") && !path.trailing_slash {
        return Err(GatewayError::BadRequest(
            "service workers may be registered only below /ipfs/{cid}/".into(),
        ));
    }
    Ok(Ask {
        head: request.method() == Method::HEAD,
        path,
        raw_path,
        query,
        params,
        format,
        format_from_accept,
        headers: request.headers().clone(),
        max_ranges,
    })
}

fn header_str(headers: &HeaderMap, name: HeaderName) -> Option<&str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn only_if_cached(headers: &HeaderMap) -> bool {
    header_str(headers, header::CACHE_CONTROL)
        .is_some_and(|value| value.split(',').any(|d| d.trim() == "only-if-cached"))
}

/// `If-None-Match` lists `etag` (or is `*`); weak comparison, as RFC 9110 asks.
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    let Some(value) = header_str(headers, header::IF_NONE_MATCH) else {
        return false;
    };
    let bare = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
    value.trim() == "*" || value.split(',').any(|tag| bare(tag) == bare(etag))
}

fn plan(app: &App, ask: Ask) -> Result<Plan, GatewayError> {
    let blocks = if only_if_cached(&ask.headers) {
        match app.blocks.store().has(&ask.path.root) {
            Ok(true) => app.blocks.local_only(),
            Ok(false) if ask.path.root.hash().code() == crate::block::hash_code::IDENTITY => {
                app.blocks.local_only()
            }
            Ok(false) => return Err(GatewayError::PreconditionFailed),
            Err(err) => return Err(GatewayError::Internal(err.to_string())),
        }
    } else {
        app.blocks.for_request()
    };
    let policy = content_policy(app, &ask.path.root)?;
    match ask.format {
        Format::Raw => plan_raw(&blocks, &ask, &policy),
        Format::Car => plan_car(&blocks, &ask),
        Format::Deserialized => plan_deserialized(app, &blocks, &ask, &policy),
    }
}

/// Headers every `/ipfs/` answer carries.
fn base_headers(etag: &str, policy: &ContentPolicy) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut set = |name: HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(header::ETAG, etag);
    set(header::CACHE_CONTROL, IMMUTABLE);
    set(
        header::CONTENT_SECURITY_POLICY,
        if policy.trusted {
            CSP_TRUSTED
        } else {
            CSP_SANDBOX
        },
    );
    set(header::X_FRAME_OPTIONS, "SAMEORIGIN");
    set(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*");
    set(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        "Content-Range, Content-Length, Etag, X-Ipfs-Path, X-Ipfs-Roots",
    );
    headers
}

fn set(headers: &mut HeaderMap, name: impl Into<HeaderName>, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name.into(), value);
    }
}

fn not_modified(headers: HeaderMap) -> Plan {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    for name in [
        header::ETAG,
        header::CACHE_CONTROL,
        header::CONTENT_SECURITY_POLICY,
        header::X_FRAME_OPTIONS,
    ] {
        if let Some(value) = headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    Plan::Ready(response)
}

/// `Content-Disposition` with the name both as ASCII (other characters replaced) and
/// as UTF-8, as RFC 6266 and the gateway specification ask.
fn content_disposition(kind: &str, filename: &str) -> String {
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if ascii == filename {
        format!("{kind}; filename=\"{ascii}\"")
    } else {
        let encoded = utf8_percent_encode(filename, NON_ALPHANUMERIC);
        format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
    }
}

/// `Content-Location` for a format chosen through `Accept`, so caches keep it apart from
/// the deserialized response.
fn content_location(ask: &Ask, format: &str) -> String {
    if ask.query.is_empty() {
        format!("{}?format={format}", ask.raw_path)
    } else {
        format!("{}?{}&format={format}", ask.raw_path, ask.query)
    }
}

fn plan_raw(
    blocks: &RequestBlocks<'_>,
    ask: &Ask,
    policy: &ContentPolicy,
) -> Result<Plan, GatewayError> {
    if !ask.path.segments.is_empty() {
        return Err(GatewayError::BadRequest(
            "raw blocks are served only for /ipfs/{cid}, without a path".into(),
        ));
    }
    let cid = ask.path.root;
    let etag = format!("\"{cid}.raw\"");
    let mut headers = base_headers(&etag, policy);
    if matches_etag(&ask.headers, &etag) {
        return Ok(not_modified(headers));
    }
    let data = get_verified(blocks, &cid).map_err(|err| block_error(err, blocks))?;
    set(&mut headers, header::CONTENT_TYPE, RAW_TYPE);
    let filename = ask
        .params
        .filename
        .clone()
        .unwrap_or_else(|| format!("{cid}.bin"));
    set(
        &mut headers,
        header::CONTENT_DISPOSITION,
        &content_disposition("attachment", &filename),
    );
    if ask.format_from_accept {
        set(
            &mut headers,
            header::CONTENT_LOCATION,
            &content_location(ask, "raw"),
        );
    }
    set(&mut headers, header::ACCEPT_RANGES, "bytes");
    let size = data.len() as u64;
    let (status, part) = match requested_ranges(ask, &etag, size)? {
        None => (StatusCode::OK, 0..size),
        Some(ranges) if ranges.len() == 1 => {
            let range = ranges[0].clone();
            set(
                &mut headers,
                header::CONTENT_RANGE,
                &format!("bytes {}-{}/{size}", range.start, range.end - 1),
            );
            (StatusCode::PARTIAL_CONTENT, range)
        }
        Some(_) => {
            return Err(GatewayError::RangeNotSatisfiable {
                size,
                reason: "raw blocks are served in one range at a time".into(),
            })
        }
    };
    let body = if ask.head {
        Vec::new()
    } else {
        data[part.start as usize..part.end as usize].to_vec()
    };
    set(
        &mut headers,
        header::CONTENT_LENGTH,
        &(part.end - part.start).to_string(),
    );
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(Plan::Ready(response))
}

/// The ranges asked for, merged, or `None` for the whole representation. `If-Range`
/// with another validator means the whole representation too.
fn requested_ranges(
    ask: &Ask,
    etag: &str,
    size: u64,
) -> Result<Option<Vec<std::ops::Range<u64>>>, GatewayError> {
    let Some(range) = header_str(&ask.headers, header::RANGE) else {
        return Ok(None);
    };
    if let Some(validator) = header_str(&ask.headers, header::IF_RANGE) {
        if validator.trim() != etag {
            return Ok(None);
        }
    }
    match range::parse(range, size, ask.max_ranges) {
        RangeRequest::Full => Ok(None),
        RangeRequest::Partial(ranges) => Ok(Some(ranges)),
        RangeRequest::Unsatisfiable => Err(GatewayError::RangeNotSatisfiable {
            size,
            reason: format!("no part of the requested ranges is within the {size} bytes"),
        }),
        RangeRequest::TooMany { limit } => Err(GatewayError::RangeNotSatisfiable {
            size,
            reason: format!("at most {limit} ranges may be asked for at once"),
        }),
    }
}

fn plan_car(blocks: &RequestBlocks<'_>, ask: &Ask) -> Result<Plan, GatewayError> {
    let root = ask.path.root;
    let params = &ask.params;
    let scope = params
        .dag_scope
        .unwrap_or(if params.entity_bytes.is_some() {
            DagScope::Entity
        } else {
            DagScope::All
        });
    // The root must be here (or come from a peer in time) before 200 is promised.
    get_verified(blocks, &root).map_err(|err| block_error(err, blocks))?;
    let recording = Recording::new(blocks);
    let terminal = reader::resolve(&recording, &root, &ask.path.sub_path())
        .map_err(|err| read_error(err, blocks))?;
    let path_blocks = recording.into_cids();
    let mut scope = scope;
    let mut byte_range = None;
    if let (Some(entity_bytes), DagScope::Entity) = (params.entity_bytes, scope) {
        let entry = reader::stat(blocks, &terminal).map_err(|err| read_error(err, blocks))?;
        if matches!(entry.kind, EntryKind::File | EntryKind::Raw) {
            if entity_bytes.from >= 0 && entity_bytes.from as u64 >= entry.size && entry.size > 0 {
                return Err(GatewayError::BadRequest(format!(
                    "entity-bytes starts at {} but the file has {} bytes",
                    entity_bytes.from, entry.size
                )));
            }
            match entity_bytes.resolve(entry.size) {
                Some(range) => byte_range = Some(range),
                None => scope = DagScope::Block,
            }
        }
    }
    let mut identity = Sha256::new();
    identity.update(ask.path.sub_path().as_bytes());
    identity.update(format!("{scope:?}{byte_range:?}").as_bytes());
    let etag = format!("\"{root}.car.{}\"", hex(&identity.finalize()[..8]));
    let mut headers = base_headers(&etag, &ContentPolicy { trusted: false });
    if matches_etag(&ask.headers, &etag) {
        return Ok(not_modified(headers));
    }
    set(
        &mut headers,
        header::CONTENT_TYPE,
        "application/vnd.ipld.car; version=1; order=dfs; dups=n",
    );
    let filename = ask
        .params
        .filename
        .clone()
        .unwrap_or_else(|| format!("{root}.car"));
    set(
        &mut headers,
        header::CONTENT_DISPOSITION,
        &content_disposition("attachment", &filename),
    );
    set(&mut headers, header::ACCEPT_RANGES, "none");
    if ask.format_from_accept {
        set(
            &mut headers,
            header::CONTENT_LOCATION,
            &content_location(ask, "car"),
        );
    }
    if ask.head {
        return Ok(Plan::Ready(with_headers(
            StatusCode::OK,
            headers,
            Body::empty(),
        )));
    }
    let produce: Producer = Box::new(move |app, writer| {
        let blocks = app.blocks.for_request();
        let written = (|| -> Result<(), CarError> {
            let mut emitter = CarEmitter::new(&mut *writer, &root)?;
            for cid in &path_blocks {
                let data = get_verified(&blocks, cid)?;
                emitter.emit(cid, &data)?;
            }
            car_scope::write_terminal(&blocks, &mut emitter, &terminal, scope, byte_range)?;
            emitter.finish()?.flush()?;
            Ok(())
        })();
        written.map_err(|err| err.to_string())
    });
    Ok(Plan::Stream {
        status: StatusCode::OK,
        headers,
        length: None,
        produce,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn with_headers(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

fn plan_deserialized(
    app: &App,
    blocks: &RequestBlocks<'_>,
    ask: &Ask,
    policy: &ContentPolicy,
) -> Result<Plan, GatewayError> {
    let root = ask.path.root;
    // Each segment is resolved on its own, to name the CID behind every step.
    let mut roots = vec![root];
    let mut current = root;
    for segment in &ask.path.segments {
        current =
            reader::resolve(blocks, &current, segment).map_err(|err| read_error(err, blocks))?;
        roots.push(current);
    }
    let entry = reader::stat(blocks, &current).map_err(|err| read_error(err, blocks))?;
    let ipfs_roots = roots
        .iter()
        .map(Cid::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let name = ask.path.segments.last().cloned();
    match entry.kind {
        EntryKind::File | EntryKind::Raw => {
            plan_file(blocks, ask, policy, current, entry.size, name, &ipfs_roots)
        }
        EntryKind::Symlink => plan_symlink(blocks, ask, policy, current, &ipfs_roots),
        EntryKind::Directory => {
            if !ask.path.trailing_slash {
                let mut location = format!("{}/", ask.path.url_path());
                if !ask.query.is_empty() {
                    location.push('?');
                    location.push_str(&ask.query);
                }
                let mut response = StatusCode::MOVED_PERMANENTLY.into_response();
                insert(&mut response, header::LOCATION, &location);
                return Ok(Plan::Ready(response));
            }
            match reader::resolve(blocks, &current, "index.html") {
                Ok(index) => {
                    let index_entry =
                        reader::stat(blocks, &index).map_err(|err| read_error(err, blocks))?;
                    if matches!(index_entry.kind, EntryKind::File | EntryKind::Raw) {
                        let roots = format!("{ipfs_roots},{index}");
                        return plan_file(
                            blocks,
                            ask,
                            policy,
                            index,
                            index_entry.size,
                            Some("index.html".into()),
                            &roots,
                        );
                    }
                }
                Err(ReadError::NoSuchEntry { .. }) => {}
                Err(err) => return Err(read_error(err, blocks)),
            }
            plan_listing(app, blocks, ask, policy, current, &ipfs_roots)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_file(
    blocks: &RequestBlocks<'_>,
    ask: &Ask,
    policy: &ContentPolicy,
    cid: Cid,
    size: u64,
    name: Option<String>,
    ipfs_roots: &str,
) -> Result<Plan, GatewayError> {
    let etag = format!("\"{cid}\"");
    let mut headers = base_headers(&etag, policy);
    set(&mut headers, X_IPFS_PATH, &ask.raw_path);
    set(&mut headers, X_IPFS_ROOTS, ipfs_roots);
    if matches_etag(&ask.headers, &etag) {
        return Ok(not_modified(headers));
    }
    let shown_name = ask.params.filename.clone().or(name);
    let from_name = shown_name.as_deref().and_then(mime::from_name);
    let head = if mime::needs_sniffing(from_name.as_deref()) {
        let mut head = Vec::new();
        reader::read_range(blocks, &cid, 0, mime::SNIFF_BYTES, &mut head)
            .map_err(|err| read_error(err, blocks))?;
        head
    } else {
        Vec::new()
    };
    let content_type = mime::decide(from_name, &head);
    set(&mut headers, header::CONTENT_TYPE, &content_type);
    set(&mut headers, header::ACCEPT_RANGES, "bytes");
    let disposition = if ask.params.download {
        Some("attachment")
    } else if ask.params.filename.is_some() {
        Some("inline")
    } else {
        None
    };
    if let Some(kind) = disposition {
        let filename = shown_name.unwrap_or_else(|| cid.to_string());
        set(
            &mut headers,
            header::CONTENT_DISPOSITION,
            &content_disposition(kind, &filename),
        );
    }
    let ranges = requested_ranges(ask, &etag, size)?;
    let (status, length, parts): (StatusCode, u64, Vec<Part>) = match ranges {
        None => (StatusCode::OK, size, vec![Part::plain(0..size)]),
        Some(ranges) if ranges.len() == 1 => {
            let range = ranges[0].clone();
            set(
                &mut headers,
                header::CONTENT_RANGE,
                &format!("bytes {}-{}/{size}", range.start, range.end - 1),
            );
            (
                StatusCode::PARTIAL_CONTENT,
                range.end - range.start,
                vec![Part::plain(range)],
            )
        }
        Some(ranges) => {
            let boundary = multipart_boundary();
            let parts = Part::multipart(&ranges, size, &content_type, &boundary);
            let length = parts.iter().map(Part::len).sum();
            set(
                &mut headers,
                header::CONTENT_TYPE,
                &format!("multipart/byteranges; boundary={boundary}"),
            );
            (StatusCode::PARTIAL_CONTENT, length, parts)
        }
    };
    if ask.head {
        set(&mut headers, header::CONTENT_LENGTH, &length.to_string());
        return Ok(Plan::Ready(with_headers(status, headers, Body::empty())));
    }
    let produce: Producer = Box::new(move |app, writer| {
        let blocks = app.blocks.for_request();
        for part in parts {
            writer.write_all(&part.before).map_err(|e| e.to_string())?;
            if part.range.end > part.range.start {
                reader::read_range(
                    &blocks,
                    &cid,
                    part.range.start,
                    part.range.end - part.range.start,
                    writer,
                )
                .map_err(|err| err.to_string())?;
            }
            writer.write_all(&part.after).map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    Ok(Plan::Stream {
        status,
        headers,
        length: Some(length),
        produce,
    })
}

/// One stretch of a response body: file bytes, with multipart framing around them.
struct Part {
    before: Vec<u8>,
    range: std::ops::Range<u64>,
    after: Vec<u8>,
}

impl Part {
    fn plain(range: std::ops::Range<u64>) -> Part {
        Part {
            before: Vec::new(),
            range,
            after: Vec::new(),
        }
    }

    /// The parts of a `multipart/byteranges` body (RFC 9110, section 14.6).
    fn multipart(
        ranges: &[std::ops::Range<u64>],
        size: u64,
        content_type: &str,
        boundary: &str,
    ) -> Vec<Part> {
        let mut parts: Vec<Part> = ranges
            .iter()
            .map(|range| Part {
                before: format!(
                    "\r\n--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: bytes {}-{}/{size}\r\n\r\n",
                    range.start,
                    range.end - 1
                )
                .into_bytes(),
                range: range.clone(),
                after: Vec::new(),
            })
            .collect();
        if let Some(last) = parts.last_mut() {
            last.after = format!("\r\n--{boundary}--\r\n").into_bytes();
        }
        parts
    }

    fn len(&self) -> u64 {
        self.before.len() as u64 + (self.range.end - self.range.start) + self.after.len() as u64
    }
}

fn multipart_boundary() -> String {
    let mut random = [0u8; 12];
    // A boundary only needs to be unlikely to occur in the file.
    let _ = getrandom::getrandom(&mut random);
    format!("oermesh-{}", hex(&random))
}

fn plan_symlink(
    blocks: &RequestBlocks<'_>,
    ask: &Ask,
    policy: &ContentPolicy,
    cid: Cid,
    ipfs_roots: &str,
) -> Result<Plan, GatewayError> {
    let etag = format!("\"{cid}\"");
    let mut headers = base_headers(&etag, policy);
    set(&mut headers, X_IPFS_PATH, &ask.raw_path);
    set(&mut headers, X_IPFS_ROOTS, ipfs_roots);
    if matches_etag(&ask.headers, &etag) {
        return Ok(not_modified(headers));
    }
    let data = get_verified(blocks, &cid).map_err(|err| block_error(err, blocks))?;
    let target = (cid.codec() == codec::DAG_PB)
        .then(|| PbNode::decode(&data).ok())
        .flatten()
        .and_then(|node| UnixfsData::decode(node.data.as_deref()?).ok())
        .filter(|unixfs| unixfs.data_type == DataType::Symlink)
        .and_then(|unixfs| unixfs.data)
        .unwrap_or_default();
    set(
        &mut headers,
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8",
    );
    let body = if ask.head { Vec::new() } else { target.clone() };
    set(
        &mut headers,
        header::CONTENT_LENGTH,
        &target.len().to_string(),
    );
    Ok(Plan::Ready(with_headers(
        StatusCode::OK,
        headers,
        Body::from(body),
    )))
}

fn plan_listing(
    app: &App,
    blocks: &RequestBlocks<'_>,
    ask: &Ask,
    policy: &ContentPolicy,
    cid: Cid,
    ipfs_roots: &str,
) -> Result<Plan, GatewayError> {
    let after = ask.params.after.as_deref();
    // Each page is its own representation; the name it starts after may be any
    // text, so the tag carries a digest of it.
    let page_tag = after.map_or_else(String::new, |name| {
        format!("_after-{}", hex(&Sha256::digest(name.as_bytes())[..8]))
    });
    let etag = format!("\"DirIndex-{DIR_INDEX_VERSION}_CID-{cid}{page_tag}\"");
    let mut headers = base_headers(&etag, policy);
    set(&mut headers, X_IPFS_PATH, &ask.raw_path);
    set(&mut headers, X_IPFS_ROOTS, ipfs_roots);
    if matches_etag(&ask.headers, &etag) {
        return Ok(not_modified(headers));
    }
    let page = reader::list_dir_page(blocks, &cid, after, LISTING_PAGE)
        .map_err(|err| read_error(err, blocks))?;
    let html = super::pages::directory_listing(app, &ask.path, &cid, &page, after.is_some());
    // The listing is this node's own page, with its own policy.
    headers.remove(header::CONTENT_SECURITY_POLICY);
    set(
        &mut headers,
        header::CONTENT_SECURITY_POLICY,
        &super::pages::page_csp(),
    );
    set(
        &mut headers,
        header::CONTENT_TYPE,
        "text/html; charset=utf-8",
    );
    set(
        &mut headers,
        header::CONTENT_LENGTH,
        &html.len().to_string(),
    );
    let body = if ask.head {
        Body::empty()
    } else {
        Body::from(html)
    };
    Ok(Plan::Ready(with_headers(StatusCode::OK, headers, body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_query_wins_and_accept_falls_back_by_quality() {
        let params = |format: Option<&str>| Params {
            format: format.map(str::to_string),
            ..Params::default()
        };
        assert_eq!(
            negotiate(&params(Some("car")), Some(RAW_TYPE)).unwrap().0,
            Format::Car
        );
        assert!(negotiate(&params(Some("tar")), None).is_err());
        assert_eq!(
            negotiate(&params(None), Some("application/vnd.ipld.raw")).unwrap(),
            (Format::Raw, true)
        );
        assert_eq!(
            negotiate(
                &params(None),
                Some("application/vnd.ipld.car; version=1; order=dfs; dups=n")
            )
            .unwrap(),
            (Format::Car, true)
        );
        assert!(matches!(
            negotiate(&params(None), Some("application/vnd.ipld.car; version=2")),
            Err(GatewayError::NotAcceptable(_))
        ));
        assert_eq!(
            negotiate(
                &params(None),
                Some("application/vnd.ipld.car;dups=y, application/vnd.ipld.car;dups=n;q=0.5")
            )
            .unwrap()
            .0,
            Format::Car
        );
        assert_eq!(
            negotiate(
                &params(None),
                Some("text/html,application/xhtml+xml,*/*;q=0.8")
            )
            .unwrap()
            .0,
            Format::Deserialized
        );
    }

    #[test]
    fn non_ascii_file_names_travel_twice() {
        assert_eq!(
            content_disposition("attachment", "lesson.pdf"),
            "attachment; filename=\"lesson.pdf\""
        );
        assert_eq!(
            content_disposition("inline", "testтест.pdf"),
            "inline; filename=\"test____.pdf\"; filename*=UTF-8''test%D1%82%D0%B5%D1%81%D1%82%2Epdf"
        );
    }

    #[test]
    fn multipart_lengths_add_up() {
        let parts = Part::multipart(&[0..10, 20..25], 100, "text/plain", "b");
        let body_len: u64 = parts.iter().map(Part::len).sum();
        let framing: usize = parts.iter().map(|p| p.before.len() + p.after.len()).sum();
        assert_eq!(body_len, framing as u64 + 15);
        assert!(String::from_utf8_lossy(&parts[1].after).ends_with("--b--\r\n"));
    }
}
