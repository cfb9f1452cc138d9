//! `RedisRegistry`: the registry shared by many hosts through one Redis.
//!
//! Key layout (documented in the README; `portico:` is the default prefix):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `portico:svc:NAME` | string | the service's JSON spec |
//! | `portico:svcs` | set | catalog names |
//! | `portico:agent:ID` | string, TTL = lease | the agent's JSON |
//! | `portico:agents` | set | agent ids (index; members whose key expired are pruned on read) |
//! | `portico:inst:SERVICE:ID` | string, TTL = lease | the instance's JSON |
//! | `portico:insts:SERVICE` | set | instance ids of SERVICE (index, pruned likewise) |
//! | `portico:alloc:AGENT` | stream, group `agents` | allocation requests for AGENT |
//! | `portico:alloc-outcome:REQUEST` | string, TTL 60 s | the request's JSON outcome |
//! | `portico:used:SERVICE:ID` | string, TTL 1 day | last use of the instance (unix ms) |
//! | `portico:changes` | pub/sub channel | `service NAME`, `instance SERVICE`, `agent ID`, `allocation REQUEST` |
//!
//! Leased keys are written with their index by one Lua script that also publishes a notice
//! when the value changed (a renewal that changes nothing is silent). Lists are read by a
//! script that returns the values of an index's members and removes members whose key has
//! expired, so an index never grows with the dead.
//!
//! Allocation requests use a consumer group: an agent reads its stream as consumer `ID`, so
//! a request it took but never answered (it was killed) stays pending and is delivered again
//! to its next run, which first reads its pending entries. Answering acknowledges the entry
//! (and deletes it), stores the outcome and publishes `allocation REQUEST`.
//!
//! Connections: one multiplexed `ConnectionManager` for commands (it reconnects by itself
//! after Redis restarts), a second one for blocking stream reads (a `BLOCK` would stall every
//! command multiplexed behind it), and a pub/sub connection owned by a listener task that
//! turns messages into [`Change`]s and reconnects with backoff, announcing
//! [`Change::Resync`] after each reconnection. Every call is bounded by the configured
//! timeout. The listener starts with the first `subscribe` and stops when the last clone of
//! the registry is dropped.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamReadReply;
use redis::{ErrorKind, RedisError, Script};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::{
    AgentInfo, AllocationOutcome, AllocationRequest, Change, Error, Instance, Registry,
    ServiceSpec, CHANGE_BUFFER, OUTCOME_TTL,
};

const BACKEND: &str = "redis";

/// The prefix of every key and of the channel, unless configured otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "portico:";

/// The consumer group agents read their streams in.
const GROUP: &str = "agents";
/// Requests kept in a stream at most (about; older ones are trimmed).
const STREAM_MAX_LEN: usize = 10_000;
/// The longest a blocking stream read waits.
const MAX_BLOCK: Duration = Duration::from_secs(10);
/// How long a use mark outlives its last update.
const USED_TTL: Duration = Duration::from_secs(24 * 3600);
/// `wait_allocation` looks at the outcome key this often besides listening for its notice
/// (a notice lost while reconnecting costs at most this).
const OUTCOME_POLL: Duration = Duration::from_millis(500);
/// Longest pause between attempts to re-subscribe.
const MAX_LISTEN_BACKOFF: Duration = Duration::from_secs(2);

/// Returns the values of an index's members; removes members whose key is gone.
const LIST_SCRIPT: &str = r"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local value = redis.call('GET', ARGV[1] .. id)
  if value then out[#out + 1] = value else redis.call('SREM', KEYS[1], id) end
end
return out
";

/// Sets a leased value and its index entry; publishes a notice if the value changed.
const PUT_LEASED_SCRIPT: &str = r"
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if old ~= ARGV[1] then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1
";

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port/db`.
    pub url: String,
    /// Prepended to every key and to the channel (default `portico:`).
    pub key_prefix: String,
    /// Bound on one call, (re)connecting included.
    pub timeout: Duration,
}

impl RedisOptions {
    pub fn new(url: &str) -> RedisOptions {
        RedisOptions {
            url: url.to_string(),
            key_prefix: DEFAULT_KEY_PREFIX.to_string(),
            timeout: Duration::from_secs(2),
        }
    }
}

/// See the module doc. Clones share connections and the listener.
#[derive(Clone)]
pub struct RedisRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let info = self.inner.client.get_connection_info();
        f.debug_struct("RedisRegistry")
            .field("server", &info.addr)
            .field("db", &info.redis.db)
            .field("prefix", &self.inner.keys.prefix)
            .finish()
    }
}

struct Inner {
    client: redis::Client,
    keys: Keys,
    timeout: Duration,
    commands: Slot,
    blocking: Slot,
    changes: broadcast::Sender<Change>,
    listener: Mutex<Option<JoinHandle<()>>>,
    /// Agents whose pending requests this process has delivered (or found none of).
    pending_read: Mutex<HashSet<String>>,
    /// Agents whose stream has its consumer group.
    groups: Mutex<HashSet<String>>,
    list: Script,
    put_leased: Script,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(listener) = lock(&self.listener).take() {
            listener.abort();
        }
    }
}

/// One connection, made on first use; afterwards the manager reconnects by itself.
#[derive(Default)]
struct Slot {
    live: Mutex<Option<ConnectionManager>>,
    connecting: tokio::sync::Mutex<()>,
}

/// Key names under the prefix.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn service(&self, name: &str) -> String {
        format!("{}svc:{name}", self.prefix)
    }
    fn service_prefix(&self) -> String {
        format!("{}svc:", self.prefix)
    }
    fn services(&self) -> String {
        format!("{}svcs", self.prefix)
    }
    fn agent(&self, id: &str) -> String {
        format!("{}agent:{id}", self.prefix)
    }
    fn agent_prefix(&self) -> String {
        format!("{}agent:", self.prefix)
    }
    fn agents(&self) -> String {
        format!("{}agents", self.prefix)
    }
    fn instance(&self, service: &str, id: &str) -> String {
        format!("{}inst:{service}:{id}", self.prefix)
    }
    fn instance_prefix(&self, service: &str) -> String {
        format!("{}inst:{service}:", self.prefix)
    }
    fn instances(&self, service: &str) -> String {
        format!("{}insts:{service}", self.prefix)
    }
    fn stream(&self, agent: &str) -> String {
        format!("{}alloc:{agent}", self.prefix)
    }
    fn outcome(&self, request: &str) -> String {
        format!("{}alloc-outcome:{request}", self.prefix)
    }
    fn used(&self, service: &str, id: &str) -> String {
        format!("{}used:{service}:{id}", self.prefix)
    }
    fn channel(&self) -> String {
        format!("{}changes", self.prefix)
    }
}

impl RedisRegistry {
    /// Checks the URL; connects on first use (see [`RedisRegistry::ping`] to connect now).
    pub fn new(options: &RedisOptions) -> Result<RedisRegistry, Error> {
        let client = redis::Client::open(options.url.as_str()).map_err(|e| Error::Url {
            url: options.url.clone(),
            reason: e.to_string(),
        })?;
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let inner = Inner {
            client,
            keys: Keys {
                prefix: options.key_prefix.clone(),
            },
            timeout: options.timeout,
            commands: Slot::default(),
            blocking: Slot::default(),
            changes,
            listener: Mutex::new(None),
            pending_read: Mutex::default(),
            groups: Mutex::default(),
            list: Script::new(LIST_SCRIPT),
            put_leased: Script::new(PUT_LEASED_SCRIPT),
        };
        Ok(RedisRegistry {
            inner: Arc::new(inner),
        })
    }

    /// The prefix of every key.
    pub fn key_prefix(&self) -> &str {
        &self.inner.keys.prefix
    }

    /// Sends `PING`: succeeds when Redis answers within the timeout.
    pub async fn ping(&self) -> Result<(), Error> {
        self.query::<String>(&redis::cmd("PING")).await.map(drop)
    }

    /// Removes every key under this registry's prefix (tests that share one Redis).
    pub async fn clear(&self) -> Result<(), Error> {
        let pattern = format!("{}*", self.inner.keys.prefix);
        let keys: Vec<String> = self.query(redis::cmd("KEYS").arg(&pattern)).await?;
        if !keys.is_empty() {
            self.query::<()>(redis::cmd("DEL").arg(&keys)).await?;
        }
        Ok(())
    }

    /// Runs `cmd` on the command connection within the timeout.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Error> {
        self.bounded(self.inner.timeout, async {
            let mut connection = self.connection(&self.inner.commands).await?;
            cmd.query_async(&mut connection).await.map_err(classify)
        })
        .await
    }

    async fn pipeline<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, Error> {
        self.bounded(self.inner.timeout, async {
            let mut connection = self.connection(&self.inner.commands).await?;
            pipe.query_async(&mut connection).await.map_err(classify)
        })
        .await
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        self.bounded(self.inner.timeout, async {
            let mut connection = self.connection(&self.inner.commands).await?;
            invocation
                .invoke_async(&mut connection)
                .await
                .map_err(classify)
        })
        .await
    }

    async fn bounded<T>(
        &self,
        limit: Duration,
        call: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(limit, call).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::unavailable(
                BACKEND,
                format!("no answer within {limit:?}"),
            )),
        }
    }

    /// The slot's connection, connecting first if it has none yet.
    async fn connection(&self, slot: &Slot) -> Result<ConnectionManager, Error> {
        if let Some(live) = lock(&slot.live).clone() {
            return Ok(live);
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(live) = lock(&slot.live).clone() {
            return Ok(live);
        }
        // Blocking reads wait up to MAX_BLOCK for an answer; commands up to the timeout.
        let response = self.inner.timeout + MAX_BLOCK;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(self.inner.timeout)
            .set_response_timeout(response)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let fresh = ConnectionManager::new_with_config(self.inner.client.clone(), config)
            .await
            .map_err(classify)?;
        *lock(&slot.live) = Some(fresh.clone());
        Ok(fresh)
    }

    /// The values of `index`'s members (keys `prefix` + member), parsed.
    async fn list<T: DeserializeOwned>(&self, index: &str, prefix: &str) -> Result<Vec<T>, Error> {
        let mut invocation = self.inner.list.prepare_invoke();
        invocation.key(index).arg(prefix);
        let values: Vec<String> = self.script(invocation).await?;
        values.iter().map(|text| parse(index, text)).collect()
    }

    async fn put_leased(
        &self,
        key: &str,
        index: &str,
        member: &str,
        json: &str,
        lease: Duration,
        notice: &str,
    ) -> Result<(), Error> {
        let mut invocation = self.inner.put_leased.prepare_invoke();
        invocation
            .key(key)
            .key(index)
            .arg(json)
            .arg(lease.as_millis().max(1) as u64)
            .arg(member)
            .arg(self.inner.keys.channel())
            .arg(notice);
        self.script::<i64>(invocation).await.map(drop)
    }

    fn start_listener(&self) {
        let mut listener = lock(&self.inner.listener);
        if listener.is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let task = listen(
            self.inner.client.clone(),
            self.inner.keys.channel(),
            self.inner.changes.clone(),
            self.inner.timeout,
        );
        *listener = Some(runtime.spawn(task));
    }

    /// Creates `agent`'s stream and consumer group if missing (once per process, or again
    /// after Redis lost them).
    async fn ensure_group(&self, agent: &str) -> Result<(), Error> {
        if lock(&self.inner.groups).contains(agent) {
            return Ok(());
        }
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(self.inner.keys.stream(agent))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM");
        match self.query::<()>(&cmd).await {
            Ok(()) => {}
            Err(Error::Failed { reason, .. }) if reason.contains("BUSYGROUP") => {}
            Err(error) => return Err(error),
        }
        lock(&self.inner.groups).insert(agent.to_string());
        Ok(())
    }

    /// One entry of `agent`'s stream: a pending one (`0`) or a new one (`>`), blocking up to
    /// `block` for a new one.
    async fn read_stream(
        &self,
        agent: &str,
        from: &str,
        block: Option<Duration>,
    ) -> Result<Option<AllocationRequest>, Error> {
        let stream = self.inner.keys.stream(agent);
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(GROUP).arg(agent).arg("COUNT").arg(1);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(&stream).arg(from);
        let limit = self.inner.timeout + block.unwrap_or_default();
        loop {
            let reply: Option<StreamReadReply> = self
                .bounded(limit, async {
                    let mut connection = self.connection(&self.inner.blocking).await?;
                    cmd.query_async(&mut connection).await.map_err(classify)
                })
                .await
                .inspect_err(|error| {
                    if matches!(error, Error::Failed { reason, .. } if reason.contains("NOGROUP")) {
                        lock(&self.inner.groups).remove(agent);
                    }
                })?;
            let Some(entry) = reply
                .and_then(|r| r.keys.into_iter().next())
                .and_then(|k| k.ids.into_iter().next())
            else {
                return Ok(None);
            };
            match entry.get::<String>("request") {
                Some(text) => {
                    let mut request: AllocationRequest = parse(&stream, &text)?;
                    request.receipt = Some(entry.id);
                    return Ok(Some(request));
                }
                // Trimmed away while pending: nothing to answer; take the next one.
                None => self.acknowledge(agent, &entry.id).await?,
            }
        }
    }

    async fn acknowledge(&self, agent: &str, entry: &str) -> Result<(), Error> {
        let stream = self.inner.keys.stream(agent);
        let mut pipe = redis::pipe();
        pipe.cmd("XACK").arg(&stream).arg(GROUP).arg(entry).ignore();
        pipe.cmd("XDEL").arg(&stream).arg(entry).ignore();
        self.pipeline::<()>(&pipe).await
    }

    async fn outcome(&self, request_id: &str) -> Result<Option<AllocationOutcome>, Error> {
        let key = self.inner.keys.outcome(request_id);
        let text: Option<String> = self.query(redis::cmd("GET").arg(&key)).await?;
        text.map(|t| parse(&key, &t)).transpose()
    }
}

impl Registry for RedisRegistry {
    async fn put_service(&self, spec: &ServiceSpec) -> Result<(), Error> {
        let keys = &self.inner.keys;
        let json = serde_json::to_string(spec).expect("specs always serialize");
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set(keys.service(&spec.name), json)
            .ignore()
            .sadd(keys.services(), &spec.name)
            .ignore()
            .publish(keys.channel(), format!("service {}", spec.name))
            .ignore();
        self.pipeline::<()>(&pipe).await
    }

    async fn remove_service(&self, name: &str) -> Result<bool, Error> {
        let keys = &self.inner.keys;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(keys.service(name))
            .srem(keys.services(), name)
            .ignore()
            .publish(keys.channel(), format!("service {name}"))
            .ignore();
        let (deleted,): (i64,) = self.pipeline(&pipe).await?;
        Ok(deleted > 0)
    }

    async fn services(&self) -> Result<Vec<ServiceSpec>, Error> {
        let keys = &self.inner.keys;
        let mut specs: Vec<ServiceSpec> =
            self.list(&keys.services(), &keys.service_prefix()).await?;
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(specs)
    }

    async fn heartbeat_agent(&self, agent: &AgentInfo, lease: Duration) -> Result<(), Error> {
        let keys = &self.inner.keys;
        let json = serde_json::to_string(agent).expect("agents always serialize");
        let notice = format!("agent {}", agent.id);
        let key = keys.agent(&agent.id);
        self.put_leased(&key, &keys.agents(), &agent.id, &json, lease, &notice)
            .await
    }

    async fn remove_agent(&self, id: &str) -> Result<(), Error> {
        let keys = &self.inner.keys;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(keys.agent(id))
            .ignore()
            .srem(keys.agents(), id)
            .ignore()
            .publish(keys.channel(), format!("agent {id}"))
            .ignore();
        self.pipeline::<()>(&pipe).await
    }

    async fn agents(&self) -> Result<Vec<AgentInfo>, Error> {
        let keys = &self.inner.keys;
        self.list(&keys.agents(), &keys.agent_prefix()).await
    }

    async fn put_instance(&self, instance: &Instance, lease: Duration) -> Result<(), Error> {
        let keys = &self.inner.keys;
        let json = serde_json::to_string(instance).expect("instances always serialize");
        let key = keys.instance(&instance.service, &instance.id);
        let index = keys.instances(&instance.service);
        let notice = format!("instance {}", instance.service);
        self.put_leased(&key, &index, &instance.id, &json, lease, &notice)
            .await
    }

    async fn remove_instance(&self, service: &str, id: &str) -> Result<(), Error> {
        let keys = &self.inner.keys;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(keys.instance(service, id))
            .ignore()
            .del(keys.used(service, id))
            .ignore()
            .srem(keys.instances(service), id)
            .ignore()
            .publish(keys.channel(), format!("instance {service}"))
            .ignore();
        self.pipeline::<()>(&pipe).await
    }

    async fn instances(&self, service: Option<&str>) -> Result<Vec<Instance>, Error> {
        let keys = &self.inner.keys;
        let names: Vec<String> = match service {
            Some(name) => vec![name.to_string()],
            None => {
                self.query(redis::cmd("SMEMBERS").arg(keys.services()))
                    .await?
            }
        };
        let mut all = Vec::new();
        for name in names {
            let found: Vec<Instance> = self
                .list(&keys.instances(&name), &keys.instance_prefix(&name))
                .await?;
            all.extend(found);
        }
        Ok(all)
    }

    async fn request_allocation(
        &self,
        agent: &str,
        request: &AllocationRequest,
    ) -> Result<(), Error> {
        let json = serde_json::to_string(request).expect("requests always serialize");
        let mut cmd = redis::cmd("XADD");
        cmd.arg(self.inner.keys.stream(agent))
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_MAX_LEN)
            .arg("*")
            .arg("request")
            .arg(json);
        self.query::<String>(&cmd).await.map(drop)
    }

    async fn next_allocation(
        &self,
        agent: &str,
        wait: Duration,
    ) -> Result<Option<AllocationRequest>, Error> {
        self.ensure_group(agent).await?;
        if !lock(&self.inner.pending_read).contains(agent) {
            if let Some(request) = self.read_stream(agent, "0", None).await? {
                return Ok(Some(request));
            }
            lock(&self.inner.pending_read).insert(agent.to_string());
        }
        self.read_stream(agent, ">", Some(wait.min(MAX_BLOCK)))
            .await
    }

    async fn finish_allocation(
        &self,
        agent: &str,
        request: &AllocationRequest,
        outcome: &AllocationOutcome,
    ) -> Result<(), Error> {
        let keys = &self.inner.keys;
        let json = serde_json::to_string(outcome).expect("outcomes always serialize");
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(keys.outcome(&request.id))
            .arg(json)
            .arg("EX")
            .arg(OUTCOME_TTL.as_secs())
            .ignore();
        if let Some(entry) = &request.receipt {
            let stream = keys.stream(agent);
            pipe.cmd("XACK").arg(&stream).arg(GROUP).arg(entry).ignore();
            pipe.cmd("XDEL").arg(&stream).arg(entry).ignore();
        }
        pipe.publish(keys.channel(), format!("allocation {}", request.id))
            .ignore();
        self.pipeline::<()>(&pipe).await
    }

    async fn wait_allocation(
        &self,
        request_id: &str,
        timeout: Duration,
    ) -> Result<Option<AllocationOutcome>, Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.subscribe();
        loop {
            if let Some(outcome) = self.outcome(request_id).await? {
                return Ok(Some(outcome));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let pause = (deadline - now).min(OUTCOME_POLL);
            let until = now + pause;
            // Wake early for this request's notice (or any sign that notices were lost).
            loop {
                match tokio::time::timeout_at(until, changes.recv()).await {
                    Err(_) => break,
                    Ok(Ok(Change::Allocation(id))) if id == request_id => break,
                    Ok(Ok(Change::Resync)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => {}
                }
            }
        }
    }

    async fn mark_used(&self, service: &str, instance: &str, at: SystemTime) -> Result<(), Error> {
        let millis = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.inner.keys.used(service, instance))
            .arg(millis)
            .arg("PX")
            .arg(USED_TTL.as_millis() as u64);
        self.query::<()>(&cmd).await
    }

    async fn last_used(
        &self,
        service: &str,
        instances: &[String],
    ) -> Result<Vec<Option<SystemTime>>, Error> {
        if instances.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = instances
            .iter()
            .map(|id| self.inner.keys.used(service, id))
            .collect();
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&keys);
        let values: Vec<Option<u64>> = self.query(&cmd).await?;
        Ok(values
            .into_iter()
            .map(|ms| ms.map(|ms| UNIX_EPOCH + Duration::from_millis(ms)))
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        let receiver = self.inner.changes.subscribe();
        self.start_listener();
        receiver
    }
}

/// The listener task: subscribes, forwards notices, reconnects with backoff.
async fn listen(
    client: redis::Client,
    channel: String,
    changes: broadcast::Sender<Change>,
    timeout: Duration,
) {
    let mut backoff = Duration::from_millis(100);
    let mut connected_before = false;
    loop {
        match subscribe(&client, &channel, timeout).await {
            Ok(pubsub) => {
                if connected_before {
                    tracing::info!(%channel, "registry notices resumed");
                    let _ = changes.send(Change::Resync);
                }
                connected_before = true;
                backoff = Duration::from_millis(100);
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let text: String = message.get_payload().unwrap_or_default();
                    let _ = changes.send(parse_notice(&text));
                }
                tracing::warn!(%channel, "registry notices interrupted; reconnecting");
            }
            Err(error) => {
                tracing::debug!(%channel, %error, "subscribing to registry notices");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_LISTEN_BACKOFF);
    }
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
    timeout: Duration,
) -> Result<redis::aio::PubSub, Error> {
    let attempt = async {
        let mut pubsub = client.get_async_pubsub().await.map_err(classify)?;
        pubsub.subscribe(channel).await.map_err(classify)?;
        Ok(pubsub)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Error::unavailable(BACKEND, "subscribing timed out")),
    }
}

/// `service NAME` etc.; anything else means "re-read everything".
fn parse_notice(text: &str) -> Change {
    match text.split_once(' ') {
        Some(("service", name)) => Change::Service(name.to_string()),
        Some(("instance", service)) => Change::Instance(service.to_string()),
        Some(("agent", id)) => Change::Agent(id.to_string()),
        Some(("allocation", id)) => Change::Allocation(id.to_string()),
        _ => Change::Resync,
    }
}

fn parse<T: DeserializeOwned>(key: &str, text: &str) -> Result<T, Error> {
    serde_json::from_str(text)
        .map_err(|e| Error::failed(BACKEND, format!("{key} holds bad JSON: {e}")))
}

/// Connection trouble and "try again" answers are retryable; anything else is not.
fn classify(error: RedisError) -> Error {
    let transient = error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::BusyLoadingError
                | ErrorKind::TryAgain
                | ErrorKind::ClusterDown
                | ErrorKind::MasterDown
                | ErrorKind::ReadOnly
        );
    if transient {
        Error::unavailable(BACKEND, error)
    } else {
        Error::failed(BACKEND, error)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Critical sections only insert, remove or clone: a poisoned lock holds valid data.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_parse_and_unknown_ones_mean_resync() {
        assert_eq!(
            parse_notice("service hello"),
            Change::Service("hello".into())
        );
        assert_eq!(parse_notice("instance a-b"), Change::Instance("a-b".into()));
        assert_eq!(parse_notice("agent h1"), Change::Agent("h1".into()));
        assert_eq!(
            parse_notice("allocation 00ff"),
            Change::Allocation("00ff".into())
        );
        assert_eq!(parse_notice("what"), Change::Resync);
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        let keys = Keys {
            prefix: DEFAULT_KEY_PREFIX.into(),
        };
        assert_eq!(keys.service("hello"), "portico:svc:hello");
        assert_eq!(keys.services(), "portico:svcs");
        assert_eq!(keys.agent("h1"), "portico:agent:h1");
        assert_eq!(keys.instance("hello", "ab"), "portico:inst:hello:ab");
        assert_eq!(keys.instances("hello"), "portico:insts:hello");
        assert_eq!(keys.stream("h1"), "portico:alloc:h1");
        assert_eq!(keys.outcome("r1"), "portico:alloc-outcome:r1");
        assert_eq!(keys.used("hello", "ab"), "portico:used:hello:ab");
        assert_eq!(keys.channel(), "portico:changes");
    }
}
