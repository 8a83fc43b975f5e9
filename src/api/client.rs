//! The API's client side: [`ApiClient`], a [`Service`] that asks the daemon holding a
//! repository to do each action. The command line uses it whenever a daemon answers on
//! the repository's socket.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use cid::Cid;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::args::*;
use super::{fds, AddLine, AddReply, ErrorBody, StreamEnd, FD_MIN_FILE_SIZE, MAX_FRAME, PREFIX};
use crate::car::ExportSummary;
use crate::node::service::Feed;
use crate::node::views::*;
use crate::node::{ErrorCode, NodeError, Result, Service};
use crate::records::provenance::ProvenanceNode;
use crate::store::GcReport;
use crate::unixfs::importer::{ImportError, TreeSink};
use crate::unixfs::reader::ReadError;

/// File content goes to the daemon in frames of at most this many bytes.
const CONTENT_FRAME: usize = 256 * 1024;
/// Chunks of the request body waiting to be sent.
const BODY_CHUNKS: usize = 16;

/// A connection to the daemon of one repository.
pub struct ApiClient {
    http: reqwest::blocking::Client,
    socket: PathBuf,
}

impl ApiClient {
    /// The daemon holding the repository at `root`, if one answers on its socket. A
    /// socket nobody answers on was left by a daemon that was killed: no daemon.
    pub fn find(root: &Path) -> Result<Option<ApiClient>> {
        let socket = root.join(super::SOCKET_NAME);
        match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(_) => Ok(Some(ApiClient::new(socket)?)),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                Ok(None)
            }
            Err(err) => Err(NodeError::refused(
                if err.kind() == io::ErrorKind::PermissionDenied {
                    ErrorCode::Forbidden
                } else {
                    ErrorCode::Unavailable
                },
                format!(
                    "a daemon holds {} but its API socket {} cannot be used: {err} \
                     (run the command as the daemon's user)",
                    root.display(),
                    socket.display()
                ),
            )),
        }
    }

    fn new(socket: PathBuf) -> Result<ApiClient> {
        let http = reqwest::blocking::Client::builder()
            .unix_socket(socket.clone())
            .timeout(None)
            .connect_timeout(std::time::Duration::from_secs(10))
            .pool_max_idle_per_host(8)
            .build()
            .map_err(|err| unavailable(&err))?;
        Ok(ApiClient { http, socket })
    }

    fn url(path: &str) -> String {
        format!("http://oermesh{PREFIX}{path}")
    }

    fn send(
        &self,
        path: &str,
        body: reqwest::blocking::Body,
    ) -> Result<reqwest::blocking::Response> {
        let response = self
            .http
            .post(ApiClient::url(path))
            .body(body)
            .send()
            .map_err(|err| unavailable(&err))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(error_from(response))
        }
    }

    fn call<A: Serialize, R: DeserializeOwned>(&self, path: &str, args: &A) -> Result<R> {
        let body = serde_json::to_vec(args)
            .map_err(|err| NodeError::refused(ErrorCode::Internal, err.to_string()))?;
        let response = self.send(path, body.into())?;
        let bytes = response.bytes().map_err(|err| unavailable(&err))?;
        serde_json::from_slice(&bytes).map_err(|err| {
            NodeError::refused(
                ErrorCode::Unavailable,
                format!("the daemon's answer to {path} is not what this version expects: {err}"),
            )
        })
    }
}

impl ApiClient {
    /// Sends an add stream and reads the daemon's replies while the stream is still
    /// going: the daemon answers every file as it finishes, and a client that read only
    /// after sending everything would stall a large tree once the replies filled the
    /// socket (the blocking HTTP client sends a whole body before it reads, so this one
    /// request uses the asynchronous one on a runtime of its own).
    fn stream_add(
        &self,
        body: tokio::sync::mpsc::Receiver<Vec<u8>>,
        events: &mut (dyn FnMut(AddEvent) + Send),
    ) -> Result<AddOutcome> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|err| unavailable(&err))?;
        runtime.block_on(async {
            let http = reqwest::Client::builder()
                .unix_socket(self.socket.clone())
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()
                .map_err(|err| unavailable(&err))?;
            let mut response = http
                .post(ApiClient::url("/add"))
                .body(reqwest::Body::wrap(ChannelBody(body)))
                .send()
                .await
                .map_err(|err| unavailable(&err))?;
            if !response.status().is_success() {
                let status = response.status();
                let body = response.bytes().await.unwrap_or_default();
                return Err(error_body(status, &body));
            }
            let mut pending = Vec::new();
            loop {
                while let Some(end) = pending.iter().position(|&byte| byte == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if let Some(finished) = add_reply(&line, events) {
                        return finished;
                    }
                }
                if pending.len() > super::MAX_ADD_LINE {
                    return Err(NodeError::refused(
                        ErrorCode::Unavailable,
                        "the daemon's add stream has a line longer than this version accepts",
                    ));
                }
                match response.chunk().await.map_err(|err| unavailable(&err))? {
                    Some(chunk) => pending.extend_from_slice(&chunk),
                    None => {
                        return Err(NodeError::refused(
                            ErrorCode::Unavailable,
                            "the daemon stopped answering before the add finished",
                        ))
                    }
                }
            }
        })
    }
}

/// Copies the data frames of a framed answer (`export`, `cat`) to `out` and returns what
/// its last line reports: a failure midway is an error, never a silently short copy.
fn read_framed<T: DeserializeOwned>(response: impl Read, out: &mut dyn Write) -> Result<T> {
    let mut frames = BufReader::with_capacity(1 << 20, response);
    let mut buffer = Vec::new();
    loop {
        let mut length = [0u8; 4];
        frames
            .read_exact(&mut length)
            .map_err(|err| unavailable(&err))?;
        let length = u32::from_be_bytes(length) as usize;
        if length == 0 {
            break;
        }
        if length > MAX_FRAME {
            return Err(NodeError::refused(
                ErrorCode::Unavailable,
                "the daemon sent a frame above the limit",
            ));
        }
        buffer.resize(length, 0);
        frames
            .read_exact(&mut buffer)
            .map_err(|err| unavailable(&err))?;
        out.write_all(&buffer)
            .map_err(|err| NodeError::from(ReadError::Io(err)))?;
    }
    let mut end = Vec::new();
    frames
        .take(super::MAX_ADD_LINE as u64)
        .read_until(b'\n', &mut end)
        .map_err(|err| unavailable(&err))?;
    match serde_json::from_slice::<StreamEnd<T>>(&end) {
        Ok(StreamEnd::Done(done)) => Ok(done),
        Ok(StreamEnd::Error(body)) => Err(body.into()),
        Err(err) => Err(NodeError::refused(
            ErrorCode::Unavailable,
            format!("the answer ended without its last line: {err}"),
        )),
    }
}

fn unavailable(err: &(dyn std::error::Error + 'static)) -> NodeError {
    NodeError::refused(
        ErrorCode::Unavailable,
        format!(
            "lost the connection to the daemon: {}",
            crate::node::one_line(err)
        ),
    )
}

fn error_from(response: reqwest::blocking::Response) -> NodeError {
    let status = response.status();
    let body = response.bytes().unwrap_or_default();
    error_body(status, &body)
}

fn error_body(status: reqwest::StatusCode, body: &[u8]) -> NodeError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => body.into(),
        Err(_) => NodeError::refused(
            ErrorCode::Unavailable,
            format!("the daemon answered {status} without an explanation"),
        ),
    }
}

impl Service for ApiClient {
    fn add(
        &self,
        options: &AddOptions,
        feed: Feed<'_>,
        events: &mut (dyn FnMut(AddEvent) + Send),
    ) -> Result<AddOutcome> {
        let (chunks, body_chunks) = tokio::sync::mpsc::channel::<Vec<u8>>(BODY_CHUNKS);
        let socket = self.socket.clone();
        std::thread::scope(|scope| {
            let walker = scope.spawn(move || -> Result<()> {
                let mut sink = StreamSink {
                    out: io::BufWriter::with_capacity(64 * 1024, ChannelWriter(chunks)),
                    socket,
                };
                sink.line(&AddLine::Options(Box::new(options.clone())))?;
                feed(&mut sink)?;
                sink.line(&AddLine::End)?;
                sink.out.flush().map_err(ImportError::Input)?;
                Ok(())
            });
            let outcome = self.stream_add(body_chunks, events);
            let walked = walker.join().unwrap_or_else(|_| {
                Err(NodeError::refused(
                    ErrorCode::Internal,
                    "the folder walk panicked",
                ))
            });
            // A failure here (a file that cannot be read) explains the daemon's complaint
            // that the stream ended early: report it, as without a daemon.
            walked?;
            outcome
        })
    }

    fn block(&self, cid: &Cid) -> Result<Vec<u8>> {
        let body = serde_json::to_vec(&CidArg { cid: *cid })
            .map_err(|err| NodeError::refused(ErrorCode::Internal, err.to_string()))?;
        let response = self.send("/block/get", body.into())?;
        let limit = crate::store::MAX_BLOCK_SIZE as u64;
        let mut data = Vec::new();
        response
            .take(limit + 1)
            .read_to_end(&mut data)
            .map_err(|err| unavailable(&err))?;
        if data.len() as u64 > limit {
            return Err(NodeError::refused(
                ErrorCode::Unavailable,
                format!("the daemon sent more than {limit} bytes for block {cid}"),
            ));
        }
        Ok(data)
    }

    fn fetch(&self, options: &FetchOptions) -> Result<Fetched> {
        self.call("/fetch", options)
    }

    fn pins(&self) -> Result<Vec<PinView>> {
        self.call("/pin/ls", &NoArg {})
    }
    fn pin_add(&self, cid: &Cid) -> Result<()> {
        self.call("/pin/add", &CidArg { cid: *cid })
    }
    fn pin_rm(&self, cid: &Cid) -> Result<Vec<String>> {
        self.call("/pin/rm", &CidArg { cid: *cid })
    }
    fn gc(&self) -> Result<GcReport> {
        self.call("/gc", &NoArg {})
    }
    fn stat(&self) -> Result<StatView> {
        self.call("/stat", &NoArg {})
    }
    fn verify(&self) -> Result<VerifyView> {
        self.call("/verify", &NoArg {})
    }

    fn cat(&self, cid: &Cid, out: &mut dyn Write) -> Result<u64> {
        let body = serde_json::to_vec(&CidArg { cid: *cid })
            .map_err(|err| NodeError::refused(ErrorCode::Internal, err.to_string()))?;
        read_framed(self.send("/cat", body.into())?, out)
    }

    fn export(&self, target: &ExportTarget, out: &mut dyn Write) -> Result<ExportSummary> {
        let body = serde_json::to_vec(target)
            .map_err(|err| NodeError::refused(ErrorCode::Internal, err.to_string()))?;
        read_framed(self.send("/export", body.into())?, out)
    }

    fn import(&self, car: &mut std::fs::File) -> Result<ImportView> {
        let response = match fds::hand_over(&self.socket, &[car.as_fd()]) {
            Ok(token) => self.send(
                &format!("/import?fd_token={token}"),
                reqwest::blocking::Body::from(Vec::new()),
            )?,
            Err(err) => {
                tracing::debug!(%err, "sending the CAR through the socket instead");
                let file = car
                    .try_clone()
                    .map_err(|err| NodeError::refused(ErrorCode::Io, err.to_string()))?;
                self.send("/import", reqwest::blocking::Body::new(file))?
            }
        };
        response.json().map_err(|err| unavailable(&err))
    }

    fn key_gen(&self, name: &str) -> Result<KeyView> {
        self.call("/key/gen", &NameArg { name: name.into() })
    }
    fn key_list(&self) -> Result<Vec<KeyView>> {
        self.call("/key/list", &NoArg {})
    }
    fn key_export(&self, name: &str) -> Result<KeyExport> {
        self.call("/key/export", &NameArg { name: name.into() })
    }
    fn key_import(&self, name: &str, key_file: &str) -> Result<KeyView> {
        self.call(
            "/key/import",
            &KeyImportArg {
                name: name.into(),
                key_file: key_file.into(),
            },
        )
    }
    fn record_show(&self, cid: &Cid) -> Result<Vec<RecordShow>> {
        self.call("/record/show", &CidArg { cid: *cid })
    }
    fn record_verify(&self, cid: &Cid) -> Result<RecordCheck> {
        self.call("/record/verify", &CidArg { cid: *cid })
    }
    fn record_retract(&self, cid: &Cid, reason: &str, key: Option<&str>) -> Result<Retracted> {
        self.call(
            "/record/retract",
            &RetractArg {
                cid: *cid,
                reason: reason.into(),
                key: key.map(Into::into),
            },
        )
    }
    fn provenance(&self, cid: &Cid) -> Result<ProvenanceNode> {
        self.call("/provenance", &CidArg { cid: *cid })
    }
    fn collection_create(&self, name: &str, key: Option<&str>) -> Result<CollectionCreated> {
        self.call(
            "/collection/create",
            &CollectionCreateArg {
                name: name.into(),
                key: key.map(Into::into),
            },
        )
    }
    fn collection_add(
        &self,
        name: &str,
        cids: &[String],
        path: Option<&str>,
        title: Option<&str>,
    ) -> Result<CollectionEdited> {
        self.call(
            "/collection/add",
            &CollectionAddArg {
                name: name.into(),
                cids: cids.to_vec(),
                path: path.map(Into::into),
                title: title.map(Into::into),
            },
        )
    }
    fn collection_rm(&self, name: &str, cid: &Cid) -> Result<CollectionEdited> {
        self.call(
            "/collection/rm",
            &CollectionRmArg {
                name: name.into(),
                cid: *cid,
            },
        )
    }
    fn collection_publish(&self, name: &str) -> Result<CollectionPublished> {
        self.call("/collection/publish", &NameArg { name: name.into() })
    }
    fn collection_show(&self, id: &str) -> Result<CollectionShow> {
        self.call("/collection/show", &IdArg { id: id.into() })
    }
    fn collection_list(&self) -> Result<Vec<CollectionRow>> {
        self.call("/collection/list", &NoArg {})
    }
    fn collection_history(&self, id: &str) -> Result<Vec<HistoryRow>> {
        self.call("/collection/history", &IdArg { id: id.into() })
    }
    fn trust_add(&self, publisher: &str) -> Result<String> {
        self.call(
            "/trust/add",
            &PublisherArg {
                publisher: publisher.into(),
            },
        )
    }
    fn trust_rm(&self, publisher: &str) -> Result<String> {
        self.call(
            "/trust/rm",
            &PublisherArg {
                publisher: publisher.into(),
            },
        )
    }
    fn trust_list(&self) -> Result<Vec<String>> {
        self.call("/trust/list", &NoArg {})
    }
    fn id(&self) -> Result<IdView> {
        self.call("/id", &NoArg {})
    }
    fn peers(&self) -> Result<Vec<PeerView>> {
        self.call("/peers", &NoArg {})
    }
    fn peers_add(&self, addr: &str) -> Result<StaticPeerEdit> {
        self.call("/peers/add", &AddrArg { addr: addr.into() })
    }
    fn peers_rm(&self, addr: &str) -> Result<StaticPeerEdit> {
        self.call("/peers/rm", &AddrArg { addr: addr.into() })
    }
    fn follow(&self, id: &str, metadata_only: bool) -> Result<FollowView> {
        self.call(
            "/follow",
            &FollowArg {
                id: id.into(),
                metadata_only,
            },
        )
    }
    fn unfollow(&self, id: &str) -> Result<FollowView> {
        self.call("/unfollow", &IdArg { id: id.into() })
    }
    fn follow_list(&self) -> Result<Vec<FollowRow>> {
        self.call("/follow/list", &NoArg {})
    }
    fn follow_status(&self, id: &str) -> Result<FollowStatusView> {
        self.call("/follow/status", &IdArg { id: id.into() })
    }
    fn group_status(&self) -> Result<GroupStatusView> {
        self.call("/group/status", &NoArg {})
    }
}

/// One line of the daemon's add replies: passes an event on, or ends the add.
fn add_reply(line: &[u8], events: &mut (dyn FnMut(AddEvent) + Send)) -> Option<Result<AddOutcome>> {
    match serde_json::from_slice::<AddReply>(line) {
        Ok(AddReply::Event(event)) => {
            events(event);
            None
        }
        Ok(AddReply::Done(outcome)) => Some(Ok(outcome)),
        Ok(AddReply::Error(body)) => Some(Err(body.into())),
        Err(err) => Some(Err(NodeError::refused(
            ErrorCode::Unavailable,
            format!("the daemon's add stream is not what this version expects: {err}"),
        ))),
    }
}

/// Writes a tree as an add stream: entries as JSON lines, file content in frames (a
/// 4-byte big-endian length, then the bytes; a zero length ends the file), or large
/// files as open descriptors handed over beside the stream.
struct StreamSink {
    out: io::BufWriter<ChannelWriter>,
    socket: PathBuf,
}

impl StreamSink {
    fn line(&mut self, line: &AddLine) -> Result<(), ImportError> {
        let mut bytes = serde_json::to_vec(line)
            .map_err(|err| ImportError::Input(io::Error::other(err.to_string())))?;
        bytes.push(b'\n');
        self.out.write_all(&bytes).map_err(ImportError::Input)
    }
}

impl TreeSink for StreamSink {
    fn dir(&mut self, path: &str) -> Result<(), ImportError> {
        self.line(&AddLine::Dir {
            path: path.to_string(),
        })
    }

    fn file(
        &mut self,
        path: &str,
        file: &mut std::fs::File,
        size: u64,
        source: &Path,
    ) -> Result<(), ImportError> {
        if size >= FD_MIN_FILE_SIZE {
            match fds::hand_over(&self.socket, &[file.as_fd()]) {
                Ok(token) => {
                    return self.line(&AddLine::File {
                        path: path.to_string(),
                        size,
                        source: source.display().to_string(),
                        fd_token: Some(token),
                    })
                }
                Err(err) => {
                    tracing::debug!(%err, "sending {} through the socket instead", source.display())
                }
            }
        }
        self.line(&AddLine::File {
            path: path.to_string(),
            size,
            source: source.display().to_string(),
            fd_token: None,
        })?;
        let unreadable = |err| ImportError::Unreadable {
            path: source.to_path_buf(),
            source: err,
        };
        let mut buffer = vec![0u8; CONTENT_FRAME];
        loop {
            let read = match file.read(&mut buffer) {
                Ok(read) => read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(unreadable(err)),
            };
            self.out
                .write_all(&(read as u32).to_be_bytes())
                .and_then(|()| self.out.write_all(&buffer[..read]))
                .map_err(ImportError::Input)?;
            if read == 0 {
                return Ok(());
            }
        }
    }
}

/// The writing end of the request body.
struct ChannelWriter(tokio::sync::mpsc::Sender<Vec<u8>>);

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0
            .blocking_send(data.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the daemon stopped reading"))?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The reading end of the request body, handed to the HTTP client.
struct ChannelBody(tokio::sync::mpsc::Receiver<Vec<u8>>);

impl http_body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<bytes::Bytes>, Self::Error>>>
    {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|chunk| Ok(http_body::Frame::data(chunk.into()))))
    }
}
