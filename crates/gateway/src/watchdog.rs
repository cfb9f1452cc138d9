//! The connection watchdog: a small task beside each connection that closes it when the client
//! stops doing its part, with one timer per connection and nothing on the request path but a
//! few loads and stores into the connection's [`Activity`].
//!
//! **Rules** (durations from `[limits]`):
//! - *opening*: the TLS handshake, or in the clear the first bytes, within `header_timeout`
//!   of accept;
//! - *waiting*, no request in progress: HTTP/1 is closed after `idle_timeout` (counted from
//!   the end of the previous response, or of the handshake), or `header_timeout` after the
//!   first bytes of a request head arrived; HTTP/2 is shut down gracefully (GOAWAY) after
//!   `idle_timeout`, and cut off if it still holds the connection `header_timeout` later
//!   (a peer that never answers the GOAWAY's PING);
//! - *sending*, in any state: a write the socket has not accepted for `send_timeout` (the
//!   client reads nothing), or on HTTP/2 a response body that yielded a frame hyper has not
//!   come back for in `send_timeout` (the peer withholds flow-control credit, for that stream
//!   or the whole connection), closes the connection. Closing drops the response bodies and
//!   whatever they hold (fib producers, back-end connections, stream slots). A body waiting
//!   for its producer is not stalled: hyper polled it and is waiting for it;
//! - *upgraded* (an HTTP/1 connection a service took over with `101 Switching Protocols`, a
//!   proxied WebSocket): no byte read or written for `idle_timeout`, or a write refused for
//!   `send_timeout`, cuts it. The connection has left hyper, so the watchdog cannot drop it:
//!   it sets a flag the stream reads on every use and wakes the task that holds it, whose
//!   reads and writes then fail (`ConnectionStream`). The connection keeps its slot of
//!   `max_connections` until the service drops the stream.
//!
//! **Why this way.** hyper's own `header_read_timeout` arms and drops a boxed timer for every
//! request, which cost about 20% of the requests/s of `/healthz` (bench/gateway); per-request
//! or per-frame timers for the idle and send timeouts would cost the same again. Here the
//! connection's code only records what happened: the request layer counts requests in
//! progress and reads the head's start time (`InProgress`, `Activity::take_head_start`), the
//! stream wrapper records the first bytes of a head and the edges of a blocked write
//! (`crate::stream`), and on HTTP/2 the response body counts its frames out (below). The
//! watchdog wakes at the earliest deadline those records imply, and at least every
//! `send_timeout` (HTTP/2: every half of it) to see a stall that began since it last looked.
//!
//! **HTTP/2 stalls without a clock.** A body with a frame out (yielded, not polled again)
//! counts itself in one of three slots, the one of the current *epoch*; the watchdog starts a
//! new epoch every `send_timeout / 2`, and before reusing the oldest slot checks that it is
//! empty. A body still counted there has had its frame out for two whole epochs at least:
//! a stall of at least `send_timeout`, found within 1.5 x `send_timeout`. Per frame this is a
//! load and two atomic adds, no clock read.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::LimitsConfig;
use crate::connection::stopped;

/// "Not set", for the times kept as nanoseconds since the connection's accept.
const NEVER: u64 = u64::MAX;

/// Where a connection is in its life, as far as the watchdog cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Accepted; TLS handshake or cleartext preface not yet done.
    Opening = 0,
    Http1 = 1,
    Http2 = 2,
    /// An HTTP/1 connection handed to a service by `101 Switching Protocols`.
    Upgraded = 3,
}

impl Phase {
    fn from_u8(value: u8) -> Phase {
        match value {
            1 => Phase::Http1,
            2 => Phase::Http2,
            3 => Phase::Upgraded,
            _ => Phase::Opening,
        }
    }
}

/// The durations the watchdog enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub header: Duration,
    pub idle: Duration,
    pub send: Duration,
}

impl Rules {
    pub(crate) fn new(limits: &LimitsConfig) -> Self {
        Rules {
            header: limits.header_timeout,
            idle: limits.idle_timeout,
            send: limits.send_timeout,
        }
    }

    /// How long an HTTP/2 stall epoch lasts (see the module doc).
    fn epoch(&self) -> Duration {
        self.send / 2
    }

    /// How long a peer that got a GOAWAY may still hold an idle connection: as long as a
    /// client has to say something at all.
    fn go_away_grace(&self) -> Duration {
        self.header
    }
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Handshake,
    SlowHead,
    Idle,
    SendStalled,
    GoAwayIgnored,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Handshake => "no TLS handshake or first bytes within the header timeout",
            Reason::SlowHead => "no complete request head within the header timeout",
            Reason::Idle => "idle for the idle timeout",
            Reason::SendStalled => "no write progress within the send timeout",
            Reason::GoAwayIgnored => "still open a header timeout after GOAWAY",
        })
    }
}

/// What one connection records for its watchdog. Written on the connection's worker thread
/// (the connection, its HTTP/2 stream tasks and its watchdog all run there); atomics only
/// because the type must be `Sync`, and relaxed, since nothing else is published through them.
pub(crate) struct Activity {
    origin: Instant,
    phase: AtomicU8,
    /// Requests from their complete head to the drop of their response body.
    in_progress: AtomicU32,
    /// When the connection last had no request in progress (nanoseconds after `origin`).
    idle_since: AtomicU64,
    /// HTTP/1: when the first bytes of the next request head arrived, or `NEVER`.
    head_since: AtomicU64,
    /// When a write was last refused by the socket with none accepted since, or `NEVER`.
    write_blocked_since: AtomicU64,
    /// HTTP/2: the current stall epoch (0..3) and, per epoch, the response bodies with a
    /// frame out since then.
    stall_epoch: AtomicU8,
    frames_out: [AtomicU32; 3],
    /// The watchdog (or shutdown) asked the connection to finish gracefully.
    close_asked: AtomicBool,
    /// Woken by `ask_to_close` and `cut`: the connection's task, or after an upgrade the
    /// task that holds the stream.
    closer: AtomicWaker,
    /// Upgraded: the watchdog cut the connection; every read and write fails from now.
    cut: AtomicBool,
    /// The connection's stream was dropped (the socket is closed), and who waits for that.
    stream_dropped: AtomicBool,
    dropped_waiter: AtomicWaker,
}

impl Activity {
    pub(crate) fn new(accepted: Instant) -> Self {
        Activity {
            origin: accepted,
            phase: AtomicU8::new(Phase::Opening as u8),
            in_progress: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NEVER),
            write_blocked_since: AtomicU64::new(NEVER),
            stall_epoch: AtomicU8::new(0),
            frames_out: Default::default(),
            close_asked: AtomicBool::new(false),
            closer: AtomicWaker::new(),
            cut: AtomicBool::new(false),
            stream_dropped: AtomicBool::new(false),
            dropped_waiter: AtomicWaker::new(),
        }
    }

    fn nanos_now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(NEVER - 1)
    }

    fn instant(&self, nanos: u64) -> Option<Instant> {
        (nanos != NEVER).then(|| self.origin + Duration::from_nanos(nanos))
    }

    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Relaxed))
    }

    /// The protocol is settled (TLS handshake done, or the cleartext preface read): from
    /// now the connection waits for a request.
    pub(crate) fn opened(&self, phase: Phase) {
        self.idle_since.store(self.nanos_now(), Relaxed);
        self.phase.store(phase as u8, Relaxed);
    }

    /// A service answered `101 Switching Protocols` on this HTTP/1 connection: once hyper
    /// hands the stream over, the rules of an upgraded connection apply.
    pub(crate) fn upgrading(&self) {
        if self.phase() == Phase::Http1 {
            self.phase.store(Phase::Upgraded as u8, Relaxed);
        }
    }

    /// Whether the connection was upgraded (see [`Activity::upgrading`]).
    #[inline]
    pub(crate) fn is_upgraded(&self) -> bool {
        self.phase.load(Relaxed) == Phase::Upgraded as u8
    }

    /// Bytes went through an upgraded connection: its idle time starts again.
    pub(crate) fn tunnel_progressed(&self) {
        self.idle_since.store(self.nanos_now(), Relaxed);
    }

    /// Cuts an upgraded connection: its stream fails every read and write from now, and the
    /// task holding it is woken to notice.
    pub(crate) fn cut(&self) {
        self.cut.store(true, Relaxed);
        self.closer.wake();
    }

    /// Whether the connection was cut.
    pub(crate) fn is_cut(&self) -> bool {
        self.cut.load(Relaxed)
    }

    /// The connection's stream was dropped.
    pub(crate) fn stream_dropped(&self) {
        self.stream_dropped.store(true, Relaxed);
        self.dropped_waiter.wake();
    }

    /// Completes once the connection's stream was dropped.
    pub(crate) async fn stream_gone(&self) {
        std::future::poll_fn(|cx| {
            self.dropped_waiter.register(cx.waker());
            if self.stream_dropped.load(Relaxed) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Bytes arrived on an HTTP/1 connection: the start of a head when no request is in
    /// progress and none has started yet (one clock read per request).
    #[inline]
    pub(crate) fn bytes_arrived(&self) {
        if self.in_progress.load(Relaxed) == 0 && self.head_since.load(Relaxed) == NEVER {
            self.head_since.store(self.nanos_now(), Relaxed);
        }
    }

    /// When the head of the request now being handed to the service started arriving, if
    /// the stream saw it (HTTP/1); clears it for the next request.
    #[inline]
    pub(crate) fn take_head_start(&self) -> Option<Instant> {
        let since = self.head_since.load(Relaxed);
        if since == NEVER {
            return None;
        }
        self.head_since.store(NEVER, Relaxed);
        self.instant(since)
    }

    /// The socket refused a write (it is full): the send timeout runs from now.
    pub(crate) fn write_blocked(&self) {
        self.write_blocked_since.store(self.nanos_now(), Relaxed);
    }

    /// The socket took bytes again. A connection with no request in progress is sending
    /// the end of its last response: its idle time starts again.
    pub(crate) fn write_resumed(&self) {
        self.write_blocked_since.store(NEVER, Relaxed);
        if self.in_progress.load(Relaxed) == 0 {
            self.idle_since.store(self.nanos_now(), Relaxed);
        }
    }

    /// Asks the connection to finish gracefully (HTTP/1: after the response in progress;
    /// HTTP/2: GOAWAY).
    pub(crate) fn ask_to_close(&self) {
        self.close_asked.store(true, Relaxed);
        self.closer.wake();
    }

    /// `waker` is woken when `ask_to_close` is called (register before checking).
    pub(crate) fn wake_on_close(&self, waker: &Waker) {
        self.closer.register(waker);
    }

    /// Whether `ask_to_close` was called.
    pub(crate) fn close_asked(&self) -> bool {
        self.close_asked.load(Relaxed)
    }

    /// Since when writes have been refused, if they are.
    #[cfg(test)]
    pub(crate) fn write_blocked_since(&self) -> Option<Instant> {
        self.instant(self.write_blocked_since.load(Relaxed))
    }

    fn seen(&self) -> Seen {
        Seen {
            phase: self.phase(),
            in_progress: self.in_progress.load(Relaxed),
            idle_since: self.instant(self.idle_since.load(Relaxed)),
            head_since: self.instant(self.head_since.load(Relaxed)),
            write_blocked_since: self.instant(self.write_blocked_since.load(Relaxed)),
        }
    }

    /// Starts the next HTTP/2 stall epoch; `true` instead when a body still has a frame out
    /// from two epochs ago (a stall).
    fn next_stall_epoch(&self) -> bool {
        let next = (self.stall_epoch.load(Relaxed) + 1) % 3;
        if self.frames_out[usize::from(next)].load(Relaxed) > 0 {
            return true;
        }
        self.stall_epoch.store(next, Relaxed);
        false
    }
}

/// A request in progress: from its complete head to the drop of its response body. On
/// HTTP/2 it also counts the body's frame out, if any, for the stall epochs.
pub(crate) struct InProgress {
    activity: Arc<Activity>,
    counts_frames: bool,
    /// The epoch slot this body counts itself in while hyper holds a frame of it.
    frame_out: Option<u8>,
}

impl InProgress {
    pub(crate) fn begin(activity: &Arc<Activity>) -> Self {
        activity.in_progress.fetch_add(1, Relaxed);
        InProgress {
            activity: activity.clone(),
            counts_frames: activity.phase() == Phase::Http2,
            frame_out: None,
        }
    }

    /// hyper took a frame (or the response head) and has not come back for more yet.
    #[inline]
    pub(crate) fn frame_out(&mut self) {
        if self.counts_frames && self.frame_out.is_none() {
            let slot = self.activity.stall_epoch.load(Relaxed);
            self.activity.frames_out[usize::from(slot)].fetch_add(1, Relaxed);
            self.frame_out = Some(slot);
        }
    }

    /// The service answered `101 Switching Protocols` (see [`Activity::upgrading`]).
    pub(crate) fn upgrading(&self) {
        self.activity.upgrading();
    }

    /// hyper came back for more: the frame out is on its way.
    #[inline]
    pub(crate) fn polled(&mut self) {
        if let Some(slot) = self.frame_out.take() {
            self.activity.frames_out[usize::from(slot)].fetch_sub(1, Relaxed);
        }
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.polled();
        let activity = &self.activity;
        if activity.in_progress.fetch_sub(1, Relaxed) == 1 {
            activity.idle_since.store(activity.nanos_now(), Relaxed);
        }
    }
}

/// One look at an `Activity`.
#[derive(Debug, Clone, Copy)]
struct Seen {
    phase: Phase,
    in_progress: u32,
    idle_since: Option<Instant>,
    head_since: Option<Instant>,
    write_blocked_since: Option<Instant>,
}

/// What the watchdog does after a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Close(Reason),
    /// Ask an idle HTTP/2 connection to go away (GOAWAY).
    GoAway,
    /// Nothing to do before this instant (`None`: no deadline runs).
    Wait(Option<Instant>),
}

/// The rules of the module doc applied to one look at `now`; `going_away` is when the
/// connection was asked to finish (GOAWAY or shutdown).
fn step(seen: &Seen, rules: &Rules, going_away: Option<Instant>, now: Instant) -> Step {
    let sending = seen
        .write_blocked_since
        .map(|blocked| (blocked + rules.send, Step::Close(Reason::SendStalled)));
    let waiting = waiting_deadline(seen, rules, going_away);
    let earliest = match (sending, waiting) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (one, other) => one.or(other),
    };
    match earliest {
        Some((at, action)) if at <= now => action,
        other => Step::Wait(other.map(|(at, _)| at)),
    }
}

/// The deadline of a connection with no request in progress, and what happens at it.
fn waiting_deadline(
    seen: &Seen,
    rules: &Rules,
    going_away: Option<Instant>,
) -> Option<(Instant, Step)> {
    let idle_since = seen.idle_since?;
    match seen.phase {
        Phase::Opening => Some((idle_since + rules.header, Step::Close(Reason::Handshake))),
        _ if seen.in_progress > 0 => None,
        Phase::Http1 => Some(match seen.head_since {
            Some(head) => (head + rules.header, Step::Close(Reason::SlowHead)),
            None => (idle_since + rules.idle, Step::Close(Reason::Idle)),
        }),
        // Shutdown does not end a tunnel: the drain timeout does, when the worker stops.
        Phase::Upgraded => Some((idle_since + rules.idle, Step::Close(Reason::Idle))),
        Phase::Http2 => Some(match going_away {
            None => (idle_since + rules.idle, Step::GoAway),
            Some(asked) => (
                asked + rules.go_away_grace(),
                Step::Close(Reason::GoAwayIgnored),
            ),
        }),
    }
}

/// Runs until the connection must be closed, and says why. Shutdown (`stop`) and an idle
/// HTTP/2 connection ask the connection to finish gracefully through `activity`.
pub(crate) async fn watch(
    activity: &Activity,
    rules: &Rules,
    mut stop: watch::Receiver<bool>,
) -> Reason {
    let mut going_away = None;
    let mut stop_seen = false;
    let mut epoch_started = Instant::now();
    let timer = tokio::time::sleep_until(epoch_started);
    tokio::pin!(timer);
    loop {
        let now = Instant::now();
        let seen = activity.seen();
        let http2 = seen.phase == Phase::Http2;
        if http2 && now >= epoch_started + rules.epoch() {
            if activity.next_stall_epoch() {
                return Reason::SendStalled;
            }
            epoch_started = now;
        }
        let deadline = match step(&seen, rules, going_away, now) {
            Step::Close(reason) => return reason,
            Step::GoAway => {
                going_away = Some(now);
                activity.ask_to_close();
                continue;
            }
            Step::Wait(deadline) => deadline,
        };
        // Look again by then anyway: a stall that begins after this look has no deadline yet.
        let look_again = if http2 {
            epoch_started + rules.epoch()
        } else {
            now + rules.send
        };
        let wake = deadline.map_or(look_again, |at| at.min(look_again));
        timer.as_mut().reset(wake);
        tokio::select! {
            () = timer.as_mut() => {}
            () = stopped(&mut stop), if !stop_seen => {
                stop_seen = true;
                going_away.get_or_insert_with(Instant::now);
                activity.ask_to_close();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        send: Duration::from_secs(20),
    };

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    type Watching = tokio::task::JoinHandle<Reason>;

    /// A connection accepted now, opened as `phase`, with its watchdog running (and the
    /// shutdown signal it listens to).
    fn start(phase: Option<Phase>) -> (Arc<Activity>, Watching, watch::Sender<bool>) {
        let (stop_tx, stop) = watch::channel(false);
        let activity = Arc::new(Activity::new(Instant::now()));
        if let Some(phase) = phase {
            activity.opened(phase);
        }
        let watching = tokio::spawn({
            let activity = activity.clone();
            async move { watch(&activity, &RULES, stop).await }
        });
        (activity, watching, stop_tx)
    }

    /// Lets paused time run for `duration`, then says whether the watchdog has finished.
    async fn after(duration: Duration, watching: &Watching) -> bool {
        tokio::time::sleep(duration).await;
        watching.is_finished()
    }

    async fn reason(watching: Watching) -> Reason {
        watching.await.expect("the watchdog does not panic")
    }

    #[tokio::test(start_paused = true)]
    async fn an_unfinished_handshake_is_cut_at_the_header_timeout() {
        let (_activity, watching, _stop) = start(None);
        assert!(!after(secs(9), &watching).await);
        assert!(after(secs(2), &watching).await);
        assert_eq!(reason(watching).await, Reason::Handshake);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_http1_connection_lasts_the_idle_timeout_not_the_header_timeout() {
        let (activity, watching, _stop) = start(Some(Phase::Http1));
        // A request from 5 s to 25 s, then idle: the deadline is 85 s.
        tokio::time::sleep(secs(5)).await;
        let request = InProgress::begin(&activity);
        assert!(!after(secs(20), &watching).await, "fired while busy");
        drop(request);
        assert!(
            !after(secs(59), &watching).await,
            "fired before the idle timeout"
        );
        assert!(after(secs(2), &watching).await, "did not fire after it");
        assert_eq!(reason(watching).await, Reason::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_head_must_complete_within_the_header_timeout() {
        let (activity, watching, _stop) = start(Some(Phase::Http1));
        tokio::time::sleep(secs(30)).await;
        activity.bytes_arrived();
        assert!(!after(secs(9), &watching).await);
        assert!(after(secs(2), &watching).await);
        assert_eq!(reason(watching).await, Reason::SlowHead);
    }

    #[tokio::test(start_paused = true)]
    async fn a_completed_head_starts_the_request_and_clears_the_head_clock() {
        let (activity, watching, _stop) = start(Some(Phase::Http1));
        tokio::time::sleep(secs(1)).await;
        activity.bytes_arrived();
        let head_start = Instant::now();
        tokio::time::sleep(secs(2)).await;
        activity.bytes_arrived(); // more of the same head: the start stays
        assert_eq!(activity.take_head_start(), Some(head_start));
        let request = InProgress::begin(&activity);
        activity.bytes_arrived(); // body bytes of a request in progress: not a head
        assert_eq!(activity.take_head_start(), None);
        assert!(
            !after(secs(30), &watching).await,
            "a busy connection has no head deadline"
        );
        drop(request);
        assert!(!after(secs(59), &watching).await);
        assert!(after(secs(2), &watching).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_for_the_send_timeout_closes_even_a_busy_connection() {
        let (activity, watching, _stop) = start(Some(Phase::Http1));
        let _request = InProgress::begin(&activity);
        tokio::time::sleep(secs(7)).await;
        activity.write_blocked();
        assert!(!after(secs(19), &watching).await);
        assert!(after(secs(2), &watching).await);
        assert_eq!(reason(watching).await, Reason::SendStalled);
    }

    #[tokio::test(start_paused = true)]
    async fn writes_that_keep_making_progress_are_never_cut() {
        let (activity, watching, _stop) = start(Some(Phase::Http1));
        let request = InProgress::begin(&activity);
        for _ in 0..20 {
            activity.write_blocked();
            tokio::time::sleep(secs(15)).await;
            activity.write_resumed();
        }
        assert!(
            !watching.is_finished(),
            "a slow reader is not a stalled one"
        );
        // The last bytes of a response go out after its body ended: idle time starts when
        // the socket takes them, not when the body ended.
        drop(request);
        activity.write_blocked();
        tokio::time::sleep(secs(15)).await;
        activity.write_resumed();
        assert!(!after(secs(59), &watching).await);
        assert!(after(secs(2), &watching).await);
        assert_eq!(reason(watching).await, Reason::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_http2_connection_gets_goaway_then_is_cut_if_it_lingers() {
        let (activity, watching, _stop) = start(Some(Phase::Http2));
        assert!(!after(secs(59), &watching).await);
        assert!(!activity.close_asked());
        tokio::time::sleep(secs(2)).await;
        assert!(activity.close_asked(), "no GOAWAY after the idle timeout");
        assert!(
            !after(secs(8), &watching).await,
            "cut before the grace ended"
        );
        assert!(after(secs(2), &watching).await);
        assert_eq!(reason(watching).await, Reason::GoAwayIgnored);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_stream_opened_after_goaway_may_finish() {
        let (activity, watching, _stop) = start(Some(Phase::Http2));
        tokio::time::sleep(secs(61)).await;
        let mut request = InProgress::begin(&activity);
        // Frames go out and hyper keeps coming back for more: no stall.
        for _ in 0..10 {
            request.frame_out();
            tokio::time::sleep(secs(3)).await;
            request.polled();
        }
        assert!(!watching.is_finished());
        // Idle again, long after the grace: cut at the watchdog's next look (an epoch).
        drop(request);
        assert!(after(RULES.epoch() + secs(1), &watching).await);
        assert_eq!(reason(watching).await, Reason::GoAwayIgnored);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_frame_hyper_never_comes_back_for_is_a_stall() {
        let (activity, watching, _stop) = start(Some(Phase::Http2));
        let _idle_is_far = InProgress::begin(&activity);
        let mut stalled = InProgress::begin(&activity);
        tokio::time::sleep(secs(3)).await;
        stalled.frame_out();
        assert!(
            !after(secs(19), &watching).await,
            "cut before the send timeout"
        );
        assert!(
            after(secs(12), &watching).await,
            "not cut by 1.5 x the send timeout"
        );
        assert_eq!(reason(watching).await, Reason::SendStalled);
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_body_waiting_for_its_producer_is_not_a_stall() {
        let (activity, watching, _stop) = start(Some(Phase::Http2));
        let mut waiting = InProgress::begin(&activity);
        waiting.frame_out();
        waiting.polled(); // hyper came back; the body answered Pending
        assert!(!after(secs(300), &watching).await);
        drop(waiting);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_asks_to_close_and_cuts_a_lingering_idle_http2_peer() {
        let (activity, watching, stop_tx) = start(Some(Phase::Http2));
        tokio::time::sleep(secs(5)).await;
        stop_tx.send(true).expect("the watchdog listens");
        assert!(!after(secs(1), &watching).await);
        assert!(activity.close_asked());
        assert!(after(secs(10), &watching).await);
        assert_eq!(reason(watching).await, Reason::GoAwayIgnored);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgraded_connection_is_cut_when_no_byte_moved_for_the_idle_timeout() {
        let (activity, watching, stop) = start(Some(Phase::Http1));
        let request = InProgress::begin(&activity);
        request.upgrading();
        assert!(activity.is_upgraded());
        drop(request); // the 101 was written
        tokio::time::sleep(secs(50)).await;
        activity.tunnel_progressed();
        // Shutdown does not end it; the drain timeout does (the worker stops).
        stop.send(true).expect("the watchdog listens");
        assert!(
            !after(secs(59), &watching).await,
            "cut before the idle timeout"
        );
        assert!(after(secs(2), &watching).await);
        assert_eq!(reason(watching).await, Reason::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgraded_connection_that_stops_reading_is_cut_at_the_send_timeout() {
        let (activity, watching, _stop) = start(Some(Phase::Http1));
        activity.upgrading();
        activity.tunnel_progressed();
        activity.write_blocked();
        assert!(!after(secs(19), &watching).await);
        assert!(after(secs(2), &watching).await);
        assert_eq!(reason(watching).await, Reason::SendStalled);
    }

    #[test]
    fn only_an_http1_connection_upgrades() {
        let activity = Activity::new(Instant::now());
        activity.opened(Phase::Http2);
        activity.upgrading();
        assert!(!activity.is_upgraded());
    }

    #[test]
    fn the_earliest_deadline_wins() {
        let now = Instant::now();
        let seen = Seen {
            phase: Phase::Http1,
            in_progress: 0,
            idle_since: Some(now),
            head_since: None,
            write_blocked_since: Some(now),
        };
        assert_eq!(
            step(&seen, &RULES, None, now),
            Step::Wait(Some(now + RULES.send))
        );
        assert_eq!(
            step(&seen, &RULES, None, now + RULES.send),
            Step::Close(Reason::SendStalled)
        );
        let busy = Seen {
            in_progress: 1,
            write_blocked_since: None,
            ..seen
        };
        assert_eq!(
            step(&busy, &RULES, None, now + secs(1000)),
            Step::Wait(None)
        );
    }
}
