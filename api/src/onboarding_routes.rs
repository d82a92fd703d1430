//! The guided first-success flow over HTTP (SPEC §9): a member's own progress, resume payload and
//! next nudge; the screen the client shows; dismissing and snoozing nudges; and, for platform pm and
//! ops, drop-off per step as JSON, CSV and SVG.

use crate::auth::Caller;
use crate::http::{ReadQuery, Reply, RequestContext, idempotent, json, wait_for};
use crate::problem::Problem;
use crate::server::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use domain::UserId;
use domain::insights::Step;
use projections::Principal;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

fn rfc3339(t: time::OffsetDateTime) -> String {
    store::format_rfc3339_micros(t)
}

/// A step of the flow.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepName {
    SignedUp,
    DatasetUploaded,
    FirstQuery,
    FirstExportPassed,
}

impl From<StepName> for Step {
    fn from(s: StepName) -> Step {
        match s {
            StepName::SignedUp => Step::SignedUp,
            StepName::DatasetUploaded => Step::DatasetUploaded,
            StepName::FirstQuery => Step::FirstQuery,
            StepName::FirstExportPassed => Step::FirstExportPassed,
        }
    }
}

impl From<Step> for StepName {
    fn from(s: Step) -> StepName {
        match s {
            Step::SignedUp => StepName::SignedUp,
            Step::DatasetUploaded => StepName::DatasetUploaded,
            Step::FirstQuery => StepName::FirstQuery,
            Step::FirstExportPassed => StepName::FirstExportPassed,
        }
    }
}

/// When the user reached a step (`null`: not yet).
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct StepAt {
    step: StepName,
    #[schema(format = DateTime)]
    reached_at: Option<String>,
}

/// The screen the client last reported.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Position {
    screen: String,
    step: StepName,
    #[schema(format = DateTime)]
    at: String,
}

/// What a member coming back mid-flow after 30 minutes or more is shown.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ResumeOut {
    step: StepName,
    screen: Option<String>,
    /// The dataset to reopen (the member's last upload).
    #[schema(format = Uuid)]
    dataset_id: Option<String>,
    /// The member's last query, by reference (never its SQL).
    #[schema(format = Uuid)]
    query_id: Option<String>,
    away_minutes: i64,
    banner: String,
}

/// The next best action.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct NudgeOut {
    id: String,
    text: String,
    action: String,
}

/// `GET /v1/onboarding`: the member's own flow.
#[derive(Debug, Serialize, ToSchema)]
pub struct OnboardingOut {
    steps: Vec<StepAt>,
    /// The step to do next (`null` once the flow is done).
    next_step: Option<StepName>,
    position: Option<Position>,
    resume: Option<ResumeOut>,
    nudge: Option<NudgeOut>,
}

fn member(caller: &Caller) -> Result<(domain::TenantId, UserId), Problem> {
    match &caller.principal {
        Principal::Member {
            tenant, user_id, ..
        } => Ok((*tenant, *user_id)),
        Principal::Operator { .. } => Err(Problem::forbidden("only members have an onboarding")),
    }
}

pub async fn onboarding(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<ReadQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let (tenant, user) = member(&caller)?;
    let v = app::onboarding::view(&state, tenant, user, state.clock.now());
    let body = OnboardingOut {
        steps: Step::ALL
            .iter()
            .zip(v.progress.steps.iter())
            .map(|(s, at)| StepAt {
                step: (*s).into(),
                reached_at: at.map(rfc3339),
            })
            .collect(),
        next_step: v.next_step.map(Into::into),
        position: v
            .progress
            .position
            .as_ref()
            .map(|(screen, step, at)| Position {
                screen: screen.clone(),
                step: (*step).into(),
                at: rfc3339(*at),
            }),
        resume: v.resume.map(|r| ResumeOut {
            step: r.step.into(),
            screen: r.screen,
            dataset_id: r.dataset_id.map(|d| d.to_string()),
            query_id: r.query_id.map(|d| d.to_string()),
            away_minutes: r.away_minutes,
            banner: r.banner,
        }),
        nudge: v.nudge.map(|n| NudgeOut {
            id: n.id,
            text: n.text,
            action: n.action,
        }),
    };
    Ok(Reply::json(StatusCode::OK, &body))
}

/// `POST /v1/onboarding/position`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PositionRequest {
    /// The screen's id: 1–64 of `a-z 0-9 _ - . /`.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[a-z0-9_./-]{1,64}$")]
    screen: String,
    step: StepName,
}

/// `POST /v1/onboarding/nudges/{nudge_id}/snooze`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnoozeRequest {
    /// For how long, in minutes (1 to 43,200: 30 days).
    #[schema(minimum = 1, maximum = 43200)]
    minutes: u32,
}

/// A recorded report, dismissal or snooze.
#[derive(Debug, Serialize, ToSchema)]
pub struct Recorded {
    recorded: bool,
    global_position: u64,
}

fn recorded(position: u64) -> Reply {
    Reply::json(
        StatusCode::OK,
        &Recorded {
            recorded: true,
            global_position: position,
        },
    )
}

pub async fn report_position(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let (tenant, user) = member(&caller)?;
    Ok(idempotent(&state, &req, tenant, &body, || async {
        let dto: PositionRequest = json(&req, &body)?;
        let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
        let position = app::onboarding::report_position(
            &state,
            &ctx,
            tenant,
            user,
            dto.screen,
            dto.step.into(),
        )
        .await?;
        Ok(recorded(position))
    })
    .await)
}

pub async fn dismiss(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
) -> Result<Reply, Problem> {
    let (tenant, user) = member(&caller)?;
    Ok(idempotent(&state, &req, tenant, &[], || async {
        let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
        Ok(recorded(
            app::onboarding::dismiss(&state, &ctx, tenant, user, &path).await?,
        ))
    })
    .await)
}

pub async fn snooze(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let (tenant, user) = member(&caller)?;
    Ok(idempotent(&state, &req, tenant, &body, || async {
        let dto: SnoozeRequest = json(&req, &body)?;
        let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
        let position =
            app::onboarding::snooze(&state, &ctx, tenant, user, &path, dto.minutes).await?;
        Ok(recorded(position))
    })
    .await)
}

/// `GET /v1/insights/dropoff`'s parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DropOffQuery {
    /// From each step, the next must come within this many days (1–365; 14 by default).
    #[param(minimum = 1, maximum = 365)]
    pub window_days: Option<u32>,
    /// Wait (bounded) until the read models have applied this global position.
    pub min_position: Option<u64>,
}

/// Drop-off at one step, over every user.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct DropOffOut {
    step: StepName,
    reached: u64,
    /// Reached the next step within the window (absent at the last step).
    completed: Option<u64>,
    dropped: Option<u64>,
    /// Nearest-rank median and 90th percentile of the time to the next step, in seconds.
    median_seconds: Option<i64>,
    p90_seconds: Option<i64>,
}

/// `GET /v1/insights/dropoff`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DropOffReport {
    steps: Vec<DropOffOut>,
}

pub async fn dropoff(
    state: web::Data<AppState>,
    _caller: Caller,
    q: web::Query<DropOffQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let steps = app::onboarding::dropoff(&state, q.window_days)?
        .into_iter()
        .map(|d| DropOffOut {
            step: d.step.into(),
            reached: d.reached,
            completed: d.completed,
            dropped: d.dropped,
            median_seconds: d.median_seconds,
            p90_seconds: d.p90_seconds,
        })
        .collect();
    Ok(Reply::json(StatusCode::OK, &DropOffReport { steps }))
}

pub async fn dropoff_csv(
    state: web::Data<AppState>,
    _caller: Caller,
    q: web::Query<DropOffQuery>,
) -> Result<HttpResponse, Problem> {
    wait_for(&state, q.min_position).await?;
    let rows = app::onboarding::dropoff(&state, q.window_days)?;
    Ok(crate::http::text(
        crate::http::CSV,
        app::onboarding::dropoff_csv(&rows),
    ))
}

pub async fn dropoff_svg(
    state: web::Data<AppState>,
    _caller: Caller,
    q: web::Query<DropOffQuery>,
) -> Result<HttpResponse, Problem> {
    wait_for(&state, q.min_position).await?;
    let rows = app::onboarding::dropoff(&state, q.window_days)?;
    Ok(crate::http::text(
        crate::http::SVG,
        app::onboarding::dropoff_svg(&rows),
    ))
}
