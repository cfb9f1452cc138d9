//! The runner: local worker slots that run a service's command for each job.
//!
//! A [`Runner`] keeps `n` slots for one service; each slot loops: take a job from its
//! [`JobSource`], run the command (`per_job.rs` or `persistent.rs`, per the service's
//! `mode`), report the outcome. Whatever a command does (garbage, non-zero exit, floods,
//! ignoring SIGTERM, hanging) ends as that job's outcome: a slot never dies of it.
//!
//! Slots can be added and removed while running ([`Runner::resize`], driven by the
//! capacity estimate for `workers = "MIN-MAX"`): a removed slot finishes its job first.
//! [`Runner::stop`] stops taking jobs, gives running ones `grace` to end, then kills them
//! and gives them back ([`JobSource::release`]: they run again at the next start, the
//! attempt not counted).
//!
//! Children live in their own process groups, so a Portico killed with SIGKILL leaves its
//! running commands behind; `orphans.rs` records each group while it runs and the next
//! start kills what is left, before the jobs run again.

pub mod orphans;
mod per_job;
mod persistent;
mod process;
pub mod protocol;
mod source;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use source::{JobSource, Task};

use crate::config::{JobsConfig, Mode, ServiceConfig};
use crate::Outcome;

/// How a slot waits after its source failed before asking again.
const SOURCE_RETRY: Duration = Duration::from_secs(1);

/// What every slot of a runner shares besides its service.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// SIGTERM to SIGKILL.
    pub kill_grace: Duration,
    /// Most bytes of stdout kept (per_job), or of one line (persistent).
    pub max_output: usize,
    /// This machine's name (progress meta `host`, slot names).
    pub host: String,
    /// Where running commands' process groups are recorded, so a restart after a crash
    /// kills what the dead Portico left running (`None`: not recorded).
    pub children: Option<orphans::ChildRegistry>,
}

impl RunnerSettings {
    pub fn from_config(config: &JobsConfig) -> RunnerSettings {
        RunnerSettings {
            kill_grace: config.kill_grace,
            max_output: config.max_output,
            host: hostname(),
            children: None,
        }
    }
}

/// The machine's host name ("localhost" if it cannot be read).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// How a run ended.
pub(crate) enum Ended {
    Outcome(Outcome, String),
    /// Portico is stopping and killed it: give the job back.
    Stopped,
}

/// What a slot needs to run jobs.
pub(crate) struct SlotContext<S> {
    pub(crate) service: Arc<ServiceConfig>,
    pub(crate) settings: RunnerSettings,
    pub(crate) source: Arc<S>,
    /// Fired when the stop's grace period is over: kill what runs.
    pub(crate) kill: CancellationToken,
}

impl<S> SlotContext<S> {
    /// VestaService's PROGRESS meta (`current`, `total` 100, `worker_id_version`,
    /// `start_time`, `host`, `type`) with the command's own meta merged over it.
    pub(crate) fn progress_meta(
        &self,
        task: &crate::runner::Task,
        percent: u8,
        given: Map<String, Value>,
    ) -> Value {
        let start_time = task
            .job
            .started_at
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let mut meta = Map::new();
        meta.insert("current".into(), Value::from(percent));
        meta.insert("total".into(), Value::from(100));
        meta.insert(
            "worker_id_version".into(),
            Value::from(self.service.version.clone()),
        );
        meta.insert("start_time".into(), Value::from(start_time));
        meta.insert("host".into(), Value::from(self.settings.host.clone()));
        meta.insert(
            "type".into(),
            Value::from(self.service.celery_task_name.clone()),
        );
        meta.extend(given);
        Value::Object(meta)
    }
}

/// One service's local slots. Clones share them.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<RunnerInner>,
}

struct RunnerInner {
    service: String,
    /// Slots wanted now; slot `i` runs while `i < desired`.
    desired: AtomicUsize,
    /// Which slot indices have a running loop.
    occupied: Mutex<Vec<bool>>,
    busy: AtomicUsize,
    resized: Notify,
    stopping: CancellationToken,
    kill: CancellationToken,
    tracker: TaskTracker,
    spawn_slot: Box<dyn Fn(usize) + Send + Sync>,
    on_slots: Box<dyn Fn(usize) + Send + Sync>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("service", &self.inner.service)
            .field("slots", &self.slots())
            .field("busy", &self.busy())
            .finish()
    }
}

impl Runner {
    /// Starts `slots` slots for `service` taking jobs from `source`, on `background`.
    /// `on_slots` hears every change of the slot count (the broker's `activeWorkers`).
    pub fn start<S: JobSource>(
        service: ServiceConfig,
        settings: RunnerSettings,
        source: S,
        background: &service::Background,
        slots: usize,
        on_slots: Box<dyn Fn(usize) + Send + Sync>,
    ) -> Runner {
        let name = service.name.clone();
        let context = Arc::new(SlotContext {
            service: Arc::new(service),
            settings,
            source: Arc::new(source),
            kill: CancellationToken::new(),
        });
        let kill = context.kill.clone();
        let runner = Arc::new_cyclic(|weak: &std::sync::Weak<RunnerInner>| {
            let weak = weak.clone();
            let background = background.clone();
            let tracker = TaskTracker::new();
            let slot_tracker = tracker.clone();
            let spawn_slot = Box::new(move |index: usize| {
                let Some(runner) = weak.upgrade() else { return };
                let task_name = format!("jobs-slot-{}-{index}", context.service.name);
                let slot = slot_loop(index, context.clone(), runner);
                background.spawn(&task_name, slot_tracker.track_future(slot));
            });
            RunnerInner {
                service: name,
                desired: AtomicUsize::new(0),
                occupied: Mutex::new(Vec::new()),
                busy: AtomicUsize::new(0),
                resized: Notify::new(),
                stopping: CancellationToken::new(),
                kill,
                tracker,
                spawn_slot,
                on_slots,
            }
        });
        let runner = Runner { inner: runner };
        runner.resize(slots);
        runner
    }

    /// Slots wanted now.
    pub fn slots(&self) -> usize {
        self.inner.desired.load(Ordering::SeqCst)
    }

    /// Slots running a job now.
    pub fn busy(&self) -> usize {
        self.inner.busy.load(Ordering::SeqCst)
    }

    /// Runs `slots` slots from now on: new ones start at once, removed ones end after
    /// their current job.
    pub fn resize(&self, slots: usize) {
        if self.inner.stopping.is_cancelled() {
            return;
        }
        let mut occupied = self.inner.occupied();
        self.inner.desired.store(slots, Ordering::SeqCst);
        if occupied.len() < slots {
            occupied.resize(slots, false);
        }
        for index in 0..slots {
            if !occupied[index] {
                occupied[index] = true;
                (self.inner.spawn_slot)(index);
            }
        }
        drop(occupied);
        self.inner.resized.notify_waiters();
        (self.inner.on_slots)(slots);
    }

    /// Stops taking jobs; waits up to `grace` for running ones, then kills them (they are
    /// given back to the source) and waits for the slots to end.
    pub async fn stop(&self, grace: Duration) {
        self.inner.stopping.cancel();
        self.inner.resized.notify_waiters();
        self.inner.tracker.close();
        if tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_err()
        {
            self.inner.kill.cancel();
            // Killing takes up to another grace (SIGTERM, then SIGKILL).
            let _ = tokio::time::timeout(grace + Duration::from_secs(5), self.inner.tracker.wait())
                .await;
        }
        (self.inner.on_slots)(0);
    }
}

impl RunnerInner {
    fn occupied(&self) -> std::sync::MutexGuard<'_, Vec<bool>> {
        self.occupied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether slot `index` should end now (and if so, frees its index).
    fn slot_should_end(&self, index: usize) -> bool {
        let mut occupied = self.occupied();
        let end = self.stopping.is_cancelled() || index >= self.desired.load(Ordering::SeqCst);
        if end {
            if let Some(slot) = occupied.get_mut(index) {
                *slot = false;
            }
        }
        end
    }
}

async fn slot_loop<S: JobSource>(index: usize, ctx: Arc<SlotContext<S>>, runner: Arc<RunnerInner>) {
    let worker = format!("{}/{}/{index}", ctx.settings.host, ctx.service.name);
    let mut persistent = persistent::Persistent::default();
    loop {
        if runner.slot_should_end(index) {
            return;
        }
        let Some(next) = take_unless_removed(index, &ctx, &runner, &worker).await else {
            return;
        };
        let task = match next {
            Ok(Some(task)) => task,
            Ok(None) => {
                // The source closed (draining): this slot is done.
                let mut occupied = runner.occupied();
                if let Some(slot) = occupied.get_mut(index) {
                    *slot = false;
                }
                return;
            }
            Err(error) => {
                tracing::warn!(service = %ctx.service.name, %error, "taking a job failed; trying again");
                tokio::time::sleep(SOURCE_RETRY).await;
                continue;
            }
        };
        runner.busy.fetch_add(1, Ordering::SeqCst);
        run_task(&ctx, &mut persistent, &task).await;
        runner.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits for the source's next job; `None` once this slot is removed (the runner shrank or
/// is stopping) before one came.
///
/// The take is abandoned only then: a take of a remote or Celery source dropped mid-way may
/// have claimed a job already (a long poll the gateway answered), which would then wait for
/// its lease to run out. Other slots being added or removed leave it running.
async fn take_unless_removed<S: JobSource>(
    index: usize,
    ctx: &SlotContext<S>,
    runner: &RunnerInner,
    worker: &str,
) -> Option<Result<Option<Task>, crate::Error>> {
    let next = ctx.source.next(worker);
    tokio::pin!(next);
    loop {
        let resized = runner.resized.notified();
        tokio::select! {
            next = &mut next => return Some(next),
            () = resized => {}
            () = runner.stopping.cancelled() => {}
        }
        if runner.slot_should_end(index) {
            return None;
        }
    }
}

async fn run_task<S: JobSource>(
    ctx: &SlotContext<S>,
    persistent: &mut persistent::Persistent,
    task: &Task,
) {
    let span = tracing::debug_span!("job", id = %task.job.id, service = %ctx.service.name);
    let _entered = span.enter();
    drop(_entered);
    let ended = if task.stop.is_cancelled() {
        // Cancelled between being taken and starting: it never starts.
        Ended::Outcome(Outcome::Failure("revoked".into()), String::new())
    } else {
        match ctx.service.mode {
            Mode::PerJob => per_job::run(ctx, task).await,
            Mode::Persistent => persistent.run(ctx, task).await,
        }
    };
    let reported = match ended {
        Ended::Outcome(outcome, log) => ctx.source.finish(task, outcome, log).await,
        Ended::Stopped => ctx.source.release(task).await,
    };
    if let Err(error) = reported {
        tracing::warn!(job = %task.job.id, service = %ctx.service.name, %error, "reporting the end of a job failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Canarie, Workers};
    use crate::Error;

    /// A source whose `next` never hands out a job; it counts the calls that started and
    /// the ones dropped before they returned (a real source may have claimed a job by then:
    /// a remote worker's long poll that the gateway answered, a Celery delivery).
    #[derive(Default)]
    struct CountingSource {
        started: AtomicUsize,
        dropped: Arc<AtomicUsize>,
    }

    struct CountsDrop(Arc<AtomicUsize>);

    impl Drop for CountsDrop {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl JobSource for Arc<CountingSource> {
        async fn next(&self, _worker: &str) -> Result<Option<Task>, Error> {
            let _counts = CountsDrop(self.dropped.clone());
            self.started.fetch_add(1, Ordering::SeqCst);
            std::future::pending().await
        }

        async fn progress(&self, _: &Task, _: u8, _: Value) -> Result<(), Error> {
            Ok(())
        }

        async fn finish(&self, _: &Task, _: Outcome, _: String) -> Result<(), Error> {
            Ok(())
        }

        async fn release(&self, _: &Task) -> Result<(), Error> {
            Ok(())
        }
    }

    fn service() -> ServiceConfig {
        ServiceConfig {
            name: "svc".into(),
            celery_task_name: "svc".into(),
            celery_queue_name: "svc".into(),
            version: String::new(),
            noparams: false,
            command: vec!["true".into()],
            mode: Mode::PerJob,
            workers: Workers::Range { min: 1, max: 3 },
            timeout: None,
            max_attempts: 1,
            canarie: Canarie::default(),
        }
    }

    fn settings() -> RunnerSettings {
        RunnerSettings {
            kill_grace: Duration::from_secs(1),
            max_output: 1024,
            host: "test".into(),
            children: None,
        }
    }

    async fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited 5 s for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A runner of `slots` slots over a fresh [`CountingSource`] (keep the background).
    fn counting_runner(slots: usize) -> (Arc<CountingSource>, Runner, service::Background) {
        let source = Arc::new(CountingSource::default());
        let background = service::Background::new("test");
        let runner = Runner::start(
            service(),
            settings(),
            source.clone(),
            &background,
            slots,
            Box::new(|_| {}),
        );
        (source, runner, background)
    }

    #[tokio::test]
    async fn adding_slots_never_abandons_a_waiting_take() {
        let (source, runner, _background) = counting_runner(1);
        until("slot 0 to ask for a job", || {
            source.started.load(Ordering::SeqCst) == 1
        })
        .await;
        runner.resize(3);
        until("slots 1 and 2 to ask", || {
            source.started.load(Ordering::SeqCst) >= 3
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            source.dropped.load(Ordering::SeqCst),
            0,
            "a take was dropped mid-way ({} started)",
            source.started.load(Ordering::SeqCst)
        );
        assert_eq!(source.started.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_removed_slot_stops_waiting_for_a_job() {
        let (source, runner, _background) = counting_runner(3);
        until("three slots to ask", || {
            source.started.load(Ordering::SeqCst) == 3
        })
        .await;
        runner.resize(1);
        until("two slots to end", || {
            source.dropped.load(Ordering::SeqCst) == 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            source.started.load(Ordering::SeqCst),
            3,
            "no slot asked again"
        );
        assert_eq!(runner.busy(), 0);
    }
}
