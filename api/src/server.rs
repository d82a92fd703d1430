//! The service: shared state, middleware (request context, metrics, problem rendering), routes,
//! start and graceful shutdown.

use crate::http::{RequestContext, request_id, trace_id};
use crate::metrics::Metrics;
use crate::problem::Problem;
use crate::settings::Settings;
use crate::{rbac, routes};
use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers, Next};
use actix_web::{App, HttpMessage, HttpServer, web};
use commands::{Executor, ExecutorConfig};
use domain::dataset::Dataset;
use domain::platform::Platform;
use domain::preset::Preset;
use domain::quota::Usage;
use domain::tenant::Tenant;
use projections::{Audit, Catalog, Identity, Runtime};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Appended, Store};

/// Everything a handler can reach.
#[derive(Debug)]
pub struct AppState {
    pub settings: Settings,
    pub store: Store,
    pub tenants: Executor<Tenant>,
    pub platform: Executor<Platform>,
    pub identity: Arc<Identity>,
    pub audit: Arc<Audit>,
    pub datasets: Executor<Dataset>,
    pub presets: Executor<Preset>,
    pub usage: Executor<Usage>,
    pub signup_limiter: crate::limits::SignupLimiter,
    pub shares: crate::shares::Shares,
    pub catalog: Arc<Catalog>,
    pub sandbox: dataplane::sandbox::Cache,
    pub projections: Runtime,
    pub metrics: Metrics,
    /// The platform secret that keys every tenant's PII hashes (never leaves the store).
    pii_secret: Vec<u8>,
    seal_key: crate::replay::SealKey,
}

impl AppState {
    pub async fn new(settings: Settings, store: Store) -> Self {
        // The plan registry in force is the one in the log (ADR 010).
        let settings = crate::quota_routes::with_published_registry(&store, settings).await;
        let signup_limiter = crate::limits::SignupLimiter::new(settings.signup_per_minute);
        let shares = settings.shares();
        // Loaded tables, plus 1 GiB for queries and the store's own SQLite.
        let cap = settings.sandbox_cache_bytes as u64 + (1 << 30);
        if let Err(e) = dataplane::sandbox::set_memory_cap(cap) {
            tracing::warn!(error = %e, "SQLite memory cap not set");
        }
        let pii_secret = pii_secret(&store).await;
        let identity = Arc::new(Identity::default());
        let audit = Arc::new(Audit::default());
        let catalog = Arc::new(Catalog::default());
        let projections = Runtime::start(
            &store,
            vec![identity.clone(), audit.clone(), catalog.clone()],
        );
        Self {
            datasets: Executor::new(store.clone(), ExecutorConfig::new("dataset/v1")),
            presets: Executor::new(store.clone(), ExecutorConfig::new("preset/v1")),
            usage: Executor::new(
                store.clone(),
                ExecutorConfig {
                    // Busy meters are contended by design (many clients, several instances):
                    // retry longer before giving up.
                    max_retries: 64,
                    ..ExecutorConfig::new("usage/v1")
                },
            ),
            sandbox: dataplane::sandbox::Cache::new(settings.sandbox_cache_bytes),
            catalog,
            tenants: Executor::new(store.clone(), ExecutorConfig::new("tenant/v1")),
            platform: Executor::new(store.clone(), ExecutorConfig::new("platform/v1")),
            settings,
            store,
            identity,
            audit,
            projections,
            metrics: Metrics::default(),
            signup_limiter,
            shares,
            seal_key: crate::replay::SealKey::derive(&pii_secret),
            pii_secret,
        }
    }

    /// The key that seals tokens kept in idempotency records for replay.
    pub fn seal_key(&self) -> &crate::replay::SealKey {
        &self.seal_key
    }

    /// The key of a tenant's PII hashes: SHA-256 of the platform secret and the tenant id, so
    /// hashes are stable within a tenant, differ across tenants, and cannot be recomputed from
    /// anything a client can see.
    pub fn pii_key(&self, tenant: domain::TenantId) -> Vec<u8> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(&self.pii_secret);
        h.update(tenant.as_uuid().as_bytes());
        h.finalize().to_vec()
    }

    /// `committed`, then wait (bounded, never failing) for this instance's projections to apply
    /// it, so that reads here see the change.
    pub async fn settled(&self, appended: &Option<Appended>) -> u64 {
        let position = self.committed(appended);
        crate::http::settle(self, position).await;
        position
    }

    /// The last position a command wrote (or, for a command that wrote nothing, the head), and
    /// count what it appended.
    pub fn committed(&self, appended: &Option<Appended>) -> u64 {
        match appended {
            Some(a) => {
                if !a.replayed {
                    self.metrics.appended(a.positions.len());
                }
                a.last_position()
            }
            None => 0,
        }
    }
}

/// The platform's PII secret: 32 random bytes made on first start and kept in the store (the
/// first instance to make one wins, so every instance on one database uses the same).
async fn pii_secret(store: &Store) -> Vec<u8> {
    let mut fresh = uuid::Uuid::new_v4().as_bytes().to_vec();
    fresh.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    match store
        .put_blob_if_absent(domain::TenantId::PLATFORM, "pii-secret", fresh.clone())
        .await
    {
        Ok(stored) => stored,
        Err(e) => {
            // Without the store there is no service anyway; hashes made now would not match later ones.
            tracing::error!(error = %e, "PII secret not loaded; using a temporary one");
            fresh
        }
    }
}

/// Request id, trace id, `x-request-id` on every response, and the latency histogram.
async fn context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let ctx = RequestContext {
        request_id: request_id(&req),
        trace_id: trace_id(&req).unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
        event_id_seed: None,
    };
    let request_id = ctx.request_id.clone();
    req.extensions_mut().insert(ctx);
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let method = req.method().to_string();
    let mut res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    if let Some(state) = state {
        state.metrics.observe_request(
            &method,
            &route,
            res.status().as_u16(),
            started.elapsed().as_secs_f64(),
        );
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        res.headers_mut()
            .insert(header::HeaderName::from_static("x-request-id"), v);
    }
    Ok(res)
}

/// Any error response that is not already JSON of ours (a problem document, or the readiness
/// report) — actix's own 404, 405, 413, 400 … — becomes a problem document.
fn render_problem<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_ours = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes().starts_with(b"application/problem+json")
            || v.as_bytes().starts_with(b"application/json")
    });
    if is_ours {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (slug, title) = match status.as_u16() {
        400 => ("bad-request", "The request is malformed"),
        404 => ("not-found", "Not found"),
        405 => ("method-not-allowed", "Method not allowed"),
        413 => ("payload-too-large", "The request body is too large"),
        415 => ("unsupported-media-type", "Unsupported media type"),
        s if s >= 500 => ("internal", "Internal error"),
        _ => ("error", status.canonical_reason().unwrap_or("Error")),
    };
    let mut problem = Problem::new(status, slug, title);
    if status.as_u16() == 413 {
        if let Some(state) = res.request().app_data::<web::Data<AppState>>() {
            problem = problem
                .detail(format!(
                    "bodies are limited to {} bytes",
                    state.settings.body_limit
                ))
                .with("limit", state.settings.body_limit);
        }
    } else if status.as_u16() == 405 {
        problem = problem.detail(format!(
            "{} is not allowed on {}",
            res.request().method(),
            res.request().path()
        ));
    }
    let (req, old) = res.into_parts();
    let mut new = actix_web::ResponseError::error_response(&problem);
    for (name, value) in old.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            new.headers_mut().insert(name.clone(), value.clone());
        }
    }
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, new).map_into_right_body(),
    ))
}

/// Register every route of the table (`rbac::ROUTES`): one resource per path, one route per
/// method. A path whose route takes a CSV upload gets the dataset body limit.
fn routes(cfg: &mut web::ServiceConfig, dataset_limit: usize) {
    let mut paths: Vec<&'static str> = Vec::new();
    for spec in rbac::ROUTES {
        if !paths.contains(&spec.path) {
            paths.push(spec.path);
        }
    }
    for path in paths {
        let mut resource = web::resource(path);
        for spec in rbac::ROUTES.iter().filter(|s| s.path == path) {
            let method = actix_web::http::Method::from_bytes(spec.method.as_bytes())
                .expect("the route table's methods are HTTP methods");
            resource = resource.route((spec.handler)(web::method(method)));
            if matches!(spec.api.request, rbac::Body::Csv) {
                resource = resource.app_data(web::PayloadConfig::new(dataset_limit));
            }
        }
        cfg.service(resource);
    }
}

fn query_problem(
    err: actix_web::error::QueryPayloadError,
    _: &actix_web::HttpRequest,
) -> actix_web::Error {
    Problem::new(
        actix_web::http::StatusCode::BAD_REQUEST,
        "bad-query",
        "The query string is invalid",
    )
    .detail(err.to_string())
    .into()
}

fn path_problem(err: actix_web::error::PathError, _: &actix_web::HttpRequest) -> actix_web::Error {
    Problem::not_found(err.to_string()).into()
}

/// A started server: where it listens and how to stop it.
#[allow(missing_debug_implementations)]
pub struct Running {
    pub addrs: Vec<SocketAddr>,
    pub server: Server,
    pub state: web::Data<AppState>,
}

/// Bind and start the service on an open store (call inside an actix or tokio runtime).
pub async fn start(settings: Settings, store: Store) -> anyhow::Result<Running> {
    let listen = settings.listen.clone();
    let body_limit = settings.body_limit;
    let dataset_limit = settings.dataset_limit;
    let state = web::Data::new(AppState::new(settings, store).await);
    // Idempotency records past their retention are deleted (they may hold sealed tokens).
    {
        let store = state.store.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                every.tick().await;
                match store.idempotency_purge().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(records = n, "expired idempotency records deleted"),
                    Err(e) => tracing::warn!(error = %e, "idempotency records not purged"),
                }
            }
        });
    }
    let data = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(body_limit))
            .app_data(web::QueryConfig::default().error_handler(query_problem))
            .app_data(web::PathConfig::default().error_handler(path_problem))
            .configure(|c| routes(c, dataset_limit))
            .default_service(web::to(routes::not_found))
            .wrap(ErrorHandlers::new().default_handler(render_problem))
            .wrap(actix_web::middleware::from_fn(context))
    })
    .bind(&listen)
    .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?
    .shutdown_timeout(10);
    let addrs = server.addrs();
    let server = server.run();
    Ok(Running {
        addrs,
        server,
        state,
    })
}

/// Serve until SIGINT/SIGTERM, then drain requests, checkpoint and stop the projections and close
/// the store (which commits what its writer holds).
pub async fn serve(settings: Settings, store: Store) -> anyhow::Result<()> {
    let running = start(settings, store.clone()).await?;
    for addr in &running.addrs {
        tracing::info!(%addr, backend = store.backend_name(), "tenantry listening");
        eprintln!(
            "tenantry listening on http://{addr} ({} store)",
            store.backend_name()
        );
    }
    if !running
        .state
        .projections
        .catch_up(Duration::from_secs(60))
        .await
    {
        tracing::warn!("projections still catching up; /readyz says so");
    }
    running.server.await?;
    // Refused attempts counted in memory for their minute are written now, not lost.
    crate::quota_routes::flush_refusals(&running.state).await;
    // Checkpoint every projection so that the next start resumes from here.
    running.state.projections.shutdown().await;
    store.close().await;
    tracing::info!("stopped cleanly");
    Ok(())
}
