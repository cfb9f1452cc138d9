//! One proxied request, from `/{service}/{rest}` to the instance's answer.
//!
//! 1. The first path segment names a catalog service (else 404); the request is rewritten
//!    for the instance (`/{rest}?{query}`, HTTP/1.1, headers as `crate::headers` says).
//! 2. An instance is picked (`crate::instances`); with none ready the request waits, up to
//!    `alloc_timeout`, for the one allocation the service's scale gate shares among every
//!    waiting request (`crate::scale`). A pick whose best estimate is over `soft_latency`
//!    starts an allocation too, and is served by what there is meanwhile.
//! 3. A pooled keep-alive connection of this worker is taken (`crate::pool`), or one is made.
//!    Body-less `GET` and `HEAD` (most traffic) go through the proxy's own HTTP/1.1 client
//!    (`crate::h1`), in this request's task; everything else through hyper's.
//! 4. The request is sent; its latency is measured from then to the response head, reported
//!    to the instance's balancer state, and the response streams back unchanged (hop-by-hop
//!    headers aside); the connection goes back to the pool when its body has ended.
//!
//! **Retries.** A failure to connect sent nothing: the request goes to another instance,
//! whatever its method, until every instance was tried. A pooled connection found closed
//! before the request went out sent nothing either: the same instance is tried again on a
//! new connection. (The proxy's own client finds a closed pooled connection only as the
//! request goes out: the write fails, or the answer ends before its first byte. `GET` and
//! `HEAD` are safe to send again then.) A failure after sending (reset, closed, broken
//! answer) is retried once on another instance for idempotent methods (GET, HEAD, OPTIONS,
//! PUT, DELETE), never for POST or PATCH, and only while the body sent is whole in the 64 KiB
//! retry buffer (`crate::body`). An instance that sends no head within `upstream_timeout`
//! is answered for with 504 at once: trying another would take the client past the
//! gateway's own `request_timeout`. A response is never retried, whatever its status.
//!
//! **Body over the limit.** A body whose declared length is over the gateway's limit is
//! refused (413) before the proxy sees it. A body of unknown length streams to the instance
//! until it passes the limit; then reading it fails, hyper aborts the request and closes the
//! connection to the instance without the body's final chunk, and the client gets 413 (from
//! the gateway's layer, or, when the instance had already answered, a response cut short).
//! So an instance may receive the beginning of such a body but never a complete request: an
//! HTTP server acts on a request once it has it whole, and this one is never whole.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use bytes::Bytes;
use http::uri::Authority;
use http::{HeaderValue, Method, Request, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use registry::{AllocReason, ServiceSpec};
use service::{BodyTooLarge, ClientFacts, ClientTls, RequestId, RouteLabel};
use tokio::time::Instant;

use crate::allocate::{self, AllocJob};
use crate::body::{OutBody, Tape, RETRY_BUFFER};
use crate::error::ProxyError;
use crate::h1;
use crate::headers;
use crate::instances::{now, Limits, Picked, ServiceState, Upstream};
use crate::metrics;
use crate::pool::{self, Sender};
use crate::route;
use crate::scale::Ask;
use crate::Shared;

/// Answers one request addressed to `/{service}/...`, from `client`; the route label is the
/// service's, unless it is not in the catalog.
pub(crate) async fn proxy(
    shared: Arc<Shared>,
    request: Request<Body>,
    client: ClientInfo,
) -> (Response, Option<RouteLabel>) {
    let started = Instant::now();
    let (mut head, body) = request.into_parts();
    let (spec, path) = match route::target(&head.uri) {
        Some(target) => match shared.view.service(target.service) {
            Some(spec) => (spec, target.path),
            None => return (unknown(target.service), None),
        },
        None => return (unknown(""), None),
    };
    let service = shared.service(&spec);
    let asks_upgrade = head.version == Version::HTTP_11 && headers::is_upgrade(&head.headers);
    // hyper hands over the connection of an HTTP/1.1 upgrade request through this.
    let client_upgrade = asks_upgrade
        .then(|| head.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    let mut exchange = if h1::serves(&head.method, body.is_end_stream(), asks_upgrade) {
        // The proxy's own client (`crate::h1`): the head is encoded as the instance gets it.
        let encoded = h1::encode_request(
            &head.method,
            path.as_str(),
            &head.headers,
            &client.with_authority(head.uri.authority()),
        );
        let mut exchange = Exchange::new(&shared, &service, spec, head, Body::empty(), started);
        exchange.encoded = Some(encoded);
        exchange
    } else {
        rewrite_head(&mut head, path, &client, client_upgrade.is_some());
        Exchange::new(&shared, &service, spec, head, body, started)
    };
    exchange.client_upgrade = client_upgrade;
    let response = match exchange.run().await {
        Ok(response) => response,
        Err(error) => answer_error(&service, &error),
    };
    (response, Some(RouteLabel(service.label.clone())))
}

fn unknown(name: &str) -> Response {
    ::metrics::counter!(metrics::UNKNOWN_SERVICE).increment(1);
    let name: String = name.chars().take(100).collect();
    ProxyError::UnknownService { name }.response()
}

/// Counts and logs the proxy's own answer, and makes it.
fn answer_error(service: &ServiceState, error: &ProxyError) -> Response {
    let kind = error.kind();
    ::metrics::counter!(metrics::ERRORS, "service" => service.name.to_string(), "kind" => kind)
        .increment(1);
    match error {
        ProxyError::BodyTooLarge { .. } | ProxyError::ClientBody { .. } => {
            tracing::debug!(service = %service.name, %error, "request not proxied")
        }
        _ => tracing::warn!(service = %service.name, %error, "request not proxied"),
    }
    error.response()
}

/// The request head as the instance gets it: origin-form target, HTTP/1.1, headers
/// rewritten.
fn rewrite_head(
    head: &mut http::request::Parts,
    path: http::uri::PathAndQuery,
    client: &ClientInfo,
    upgrade: bool,
) {
    let client = client.with_authority(head.uri.authority());
    headers::request_headers(&mut head.headers, &client, upgrade);
    head.uri = Uri::from(path);
    head.version = Version::HTTP_11;
}

/// What the gateway knows of the client, for the forwarding headers: handed to a direct call
/// (`service::ClientFacts`), or read from the request's extensions on the router's path.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientInfo {
    ip: Option<IpAddr>,
    tls: bool,
    request_id: Option<HeaderValue>,
}

impl ClientInfo {
    pub fn from_facts(facts: ClientFacts) -> Self {
        ClientInfo {
            ip: Some(facts.peer.ip()),
            tls: facts.tls,
            request_id: Some(facts.request_id),
        }
    }

    pub fn from_extensions(extensions: &http::Extensions) -> Self {
        ClientInfo {
            ip: extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip()),
            tls: extensions.get::<ClientTls>().is_some_and(|tls| tls.0),
            request_id: extensions.get::<RequestId>().map(|id| id.0.clone()),
        }
    }

    /// With the request URI's authority (used when there is no `Host`).
    fn with_authority<'a>(&'a self, authority: Option<&'a Authority>) -> headers::Client<'a> {
        headers::Client {
            ip: self.ip,
            tls: self.tls,
            request_id: self.request_id.as_ref(),
            authority,
        }
    }
}

/// What is sent as the request body on each attempt (see `crate::body`).
enum Plan {
    Empty,
    /// Sent once (it goes back here if an attempt gives it back unsent).
    Once(Option<Body>),
    Tape(Tape),
}

impl Plan {
    fn new(body: Body, idempotent: bool) -> Plan {
        if http_body::Body::is_end_stream(&body) {
            return Plan::Empty;
        }
        let declared = http_body::Body::size_hint(&body).exact();
        if idempotent && declared.is_none_or(|n| n <= RETRY_BUFFER as u64) {
            Plan::Tape(Tape::new(body))
        } else {
            Plan::Once(Some(body))
        }
    }

    /// The body for the next attempt; `None` when it cannot be sent (again).
    fn body(&mut self) -> Option<OutBody> {
        match self {
            Plan::Empty => Some(OutBody::Empty),
            Plan::Once(body) => body.take().map(OutBody::Stream),
            Plan::Tape(tape) => tape.reader().map(OutBody::Replay),
        }
    }

    /// An attempt gave its body back unsent.
    fn give_back(&mut self, body: OutBody) {
        if let (Plan::Once(slot), OutBody::Stream(body)) = (self, body) {
            *slot = Some(body);
        }
    }

    /// Whether the body could be sent again whole after being sent.
    fn replayable(&self) -> bool {
        match self {
            Plan::Empty => true,
            Plan::Once(_) => false,
            Plan::Tape(tape) => tape.reader().is_some(),
        }
    }
}

/// How one attempt on one instance ended, when it did not produce the response.
pub(crate) enum Failed {
    /// Try another instance (nothing was sent, or a retry after sending is allowed).
    Retry(ProxyError),
    /// Answer with this.
    Final(ProxyError),
}

/// One proxied request through its attempts.
pub(crate) struct Exchange<'a> {
    shared: &'a Shared,
    service: &'a Arc<ServiceState>,
    spec: Arc<ServiceSpec>,
    /// The request head for the instance; taken by an attempt that cannot be retried.
    head: Option<http::request::Parts>,
    /// The request as the proxy's own client sends it (`crate::h1`), when it is the one.
    encoded: Option<Bytes>,
    plan: Plan,
    idempotent: bool,
    /// The client's side of a WebSocket handshake: the connection hyper hands over once the
    /// instance's `101` is written.
    pub(crate) client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// When waiting for an instance gives up.
    deadline: Instant,
    /// Instances this request failed on.
    tried: Vec<Arc<Upstream>>,
    /// Instances not tried yet besides the one of the current attempt.
    alternatives: usize,
    retried_after_send: bool,
}

impl<'a> Exchange<'a> {
    fn new(
        shared: &'a Shared,
        service: &'a Arc<ServiceState>,
        spec: Arc<ServiceSpec>,
        head: http::request::Parts,
        body: Body,
        started: Instant,
    ) -> Self {
        let idempotent = is_idempotent(&head.method);
        let plan = Plan::new(body, idempotent);
        Exchange {
            shared,
            service,
            spec,
            head: Some(head),
            encoded: None,
            plan,
            idempotent,
            client_upgrade: None,
            deadline: started + shared.settings.alloc_timeout,
            tried: Vec::new(),
            alternatives: 0,
            retried_after_send: false,
        }
    }

    async fn run(mut self) -> Result<Response, ProxyError> {
        let mut last_error = None;
        loop {
            let Some(picked) = self.pick(last_error.is_none()).await? else {
                return Err(last_error.expect("only a retry finds every instance tried"));
            };
            let result = if let Some(encoded) = self.encoded.clone() {
                self.attempt_h1(picked, &encoded).await
            } else if self.client_upgrade.is_some() {
                crate::upgrade::attempt(&mut self, picked).await
            } else {
                self.attempt(picked).await
            };
            match result {
                Ok(response) => return Ok(response),
                Err(Failed::Final(error)) => return Err(error),
                Err(Failed::Retry(error)) => last_error = Some(error),
            }
        }
    }

    /// An instance for the next attempt: `None` when every instance was tried. The first
    /// attempt waits for one when there is none (cold start) and applies the soft limit.
    async fn pick(&mut self, first: bool) -> Result<Option<Picked>, ProxyError> {
        let mut waited = false;
        loop {
            // The catalog entry read for this request, unless time passed since.
            let spec = match first && !waited {
                true => self.spec.clone(),
                false => self.current_spec()?,
            };
            let limits = self.shared.limits(&spec);
            let found = {
                let members = self.shared.members(self.service, &spec, limits);
                members.pick(&self.tried, now())
            };
            if let Some(pick) = found {
                if first && !limits_met(pick.best, limits) {
                    self.ask_for_more(&spec, limits, pick.best, AllocReason::SoftLimit);
                }
                self.alternatives = pick.alternatives;
                return Ok(Some(pick.picked));
            }
            if !first {
                return Ok(None);
            }
            // Boxed: cold starts are rare, their state need not weigh on every request.
            Box::pin(self.wait_for_instance(&spec, limits)).await?;
            waited = true;
        }
    }

    /// The service's catalog entry now (it may have changed or gone while this waited).
    fn current_spec(&mut self) -> Result<Arc<ServiceSpec>, ProxyError> {
        if let Some(spec) = self.shared.view.service(&self.spec.name) {
            self.spec = spec;
            return Ok(self.spec.clone());
        }
        Err(ProxyError::UnknownService {
            name: self.spec.name.clone(),
        })
    }

    /// Asks the scale gate for one more instance; starts the allocation if it says so.
    fn ask_for_more(
        &self,
        spec: &Arc<ServiceSpec>,
        limits: Limits,
        best: Option<Duration>,
        reason: AllocReason,
    ) -> Ask {
        let instances = self.shared.view.all_instances(&spec.name).len();
        let policy = self.shared.scale_policy(spec, limits);
        let ask = self.service.scale.ask(policy, best, instances, now());
        if ask == Ask::Start {
            let job = AllocJob {
                service: self.service.clone(),
                spec: spec.clone(),
                reason,
            };
            allocate::start(self.shared, job);
        }
        ask
    }

    /// No instance is ready: waits until the view changes or the allocation in flight
    /// completes; fails at the deadline, or at once when starting one just failed. (`&mut`:
    /// the exchange holds the client's body, which is `Send` but not `Sync`.)
    async fn wait_for_instance(
        &mut self,
        spec: &Arc<ServiceSpec>,
        limits: Limits,
    ) -> Result<(), ProxyError> {
        let mut outcomes = self.service.scale.subscribe();
        let mut changes = self.shared.view.changed();
        let no_instance = |reason: String, retry_after: Duration| ProxyError::NoInstance {
            service: spec.name.clone(),
            reason,
            retry_after,
        };
        let waiting_for = match self.ask_for_more(spec, limits, None, AllocReason::Cold) {
            Ask::CoolingDown {
                left,
                failure: Some(failure),
            } => return Err(no_instance(failure.to_string(), left)),
            Ask::AtMax => format!("max = {} instances, none ready", spec.max),
            _ => "starting one".to_string(),
        };
        tokio::select! {
            changed = outcomes.changed() => {
                let failure = changed.ok().and_then(|()| outcomes.borrow().failure.clone());
                if let Some(failure) = failure {
                    let retry_after = self.shared.settings.alloc_cooldown;
                    return Err(no_instance(failure.to_string(), retry_after));
                }
            }
            _ = changes.changed() => {}
            () = tokio::time::sleep_until(self.deadline) => {
                let waited = humantime::format_duration(self.shared.settings.alloc_timeout);
                let reason = format!("none became ready within {waited} ({waiting_for})");
                return Err(no_instance(reason, Duration::from_secs(1)));
            }
        }
        Ok(())
    }

    /// One attempt on `picked`'s instance over a pooled or new connection.
    async fn attempt(&mut self, mut picked: Picked) -> Result<Response, Failed> {
        let addr = picked.upstream.addr();
        let settings = &self.shared.settings;
        let pooled = pool::ready(addr, settings.pool_idle_timeout);
        let (mut sender, mut reused) = match pooled {
            Some(sender) => (sender, true),
            // Boxed: the rare path keeps its (large) state out of every request's future.
            None => {
                let (idle, connect) = (settings.pool_idle_timeout, settings.connect_timeout);
                match Box::pin(pool::checkout(addr, idle, connect)).await {
                    Ok(connection) => connection,
                    Err(error) => return Err(self.connect_failed(picked, error.to_string())),
                }
            }
        };
        loop {
            let Some(request) = self.request() else {
                picked.abandon();
                return Err(Failed::Final(self.body_gone()));
            };
            let sent_at = Instant::now();
            let sending = sender.try_send_request(request);
            let deadline = sent_at + settings.upstream_timeout;
            let error = match tokio::time::timeout_at(deadline, sending).await {
                Ok(Ok(response)) => {
                    self.answered(&mut picked, sent_at);
                    let lease = Lease { addr, sender };
                    return Ok(respond(response, Some(lease), &picked.upstream, settings));
                }
                Ok(Err(error)) => error,
                Err(_) => {
                    picked.failed();
                    return Err(Failed::Final(self.timed_out(addr)));
                }
            };
            let mut error = error;
            let Some(unsent) = error.take_message() else {
                return Err(self.failed_after_sending(picked, error.into_error()));
            };
            // Nothing went out: the connection was closed under the request.
            self.take_back(unsent);
            if !reused {
                return Err(self.connect_failed(picked, error.into_error().to_string()));
            }
            self.count_retry("stale_connection");
            match Box::pin(pool::connect(addr, settings.connect_timeout, false)).await {
                Ok(fresh) => (sender, reused) = (fresh, false),
                Err(error) => return Err(self.connect_failed(picked, error.to_string())),
            }
        }
    }

    /// The instance's answer head arrived: its latency goes to the balancer, its use to the
    /// agents' idle stop.
    fn answered(&self, picked: &mut Picked, sent_at: Instant) {
        let answered = Instant::now();
        picked.succeeded(answered - sent_at, answered.into_std());
        self.shared
            .report_usage(&picked.upstream, answered.into_std());
    }

    fn count_retry(&self, reason: &'static str) {
        ::metrics::counter!(metrics::RETRIES, "service" => self.service.name.to_string(), "reason" => reason)
            .increment(1);
    }

    /// One attempt on `picked`'s instance through the proxy's own client (`crate::h1`).
    async fn attempt_h1(&mut self, mut picked: Picked, request: &[u8]) -> Result<Response, Failed> {
        let addr = picked.upstream.addr();
        let settings = &self.shared.settings;
        let to_head = self.head.as_ref().is_some_and(|h| h.method == Method::HEAD);
        let (mut conn, mut reused) = match pool::take_conn(addr, settings.pool_idle_timeout) {
            Some(conn) => (conn, true),
            None => match Box::pin(h1::Conn::connect(addr, settings.connect_timeout)).await {
                Ok(conn) => (conn, false),
                Err(error) => return Err(self.connect_failed(picked, error.to_string())),
            },
        };
        loop {
            let sent_at = Instant::now();
            let exchange = conn.exchange(request, to_head, reused);
            let deadline = sent_at + settings.upstream_timeout;
            let failure = match tokio::time::timeout_at(deadline, exchange).await {
                Ok(Ok(head)) => {
                    self.answered(&mut picked, sent_at);
                    return Ok(respond_h1(conn, head, addr, &picked.upstream, settings));
                }
                Ok(Err(failure)) => failure,
                Err(_) => {
                    picked.failed();
                    return Err(Failed::Final(self.timed_out(addr)));
                }
            };
            match failure {
                h1::Failure::Stale => {
                    self.count_retry("stale_connection");
                    match Box::pin(h1::Conn::connect(addr, settings.connect_timeout)).await {
                        Ok(fresh) => (conn, reused) = (fresh, false),
                        Err(error) => return Err(self.connect_failed(picked, error.to_string())),
                    }
                }
                h1::Failure::Send(error) => {
                    let error = format!("sending the request to {addr}: {error}");
                    return Err(self.connect_failed(picked, error));
                }
                h1::Failure::Broken(error) => return Err(self.broke_after_sending(picked, error)),
            }
        }
    }

    /// The request for the next attempt: the head (a copy while a retry after sending is
    /// still possible) and the body; `None` when the body cannot be sent again.
    fn request(&mut self) -> Option<Request<OutBody>> {
        let body = self.plan.body()?;
        let head = if self.may_retry_after_sending() {
            clone_head(self.head.as_ref()?)
        } else {
            self.head.take()?
        };
        Some(Request::from_parts(head, body))
    }

    /// An attempt gave its request back unsent.
    pub(crate) fn take_back(&mut self, request: Request<OutBody>) {
        let (head, body) = request.into_parts();
        self.head.get_or_insert(head);
        self.plan.give_back(body);
    }

    /// Whether a failure after sending could still be retried: then each attempt keeps a
    /// copy of the request head (with a single instance there is nowhere to retry, and no
    /// copy is made).
    fn may_retry_after_sending(&self) -> bool {
        self.idempotent
            && !self.retried_after_send
            && self.alternatives > 0
            && self.plan.replayable()
    }

    /// The connection to `picked`'s instance failed: counts against it, retry elsewhere.
    pub(crate) fn connect_failed(&mut self, mut picked: Picked, error: String) -> Failed {
        picked.failed();
        self.tried.push(picked.upstream.clone());
        ::metrics::counter!(metrics::RETRIES, "service" => self.service.name.to_string(), "reason" => "connect").increment(1);
        Failed::Retry(ProxyError::Connect {
            service: self.spec.name.clone(),
            error,
        })
    }

    /// The exchange broke after the request (or part of it) went out.
    pub(crate) fn failed_after_sending(
        &mut self,
        mut picked: Picked,
        error: hyper::Error,
    ) -> Failed {
        let service = self.spec.name.clone();
        if let Some(too_large) = BodyTooLarge::find_in(&error) {
            picked.abandon();
            return Failed::Final(ProxyError::BodyTooLarge {
                limit: too_large.limit,
            });
        }
        if error.is_user() {
            // Reading the client's body failed: the client's doing, not the instance's.
            picked.abandon();
            let error = describe(&error);
            return Failed::Final(ProxyError::ClientBody { service, error });
        }
        self.broke_after_sending(picked, describe(&error))
    }

    /// The instance broke the exchange after the request went out: counts against it; a
    /// retry elsewhere when the rules allow one.
    fn broke_after_sending(&mut self, mut picked: Picked, error: String) -> Failed {
        let service = self.spec.name.clone();
        picked.failed();
        let addr = picked.upstream.addr();
        self.tried.push(picked.upstream.clone());
        let failure = ProxyError::Upstream {
            service,
            addr,
            error,
        };
        if !self.may_retry_after_sending() {
            return Failed::Final(failure);
        }
        self.retried_after_send = true;
        ::metrics::counter!(metrics::RETRIES, "service" => self.service.name.to_string(), "reason" => "after_send").increment(1);
        Failed::Retry(failure)
    }

    pub(crate) fn timed_out(&self, addr: SocketAddr) -> ProxyError {
        ProxyError::Timeout {
            service: self.spec.name.clone(),
            addr,
            after: self.shared.settings.upstream_timeout,
        }
    }

    /// The body was streamed once and cannot be sent to another instance.
    fn body_gone(&self) -> ProxyError {
        ProxyError::Upstream {
            service: self.spec.name.clone(),
            addr: self
                .tried
                .last()
                .map_or(([0, 0, 0, 0], 0).into(), |u| u.addr()),
            error: "the request body was already sent and cannot be sent again".into(),
        }
    }

    pub(crate) fn shared(&self) -> &'a Shared {
        self.shared
    }

    pub(crate) fn service_name(&self) -> &str {
        &self.spec.name
    }

    /// The head for an upgrade attempt (upgrades are never retried after sending).
    pub(crate) fn take_head(&mut self) -> Option<http::request::Parts> {
        self.head.take()
    }
}

/// Whether the best estimate in rotation (`None`: none in rotation) is within the soft limit.
fn limits_met(best: Option<Duration>, limits: Limits) -> bool {
    best.is_some_and(|best| best <= limits.soft)
}

/// GET, HEAD, OPTIONS, PUT, DELETE (the manager's list).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

fn clone_head(head: &http::request::Parts) -> http::request::Parts {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = head.method.clone();
    parts.uri = head.uri.clone();
    parts.version = head.version;
    parts.headers = head.headers.clone();
    parts
}

/// An error and its causes, joined: hyper's own message says what broke, its source why
/// (`connection reset by peer`).
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let more = inner.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = inner.source();
    }
    text
}

/// A connection to give back to this worker's pool once the response body has ended.
pub(crate) struct Lease {
    pub addr: SocketAddr,
    pub sender: Sender,
}

/// The instance's response as the client gets it.
pub(crate) fn respond(
    response: hyper::Response<Incoming>,
    lease: Option<Lease>,
    upstream: &Arc<Upstream>,
    settings: &crate::Settings,
) -> Response {
    let (mut parts, body) = response.into_parts();
    let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    headers::response_headers(&mut parts.headers, switching);
    let body = if http_body::Body::is_end_stream(&body) {
        if let Some(lease) = lease {
            let (max, idle) = (settings.max_idle_per_instance, settings.pool_idle_timeout);
            pool::give_back(lease.addr, lease.sender, max, idle);
        }
        Body::empty()
    } else {
        Body::new(ResponseBody {
            inner: body,
            lease,
            max_idle: settings.max_idle_per_instance,
            idle_timeout: settings.pool_idle_timeout,
            upstream: upstream.clone(),
            ended: false,
        })
    };
    Response::from_parts(parts, body)
}

/// The answer read by the proxy's own client, as the client gets it; its body reads the
/// connection, which goes back to the pool at the body's end.
fn respond_h1(
    conn: h1::Conn,
    head: h1::Head,
    addr: SocketAddr,
    upstream: &Arc<Upstream>,
    settings: &crate::Settings,
) -> Response {
    let lease = h1::Lease {
        addr,
        max_idle: settings.max_idle_per_instance,
        idle_timeout: settings.pool_idle_timeout,
    };
    let mut body = h1::ResponseBody::new(conn, &head, lease, upstream.clone());
    let body = match http_body::Body::is_end_stream(&body) {
        true => {
            body.finish();
            Body::empty()
        }
        false => Body::new(body),
    };
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    response
}

/// An instance's response body on its way to the client: gives the connection back to the
/// pool when it has ended, and counts a failure mid-body against the instance.
struct ResponseBody {
    inner: Incoming,
    lease: Option<Lease>,
    max_idle: usize,
    idle_timeout: Duration,
    upstream: Arc<Upstream>,
    ended: bool,
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &polled {
            None => self.ended = true,
            Some(Err(error)) => {
                self.lease = None;
                tracing::debug!(instance = %self.upstream.addr(), %error, "response body broke");
                self.upstream.failed(now());
            }
            Some(Ok(_)) => {}
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if !(self.ended || self.inner.is_end_stream()) {
            return; // cut short: hyper closes that connection
        }
        if let Some(lease) = self.lease.take() {
            pool::give_back(lease.addr, lease.sender, self.max_idle, self.idle_timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_manager_s_methods_are_retried_after_sending() {
        for method in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"] {
            assert!(is_idempotent(&method.parse().unwrap()), "{method}");
        }
        for method in ["POST", "PATCH", "CONNECT", "TRACE"] {
            assert!(!is_idempotent(&method.parse().unwrap()), "{method}");
        }
    }

    #[test]
    fn large_declared_bodies_and_non_idempotent_ones_are_not_taped() {
        let small = Plan::new(Body::from(vec![0u8; 100]), true);
        assert!(matches!(small, Plan::Tape(_)));
        let large = Plan::new(Body::from(vec![0u8; RETRY_BUFFER + 1]), true);
        assert!(matches!(large, Plan::Once(_)));
        assert!(!large.replayable());
        let post = Plan::new(Body::from("x"), false);
        assert!(matches!(post, Plan::Once(_)));
        assert!(matches!(Plan::new(Body::empty(), false), Plan::Empty));
    }

    #[test]
    fn the_soft_limit_is_met_only_by_an_estimate_within_it() {
        let limits = Limits {
            soft: Duration::from_millis(100),
            hard: Duration::from_secs(1),
        };
        assert!(limits_met(Some(Duration::from_millis(100)), limits));
        assert!(!limits_met(Some(Duration::from_millis(101)), limits));
        assert!(!limits_met(None, limits), "every instance ejected");
    }
}
