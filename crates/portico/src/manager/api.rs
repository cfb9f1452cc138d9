//! The management API, mounted with `admin` (keep it on 127.0.0.1 or behind a firewall):
//!
//! - `GET /manager/services`: the catalog (JSON list of specs);
//! - `GET /manager/services/NAME`: one spec (404 when unknown);
//! - `PUT /manager/services/NAME`: adds or replaces a spec (JSON body, `name` optional);
//!   400 naming every bad field; 201 when new, 200 when replaced;
//! - `DELETE /manager/services/NAME`: removes it; the agents then drain and stop its
//!   instances (the answer says how many were running);
//! - `GET /manager/instances[?service=NAME]`, `GET /manager/agents`.
//!
//! Reads go to the registry itself (not a view), so an answer is never stale; while the
//! registry is unreachable they answer 503. Errors are the gateway's JSON `{"error": ...}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use registry::{AnyRegistry, Error, Registry, ServiceSpec};
use serde::{Deserialize, Serialize};

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    pub registry: AnyRegistry,
    /// Names of this process's own routes, refused as service names.
    pub reserved: Arc<Vec<String>>,
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/manager/services", get(list_services))
        .route(
            "/manager/services/{name}",
            get(get_service).put(put_service).delete(delete_service),
        )
        .route("/manager/instances", get(list_instances))
        .route("/manager/agents", get(list_agents))
        .with_state(api)
}

async fn list_services(State(api): State<Api>) -> Response {
    match api.registry.services().await {
        Ok(specs) => json(StatusCode::OK, &specs),
        Err(error) => registry_error(&error),
    }
}

async fn get_service(State(api): State<Api>, Path(name): Path<String>) -> Response {
    match api.registry.service(&name).await {
        Ok(Some(spec)) => json(StatusCode::OK, &spec),
        Ok(None) => unknown(&name),
        Err(error) => registry_error(&error),
    }
}

/// The body of a 400 for a spec with problems.
#[derive(Serialize)]
struct Invalid<'a> {
    error: &'a str,
    problems: Vec<String>,
}

async fn put_service(State(api): State<Api>, Path(name): Path<String>, body: Bytes) -> Response {
    let mut spec: ServiceSpec = match serde_json::from_slice(&body) {
        Ok(spec) => spec,
        Err(error) => {
            let problems = vec![error.to_string()];
            return json(
                StatusCode::BAD_REQUEST,
                &Invalid {
                    error: "invalid service spec (JSON)",
                    problems,
                },
            );
        }
    };
    if spec.name.is_empty() {
        spec.name = name.clone();
    }
    let reserved: Vec<&str> = api.reserved.iter().map(String::as_str).collect();
    let mut problems = spec.validate_reserving(&reserved);
    if spec.name != name {
        problems.push(format!(
            "name {:?}: differs from the name in the path ({name:?})",
            spec.name
        ));
    }
    if !problems.is_empty() {
        return json(
            StatusCode::BAD_REQUEST,
            &Invalid {
                error: "invalid service spec",
                problems,
            },
        );
    }
    let existed = match api.registry.service(&name).await {
        Ok(found) => found.is_some(),
        Err(error) => return registry_error(&error),
    };
    if let Err(error) = api.registry.put_service(&spec).await {
        return registry_error(&error);
    }
    tracing::info!(service = %name, replaced = existed, "service put into the catalog");
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    json(status, &spec)
}

#[derive(Serialize)]
struct Removed {
    removed: String,
    /// Instances that were running; their agents drain and stop them.
    stopping: usize,
}

async fn delete_service(State(api): State<Api>, Path(name): Path<String>) -> Response {
    let running = match api.registry.instances(Some(&name)).await {
        Ok(instances) => instances.len(),
        Err(error) => return registry_error(&error),
    };
    match api.registry.remove_service(&name).await {
        Ok(true) => {
            tracing::info!(service = %name, stopping = running, "service removed from the catalog");
            json(
                StatusCode::OK,
                &Removed {
                    removed: name,
                    stopping: running,
                },
            )
        }
        Ok(false) => unknown(&name),
        Err(error) => registry_error(&error),
    }
}

#[derive(Deserialize)]
struct InstancesQuery {
    service: Option<String>,
}

async fn list_instances(State(api): State<Api>, Query(query): Query<InstancesQuery>) -> Response {
    match api.registry.instances(query.service.as_deref()).await {
        Ok(mut instances) => {
            instances.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
            json(StatusCode::OK, &instances)
        }
        Err(error) => registry_error(&error),
    }
}

async fn list_agents(State(api): State<Api>) -> Response {
    match api.registry.agents().await {
        Ok(mut agents) => {
            agents.sort_by(|a, b| a.id.cmp(&b.id));
            json(StatusCode::OK, &agents)
        }
        Err(error) => registry_error(&error),
    }
}

fn json(status: StatusCode, value: &impl Serialize) -> Response {
    let mut body = serde_json::to_vec(value).expect("API answers always serialize");
    body.push(b'\n');
    service::json_response(status, Bytes::from(body))
}

fn unknown(name: &str) -> Response {
    service::error_response(StatusCode::NOT_FOUND, &format!("unknown service {name:?}"))
}

/// 503 when the registry may answer later, else 500; the reason in both.
fn registry_error(error: &Error) -> Response {
    let status = if error.is_retryable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    service::error_response(status, &error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use registry::EmbeddedRegistry;
    use tower::ServiceExt;

    fn api() -> (Router, AnyRegistry) {
        let registry = AnyRegistry::Embedded(EmbeddedRegistry::in_memory());
        let api = Api {
            registry: registry.clone(),
            reserved: Arc::new(vec!["fib".into()]),
        };
        (router(api), registry)
    }

    async fn call(
        router: &Router,
        method: &str,
        uri: &str,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn put_get_list_and_delete_a_service() {
        let (router, _) = api();
        let body = r#"{"command":["python3","-m","http.server","{port}"],"max":3}"#;
        let (status, spec) = call(&router, "PUT", "/manager/services/hello", body).await;
        assert_eq!(status, StatusCode::CREATED, "{spec}");
        assert_eq!(spec["name"], "hello");
        assert_eq!(spec["soft_latency"], "100ms");
        let (status, _) = call(&router, "PUT", "/manager/services/hello", body).await;
        assert_eq!(status, StatusCode::OK, "replaced");
        let (status, list) = call(&router, "GET", "/manager/services", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list[0]["max"], 3);
        let (status, one) = call(&router, "GET", "/manager/services/hello", "").await;
        assert_eq!(
            (status, one["name"].as_str()),
            (StatusCode::OK, Some("hello"))
        );
        let (status, removed) = call(&router, "DELETE", "/manager/services/hello", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(removed["removed"], "hello");
        let (status, error) = call(&router, "DELETE", "/manager/services/hello", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(error["error"], "unknown service \"hello\"");
    }

    #[tokio::test]
    async fn a_bad_spec_is_a_400_naming_every_bad_field() {
        let (router, registry) = api();
        let body = r#"{"name":"other","command":[],"min":5,"max":2,"hard_latency":"10ms"}"#;
        let (status, answer) = call(&router, "PUT", "/manager/services/fib", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let problems: Vec<String> = answer["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect();
        for field in [
            "command",
            "min (5)",
            "soft_latency",
            "name \"other\": differs",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(field)),
                "{field}: {problems:?}"
            );
        }
        let (status, answer) = call(
            &router,
            "PUT",
            "/manager/services/fib",
            r#"{"command":["x"]}"#,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            answer["problems"][0]
                .as_str()
                .unwrap()
                .contains("built-in route"),
            "{answer}"
        );
        let (status, answer) =
            call(&router, "PUT", "/manager/services/x", r#"{"comand":["x"]}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            answer["problems"][0].as_str().unwrap().contains("comand"),
            "{answer}"
        );
        assert!(
            registry.services().await.unwrap().is_empty(),
            "nothing was stored"
        );
    }
}
