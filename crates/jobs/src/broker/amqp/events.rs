//! `celeryev`: worker liveness from Celery's events (workers started with `-E`), and the
//! lost work Celery itself never notices.
//!
//! A worker whose main process dies (SIGKILL, OOM, the machine) leaves its task STARTED or
//! PROGRESS forever; with Celery's default early ack the message is gone too. Portico
//! follows the `celeryev` topic exchange: `task-started` says which worker runs which job,
//! `worker-heartbeat` (every 2 s) that the worker lives. A worker that has not beaten
//! for [`LOST_AFTER`] is lost: each of its jobs whose
//! record is not final becomes RETRY and is published again (Celery's `retries` = runs so
//! far), or FAILURE "worker lost" once `max_attempts` runs were made. A worker that comes
//! online is sent the ids revoked so far (a revoke reaches only workers online then).

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ExchangeKind};
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::link::{connect, Backoff};
use super::AmqpBroker;
use crate::{Change, JobId, State};

/// Celery's events exchange.
pub const EXCHANGE: &str = "celeryev";
/// A worker silent this long is lost (Celery beats every 2 s; its own monitors allow 2x).
pub const LOST_AFTER: Duration = Duration::from_secs(8);

/// Who runs what, and when each worker last beat.
#[derive(Debug, Default)]
pub struct Liveness {
    workers: HashMap<String, Instant>,
    tasks: HashMap<JobId, String>,
    /// Tasks each worker finished (succeeded, failed, revoked) since this process started.
    processed: HashMap<String, u64>,
    /// Workers found silent, and when they last beat (kept for [`KEEP_LOST`] for the
    /// dashboard; at most [`MAX_LOST`]).
    lost: HashMap<String, Instant>,
}

/// How long a lost worker stays in the worker table.
pub const KEEP_LOST: Duration = Duration::from_secs(600);
/// Lost workers kept at most.
const MAX_LOST: usize = 1024;

/// What an event asks of the broker.
#[derive(Debug, PartialEq)]
pub enum Action {
    Nothing,
    /// A task started on a worker (STARTED, when the record has not heard of it).
    Started(JobId, String),
    /// A worker came online: send it the revoked ids.
    Online(String),
    /// These jobs' worker is gone.
    Lost(String, Vec<JobId>),
}

impl Liveness {
    /// Takes one event (`{"type", "hostname", "uuid", ...}`) seen at `now`.
    pub fn see(&mut self, event: &Value, now: Instant) -> Action {
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let host = event
            .get("hostname")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let task = event
            .get("uuid")
            .and_then(Value::as_str)
            .and_then(|id| id.parse::<JobId>().ok());
        match (kind, task) {
            ("worker-heartbeat", _) => {
                self.lost.remove(&host);
                self.workers.insert(host, now);
                Action::Nothing
            }
            ("worker-online", _) => {
                self.lost.remove(&host);
                self.workers.insert(host.clone(), now);
                Action::Online(host)
            }
            // An orderly stop: its running jobs were finished or given back (RabbitMQ
            // requeues them) by now; the silence check below catches what is left.
            ("worker-offline", _) => Action::Nothing,
            ("task-received" | "task-started", Some(id)) => {
                self.workers.insert(host.clone(), now);
                self.tasks.insert(id, host.clone());
                if kind == "task-started" {
                    Action::Started(id, host)
                } else {
                    Action::Nothing
                }
            }
            (
                "task-succeeded" | "task-failed" | "task-revoked" | "task-rejected"
                | "task-retried",
                Some(id),
            ) => {
                self.tasks.remove(&id);
                if kind != "task-retried" && self.workers.contains_key(&host) {
                    *self.processed.entry(host).or_default() += 1;
                }
                Action::Nothing
            }
            _ => Action::Nothing,
        }
    }

    /// Workers silent for [`LOST_AFTER`] at `now`, each with its jobs.
    pub fn silent(&mut self, now: Instant) -> Vec<Action> {
        let gone: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, seen)| now.duration_since(**seen) > LOST_AFTER)
            .map(|(host, _)| host.clone())
            .collect();
        self.lost
            .retain(|_, seen| now.duration_since(*seen) <= KEEP_LOST);
        gone.into_iter()
            .map(|host| {
                if let Some(seen) = self.workers.remove(&host) {
                    if self.lost.len() < MAX_LOST {
                        self.lost.insert(host.clone(), seen);
                    }
                }
                self.lose(&host)
            })
            .collect()
    }

    fn lose(&mut self, host: &str) -> Action {
        let jobs: Vec<JobId> = self
            .tasks
            .iter()
            .filter(|(_, h)| h.as_str() == host)
            .map(|(id, _)| *id)
            .collect();
        for id in &jobs {
            self.tasks.remove(id);
        }
        Action::Lost(host.to_string(), jobs)
    }

    /// Workers beating now.
    pub fn alive(&self) -> usize {
        self.workers.len()
    }

    /// The worker table at `now`: workers beating, then those lost recently.
    pub fn table(&self, now: Instant) -> Vec<CeleryWorker> {
        let row = |host: &String, seen: &Instant, lost: bool| CeleryWorker {
            name: host.clone(),
            last_seen_seconds: now.duration_since(*seen).as_secs_f64(),
            active: self
                .tasks
                .iter()
                .filter(|(_, h)| *h == host)
                .map(|(id, _)| *id)
                .collect(),
            processed: self.processed.get(host).copied().unwrap_or(0),
            lost,
        };
        let mut rows: Vec<CeleryWorker> = self
            .workers
            .iter()
            .map(|(host, seen)| row(host, seen, false))
            .chain(self.lost.iter().map(|(host, seen)| row(host, seen, true)))
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows
    }
}

/// One Celery worker as its events show it (the dashboard's worker table).
#[derive(Debug, Clone, PartialEq)]
pub struct CeleryWorker {
    /// Its node name (`celery@host`).
    pub name: String,
    /// Seconds since its last event.
    pub last_seen_seconds: f64,
    /// Tasks it started and has not finished.
    pub active: Vec<JobId>,
    /// Tasks it finished since this process started.
    pub processed: u64,
    /// Silent past [`LOST_AFTER`].
    pub lost: bool,
}

/// Declares `celeryev` unless it exists (passively first, as the pidbox exchanges: flags
/// that differ from the workers' make RabbitMQ refuse with 406).
pub async fn declare_exchange(connection: &Connection) -> Result<(), lapin::Error> {
    let probe = connection.create_channel().await?;
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    if probe
        .exchange_declare(
            EXCHANGE,
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await
        .is_ok()
    {
        let _ = probe.close(200, "declared").await;
        return Ok(());
    }
    let channel = connection.create_channel().await?;
    let options = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            EXCHANGE,
            ExchangeKind::Topic,
            options,
            FieldTable::default(),
        )
        .await?;
    let _ = channel.close(200, "declared").await;
    Ok(())
}

/// Follows events until `stop`, reconnecting after breaks.
pub(crate) async fn follow(broker: AmqpBroker, url: String, stop: CancellationToken) {
    let mut backoff = Backoff::default();
    loop {
        let round = follow_once(&broker, &url, &mut backoff);
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = round => outcome,
        };
        if let Err(error) = outcome {
            tracing::debug!(%error, "celeryev: reconnecting");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = backoff.wait() => {}
        }
    }
}

async fn follow_once(broker: &AmqpBroker, url: &str, backoff: &mut Backoff) -> Result<(), String> {
    let connection = connect(url, "portico-events")
        .await
        .map_err(|e| e.to_string())?;
    declare_exchange(&connection)
        .await
        .map_err(|e| format!("declaring celeryev: {e}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let queue = format!("portico.events.{}", uuid::Uuid::new_v4().simple());
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(&queue, exclusive, FieldTable::default())
        .await
        .map_err(|e| e.to_string())?;
    for key in ["worker.#", "task.#"] {
        channel
            .queue_bind(
                &queue,
                EXCHANGE,
                key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let mut events = channel
        .basic_consume(&queue, "", no_ack, FieldTable::default())
        .await
        .map_err(|e| e.to_string())?;
    backoff.reset();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            delivery = events.next() => {
                let delivery = delivery.ok_or("events ended")?.map_err(|e| e.to_string())?;
                let Ok(body) = serde_json::from_slice::<Value>(&delivery.data) else { continue };
                // `task.multi` batches task events in a list.
                let batch = match body {
                    Value::Array(items) => items,
                    one => vec![one],
                };
                for event in &batch {
                    let action = broker.liveness().see(event, Instant::now());
                    broker.act(action).await;
                }
            }
            _ = tick.tick() => {
                let silent = broker.liveness().silent(Instant::now());
                for action in silent {
                    broker.act(action).await;
                }
            }
        }
    }
}

impl AmqpBroker {
    /// Who runs what (the lock is never held across an await).
    fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.inner
            .liveness
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Celery workers as their events show them: beating, then lost in the last 10 minutes.
    pub fn celery_workers(&self) -> Vec<CeleryWorker> {
        self.liveness().table(Instant::now())
    }

    async fn act(&self, action: Action) {
        match action {
            Action::Nothing => {}
            Action::Started(id, host) => self.mark_started(id, &host).await,
            Action::Online(host) => self.resend_revokes(&host).await,
            Action::Lost(host, jobs) => {
                for id in jobs {
                    self.republish_lost(id, &host).await;
                }
            }
        }
    }

    async fn mark_started(&self, id: JobId, host: &str) {
        let Ok(Some(job)) = self.inner.records.get(id).await else {
            return;
        };
        if !matches!(job.state, State::Pending | State::Retry) {
            return;
        }
        let change = Change::External {
            state: State::Started,
            progress: None,
            meta: serde_json::json!({"hostname": host}),
            result: Value::Null,
            error: None,
        };
        if let Ok(Some(applied)) = self.inner.records.apply_one(id, change).await {
            if applied.changed {
                self.inner.hub.publish(&applied.job);
            }
        }
    }

    async fn resend_revokes(&self, host: &str) {
        let ids: Vec<String> = self.revoked_now().keys().cloned().collect();
        if ids.is_empty() {
            return;
        }
        let arguments = serde_json::json!({"task_id": ids, "terminate": false});
        if let Err(error) = self.inner.mailbox.tell("revoke", arguments).await {
            tracing::debug!(%error, %host, "resending revokes failed");
        }
    }

    /// The job's worker is gone: RETRY and publish it again, or FAILURE past
    /// `max_attempts`.
    async fn republish_lost(&self, id: JobId, host: &str) {
        let Ok(Some(job)) = self.inner.records.get(id).await else {
            return;
        };
        let Some(service) = self.inner.services.get(&job.service) else {
            return;
        };
        let change = Change::Requeue {
            reason: format!("worker {host} stopped"),
            max_attempts: service.max_attempts,
            log: String::new(),
        };
        let Ok(Some(applied)) = self.inner.records.apply_one(id, change).await else {
            return;
        };
        if !applied.changed {
            return;
        }
        self.inner.hub.publish(&applied.job);
        if applied.job.state != State::Retry {
            tracing::warn!(job = %id, %host, "worker lost and max_attempts reached: FAILURE");
            self.inner.watched.remove(&id);
            return;
        }
        tracing::warn!(job = %id, %host, attempts = applied.job.attempts, "worker lost: publishing the job again");
        if let Err(error) = self.publish(&applied.job, applied.job.attempts).await {
            tracing::error!(job = %id, %error, "publishing a lost job again failed");
        }
    }
}

/// Sends one event as a Celery worker does (`worker-heartbeat` to routing key
/// `worker.heartbeat`, ...), on `link` without waiting for the confirm.
pub async fn emit(
    link: &super::link::Link,
    kind: &str,
    node: &str,
    mut fields: serde_json::Map<String, Value>,
) -> Result<(), String> {
    let live = link.live().await.map_err(|e| e.to_string())?;
    fields.insert("type".into(), Value::from(kind));
    fields.insert("hostname".into(), Value::from(node));
    fields.insert(
        "timestamp".into(),
        Value::from(super::pidbox::now_seconds()),
    );
    fields.insert("utcoffset".into(), Value::from(0));
    fields.insert("pid".into(), Value::from(std::process::id()));
    fields.insert("clock".into(), Value::from(1));
    let body = Value::Object(fields).to_string();
    let properties = lapin::BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(1);
    let published = live
        .channel
        .basic_publish(
            EXCHANGE,
            &kind.replace('-', "."),
            lapin::options::BasicPublishOptions::default(),
            body.as_bytes(),
            properties,
        )
        .await;
    if let Err(error) = published {
        link.reset(&live).await;
        return Err(error.to_string());
    }
    Ok(())
}

/// A worker's heartbeat fields (Celery's `worker-heartbeat`).
pub fn heartbeat(active: usize, processed: u64) -> serde_json::Map<String, Value> {
    let value = serde_json::json!({
        "freq": 2.0, "active": active, "processed": processed, "loadavg": [0.0, 0.0, 0.0],
        "sw_ident": "portico", "sw_ver": env!("CARGO_PKG_VERSION"), "sw_sys": "Linux",
    });
    match value {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_silent_worker_loses_its_running_jobs() {
        let mut live = Liveness::default();
        let t0 = Instant::now();
        let a = JobId::new();
        let b = JobId::new();
        live.see(&json!({"type": "worker-heartbeat", "hostname": "w1"}), t0);
        assert_eq!(
            live.see(
                &json!({"type": "task-started", "hostname": "w1", "uuid": a.to_string()}),
                t0
            ),
            Action::Started(a, "w1".into())
        );
        live.see(
            &json!({"type": "task-started", "hostname": "w1", "uuid": b.to_string()}),
            t0,
        );
        live.see(
            &json!({"type": "task-succeeded", "hostname": "w1", "uuid": b.to_string()}),
            t0,
        );
        assert!(live.silent(t0 + Duration::from_secs(3)).is_empty());
        let lost = live.silent(t0 + LOST_AFTER + Duration::from_secs(1));
        assert_eq!(lost, vec![Action::Lost("w1".into(), vec![a])]);
        assert_eq!(live.alive(), 0);
    }

    #[test]
    fn online_asks_for_revokes_and_offline_waits_for_the_silence() {
        let mut live = Liveness::default();
        let t0 = Instant::now();
        assert_eq!(
            live.see(&json!({"type": "worker-online", "hostname": "w2"}), t0),
            Action::Online("w2".into())
        );
        let a = JobId::new();
        live.see(
            &json!({"type": "task-received", "hostname": "w2", "uuid": a.to_string()}),
            t0,
        );
        assert_eq!(
            live.see(&json!({"type": "worker-offline", "hostname": "w2"}), t0),
            Action::Nothing
        );
        let lost = live.silent(t0 + LOST_AFTER + Duration::from_secs(1));
        assert_eq!(lost, vec![Action::Lost("w2".into(), vec![a])]);
    }

    #[test]
    fn the_worker_table_counts_finished_tasks_and_keeps_lost_workers_a_while() {
        let mut live = Liveness::default();
        let t0 = Instant::now();
        let (a, b) = (JobId::new(), JobId::new());
        live.see(&json!({"type": "worker-online", "hostname": "w1"}), t0);
        for (kind, id) in [
            ("task-started", a),
            ("task-started", b),
            ("task-succeeded", a),
        ] {
            let event = json!({"type": kind, "hostname": "w1", "uuid": id.to_string()});
            live.see(&event, t0);
        }
        let rows = live.table(t0 + Duration::from_secs(1));
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].processed, rows[0].lost), (1, false));
        assert_eq!(rows[0].active, vec![b]);
        assert!((rows[0].last_seen_seconds - 1.0).abs() < 0.01);

        let silent_at = t0 + LOST_AFTER + Duration::from_secs(1);
        live.silent(silent_at);
        let rows = live.table(silent_at);
        assert_eq!(rows.len(), 1);
        assert!(rows[0].lost && rows[0].active.is_empty(), "{rows:?}");
        live.silent(silent_at + KEEP_LOST + Duration::from_secs(1));
        assert!(
            live.table(silent_at).is_empty(),
            "forgotten after KEEP_LOST"
        );
    }
}
