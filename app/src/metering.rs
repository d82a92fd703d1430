//! Plans and metering: the plan registry in force, units decided against a meter's quota (with
//! the fact they pay for, in one append), the look before a query or an export runs, charged
//! failures, coalesced refusals, the quota of each meter, plan changes.

use crate::{App, Counters, Ctx, Error};
use domain::dataset::DataFact;
use domain::plans::PlanRegistry;
use domain::quota::{
    self, Meter, Outcome, QuotaView, Record, UnitFact, Usage, UsageCommand, UsageEvent,
};
use domain::tenant::{self, Plan, TenantCommand, TenantEvent};
use domain::{DomainEvent, TenantId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use store::{AppendRequest, Expected, NewEvent, RawJson};
use time::OffsetDateTime;

/// The decision on some units, with the meter's state after it.
#[derive(Clone, Debug)]
pub struct Metered {
    pub admitted: bool,
    pub outcome: Outcome,
    /// The plan registry version the decision was made under.
    pub registry_version: u32,
    pub view: QuotaView,
    pub position: u64,
    pub grace_ended_at: Option<OffsetDateTime>,
    /// What `RateLimit-Policy` announces for the period: the limit, plus the grace units on a
    /// plan that blocks.
    pub quota: u64,
    /// Where the tenant upgrades.
    pub upgrade_url: String,
    /// When the decision was made.
    pub decided_at: OffsetDateTime,
}

/// The plan in force for a tenant at `now`: the identity read model's, or — when it has not
/// applied the tenant's sign-up yet — the tenant aggregate's own.
pub async fn plan_of(app: &App, tenant: TenantId, now: OffsetDateTime) -> Result<Plan, Error> {
    if let Some(view) = app.identity.tenant(tenant) {
        return Ok(view.plan_at(now));
    }
    let (state, _) = app.tenants.load(tenant, &tenant::stream_id(tenant)).await?;
    Ok(state.plan_at(now))
}

/// Decide `units` of `meter` for `tenant` under the plan registry version in force: one append,
/// guarded by the stream's version, that also holds the fact the units pay for (`pays_for`), so
/// a unit and its fact are written together or not at all.
pub async fn record_units(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    meter: Meter,
    units: u64,
    pays_for: Option<UnitFact>,
) -> Result<Metered, Error> {
    decide_units(app, ctx, tenant, meter, units, pays_for, false).await
}

/// [`record_units`] for a client's own usage (`POST /v1/usage`): a refusal is the error.
pub async fn use_units(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    meter: Meter,
    units: u64,
) -> Result<Metered, Error> {
    if !(1..=10_000).contains(&units) {
        return Err(Error::field("units", "must be 1 to 10000"));
    }
    let m = record_units(app, ctx, tenant, meter, units, None).await?;
    if m.admitted {
        Ok(m)
    } else {
        Err(Error::QuotaBlocked(Box::new(m)))
    }
}

/// Look at `meter` before a query or an export runs: a blocked tenant is refused (the refusal is
/// recorded) without running anything, and nothing is written otherwise. The unit recorded with
/// its fact after a successful run is the real guard.
pub async fn refuse_if_blocked(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    meter: Meter,
) -> Result<(), Error> {
    let m = decide_units(app, ctx, tenant, meter, 1, None, true).await?;
    if m.outcome == Outcome::Refused {
        Err(Error::QuotaBlocked(Box::new(m)))
    } else {
        Ok(())
    }
}

async fn decide_units(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    meter: Meter,
    units: u64,
    pays_for: Option<UnitFact>,
    probe: bool,
) -> Result<Metered, Error> {
    let now = ctx.now;
    let limits = app
        .config
        .plans
        .get(plan_of(app, tenant, now).await?)
        .limits(meter);
    let record = Record {
        pays_for,
        probe,
        ..Record::units(meter, units, limits)
    };
    let stream = quota::stream_id(meter, quota::Period::of(now));
    let (done, state) = app
        .usage
        .execute_with_state(
            tenant,
            &stream,
            &UsageCommand::Record(record.clone()),
            &ctx.meta,
            now,
        )
        .await?;
    let outcome = Outcome::of(&record, &done.events, &state, now);
    let grace_ended_at = done.events.iter().find_map(|e| match e {
        UsageEvent::GraceEnded(g) => Some(g.at),
        _ => None,
    });
    if outcome == Outcome::Refused {
        Counters::bump(&app.counters.blocked_attempts);
        let written = done
            .events
            .iter()
            .position(|e| matches!(e, UsageEvent::Blocked(_)));
        match (written, &done.appended) {
            (Some(i), Some(appended)) => app.refusals.first_written(
                app,
                (tenant, meter, quota::minute_of(now)),
                now,
                appended.positions.get(i).copied(),
            ),
            _ => app.refusals.counted(app, tenant, &record, now),
        }
    }
    if done
        .events
        .iter()
        .any(|e| matches!(e, UsageEvent::GraceStarted(_)))
    {
        Counters::bump(&app.counters.grace_entries);
    }
    Ok(Metered {
        admitted: outcome == Outcome::Admitted,
        outcome,
        view: {
            let mut view = state.view(meter, limits, now);
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
        position: app.committed(&done.appended),
        grace_ended_at: grace_ended_at.or(state.grace_ended_at),
        quota: limits.limit
            + if limits.blocking {
                limits.grace_units()
            } else {
                0
            },
        registry_version: limits.registry_version,
        upgrade_url: app.config.upgrade_url(),
        decided_at: now,
    })
}

/// Append a fact that needs no decision (a failure) to its stream; its position once this
/// instance's projections have it.
pub async fn record_fact(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    fact: &DataFact,
) -> Result<u64, Error> {
    let appended = app
        .store
        .append(AppendRequest {
            tenant_id: tenant,
            stream_id: fact.stream_id(),
            expected: Expected::Any,
            events: vec![
                NewEvent::new(fact.event_type(), RawJson::from_value(&fact.to_payload()))
                    .with_schema_version(fact.schema_version())
                    .occurred_at(ctx.now),
            ],
            metadata: ctx.meta.clone(),
        })
        .await?;
    // A client that reads the feed after the refusal finds the fact here.
    Ok(app.settled(&Some(appended)).await)
}

/// Record a failed query or export by the rule of ADR 015: a failure that used the service's time
/// (a timeout, an export cut by its caps) pays one unit, appended with its fact on the usage
/// stream (`usage.recorded` naming it); one that did not is appended alone on its own stream.
/// A charged failure that meets a meter admitting no unit is still recorded, without one. The
/// error to answer with is `cause`, with the meter's state when a unit was decided.
pub async fn settle_failure(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    meter: Meter,
    fact: DataFact,
    cause: Error,
) -> Error {
    let unit = match UnitFact::failure(fact) {
        Ok(unit) => unit,
        Err(free) => {
            return match record_fact(app, ctx, tenant, &free).await {
                Ok(_) => cause,
                Err(e) => e,
            };
        }
    };
    match record_units(app, ctx, tenant, meter, 1, Some(unit)).await {
        Ok(metered) => {
            app.settle(metered.position).await;
            Error::Charged {
                cause: Box::new(cause),
                metered: Box::new(metered),
            }
        }
        Err(e) => e,
    }
}

/// Refusals coalesced per tenant, meter and minute (SPEC §4 counts blocked attempts; a tenant
/// hammering a blocked meter must not grow its stream without bound). The first refusal of a
/// minute is written by the aggregate at once; the later ones are counted here and written as one
/// `usage.blocked` (with their count, caused by the first) once the minute is over — on a timer
/// (`Config::refusal_timer`), or when the caller flushes. A process that stops within that minute
/// without a graceful stop loses its uncounted attempts; they were refused and never billed.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    pending: Mutex<HashMap<Key, Pending>>,
}

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

impl Refusals {
    /// The minute's first refusal was written at `position`.
    fn first_written(&self, app: &App, key: Key, now: OffsetDateTime, position: Option<u64>) {
        self.note(app, key, now, |entry| {
            entry.first = entry.first.or(position);
        });
    }

    /// A refusal that the aggregate did not write: count it for its minute's event.
    fn counted(&self, app: &App, tenant: TenantId, record: &Record, now: OffsetDateTime) {
        self.note(
            app,
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
    fn note(&self, app: &App, key: Key, now: OffsetDateTime, update: impl FnOnce(&mut Pending)) {
        let fresh = {
            let mut pending = self.pending.lock().expect("refusals lock");
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
        if fresh && app.config.refusal_timer {
            schedule(app, key);
        }
    }

    fn take(&self, key: &Key) -> Option<Pending> {
        self.pending.lock().expect("refusals lock").remove(key)
    }

    fn drain(&self) -> Vec<(Key, Pending)> {
        self.pending
            .lock()
            .expect("refusals lock")
            .drain()
            .collect()
    }
}

/// Write the minute's count once it is over.
fn schedule(app: &App, key: Key) {
    let Some(app) = app.me() else {
        return;
    };
    let (_, _, minute) = key;
    let due = minute + time::Duration::seconds(61) - app.clock.now();
    tokio::spawn(async move {
        tokio::time::sleep(due.try_into().unwrap_or_default()).await;
        if let Some(p) = app.refusals.take(&key) {
            write_refusals(&app, key, p).await;
        }
    });
}

/// Write every count not written yet, whatever its minute.
pub(crate) async fn flush_refusals(app: &App) {
    for (key, p) in app.refusals.drain() {
        write_refusals(app, key, p).await;
    }
}

async fn write_refusals(app: &App, key: Key, p: Pending) {
    let (tenant, meter, minute) = key;
    let Some(limits) = p.limits.filter(|_| p.attempts > 0) else {
        return;
    };
    let mut meta = store::Metadata::actor("system:refusal-counter");
    if let Some(first) = p.first
        && let Ok(events) = app.store.read_positions(vec![first]).await
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
        match app
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

/// Publish the plan registry `desired`: the defaults become version 1 of an empty log, and a
/// registry that differs from the latest version becomes the next version, effective `now`.
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
    let (_, registry) = executor
        .execute_with_state(
            TenantId::PLATFORM,
            domain::plans::STREAM,
            &command,
            &store::Metadata::actor("system:settings"),
            now,
        )
        .await
        .map_err(|e| e.to_string())?;
    registry
        .latest()
        .ok_or_else(|| "the registry has no version".to_owned())
}

/// A meter's use this period, as the executor holds it.
async fn current_usage(
    app: &App,
    tenant: TenantId,
    meter: Meter,
    now: OffsetDateTime,
) -> Result<Usage, Error> {
    let stream = quota::stream_id(meter, quota::Period::of(now));
    let (usage, _) = app.usage.load(tenant, &stream).await?;
    Ok(usage)
}

/// A tenant's plan and each meter's use, limit, state, grace and reset.
#[derive(Debug)]
pub struct QuotaReport {
    pub plan: Plan,
    pub meters: BTreeMap<String, QuotaView>,
}

pub async fn quota(app: &App, tenant: TenantId, now: OffsetDateTime) -> Result<QuotaReport, Error> {
    let plan = plan_of(app, tenant, now).await?;
    let mut meters = BTreeMap::new();
    for m in Meter::ALL {
        let limits = app.config.plans.get(plan).limits(*m);
        let usage = current_usage(app, tenant, *m, now).await?;
        meters.insert(m.as_str().to_owned(), usage.view(*m, limits, now));
    }
    Ok(QuotaReport { plan, meters })
}

/// Whether any meter of the tenant refused an attempt in the 7 days before `now` (this month's
/// and last month's streams).
async fn blocked_within_a_week(app: &App, tenant: TenantId, now: OffsetDateTime) -> bool {
    let week_ago = now - time::Duration::days(7);
    for m in Meter::ALL {
        for period in [quota::Period::of(now), quota::Period::of(week_ago)] {
            if let Ok((usage, _)) = app.usage.load(tenant, &quota::stream_id(*m, period)).await
                && usage.last_blocked_at.is_some_and(|t| t >= week_ago)
            {
                return true;
            }
        }
    }
    false
}

/// What a plan change did.
#[derive(Clone, Debug)]
pub enum PlanChanged {
    /// An upgrade, in force at once (a block is lifted).
    Now { plan: Plan, position: u64 },
    /// A downgrade, in force at the next period.
    Scheduled {
        from: Plan,
        to: Plan,
        effective_at: OffsetDateTime,
        position: u64,
    },
}

/// Ask for `plan`: an upgrade applies at once and lifts a block; a downgrade is scheduled for the
/// next period (the tenant aggregate checks the seats when it is asked, and when it takes
/// effect).
pub async fn change_plan(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    plan: Plan,
    reason: Option<String>,
) -> Result<PlanChanged, Error> {
    if reason.as_deref().is_some_and(|r| r.chars().count() > 500) {
        return Err(Error::field("reason", "at most 500 characters"));
    }
    let command = TenantCommand::ChangePlan {
        plan,
        reason,
        seats: app.config.plans.get(plan).seats,
        registry_version: app.config.plans.version(),
    };
    let done = app
        .tenants
        .execute(
            tenant,
            &tenant::stream_id(tenant),
            &command,
            &ctx.meta,
            ctx.now,
        )
        .await?;
    // The new limits must apply to the very next metered request here.
    let position = app.settled(&done.appended).await;
    Ok(match done.events.first() {
        Some(TenantEvent::PlanChangeScheduled(s)) => PlanChanged::Scheduled {
            from: s.from,
            to: s.to,
            effective_at: s.effective_at,
            position,
        },
        _ => {
            Counters::bump(&app.counters.upgrades);
            if blocked_within_a_week(app, tenant, ctx.now).await {
                Counters::bump(&app.counters.upgrades_after_block);
            }
            PlanChanged::Now { plan, position }
        }
    })
}
