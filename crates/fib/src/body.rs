//! An HTTP body made of a head, the numbers' [`Text`] and a tail, with an exact size hint (so
//! the response carries `Content-Length`) and a check that the text delivered what it
//! announced: a short text fails the body rather than send a response that lies about itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::text::{Text, TextError};

pub struct FramedBody {
    head: Option<Bytes>,
    text: Text,
    tail: Option<Bytes>,
    /// Text bytes still to come.
    text_left: u64,
}

impl FramedBody {
    pub fn new(head: Bytes, text: Text, tail: Bytes) -> Self {
        let text_left = text.len;
        FramedBody {
            head: Some(head),
            text,
            tail: Some(tail),
            text_left,
        }
    }

    fn remaining(&self) -> u64 {
        let framing = |part: &Option<Bytes>| part.as_ref().map_or(0, |b| b.len() as u64);
        framing(&self.head) + self.text_left + framing(&self.tail)
    }
}

impl http_body::Body for FramedBody {
    type Data = Bytes;
    type Error = TextError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, TextError>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        if self.tail.is_none() {
            return Poll::Ready(None);
        }
        match self.text.poll_chunk(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                let expected = self.text.len;
                match self.text_left.checked_sub(chunk.len() as u64) {
                    Some(left) => {
                        self.text_left = left;
                        Poll::Ready(Some(Ok(Frame::data(chunk))))
                    }
                    None => Poll::Ready(Some(Err(TextError::Length {
                        expected,
                        got: expected + chunk.len() as u64 - self.text_left,
                    }))),
                }
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Ready(None) if self.text_left == 0 => {
                Poll::Ready(self.tail.take().map(|tail| Ok(Frame::data(tail))))
            }
            Poll::Ready(None) => {
                let expected = self.text.len;
                let got = expected - self.text_left;
                Poll::Ready(Some(Err(TextError::Length { expected, got })))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.tail.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    fn body(announced: u64, parts: &[&'static [u8]]) -> FramedBody {
        let mut text = Text::complete(parts.iter().map(|p| Bytes::from_static(p)));
        text.len = announced;
        FramedBody::new(Bytes::from_static(b"["), text, Bytes::from_static(b"]"))
    }

    #[tokio::test]
    async fn frames_head_text_and_tail_with_an_exact_size() {
        let body = body(5, &[b"0 1 ", b"1"]);
        assert_eq!(body.size_hint().exact(), Some(7));
        let bytes = body.collect().await.expect("complete").to_bytes();
        assert_eq!(&bytes[..], b"[0 1 1]");
    }

    #[tokio::test]
    async fn a_text_shorter_than_announced_fails_the_body() {
        let err = body(9, &[b"0 1 1"]).collect().await.expect_err("fails");
        assert!(err.to_string().contains("5 bytes where 9"), "{err}");
    }

    #[tokio::test]
    async fn a_text_longer_than_announced_fails_the_body() {
        assert!(body(3, &[b"0 1 1"]).collect().await.is_err());
    }
}
