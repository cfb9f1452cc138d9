//! Server-sent events: one [`Hub`] per process, one stream per open page.
//!
//! An event is formatted once (`id:`, `event:`, `data:`) into shared bytes; every stream
//! sends the same bytes. The hub keeps the last `replay` events in a ring: a page that
//! reconnects with `Last-Event-ID` gets those after its id that the ring still holds, then
//! the live ones. Each stream reads live events from a broadcast channel of `client_buffer`
//! slots: a page that falls further behind (a stalled tab, a client that stopped reading) is
//! cut off (its stream ends; a browser reconnects with `Last-Event-ID`) instead of being
//! buffered without limit; a client that reads nothing at all is also dropped by the
//! gateway's send timeout once its socket is full. So memory is bounded by the ring plus
//! `client_buffer` pointers per page, whatever the age or number of pages.
//!
//! Event ids start at the process's start time in milliseconds, so a page reconnecting to a
//! restarted Portico asks with an id older than any the new process sends.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::Stream;
use tokio::sync::broadcast;

/// One formatted event.
#[derive(Debug)]
pub struct Frame {
    pub id: u64,
    pub bytes: Bytes,
}

/// The events of one process.
#[derive(Debug)]
pub struct Hub {
    state: Mutex<State>,
    live: broadcast::Sender<Arc<Frame>>,
}

#[derive(Debug)]
struct State {
    next_id: u64,
    replay: VecDeque<Arc<Frame>>,
    cap: usize,
}

impl Hub {
    /// A hub keeping `replay` events for reconnecting pages, letting each page fall
    /// `client_buffer` events behind.
    pub fn new(replay: usize, client_buffer: usize) -> Hub {
        let first = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_millis()).unwrap_or(1));
        let (live, _) = broadcast::channel(client_buffer.max(1));
        Hub {
            state: Mutex::new(State {
                next_id: first,
                replay: VecDeque::with_capacity(replay.max(1)),
                cap: replay.max(1),
            }),
            live,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pages connected now.
    pub fn pages(&self) -> usize {
        self.live.receiver_count()
    }

    /// Sends `data` (one line of JSON) as an event named `event` to every page; its id.
    pub fn publish(&self, event: &str, data: &str) -> u64 {
        let mut state = self.state();
        let id = state.next_id;
        state.next_id += 1;
        let frame = Arc::new(Frame {
            id,
            bytes: Bytes::from(format!("id: {id}\nevent: {event}\ndata: {data}\n\n")),
        });
        if state.replay.len() == state.cap {
            state.replay.pop_front();
        }
        state.replay.push_back(frame.clone());
        // No page: nobody to send to (not an error).
        let _ = self.live.send(frame);
        id
    }

    /// Events held for replay (tests: the ring stays at its cap).
    pub fn held(&self) -> usize {
        self.state().replay.len()
    }

    /// A page's stream: `retry:`, the held events after `last_event_id` (with none, the
    /// newest held event of each name, so the page draws at once), then live events, until
    /// the page falls `client_buffer` events behind.
    pub fn stream(
        &self,
        last_event_id: Option<u64>,
    ) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
        let (first, receiver) = {
            let state = self.state();
            // Subscribed under the lock: nothing published falls between replay and live.
            let receiver = self.live.subscribe();
            let first: Vec<Arc<Frame>> = match last_event_id {
                Some(after) => state
                    .replay
                    .iter()
                    .filter(|f| f.id > after)
                    .cloned()
                    .collect(),
                None => state.replay.back().cloned().into_iter().collect(),
            };
            (first, receiver)
        };
        let mut opening = vec![Bytes::from_static(b"retry: 2000\n\n")];
        opening.extend(first.iter().map(|f| f.bytes.clone()));
        let opening = futures::stream::iter(opening.into_iter().map(Ok));
        let live = futures::stream::unfold(receiver, |mut receiver| async move {
            match receiver.recv().await {
                Ok(frame) => Some((Ok(frame.bytes.clone()), receiver)),
                // Too far behind, or the hub is gone: end; the page reconnects.
                Err(_) => None,
            }
        });
        futures::StreamExt::chain(opening, live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn text(bytes: &Bytes) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[tokio::test]
    async fn the_replay_ring_stays_at_its_cap() {
        let hub = Hub::new(16, 4);
        for n in 0..10_000 {
            hub.publish("tick", &n.to_string());
        }
        assert_eq!(hub.held(), 16);
    }

    #[tokio::test]
    async fn a_reconnecting_page_gets_what_it_missed_then_live_events() {
        let hub = Hub::new(16, 4);
        let first = hub.publish("tick", "1");
        hub.publish("tick", "2");
        hub.publish("tick", "3");
        let mut stream = Box::pin(hub.stream(Some(first)));
        assert_eq!(
            text(&stream.next().await.unwrap().unwrap()),
            "retry: 2000\n\n"
        );
        let second = text(&stream.next().await.unwrap().unwrap());
        assert!(second.contains("data: 2\n"), "{second}");
        assert!(text(&stream.next().await.unwrap().unwrap()).contains("data: 3\n"));
        hub.publish("tick", "4");
        assert!(text(&stream.next().await.unwrap().unwrap()).contains("data: 4\n"));
    }

    #[tokio::test]
    async fn a_new_page_gets_the_newest_event_at_once() {
        let hub = Hub::new(16, 4);
        hub.publish("tick", "old");
        let newest = hub.publish("tick", "new");
        let mut stream = Box::pin(hub.stream(None));
        stream.next().await;
        let first = text(&stream.next().await.unwrap().unwrap());
        assert!(first.starts_with(&format!("id: {newest}\n")), "{first}");
        assert!(first.contains("data: new\n"));
    }

    #[tokio::test]
    async fn a_page_that_falls_behind_is_cut_off_not_buffered() {
        let hub = Hub::new(16, 4);
        let mut stream = Box::pin(hub.stream(None));
        stream.next().await; // retry:
        for n in 0..100 {
            hub.publish("tick", &n.to_string());
        }
        // The broadcast slots hold 4 events; the stream notices it lagged and ends.
        let mut got = 0;
        while let Some(item) = stream.next().await {
            item.unwrap();
            got += 1;
        }
        assert!(got < 5, "got {got} events");
        assert_eq!(hub.pages(), 0);
    }
}
