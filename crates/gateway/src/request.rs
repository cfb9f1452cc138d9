//! The per-connection request layer: the service hyper calls for every request of a
//! connection. The gateway's steps (request id, body-size limit, request timeout, metrics,
//! access log, the watchdog's request marks), then the answer.
//!
//! It is written by hand rather than as tower layers around the router: every `from_fn`
//! layer boxes a future and clones the inner service per request, and the request timeout
//! armed a timer per request. Here a request costs one small future; the timeout timer is
//! only made when a service does not answer at once; `/healthz` (`GET`/`HEAD`) and a body
//! whose declared length is over the limit (413) are answered without the router;
//! everything else goes to the listener's axum router with `ConnectInfo`, `RequestId` and
//! `ClientTls` attached, its body counted against the limit when its length was not declared
//! (`body_limit`). A listener whose one service has a direct handler
//! (`service::Service::with_direct`: the proxy) calls it instead of the router for paths with
//! a first segment but `/healthz`, with those facts as an argument (`service::ClientFacts`).
//!
//! A request's clock starts when the first bytes of its head arrived, when the connection's
//! stream saw them (HTTP/1; nginx's `$request_time` counts the same way), else when hyper
//! hands it over: the request timeout, the logged duration and the metrics count from there.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::Response;
use axum::routing::future::RouteFuture;
use bytes::Bytes;
use http_body::Body as _;
use hyper::body::Incoming;
use service::{ClientFacts, ClientTls, DirectFuture, RouteLabel};
use tokio::time::{Instant, Sleep};
use tower::Service as _;

use crate::access_log::{AccessRecord, GatewayBody, Payload};
use crate::app::error_response;
use crate::body_limit::{LimitWatch, RequestBody};
use crate::logging;
use crate::middleware::{
    duration_text, over_body_limit, request_id, RequestId, ServiceTag, REQUEST_ID,
};
use crate::request_metrics;
use crate::watchdog::{Activity, InProgress};

/// What the gateway enforces on every request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

/// Everything a listener answers with, shared by its connections on every worker.
pub(crate) struct ListenerApp {
    /// The mounted services, `/healthz` for other methods, and the 404 fallback.
    pub router: axum::Router,
    /// The body of `/healthz` (which names the mounted services).
    pub healthz: Bytes,
    /// The one mounted service's handler of paths with a first segment, called without the
    /// router (`service::Service::with_direct`).
    pub direct: Option<DirectService>,
    pub limits: Limits,
    /// The service name of the gateway's own answers.
    pub gateway: ServiceTag,
}

/// A service answering outside the router, and the name its answers count as.
pub(crate) struct DirectService {
    pub handler: service::Direct,
    pub tag: ServiceTag,
}

impl ListenerApp {
    /// The direct handler for a request for `path`: paths with a first segment, but the
    /// gateway's `/healthz` (its other methods get the router's 405).
    fn direct_for(&self, path: &str) -> Option<&DirectService> {
        let direct = self.direct.as_ref()?;
        let first = path.strip_prefix('/')?;
        let named = !first.is_empty() && !first.starts_with('/') && path != "/healthz";
        named.then_some(direct)
    }
}

/// The service of one connection.
#[derive(Clone)]
pub(crate) struct ConnectionService {
    app: Arc<ListenerApp>,
    peer: SocketAddr,
    tls: ClientTls,
    activity: Arc<Activity>,
}

impl ConnectionService {
    /// Marks each request as in progress on `activity` (for the connection's watchdog) until
    /// its response body is dropped.
    pub(crate) fn new(
        app: Arc<ListenerApp>,
        peer: SocketAddr,
        tls: bool,
        activity: Arc<Activity>,
    ) -> Self {
        ConnectionService {
            app,
            peer,
            tls: ClientTls(tls),
            activity,
        }
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// The answer, and what tells when a counted body passed the body limit.
    fn answer(&self, request: Request<Incoming>, id: &HeaderValue) -> (Answer, Option<LimitWatch>) {
        let limit = self.app.limits.max_body_bytes;
        let declared = request.body().size_hint().exact();
        if let Some(refusal) = over_body_limit(declared, limit) {
            return (Answer::ready(refusal.map(Payload::Service), None), None);
        }
        if is_healthz(&request) {
            let response = healthz_response(self.app.healthz.clone());
            return (
                Answer::ready(response, Some(self.app.gateway.clone())),
                None,
            );
        }
        let mut limit_watch = None;
        let mut request = request.map(|body| {
            let (body, watch) = RequestBody::new(body, declared, limit as u64);
            limit_watch = watch;
            body
        });
        let answer = match self.app.direct_for(request.uri().path()) {
            Some(direct) => {
                let facts = ClientFacts {
                    peer: self.peer,
                    tls: self.tls.0,
                    request_id: id.clone(),
                };
                let future = (direct.handler)(request.map(axum::body::Body::new), facts);
                Answer::Direct(future, direct.tag.clone())
            }
            None => {
                let extensions = request.extensions_mut();
                extensions.insert(ConnectInfo(self.peer));
                extensions.insert(RequestId(id.clone()));
                extensions.insert(self.tls);
                Answer::Routed(Box::pin(self.app.router.clone().call(request)))
            }
        };
        (answer, limit_watch)
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = GatewayFuture;

    fn call(&self, request: Request<Incoming>) -> GatewayFuture {
        let start = self.activity.take_head_start().unwrap_or_else(Instant::now);
        let in_progress = InProgress::begin(&self.activity);
        let id = request_id(request.headers());
        let record = logging::access_log_enabled()
            .then(|| AccessRecord::new(self.peer, &request, &id, start.into_std()));
        let (answer, body_limit) = self.answer(request, &id);
        GatewayFuture {
            answer,
            timer: None,
            body_limit,
            request: Some(InFlight {
                start,
                id,
                record,
                in_progress,
                timeout: self.app.limits.request_timeout,
            }),
        }
    }
}

fn is_healthz(request: &Request<Incoming>) -> bool {
    request.uri().path() == "/healthz"
        && (request.method() == Method::GET || request.method() == Method::HEAD)
}

enum Answer {
    /// Made by the gateway itself, with the service it counts as.
    Ready(Option<Served>),
    /// Boxed: an axum route future holds the whole request, and hyper moves this future
    /// around; kept small, the gateway's own answers copy less.
    Routed(Pin<Box<RouteFuture<Infallible>>>),
    /// A service's direct handler (`ListenerApp::direct`), with the service it counts as.
    Direct(DirectFuture, ServiceTag),
}

impl Answer {
    fn ready(response: Response<Payload>, service: Option<ServiceTag>) -> Self {
        Answer::Ready(Some(Served::new(response, service)))
    }
}

/// A response, the service it counts as and the route label it gave.
struct Served {
    response: Response<Payload>,
    service: Option<ServiceTag>,
    route: Option<RouteLabel>,
}

impl Served {
    fn new(response: Response<Payload>, service: Option<ServiceTag>) -> Self {
        Served {
            response,
            service,
            route: None,
        }
    }
}

/// `/healthz`: its JSON, without a boxed body.
fn healthz_response(body: Bytes) -> Response<Payload> {
    let mut response = Response::new(Payload::Fixed(Some(body)));
    // Room for this and the request id: no growing on insert.
    *response.headers_mut() = HeaderMap::with_capacity(2);
    let json = HeaderValue::from_static("application/json");
    response.headers_mut().insert(header::CONTENT_TYPE, json);
    response
}

/// What the layer keeps about a request until its response head is ready.
struct InFlight {
    start: Instant,
    id: HeaderValue,
    record: Option<AccessRecord>,
    in_progress: InProgress,
    timeout: Duration,
}

/// The response future of one request.
pub(crate) struct GatewayFuture {
    answer: Answer,
    /// The request timeout, armed when the service first answers `Pending`.
    timer: Option<Pin<Box<Sleep>>>,
    /// Set when the request body is counted against the body limit.
    body_limit: Option<LimitWatch>,
    request: Option<InFlight>,
}

impl Future for GatewayFuture {
    type Output = Result<Response<GatewayBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let polled = match &mut this.answer {
            Answer::Ready(ready) => Poll::Ready(ready.take().unwrap_or_else(polled_again)),
            Answer::Routed(future) => future.as_mut().poll(cx).map(|routed| {
                let mut response = routed.unwrap_or_else(|never| match never {});
                let service = response.extensions().get::<ServiceTag>().cloned();
                let route = response.extensions_mut().remove::<RouteLabel>();
                answered(this.body_limit.as_ref(), response, service, route)
            }),
            Answer::Direct(future, tag) => future.as_mut().poll(cx).map(|(response, route)| {
                answered(this.body_limit.as_ref(), response, Some(tag.clone()), route)
            }),
        };
        let served = match polled {
            Poll::Ready(served) => served,
            Poll::Pending => match this.timed_out(cx) {
                Some(response) => Served::new(response.map(Payload::Service), None),
                None => return Poll::Pending,
            },
        };
        Poll::Ready(Ok(this.finish(served)))
    }
}

impl GatewayFuture {
    /// The 504 once the request timeout has passed; arms the timer on first use.
    fn timed_out(&mut self, cx: &mut Context<'_>) -> Option<Response> {
        let request = self.request.as_ref()?;
        let timeout = request.timeout;
        let deadline = request.start + timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        timer.as_mut().poll(cx).is_ready().then(|| {
            error_response(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "the service did not answer within {}",
                    duration_text(timeout)
                ),
            )
        })
    }

    /// Request id header, metrics, and the body that writes the access-log line when it ends.
    fn finish(&mut self, served: Served) -> Response<GatewayBody> {
        let Served {
            mut response,
            service,
            route,
        } = served;
        let Some(request) = self.request.take() else {
            return response.map(|body| GatewayBody::new(body, None, None));
        };
        let status = response.status();
        if status == StatusCode::SWITCHING_PROTOCOLS {
            request.in_progress.upgrading();
        }
        response.headers_mut().insert(REQUEST_ID, request.id);
        let elapsed = request.start.elapsed();
        let route = route.as_ref().map(|r| &r.0);
        request_metrics::record(service.as_ref(), route, status.as_u16(), elapsed);
        let record = request.record.map(|record| record.finish(service, status));
        response.map(|body| GatewayBody::new(body, record, Some(request.in_progress)))
    }
}

/// A service's answer, or the gateway's 413 in its place when the request body passed the
/// limit while the service read it (the service saw a failed read), unless the service said
/// 413.
fn answered(
    body_limit: Option<&LimitWatch>,
    response: Response,
    service: Option<ServiceTag>,
    route: Option<RouteLabel>,
) -> Served {
    match body_limit.and_then(LimitWatch::passed) {
        Some(too_large) if response.status() != StatusCode::PAYLOAD_TOO_LARGE => {
            let refusal = error_response(StatusCode::PAYLOAD_TOO_LARGE, &too_large.to_string());
            Served::new(refusal.map(Payload::Service), None)
        }
        _ => Served {
            response: response.map(Payload::Service),
            service,
            route,
        },
    }
}

/// A future polled after it completed is a bug in its caller; answer 500 rather than panic.
fn polled_again() -> Served {
    tracing::error!("a gateway response future was polled after completion");
    let response = error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    Served::new(response.map(Payload::Service), None)
}
