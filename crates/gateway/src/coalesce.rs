//! A stream wrapper that turns a small vectored write into one plain write.
//!
//! hyper writes an HTTP/1 response as a vectored write of its head and its body chunks,
//! which avoids copying large bodies. For the small ones most APIs send, one `write` of a
//! copied buffer measured faster on loopback than a two-part `writev` (bare hyper, `/healthz`
//! answer: 125-130k req/s against 102-105k), while copying every body took `/fib/1000`
//! (100 KB answers) from 29-32k to 21-25k req/s. So: vectored writes of at most
//! `SMALL_WRITE` bytes in total are copied into one buffer and written with one `write`;
//! larger ones pass through as they are.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest vectored write that is copied into one buffer.
const SMALL_WRITE: usize = 4096;

pub(crate) struct Coalescing<S> {
    inner: S,
    scratch: Vec<u8>,
}

impl<S> Coalescing<S> {
    pub(crate) fn new(inner: S) -> Self {
        Coalescing {
            inner,
            scratch: Vec::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalescing<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalescing<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if bufs.len() < 2 || total > SMALL_WRITE {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        this.scratch.clear();
        for buf in bufs {
            this.scratch.extend_from_slice(buf);
        }
        // Bytes written count from the start of `bufs`, as a vectored write's would.
        Pin::new(&mut this.inner).poll_write(cx, &this.scratch)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_and_large_vectored_writes_arrive_whole_and_in_order() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut client = Coalescing::new(client);
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
