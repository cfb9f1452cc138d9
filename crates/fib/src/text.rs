//! The text of the first N numbers ("0 1 1 2 ..."), as a known length and a sequence of
//! chunks: slices of the shared cache (no copy), then chunks computed on a blocking thread and
//! handed over through a bounded channel, so memory stays bounded however large N is.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;

use crate::decimal::Decimal;

/// Target size of a computed chunk; a chunk ends after the number that crosses it.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Chunks in flight between a producer thread and the connection writing them.
const CHANNEL_CHUNKS: usize = 4;

/// Why the text could not be delivered in full.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("the number producer stopped before the text was complete")]
    ProducerGone,
    #[error("the text was {got} bytes where {expected} were announced")]
    Length { expected: u64, got: u64 },
    #[error("back end {backend}: {problem}")]
    Backend { backend: String, problem: String },
}

/// A stream of text chunks from elsewhere (a back-end connection).
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<Bytes, TextError>> + Send>>;

/// The text of F(0) .. F(N-1) separated by single spaces.
pub struct Text {
    /// Exact length in bytes of the whole text.
    pub len: u64,
    /// Chunks available now (cache slices), sent before anything from `rest`.
    pub ready: VecDeque<Bytes>,
    /// The remainder, produced while it is sent.
    pub rest: Option<ChunkStream>,
}

impl Text {
    /// A text that is already complete in memory.
    pub fn complete(parts: impl IntoIterator<Item = Bytes>) -> Self {
        let ready: VecDeque<Bytes> = parts.into_iter().collect();
        let len = ready.iter().map(|b| b.len() as u64).sum();
        Text {
            len,
            ready,
            rest: None,
        }
    }

    /// Next chunk, in order; `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, TextError>> {
        if let Some(part) = self.ready.pop_front() {
            return Some(Ok(part));
        }
        let rest = self.rest.as_mut()?;
        futures::StreamExt::next(rest).await
    }

    /// Polling form of [`Text::next_chunk`], for `http_body::Body`.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, TextError>>> {
        if let Some(part) = self.ready.pop_front() {
            return Poll::Ready(Some(Ok(part)));
        }
        match self.rest.as_mut() {
            Some(rest) => rest.as_mut().poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

/// Starts a blocking producer of the text of F(from) .. F(to-1), given `pair = (F(from),
/// F(from+1))`; the returned stream ends when the text does. Dropping the stream stops the
/// producer at its next chunk. `slot` (a producer permit, if any) is held until it stops.
pub fn produce<S: Send + 'static>(
    pair: (Decimal, Decimal),
    from: u64,
    to: u64,
    slot: S,
) -> ChunkStream {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::task::spawn_blocking(move || {
        produce_blocking(pair, from, to, &tx);
        drop(slot);
    });
    Box::pin(ProducedChunks { rx })
}

fn produce_blocking(pair: (Decimal, Decimal), from: u64, to: u64, tx: &mpsc::Sender<Bytes>) {
    let (mut a, mut b) = pair;
    let mut buf = Vec::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 4);
    for n in from..to {
        a.write_to(&mut buf);
        let last = n + 1 == to;
        if !last {
            buf.push(b' ');
            a.add_assign(&b);
            std::mem::swap(&mut a, &mut b);
        }
        if buf.len() >= CHUNK_BYTES || last {
            let chunk =
                std::mem::replace(&mut buf, Vec::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 4));
            if tx.blocking_send(Bytes::from(chunk)).is_err() {
                return; // the reader went away
            }
        }
    }
}

/// Receiving side of a producer: a clean end of the channel is the end of the text (the
/// length check in the consumer catches a producer that died early).
struct ProducedChunks {
    rx: mpsc::Receiver<Bytes>,
}

impl Stream for ProducedChunks {
    type Item = Result<Bytes, TextError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|chunk| chunk.map(Ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(mut text: Text) -> String {
        let mut out = Vec::new();
        while let Some(chunk) = text.next_chunk().await {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        String::from_utf8(out).expect("ascii")
    }

    #[tokio::test]
    async fn producer_writes_the_range_with_single_spaces() {
        let rest = produce((Decimal::small(0), Decimal::small(1)), 0, 10, ());
        let text = Text {
            len: 22,
            ready: VecDeque::new(),
            rest: Some(rest),
        };
        assert_eq!(collect(text).await, "0 1 1 2 3 5 8 13 21 34");
    }

    #[tokio::test]
    async fn ready_parts_come_before_the_produced_rest() {
        let rest = produce((Decimal::small(5), Decimal::small(8)), 5, 7, ());
        let mut text = Text::complete([Bytes::from_static(b"0 1 1 2 3 ")]);
        text.rest = Some(rest);
        assert_eq!(collect(text).await, "0 1 1 2 3 5 8");
    }
}
