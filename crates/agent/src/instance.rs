//! One instance's life, as one task: start the process, register it `starting`, wait for its
//! health check, register it `ready` and renew its lease every third of it, and end in one of
//! three ways, each reported to the supervisor:
//!
//! - it never became ready (exited, or no healthy answer within `start_timeout`): stopped,
//!   deregistered, reported with the reason (exit status and the last lines of its output);
//! - it exited while ready (a crash): deregistered at once, reported with the reason;
//! - the supervisor asked it to stop: marked `draining` (proxies stop choosing it), given
//!   `drain` for requests in flight, then SIGTERM to its process group, SIGKILL after
//!   `stop_timeout`, deregistered.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cap_std::fs::Dir;
use nix::sys::signal::Signal;
use registry::{AnyRegistry, Instance, InstanceState, Registry, ServiceSpec};
use service::DataDir;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use crate::leftovers::{self, PidRecord};
use crate::process::{self, Launch, LogTarget, Running};
use crate::supervisor::{Event, SlotId};

/// How long a failure report waits for the last of the process's output.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// What every instance task of one agent shares.
pub struct Context {
    pub registry: AnyRegistry,
    pub agent_id: String,
    pub advertise: IpAddr,
    pub lease: Duration,
    pub drain: Duration,
    pub stop_timeout: Duration,
    /// `agent/ID/pids`: one record per running instance.
    pub pids: Arc<Dir>,
    /// `instances`: one subdirectory of logs per service.
    pub logs: DataDir,
    pub log_max_bytes: u64,
    pub log_backups: usize,
    pub health: reqwest::Client,
}

/// How an instance task ended (or that its instance became ready).
#[derive(Debug)]
pub enum Report {
    Ready {
        slot: SlotId,
        instance: Instance,
    },
    /// Never became ready.
    FailedToStart {
        slot: SlotId,
        reason: String,
    },
    /// Exited while ready.
    Crashed {
        slot: SlotId,
        reason: String,
        uptime: Duration,
    },
    /// Stopped as asked.
    Stopped {
        slot: SlotId,
    },
}

/// The supervisor's handle on a running instance task.
#[derive(Debug)]
pub struct Handle {
    pub port: u16,
    stop: Option<oneshot::Sender<()>>,
}

impl Handle {
    /// Asks the task to drain and stop the instance (once).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Creates the task for a new instance of `spec` on `port`; the caller spawns it.
pub fn launch(
    context: Arc<Context>,
    slot: SlotId,
    spec: Arc<ServiceSpec>,
    port: u16,
    events: mpsc::Sender<Event>,
) -> (
    Handle,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let id = registry::new_id();
    let (stop_tx, stop) = oneshot::channel();
    let handle = Handle {
        port,
        stop: Some(stop_tx),
    };
    let instance = Instance {
        id,
        service: spec.name.clone(),
        agent: context.agent_id.clone(),
        addr: SocketAddr::new(context.advertise, port),
        state: InstanceState::Starting,
        started_at: SystemTime::now(),
    };
    let span = tracing::info_span!("instance", service = %spec.name, instance = %instance.id, addr = %instance.addr);
    let life = Life {
        context,
        slot,
        instance,
        spec,
        events,
    };
    (handle, life.run(stop).instrument(span))
}

struct Life {
    context: Arc<Context>,
    slot: SlotId,
    spec: Arc<ServiceSpec>,
    instance: Instance,
    events: mpsc::Sender<Event>,
}

/// How the wait for the health check ended.
enum Start {
    Healthy,
    Exited(std::io::Result<ExitStatus>),
    TimedOut(String),
    Stopped,
}

impl Life {
    async fn run(self, mut stop: oneshot::Receiver<()>) {
        let mut running = match self.start().await {
            Ok(running) => running,
            Err(reason) => {
                return self
                    .report(Report::FailedToStart {
                        slot: self.slot,
                        reason,
                    })
                    .await
            }
        };
        let lease = self.spec.start_timeout + self.context.lease;
        self.register(lease).await;
        match self.wait_started(&mut running, &mut stop).await {
            Start::Healthy => {}
            Start::Exited(status) => {
                running.group.reap();
                let reason = self
                    .exit_reason(&mut running, status, "before answering its health check")
                    .await;
                self.forget().await;
                return self
                    .report(Report::FailedToStart {
                        slot: self.slot,
                        reason,
                    })
                    .await;
            }
            Start::TimedOut(last_error) => {
                self.terminate(&mut running).await;
                let lines = running.output.last_lines(OUTPUT_GRACE).await;
                let reason = format!(
                    "{}did not answer GET {} on {} within {} (last attempt: {last_error}){}",
                    self.name(),
                    self.spec.health,
                    self.instance.addr,
                    humantime::format_duration(self.spec.start_timeout),
                    format_lines(&lines, &self.log_name())
                );
                self.forget().await;
                return self
                    .report(Report::FailedToStart {
                        slot: self.slot,
                        reason,
                    })
                    .await;
            }
            Start::Stopped => {
                self.terminate(&mut running).await;
                self.forget().await;
                return self.report(Report::Stopped { slot: self.slot }).await;
            }
        }
        self.serve(running, stop).await;
    }

    /// `hello (instance ID): ` for messages.
    fn name(&self) -> String {
        format!("{} (instance {}): ", self.spec.name, self.instance.id)
    }

    fn log_name(&self) -> String {
        format!("instances/{}/{}.log", self.spec.name, self.instance.id)
    }

    /// Starts the process and writes its pid record.
    async fn start(&self) -> Result<Running, String> {
        let logs = self.log_target().await?;
        let port = self.instance.addr.port();
        let argv = substitute(&self.spec.command, port, self.context.advertise);
        let mut env: Vec<(String, String)> = self.spec.env.clone().into_iter().collect();
        env.push(("PORT".into(), port.to_string()));
        env.push(("PORTICO_SERVICE".into(), self.spec.name.clone()));
        env.push(("PORTICO_INSTANCE_ID".into(), self.instance.id.clone()));
        let running = process::spawn(
            &Launch {
                argv: &argv,
                env: &env,
            },
            logs,
        )
        .map_err(|e| format!("{}starting {:?}: {e}", self.name(), argv[0]))?;
        let record = PidRecord {
            id: self.instance.id.clone(),
            service: self.spec.name.clone(),
            pid: running.child.id().unwrap_or_default(),
            start_ticks: running.start_ticks,
        };
        let pids = self.context.pids.clone();
        let written = tokio::task::spawn_blocking(move || leftovers::write(&pids, &record)).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!(
                "could not write the instance's pid record; a restarted agent will not find it"
            );
        }
        tracing::info!(command = ?argv, "instance started");
        Ok(running)
    }

    async fn log_target(&self) -> Result<LogTarget, String> {
        let logs = self.context.logs.clone();
        let service = self.spec.name.clone();
        let dir = tokio::task::spawn_blocking(move || {
            let dir = logs.subdir(&service).map_err(|e| e.to_string())?;
            dir.dir()
                .try_clone()
                .map_err(|e| format!("opening {}: {e}", dir.path().display()))
        })
        .await
        .map_err(|e| format!("preparing the log directory: {e}"))??;
        Ok(LogTarget {
            dir: Arc::new(dir),
            name: format!("{}.log", self.instance.id),
            max_bytes: self.context.log_max_bytes,
            backups: self.context.log_backups,
        })
    }

    async fn wait_started(&self, running: &mut Running, stop: &mut oneshot::Receiver<()>) -> Start {
        let mut last_error = String::from("none made");
        let path = self.spec.health.as_str();
        let probe = crate::health::wait_healthy(
            &self.context.health,
            self.instance.addr,
            path,
            &mut last_error,
        );
        let outcome = tokio::select! {
            _ = probe => Start::Healthy,
            status = running.child.wait() => Start::Exited(status),
            _ = tokio::time::sleep(self.spec.start_timeout) => Start::TimedOut(String::new()),
            _ = &mut *stop => Start::Stopped,
        };
        match outcome {
            Start::TimedOut(_) => Start::TimedOut(last_error),
            other => other,
        }
    }

    /// Ready: registered with renewed leases until it exits or is asked to stop.
    async fn serve(mut self, mut running: Running, mut stop: oneshot::Receiver<()>) {
        self.instance.state = InstanceState::Ready;
        self.register(self.context.lease).await;
        let ready_at = Instant::now();
        tracing::info!("instance ready");
        self.report(Report::Ready {
            slot: self.slot,
            instance: self.instance.clone(),
        })
        .await;
        let mut renew = tokio::time::interval(self.context.lease / 3);
        renew.tick().await;
        loop {
            tokio::select! {
                status = running.child.wait() => {
                    self.deregister().await;
                    running.group.reap();
                    let reason = self.exit_reason(&mut running, status, "while ready").await;
                    tracing::warn!(%reason, "instance exited");
                    self.forget().await;
                    let uptime = ready_at.elapsed();
                    return self.report(Report::Crashed { slot: self.slot, reason, uptime }).await;
                }
                _ = renew.tick() => self.register(self.context.lease).await,
                _ = &mut stop => break,
            }
        }
        self.drain_and_stop(&mut running).await;
        self.forget().await;
        self.report(Report::Stopped { slot: self.slot }).await;
    }

    /// Draining (proxies stop choosing it) for `drain`, then terminated.
    async fn drain_and_stop(&mut self, running: &mut Running) {
        self.instance.state = InstanceState::Draining;
        let context = self.context.clone();
        self.register(context.drain + context.stop_timeout + context.lease)
            .await;
        tracing::info!(drain = ?context.drain, "instance draining");
        tokio::select! {
            _ = running.child.wait() => {}
            _ = tokio::time::sleep(context.drain) => {}
        }
        self.terminate(running).await;
        tracing::info!("instance stopped");
    }

    /// SIGTERM to the group, SIGKILL after `stop_timeout`, then reaped.
    async fn terminate(&self, running: &mut Running) {
        running.group.signal(Signal::SIGTERM);
        let stop_timeout = self.context.stop_timeout;
        if tokio::time::timeout(stop_timeout, running.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(?stop_timeout, "instance ignored SIGTERM; killing it");
            running.group.signal(Signal::SIGKILL);
            let _ = running.child.wait().await;
        }
        running.group.reap();
    }

    async fn exit_reason(
        &self,
        running: &mut Running,
        status: std::io::Result<ExitStatus>,
        when: &str,
    ) -> String {
        let status = match status {
            Ok(status) => status.to_string(),
            Err(error) => format!("unknown status ({error})"),
        };
        let lines = running.output.last_lines(OUTPUT_GRACE).await;
        format!(
            "{}exited with {status} {when}{}",
            self.name(),
            format_lines(&lines, &self.log_name())
        )
    }

    /// Registers the instance in its current state; a failure is logged (the next renewal
    /// tries again, and proxies keep their view meanwhile).
    async fn register(&self, lease: Duration) {
        if let Err(error) = self
            .context
            .registry
            .put_instance(&self.instance, lease)
            .await
        {
            tracing::warn!(%error, state = self.instance.state.as_str(), "registering the instance");
        }
    }

    async fn deregister(&self) {
        let registry = &self.context.registry;
        if let Err(error) = registry
            .remove_instance(&self.spec.name, &self.instance.id)
            .await
        {
            tracing::warn!(%error, "deregistering the instance (its lease will expire)");
        }
    }

    /// Deregisters the instance and deletes its pid record: the process is gone.
    async fn forget(&self) {
        self.deregister().await;
        let pids = self.context.pids.clone();
        let id = self.instance.id.clone();
        let _ = tokio::task::spawn_blocking(move || leftovers::remove(&pids, &id)).await;
    }

    async fn report(&self, report: Report) {
        // The supervisor is gone only when the agent is being torn down.
        let _ = self.events.send(Event::Report(report)).await;
    }
}

/// `{port}` and `{host}` replaced in every argument.
pub fn substitute(command: &[String], port: u16, host: IpAddr) -> Vec<String> {
    let port = port.to_string();
    let host = host.to_string();
    command
        .iter()
        .map(|arg| arg.replace("{port}", &port).replace("{host}", &host))
        .collect()
}

fn format_lines(lines: &[String], log: &str) -> String {
    if lines.is_empty() {
        return format!("; no output (log: {log})");
    }
    format!("; last lines of {log}:\n{}", lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_and_host_are_substituted_in_every_argument() {
        let command: Vec<String> = ["srv", "--listen={host}:{port}", "{port}", "plain"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let argv = substitute(&command, 4100, "10.0.0.7".parse().unwrap());
        assert_eq!(argv, ["srv", "--listen=10.0.0.7:4100", "4100", "plain"]);
    }

    #[test]
    fn failure_reports_name_the_log_and_its_last_lines() {
        let lines = vec!["Traceback".to_string(), "OSError: port taken".to_string()];
        let text = format_lines(&lines, "instances/a/1.log");
        assert_eq!(
            text,
            "; last lines of instances/a/1.log:\nTraceback\nOSError: port taken"
        );
        assert_eq!(format_lines(&[], "x.log"), "; no output (log: x.log)");
    }
}
