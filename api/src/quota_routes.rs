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
use domain::plans::PlanRegistry;
use domain::quota::{
    self, Meter, Outcome, QuotaState, QuotaView, Record, UnitFact, Usage, UsageCommand, UsageEvent,
};
use domain::tenant::{self, Plan, TenantCommand};
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

/// The decision on some units, with the meter's state after it.
#[derive(Debug)]
pub struct Metered {
    pub admitted: bool,
    pub outcome: Outcome,
    /// The plan registry version the decision was made under.
    pub registry_version: u32,
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

/// Decide `units` of `meter` for `tenant` under the plan registry version in force: one append,
/// guarded by the stream's version, that also holds the fact the units pay for (`pays_for`), so
/// a unit and its fact are written together or not at all.
pub async fn meter(
    state: &web::Data<AppState>,
    tenant: TenantId,
    meter: Meter,
    units: u64,
    pays_for: Option<UnitFact>,
    metadata: &store::Metadata,
) -> Result<Metered, Problem> {
    decide_units(state, tenant, meter, units, pays_for, false, metadata).await
}

/// Look at `meter` before a query or an export runs: a blocked tenant is refused (the refusal is
/// recorded) without running anything, and nothing is written otherwise. The unit recorded with
/// its fact after a successful run is the real guard. `Some` is the refusal to answer with.
pub async fn refuse_if_blocked(
    state: &web::Data<AppState>,
    tenant: TenantId,
    meter: Meter,
    metadata: &store::Metadata,
) -> Result<Option<Metered>, Problem> {
    let m = decide_units(state, tenant, meter, 1, None, true, metadata).await?;
    Ok((m.outcome == Outcome::Refused).then_some(m))
}

async fn decide_units(
    state: &web::Data<AppState>,
    tenant: TenantId,
    meter: Meter,
    units: u64,
    pays_for: Option<UnitFact>,
    probe: bool,
    metadata: &store::Metadata,
) -> Result<Metered, Problem> {
    let now = OffsetDateTime::now_utc();
    let limits = state
        .settings
        .plans
        .get(plan_of(state, tenant, now))
        .limits(meter);
    let record = Record {
        pays_for,
        probe,
        ..Record::units(meter, units, limits)
    };
    let stream = quota::stream_id(meter, quota::Period::of(now));
    let done = state
        .usage
        .execute(
            tenant,
            &stream,
            &UsageCommand::Record(record.clone()),
            metadata,
            now,
        )
        .await
        .map_err(|e| {
            crate::http::execute_problem(e, |d| {
                Problem::validation(vec![("units".into(), d.to_string())])
            })
        })?;
    let outcome = Outcome::of(&record, &done.events, &done.state, now);
    let grace_ended_at = done.events.iter().find_map(|e| match e {
        UsageEvent::GraceEnded(g) => Some(g.at),
        _ => None,
    });
    if outcome == Outcome::Refused {
        state
            .metrics
            .blocked_attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let written = done
            .events
            .iter()
            .position(|e| matches!(e, UsageEvent::Blocked(_)));
        match (written, &done.appended) {
            (Some(i), Some(appended)) => refusals::first_written(
                state,
                tenant,
                meter,
                now,
                appended.positions.get(i).copied(),
            ),
            _ => refusals::counted(state, tenant, &record, now),
        }
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
        admitted: outcome == Outcome::Admitted,
        outcome,
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
        registry_version: limits.registry_version,
    })
}

/// Refusals coalesced per tenant, meter and minute (SPEC §4 counts blocked attempts; a tenant
/// hammering a blocked meter must not grow its stream without bound). The first refusal of a
/// minute is written by the aggregate at once; the later ones are counted here and written as one
/// `usage.blocked` (with their count, caused by the first) once the minute is over. A process that
/// stops within that minute loses its uncounted attempts; they were refused and never billed.
mod refusals {
    use super::*;
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};

    #[derive(Debug)]
    struct Pending {
        attempts: u64,
        units: u64,
        last_at: OffsetDateTime,
        limits: Option<quota::MeterLimits>,
        /// The position of the minute's first `usage.blocked`, when this instance wrote it.
        first: Option<u64>,
    }

    type Key = (TenantId, Meter, OffsetDateTime);

    static PENDING: LazyLock<Mutex<HashMap<Key, Pending>>> = LazyLock::new(Default::default);

    /// The minute's first refusal was written at `position`.
    pub(super) fn first_written(
        state: &web::Data<AppState>,
        tenant: TenantId,
        meter: Meter,
        now: OffsetDateTime,
        position: Option<u64>,
    ) {
        note(
            state,
            (tenant, meter, quota::minute_of(now)),
            now,
            |entry| {
                entry.first = entry.first.or(position);
            },
        );
    }

    /// A refusal that the aggregate did not write: count it for its minute's event.
    pub(super) fn counted(
        state: &web::Data<AppState>,
        tenant: TenantId,
        record: &Record,
        now: OffsetDateTime,
    ) {
        note(
            state,
            (tenant, record.meter, quota::minute_of(now)),
            now,
            |entry| {
                entry.attempts += 1;
                entry.units += record.units;
                entry.last_at = entry.last_at.max(now);
                entry.limits = Some(record.limits);
            },
        );
    }

    /// Update the minute's entry; the first note of a minute schedules its write.
    fn note(
        state: &web::Data<AppState>,
        key: Key,
        now: OffsetDateTime,
        update: impl FnOnce(&mut Pending),
    ) {
        let fresh = {
            let mut pending = PENDING.lock().expect("refusals lock");
            let fresh = !pending.contains_key(&key);
            update(pending.entry(key).or_insert(Pending {
                attempts: 0,
                units: 0,
                last_at: now,
                limits: None,
                first: None,
            }));
            fresh
        };
        if fresh {
            schedule(state, key);
        }
    }

    /// Write the minute's count once it is over.
    fn schedule(state: &web::Data<AppState>, key: Key) {
        let state = state.clone();
        let (_, _, minute) = key;
        let due = minute + time::Duration::seconds(61) - OffsetDateTime::now_utc();
        tokio::spawn(async move {
            tokio::time::sleep(due.try_into().unwrap_or_default()).await;
            let taken = PENDING.lock().expect("refusals lock").remove(&key);
            if let Some(p) = taken {
                write(&state, key, p).await;
            }
        });
    }

    /// Write every count not written yet, whatever its minute: a graceful stop must not lose
    /// the refused attempts of the last minute.
    pub(crate) async fn flush(state: &AppState) {
        let pending: Vec<(Key, Pending)> = PENDING.lock().expect("refusals lock").drain().collect();
        for (key, p) in pending {
            write(state, key, p).await;
        }
    }

    async fn write(state: &AppState, key: Key, p: Pending) {
        let (tenant, meter, minute) = key;
        let Some(limits) = p.limits.filter(|_| p.attempts > 0) else {
            return;
        };
        let mut meta = store::Metadata::actor("system:refusal-counter");
        if let Some(first) = p.first
            && let Ok(events) = state.store.read_positions(vec![first]).await
        {
            meta.causation_id = events.first().map(|e| e.event_id);
        }
        let command = UsageCommand::CountRefusals(quota::CountRefusals {
            meter,
            limits,
            minute,
            attempts: p.attempts,
            units: p.units,
            last_at: p.last_at,
        });
        let stream = quota::stream_id(meter, quota::Period::of(minute));
        // A passing store failure is retried a few times before the count is given up.
        for attempt in 0..3 {
            match state
                .usage
                .execute(tenant, &stream, &command, &meta, p.last_at)
                .await
            {
                Ok(_) => return,
                // Not after an unknown outcome: the executor has already repeated that append
                // with the same ids, and deciding again would count the attempts twice.
                Err(commands::ExecuteError::Store(e))
                    if e.is_transient() && !e.is_outcome_unknown() && attempt < 2 =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, %tenant, %meter, attempts = p.attempts, "refused attempts not counted");
                    return;
                }
            }
        }
    }
}

/// Write the coalesced refusal counts not written yet (at a graceful stop).
pub async fn flush_refusals(state: &AppState) {
    refusals::flush(state).await;
}

/// Publish the plan registry the settings ask for: the defaults become version 1 of an empty
/// log, and settings that differ from the latest version become the next version, effective now.
/// Several instances starting together publish once (the stream's version guards the append).
pub async fn publish_registry(
    store: &store::Store,
    desired: &domain::plans::Registry,
    now: OffsetDateTime,
) -> Result<domain::plans::Registry, String> {
    let executor = commands::Executor::<PlanRegistry>::new(
        store.clone(),
        commands::ExecutorConfig::new("plan-registry/v1"),
    );
    let command = domain::plans::Publish {
        plans: desired.all().to_vec(),
        effective_from: now,
        source: "settings".into(),
    };
    let done = executor
        .execute(
            TenantId::PLATFORM,
            domain::plans::STREAM,
            &command,
            &store::Metadata::actor("system:settings"),
            now,
        )
        .await
        .map_err(|e| e.to_string())?;
    done.state
        .latest()
        .ok_or_else(|| "the registry has no version".to_owned())
}

/// The settings with the registry version in force (published first when needed).
pub async fn with_published_registry(
    store: &store::Store,
    mut settings: crate::settings::Settings,
) -> crate::settings::Settings {
    match publish_registry(store, &settings.plans, OffsetDateTime::now_utc()).await {
        Ok(registry) => {
            tracing::info!(version = registry.version(), "plan registry in force");
            settings.plans = registry;
        }
        Err(e) => tracing::error!(error = %e, "plan registry not published"),
    }
    settings
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
            registry_version: state.settings.plans.version(),
            effective_from: state.settings.plans.effective_from().map(rfc3339),
            plans: state.settings.plans.all(),
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
        if !(1..=10_000).contains(&dto.units) {
            return Err(Problem::validation(vec![(
                "units".into(),
                "must be 1 to 10000".into(),
            )]));
        }
        let ctx = RequestContext::of(&req);
        let m = meter(
            &state,
            tenant,
            meter_kind,
            dto.units,
            None,
            &ctx.metadata(caller.actor()),
        )
        .await?;
        if !m.admitted {
            return Err(m.blocked_problem(&state.settings.public_url));
        }
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
        let mut reply = Reply::json(StatusCode::OK, &body);
        for (n, v) in m.headers(OffsetDateTime::now_utc()) {
            reply = reply.header(n, v);
        }
        Ok(reply)
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
    let now = OffsetDateTime::now_utc();
    let plan = plan_of(&state, tenant, now);
    let mut meters = BTreeMap::new();
    for m in Meter::ALL {
        let limits = state.settings.plans.get(plan).limits(*m);
        let usage = current_usage(&state, tenant, *m, now).await?;
        meters.insert(m.as_str().to_owned(), usage.view(*m, limits, now));
    }
    Ok(Reply::json(
        StatusCode::OK,
        &Quota {
            plan: plan.into(),
            meters,
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
            registry_version: state.settings.plans.version(),
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
            Some(domain::tenant::TenantEvent::PlanChangeScheduled(s)) => PlanChange {
                plan: s.from.into(),
                effective: None,
                scheduled: Some(ScheduledChange {
                    plan: s.to.into(),
                    effective_at: rfc3339(s.effective_at),
                }),
                global_position: position,
            },
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
                PlanChange {
                    plan: plan.into(),
                    effective: Some(Effective::Now),
                    scheduled: None,
                    global_position: position,
                }
            }
        };
        Ok(Reply::json(StatusCode::OK, &body))
    })
    .await
}
