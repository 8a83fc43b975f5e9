//! The browser-facing listener: HTTP/1.1 with limits on connections, request heads
//! and stalled clients.
//!
//! A school server's address is open to every machine on its network, so nothing a
//! client does may hold resources without bound:
//! - at most `max_connections` connections are open; past that the listener stops
//!   accepting and new ones wait in the kernel's queue;
//! - at most `max_connections_per_client` from one IP address; another is answered
//!   429 and closed, so one machine cannot take every slot;
//! - a request head must arrive whole within `header_timeout` (a client dripping one
//!   header byte at a time is cut off) and be at most `max_header_bytes`; the same
//!   timeout closes idle keep-alive connections;
//! - a response the client stops reading is abandoned after `send_timeout`, and the
//!   work behind it stops (see [`super::body`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tower::ServiceExt;

use crate::metrics::Metrics;

/// Limits of the browser-facing listener; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub header_timeout: Duration,
    pub send_timeout: Duration,
    pub max_header_bytes: usize,
}

/// The smallest head limit: a request line and the headers every browser sends.
const MIN_HEADER_BYTES: usize = 4096;

/// How long a refusal may take to write before the connection is simply dropped.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The address of the client a request came from, in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Open connections per client address. A slot is given back when its guard drops.
#[derive(Default)]
struct ClientSlots {
    open: Mutex<HashMap<IpAddr, usize>>,
}

struct ClientSlot {
    slots: Arc<ClientSlots>,
    ip: IpAddr,
}

impl ClientSlots {
    fn take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` until `shutdown` turns true, then lets requests in
/// progress finish. Connection tasks live in a set owned by this future, so dropping
/// it (a caller's timeout) closes every connection.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes.max(MIN_HEADER_BYTES));
    let connection_slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let client_slots = Arc::new(ClientSlots::default());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();

    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = connection_slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = stop_requested(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%err, "cannot accept a browser connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop_requested(&mut shutdown) => break,
        };
        let Some(client_slot) = client_slots.take(peer.ip(), limits.max_connections_per_client)
        else {
            metrics.http_connections_refused.inc();
            connections.spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(StallTimeout::new(stream, limits.send_timeout));
        let router = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ClientAddr(peer));
            router.clone().oneshot(request)
        });
        let connection = graceful.watch(http.serve_connection(io, service));
        let metrics = metrics.clone();
        metrics.http_connections.inc();
        connections.spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, %err, "browser connection ended with an error");
            }
            metrics.http_connections.dec();
            drop(client_slot);
            drop(permit);
        });
    }
    drop(listener);
    // Idle connections close at once; the others after their request.
    graceful.shutdown().await;
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Resolves when `shutdown` turns true or its sender is gone.
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// Tells a client with too many connections open to come back later.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = "too many connections from your address; try again shortly\n";
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 5\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, write).await;
}

/// A stream whose writes fail with `TimedOut` when the peer accepts no bytes for
/// `limit`: a client that stops reading cannot hold its connection, and the response
/// producing bytes for it, for ever.
pub struct StallTimeout<S> {
    inner: S,
    limit: Duration,
    /// Running while a write waits for the peer; reset by every write that progresses.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> StallTimeout<S> {
    pub fn new(inner: S, limit: Duration) -> Self {
        StallTimeout {
            inner,
            limit,
            stalled: None,
        }
    }

    fn on_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let limit = self.limit;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped reading",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.on_write(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.on_write(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.on_write(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
