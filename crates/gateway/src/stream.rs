//! The connection's byte stream as hyper sees it: small vectored writes coalesced into one
//! write, and what the connection's watchdog needs to know recorded on the way.
//!
//! **Watchdog records.** On HTTP/1, bytes read while no request is in progress start a
//! request head (`Activity::bytes_arrived`: one clock read per request, which the request
//! layer then uses as the request's start instead of reading the clock itself). A write or
//! flush the socket refuses (`Pending`: it is full) starts the send timeout, and the next one
//! it accepts stops it; both are edges, so a connection whose writes go through pays one
//! branch on a local flag per write (`Activity::write_blocked`, `write_resumed`).
//!
//! **Upgraded connections.** After `101 Switching Protocols` the stream leaves hyper for the
//! service that upgraded it (a proxied WebSocket) and goes on recording for the watchdog:
//! bytes through it restart the idle time, and once the watchdog cut it every read and write
//! fails (`Activity::cut`; the holder's task is woken to see it). Its drop tells the
//! connection's guard, which holds the connection's slot until then. Before an upgrade this
//! costs one load per read on HTTP/1.
//!
//! **Coalescing.** hyper writes an HTTP/1 response as a vectored write of its head and its body chunks,
//! which avoids copying large bodies. For the small ones most APIs send, one `write` of a
//! copied buffer measured faster on loopback than a two-part `writev` (bare hyper, `/healthz`
//! answer: 125-130k req/s against 102-105k), while copying every body took `/fib/1000`
//! (100 KB answers) from 29-32k to 21-25k req/s. So: vectored writes of at most
//! `SMALL_WRITE` bytes in total are copied into one buffer and written with one `write`;
//! larger ones pass through as they are.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::watchdog::Activity;

/// Largest vectored write that is copied into one buffer.
const SMALL_WRITE: usize = 4096;

pub(crate) struct ConnectionStream<S> {
    inner: S,
    scratch: Vec<u8>,
    activity: Arc<Activity>,
    /// HTTP/1: reads may start a request head.
    watch_heads: bool,
    /// The last write or flush was refused (mirrors `Activity::write_blocked`).
    blocked: bool,
    /// The connection was upgraded (cached from `Activity::is_upgraded`).
    upgraded: bool,
}

impl<S> ConnectionStream<S> {
    /// `watch_heads`: the connection speaks HTTP/1 (HTTP/2 has no head timeout).
    pub(crate) fn new(inner: S, activity: Arc<Activity>, watch_heads: bool) -> Self {
        ConnectionStream {
            inner,
            scratch: Vec::new(),
            activity,
            watch_heads,
            blocked: false,
            upgraded: false,
        }
    }

    /// Whether the connection was upgraded; an HTTP/2 connection never is.
    #[inline]
    fn upgraded(&mut self) -> bool {
        if !self.upgraded && self.watch_heads && self.activity.is_upgraded() {
            self.upgraded = true;
        }
        self.upgraded
    }

    /// Upgraded: fails once the watchdog cut the connection, else makes sure the task that
    /// polls is woken when it does.
    fn check_cut(&self, cx: &Context<'_>) -> std::io::Result<()> {
        self.activity.wake_on_close(cx.waker());
        if self.activity.is_cut() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "upgraded connection closed by the gateway (idle or not reading)",
            ));
        }
        Ok(())
    }

    /// Upgraded: bytes went through, the idle time starts again.
    fn note_progress(&self, moved: bool) {
        if moved {
            self.activity.tunnel_progressed();
        }
    }

    /// Records a refused write (the first of a run) or an accepted one (the first after a
    /// refusal).
    #[inline]
    fn note_write<T>(&mut self, polled: &Poll<std::io::Result<T>>) {
        match polled {
            Poll::Pending if !self.blocked => {
                self.blocked = true;
                self.activity.write_blocked();
            }
            Poll::Ready(Ok(_)) if self.blocked => {
                self.blocked = false;
                self.activity.write_resumed();
            }
            _ => {}
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ConnectionStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        if self.upgraded() {
            self.check_cut(cx)?;
            let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
            self.note_progress(buf.filled().len() > before);
            return polled;
        }
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.watch_heads && buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ConnectionStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.upgraded() {
            self.check_cut(cx)?;
            let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
            self.note_write(&polled);
            self.note_progress(matches!(polled, Poll::Ready(Ok(n)) if n > 0));
            return polled;
        }
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(&polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.upgraded() {
            // Tunnels write what they read: one buffer at a time.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return Pin::new(this).poll_write(cx, first);
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let polled = if bufs.len() < 2 || total > SMALL_WRITE {
            Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
        } else {
            this.scratch.clear();
            for buf in bufs {
                this.scratch.extend_from_slice(buf);
            }
            // Bytes written count from the start of `bufs`, as a vectored write's would.
            Pin::new(&mut this.inner).poll_write(cx, &this.scratch)
        };
        this.note_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Over TLS a flush writes the records rustls holds: it can be refused like a write.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.note_write(&polled);
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> Drop for ConnectionStream<S> {
    fn drop(&mut self) {
        self.activity.stream_dropped();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    fn activity() -> Arc<Activity> {
        Arc::new(Activity::new(Instant::now()))
    }

    #[tokio::test(start_paused = true)]
    async fn http1_reads_start_a_head_and_http2_reads_do_not() {
        for http1 in [true, false] {
            let (client, mut server) = tokio::io::duplex(64);
            let activity = activity();
            let mut stream = ConnectionStream::new(client, activity.clone(), http1);
            tokio::time::sleep(Duration::from_secs(3)).await;
            server.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            let arrived = Instant::now();
            let mut buf = [0u8; 64];
            assert!(stream.read(&mut buf).await.unwrap() > 0);
            let expected = http1.then_some(arrived);
            assert_eq!(activity.take_head_start(), expected, "http1: {http1}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_write_starts_the_send_clock_and_an_accepted_one_stops_it() {
        let (client, mut server) = tokio::io::duplex(16);
        let activity = activity();
        let mut stream = ConnectionStream::new(client, activity.clone(), true);
        stream.write_all(&[b'x'; 16]).await.unwrap();
        assert_eq!(activity.write_blocked_since(), None);
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let refused = Pin::new(&mut stream).poll_write(&mut cx, b"more");
        assert!(refused.is_pending(), "the pipe is full");
        assert_eq!(activity.write_blocked_since(), Some(Instant::now()));
        let mut buf = [0u8; 16];
        server.read_exact(&mut buf).await.unwrap();
        stream.write_all(b"more").await.unwrap();
        assert_eq!(activity.write_blocked_since(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgraded_stream_records_progress_fails_once_cut_and_reports_its_drop() {
        let (client, mut server) = tokio::io::duplex(64);
        let activity = activity();
        activity.opened(crate::watchdog::Phase::Http1);
        let mut stream = ConnectionStream::new(client, activity.clone(), true);
        activity.upgrading();
        tokio::time::sleep(Duration::from_secs(5)).await;
        server.write_all(b"frame").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 5);
        assert_eq!(activity.take_head_start(), None, "a tunnel has no heads");
        // A read waiting for bytes is woken by the cut and fails.
        let reading = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let result = stream.read(&mut buf).await;
            (result, stream)
        });
        tokio::task::yield_now().await;
        assert!(!reading.is_finished());
        activity.cut();
        let (result, stream) = reading.await.unwrap();
        let error = result.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionAborted);
        let gone = tokio::spawn({
            let activity = activity.clone();
            async move { activity.stream_gone().await }
        });
        tokio::task::yield_now().await;
        assert!(!gone.is_finished());
        drop(stream);
        gone.await.unwrap();
    }

    #[tokio::test]
    async fn small_and_large_vectored_writes_arrive_whole_and_in_order() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let activity = Arc::new(Activity::new(tokio::time::Instant::now()));
        let mut client = ConnectionStream::new(client, activity, true);
        let large = vec![b'x'; SMALL_WRITE * 3];
        let parts: [&[u8]; 3] = [b"head\r\n", b"small body", &large];
        for slices in [&parts[..2], &parts[..]] {
            let mut slices: Vec<IoSlice<'_>> = slices.iter().map(|p| IoSlice::new(p)).collect();
            let mut left: usize = slices.iter().map(|s| s.len()).sum();
            let mut view = &mut slices[..];
            while left > 0 {
                let n = client.write_vectored(view).await.unwrap();
                left -= n;
                IoSlice::advance_slices(&mut view, n);
            }
        }
        client.shutdown().await.unwrap();
        let mut received = Vec::new();
        server.read_to_end(&mut received).await.unwrap();
        let mut expected = b"head\r\nsmall body".to_vec();
        expected.extend_from_slice(b"head\r\nsmall body");
        expected.extend_from_slice(&large);
        assert_eq!(received, expected);
    }
}
