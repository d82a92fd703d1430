//! Plans and quotas over HTTP: the plan registry, metering (`POST /v1/usage`, and every query and
//! export), the quota of each meter, and one-call upgrades. Metered answers carry
//! `RateLimit-Policy`, `RateLimit` and `Tenantry-Quota-State`; a blocked unit is a 402 that says
//! what happened and how to get out.

use crate::auth::Caller;
use crate::http::{ReadQuery, Reply, RequestContext, idempotent, json, wait_for};
use crate::problem::Problem;
use crate::server::AppState;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName};
use actix_web::{HttpRequest, web};
use domain::TenantId;
use domain::quota::{self, Meter, QuotaState, QuotaView, Record, Usage, UsageEvent};
use domain::tenant::{self, Plan, TenantCommand};
use serde::Deserialize;
use serde_json::json as j;
use time::OffsetDateTime;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/v1/plans").route(web::get().to(list_plans)))
        .service(web::resource("/v1/usage").route(web::post().to(record_usage)))
        .service(web::resource("/v1/tenant/quota").route(web::get().to(quota)))
        .service(web::resource("/v1/tenant/plan").route(web::post().to(change_plan)));
}

fn rfc3339(t: OffsetDateTime) -> String {
    store::format_rfc3339_micros(t)
}

/// The decision on some units, with the meter's state after it.
#[derive(Debug)]
pub struct Metered {
    pub admitted: bool,
    pub view: QuotaView,
    pub position: u64,
    pub grace_ended_at: Option<OffsetDateTime>,
    /// What `RateLimit-Policy` announces for the period.
    pub quota: u64,
}

impl Metered {
    /// The rate-limit and quota headers of a metered answer.
    pub fn headers(&self, now: OffsetDateTime) -> Vec<(HeaderName, String)> {
        let v = &self.view;
        let window = (v.resets_at - quota::Period::of(now).start())
            .whole_seconds()
            .max(1);
        let reset = (v.resets_at - now).whole_seconds().max(0);
        // The period's quota: the limit, plus the grace units on a plan that blocks.
        let allowed = self.quota;
        let remaining = match v.state {
            QuotaState::Blocked => 0,
            QuotaState::Grace => v.grace_units_left,
            QuotaState::Overage => 0,
            _ => v.limit.saturating_sub(v.used),
        };
        vec![
            (
                HeaderName::from_static("ratelimit-policy"),
                format!("\"{}\";q={};w={window}", v.meter, allowed.max(v.limit)),
            ),
            (
                HeaderName::from_static("ratelimit"),
                format!("\"{}\";r={remaining};t={reset}", v.meter),
            ),
            (
                HeaderName::from_static("tenantry-quota-state"),
                serde_json::to_value(v.state)
                    .ok()
                    .and_then(|s| s.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            ),
        ]
    }

    /// The 402 of a blocked unit.
    pub fn blocked_problem(&self, public_url: &str) -> Problem {
        let v = &self.view;
        let upgrade_url = format!("{}/v1/tenant/plan", public_url.trim_end_matches('/'));
        let mut p = Problem::new(
            StatusCode::PAYMENT_REQUIRED,
            "plan-quota-exceeded",
            "Your plan's quota is used up",
        )
        .detail(format!(
            "the {} plan includes {} {} per month; {} were used and the grace period is over. Upgrade to go on now, or wait until {}.",
            v.plan.as_str(),
            v.limit,
            v.meter,
            v.used,
            rfc3339(v.resets_at)
        ))
        .with("plan", v.plan.as_str())
        .with("meter", v.meter.as_str())
        .with("limit", v.limit)
        .with("used", v.used)
        .with("resets_at", rfc3339(v.resets_at))
        .with("grace_ended_at", self.grace_ended_at.map(rfc3339))
        .with("upgrade_url", upgrade_url.clone())
        .header(header::LINK, format!("<{upgrade_url}>; rel=\"upgrade\""));
        for (name, value) in self.headers(OffsetDateTime::now_utc()) {
            p = p.header(name, value);
        }
        p
    }
}

/// The plan in force for a tenant now.
fn plan_of(state: &AppState, tenant: TenantId, now: OffsetDateTime) -> Plan {
    state
        .identity
        .tenant(tenant)
        .map_or(Plan::Free, |t| t.plan_at(now))
}

/// Decide `units` of `meter` for `tenant`: one append, guarded by the stream's version.
pub async fn meter(
    state: &AppState,
    tenant: TenantId,
    meter: Meter,
    units: u64,
    metadata: &store::Metadata,
) -> Result<Metered, Problem> {
    let now = OffsetDateTime::now_utc();
    let limits = state
        .settings
        .plans
        .get(plan_of(state, tenant, now))
        .limits(meter);
    let stream = quota::stream_id(meter, quota::Period::of(now));
    let done = state
        .usage
        .execute(
            tenant,
            &stream,
            &Record {
                meter,
                units,
                limits,
            },
            metadata,
            now,
        )
        .await
        .map_err(|e| {
            crate::http::execute_problem(e, |d| {
                Problem::validation(vec![("units".into(), d.to_string())])
            })
        })?;
    let admitted = done
        .events
        .iter()
        .any(|e| matches!(e, UsageEvent::Recorded(_)));
    let grace_ended_at = done.events.iter().find_map(|e| match e {
        UsageEvent::GraceEnded(g) => Some(g.at),
        _ => None,
    });
    let blocked = done
        .events
        .iter()
        .any(|e| matches!(e, UsageEvent::Blocked(_)));
    if blocked {
        state
            .metrics
            .blocked_attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if done
        .events
        .iter()
        .any(|e| matches!(e, UsageEvent::GraceStarted(_)))
    {
        state
            .metrics
            .grace_entries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(Metered {
        admitted,
        view: {
            let mut view = done.state.view(meter, limits, now);
            // An admitted request answers with the state it was admitted in: the last grace
            // unit is admitted in grace, though the meter is blocked for the next one.
            if let Some(state) = done.events.iter().find_map(|e| match e {
                UsageEvent::Recorded(r) => Some(r.state),
                _ => None,
            }) {
                view.state = state;
            }
            view
        },
        position: state.committed(&done.appended),
        grace_ended_at: grace_ended_at.or(done.state.grace_ended_at),
        quota: limits.limit
            + if limits.blocking {
                limits.grace_units()
            } else {
                0
            },
    })
}

/// This month's usage of a meter, as the executor holds it.
async fn current_usage(
    state: &AppState,
    tenant: TenantId,
    meter: Meter,
    now: OffsetDateTime,
) -> Result<Usage, Problem> {
    let stream = quota::stream_id(meter, quota::Period::of(now));
    let (usage, _) = state.usage.load(tenant, &stream).await.map_err(|e| {
        crate::http::execute_problem(e, |d| {
            Problem::validation(vec![("units".into(), d.to_string())])
        })
    })?;
    Ok(usage)
}

/// What the look before a query or an export found.
#[derive(Debug)]
pub enum Peek {
    /// Not blocked: run, then record the unit.
    Clear,
    /// Blocked: the refused attempt is recorded; answer with its 402.
    Blocked(Metered),
    /// It looked blocked, but the attempt was admitted (the plan changed, the month turned):
    /// the unit is already recorded; run without recording another.
    Metered(Metered),
}

/// Look at `meter` before a query or an export runs, so a blocked tenant is refused (and the
/// attempt recorded) without running anything. The recording after a successful run is the real
/// guard.
pub async fn peek_blocked(
    state: &AppState,
    tenant: TenantId,
    meter_kind: Meter,
    metadata: &store::Metadata,
) -> Result<Peek, Problem> {
    let now = OffsetDateTime::now_utc();
    let limits = state
        .settings
        .plans
        .get(plan_of(state, tenant, now))
        .limits(meter_kind);
    let usage = current_usage(state, tenant, meter_kind, now).await?;
    if usage.view(meter_kind, limits, now).state != QuotaState::Blocked {
        return Ok(Peek::Clear);
    }
    let attempt = meter(state, tenant, meter_kind, 1, metadata).await?;
    Ok(if attempt.admitted {
        Peek::Metered(attempt)
    } else {
        Peek::Blocked(attempt)
    })
}

/// Whether any meter of the tenant refused an attempt in the last 7 days (this month's and last
/// month's streams).
async fn blocked_within_a_week(state: &AppState, tenant: TenantId) -> bool {
    let now = OffsetDateTime::now_utc();
    let week_ago = now - time::Duration::days(7);
    for m in Meter::ALL {
        for period in [quota::Period::of(now), quota::Period::of(week_ago)] {
            if let Ok((usage, _)) = state
                .usage
                .load(tenant, &quota::stream_id(*m, period))
                .await
                && usage.last_blocked_at.is_some_and(|t| t >= week_ago)
            {
                return true;
            }
        }
    }
    false
}

pub async fn list_plans(state: web::Data<AppState>) -> Reply {
    Reply::json(StatusCode::OK, &j!({"plans": state.settings.plans.all()}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageRequest {
    meter: String,
    units: u64,
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
        if !(1..=10_000).contains(&dto.units) {
            return Err(Problem::validation(vec![("units".into(), "must be 1 to 10000".into())]));
        }
        let ctx = RequestContext::of(&req);
        let m = meter(&state, tenant, meter_kind, dto.units, &ctx.metadata(caller.actor())).await?;
        if !m.admitted {
            return Err(m.blocked_problem(&state.settings.public_url));
        }
        let mut body = j!({
            "decision": if m.view.state == QuotaState::Grace { "admitted_in_grace" } else { "admitted" },
            "quota": m.view,
            "global_position": m.position,
        });
        if m.view.state == QuotaState::Grace {
            body["notice"] = grace_notice(&m.view, &state.settings.public_url);
        }
        let mut reply = Reply::json(StatusCode::OK, &body);
        for (n, v) in m.headers(OffsetDateTime::now_utc()) {
            reply = reply.header(n, v);
        }
        Ok(reply)
    })
    .await
}

/// What a tenant in grace is told: how much is left, until when, and how to upgrade.
pub fn grace_notice(v: &QuotaView, public_url: &str) -> serde_json::Value {
    j!({
        "message": format!(
            "You are past the {} {} included in the {} plan. {} more can run until {} — upgrade to keep working without interruption.",
            v.limit, v.meter, v.plan.as_str(), v.grace_units_left,
            v.grace_ends_at.map(rfc3339).unwrap_or_default()
        ),
        "grace_units_left": v.grace_units_left,
        "grace_ends_at": v.grace_ends_at.map(rfc3339),
        "upgrade_url": format!("{}/v1/tenant/plan", public_url.trim_end_matches('/')),
    })
}

/// `GET /v1/tenant/quota`: each meter's use, limit, state, grace and reset.
pub async fn quota(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<ReadQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = caller.tenant_or_forbidden()?;
    let now = OffsetDateTime::now_utc();
    let plan = plan_of(&state, tenant, now);
    let mut meters = serde_json::Map::new();
    for m in Meter::ALL {
        let limits = state.settings.plans.get(plan).limits(*m);
        let usage = current_usage(&state, tenant, *m, now).await?;
        meters.insert(
            m.as_str().into(),
            serde_json::to_value(usage.view(*m, limits, now)).unwrap_or_default(),
        );
    }
    Ok(Reply::json(
        StatusCode::OK,
        &j!({"plan": plan.as_str(), "meters": meters}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanRequest {
    plan: String,
    reason: Option<String>,
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
        if dto
            .reason
            .as_deref()
            .is_some_and(|r| r.chars().count() > 500)
        {
            return Err(Problem::validation(vec![(
                "reason".into(),
                "at most 500 characters".into(),
            )]));
        }
        let ctx = RequestContext::of(&req);
        let meta = ctx.metadata(caller.actor());
        let command = TenantCommand::ChangePlan {
            plan,
            reason: dto.reason.clone(),
            seats: state.settings.plans.get(plan).seats,
        };
        let done = state
            .tenants
            .execute(
                tenant,
                &tenant::stream_id(tenant),
                &command,
                &meta,
                OffsetDateTime::now_utc(),
            )
            .await
            .map_err(crate::routes::tenant_problem)?;
        // The new limits must apply to the very next metered request here.
        let position = state.settled(&done.appended).await;
        let body = match done.events.first() {
            Some(domain::tenant::TenantEvent::PlanChangeScheduled(s)) => j!({
                "plan": s.from.as_str(),
                "scheduled": {"plan": s.to.as_str(), "effective_at": rfc3339(s.effective_at)},
                "global_position": position,
            }),
            _ => {
                state
                    .metrics
                    .upgrades
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if blocked_within_a_week(&state, tenant).await {
                    state
                        .metrics
                        .upgrades_after_block
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                j!({"plan": plan.as_str(), "effective": "now", "global_position": position})
            }
        };
        Ok(Reply::json(StatusCode::OK, &body))
    })
    .await
}
