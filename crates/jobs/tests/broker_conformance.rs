//! The broker conformance suite against the embedded broker, with its records embedded and
//! in Redis (`PORTICO_TEST_REDIS`; with `CI` set a missing Redis fails).

use std::time::Duration;

use jobs::broker::embedded::Setup;
use jobs::broker::{EmbeddedBroker, LocalSource};
use jobs::config::{RawJobsConfig, RawService};
use jobs::conformance::broker::{suite, Fixture};
use jobs::records::{LocalDb, Records, RedisRecords};

struct Embedded {
    broker: EmbeddedBroker,
    _background: service::Background,
    _temp: tempfile::TempDir,
}

impl Fixture for Embedded {
    type Broker = EmbeddedBroker;
    type Source = LocalSource;

    fn broker(&self) -> &EmbeddedBroker {
        &self.broker
    }

    fn records(&self) -> &Records {
        self.broker.records()
    }

    fn source(&self) -> LocalSource {
        self.broker.source("svc").unwrap()
    }

    fn service(&self) -> &str {
        "svc"
    }
}

fn services() -> Vec<jobs::config::ServiceConfig> {
    let raw = RawJobsConfig {
        services: vec![RawService {
            name: "svc".into(),
            celery_task_name: None,
            celery_queue_name: None,
            version: String::new(),
            noparams: false,
            command: vec!["true".into()],
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

async fn fixture(redis_prefix: Option<&str>) -> Embedded {
    let temp = tempfile::tempdir().unwrap();
    let db = LocalDb::open_at(temp.path()).await.unwrap();
    let records = match redis_prefix {
        None => Records::Embedded(db.clone()),
        Some(prefix) => Records::Redis(
            RedisRecords::new(&testkit::test_redis_url(), prefix, Duration::from_secs(2)).unwrap(),
        ),
    };
    let background = service::Background::new("conformance");
    let setup = Setup::new(db, records, services(), Duration::from_secs(30));
    let broker = EmbeddedBroker::open(setup, &background).await.unwrap();
    Embedded {
        broker,
        _background: background,
        _temp: temp,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_conforms_with_embedded_records() {
    for (name, check) in suite::<Embedded>() {
        eprintln!("embedded records: {name}");
        check(fixture(None).await).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_conforms_with_redis_records() {
    let probe =
        RedisRecords::new(&testkit::test_redis_url(), "probe:", Duration::from_secs(2)).unwrap();
    if let Err(error) = probe.ping().await {
        testkit::server_missing("redis", error);
        return;
    }
    for (name, check) in suite::<Embedded>() {
        eprintln!("redis records: {name}");
        let prefix = testkit::unique_key_prefix(name);
        check(fixture(Some(&prefix)).await).await;
    }
}
