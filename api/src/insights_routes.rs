//! Partner insights over HTTP (platform pm and ops, across tenants): the funnel, weekly cohorts and
//! the quota/upgrade report, each as JSON, CSV and (funnel, cohorts) an SVG chart.

use crate::auth::Caller;
use crate::http::{CSV, Reply, SVG, text, wait_for};
use crate::problem::Problem;
use crate::server::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use domain::insights::{Cohort, Funnel, FunnelStep, Retention};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// `GET /v1/insights/funnel`'s parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FunnelQuery {
    /// The conversion window from sign-up, in days, inclusive (1–365; 14 by default).
    #[param(minimum = 1, maximum = 365)]
    pub window_days: Option<u32>,
    /// Only tenants who signed up on or after this UTC day (YYYY-MM-DD).
    #[param(format = Date)]
    pub signed_up_from: Option<String>,
    /// Only tenants who signed up on or before this UTC day (YYYY-MM-DD).
    #[param(format = Date)]
    pub signed_up_to: Option<String>,
    /// Wait (bounded) until the read models have applied this global position.
    pub min_position: Option<u64>,
}

/// `GET /v1/insights/cohorts`'s parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CohortQuery {
    /// `on` (active in week N) or `on_or_after` (active in week N or later); `on` by default.
    #[param(inline)]
    pub mode: Option<RetentionMode>,
    /// How many weeks per cohort, week 0 included (1–104; 12 by default).
    #[param(minimum = 1, maximum = 104)]
    pub weeks: Option<u32>,
    /// Wait (bounded) until the read models have applied this global position.
    pub min_position: Option<u64>,
}

/// `GET /v1/insights/quota`'s parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QuotaQuery {
    /// Wait (bounded) until the read models have applied this global position.
    pub min_position: Option<u64>,
}

#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetentionMode {
    On,
    OnOrAfter,
}

/// One step of the funnel.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct FunnelStepOut {
    /// `signed_up`, `dataset_uploaded`, `first_query` or `first_export_passed`.
    step: &'static str,
    /// Unique tenants that reached this step, and every one before it, within the window.
    tenants: u64,
    /// `tenants` ÷ tenants that signed up.
    conversion_overall: f64,
    /// `tenants` ÷ the previous step's tenants (absent for the first step).
    conversion_from_previous: Option<f64>,
    /// Median (nearest rank) seconds from sign-up to this step.
    median_seconds_from_signup: Option<i64>,
}

/// The sign-up funnel (SPEC §11).
#[derive(Debug, Serialize, ToSchema)]
pub struct FunnelOut {
    window_days: f64,
    steps: Vec<FunnelStepOut>,
    /// Median (nearest rank) seconds from sign-up to the last step.
    median_seconds_to_convert: Option<i64>,
    /// The same steps by plan at sign-up (`free`, `pro`, `enterprise`).
    by_plan: BTreeMap<String, Vec<FunnelStepOut>>,
}

fn steps_out(steps: &[FunnelStep]) -> Vec<FunnelStepOut> {
    steps
        .iter()
        .map(|s| FunnelStepOut {
            step: s.step.as_str(),
            tenants: s.tenants,
            conversion_overall: s.conversion_overall,
            conversion_from_previous: s.conversion_from_previous,
            median_seconds_from_signup: s.median_seconds_from_signup,
        })
        .collect()
}

fn funnel_out(f: &Funnel) -> FunnelOut {
    FunnelOut {
        window_days: f.window_days,
        steps: steps_out(&f.steps),
        median_seconds_to_convert: f.median_seconds_to_convert,
        by_plan: f
            .by_plan
            .iter()
            .map(|(plan, steps)| ((*plan).to_owned(), steps_out(steps)))
            .collect(),
    }
}

/// One week of a cohort.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CohortWeekOut {
    /// Weeks after the cohort's week (0 is its own).
    week: u32,
    retained: u64,
    rate: f64,
    /// The week is not over yet.
    incomplete: bool,
}

/// The tenants that signed up in one ISO week.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CohortOut {
    /// Monday 00:00 UTC of the sign-up week.
    #[schema(format = DateTime)]
    week_start: String,
    size: u64,
    incomplete: bool,
    weeks: Vec<CohortWeekOut>,
}

/// Weekly retention cohorts (SPEC §11).
#[derive(Debug, Serialize, ToSchema)]
pub struct CohortsOut {
    mode: &'static str,
    cohorts: Vec<CohortOut>,
}

fn cohorts_out(mode: Retention, cohorts: &[Cohort]) -> CohortsOut {
    CohortsOut {
        mode: match mode {
            Retention::On => "on",
            Retention::OnOrAfter => "on_or_after",
        },
        cohorts: cohorts
            .iter()
            .map(|c| CohortOut {
                week_start: store::format_rfc3339_micros(c.week_start),
                size: c.size,
                incomplete: c.incomplete,
                weeks: c
                    .weeks
                    .iter()
                    .map(|w| CohortWeekOut {
                        week: w.week,
                        retained: w.retained,
                        rate: w.rate,
                        incomplete: w.incomplete,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// One plan in one ISO week of the quota/upgrade report.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct QuotaLineOut {
    #[schema(format = DateTime)]
    week_start: String,
    plan: String,
    blocked_attempts: u64,
    grace_entries: u64,
    upgrades: u64,
    upgrades_within_7_days_of_a_block: u64,
}

/// The quota/upgrade report (SPEC §11).
#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaReportOut {
    weeks: Vec<QuotaLineOut>,
}

fn day(field: &str, raw: &Option<String>) -> Result<Option<time::Date>, Problem> {
    raw.as_deref()
        .map(|s| {
            time::Date::parse(
                s,
                &time::macros::format_description!("[year]-[month]-[day]"),
            )
            .map_err(|_| Problem::validation(vec![(field.into(), "must be YYYY-MM-DD".into())]))
        })
        .transpose()
}

fn funnel_of(state: &AppState, q: &FunnelQuery) -> Result<Funnel, Problem> {
    let ask = app::insights::FunnelAsk {
        window_days: q.window_days,
        signed_up_from: day("signed_up_from", &q.signed_up_from)?,
        signed_up_to: day("signed_up_to", &q.signed_up_to)?,
    };
    Ok(app::insights::funnel(state, ask)?)
}

fn cohorts_of(state: &AppState, q: &CohortQuery) -> Result<(Retention, Vec<Cohort>), Problem> {
    let mode = match q.mode {
        Some(RetentionMode::OnOrAfter) => Retention::OnOrAfter,
        _ => Retention::On,
    };
    let cohorts = app::insights::cohorts(state, mode, q.weeks, state.clock.now())?;
    Ok((mode, cohorts))
}

pub async fn funnel(
    state: web::Data<AppState>,
    _caller: Caller,
    q: web::Query<FunnelQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    Ok(Reply::json(
        StatusCode::OK,
        &funnel_out(&funnel_of(&state, &q)?),
    ))
}

pub async fn funnel_csv(
    state: web::Data<AppState>,
    _caller: Caller,
    q: web::Query<FunnelQuery>,
) -> Result<HttpResponse, Problem> {
    wait_for(&state, q.min_position).await?;
    Ok(text(
        CSV,
        app::insights::funnel_csv(&funnel_of(&state, &q)?),
    ))
}

pub async fn funnel_svg(
    state: web::Data<AppState>,
    _caller: Caller,
    q: web::Query<FunnelQuery>,
) -> Result<HttpResponse, Problem> {
    wait_for(&state, q.min_position).await?;
    Ok(text(
        SVG,
        app::insights::funnel_svg(&funnel_of(&state, &q)?),
    ))
}

pub async fn cohorts(
    state: web::Data<AppState>,
    _caller: Caller,
    q: web::Query<CohortQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let (mode, cohorts) = cohorts_of(&state, &q)?;
    Ok(Reply::json(StatusCode::OK, &cohorts_out(mode, &cohorts)))
}

pub async fn cohorts_csv(
    state: web::Data<AppState>,
    _caller: Caller,
    q: web::Query<CohortQuery>,
) -> Result<HttpResponse, Problem> {
    wait_for(&state, q.min_position).await?;
    let (_, cohorts) = cohorts_of(&state, &q)?;
    Ok(text(CSV, app::insights::cohorts_csv(&cohorts)))
}

pub async fn cohorts_svg(
    state: web::Data<AppState>,
    _caller: Caller,
    q: web::Query<CohortQuery>,
) -> Result<HttpResponse, Problem> {
    wait_for(&state, q.min_position).await?;
    let (_, cohorts) = cohorts_of(&state, &q)?;
    Ok(text(SVG, app::insights::cohorts_svg(&cohorts)))
}

pub async fn quota(
    state: web::Data<AppState>,
    _caller: Caller,
    q: web::Query<QuotaQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let weeks = app::insights::quota_report(&state)
        .into_iter()
        .map(|l| QuotaLineOut {
            week_start: store::format_rfc3339_micros(l.week_start),
            plan: l.plan.as_str().to_owned(),
            blocked_attempts: l.row.blocked_attempts,
            grace_entries: l.row.grace_entries,
            upgrades: l.row.upgrades,
            upgrades_within_7_days_of_a_block: l.row.upgrades_within_7_days_of_a_block,
        })
        .collect();
    Ok(Reply::json(StatusCode::OK, &QuotaReportOut { weeks }))
}

pub async fn quota_csv(
    state: web::Data<AppState>,
    _caller: Caller,
    q: web::Query<QuotaQuery>,
) -> Result<HttpResponse, Problem> {
    wait_for(&state, q.min_position).await?;
    Ok(text(
        CSV,
        app::insights::quota_csv(&app::insights::quota_report(&state)),
    ))
}
