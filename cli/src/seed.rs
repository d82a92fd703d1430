//! `tenantry seed`: a realistic, deterministic history written through the real command path
//! (the same executors and aggregates the service uses), on a simulated clock.
//!
//! Every tenant gets its own agenda, drawn from its own random generator: when it signs up
//! (spread over the weeks, more on weekdays, growing towards the end), which plan it picks,
//! whether it ever uploads a dataset or runs a query, how its team grows, how busy its analysts
//! are (sessions on weekdays, in office hours), whether it churns and when, whether it
//! downgrades. Free tenants that hit their quota are blocked and most upgrade on the spot.
//!
//! The agendas are played in simulated-time order, one simulated day at a time: every tenant
//! with something to do that day runs it (its own actions in order, tenants concurrently, so the
//! store's group commit batches them). The decisions get the simulated time as `now`, so each
//! event's `occurred_at` is its simulated time; each tenant's events are in `occurred_at` order
//! and the whole log is in order to the simulated day; `recorded_at` stays the real commit
//! time. The same seed gives the same history per stream (the interleaving of tenants within a
//! day may differ between runs).

use app::{App, Ctx};
use domain::quota::Meter;
use domain::tenant::{Plan, TenantError, TenantName};
use domain::{Email, PersonName, TenantId, TenantRole, UserId};
use fixtures::pii_corpus::Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use store::Metadata;
use time::{Duration, OffsetDateTime, Weekday};
use uuid::Uuid;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct SeedReport {
    pub tenants: usize,
    pub by_plan: BTreeMap<&'static str, usize>,
    /// Tenants that never uploaded a dataset.
    pub never_uploaded: usize,
    /// Tenants that stopped using the product before the end.
    pub churned: usize,
    pub datasets: usize,
    pub members_added: usize,
    pub queries_admitted: u64,
    pub exports_admitted: u64,
    pub blocked_attempts: u64,
    pub upgrades_after_block: usize,
    pub downgrades: usize,
    pub events: u64,
    /// The simulated calendar: `[start, end)`.
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
}

impl SeedReport {
    fn add(&mut self, o: &Outcome) {
        self.datasets += o.datasets;
        self.members_added += o.members_added;
        self.queries_admitted += o.queries_admitted;
        self.exports_admitted += o.exports_admitted;
        self.blocked_attempts += o.blocked_attempts;
        self.upgrades_after_block += o.upgrades_after_block;
        self.downgrades += o.downgrades;
    }
}

/// What one tenant's actions of one day did.
#[derive(Debug, Default)]
struct Outcome {
    datasets: usize,
    members_added: usize,
    queries_admitted: u64,
    exports_admitted: u64,
    blocked_attempts: u64,
    upgrades_after_block: usize,
    downgrades: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engagement {
    /// Signs up and never uploads.
    NeverUploads,
    /// Uploads a dataset and never queries it.
    UploadsOnly,
    Light,
    Steady,
    Heavy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    SignUp,
    Upload,
    AddMember,
    Query,
    Export,
    /// Ask for a smaller plan (effective next period).
    Downgrade,
}

/// One tenant in the simulation: who it is, its agenda and what it knows of itself.
#[derive(Debug)]
struct Sim {
    index: usize,
    tenant: TenantId,
    owner: UserId,
    rng: Rng,
    /// The plan chosen at sign-up.
    initial: Plan,
    /// The plan the tenant asked for last (a downgrade takes effect next period).
    plan: Plan,
    /// When a scheduled downgrade takes effect, and to what.
    pending: Option<(OffsetDateTime, Plan)>,
    agenda: Vec<(OffsetDateTime, Action)>,
    next: usize,
    /// When the tenant stops using the product, if it does before the end.
    churn_at: Option<OffsetDateTime>,
    datasets: Vec<Uuid>,
    members: usize,
    units: u64,
    blocked_once: bool,
}

impl Sim {
    fn next_at(&self) -> Option<OffsetDateTime> {
        self.agenda.get(self.next).map(|(at, _)| *at)
    }

    /// The plan in force at `at`.
    fn plan_at(&mut self, at: OffsetDateTime) -> Plan {
        if let Some((effective, to)) = self.pending
            && at >= effective
        {
            self.plan = to;
            self.pending = None;
        }
        self.plan
    }

    fn meta(&self) -> Metadata {
        Metadata::actor(format!("user:{}", self.owner))
    }

    /// The context of an action at `at`: the owner acts, and the ids the use case makes come from
    /// the tenant's own generator (the same seed makes the same ids).
    fn ctx(&mut self, at: OffsetDateTime) -> Ctx {
        Ctx {
            meta: self.meta(),
            now: at,
            id_seed: Some(uuid(&mut self.rng)),
        }
    }
}

fn uuid(rng: &mut Rng) -> Uuid {
    Uuid::from_u64_pair(rng.next_u64(), rng.next_u64())
}

fn chance(rng: &mut Rng, percent: usize) -> bool {
    rng.below(100) < percent
}

/// A moment in office hours (08:00–18:59 UTC) of `day`.
fn office_time(rng: &mut Rng, day: OffsetDateTime) -> OffsetDateTime {
    day + Duration::hours(8 + rng.below(11) as i64) + Duration::minutes(rng.below(60) as i64)
}

fn is_weekday(t: OffsetDateTime) -> bool {
    !matches!(t.weekday(), Weekday::Saturday | Weekday::Sunday)
}

/// Draw one tenant's agenda.
fn plan_tenant(index: usize, seed: u64, start: OffsetDateTime, weeks: u32) -> Sim {
    let mut rng = Rng::new(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add((index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)),
    );
    // Warm the generator up: nearby seeds start close together.
    for _ in 0..4 {
        rng.next_u64();
    }
    let tenant = TenantId::from_uuid(uuid(&mut rng));
    let owner = UserId::from_uuid(uuid(&mut rng));
    let days = i64::from(weeks.max(1)) * 7;
    let end = start + Duration::days(days);
    // Sign-ups grow over time (half are uniform, half lean late, so the later weeks get more)
    // and mostly fall on weekdays.
    let signup_day = loop {
        let a = rng.below(days as usize) as i64;
        let b = rng.below(days as usize) as i64;
        let offset = if chance(&mut rng, 50) { a } else { a.max(b) };
        let day = start + Duration::days(offset);
        if is_weekday(day) || chance(&mut rng, 25) {
            break day;
        }
    };
    let signup_at = office_time(&mut rng, signup_day);
    let initial = match rng.below(10) {
        0..=5 => Plan::Free,
        6..=8 => Plan::Pro,
        _ => Plan::Enterprise,
    };
    let engagement = match rng.below(100) {
        0..=17 => Engagement::NeverUploads,
        18..=27 => Engagement::UploadsOnly,
        28..=54 => Engagement::Light,
        55..=84 => Engagement::Steady,
        _ => Engagement::Heavy,
    };
    let mut agenda = vec![(signup_at, Action::SignUp)];
    // A quarter of the tenants that use the product stop before the end.
    let churn_at = (engagement != Engagement::NeverUploads && chance(&mut rng, 25))
        .then(|| signup_at + Duration::days(7 + rng.below(days as usize) as i64))
        .filter(|t| *t < end);
    let active_until = churn_at.unwrap_or(end);
    if engagement != Engagement::NeverUploads {
        for _ in 0..1 + rng.below(2) {
            let at = signup_at + Duration::minutes(20 + rng.below(48 * 60) as i64);
            agenda.push((at, Action::Upload));
        }
    }
    // Teams grow in the first weeks.
    for _ in 0..rng.below(4) {
        let day = signup_day + Duration::days(1 + rng.below(21) as i64);
        let at = office_time(&mut rng, day);
        agenda.push((at, Action::AddMember));
    }
    let (sessions_per_week, queries, exports) = match engagement {
        Engagement::NeverUploads | Engagement::UploadsOnly => (0, 0, 0),
        Engagement::Light => (2, 4, 1),
        Engagement::Steady => (4, 15, 2),
        Engagement::Heavy => (5, 60, 4),
    };
    if sessions_per_week > 0 {
        let mut day = signup_day + Duration::days(1);
        while day < active_until {
            if is_weekday(day) && rng.below(5) < sessions_per_week {
                let mut at = office_time(&mut rng, day);
                for _ in 0..queries / 2 + rng.below(queries) {
                    agenda.push((at, Action::Query));
                    at += Duration::minutes(1 + rng.below(9) as i64);
                }
                for _ in 0..rng.below(exports + 1) {
                    agenda.push((at, Action::Export));
                    at += Duration::minutes(2 + rng.below(10) as i64);
                }
            }
            day += Duration::days(1);
        }
    }
    // Paying tenants that churn move back to Free first; some light ones downgrade anyway.
    if initial != Plan::Free {
        let downgrade_at = match (churn_at, engagement) {
            (Some(t), _) => Some(t),
            (None, Engagement::Light | Engagement::UploadsOnly) if chance(&mut rng, 40) => {
                Some(signup_at + Duration::days(14 + rng.below(days as usize) as i64))
            }
            _ => None,
        };
        if let Some(at) = downgrade_at.filter(|t| *t < end) {
            agenda.push((at, Action::Downgrade));
        }
    }
    agenda.retain(|(at, _)| *at < end);
    // Stable: a tenant's actions at the same minute keep the order they were drawn in.
    agenda.sort_by_key(|(at, _)| *at);
    Sim {
        index,
        tenant,
        owner,
        rng,
        initial,
        plan: Plan::Free,
        pending: None,
        agenda,
        next: 0,
        churn_at,
        datasets: Vec::new(),
        members: 1,
        units: 0,
        blocked_once: false,
    }
}

fn failed(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Run the tenant's actions due before `until`, in order.
async fn run_until(
    app: &App,
    seed: u64,
    sim: &mut Sim,
    until: OffsetDateTime,
) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    while let Some((at, action)) = sim.agenda.get(sim.next).copied() {
        if at >= until {
            break;
        }
        sim.next += 1;
        match action {
            Action::SignUp => sign_up(app, seed, sim, at).await?,
            Action::Upload => {
                upload(app, seed, sim, at).await?;
                out.datasets += 1;
            }
            Action::AddMember => {
                if add_member(app, sim, at).await? {
                    out.members_added += 1;
                }
            }
            Action::Query | Action::Export => {
                if sim.datasets.is_empty() {
                    continue;
                }
                let meter = if action == Action::Query {
                    Meter::Queries
                } else {
                    Meter::Exports
                };
                if use_meter(app, sim, meter, at).await? {
                    match meter {
                        Meter::Queries => out.queries_admitted += 1,
                        Meter::Exports => out.exports_admitted += 1,
                    }
                } else {
                    out.blocked_attempts += 1;
                    // Most blocked Free tenants upgrade on the spot; the others wait for the
                    // next month (and keep being blocked until then).
                    if !sim.blocked_once
                        && sim.plan_at(at) == Plan::Free
                        && chance(&mut sim.rng, 60)
                    {
                        change_plan(app, sim, Plan::Pro, "blocked by the Free plan", at).await?;
                        out.upgrades_after_block += 1;
                    }
                    sim.blocked_once = true;
                }
            }
            Action::Downgrade => {
                let current = sim.plan_at(at);
                let to = match current {
                    Plan::Enterprise => Plan::Pro,
                    _ => Plan::Free,
                };
                if current != Plan::Free && change_plan(app, sim, to, "downgrade", at).await? {
                    out.downgrades += 1;
                }
            }
        }
    }
    Ok(out)
}

async fn sign_up(app: &App, seed: u64, sim: &mut Sim, at: OffsetDateTime) -> anyhow::Result<()> {
    let t = sim.index;
    let signup = app::identity::SignUp {
        tenant_name: TenantName::parse(&format!("Seed Tenant {t:04}"))?,
        email: Email::parse(&format!("owner{t}@seed.example"))?,
        name: PersonName::parse(&format!("Owner {t}"))?,
        token: Some(format!("seed-{seed}-{t}")),
    };
    // The tenant's and owner's ids come from the context's seed, drawn from the tenant's own
    // generator.
    let mut ctx = sim.ctx(at);
    ctx.id_seed = Some(*sim.tenant.as_uuid());
    let admitted = app::identity::sign_up(app, &ctx, signup)
        .await
        .map_err(failed)?;
    sim.tenant = admitted.tenant_id;
    sim.owner = admitted.user_id;
    if sim.initial != Plan::Free {
        let plan = sim.initial;
        change_plan(app, sim, plan, "chosen at sign-up", at).await?;
    }
    Ok(())
}

/// Ask for `plan`; an upgrade takes effect at once, a downgrade at the next period. False
/// when the aggregate refused it (e.g. too many members for the smaller plan's seats).
async fn change_plan(
    app: &App,
    sim: &mut Sim,
    plan: Plan,
    reason: &str,
    at: OffsetDateTime,
) -> anyhow::Result<bool> {
    let ctx = sim.ctx(at);
    match app::metering::change_plan(app, &ctx, sim.tenant, plan, Some(reason.into())).await {
        Ok(app::metering::PlanChanged::Now { .. }) => {
            sim.plan = plan;
            sim.pending = None;
            Ok(true)
        }
        Ok(app::metering::PlanChanged::Scheduled {
            to, effective_at, ..
        }) => {
            sim.plan_at(at);
            sim.pending = Some((effective_at, to));
            Ok(true)
        }
        Err(app::Error::Tenant(e)) => {
            tracing::debug!(tenant = %sim.tenant, error = %e, "plan change refused");
            Ok(false)
        }
        Err(e) => Err(failed(e)),
    }
}

async fn upload(app: &App, seed: u64, sim: &mut Sim, at: OffsetDateTime) -> anyhow::Result<()> {
    let n = sim.datasets.len();
    let csv = fixtures::pii_corpus::dataset_csv(seed ^ (sim.index as u64) << 8 ^ n as u64, 50);
    let ctx = sim.ctx(at);
    let upload = app::datasets::Upload {
        name: &format!("dataset {n}"),
        media_type: "text/csv",
        body: csv.into_bytes(),
    };
    let kept = app::datasets::upload(app, &ctx, sim.tenant, upload)
        .await
        .map_err(failed)?;
    sim.datasets.push(kept.uploaded.dataset_id);
    Ok(())
}

/// Add a member (an analyst most often); false when the plan's seats are full.
async fn add_member(app: &App, sim: &mut Sim, at: OffsetDateTime) -> anyhow::Result<bool> {
    let n = sim.members;
    let role = *sim.rng.pick(&[
        TenantRole::Analyst,
        TenantRole::Analyst,
        TenantRole::Viewer,
        TenantRole::Admin,
        TenantRole::Billing,
    ]);
    let member = app::identity::AddMember {
        email: Email::parse(&format!("member{n}.t{}@seed.example", sim.index))?,
        name: PersonName::parse(&format!("Member {n}"))?,
        role,
        token: Some(format!("seed-member-{}-{n}", sim.tenant)),
    };
    let ctx = sim.ctx(at);
    match app::identity::add_member(app, &ctx, sim.tenant, TenantRole::Owner, member).await {
        Ok(_) => {
            sim.members += 1;
            Ok(true)
        }
        Err(app::Error::Tenant(TenantError::TooManyMembers { .. })) => Ok(false),
        Err(e) => Err(failed(e)),
    }
}

/// The questions analysts ask of a seeded dataset (its columns: id, name, email, phone, city,
/// amount, quantity, day, active, note).
const QUERIES: &[&str] = &[
    "SELECT city, count(*) AS n FROM data GROUP BY city ORDER BY n DESC",
    "SELECT sum(amount), avg(quantity) FROM data WHERE active",
    "SELECT day, count(*) FROM data GROUP BY day ORDER BY day",
    "SELECT name, amount FROM data ORDER BY amount DESC LIMIT 10",
];

/// A query or an export through the service's own use case: it really runs over the dataset,
/// and its unit and fact are one append (or it is refused). True when admitted.
async fn use_meter(
    app: &App,
    sim: &mut Sim,
    meter: Meter,
    at: OffsetDateTime,
) -> anyhow::Result<bool> {
    sim.plan_at(at);
    let n = sim.units + 1;
    let dataset = sim.datasets[n as usize % sim.datasets.len()].to_string();
    let sql = QUERIES[sim.rng.below(QUERIES.len())];
    let ctx = sim.ctx(at);
    let arrived = std::time::Instant::now();
    let done = match meter {
        Meter::Queries => app::analysis::query(app, &ctx, sim.tenant, &dataset, sql, arrived)
            .await
            .map(|_| ()),
        Meter::Exports => {
            let spec = app::analysis::ExportSpec {
                dataset,
                sql: chance(&mut sim.rng, 50).then(|| sql.to_owned()),
                format: dataplane::export::Format::Csv,
                preset: None,
            };
            app::analysis::export(app, &ctx, sim.tenant, spec, arrived)
                .await
                .map(|_| ())
        }
    };
    match done {
        Ok(()) => {
            sim.units = n;
            Ok(true)
        }
        Err(app::Error::QuotaBlocked(_)) => Ok(false),
        Err(e) => Err(failed(e)),
    }
}

/// Write the history. `start` is the Monday the simulation begins on.
pub async fn seed(
    app: &App,
    tenants: usize,
    weeks: u32,
    seed: u64,
    start: OffsetDateTime,
) -> anyhow::Result<SeedReport> {
    let end = start + Duration::weeks(i64::from(weeks.max(1)));
    let mut report = SeedReport {
        tenants,
        by_plan: BTreeMap::new(),
        never_uploaded: 0,
        churned: 0,
        datasets: 0,
        members_added: 0,
        queries_admitted: 0,
        exports_admitted: 0,
        blocked_attempts: 0,
        upgrades_after_block: 0,
        downgrades: 0,
        events: 0,
        start,
        end,
    };
    let head_before = app.store.head().await?;
    let mut sims: Vec<Sim> = (0..tenants)
        .map(|i| plan_tenant(i, seed, start, weeks))
        .collect();
    for sim in &sims {
        *report.by_plan.entry(sim.initial.as_str()).or_default() += 1;
        if !sim.agenda.iter().any(|(_, a)| *a == Action::Upload) {
            report.never_uploaded += 1;
        }
        if sim.churn_at.is_some() {
            report.churned += 1;
        }
    }
    // One simulated day at a time, in order; within it, tenants run concurrently.
    let mut day = start;
    while day < end {
        let until = day + Duration::days(1);
        let due = sims
            .iter_mut()
            .filter(|s| s.next_at().is_some_and(|t| t < until))
            .map(|s| run_until(app, seed, s, until));
        for outcome in futures_util::future::join_all(due).await {
            report.add(&outcome?);
        }
        // A minute never spans two simulated days: the day's coalesced refusals are written.
        app.flush_refusals().await;
        day = until;
    }
    report.events = app.store.head().await? - head_before;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agendas_follow_the_documented_mix_of_behaviours() {
        let start = time::macros::datetime!(2026-01-05 00:00 UTC);
        let n = 2_000;
        let sims: Vec<Sim> = (0..n).map(|i| plan_tenant(i, 7, start, 12)).collect();
        let never = sims
            .iter()
            .filter(|s| !s.agenda.iter().any(|(_, a)| *a == Action::Upload))
            .count();
        let free = sims.iter().filter(|s| s.initial == Plan::Free).count();
        let queries = sims
            .iter()
            .filter(|s| s.agenda.iter().any(|(_, a)| *a == Action::Query))
            .count();
        // 18 % never upload (a few more: a late sign-up's upload falls after the end).
        assert!((300..500).contains(&never), "{never} of {n} never upload");
        assert!((1_100..1_300).contains(&free), "{free} of {n} on Free");
        assert!((1_100..1_500).contains(&queries), "{queries} of {n} query");
    }
}
