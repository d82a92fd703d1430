//! Plans and quotas over HTTP: the plan registry, metering (`POST /v1/usage`, and every query and
//! export), the quota of each meter, and one-call upgrades. Metered answers carry
//! `RateLimit-Policy`, `RateLimit` and `Tenantry-Quota-State`; a blocked unit is a 402 that says
//! what happened and how to get out.

use crate::auth::Caller;
use crate::http::{ReadQuery, Reply, RequestContext, idempotent, json, wait_for};
use crate::problem::{Problem, quota_headers};
use crate::server::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, web};
use app::metering::PlanChanged;
use domain::quota::{Meter, QuotaState, QuotaView};
use domain::tenant::Plan;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// A plan, as requests and answers spell it.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PlanName {
    Free,
    Pro,
    Enterprise,
}

impl From<Plan> for PlanName {
    fn from(p: Plan) -> Self {
        match p {
            Plan::Free => PlanName::Free,
            Plan::Pro => PlanName::Pro,
            Plan::Enterprise => PlanName::Enterprise,
        }
    }
}

/// A meter, as requests and answers spell it.
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, ToSchema)]
#[schema(rename_all = "lowercase")]
pub(crate) enum MeterName {
    Queries,
    Exports,
}

fn rfc3339(t: OffsetDateTime) -> String {
    store::format_rfc3339_micros(t)
}

/// `GET /v1/plans`: the plan registry version in force.
#[derive(Serialize, ToSchema)]
pub(crate) struct Plans<'a> {
    /// The registry version (each version is a `plan_registry.published` event).
    registry_version: u32,
    /// When this version took effect.
    #[schema(format = DateTime)]
    effective_from: Option<String>,
    #[schema(value_type = Vec<crate::openapi::PlanDefinition>)]
    plans: &'a [domain::plans::PlanDefinition],
}

pub async fn list_plans(state: web::Data<AppState>) -> Reply {
    Reply::json(
        StatusCode::OK,
        &Plans {
            registry_version: state.config.plans.version(),
            effective_from: state.config.plans.effective_from().map(rfc3339),
            plans: state.config.plans.all(),
        },
    )
}

/// `POST /v1/usage`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageRequest {
    /// Parsed at the edge so that a wrong meter is reported on its field.
    #[schema(value_type = MeterName)]
    meter: String,
    #[schema(minimum = 1, maximum = 10000)]
    units: u64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Decision {
    Admitted,
    AdmittedInGrace,
}

/// What a tenant in grace is told.
#[derive(Serialize, ToSchema)]
pub(crate) struct GraceNotice {
    message: String,
    grace_units_left: u64,
    #[schema(format = DateTime)]
    grace_ends_at: Option<String>,
    upgrade_url: String,
}

/// The decision on recorded units.
#[derive(Serialize, ToSchema)]
pub(crate) struct UsageDecision {
    decision: Decision,
    #[schema(value_type = crate::openapi::MeterQuota)]
    quota: QuotaView,
    #[serde(skip_serializing_if = "Option::is_none")]
    notice: Option<GraceNotice>,
    global_position: u64,
}

/// `POST /v1/usage {"meter": "queries"|"exports", "units": n}`.
pub async fn record_usage(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Reply {
    let Some(tenant) = caller.tenant() else {
        return Problem::forbidden("platform tokens have no tenant").into();
    };
    idempotent(&state, &req, tenant, &body, || async {
        let dto: UsageRequest = json(&req, &body)?;
        let meter_kind: Meter = dto
            .meter
            .parse()
            .map_err(|e: String| Problem::validation(vec![("meter".into(), e)]))?;
        let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
        let m = app::metering::use_units(&state, &ctx, tenant, meter_kind, dto.units).await?;
        let in_grace = m.view.state == QuotaState::Grace;
        let body = UsageDecision {
            decision: if in_grace {
                Decision::AdmittedInGrace
            } else {
                Decision::Admitted
            },
            notice: in_grace.then(|| grace_notice(&m.view, &state.settings.public_url)),
            quota: m.view.clone(),
            global_position: m.position,
        };
        Ok(Reply::json(StatusCode::OK, &body).with_headers(quota_headers(&m)))
    })
    .await
}

/// What a tenant in grace is told: how much is left, until when, and how to upgrade.
pub(crate) fn grace_notice(v: &QuotaView, public_url: &str) -> GraceNotice {
    GraceNotice {
        message: format!(
            "You are past the {} {} included in the {} plan. {} more can run until {} — upgrade to keep working without interruption.",
            v.limit,
            v.meter,
            v.plan.as_str(),
            v.grace_units_left,
            v.grace_ends_at.map(rfc3339).unwrap_or_default()
        ),
        grace_units_left: v.grace_units_left,
        grace_ends_at: v.grace_ends_at.map(rfc3339),
        upgrade_url: format!("{}/v1/tenant/plan", public_url.trim_end_matches('/')),
    }
}

/// `GET /v1/tenant/quota`.
#[derive(Serialize, ToSchema)]
pub(crate) struct Quota {
    plan: PlanName,
    #[schema(value_type = BTreeMap<String, crate::openapi::MeterQuota>)]
    meters: BTreeMap<String, QuotaView>,
}

/// `GET /v1/tenant/quota`: each meter's use, limit, state, grace and reset.
pub async fn quota(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<ReadQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = caller.tenant_or_forbidden()?;
    let report = app::metering::quota(&state, tenant, state.clock.now()).await?;
    Ok(Reply::json(
        StatusCode::OK,
        &Quota {
            plan: report.plan.into(),
            meters: report.meters,
        },
    ))
}

/// `POST /v1/tenant/plan`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlanRequest {
    /// Parsed at the edge so that a wrong plan is reported on its field.
    #[schema(value_type = PlanName)]
    plan: String,
    /// Why (kept in the event), at most 500 characters.
    #[schema(max_length = 500)]
    reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ScheduledChange {
    plan: PlanName,
    #[schema(format = DateTime)]
    effective_at: String,
}

/// An upgrade (`effective: "now"`) or a downgrade scheduled for the next period.
#[derive(Serialize, ToSchema)]
pub(crate) struct PlanChange {
    /// The plan in force now.
    plan: PlanName,
    #[serde(skip_serializing_if = "Option::is_none")]
    effective: Option<Effective>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduled: Option<ScheduledChange>,
    global_position: u64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Effective {
    Now,
}

/// `POST /v1/tenant/plan {"plan": "pro"}`: an upgrade applies at once and lifts a block; a
/// downgrade is scheduled for the next period.
pub async fn change_plan(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Reply {
    let Some(tenant) = caller.tenant() else {
        return Problem::forbidden("platform tokens have no tenant").into();
    };
    idempotent(&state, &req, tenant, &body, || async {
        let dto: PlanRequest = json(&req, &body)?;
        let plan = Plan::parse(&dto.plan).ok_or_else(|| {
            Problem::validation(vec![(
                "plan".into(),
                "must be free, pro or enterprise".into(),
            )])
        })?;
        let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
        let body = match app::metering::change_plan(&state, &ctx, tenant, plan, dto.reason).await? {
            PlanChanged::Scheduled {
                from,
                to,
                effective_at,
                position,
            } => PlanChange {
                plan: from.into(),
                effective: None,
                scheduled: Some(ScheduledChange {
                    plan: to.into(),
                    effective_at: rfc3339(effective_at),
                }),
                global_position: position,
            },
            PlanChanged::Now { plan, position } => PlanChange {
                plan: plan.into(),
                effective: Some(Effective::Now),
                scheduled: None,
                global_position: position,
            },
        };
        Ok(Reply::json(StatusCode::OK, &body))
    })
    .await
}
