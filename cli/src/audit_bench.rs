//! `tenantry bench audit`: the audit log's costs through the service's own code (ADR 023). One
//! tenant's log is filled to N events (bulk appends of ~150-byte payloads); the `AuditTree`
//! projection alone is timed over it (its cost per event, to set against the append rate); then an
//! `app::App` starts on the store, catches up, and one bundle of the tenant's whole log is written
//! by `app::audit::bundle` — the use case `POST /v1/audit/bundles` calls — and read to the end as
//! the response would stream it.

use projections::{AuditTree, Projection};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{AppendRequest, Expected, Metadata, NewEvent, RawJson, Store};
use uuid::Uuid;

#[derive(Debug, Serialize)]
pub struct AuditBenchReport {
    pub backend: &'static str,
    pub events: u64,
    /// Bulk appends of the fill (10,000 events per append): an upper bound on the store's rate.
    pub fill_events_per_sec: f64,
    /// The tree projection alone over the whole log (reads excluded).
    pub tree_apply_ns_per_event: f64,
    /// `tree_apply_ns_per_event` as a share of one core at the fill's append rate.
    pub tree_share_of_a_core_at_fill_rate: f64,
    pub tree_persisted_bytes: usize,
    /// An `App` starting on the log with no persisted state: every projection from position 1.
    pub app_catch_up_seconds: f64,
    /// `app::audit::bundle` over the tenant's whole log: keys, checkpoint, raw re-read of every
    /// event checked against its leaf, proofs, the `.tar.gz` in a temporary file.
    pub bundle_seconds: f64,
    /// Reading the bundle's file to the end, as the response streams it.
    pub bundle_read_seconds: f64,
    pub bundle_bytes: u64,
    pub bundle_events: u64,
    pub load_average: (f64, f64),
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn payload(i: u64) -> RawJson {
    RawJson::from_value(&serde_json::json!({
        "dataset_id": Uuid::from_u64_pair(0xda7a, i),
        "name": format!("dataset {i}"),
        "rows": i % 10_000,
        "bytes": i * 17 % 1_000_000,
        "sha256": format!("{:064x}", i),
    }))
}

pub async fn run(
    store: &Store,
    config: app::Config,
    events: u64,
) -> anyhow::Result<AuditBenchReport> {
    let load_before = load_average();
    let tenant = domain::TenantId::from_uuid(Uuid::from_u64_pair(0xa0d1, 1));
    anyhow::ensure!(store.head().await? == 0, "the bench needs an empty store");
    const BATCH: u64 = 10_000;
    let started = Instant::now();
    let mut written = 0;
    while written < events {
        let n = BATCH.min(events - written);
        let batch = (written..written + n)
            .map(|i| NewEvent::new("dataset.uploaded", payload(i)))
            .collect();
        store
            .append(AppendRequest {
                tenant_id: tenant,
                stream_id: format!("bench-{}", written / BATCH),
                expected: Expected::Any,
                events: batch,
                metadata: Metadata::actor("bench"),
            })
            .await?;
        written += n;
    }
    let fill_events_per_sec = events as f64 / started.elapsed().as_secs_f64();

    let tree = AuditTree::default();
    let mut applying = Duration::ZERO;
    let mut from = 1;
    loop {
        // The tree hashes the stored bytes: read raw (ADR 032).
        let chunk = store.raw().read_all(from, 10_000).await?;
        let Some(last) = chunk.last() else { break };
        from = last.global_position + 1;
        let t = Instant::now();
        tree.apply(&chunk)
            .map_err(|u| anyhow::anyhow!("unreadable event at {}", u.position))?;
        applying += t.elapsed();
    }
    let tree_apply_ns_per_event = applying.as_secs_f64() * 1e9 / events as f64;
    let tree_persisted_bytes = tree.encode().len();
    drop(tree);

    let t = Instant::now();
    let app = app::App::start(config, store.clone(), Arc::new(app::SystemClock)).await;
    let head = store.head().await?;
    anyhow::ensure!(
        app.projections
            .wait_for(head, Duration::from_secs(3_600))
            .await,
        "the projections did not catch up"
    );
    let app_catch_up_seconds = t.elapsed().as_secs_f64();

    let ctx = app.ctx(Metadata::actor("bench"));
    let from = time::OffsetDateTime::UNIX_EPOCH;
    let to = ctx.now + time::Duration::days(1);
    let t = Instant::now();
    let bundle = app::audit::bundle(&app, &ctx, tenant, from, to)
        .await
        .map_err(|e| anyhow::anyhow!("bundle: {e}"))?;
    let bundle_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut file = bundle.file;
    let read = tokio::task::spawn_blocking(move || std::io::copy(&mut file, &mut std::io::sink()))
        .await??;
    let bundle_read_seconds = t.elapsed().as_secs_f64();
    anyhow::ensure!(read == bundle.bytes, "the bundle's file is short");
    Ok(AuditBenchReport {
        backend: store.backend_name(),
        events,
        fill_events_per_sec,
        tree_apply_ns_per_event,
        tree_share_of_a_core_at_fill_rate: tree_apply_ns_per_event * fill_events_per_sec / 1e9,
        tree_persisted_bytes,
        app_catch_up_seconds,
        bundle_seconds,
        bundle_read_seconds,
        bundle_bytes: bundle.bytes,
        bundle_events: bundle.event_count,
        load_average: (load_before, load_average()),
    })
}
