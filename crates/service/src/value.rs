//! `Service`: one built-in service as one value: name, routes, background tasks and the
//! `drain` / `stop` hooks `portico serve` calls on shutdown, in that order.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::{Background, ClientFacts, RouteLabel};

/// A lifecycle hook: runs once, on the main runtime.
pub type Hook = Box<dyn FnOnce() -> BoxFuture<'static, ()> + Send>;

/// Appends a service's own series to `/metrics` at each scrape, in Prometheus text format
/// (for state that is cheaper to read when asked than to record as it changes, and series
/// that must vanish with what they describe, such as one managed instance).
pub type MetricsText = Arc<dyn Fn(&mut String) + Send + Sync>;

/// Answers a request without the router: see [`Service::with_direct`].
pub type Direct = Arc<dyn Fn(axum::extract::Request, ClientFacts) -> DirectFuture + Send + Sync>;

/// A direct handler's answer, and the route it counts under in the gateway's metrics (what
/// a routed answer carries as a [`RouteLabel`] extension).
pub type DirectFuture = BoxFuture<'static, (axum::response::Response, Option<RouteLabel>)>;

/// A built-in service, ready to be mounted.
pub struct Service {
    name: String,
    router: axum::Router,
    background: Background,
    drain: Option<Hook>,
    stop: Option<Hook>,
    metrics: Option<MetricsText>,
    direct: Option<Direct>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("tasks", &self.background.running())
            .finish()
    }
}

impl Service {
    /// A service named `name` answering with `router`, with no tasks and no hooks.
    pub fn new(name: &str, router: axum::Router) -> Self {
        Service {
            name: name.to_string(),
            router,
            background: Background::new(name),
            drain: None,
            stop: None,
            metrics: None,
            direct: None,
        }
    }

    /// The tasks the service started (through this `Background`); stopped after `stop`.
    pub fn with_background(mut self, background: Background) -> Self {
        self.background = background;
        self
    }

    /// Runs `hook` when the gateway stops accepting: stop taking new work, give back what
    /// was taken but not done.
    pub fn on_drain<F, Fut>(mut self, hook: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.drain = Some(Box::new(move || Box::pin(hook())));
        self
    }

    /// Runs `hook` once in-flight requests have ended: release children, stores, connections.
    pub fn on_stop<F, Fut>(mut self, hook: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.stop = Some(Box::new(move || Box::pin(hook())));
        self
    }

    /// Appends `render`'s text to every `/metrics` scrape.
    pub fn with_metrics(mut self, render: impl Fn(&mut String) + Send + Sync + 'static) -> Self {
        self.metrics = Some(Arc::new(render));
        self
    }

    /// Answers requests with `handler` instead of the router on a listener that mounts this
    /// service alone, for every path with a first segment but `/healthz` (the gateway's
    /// own); `/`, `//x` and `/healthz` still go through the router. Only for a service whose
    /// routes are a catch-all `/{first}/...` that `handler` answers exactly as the router
    /// would: it skips the router's matching and boxed layers on every request (the proxy).
    /// The handler gets the client's facts as an argument, not as request extensions, and
    /// gives its route label back beside the response.
    pub fn with_direct<F, Fut>(mut self, handler: F) -> Self
    where
        F: Fn(axum::extract::Request, ClientFacts) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = (axum::response::Response, Option<RouteLabel>)> + Send + 'static,
    {
        self.direct = Some(Arc::new(move |request, facts| {
            Box::pin(handler(request, facts))
        }));
        self
    }

    /// The handler of [`Service::with_direct`], if the service has one.
    pub fn direct(&self) -> Option<&Direct> {
        self.direct.as_ref()
    }

    /// The service's scrape-time metrics, if it has any.
    pub fn metrics(&self) -> Option<&MetricsText> {
        self.metrics.as_ref()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The routes, with their full paths.
    pub fn router(&self) -> &axum::Router {
        &self.router
    }

    pub fn background(&self) -> &Background {
        &self.background
    }

    /// Calls the drain hook (once; later calls do nothing).
    pub async fn drain(&mut self) {
        if let Some(hook) = self.drain.take() {
            tracing::debug!(service = %self.name, "draining");
            hook().await;
        }
    }

    /// Calls the stop hook, then stops the background tasks, giving them `grace` to end.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(hook) = self.stop.take() {
            tracing::debug!(service = %self.name, "stopping");
            hook().await;
        }
        self.background.stop(grace).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn hooks_run_once_in_order_and_tasks_stop_after_the_stop_hook() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let background = Background::new("demo");
        let (on_task, on_drain, on_stop) = (events.clone(), events.clone(), events.clone());
        background.spawn_with_token("worker", move |token| async move {
            token.cancelled().await;
            on_task.lock().unwrap().push("task ended");
        });
        let mut service = Service::new("demo", axum::Router::new())
            .with_background(background)
            .on_drain(move || async move { on_drain.lock().unwrap().push("drain") })
            .on_stop(move || async move { on_stop.lock().unwrap().push("stop") });
        service.drain().await;
        service.drain().await;
        service.stop(Duration::from_secs(1)).await;
        service.stop(Duration::from_secs(1)).await;
        assert_eq!(*events.lock().unwrap(), vec!["drain", "stop", "task ended"]);
    }
}
