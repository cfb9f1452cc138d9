//! `LocalSource`: the embedded broker's jobs of one service, as a [`JobSource`] for the
//! runner's local slots. Reports go through the state writer without waiting (see
//! `writer.rs`); only a release on shutdown waits until it is stored.

use serde_json::Value;

use super::writer::Then;
use super::EmbeddedBroker;
use crate::runner::{JobSource, Task};
use crate::{Change, Error, Outcome};

/// The embedded broker's jobs of one service, for local slots.
#[derive(Debug, Clone)]
pub struct LocalSource {
    pub(super) broker: EmbeddedBroker,
    pub(super) service: String,
}

impl JobSource for LocalSource {
    async fn next(&self, worker: &str) -> Result<Option<Task>, Error> {
        self.broker.take(&self.service, worker, false, None).await
    }

    async fn progress(&self, task: &Task, percent: u8, meta: Value) -> Result<(), Error> {
        let change = Change::Progress {
            percent: percent.min(100),
            meta,
        };
        self.broker
            .inner
            .write(task.job.id, change, Then::Nothing)
            .await;
        Ok(())
    }

    async fn finish(&self, task: &Task, outcome: Outcome, log: String) -> Result<(), Error> {
        let (id, change, then) = self.broker.inner.ending(&task.lease, outcome, log)?;
        self.broker.inner.write(id, change, then).await;
        Ok(())
    }

    async fn release(&self, task: &Task) -> Result<(), Error> {
        self.broker
            .inner
            .write_and_wait(task.job.id, Change::Release, Then::Ended(task.lease))
            .await
            .map(drop)
    }
}
