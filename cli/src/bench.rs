//! `tenantry bench store`: append and read throughput of a store, printed as one JSON object;
//! `tenantry bench cold-start` (a cold executor on a long stream) and `tenantry bench startup`
//! (a server's start-up on a long log, with and without persisted projections).
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
    let record: domain::quota::UsageCommand = Record::units(Meter::Queries, 1, limits).into();
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

#[derive(Debug, Serialize)]
pub struct StartupReport {
    pub backend: &'static str,
    /// Events in the log when the servers started.
    pub events: u64,
    pub tenants: usize,
    pub write_seconds: f64,
    /// `tenantry rebuild`: every projection replayed from position 1 in one pass, offline.
    pub rebuild_seconds: f64,
    pub rebuild_events_per_sec: f64,
    /// Size of the persisted states (bytes), by projection.
    pub persisted_bytes: Vec<(String, usize)>,
    /// From opening the store to `/readyz` 200, resuming from persisted projections.
    pub startup_persisted_ms: f64,
    /// The same with the persisted states deleted: one reader replays the log from position 1.
    pub startup_from_position_1_ms: f64,
    /// The previous runtime's start-up replay (three subscriptions, each re-reading the whole
    /// log from position 1 in pages of 1,000), measured on the same log without HTTP.
    pub previous_runtime_replay_ms: f64,
    /// CPU time this process spent on each phase (user + system, all threads): on a machine
    /// shared with other work the wall times above include waiting for a core.
    pub cpu_seconds: CpuSeconds,
    /// `/proc/loadavg` (1 min) before and after the run.
    pub load_average: (f64, f64),
}

#[derive(Debug, Default, Serialize)]
pub struct CpuSeconds {
    pub rebuild: f64,
    pub startup_persisted: f64,
    pub startup_from_position_1: f64,
    pub previous_runtime_replay: f64,
}

/// CPU time of this process so far (user + system, every thread), from `/proc/self/stat`; 0 where
/// there is no `/proc`.
fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime (fields 14 and 15 of the line), in clock ticks of 1/100 s.
    (ticks(11) + ticks(12)) / 100.0
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A server for a benchmark, on its own thread, that checkpoints its projections when stopped.
struct BenchServer {
    addr: String,
    handle: actix_web::dev::ServerHandle,
    thread: std::thread::JoinHandle<()>,
}

impl BenchServer {
    fn start(location: store::Location) -> anyhow::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let store = match Store::open(&location).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let settings = api::settings::Settings {
                    listen: "127.0.0.1:0".into(),
                    store: location,
                    ..Default::default()
                };
                match api::server::start(settings, store.clone()).await {
                    Ok(running) => {
                        let _ =
                            tx.send(Ok((running.addrs[0].to_string(), running.server.handle())));
                        let _ = running.server.await;
                        running.state.projections.shutdown().await;
                        store.close().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                    }
                }
            })
        });
        let (addr, handle) = rx.recv()?.map_err(|e| anyhow::anyhow!(e))?;
        Ok(Self {
            addr,
            handle,
            thread,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.handle.stop(true).await;
        tokio::task::spawn_blocking(move || self.thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the server thread panicked"))
    }
}

/// The status code of `GET /readyz`, or 0 when the server does not answer.
fn readyz_status(addr: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return 0;
    };
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut head = [0u8; 12];
    if s.read_exact(&mut head).is_err() {
        return 0;
    }
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Start a server on `location` and time it from opening the store to `/readyz` 200: wall
/// milliseconds and this process's CPU seconds.
async fn time_to_ready(location: &store::Location) -> anyhow::Result<(f64, f64)> {
    let c0 = process_cpu_seconds();
    let started = Instant::now();
    let server = {
        let location = location.clone();
        tokio::task::spawn_blocking(move || BenchServer::start(location)).await??
    };
    let addr = server.addr.clone();
    let ready = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            if readyz_status(&addr) == 200 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    })
    .await?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let cpu = process_cpu_seconds() - c0;
    server.stop().await?;
    anyhow::ensure!(ready, "the server did not become ready within 10 minutes");
    Ok((ms, cpu))
}

/// Write the log up to `events` events: `tenants` tenants (sign-up, owner, token, as history
/// stores them) and usage events spread over them, appended by 8 writers in appends of 2,000.
async fn fill(store: &Store, events: u64, tenants: usize) -> anyhow::Result<()> {
    let head = store.head().await?;
    if head >= events {
        return Ok(());
    }
    let ids: Vec<TenantId> = (0..tenants)
        .map(|i| TenantId::from_uuid(Uuid::from_u64_pair(0x7e5a, i as u64 + 1)))
        .collect();
    let mut written = head;
    if head == 0 {
        for (i, tenant) in ids.iter().enumerate() {
            let user = Uuid::from_u64_pair(0x05e7, i as u64 + 1);
            let event = |t: &str, v: serde_json::Value| NewEvent::new(t, RawJson::from_value(&v));
            let tenant_events = vec![
                event(
                    "tenant.signed_up",
                    serde_json::json!({"name": format!("Tenant {i}"), "plan": "pro", "at": "2026-01-05T09:00:00Z"}),
                ),
                event(
                    "member.added",
                    serde_json::json!({"user_id": user, "email": format!("owner{i}@example.com"), "name": "Owner", "role": "owner"}),
                ),
                event(
                    "token.issued",
                    serde_json::json!({"user_id": user, "token_id": Uuid::from_u64_pair(0x70c, i as u64 + 1), "token_sha256": format!("{:064x}", i + 1), "expires_at": "2099-01-01T00:00:00Z"}),
                ),
            ];
            written += tenant_events.len() as u64;
            store
                .append(AppendRequest {
                    tenant_id: *tenant,
                    stream_id: domain::tenant::stream_id(*tenant),
                    expected: Expected::Any,
                    events: tenant_events,
                    metadata: Metadata::actor("bench"),
                })
                .await?;
        }
    }
    let payloads: std::sync::Arc<Vec<RawJson>> =
        std::sync::Arc::new((0..PAYLOADS).map(payload).collect());
    let remaining = events.saturating_sub(written);
    const BATCH: u64 = 2_000;
    const WRITERS: u64 = 8;
    let appends = remaining.div_ceil(BATCH);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let ids = ids.clone();
        let payloads = payloads.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < appends {
                let n = BATCH.min(remaining - i * BATCH);
                let events = (0..n)
                    .map(|k| {
                        let p = ((i * BATCH + k) % PAYLOADS) as usize;
                        NewEvent::new("usage.recorded", payloads[p].clone())
                    })
                    .collect();
                let tenant = ids[(i as usize) % ids.len()];
                store
                    .append(AppendRequest {
                        tenant_id: tenant,
                        stream_id: "usage-queries-2026-11".into(),
                        expected: Expected::Any,
                        events,
                        metadata: Metadata::actor("bench"),
                    })
                    .await?;
                i += WRITERS;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// The previous runtime's start-up: each projection its own subscription from position 1.
async fn previous_runtime_replay(store: &Store, head: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in crate::ops::all_projections() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut sub = store.subscribe(1);
            while sub.position() <= head {
                let batch = sub.next_batch().await?;
                p.apply(&batch)
                    .map_err(|u| anyhow::anyhow!("unreadable event at {}", u.position))?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

/// `tenantry bench startup`: fill the log to `events` events, rebuild every projection offline
/// (the rebuild rate) which persists their states, then time a server from opening the store to
/// `/readyz` 200 resuming from them, and again with them deleted (replay from position 1).
pub async fn startup(
    store: &Store,
    location: &store::Location,
    events: u64,
    tenants: usize,
) -> anyhow::Result<StartupReport> {
    anyhow::ensure!(tenants > 0, "--tenants must be > 0");
    let load_before = load_average();
    let mut cpu = CpuSeconds::default();
    let started = Instant::now();
    fill(store, events, tenants).await?;
    let write_seconds = started.elapsed().as_secs_f64();
    let head = store.head().await?;
    let c0 = process_cpu_seconds();
    let rebuilt = crate::ops::rebuild(store, None).await?;
    cpu.rebuild = process_cpu_seconds() - c0;
    let mut persisted_bytes = Vec::new();
    for name in &rebuilt.projections {
        if let Some(s) = store.load_projection(name).await? {
            persisted_bytes.push(((*name).to_owned(), s.state.len()));
        }
    }
    let (startup_persisted_ms, c) = time_to_ready(location).await?;
    cpu.startup_persisted = c;
    for name in &rebuilt.projections {
        store.delete_projection(name).await?;
    }
    let (startup_from_position_1_ms, c) = time_to_ready(location).await?;
    cpu.startup_from_position_1 = c;
    let c0 = process_cpu_seconds();
    let previous_runtime_replay_ms = previous_runtime_replay(store, head).await?;
    cpu.previous_runtime_replay = process_cpu_seconds() - c0;
    Ok(StartupReport {
        backend: store.backend_name(),
        events: head,
        tenants,
        write_seconds,
        rebuild_seconds: rebuilt.seconds,
        rebuild_events_per_sec: rebuilt.events_per_sec,
        persisted_bytes,
        startup_persisted_ms,
        startup_from_position_1_ms,
        previous_runtime_replay_ms,
        cpu_seconds: cpu,
        load_average: (load_before, load_average()),
    })
}
