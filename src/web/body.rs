//! Response bodies produced by blocking code (the UnixFS reader, the CAR writer) and
//! sent as the client reads them.
//!
//! The producer writes into a [`ChannelWriter`] on a blocking thread; the bytes go
//! through a bounded channel to a [`ChannelBody`] that hyper polls. When the client
//! reads slowly the channel fills and the producer waits, so a response holds at most
//! [`CHUNK_BYTES`] × ([`CHANNEL_CHUNKS`] + 1) of body, whatever the size of the file.
//! When the client goes away the body is dropped, the producer's next write fails,
//! and it stops reading blocks.

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

/// Bytes gathered before they are handed to the connection.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Chunks waiting for a slow client.
pub const CHANNEL_CHUNKS: usize = 4;

/// The writing end: a blocking `Write` that hands chunks to the body.
pub struct ChannelWriter {
    sender: mpsc::Sender<io::Result<Bytes>>,
    buffer: BytesMut,
}

/// The reading end, an `http_body::Body`.
pub struct ChannelBody {
    receiver: mpsc::Receiver<io::Result<Bytes>>,
    /// Bytes still to come when the length is known in advance.
    remaining: Option<u64>,
    served: Counter,
}

/// A connected writer and body. `length` is the exact body length when known; `served`
/// counts the bytes handed to the connection.
pub fn channel(length: Option<u64>, served: Counter) -> (ChannelWriter, ChannelBody) {
    let (sender, receiver) = mpsc::channel(CHANNEL_CHUNKS);
    (
        ChannelWriter {
            sender,
            buffer: BytesMut::new(),
        },
        ChannelBody {
            receiver,
            remaining: length,
            served,
        },
    )
}

fn client_gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the client went away")
}

impl ChannelWriter {
    fn send(&self, chunk: Bytes) -> io::Result<()> {
        self.sender
            .blocking_send(Ok(chunk))
            .map_err(|_| client_gone())
    }

    fn send_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = self.buffer.split().freeze();
        self.send(chunk)
    }

    /// Sends what is buffered and ends the body.
    pub fn finish(mut self) -> io::Result<()> {
        self.send_buffer()
    }

    /// Ends the body with an error: the connection is closed without completing the
    /// response, so that the client sees a truncated transfer, never a short file.
    pub fn fail(self, error: io::Error) {
        let _ = self.sender.blocking_send(Err(error));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buffer.len() + data.len() > CHUNK_BYTES {
            self.send_buffer()?;
        }
        if data.len() >= CHUNK_BYTES {
            self.send(Bytes::copy_from_slice(data))?;
        } else {
            if self.buffer.capacity() == 0 {
                self.buffer.reserve(CHUNK_BYTES);
            }
            self.buffer.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffer()
    }
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.receiver.poll_recv(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.served.inc_by(chunk.len() as u64);
                if let Some(remaining) = self.remaining.as_mut() {
                    *remaining = remaining.saturating_sub(chunk.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn bytes_arrive_in_order_and_a_dropped_body_stops_the_writer() {
        let (mut writer, body) = channel(None, Counter::default());
        let producer = tokio::task::spawn_blocking(move || {
            for byte in 0..=255u8 {
                writer.write_all(&vec![byte; 10_000])?;
            }
            writer.finish()
        });
        let collected = body.collect().await.unwrap().to_bytes();
        producer.await.unwrap().unwrap();
        assert_eq!(collected.len(), 256 * 10_000);
        assert!(collected
            .chunks(10_000)
            .enumerate()
            .all(|(i, chunk)| chunk.iter().all(|b| *b as usize == i)));

        let (mut writer, body) = channel(None, Counter::default());
        drop(body);
        let result = tokio::task::spawn_blocking(move || writer.write_all(&[0; CHUNK_BYTES]))
            .await
            .unwrap();
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
