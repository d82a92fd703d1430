//! Platform-operations routes: rebuilding a projection beside the live one, the in-process SLOs
//! (`GET /v1/ops/slo`) and the alert drill (`PUT /v1/ops/drill`; issue 15, ADR 028).

use crate::auth::Caller;
use crate::http::Reply;
use crate::problem::Problem;
use crate::server::AppState;
use actix_web::http::StatusCode;
use actix_web::web;
use projections::RebuildError;
use serde::Serialize;
use utoipa::ToSchema;

/// A rebuild that has started.
#[derive(Debug, Serialize, ToSchema)]
pub struct RebuildStarted {
    /// The live projection that keeps serving until the rebuild switches in.
    pub projection: String,
    /// The name the rebuild runs under, beside the live one.
    pub rebuild: String,
    /// `running`; follow it in `GET /readyz` (`details[].rebuild`).
    pub state: String,
}

/// `POST /v1/ops/projections/{name}/rebuild`: replay one projection from position 1 in the
/// background; the live one keeps answering and is switched when the rebuild has caught up.
pub async fn rebuild_projection(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<Reply, Problem> {
    let name = path.into_inner();
    let started = state.projections.rebuild(&name).map_err(|e| match e {
        RebuildError::Unknown(_) => Problem::not_found(e.to_string()),
        RebuildError::AlreadyRunning(_) => Problem::conflict("rebuild-running", e.to_string()),
        RebuildError::Stopped => Problem::unavailable(e.to_string()),
    })?;
    tracing::info!(projection = %name, actor = %caller.actor(), "projection rebuild started");
    Ok(Reply::json(
        StatusCode::ACCEPTED,
        &RebuildStarted {
            projection: name,
            rebuild: started.name,
            state: "running".into(),
        },
    ))
}

/// `GET /v1/ops/slo?scale=`: windows divided by `scale` (1 to 3600; 1 when absent).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SloQuery {
    /// Divide every window by this, for drills: with 60 an hour lasts a minute and 5 minutes
    /// last 5 seconds (1 to 3600; default 1, the windows as stated).
    #[param(minimum = 1, maximum = 3600)]
    scale: Option<u64>,
}

/// One SLO over one window.
#[derive(Debug, Serialize, ToSchema)]
pub struct SloWindow {
    /// The window's nominal name: `5m`, `30m`, `1h`, `2h`, `6h`, `1d`, `3d`.
    window: String,
    /// Its length as evaluated, in seconds (the nominal length divided by `scale`).
    seconds: u64,
    /// Requests the SLO counts in the window (every request; commands for latency).
    events: u64,
    /// Of those, the bad ones (a 5xx; slower than the threshold).
    bad: u64,
    bad_ratio: f64,
    /// `bad_ratio / (1 − objective)`: 1 spends the 30-day budget exactly in 30 days.
    burn_rate: f64,
    /// Share of the 30-day budget this window spent (`burn_rate × window / 30 days`).
    budget_spent: f64,
    /// `1 − budget_spent`: the budget left if the rest of the 30 days was clean.
    budget_remaining: f64,
}

/// A multi-window burn-rate alert of one SLO.
#[derive(Debug, Serialize, ToSchema)]
pub struct SloAlert {
    /// `page-fast` (1h/5m, 14.4×), `page-slow` (6h/30m, 6×), `ticket-fast` (1d/2h, 3×),
    /// `ticket-slow` (3d/6h, 1×).
    alert: String,
    /// `page` or `ticket`.
    severity: String,
    long_window: String,
    short_window: String,
    /// The burn rate both windows must reach.
    burn_rate: f64,
    firing: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SloState {
    /// `availability`, `latency-p95`, `latency-p99`.
    slo: String,
    objective: f64,
    description: String,
    windows: Vec<SloWindow>,
    alerts: Vec<SloAlert>,
}

/// A drill in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct DrillState {
    #[schema(value_type = String, format = Uuid)]
    drill_id: String,
    error_ratio: f64,
    added_latency_ms: u64,
    route_prefix: String,
    #[schema(value_type = String, format = DateTime)]
    started_at: String,
    #[schema(value_type = String, format = DateTime)]
    expires_at: String,
}

impl DrillState {
    fn of(d: &domain::drill::DrillStarted) -> Self {
        let rfc3339 = |t: time::OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        Self {
            drill_id: d.drill_id.to_string(),
            error_ratio: d.error_ratio,
            added_latency_ms: d.added_latency_ms,
            route_prefix: d.route_prefix.clone(),
            started_at: rfc3339(d.started_at),
            expires_at: rfc3339(d.expires_at),
        }
    }
}

/// This instance's SLOs over its own requests (SPEC §12; `ops/prometheus/` states the same for
/// Prometheus across instances).
#[derive(Debug, Serialize, ToSchema)]
pub struct SloReport {
    /// The divisor the windows were evaluated with.
    scale: u64,
    slos: Vec<SloState>,
    /// `slo:alert` of every alert firing, e.g. `availability:page-fast`.
    firing: Vec<String>,
    /// Whether a page alert is firing.
    paging: bool,
    /// The drill in force, if any.
    drill: Option<DrillState>,
}

/// `GET /v1/ops/slo`: error budgets, burn rates and alerts, in-process.
pub async fn slo(
    state: web::Data<AppState>,
    _caller: Caller,
    query: web::Query<SloQuery>,
) -> Result<Reply, Problem> {
    let scale = query.scale.unwrap_or(1);
    if !(1..=3600).contains(&scale) {
        return Err(Problem::validation(vec![(
            "scale".into(),
            "must be between 1 and 3600".into(),
        )]));
    }
    let report = state.metrics.slo_report(scale);
    let paging = report
        .slos
        .iter()
        .any(|s| s.alerts.iter().any(|a| a.firing && a.severity == "page"));
    Ok(Reply::json(
        StatusCode::OK,
        &SloReport {
            scale: report.scale,
            slos: report
                .slos
                .into_iter()
                .map(|s| SloState {
                    slo: s.slo.into(),
                    objective: s.objective,
                    description: s.description.into(),
                    windows: s
                        .windows
                        .into_iter()
                        .map(|w| SloWindow {
                            window: w.window.into(),
                            seconds: w.seconds,
                            events: w.events,
                            bad: w.bad,
                            bad_ratio: w.bad_ratio,
                            burn_rate: w.burn_rate,
                            budget_spent: w.budget_spent,
                            budget_remaining: w.budget_remaining,
                        })
                        .collect(),
                    alerts: s
                        .alerts
                        .into_iter()
                        .map(|a| SloAlert {
                            alert: a.alert.into(),
                            severity: a.severity.into(),
                            long_window: a.long_window.into(),
                            short_window: a.short_window.into(),
                            burn_rate: a.burn_rate,
                            firing: a.firing,
                        })
                        .collect(),
                })
                .collect(),
            firing: report.firing,
            paging,
            drill: state
                .drills
                .active(time::OffsetDateTime::now_utc())
                .as_ref()
                .map(DrillState::of),
        },
    ))
}

/// `PUT /v1/ops/drill`: start an alert drill, or stop it with `minutes: 0`.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillRequest {
    /// Share of matching requests answered 503 `drill-injected`, 0 to 1.
    #[schema(minimum = 0, maximum = 1)]
    error_ratio: f64,
    /// Milliseconds added to every matching request, 0 to 10000.
    #[schema(minimum = 0, maximum = 10000)]
    added_latency_ms: u64,
    /// Requests whose path starts with this are affected; `/v1/ops/`, `/metrics` and the health
    /// checks never are.
    #[schema(pattern = "^/", min_length = 1, max_length = 200)]
    route_prefix: String,
    /// How long the drill lasts before it stops by itself, 1 to 240; 0 stops the running drill.
    #[schema(minimum = 0, maximum = 240)]
    minutes: u64,
}

/// After `PUT /v1/ops/drill`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DrillAnswer {
    /// Whether a drill is in force now.
    active: bool,
    drill: Option<DrillState>,
    /// The position of `ops.drill_started` / `ops.drill_stopped` (0 when nothing was written:
    /// a stop without a drill running).
    global_position: u64,
}

pub async fn set_drill(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let dto: DrillRequest = crate::http::json(&req, &body)?;
    let ctx = state.ctx(crate::http::RequestContext::of(&req).metadata(caller.actor()));
    let done = app::slo::set_drill(
        &state,
        &ctx,
        app::slo::DrillRequest {
            error_ratio: dto.error_ratio,
            added_latency_ms: dto.added_latency_ms,
            route_prefix: dto.route_prefix,
            minutes: dto.minutes,
        },
    )
    .await?;
    state.settle(done.position).await;
    Ok(Reply::json(
        StatusCode::OK,
        &DrillAnswer {
            active: done.drill.is_some(),
            drill: done.drill.as_ref().map(DrillState::of),
            global_position: done.position,
        },
    ))
}
