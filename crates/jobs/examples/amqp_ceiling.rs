//! RabbitMQ's own ceiling for what `bench/jobs/amqp.sh` measures through Portico: Celery
//! task messages (built by `celery::task_message`, as Portico publishes them) published
//! persistent, with publisher confirms, by WINDOW tasks that each wait for their confirm
//! before the next publish, over CHANNELS confirm channels of one connection, for SECONDS.
//! No HTTP and no records: the rate a minimal client gets from this RabbitMQ on this
//! machine, to read Portico's rate against.
//!
//! `cargo run --release -p jobs --example amqp_ceiling -- [URL] [WINDOW] [CHANNELS] [SECONDS]`
//! Prints `confirmed_per_s <n>`. Uses (and deletes) a queue of its own.

use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobs::broker::amqp::celery::{task_message, NewTask};
use jobs::broker::amqp::link::{connect, task_queue_options};
use jobs::JobId;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::Channel;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or(default.to_string());
    let url = arg(0, "amqp://guest:guest@127.0.0.1:5672/%2f");
    let window: usize = arg(1, "64").parse()?;
    let channels: usize = arg(2, "4").parse()?;
    let seconds: u64 = arg(3, "8").parse()?;

    let connection = connect(&url, "portico-amqp-ceiling").await?;
    let mut confirm_channels = Vec::new();
    for _ in 0..channels.max(1) {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        confirm_channels.push(channel);
    }
    let queue = format!("portico.amqp-ceiling.{}", std::process::id());
    confirm_channels[0]
        .queue_declare(&queue, task_queue_options(), FieldTable::default())
        .await?;

    let confirmed = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(seconds);
    let publishers: Vec<_> = (0..window)
        .map(|i| {
            let channel = confirm_channels[i % confirm_channels.len()].clone();
            tokio::spawn(publish_until(
                channel,
                queue.clone(),
                end,
                confirmed.clone(),
            ))
        })
        .collect();
    for publisher in publishers {
        publisher.await??;
    }
    let rate = confirmed.load(Ordering::Relaxed) as f64 / seconds as f64;
    println!("confirmed_per_s {rate:.0}");
    confirm_channels[0]
        .queue_delete(&queue, QueueDeleteOptions::default())
        .await?;
    connection.close(200, "done").await?;
    Ok(())
}

/// Publishes one task message at a time until `end`, counting the acked ones.
async fn publish_until(
    channel: Channel,
    queue: String,
    end: Instant,
    confirmed: Arc<AtomicU64>,
) -> Result<(), String> {
    let message = serde_json::json!({"service": {"name": "noop"}, "annotation": {"n": "1"}});
    while Instant::now() < end {
        let task = task_message(&NewTask {
            id: JobId::new(),
            task: "worker.noop",
            message: &message,
            retries: 0,
            reply_to: "portico.replies",
            origin: "1@bench",
        })?;
        let confirm = channel
            .basic_publish(
                "",
                &queue,
                BasicPublishOptions::default(),
                &task.body,
                task.properties,
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        if confirm.is_ack() {
            confirmed.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}
