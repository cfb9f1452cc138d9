//! The request body as sent to an instance, and the 64 KiB it keeps for a retry.
//!
//! A request body streams to the instance as it arrives; nothing waits for the whole of it.
//! To retry a request whose body was (partly) sent, the proxy needs what was sent: a
//! [`Tape`] records the body's frames as they go out, up to [`RETRY_BUFFER`] bytes. A second
//! attempt reads the recording again, then goes on with the rest of the client's body. A
//! body that passes the buffer stops being recorded (its recording is dropped): it is not
//! retried once sent, as the manager's rules say.
//!
//! Only requests that may be retried after sending (idempotent methods, whose body is not
//! declared larger than the buffer) get a tape; the others stream as they are, and a request
//! without a body sends none. A connect failure needs no tape: nothing was sent, and the body
//! is still whole.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes of a request body kept for a retry (the manager's rule).
pub const RETRY_BUFFER: usize = 64 * 1024;

/// The body of a request to an instance.
pub(crate) enum OutBody {
    /// The request had no body.
    Empty,
    /// The client's body, streamed through unrecorded.
    Stream(axum::body::Body),
    /// The client's body through a tape (see the module doc).
    Replay(TapeReader),
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            OutBody::Empty => Poll::Ready(None),
            OutBody::Stream(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            OutBody::Replay(reader) => reader.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            OutBody::Empty => true,
            OutBody::Stream(body) => body.is_end_stream(),
            OutBody::Replay(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            OutBody::Empty => SizeHint::with_exact(0),
            OutBody::Stream(body) => body.size_hint(),
            OutBody::Replay(reader) => reader.size_hint,
        }
    }
}

/// A request body recorded as it is read (see the module doc). Clones share the recording.
#[derive(Clone)]
pub(crate) struct Tape {
    shared: Arc<Mutex<Recording>>,
    size_hint: SizeHint,
}

struct Recording {
    /// The client's body, until it ended.
    source: Option<axum::body::Body>,
    frames: Vec<Bytes>,
    recorded: usize,
    trailers: Option<HeaderMap>,
    /// The body passed `RETRY_BUFFER`: the recording was dropped.
    overflowed: bool,
    /// Reading the client's body failed (the client went away, or passed the body limit).
    failed: bool,
}

impl Tape {
    pub(crate) fn new(body: axum::body::Body) -> Tape {
        let size_hint = body.size_hint();
        Tape {
            shared: Arc::new(Mutex::new(Recording {
                source: Some(body),
                frames: Vec::new(),
                recorded: 0,
                trailers: None,
                overflowed: false,
                failed: false,
            })),
            size_hint,
        }
    }

    /// A reader from the start, or `None` once the body cannot be sent again whole.
    pub(crate) fn reader(&self) -> Option<TapeReader> {
        let recording = lock(&self.shared);
        if recording.overflowed || recording.failed {
            return None;
        }
        Some(TapeReader {
            shared: self.shared.clone(),
            next: 0,
            trailers_sent: false,
            size_hint: self.size_hint,
        })
    }
}

/// One pass over a [`Tape`]: the recording first, then the rest of the client's body.
pub(crate) struct TapeReader {
    shared: Arc<Mutex<Recording>>,
    /// The next recorded frame this reader has not sent.
    next: usize,
    trailers_sent: bool,
    size_hint: SizeHint,
}

impl TapeReader {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let TapeReader {
            shared,
            next,
            trailers_sent,
            ..
        } = self;
        let mut recording = lock(shared);
        if !recording.overflowed && *next < recording.frames.len() {
            let frame = recording.frames[*next].clone();
            *next += 1;
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        let Some(source) = recording.source.as_mut() else {
            // The trailers, once per reader.
            let trailers = (!std::mem::replace(trailers_sent, true))
                .then(|| recording.trailers.clone())
                .flatten();
            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
        };
        match ready!(Pin::new(source).poll_frame(cx)) {
            Some(Ok(frame)) => {
                let frame = recording.keep(frame, next, trailers_sent);
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                recording.failed = true;
                Poll::Ready(Some(Err(error.into())))
            }
            None => {
                recording.source = None;
                Poll::Ready(None)
            }
        }
    }
}

impl Recording {
    /// Keeps `frame` on the tape (while under the buffer) for a reader at `next`, and passes
    /// it on.
    fn keep(
        &mut self,
        frame: Frame<Bytes>,
        next: &mut usize,
        trailers_sent: &mut bool,
    ) -> Frame<Bytes> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.trailers = Some(trailers.clone());
                    *trailers_sent = true;
                }
                return frame;
            }
        };
        if !self.overflowed {
            if self.recorded + data.len() > RETRY_BUFFER {
                self.overflowed = true;
                self.frames = Vec::new();
            } else {
                self.recorded += data.len();
                self.frames.push(data.clone());
                *next = self.frames.len();
            }
        }
        Frame::data(data)
    }
}

fn lock(shared: &Mutex<Recording>) -> MutexGuard<'_, Recording> {
    // Every change is a single assignment or push: a panic cannot leave it half-written.
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A streamed body of `chunks` (unknown length, like a chunked upload).
    fn streamed(chunks: Vec<Bytes>) -> axum::body::Body {
        let frames = futures::stream::iter(
            chunks
                .into_iter()
                .map(|chunk| Ok::<_, std::io::Error>(Frame::data(chunk))),
        );
        axum::body::Body::new(http_body_util::StreamBody::new(frames))
    }

    async fn read(reader: TapeReader) -> Vec<u8> {
        let body = OutBody::Replay(reader);
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_second_reader_gets_the_whole_body_even_when_the_first_stopped_half_way() {
        let chunks = vec![Bytes::from("ab"), Bytes::from("cd"), Bytes::from("ef")];
        let tape = Tape::new(streamed(chunks));
        let mut first = OutBody::Replay(tape.reader().unwrap());
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "ab");
        drop(first); // the attempt failed after sending two bytes
        assert_eq!(read(tape.reader().unwrap()).await, b"abcdef");
        assert_eq!(read(tape.reader().unwrap()).await, b"abcdef", "and again");
    }

    #[tokio::test]
    async fn a_body_past_the_buffer_is_sent_whole_once_and_never_again() {
        let big = Bytes::from(vec![b'x'; RETRY_BUFFER]);
        let tape = Tape::new(streamed(vec![Bytes::from("a"), big]));
        assert_eq!(read(tape.reader().unwrap()).await.len(), RETRY_BUFFER + 1);
        assert!(tape.reader().is_none());
    }

    #[tokio::test]
    async fn a_body_of_exactly_the_buffer_can_be_sent_again() {
        let tape = Tape::new(streamed(vec![Bytes::from(vec![b'y'; RETRY_BUFFER])]));
        assert_eq!(read(tape.reader().unwrap()).await.len(), RETRY_BUFFER);
        assert_eq!(read(tape.reader().unwrap()).await.len(), RETRY_BUFFER);
    }

    #[tokio::test]
    async fn a_failed_client_body_is_not_sent_again() {
        let frames = futures::stream::iter(vec![
            Ok(Frame::data(Bytes::from("a"))),
            Err(std::io::Error::other("client went away")),
        ]);
        let tape = Tape::new(axum::body::Body::new(http_body_util::StreamBody::new(
            frames,
        )));
        let body = OutBody::Replay(tape.reader().unwrap());
        assert!(body.collect().await.is_err());
        assert!(tape.reader().is_none());
    }

    #[test]
    fn a_declared_length_survives_the_tape() {
        let tape = Tape::new(axum::body::Body::from("12345"));
        let body = OutBody::Replay(tape.reader().unwrap());
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(OutBody::Empty.is_end_stream());
    }
}
