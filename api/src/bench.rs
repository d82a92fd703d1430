//! `tenantry bench store`: append and read throughput of a store, printed as one JSON object.
//!
//! N writer tasks share `events` events between them, appending `batch` events per call to
//! streams spread over 20 tenants (`Expected::Any`, so the numbers measure the store, not
//! conflicts). Then the log written by the run is read back with `read_all`.

use domain::TenantId;
use serde::Serialize;
use std::time::{Duration, Instant};
use store::{AppendRequest, Expected, Metadata, NewEvent, RawJson, Store};
use uuid::Uuid;

#[derive(Clone, Debug)]
pub struct StoreBench {
    pub writers: usize,
    pub events: u64,
    pub batch: usize,
}

#[derive(Debug, Serialize)]
pub struct StoreBenchReport {
    pub backend: &'static str,
    pub writers: usize,
    pub batch: usize,
    pub appends: u64,
    pub events: u64,
    pub seconds: f64,
    pub appends_per_sec: f64,
    pub events_per_sec: f64,
    pub append_latency_ms: Latency,
    pub read_all_events: u64,
    pub read_all_events_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

const TENANTS: usize = 20;
const STREAMS_PER_TENANT: u64 = 50;
const READ_PAGE: usize = 10_000;
const PAYLOADS: u64 = 4_096;

/// A realistic small payload (~120 bytes), varying per event.
fn payload(n: u64) -> RawJson {
    RawJson::parse(format!(
        r#"{{"meter":"queries","units":1,"dataset_id":"ds-{:08}","request_id":"{}","n":{n}}}"#,
        n % 977,
        Uuid::from_u64_pair(n, n.rotate_left(17))
    ))
    .expect("valid JSON")
}

pub async fn run(store: &Store, cfg: &StoreBench) -> anyhow::Result<StoreBenchReport> {
    anyhow::ensure!(
        cfg.writers > 0 && cfg.batch > 0 && cfg.events > 0,
        "all sizes must be > 0"
    );
    let start_head = store.head().await?;
    let appends_total = cfg.events.div_ceil(cfg.batch as u64);
    let tenants: Vec<TenantId> = (0..TENANTS)
        .map(|_| TenantId::from_uuid(Uuid::new_v4()))
        .collect();
    // Payloads are made before the clock starts (and shared: a payload is an `Arc<str>`), so the
    // load generator spends its CPU on appending, not on formatting JSON.
    let payloads: std::sync::Arc<Vec<RawJson>> =
        std::sync::Arc::new((0..PAYLOADS).map(payload).collect());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..cfg.writers {
        let store = store.clone();
        let tenants = tenants.clone();
        let payloads = payloads.clone();
        let batch = cfg.batch;
        let writers = cfg.writers as u64;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = w as u64;
            while i < appends_total {
                let tenant = tenants[(i as usize) % TENANTS];
                let events = (0..batch as u64)
                    .map(|k| {
                        let n = (i * batch as u64 + k) as usize % PAYLOADS as usize;
                        NewEvent::new("usage.recorded", payloads[n].clone())
                    })
                    .collect();
                let request = AppendRequest {
                    tenant_id: tenant,
                    stream_id: format!("usage-{}", (i / TENANTS as u64) % STREAMS_PER_TENANT),
                    expected: Expected::Any,
                    events,
                    metadata: Metadata::actor("bench"),
                };
                let t0 = Instant::now();
                store.append(request).await?;
                latencies.push(t0.elapsed());
                i += writers;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(appends_total as usize);
    for t in tasks {
        latencies.extend(t.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let appends = latencies.len() as u64;
    let events = appends * cfg.batch as u64;

    let read_started = Instant::now();
    let mut next = start_head + 1;
    let mut read = 0u64;
    loop {
        let page = store.read_all(next, READ_PAGE).await?;
        read += page.len() as u64;
        match page.last() {
            Some(last) => next = last.global_position + 1,
            None => break,
        }
        if page.len() < READ_PAGE {
            break;
        }
    }
    let read_seconds = read_started.elapsed().as_secs_f64();

    Ok(StoreBenchReport {
        backend: store.backend_name(),
        writers: cfg.writers,
        batch: cfg.batch,
        appends,
        events,
        seconds,
        appends_per_sec: appends as f64 / seconds,
        events_per_sec: events as f64 / seconds,
        append_latency_ms: Latency {
            p50: percentile_ms(&latencies, 0.50),
            p99: percentile_ms(&latencies, 0.99),
            max: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        },
        read_all_events: read,
        read_all_events_per_sec: read as f64 / read_seconds,
    })
}

/// The nearest-rank percentile of sorted durations, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

#[derive(Debug, Serialize)]
pub struct ColdStartReport {
    pub backend: &'static str,
    pub usage_events: u64,
    pub write_seconds: f64,
    /// A fresh executor (empty cache) deciding the next unit: snapshot plus tail.
    pub decide_with_snapshot_ms: f64,
    /// The same without a snapshot: the whole stream replayed.
    pub decide_without_snapshot_ms: f64,
}

/// An Enterprise tenant with `events` usage events in one month's stream; then the next unit is
/// decided by a cold executor, from the latest snapshot (as a running service keeps them) and,
/// for comparison, from nothing.
pub async fn cold_start(store: &Store, events: u64) -> anyhow::Result<ColdStartReport> {
    use commands::{Executor, ExecutorConfig};
    use domain::quota::{Meter, Period, Record, Usage, stream_id};
    use domain::{Aggregate, DomainEvent, plans, tenant::Plan};
    let tenant = TenantId::from_uuid(Uuid::new_v4());
    let now = time::OffsetDateTime::now_utc();
    let stream = stream_id(Meter::Queries, Period::of(now));
    let limits = plans::definition(Plan::Enterprise).limits(Meter::Queries);
    let record = Record {
        meter: Meter::Queries,
        units: 1,
        limits,
    };
    let mut state = Usage::default();
    let started = Instant::now();
    let mut version = 0u64;
    while version < events {
        let mut batch = Vec::with_capacity(5_000);
        while batch.len() < 5_000 && version + (batch.len() as u64) < events {
            for e in state.decide(&record, now)? {
                state.evolve(&e);
                batch.push(NewEvent::new(
                    e.event_type(),
                    RawJson::from_value(&e.to_payload()),
                ));
            }
        }
        let appended = store
            .append(AppendRequest {
                tenant_id: tenant,
                stream_id: stream.clone(),
                expected: if version == 0 {
                    Expected::NoStream
                } else {
                    Expected::Exact(version)
                },
                events: batch,
                metadata: Metadata::actor("bench"),
            })
            .await?;
        version = appended.stream_version;
    }
    store
        .save_snapshot(store::Snapshot {
            tenant_id: tenant,
            stream_id: stream.clone(),
            kind: "usage/v1".into(),
            version: version - version % 1_000,
            state: {
                // The snapshot a running executor would have taken at the last multiple of 1000.
                let mut s = Usage::default();
                let tail = store.read_stream(tenant, &stream, 1, usize::MAX).await?;
                for e in tail.iter().take((version - version % 1_000) as usize) {
                    s.evolve(&domain::quota::UsageEvent::from_stored(
                        &e.event_type,
                        e.schema_version,
                        e.payload.as_bytes(),
                    )?);
                }
                serde_json::to_vec(&s)?
            },
        })
        .await?;
    let write_seconds = started.elapsed().as_secs_f64();
    let decide = |kind: &'static str| {
        let store = store.clone();
        let stream = stream.clone();
        let record = record.clone();
        async move {
            let ex = Executor::<Usage>::new(store, ExecutorConfig::new(kind));
            let t0 = Instant::now();
            ex.execute(
                tenant,
                &stream,
                &record,
                &Metadata::actor("bench"),
                time::OffsetDateTime::now_utc(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::Ok(t0.elapsed().as_secs_f64() * 1e3)
        }
    };
    let with_snapshot = decide("usage/v1").await?;
    // A snapshot kind that does not exist: the executor replays the whole stream.
    let without_snapshot = decide("usage/none").await?;
    Ok(ColdStartReport {
        backend: store.backend_name(),
        usage_events: version,
        write_seconds,
        decide_with_snapshot_ms: with_snapshot,
        decide_without_snapshot_ms: without_snapshot,
    })
}
