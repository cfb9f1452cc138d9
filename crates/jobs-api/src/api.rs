//! The job service's routes, with their full paths, over the core's facade [`jobs::Jobs`]:
//!
//! - per configured service `<svc>` (routes are made for each name, so the job service claims
//!   no path another service could want): `POST /<svc>/annotate[/<storage_doc_id>]`,
//!   `POST /<svc>/process[/<storage_doc_id>]`, `GET /<svc>/status`, `GET /<svc>/cancel`,
//!   `GET /<svc>/[service/]info`, `GET /<svc>/[service/]stats`, the CANARIE pages under
//!   `/<svc>/` and `/<svc>/service/`, and `GET /<svc>/` (home) — see [`crate::legacy`];
//! - `GET /info`, `/service/info`, `/stats` for the whole gateway;
//! - simple workflows: `POST /simple_workflow/process`, `GET /simple_workflow/status`,
//!   `GET /simple_workflow/cancel` ([`crate::workflow`]);
//! - the temporary files: `GET /temporary_upload_path`, `POST /temporary_file[/<name>]`,
//!   `GET /temporary_file/<name>` ([`crate::uploads`]);
//! - the modern API under `/jobs` ([`crate::modern`]).
//!
//! Every legacy response carries the job service's name as its metric label.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use jobs::config::JobsConfig;
use service::{DataDir, Label, RouteLabel};

use crate::canarie::{PageAnswer, ServiceDescription, PAGES};
use crate::jwt::Verifier;
use crate::submission::StorageUrls;
use crate::temporary::TempFiles;
use crate::{legacy, modern, pull, uploads, workflow};

/// Service names the job service may not take: its own top-level paths.
pub const RESERVED_NAMES: &[&str] = &[
    "jobs",
    "info",
    "stats",
    "service",
    "simple_workflow",
    "temporary_upload_path",
    "temporary_file",
];

/// What the handlers share.
pub struct JobsApi {
    pub(crate) jobs: jobs::Jobs,
    pub(crate) verifier: Verifier,
    pub(crate) storage: StorageUrls,
    pub(crate) api_version: String,
    pub(crate) services: HashMap<String, ServiceEntry>,
    pub(crate) temporary: Arc<TempFiles>,
    /// `jobs.public_url` (no trailing `/`), or empty.
    pub(crate) public_url: String,
}

/// One configured service, as the handlers need it.
pub(crate) struct ServiceEntry {
    pub description: ServiceDescription,
    pub pages: HashMap<&'static str, PageAnswer>,
    pub label: Label,
}

/// Why the API could not be built from the config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("jobs.service {service:?}: canarie.{page} {problem}")]
    Page {
        service: String,
        page: &'static str,
        problem: crate::canarie::PageError,
    },
    #[error("jobs.security.jwt_key is unset and was not generated")]
    NoKey,
    #[error("opening the temporary files under {path}: {error}")]
    TemporaryFiles {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
}

impl JobsApi {
    /// The API over `jobs`; page files are read now, relative to `base` (the config file's
    /// directory); temporary files live under `data_dir` (sweep them with
    /// [`JobsApi::sweep_temporary_files`]).
    pub fn new(
        jobs: jobs::Jobs,
        base: &Path,
        data_dir: &DataDir,
    ) -> Result<Arc<JobsApi>, BuildError> {
        let config = jobs.config().clone();
        let key = config.security.jwt_key.as_ref().ok_or(BuildError::NoKey)?;
        let verifier = Verifier::new(key, &config.security.jwt_audience, config.security.bypass);
        let mut services = HashMap::new();
        for service in &config.services {
            services.insert(service.name.clone(), service_entry(service, base)?);
        }
        let temporary = TempFiles::open(
            data_dir,
            config.temporary_files_ttl,
            config.temporary_files_max_bytes,
        )
        .map_err(|error| BuildError::TemporaryFiles {
            path: data_dir.path().join(crate::temporary::DIRECTORY),
            error,
        })?;
        Ok(Arc::new(JobsApi {
            temporary: Arc::new(temporary),
            public_url: config.public_url.clone(),
            storage: storage_urls(&config),
            api_version: config.api_version.clone(),
            verifier,
            services,
            jobs,
        }))
    }

    pub(crate) fn service(&self, name: &str) -> Option<&ServiceEntry> {
        self.services.get(name)
    }

    /// Removes expired temporary files every so often (a tenth of their time to live,
    /// between 1 s and 1 min), until the future is dropped.
    pub fn sweep_temporary_files(&self) -> impl std::future::Future<Output = ()> + Send {
        let period = (self.temporary.ttl() / 10).clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(60),
        );
        self.temporary.clone().sweep_every(period)
    }
}

fn storage_urls(config: &JobsConfig) -> StorageUrls {
    StorageUrls {
        get_doc_url: config.storage.get_doc_url.clone(),
        post_doc_url: config.storage.post_doc_url.clone(),
        post_annotations_url: config.storage.post_annotations_url.clone(),
    }
}

fn service_entry(
    service: &jobs::config::ServiceConfig,
    base: &Path,
) -> Result<ServiceEntry, BuildError> {
    let description = describe(service);
    let mut pages = HashMap::new();
    for page in PAGES.iter().copied().chain(["home"]) {
        let answer = PageAnswer::from_config(description.page(page), base).map_err(|problem| {
            BuildError::Page {
                service: service.name.clone(),
                page,
                problem,
            }
        })?;
        pages.insert(page, answer);
    }
    Ok(ServiceEntry {
        label: Label::intern(&service.name),
        description,
        pages,
    })
}

/// The CANARIE view of a configured service.
pub fn describe(service: &jobs::config::ServiceConfig) -> ServiceDescription {
    let canarie = &service.canarie;
    let pages = [
        ("home", &canarie.home),
        ("doc", &canarie.doc),
        ("releasenotes", &canarie.releasenotes),
        ("support", &canarie.support),
        ("source", &canarie.source),
        ("tryme", &canarie.tryme),
        ("licence", &canarie.licence),
        ("provenance", &canarie.provenance),
    ];
    ServiceDescription {
        route: service.name.clone(),
        celery_task_name: service.celery_task_name.clone(),
        celery_queue_name: service.celery_queue_name.clone(),
        version: service.version.clone(),
        noparams: service.noparams,
        name: canarie.name.clone(),
        synopsis: canarie.synopsis.clone(),
        institution: canarie.institution.clone(),
        release_time: canarie.release_time.clone(),
        support_email: canarie.support_email.clone(),
        category: canarie.category.clone(),
        research_subject: canarie.research_subject.clone(),
        tags: canarie.tags.clone(),
        pages: pages
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(name, value)| (name.to_string(), value.clone()))
            .collect(),
    }
}

/// Every route of the job service.
pub fn router(api: Arc<JobsApi>) -> Router {
    let mut router = Router::new()
        .route("/info", get(legacy::global_info))
        .route("/service/info", get(legacy::global_info))
        .route("/stats", get(legacy::global_stats))
        .route("/simple_workflow/process", post(workflow::process))
        .route("/simple_workflow/status", get(workflow::status))
        .route("/simple_workflow/cancel", get(workflow::cancel))
        .route("/temporary_upload_path", get(uploads::upload_path))
        .route("/temporary_file", post(uploads::upload_new))
        .route(
            "/temporary_file/{name}",
            post(uploads::upload_named).get(uploads::download),
        )
        .merge(modern::router())
        .merge(pull::router());
    // Any other first segment: the original's "unknown service" (400, vesta 202) rather than
    // the gateway's 404, for the routes its clients call.
    for task in ["annotate", "process"] {
        router = router
            .route(
                &format!("/{{service}}/{task}"),
                post(legacy::unknown_service_submit),
            )
            .route(
                &format!("/{{service}}/{task}/{{storage_doc_id}}"),
                post(legacy::unknown_service_submit),
            );
    }
    for task in ["status", "info", "stats"] {
        router = router.route(
            &format!("/{{service}}/{task}"),
            get(legacy::unknown_service),
        );
    }
    router = router.route("/{service}/cancel", get(legacy::unknown_service_submit));
    let mut names: Vec<&String> = api.services.keys().collect();
    names.sort();
    for name in names {
        router = router.merge(service_router(name, api.services[name].label.clone()));
    }
    router.with_state(api)
}

/// The legacy routes of one service, labelled with its name.
fn service_router(name: &str, label: Label) -> Router<Arc<JobsApi>> {
    let svc = name.to_string();
    let at = |path: &str| format!("/{svc}{path}");
    let mut router = Router::new()
        .route(&at("/annotate"), post(legacy::annotate))
        .route(&at("/annotate/{storage_doc_id}"), post(legacy::annotate))
        .route(&at("/process"), post(legacy::process))
        .route(&at("/process/{storage_doc_id}"), post(legacy::process))
        .route(&at("/status"), get(legacy::status))
        .route(&at("/cancel"), get(legacy::cancel))
        .route(&at("/"), get(legacy::home));
    for prefix in ["", "/service"] {
        router = router
            .route(&at(&format!("{prefix}/info")), get(legacy::info))
            .route(&at(&format!("{prefix}/stats")), get(legacy::stats));
        for page in PAGES {
            router = router.route(&at(&format!("{prefix}/{page}")), get(legacy::page));
        }
    }
    router.layer(axum::middleware::map_response(
        move |mut response: axum::response::Response| {
            let label = label.clone();
            async move {
                response.extensions_mut().insert(RouteLabel(label));
                response
            }
        },
    ))
}
