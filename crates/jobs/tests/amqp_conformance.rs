//! The broker conformance suite against the AMQP broker (RabbitMQ, `PORTICO_TEST_AMQP`),
//! with `portico worker --broker`'s Celery consumer as the worker side, over the `rpc` and
//! `redis://` result backends. With `CI` set a missing RabbitMQ or Redis fails.

use std::time::Duration;

use jobs::broker::amqp::consumer::{CelerySource, ConsumerConfig};
use jobs::broker::amqp::{AmqpBroker, AmqpSetup};
use jobs::broker::Broker;
use jobs::config::{RawJobsConfig, RawService, ResultBackend};
use jobs::conformance::broker::{suite, Fixture};
use jobs::records::{LocalDb, Records, RedisRecords};

struct Amqp {
    broker: AmqpBroker,
    url: String,
    queue: String,
    replies: String,
    backend: ResultBackend,
    background: service::Background,
    _temp: tempfile::TempDir,
}

impl Fixture for Amqp {
    type Broker = AmqpBroker;
    type Source = CelerySource;

    fn broker(&self) -> &AmqpBroker {
        &self.broker
    }

    fn records(&self) -> &Records {
        self.broker.records()
    }

    fn source(&self) -> CelerySource {
        CelerySource::new(ConsumerConfig {
            url: self.url.clone(),
            queue: self.queue.clone(),
            service: "svc".into(),
            prefetch: 1,
            backend: self.backend.clone(),
            node: format!("portico-test@{}", self.queue),
            max_attempts: 2,
            connect_timeout: Duration::from_secs(5),
            result_expires: Duration::from_secs(7200),
        })
    }

    fn service(&self) -> &str {
        "svc"
    }
}

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("portico-test.{what}.{}-{nanos}", std::process::id())
}

fn services(queue: &str) -> Vec<jobs::config::ServiceConfig> {
    let raw = RawJobsConfig {
        broker: "amqp://localhost".into(),
        services: vec![RawService {
            name: "svc".into(),
            celery_task_name: Some("run".into()),
            celery_queue_name: Some(queue.into()),
            version: String::new(),
            noparams: false,
            command: Vec::new(),
            mode: "per_job".into(),
            workers: None,
            timeout: None,
            max_attempts: 2,
            canarie: Default::default(),
        }],
        ..RawJobsConfig::default()
    };
    raw.validate().unwrap().services
}

async fn fixture(backend: ResultBackend) -> Amqp {
    let temp = tempfile::tempdir().unwrap();
    let db = LocalDb::open_at(temp.path()).await.unwrap();
    let url = testkit::test_amqp_url();
    let queue = unique("tasks");
    let replies = unique("replies");
    let background = service::Background::new("conformance");
    let setup = AmqpSetup::new(
        &url,
        Records::Embedded(db),
        services(&queue),
        "worker",
        backend.clone(),
        Duration::from_secs(5),
        &replies,
    );
    let broker = AmqpBroker::open(setup, &background).await.unwrap();
    Amqp {
        broker,
        url,
        queue,
        replies,
        backend,
        background,
        _temp: temp,
    }
}

async fn rabbitmq_up() -> bool {
    let url = testkit::test_amqp_url();
    match jobs::broker::amqp::link::connect(&url, "probe").await {
        Ok(connection) => {
            let _ = connection.close(200, "probe").await;
            true
        }
        Err(error) => {
            testkit::server_missing("rabbitmq", error);
            false
        }
    }
}

async fn run_suite(backend: ResultBackend) {
    for (name, check) in suite::<Amqp>() {
        eprintln!("{backend:?}: {name}");
        let fixture = fixture(backend.clone()).await;
        let background = fixture.background.clone();
        let url = fixture.url.clone();
        let queues = [fixture.queue.clone(), fixture.replies.clone()];
        check(fixture).await;
        background.stop(Duration::from_secs(2)).await;
        for queue in &queues {
            delete_queue(&url, queue).await;
        }
    }
}

async fn delete_queue(url: &str, queue: &str) {
    let Ok(connection) = jobs::broker::amqp::link::connect(url, "cleanup").await else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        let _ = channel
            .queue_delete(queue, lapin::options::QueueDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "cleanup").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_amqp_broker_conforms_with_rpc_states() {
    if !rabbitmq_up().await {
        return;
    }
    run_suite(ResultBackend::Rpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_amqp_broker_conforms_with_redis_states() {
    if !rabbitmq_up().await {
        return;
    }
    let probe =
        RedisRecords::new(&testkit::test_redis_url(), "probe:", Duration::from_secs(2)).unwrap();
    if let Err(error) = probe.ping().await {
        testkit::server_missing("redis", error);
        return;
    }
    run_suite(ResultBackend::Redis {
        url: testkit::test_redis_url(),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_while_rabbitmq_is_unreachable_fails_within_broker_timeout() {
    let temp = tempfile::tempdir().unwrap();
    let db = LocalDb::open_at(temp.path()).await.unwrap();
    // A port nothing listens on.
    let port = testkit::free_port().unwrap();
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let background = service::Background::new("unreachable");
    let setup = AmqpSetup::new(
        &url,
        Records::Embedded(db),
        services("nowhere"),
        "worker",
        ResultBackend::Rpc,
        Duration::from_millis(500),
        "replies",
    );
    let broker = AmqpBroker::open(setup, &background).await.unwrap();
    let job = jobs::Job::new(
        "svc",
        serde_json::json!({}),
        time::OffsetDateTime::now_utc(),
    );
    let started = std::time::Instant::now();
    let error = broker.submit(job.clone()).await.expect_err("unreachable");
    assert!(
        matches!(error, jobs::Error::BrokerUnreachable(_)),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let stored = broker.records().get(job.id).await.unwrap().unwrap();
    assert_eq!(stored.state, jobs::State::Failure, "never published: final");
    background.stop(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_amqp_broker_conforms_with_amqp_states() {
    if !rabbitmq_up().await {
        return;
    }
    run_suite(ResultBackend::Amqp).await;
}

/// The gateway's workers are single-threaded runtimes, each busy with its own connections.
/// The publishing connection must not belong to whichever of them submitted first: lapin
/// registers its socket with the runtime it connects from, and every other submission's
/// confirm would then wait until that worker next polled its I/O (here: never, for 3 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_arrive_while_the_runtime_that_submitted_first_is_busy() {
    if !rabbitmq_up().await {
        return;
    }
    let fixture = fixture(ResultBackend::Rpc).await;
    let job = || {
        jobs::Job::new(
            "svc",
            serde_json::json!({}),
            time::OffsetDateTime::now_utc(),
        )
    };
    let (submitted, first_done) = tokio::sync::oneshot::channel();
    let first = fixture.broker.clone();
    let first_job = job();
    let busy = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let result = first.submit(first_job).await.map(drop);
            let _ = submitted.send(result);
            // Busy: this runtime polls nothing, its I/O driver included.
            std::thread::sleep(Duration::from_secs(3));
        });
    });
    first_done.await.unwrap().expect("the first submission");
    let second = tokio::time::timeout(Duration::from_secs(2), fixture.broker.submit(job())).await;
    busy.join().unwrap();
    second
        .expect("the confirm waited for the busy runtime")
        .expect("the second submission");
    fixture.background.stop(Duration::from_secs(2)).await;
    delete_queue(&fixture.url, &fixture.queue).await;
    delete_queue(&fixture.url, &fixture.replies).await;
}

/// A submission whose task RabbitMQ confirmed but whose record could not be written (a full
/// disk) is refused, and its task is revoked on every worker, so none runs a job its client
/// was told failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_record_could_not_be_written_is_revoked_on_every_worker() {
    use futures::StreamExt;
    use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;

    if !rabbitmq_up().await {
        return;
    }
    let temp = tempfile::tempdir().unwrap();
    let faults = durable::Faults::new();
    let dir =
        cap_std::fs::Dir::open_ambient_dir(temp.path(), cap_std::ambient_authority()).unwrap();
    let db = {
        let faults = faults.clone();
        tokio::task::spawn_blocking(move || LocalDb::open(dir, Some(faults)))
            .await
            .unwrap()
            .unwrap()
    };
    let url = testkit::test_amqp_url();
    let (queue, replies) = (unique("unrecorded"), unique("replies"));
    let background = service::Background::new("unrecorded");
    let setup = AmqpSetup::new(
        &url,
        Records::Embedded(db),
        services(&queue),
        "worker",
        ResultBackend::Rpc,
        Duration::from_secs(5),
        &replies,
    );
    let broker = AmqpBroker::open(setup, &background).await.unwrap();

    // A worker's view of the control channel: a queue bound to the pidbox fanout.
    let connection = jobs::broker::amqp::link::connect(&url, "pidbox-listener")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let options = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let listener = channel
        .queue_declare("", options, FieldTable::default())
        .await
        .unwrap();
    let listener = listener.name().as_str().to_string();
    channel
        .queue_bind(
            &listener,
            jobs::broker::amqp::pidbox::EXCHANGE,
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut broadcasts = channel
        .basic_consume(
            &listener,
            "test",
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();

    faults.fail_all_writes(durable::Fault::NoSpace);
    let refused = loop {
        // The first refused write breaks the store; a submission batched before it may pass.
        let job = jobs::Job::new(
            "svc",
            serde_json::json!({}),
            time::OffsetDateTime::now_utc(),
        );
        match broker.submit(job.clone()).await {
            Ok(_) => continue,
            Err(error) => {
                assert!(
                    matches!(
                        error,
                        jobs::Error::Unavailable {
                            disk_full: true,
                            ..
                        }
                    ),
                    "{error:?}"
                );
                break job.id;
            }
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let delivery = tokio::time::timeout_at(deadline, broadcasts.next())
            .await
            .expect("no revoke broadcast for the unrecorded task")
            .unwrap()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
        if body["method"] == "revoke" && body["arguments"]["task_id"] == refused.to_string() {
            break;
        }
    }
    let _ = connection.close(200, "done").await;
    background.stop(Duration::from_secs(2)).await;
    delete_queue(&url, &queue).await;
    delete_queue(&url, &replies).await;
}
