//! The API's server side: an axum router whose handlers run [`Node`] methods on the
//! daemon's blocking pool, served on the repository's Unix socket (where the socket's
//! file permissions are the access control) and optionally on TCP with a bearer token.

use std::convert::Infallible;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::args::*;
use super::fds::{self, FdRegistry};
use super::{
    AddLine, AddReply, ErrorBody, StreamEnd, MAX_ADD_LINE, MAX_FRAME, PREFIX, SOCKET_NAME,
};
use crate::daemon::pool::BlockingPool;
use crate::exchange::{Exchange, FetchRequest};
use crate::node::{AddEvent, ErrorCode, ExportTarget, FetchOptions, Node, NodeError};

/// Progress lines of an `add` stream are sent at most this often; entries always.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Chunks of a request body buffered between the network and the store.
const BODY_CHUNKS: usize = 16;
/// Lines of a response stream buffered before the work waits for the client.
const REPLY_LINES: usize = 256;
/// How long `block/get` waits for a peer that has a block this node lacks.
const BLOCK_WAIT: Duration = Duration::from_secs(30);

/// What every handler needs.
#[derive(Clone)]
pub struct ApiState {
    pub node: Node,
    pub pool: BlockingPool,
    pub fds: Arc<FdRegistry>,
    /// The daemon's block exchange: `fetch` and `block/get` get missing blocks from peers.
    pub exchange: Option<Exchange>,
    /// The daemon's pinning task, behind the Pinning Service API (`/pins`).
    pub pinning: Option<crate::daemon::pinning::Pinning>,
}

/// The API's routes. Every endpoint is a POST, so that no browser can be led to call one
/// by a link or an image.
pub fn router(state: ApiState) -> Router {
    let rpc = Router::new()
        .route("/add", post(add))
        .route("/block/get", post(block_get))
        .route("/cat", post(cat))
        .route("/fetch", post(fetch))
        .route(
            "/pin/ls",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, _: NoArg| n.pins())),
        )
        .route(
            "/pin/add",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, a: CidArg| n.pin_add(&a.cid))),
        )
        .route(
            "/pin/rm",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, a: CidArg| n.pin_rm(&a.cid))),
        )
        .route(
            "/gc",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, _: NoArg| n.gc())),
        )
        .route(
            "/stat",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, _: NoArg| n.stat())),
        )
        .route(
            "/verify",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, _: NoArg| n.verify())),
        )
        .route("/export", post(export))
        .route("/import", post(import))
        .route(
            "/key/gen",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, a: NameArg| n.key_gen(&a.name))),
        )
        .route(
            "/key/list",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, _: NoArg| n.key_list())),
        )
        .route(
            "/key/export",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, a: NameArg| n.key_export(&a.name))),
        )
        .route(
            "/key/import",
            post(|s: State<ApiState>, b: Bytes| {
                call(s, b, |n, a: KeyImportArg| {
                    n.key_import(&a.name, &a.key_file)
                })
            }),
        )
        .route(
            "/record/show",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, a: CidArg| n.record_show(&a.cid))),
        )
        .route(
            "/record/verify",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, a: CidArg| n.record_verify(&a.cid))),
        )
        .route(
            "/record/retract",
            post(|s: State<ApiState>, b: Bytes| {
                call(s, b, |n, a: RetractArg| {
                    n.record_retract(&a.cid, &a.reason, a.key.as_deref())
                })
            }),
        )
        .route(
            "/provenance",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, a: CidArg| n.provenance(&a.cid))),
        )
        .route(
            "/collection/create",
            post(|s: State<ApiState>, b: Bytes| {
                call(s, b, |n, a: CollectionCreateArg| {
                    n.collection_create(&a.name, a.key.as_deref())
                })
            }),
        )
        .route(
            "/collection/add",
            post(|s: State<ApiState>, b: Bytes| {
                call(s, b, |n, a: CollectionAddArg| {
                    n.collection_add(&a.name, &a.cids, a.path.as_deref(), a.title.as_deref())
                })
            }),
        )
        .route(
            "/collection/rm",
            post(|s: State<ApiState>, b: Bytes| {
                call(s, b, |n, a: CollectionRmArg| {
                    n.collection_rm(&a.name, &a.cid)
                })
            }),
        )
        .route(
            "/collection/publish",
            post(|s: State<ApiState>, b: Bytes| {
                call(s, b, |n, a: NameArg| n.collection_publish(&a.name))
            }),
        )
        .route(
            "/collection/show",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, a: IdArg| n.collection_show(&a.id))),
        )
        .route(
            "/collection/list",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, _: NoArg| n.collection_list())),
        )
        .route(
            "/collection/history",
            post(|s: State<ApiState>, b: Bytes| {
                call(s, b, |n, a: IdArg| n.collection_history(&a.id))
            }),
        )
        .route(
            "/trust/add",
            post(|s: State<ApiState>, b: Bytes| {
                call(s, b, |n, a: PublisherArg| n.trust_add(&a.publisher))
            }),
        )
        .route(
            "/trust/rm",
            post(|s: State<ApiState>, b: Bytes| {
                call(s, b, |n, a: PublisherArg| n.trust_rm(&a.publisher))
            }),
        )
        .route(
            "/trust/list",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, _: NoArg| n.trust_list())),
        )
        .route(
            "/id",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, _: NoArg| n.id())),
        )
        .route(
            "/peers",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, _: NoArg| n.peers())),
        )
        .route(
            "/peers/add",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, a: AddrArg| n.peers_add(&a.addr))),
        )
        .route(
            "/peers/rm",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, a: AddrArg| n.peers_rm(&a.addr))),
        )
        .route(
            "/follow",
            post(|s: State<ApiState>, b: Bytes| {
                call(s, b, |n, a: FollowArg| n.follow(&a.id, a.metadata_only))
            }),
        )
        .route(
            "/unfollow",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, a: IdArg| n.unfollow(&a.id))),
        )
        .route(
            "/follow/list",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, _: NoArg| n.follow_list())),
        )
        .route(
            "/follow/status",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, a: IdArg| n.follow_status(&a.id))),
        )
        .route(
            "/group/status",
            post(|s: State<ApiState>, b: Bytes| call(s, b, |n, _: NoArg| n.group_status())),
        )
        .fallback(|| async { error_response(&NodeError::not_found("no such API endpoint")) });
    Router::new()
        .nest(PREFIX, rpc)
        .merge(super::pins::routes())
        .fallback(|| async { error_response(&NodeError::not_found("no such API endpoint")) })
        .with_state(state)
}

/// The JSON error response for `err`: its code's status, its code and its one line.
pub fn error_response(err: &NodeError) -> Response {
    let status =
        StatusCode::from_u16(err.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &ErrorBody::from(err))
}

pub(super) fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn parse_args<A: DeserializeOwned>(body: &[u8]) -> Result<A, NodeError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|err| NodeError::invalid(format!("invalid request arguments: {err}")))
}

/// Runs one node method on the pool with JSON arguments and a JSON answer.
async fn call<A, R, F>(State(state): State<ApiState>, body: Bytes, method: F) -> Response
where
    A: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: FnOnce(&Node, A) -> Result<R, NodeError> + Send + 'static,
{
    let args = match parse_args::<A>(&body) {
        Ok(args) => args,
        Err(err) => return error_response(&err),
    };
    let node = state.node.clone();
    match state.pool.run(move || method(&node, args)).await {
        Ok(Ok(value)) => json_response(StatusCode::OK, &value),
        Ok(Err(err)) => error_response(&err),
        Err(closed) => error_response(&NodeError::refused(
            ErrorCode::Unavailable,
            closed.to_string(),
        )),
    }
}

async fn block_get(State(state): State<ApiState>, body: Bytes) -> Response {
    let args = match parse_args::<CidArg>(&body) {
        Ok(args) => args,
        Err(err) => return error_response(&err),
    };
    let node = state.node.clone();
    let cid = args.cid;
    let mut read = state.pool.run(move || node.block(&cid)).await;
    // A block that is not here is asked of peers, within a bounded wait.
    if let (Ok(Err(err)), Some(exchange)) = (&read, &state.exchange) {
        if err.code() == ErrorCode::NotFound {
            let mut request = FetchRequest::block(cid);
            request.wait = BLOCK_WAIT;
            if let Err(err) = exchange.fetch(request).await {
                return error_response(&NodeError::from(err));
            }
            let node = state.node.clone();
            read = state.pool.run(move || node.block(&cid)).await;
        }
    }
    match read {
        Ok(Ok(data)) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            data,
        )
            .into_response(),
        Ok(Err(err)) => error_response(&err),
        Err(closed) => error_response(&NodeError::refused(
            ErrorCode::Unavailable,
            closed.to_string(),
        )),
    }
}

/// `fetch`: the daemon gets what is missing from peers (without holding a place on the
/// blocking pool while it waits for them).
async fn fetch(State(state): State<ApiState>, body: Bytes) -> Response {
    let options = match parse_args::<FetchOptions>(&body) {
        Ok(options) => options,
        Err(err) => return error_response(&err),
    };
    let Some(exchange) = state.exchange.clone() else {
        return call(State(state), body, |node, options: FetchOptions| {
            node.fetch(&options)
        })
        .await;
    };
    let mut request = FetchRequest::dag(options.cid);
    request.path = options.path;
    request.pin = options.pin.then(|| "user".to_string());
    if let Some(secs) = options.wait_secs {
        request.wait = Duration::from_secs(secs);
    }
    match exchange.fetch(request).await {
        Ok(fetched) => json_response(StatusCode::OK, &fetched),
        Err(err) => error_response(&NodeError::from(err)),
    }
}

/// `add`: the request streams the tree in (see [`AddLine`]); the response streams
/// progress, entries and the outcome back as lines of JSON while it runs.
async fn add(State(state): State<ApiState>, body: Body) -> Response {
    let input = BodyReader::spawn(body);
    let (lines, reply) = mpsc::channel::<Result<Bytes, Infallible>>(REPLY_LINES);
    let node = state.node.clone();
    let registry = state.fds.clone();
    state.pool.spawn(move || {
        // A client that goes away (Ctrl-C) cancels its add: the next reply that cannot be
        // delivered says so, and the files handed over stop reading.
        let cancelled = AtomicBool::new(false);
        let send = |line: &AddReply| {
            if lines.blocking_send(Ok(json_line(line))).is_err() {
                cancelled.store(true, Ordering::Release);
            }
        };
        let mut last_progress = Instant::now();
        let mut on_event = |event: AddEvent| {
            if matches!(event, AddEvent::Progress { .. }) {
                if last_progress.elapsed() < PROGRESS_INTERVAL {
                    return;
                }
                last_progress = Instant::now();
            }
            send(&AddReply::Event(event));
        };
        let outcome = run_add(&node, &registry, input, &cancelled, &mut on_event);
        send(&match outcome {
            Ok(outcome) => AddReply::Done(outcome),
            Err(err) => AddReply::Error(ErrorBody::from(&err)),
        });
    });
    stream_response("application/x-ndjson", reply)
}

fn run_add(
    node: &Node,
    registry: &FdRegistry,
    input: BodyReader,
    cancelled: &AtomicBool,
    events: &mut dyn FnMut(AddEvent),
) -> Result<crate::node::AddOutcome, NodeError> {
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let options = match read_add_line(&mut input)? {
        AddLine::Options(options) => options,
        _ => return Err(NodeError::invalid("an add stream starts with its options")),
    };
    node.add(
        &options,
        &mut |session| loop {
            match read_add_line(&mut input)? {
                AddLine::Dir { path } => session.dir(&path)?,
                AddLine::File {
                    path,
                    source,
                    fd_token: Some(token),
                    ..
                } => {
                    let file = fds::take_readable_file(registry, &token)
                        .map_err(|reason| NodeError::invalid(format!("{path}: {reason}")))?;
                    session.file_at(&path, &file, &source, &|| {
                        if cancelled.load(Ordering::Acquire) {
                            Err(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                "the client went away; add cancelled",
                            ))
                        } else {
                            Ok(())
                        }
                    })?;
                }
                AddLine::File {
                    path,
                    size,
                    source,
                    fd_token: None,
                } => {
                    let mut content = FrameReader {
                        input: &mut input,
                        left_in_frame: 0,
                        finished: false,
                    };
                    session.file_from(&path, &mut content, size, &source)?;
                }
                AddLine::End => return Ok(()),
                AddLine::Options(_) => {
                    return Err(NodeError::invalid("an add stream has one options line"))
                }
            }
        },
        events,
    )
}

fn read_add_line(input: &mut impl BufRead) -> Result<AddLine, NodeError> {
    let mut line = Vec::new();
    input
        .take(MAX_ADD_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(|err| NodeError::refused(ErrorCode::Io, format!("the upload broke off: {err}")))?;
    if line.is_empty() {
        return Err(NodeError::refused(
            ErrorCode::Io,
            "the upload ended before its last entry",
        ));
    }
    if line.len() > MAX_ADD_LINE {
        return Err(NodeError::invalid(format!(
            "an add stream line is longer than {MAX_ADD_LINE} bytes"
        )));
    }
    serde_json::from_slice(&line)
        .map_err(|err| NodeError::invalid(format!("invalid add stream line: {err}")))
}

async fn import(
    State(state): State<ApiState>,
    Query(query): Query<ImportQuery>,
    body: Body,
) -> Response {
    let node = state.node.clone();
    let outcome = match query.fd_token {
        Some(token) => {
            let file = match fds::take_readable_file(&state.fds, &token) {
                Ok(file) => file,
                Err(reason) => return error_response(&NodeError::invalid(reason)),
            };
            state
                .pool
                .run(move || {
                    let mut input = BufReader::with_capacity(1 << 20, file);
                    node.import(&mut input)
                })
                .await
        }
        None => {
            let input = BodyReader::spawn(body);
            state
                .pool
                .run(move || {
                    let mut input = BufReader::with_capacity(1 << 20, input);
                    node.import(&mut input)
                })
                .await
        }
    };
    match outcome {
        Ok(Ok(view)) => json_response(StatusCode::OK, &view),
        Ok(Err(err)) => error_response(&err),
        Err(closed) => error_response(&NodeError::refused(
            ErrorCode::Unavailable,
            closed.to_string(),
        )),
    }
}

/// `export`: the CAR in frames (a 4-byte big-endian length, then that many bytes), a
/// zero-length frame, then one JSON line saying whether it completed.
async fn export(State(state): State<ApiState>, body: Bytes) -> Response {
    match parse_args::<ExportTarget>(&body) {
        Ok(target) => framed_response(&state, move |node, out| node.export(&target, out)),
        Err(err) => error_response(&err),
    }
}

/// `cat`: a file's bytes, read and verified here, so the client makes one request
/// instead of one per block.
async fn cat(State(state): State<ApiState>, body: Bytes) -> Response {
    match parse_args::<CidArg>(&body) {
        Ok(args) => framed_response(&state, move |node, out| node.cat(&args.cid, out)),
        Err(err) => error_response(&err),
    }
}

/// Runs `work` on the blocking pool with a writer whose bytes reach the client as data
/// frames, then sends the outcome as the last line, so that a failure midway is reported
/// rather than leaving a silently short answer.
fn framed_response<T, F>(state: &ApiState, work: F) -> Response
where
    T: Serialize,
    F: FnOnce(&Node, &mut dyn Write) -> Result<T, NodeError> + Send + 'static,
{
    let (frames, reply) = mpsc::channel::<Result<Bytes, Infallible>>(8);
    let node = state.node.clone();
    state.pool.spawn(move || {
        let mut writer = FrameWriter::new(frames.clone());
        let outcome = work(&node, &mut writer).and_then(|done| {
            writer
                .flush()
                .map_err(|err| NodeError::refused(ErrorCode::Io, err.to_string()))?;
            Ok(done)
        });
        let end = match outcome {
            Ok(done) => StreamEnd::Done(done),
            Err(err) => StreamEnd::Error(ErrorBody::from(&err)),
        };
        let mut tail = 0u32.to_be_bytes().to_vec();
        tail.extend_from_slice(&json_line(&end));
        let _ = frames.blocking_send(Ok(Bytes::from(tail)));
    });
    stream_response("application/vnd.oermesh.frames", reply)
}

/// A file's content in an add stream: frames of a 4-byte big-endian length and that many
/// bytes, ended by a zero length. A stream that ends inside a file is an error.
struct FrameReader<'a, R> {
    input: &'a mut R,
    left_in_frame: usize,
    finished: bool,
}

/// The largest content frame accepted.
const MAX_CONTENT_FRAME: usize = 1024 * 1024;

impl<R: BufRead> Read for FrameReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.finished || buf.is_empty() {
            return Ok(0);
        }
        if self.left_in_frame == 0 {
            let mut length = [0u8; 4];
            self.input.read_exact(&mut length).map_err(cut_short)?;
            let length = u32::from_be_bytes(length) as usize;
            if length == 0 {
                self.finished = true;
                return Ok(0);
            }
            if length > MAX_CONTENT_FRAME {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a content frame of {length} bytes is above the limit of {MAX_CONTENT_FRAME}"),
                ));
            }
            self.left_in_frame = length;
        }
        let wanted = buf.len().min(self.left_in_frame);
        let read = self.input.read(&mut buf[..wanted])?;
        if read == 0 {
            return Err(cut_short(io::ErrorKind::UnexpectedEof.into()));
        }
        self.left_in_frame -= read;
        Ok(read)
    }
}

fn cut_short(err: io::Error) -> io::Error {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the upload ended inside the file",
        )
    } else {
        err
    }
}

struct FrameWriter {
    frames: mpsc::Sender<Result<Bytes, Infallible>>,
    /// The frame being filled: its 4-byte length, written at flush, then the data.
    frame: Vec<u8>,
}

impl FrameWriter {
    const HEADER: usize = 4;

    fn new(frames: mpsc::Sender<Result<Bytes, Infallible>>) -> FrameWriter {
        FrameWriter {
            frames,
            frame: FrameWriter::empty_frame(),
        }
    }

    fn empty_frame() -> Vec<u8> {
        let mut frame = Vec::with_capacity(FrameWriter::HEADER + MAX_FRAME);
        frame.extend_from_slice(&[0; FrameWriter::HEADER]);
        frame
    }
}

impl Write for FrameWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = FrameWriter::HEADER + MAX_FRAME - self.frame.len();
        let taken = data.len().min(room);
        self.frame.extend_from_slice(&data[..taken]);
        if taken == room {
            self.flush()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        let length = self.frame.len() - FrameWriter::HEADER;
        if length == 0 {
            return Ok(());
        }
        self.frame[..FrameWriter::HEADER].copy_from_slice(&(length as u32).to_be_bytes());
        let frame = std::mem::replace(&mut self.frame, FrameWriter::empty_frame());
        self.frames
            .blocking_send(Ok(Bytes::from(frame)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

fn stream_response(
    content_type: &'static str,
    reply: mpsc::Receiver<Result<Bytes, Infallible>>,
) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        Body::from_stream(ReceiverStream::new(reply)),
    )
        .into_response()
}

fn json_line<T: Serialize>(value: &T) -> Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    Bytes::from(line)
}

/// A request body read from blocking code: a task moves its chunks through a bounded
/// channel, so a slow store slows the client down instead of filling memory. A client
/// that goes away mid-upload is an error here, never a short, complete-looking read.
struct BodyReader {
    chunks: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl BodyReader {
    fn spawn(body: Body) -> BodyReader {
        let (sender, chunks) = mpsc::channel(BODY_CHUNKS);
        tokio::spawn(async move {
            let mut stream = body.into_data_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|err| {
                    io::Error::new(io::ErrorKind::ConnectionAborted, err.to_string())
                });
                let failed = chunk.is_err();
                if sender.send(chunk).await.is_err() || failed {
                    break;
                }
            }
        });
        BodyReader {
            chunks,
            current: Bytes::new(),
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(err)) => return Err(err),
                None => return Ok(0),
            }
        }
        let taken = buf.len().min(self.current.len());
        buf[..taken].copy_from_slice(&self.current[..taken]);
        let _ = self.current.split_to(taken);
        Ok(taken)
    }
}

// ---- listeners ----

/// Binds `REPO/api.sock` with mode 0600 (or 0660 with `group`). The caller holds the
/// repository lock, so a socket already there was left by a daemon that was killed: it
/// is replaced. The socket is created under a temporary name and renamed into place
/// once its mode is set, so it is never reachable with a wider mode.
pub fn bind_unix(root: &Path, group: Option<u32>) -> io::Result<(UnixListener, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    let path = root.join(SOCKET_NAME);
    let staging = root.join(format!("{SOCKET_NAME}.{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let listener = std::os::unix::net::UnixListener::bind(&staging)?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(&staging, None, Some(gid))?;
    }
    std::fs::rename(&staging, &path)?;
    listener.set_nonblocking(true)?;
    Ok((UnixListener::from_std(listener)?, path))
}

/// Serves the API on the Unix socket until `shutdown`, then removes the socket file.
/// Connections that start with a zero byte are hand-overs of open files (see [`fds`]).
pub async fn serve_unix(
    listener: UnixListener,
    path: PathBuf,
    state: ApiState,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let (http_connections, accepted) = mpsc::channel::<UnixStream>(64);
    let registry = state.fds.clone();
    let mut stop_accepting = shutdown.clone();
    let acceptor = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop_accepting.wait_for(|stop| *stop) => break,
            };
            match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(sort_connection(
                        stream,
                        http_connections.clone(),
                        registry.clone(),
                    ));
                }
                Err(err) => {
                    tracing::warn!(%err, "API socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    let served = axum::serve(ChannelListener { accepted }, router(state))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await;
    acceptor.abort();
    let _ = std::fs::remove_file(&path);
    served
}

/// Sends an HTTP connection on to the server, or receives a hand-over.
async fn sort_connection(
    stream: UnixStream,
    http_connections: mpsc::Sender<UnixStream>,
    registry: Arc<FdRegistry>,
) {
    match tokio::time::timeout(fds::HANDOFF_TIMEOUT, first_byte(&stream)).await {
        Ok(Ok(Some(0))) => {
            let Ok(stream) = stream.into_std() else {
                return;
            };
            if stream.set_nonblocking(false).is_err() {
                return;
            }
            let received =
                tokio::task::spawn_blocking(move || fds::receive(stream, &registry)).await;
            if let Ok(Err(err)) = received {
                tracing::debug!(%err, "file hand-over failed");
            }
        }
        Ok(Ok(Some(_))) => {
            let _ = http_connections.send(stream).await;
        }
        _ => {}
    }
}

/// The first byte a client sent, left in the socket.
async fn first_byte(stream: &UnixStream) -> io::Result<Option<u8>> {
    loop {
        stream.readable().await?;
        let mut byte = [0u8; 1];
        let peeked = stream.try_io(Interest::READABLE, || {
            nix::sys::socket::recv(
                stream.as_raw_fd(),
                &mut byte,
                nix::sys::socket::MsgFlags::MSG_PEEK,
            )
            .map_err(io::Error::from)
        });
        match peeked {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(byte[0])),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
    }
}

struct ChannelListener {
    accepted: mpsc::Receiver<UnixStream>,
}

impl axum::serve::Listener for ChannelListener {
    type Io = UnixStream;
    type Addr = ();

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(stream) => (stream, ()),
            // The acceptor stopped: shutdown is under way and will end the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(())
    }
}

/// Serves the API on TCP, where every request must carry `Authorization: Bearer TOKEN`.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    state: ApiState,
    token: String,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let token = Arc::new(token);
    let app = router(state).layer(middleware::from_fn(move |request: Request, next: Next| {
        let token = token.clone();
        async move {
            if bearer_matches(&request, &token) {
                next.run(request).await
            } else if request.uri().path().starts_with("/pins") {
                super::pins::unauthorized()
            } else {
                error_response(&NodeError::refused(
                    ErrorCode::Forbidden,
                    "this API address needs `Authorization: Bearer TOKEN` with the token in the repository's api.token",
                ))
            }
        }
    }));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

pub(super) fn bearer_matches(request: &Request, token: &str) -> bool {
    let Some(given) = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Compared in time that does not depend on where the first difference is.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Reads `REPO/api.token`, creating it (mode 0600, 32 random bytes as hex) if missing.
pub fn load_or_create_token(root: &Path) -> io::Result<String> {
    load_or_create_token_file(&root.join(super::TOKEN_NAME))
}

/// Reads a token file, creating it (mode 0600, 32 random bytes as hex) if missing.
pub fn load_or_create_token_file(path: &Path) -> io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = path.to_path_buf();
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|err| io::Error::other(err.to_string()))?;
    let token: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    Ok(token)
}
