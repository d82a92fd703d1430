//! `tenantry reconcile` (SPEC §5: the raw log recounted and compared with the daily rollups and
//! the invoices, the result an event) and `tenantry bench billing` (reconciliation over N usage
//! events, invoices for T tenants, the preview of a tenant with U units this period).

use anyhow::Context;
use app::{App, Ctx};
use domain::quota::{Meter, Period, QuotaState, Recorded, UsageEvent};
use domain::tenant::{Plan, PlanChanged, SignedUp, TenantEvent, TenantName};
use domain::{DomainEvent, TenantId};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;
use store::{AppendRequest, Expected, Metadata, NewEvent, RawJson, Store};
use time::{Date, Duration, OffsetDateTime};

pub fn parse_day(raw: &str, flag: &str) -> anyhow::Result<Date> {
    Date::parse(
        raw,
        &time::macros::format_description!("[year]-[month]-[day]"),
    )
    .with_context(|| format!("{flag} {raw:?} is not YYYY-MM-DD"))
}

fn ctx(now: OffsetDateTime, actor: &str) -> Ctx {
    Ctx {
        meta: Metadata::actor(actor),
        now,
        id_seed: None,
    }
}

/// Run a reconciliation of `[from, to)` on `app` (caught up first); the report, and whether it
/// is clean.
pub async fn reconcile(
    app: &App,
    from: Date,
    to: Date,
) -> anyhow::Result<(serde_json::Value, bool)> {
    let done = app::billing::reconcile(app, &ctx(app.clock.now(), "system:reconcile"), from, to)
        .await
        .map_err(|e| anyhow::anyhow!("reconciliation failed: {e}"))?;
    let clean = done.report.clean;
    let mut v = serde_json::to_value(&done.report)?;
    v["global_position"] = done.position.into();
    v["summary"] = if clean {
        "clean: every rollup and invoice quantity equals the raw log".into()
    } else {
        format!("{} differences", done.report.differences.len()).into()
    };
    Ok((v, clean))
}

#[derive(Debug, Serialize)]
pub struct BillingBench {
    pub usage_events: u64,
    pub tenants: u64,
    pub preview_units: u64,
    pub write_seconds: f64,
    pub catch_up_seconds: f64,
    pub preview_ms: f64,
    pub preview_total_minor: i64,
    pub reconcile_seconds: f64,
    pub reconcile_events_read: u64,
    pub reconcile_clean: bool,
    pub finalize_seconds: f64,
    pub invoices_finalized: usize,
}

fn event(e: &impl DomainEvent, at: OffsetDateTime) -> NewEvent {
    NewEvent::new(e.event_type(), RawJson::from_value(&e.to_payload()))
        .with_schema_version(e.schema_version())
        .occurred_at(at)
}

/// Write `tenants` Pro tenants and `usage_events` units in March 2026 (tenant 0 gets
/// `preview_units` of them), then measure a preview, a reconciliation and the finalization.
pub async fn bench(
    store: &Store,
    config: app::Config,
    usage_events: u64,
    tenants: u64,
    preview_units: u64,
) -> anyhow::Result<BillingBench> {
    let period = Period {
        year: 2026,
        month: 3,
    };
    let start = period.start();
    let month = (period.end() - start).whole_seconds();
    let t0 = Instant::now();
    let ids: Vec<TenantId> = (0..tenants)
        .map(|i| TenantId::from_uuid(uuid::Uuid::from_u128(0xB111_0000_0000 + u128::from(i))))
        .collect();
    // Tenants: signed up in February, Pro from then on.
    for chunk in ids.chunks(500) {
        let mut jobs = Vec::new();
        for t in chunk {
            let (store, t) = (store.clone(), *t);
            let at = start - Duration::days(20);
            jobs.push(tokio::spawn(async move {
                let events = vec![
                    event(
                        &TenantEvent::SignedUp(SignedUp {
                            name: TenantName::parse("Bench tenant").expect("valid"),
                            plan: Plan::Free,
                            at,
                        }),
                        at,
                    ),
                    event(
                        &TenantEvent::PlanChanged(PlanChanged {
                            from: Plan::Free,
                            to: Plan::Pro,
                            at,
                            reason: None,
                            registry_version: Some(1),
                        }),
                        at,
                    ),
                ];
                store
                    .append(AppendRequest {
                        tenant_id: t,
                        stream_id: domain::tenant::stream_id(t),
                        expected: Expected::Any,
                        events,
                        metadata: Metadata::actor("bench"),
                    })
                    .await
            }));
        }
        for j in jobs {
            j.await??;
        }
    }
    // Usage: tenant 0 gets `preview_units` events, the rest is spread over the others.
    let per_other = if tenants > 1 {
        usage_events.saturating_sub(preview_units) / (tenants - 1)
    } else {
        0
    };
    let plan = (0..tenants).map(|i| {
        (
            ids[i as usize],
            if i == 0 { preview_units } else { per_other },
        )
    });
    let mut written = 0u64;
    let mut pending = Vec::new();
    for (t, n) in plan {
        let mut used = 0u64;
        while used < n {
            let batch = (n - used).min(10_000);
            let events: Vec<NewEvent> = (0..batch)
                .map(|k| {
                    used += 1;
                    let at = start + Duration::seconds((used as i64 * 7_919 + k as i64) % month);
                    event(
                        &UsageEvent::Recorded(Recorded {
                            meter: Meter::Queries,
                            period,
                            units: 1,
                            used,
                            plan: Plan::Pro,
                            limit: 20_000,
                            state: QuotaState::Ok,
                            registry_version: Some(1),
                            pays_for: None,
                        }),
                        at,
                    )
                })
                .collect();
            let store = store.clone();
            pending.push(tokio::spawn(async move {
                store
                    .append(AppendRequest {
                        tenant_id: t,
                        stream_id: domain::quota::stream_id(Meter::Queries, period),
                        expected: Expected::Any,
                        events,
                        metadata: Metadata::actor("bench"),
                    })
                    .await
            }));
            written += batch;
            if pending.len() >= 8 {
                for j in pending.drain(..) {
                    j.await??;
                }
            }
        }
    }
    for j in pending {
        j.await??;
    }
    let write_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let clock = Arc::new(app::FixedClock(start + Duration::days(20)));
    let app = App::start(config, store.clone(), clock).await;
    anyhow::ensure!(
        app.projections
            .catch_up(std::time::Duration::from_secs(3_600))
            .await,
        "the projections did not catch up"
    );
    let catch_up_seconds = t1.elapsed().as_secs_f64();

    let t2 = Instant::now();
    let preview = app::billing::preview(&app, ids[0], start + Duration::days(20))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let preview_ms = t2.elapsed().as_secs_f64() * 1e3;

    let t3 = Instant::now();
    let (report, clean) = reconcile(&app, start.date(), period.end().date()).await?;
    let reconcile_seconds = t3.elapsed().as_secs_f64();

    let t4 = Instant::now();
    let done = app::billing::finalize_period(
        &app,
        &ctx(period.end() + Duration::days(2), "bench"),
        period,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let finalize_seconds = t4.elapsed().as_secs_f64();
    app.projections.stop();
    Ok(BillingBench {
        usage_events: written,
        tenants,
        preview_units,
        write_seconds,
        catch_up_seconds,
        preview_ms,
        preview_total_minor: preview.invoice.total,
        reconcile_seconds,
        reconcile_events_read: report["events_read"].as_u64().unwrap_or(0),
        reconcile_clean: clean,
        finalize_seconds,
        invoices_finalized: done.finalized.len(),
    })
}
