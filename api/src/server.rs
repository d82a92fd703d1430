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
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::Store;

/// Everything a handler can reach: the application ([`app::App`], which it dereferences to) and
/// the parts only the edge needs.
#[derive(Debug)]
pub struct AppState {
    pub app: Arc<app::App>,
    pub settings: Settings,
    pub signup_limiter: crate::limits::SignupLimiter,
    pub metrics: Metrics,
    seal_key: crate::replay::SealKey,
}

impl std::ops::Deref for AppState {
    type Target = app::App;

    fn deref(&self) -> &app::App {
        &self.app
    }
}

impl AppState {
    pub async fn new(settings: Settings, store: Store, clock: Arc<dyn app::Clock>) -> Self {
        let app = app::App::start(settings.app_config(), store, clock).await;
        // A served log records its tenants' signed checkpoints on a timer (ADR 023).
        app::audit::start_checkpoint_recorder(&app);
        // Every instance applies the drill in the log, and resumes one running (issue 15).
        app::slo::start_drill_follower(&app);
        // Personal data past its retention window is erased on a timer (ADR 032).
        if settings.retention_interval_secs > 0 {
            app::erasure::start_retention_schedule(
                &app,
                Duration::from_secs(settings.retention_interval_secs),
            );
        }
        // Invites and sign-in codes owed are delivered from the log (ADR 030).
        app::outbox::start(
            &app,
            settings.outbox_transport(),
            Duration::from_millis(200),
        );
        Self::on(app, settings)
    }

    /// The edge around an application already started.
    pub fn on(app: Arc<app::App>, mut settings: Settings) -> Self {
        // The plan registry in force is the one in the log (ADR 010).
        settings.plans = app.config.plans.clone();
        Self {
            signup_limiter: crate::limits::SignupLimiter::new(settings.signup_per_minute),
            seal_key: crate::replay::SealKey::derive(app.platform_secret()),
            metrics: Metrics::default(),
            settings,
            app,
        }
    }

    /// The key that seals tokens kept in idempotency records for replay.
    pub fn seal_key(&self) -> &crate::replay::SealKey {
        &self.seal_key
    }

    /// A use case's context: the request's metadata, decided now.
    pub fn ctx(&self, meta: store::Metadata) -> app::Ctx {
        self.app.ctx(meta)
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
        replay_only: false,
    };
    let request_id = ctx.request_id.clone();
    req.extensions_mut().insert(ctx);
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let method = req.method().to_string();
    // An alert drill (issue 15) injects its faults here, before the route runs.
    let injected = state.as_ref().and_then(|s| {
        s.drills
            .injection(req.path(), time::OffsetDateTime::now_utc())
            // A canary rehearsal's bad build: this instance only (ADR 033).
            .or_else(|| s.settings.fault(req.path(), &s.metrics.fault_seen))
    });
    if let Some(i) = injected.filter(|i| i.added_latency_ms > 0) {
        tokio::time::sleep(Duration::from_millis(i.added_latency_ms)).await;
    }
    let mut res = match injected {
        Some(i) if i.fail => {
            let problem = Problem::new(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "drill-injected",
                "Fault injected by an alert drill",
            )
            .detail(
                "an alert drill (PUT /v1/ops/drill) or this instance's fault_error_ratio is in \
                 force; this answer is deliberate",
            );
            let (req, _) = req.into_parts();
            let answer = actix_web::ResponseError::error_response(&problem);
            ServiceResponse::new(req, answer).map_into_right_body()
        }
        _ => next.call(req).await?.map_into_left_body(),
    };
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

/// Any error response that is not already JSON of ours (a problem document, a SCIM error, or the
/// readiness report) — actix's own 404, 405, 413, 400 … — becomes a problem document.
fn render_problem<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    // Under /scim/v2, SCIM clients read SCIM errors, whoever answered (ADR 031).
    let scim_path = res.request().path().starts_with("/scim/v2/");
    let is_scim = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/scim+json"));
    if scim_path && !is_scim && res.status().as_u16() != 413 {
        let status = res.status();
        let (req, old) = res.into_parts();
        let detail = status.canonical_reason().unwrap_or("error");
        let mut new = crate::scim_routes::error_response(status, detail);
        for (name, value) in old.headers() {
            if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                new.headers_mut().insert(name.clone(), value.clone());
            }
        }
        return Ok(ErrorHandlerResponse::Response(
            ServiceResponse::new(req, new).map_into_right_body(),
        ));
    }
    let is_ours = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes().starts_with(b"application/problem+json")
            || v.as_bytes().starts_with(b"application/json")
            // SCIM routes answer SCIM error documents (ADR 031).
            || v.as_bytes().starts_with(b"application/scim+json")
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
            // The limit of the route the body was sent to: a CSV upload's is `dataset_limit`,
            // every other body's `body_limit`.
            let req = res.request();
            let csv = req
                .match_pattern()
                .and_then(|pattern| rbac::find(req.method().as_str(), &pattern))
                .is_some_and(|spec| matches!(spec.api.request, rbac::Body::Csv));
            let (limit, what) = if csv {
                (state.settings.dataset_limit, "CSV uploads")
            } else {
                (state.settings.body_limit, "request bodies")
            };
            problem = problem
                .detail(format!("{what} are limited to {limit} bytes"))
                .with("limit", limit);
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
    start_with_clock(settings, store, Arc::new(app::SystemClock)).await
}

/// [`start`] with the clock decisions and authentication read (a test moves it forward).
pub async fn start_with_clock(
    settings: Settings,
    store: Store,
    clock: Arc<dyn app::Clock>,
) -> anyhow::Result<Running> {
    let listen = settings.listen.clone();
    let body_limit = settings.body_limit;
    let dataset_limit = settings.dataset_limit;
    let state = web::Data::new(AppState::new(settings, store, clock).await);
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
    // The nightly billing run (finalize, charge, reconcile), when the settings ask for one.
    if let Some(nightly) = state.settings.billing_nightly() {
        app::billing::spawn_nightly(&state.app, nightly);
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
    running.state.app.flush_refusals().await;
    // Checkpoint every projection so that the next start resumes from here.
    running.state.projections.shutdown().await;
    store.close().await;
    tracing::info!("stopped cleanly");
    Ok(())
}
