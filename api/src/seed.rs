//! `tenantry seed`: a realistic, deterministic history written through the real command path
//! (the same executors and aggregates the service uses). Tenants on each plan sign up over the
//! weeks, upload datasets, and run queries and exports following usage profiles; some Free tenants
//! hit their quota, are blocked, and upgrade. Simulated time goes into the decisions (`now`), so
//! sign-up dates, usage months and grace periods follow the simulated calendar; `recorded_at` stays
//! the real commit time.

use crate::server::AppState;
use domain::dataset::{self, DatasetColumn, DatasetCommand, QueryRun, Uploaded};
use domain::identity::IssuedToken;
use domain::quota::{self, Meter, Record, UsageEvent};
use domain::tenant::{self, NewMember, Plan, TenantCommand, TenantName};
use domain::{Email, PersonName, TenantId, TenantRole, UserId};
use fixtures::pii_corpus::Rng;
use serde::Serialize;
use store::{AppendRequest, Expected, Metadata, NewEvent, RawJson};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

#[derive(Debug, Default, Serialize)]
pub struct SeedReport {
    pub tenants: usize,
    pub by_plan: std::collections::BTreeMap<&'static str, usize>,
    pub datasets: usize,
    pub queries_admitted: u64,
    pub exports_admitted: u64,
    pub blocked_attempts: u64,
    pub upgrades_after_block: usize,
    pub events: u64,
}

#[derive(Clone, Copy, Debug)]
enum Profile {
    Light,
    Steady,
    Heavy,
}

fn uuid(rng: &mut Rng) -> Uuid {
    Uuid::from_u64_pair(rng.next_u64(), rng.next_u64())
}

/// Write the history. `start` is the Monday the simulation begins on.
pub async fn seed(
    state: &AppState,
    tenants: usize,
    weeks: u32,
    seed: u64,
    start: OffsetDateTime,
) -> anyhow::Result<SeedReport> {
    let mut rng = Rng::new(seed);
    let mut report = SeedReport::default();
    let head_before = state.store.head().await?;
    let mut all = Vec::new();
    for t in 0..tenants {
        let plan = match rng.below(10) {
            0..=5 => Plan::Free,
            6..=8 => Plan::Pro,
            _ => Plan::Enterprise,
        };
        let profile = match rng.below(3) {
            0 => Profile::Light,
            1 => Profile::Steady,
            _ => Profile::Heavy,
        };
        let signup_at = start + Duration::hours(rng.below((weeks.max(1) as usize) * 7 * 24) as i64);
        let tenant = TenantId::from_uuid(uuid(&mut rng));
        let owner = UserId::from_uuid(uuid(&mut rng));
        let meta = Metadata::actor(format!("user:{owner}"));
        let stream = tenant::stream_id(tenant);
        let signup = TenantCommand::SignUp {
            name: TenantName::parse(&format!("Seed Tenant {t:03}"))?,
            owner: NewMember {
                user_id: owner,
                email: Email::parse(&format!("owner{t}@seed.example"))?,
                name: PersonName::parse(&format!("Owner {t}"))?,
                role: TenantRole::Owner,
                token: IssuedToken {
                    token_id: uuid(&mut rng),
                    token_sha256: crate::tokens::sha256_hex(format!("seed-{seed}-{t}").as_bytes()),
                    expires_at: signup_at + Duration::days(30),
                },
            },
        };
        state
            .tenants
            .execute(tenant, &stream, &signup, &meta, signup_at)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if plan != Plan::Free {
            let up = TenantCommand::ChangePlan {
                plan,
                reason: Some("chosen at sign-up".into()),
                seats: state.settings.plans.get(plan).seats,
            };
            state
                .tenants
                .execute(tenant, &stream, &up, &meta, signup_at)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        *report.by_plan.entry(plan.as_str()).or_default() += 1;
        all.push((tenant, owner, plan, profile, signup_at));
    }
    report.tenants = all.len();

    for (tenant, owner, mut plan, profile, signup_at) in all {
        let meta = Metadata::actor(format!("user:{owner}"));
        // One or two datasets in the first days.
        let mut datasets = Vec::new();
        for d in 0..1 + rng.below(2) {
            let csv = fixtures::pii_corpus::dataset_csv(seed ^ (d as u64 + 1), 50);
            let described = dataplane::ingest::ingest(csv.as_bytes())?;
            let dataset_id = uuid(&mut rng);
            state
                .store
                .put_blob(tenant, &format!("ds-{dataset_id}"), csv.into_bytes())
                .await?;
            let uploaded = Uploaded {
                dataset_id,
                name: format!("dataset {d}"),
                columns: described
                    .columns
                    .iter()
                    .map(|c| DatasetColumn {
                        name: c.name.clone(),
                        kind: serde_json::to_value(c.kind)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_else(|| "text".into()),
                    })
                    .collect(),
                rows: described.rows,
                bytes: described.bytes,
                sha256: described.sha256,
            };
            let at = signup_at + Duration::hours(1 + rng.below(48) as i64);
            state
                .datasets
                .execute(
                    tenant,
                    &dataset::stream_id(dataset_id),
                    &DatasetCommand::Upload(uploaded),
                    &meta,
                    at,
                )
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            datasets.push(dataset_id);
            report.datasets += 1;
        }
        // Weekly activity from sign-up to the end of the simulation.
        let end = start + Duration::weeks(i64::from(weeks));
        let mut week_start = signup_at + Duration::days(2);
        let mut blocked_once = false;
        while week_start < end {
            let (queries, exports) = match profile {
                Profile::Light => (5 + rng.below(20), rng.below(3)),
                Profile::Steady => (40 + rng.below(80), 2 + rng.below(6)),
                Profile::Heavy => (150 + rng.below(250), 5 + rng.below(15)),
            };
            for (meter, count) in [(Meter::Queries, queries), (Meter::Exports, exports)] {
                for i in 0..count {
                    let at = week_start
                        + Duration::minutes((i as i64 * 7 * 24 * 60) / count.max(1) as i64);
                    if at >= end {
                        break;
                    }
                    let limits = state.settings.plans.get(plan).limits(meter);
                    let stream = quota::stream_id(meter, quota::Period::of(at));
                    let done = state
                        .usage
                        .execute(
                            tenant,
                            &stream,
                            &Record {
                                meter,
                                units: 1,
                                limits,
                            },
                            &meta,
                            at,
                        )
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    let admitted = done
                        .events
                        .iter()
                        .any(|e| matches!(e, UsageEvent::Recorded(_)));
                    if !admitted {
                        report.blocked_attempts += 1;
                        // Most blocked Free tenants upgrade on the spot; others wait for next month.
                        if !blocked_once && plan == Plan::Free && rng.below(10) < 6 {
                            let up = TenantCommand::ChangePlan {
                                plan: Plan::Pro,
                                reason: Some("blocked by the Free plan".into()),
                                seats: state.settings.plans.get(Plan::Pro).seats,
                            };
                            state
                                .tenants
                                .execute(tenant, &tenant::stream_id(tenant), &up, &meta, at)
                                .await
                                .map_err(|e| anyhow::anyhow!("{e}"))?;
                            plan = Plan::Pro;
                            report.upgrades_after_block += 1;
                        }
                        blocked_once = true;
                        continue;
                    }
                    let dataset_id = datasets[i % datasets.len()];
                    match meter {
                        Meter::Queries => {
                            report.queries_admitted += 1;
                            let fact = QueryRun {
                                dataset_id,
                                sql_sha256: crate::tokens::sha256_hex(
                                    format!("SELECT city, count(*) FROM data -- {i}").as_bytes(),
                                ),
                                rows: 10,
                                truncated: false,
                                elapsed_ms: 1 + rng.below(40) as u64,
                            };
                            state
                                .store
                                .append(AppendRequest {
                                    tenant_id: tenant,
                                    stream_id: dataset::QUERIES_STREAM.into(),
                                    expected: Expected::Any,
                                    events: vec![NewEvent::new(
                                        "query.run",
                                        RawJson::from_value(&fact),
                                    )],
                                    metadata: meta.clone(),
                                })
                                .await?;
                        }
                        Meter::Exports => report.exports_admitted += 1,
                    }
                }
            }
            week_start += Duration::weeks(1);
        }
    }
    report.events = state.store.head().await? - head_before;
    Ok(report)
}
