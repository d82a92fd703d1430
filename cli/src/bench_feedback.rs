//! `tenantry bench feedback`: submissions through the use case (`app::feedback::submit`, the work
//! of `POST /v1/feedback` without HTTP) from many members at once, then the triage board's
//! filtered list over N items fed to the read model as the log would feed it (issue 13's numbers).

use crate::bench_insights::{Percentiles, percentiles};
use domain::DomainEvent;
use domain::feedback::{FeedbackEvent, Severity, Submitted};
use projections::{FeedbackBoard, FeedbackFilter, Projection};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use store::{Envelope, RawJson, Store};

#[derive(Debug, Serialize)]
pub struct FeedbackReport {
    pub backend: &'static str,
    pub members: usize,
    pub concurrency: usize,
    pub submitted: u64,
    pub submits_per_sec: f64,
    pub board_items: usize,
    /// The board's filtered list (tenant + severity + text, 50 a page), over `board_items`.
    pub list_tenant_severity_text_ms: Percentiles,
    /// The same across every tenant (platform staff), severity + text.
    pub list_platform_severity_text_ms: Percentiles,
}

const SCREENS: [&str; 5] = ["home", "exports", "datasets", "queries", "billing"];

pub async fn feedback(
    store: &Store,
    config: app::Config,
    seconds: u64,
    concurrency: usize,
    items: usize,
) -> anyhow::Result<FeedbackReport> {
    let app = app::App::start(config, store.clone(), Arc::new(app::SystemClock)).await;
    // One member per concurrent client, each in a tenant of its own.
    let mut members = Vec::new();
    for i in 0..concurrency {
        let ctx = app.ctx(store::Metadata::actor("bench:feedback"));
        let signed = app::identity::sign_up(
            &app,
            &ctx,
            app::identity::SignUp {
                tenant_name: domain::tenant::TenantName::parse(&format!("Bench {i}"))?,
                email: domain::Email::parse(&format!("bench{i}@example.com"))?,
                name: domain::PersonName::parse("Bench")?,
                token: None,
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        members.push((signed.tenant_id, signed.user_id));
    }
    let submitted = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (tenant, user) in members.clone() {
        let (app, submitted) = (app.clone(), submitted.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                let ctx = app.ctx(store::Metadata::actor(format!("user:{user}")));
                let ids = app::feedback::RequestIds {
                    request_id: format!("bench-{n}"),
                    trace_id: format!("{:032x}", n + 1),
                };
                let s = app::feedback::Submission {
                    message: format!(
                        "The export of report {n} fails; call me on +44 20 7946 0958 or mail ada@example.com"
                    ),
                    screen: SCREENS[n as usize % SCREENS.len()].into(),
                    step: "export".into(),
                    severity: Severity::ALL[n as usize % Severity::ALL.len()],
                    category: None,
                    diagnostics: true,
                };
                app::feedback::submit(&app, &ctx, tenant, user, &ids, s)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                n += 1;
                submitted.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let submitted = submitted.load(Ordering::Relaxed);
    app.projections.stop();

    // The board, fed `items` submissions across 100 tenants in commit order.
    let board = FeedbackBoard::default();
    let tenants: Vec<domain::TenantId> = (0..100u128)
        .map(|t| domain::TenantId::from_uuid(uuid::Uuid::from_u128(t + 1)))
        .collect();
    let now = time::OffsetDateTime::now_utc();
    let mut batch = Vec::with_capacity(10_000);
    for k in 0..items {
        let id = uuid::Uuid::from_u128(k as u128 + 1);
        let event = FeedbackEvent::Submitted(Box::new(Submitted {
            feedback_id: id,
            message: Some(format!(
                "the export of report {k} fails with a {}",
                if k % 7 == 0 { "timeout" } else { "crash" }
            )),
            screen: SCREENS[k % SCREENS.len()].into(),
            step: "main".into(),
            severity: Severity::ALL[k % Severity::ALL.len()],
            category: None,
            diagnostics: None,
        }));
        batch.push(Envelope {
            global_position: k as u64 + 1,
            tenant_id: tenants[k % tenants.len()],
            stream_id: domain::feedback::stream_id(id),
            stream_version: 1,
            event_id: id,
            event_type: event.event_type().into(),
            schema_version: event.schema_version(),
            occurred_at: now,
            recorded_at: now,
            actor: "user:bench".into(),
            correlation_id: id,
            causation_id: None,
            trace_id: None,
            payload: RawJson::from_value(&event.to_payload()),
        });
        if batch.len() == 10_000 || k + 1 == items {
            board
                .apply(&batch)
                .map_err(|u| anyhow::anyhow!("{}: {}", u.event_type, u.reason))?;
            store
                .put_projection_rows("feedback", board.take_rows())
                .await?;
            board.rows_stored();
            batch.clear();
        }
    }
    let tenant_filter = FeedbackFilter {
        tenant: Some(tenants[7]),
        severity: Some(Severity::ALL[2]),
        text: Some("timeout".into()),
        ..FeedbackFilter::default()
    };
    let platform_filter = FeedbackFilter {
        tenant: None,
        ..tenant_filter.clone()
    };
    Ok(FeedbackReport {
        backend: store.backend_name(),
        members: members.len(),
        concurrency,
        submitted,
        submits_per_sec: submitted as f64 / elapsed,
        board_items: items,
        list_tenant_severity_text_ms: time_list(&board, store, tenant_filter).await?,
        list_platform_severity_text_ms: time_list(&board, store, platform_filter).await?,
    })
}

/// The board's first page of `filter` (50 items, their submissions read from the store), 200
/// times.
async fn time_list(
    board: &FeedbackBoard,
    store: &Store,
    filter: FeedbackFilter,
) -> anyhow::Result<Percentiles> {
    let mut ms = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        std::hint::black_box(board.list(store, &filter, None, 50).await?);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(percentiles(ms))
}
