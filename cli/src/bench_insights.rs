//! `tenantry bench insights`: on a store that holds a history (a seed), rebuild the insights and
//! first-success read models from position 1 (events/s), then answer the funnel, the cohorts and
//! every user's onboarding view from them, timed (issue 14's numbers).

use serde::Serialize;
use std::time::Instant;
use store::Store;

#[derive(Debug, Serialize)]
pub struct InsightsReport {
    pub backend: &'static str,
    pub events: u64,
    pub tenants: usize,
    pub users: usize,
    /// `tenantry rebuild insights` and `tenantry rebuild first_success`, each from position 1.
    pub rebuild_insights_events_per_sec: f64,
    pub rebuild_first_success_events_per_sec: f64,
    pub funnel_ms: Percentiles,
    pub cohorts_ms: Percentiles,
    /// `GET /v1/onboarding`'s work for one user (resume payload and nudge), over every user.
    pub onboarding_view_ms: Percentiles,
}

#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub runs: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

pub fn percentiles(mut ms: Vec<f64>) -> Percentiles {
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1];
    Percentiles {
        runs: ms.len(),
        p50: at(0.50),
        p99: at(0.99),
        max: *ms.last().unwrap_or(&0.0),
    }
}

fn timed<T>(runs: usize, mut f: impl FnMut(usize) -> T) -> Percentiles {
    let ms = (0..runs)
        .map(|i| {
            let t = Instant::now();
            std::hint::black_box(f(i));
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    percentiles(ms)
}

pub async fn insights(store: &Store, config: app::Config) -> anyhow::Result<InsightsReport> {
    let events = store.head().await?;
    let insights = crate::ops::rebuild(store, Some("insights")).await?;
    let first_success = crate::ops::rebuild(store, Some("first_success")).await?;
    let app = app::App::start(config, store.clone(), std::sync::Arc::new(app::SystemClock)).await;
    anyhow::ensure!(
        app.projections
            .catch_up(std::time::Duration::from_secs(600))
            .await,
        "the projections did not catch up"
    );
    let now = app.clock.now();
    let ask = app::insights::FunnelAsk {
        window_days: None,
        signed_up_from: None,
        signed_up_to: None,
    };
    let funnel_ms = timed(200, |_| app::insights::funnel(&app, ask));
    let cohorts_ms = timed(200, |_| {
        app::insights::cohorts(&app, domain::insights::Retention::On, None, now)
    });
    let users = app.first_success.users();
    anyhow::ensure!(!users.is_empty(), "the store holds no users: seed it first");
    let onboarding_view_ms = timed(users.len().min(20_000), |i| {
        let (tenant, user) = users[i];
        app::onboarding::view(&app, tenant, domain::UserId::from_uuid(user), now)
    });
    let tenants = app.insights.journeys().len();
    app.projections.stop();
    Ok(InsightsReport {
        backend: store.backend_name(),
        events,
        tenants,
        users: users.len(),
        rebuild_insights_events_per_sec: insights.events_per_sec,
        rebuild_first_success_events_per_sec: first_success.events_per_sec,
        funnel_ms,
        cohorts_ms,
        onboarding_view_ms,
    })
}
