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
    /// What the events are (`usage`: the default; `member`: `member.added`-shaped payloads
    /// under a type with no personal fields; `member-sealed`: `member.added`, sealed, ADR 032).
    pub payload: BenchPayload,
}

/// The payloads `tenantry bench store` appends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchPayload {
    Usage,
    Member,
    MemberSealed,
}

/// Members per tenant in the member payloads: their keys are made once, then cached.
const MEMBERS_PER_TENANT: u64 = 100;

/// A `member.added` payload (~150 bytes) of one of `MEMBERS_PER_TENANT` users.
fn member_payload(n: u64) -> RawJson {
    let user = Uuid::from_u64_pair(0x7e57, n % MEMBERS_PER_TENANT);
    RawJson::parse(format!(
        r#"{{"user_id":"{user}","email":"user{:03}@example.test","name":"User Number {n}","role":"analyst"}}"#,
        n % MEMBERS_PER_TENANT
    ))
    .expect("valid JSON")
}

#[derive(Debug, Serialize)]
pub struct StoreBenchReport {
    pub backend: &'static str,
    pub payload: BenchPayload,
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
    let payloads: std::sync::Arc<Vec<RawJson>> = std::sync::Arc::new(match cfg.payload {
        BenchPayload::Usage => (0..PAYLOADS).map(payload).collect(),
        BenchPayload::Member | BenchPayload::MemberSealed => {
            (0..PAYLOADS).map(member_payload).collect()
        }
    });
    let event_type = match cfg.payload {
        BenchPayload::Usage => "usage.recorded",
        BenchPayload::Member => "member.noted",
        BenchPayload::MemberSealed => "member.added",
    };
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
                        NewEvent::new(event_type, payloads[n].clone())
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
        payload: cfg.payload,
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

/// `tenantry bench noisy`: tenant A uploads a wide CSV and saturates exports of it (and their
/// downloads) from more clients than its fair share allows, retrying 429s after a short pause;
/// tenant B runs a small query at a steady rate. Both against the server at `addr`, which runs in
/// this process, so that `VmHWM` is the server's peak memory.
#[derive(Clone, Debug)]
pub struct NoisyBench {
    /// Size of A's CSV, in MB (10^6 bytes).
    pub mb: usize,
    /// Columns of A's CSV.
    pub columns: usize,
    pub seconds: f64,
    /// A's concurrent export clients.
    pub a_clients: usize,
    /// B's queries per second.
    pub b_rate: f64,
}

#[derive(Debug, Serialize)]
pub struct NoisyReport {
    pub backend: String,
    pub csv_bytes: usize,
    pub csv_columns: usize,
    pub csv_rows: usize,
    pub upload_seconds: f64,
    pub seconds: f64,
    pub a: NoisyA,
    pub b: NoisyB,
    /// This process's resident memory before A's upload (MiB).
    pub rss_start_mib: f64,
    /// The highest resident memory of the process (`VmHWM`, MiB): server and load together.
    pub rss_peak_mib: f64,
    /// Resident memory at the end of the run (MiB).
    pub rss_end_mib: f64,
    /// `/proc/loadavg` (1 min) before and after the run.
    pub load_average: (f64, f64),
}

#[derive(Debug, Default, Serialize)]
pub struct NoisyA {
    pub clients: usize,
    pub exports_ok: u64,
    pub exports_per_sec: f64,
    pub export_bytes: u64,
    pub downloads_ok: u64,
    /// 429 `too-many-concurrent`: backpressure, not errors.
    pub refused_429: u64,
    pub errors: u64,
    pub export_latency_ms: Option<Latency>,
}

#[derive(Debug, Serialize)]
pub struct NoisyB {
    pub queries: u64,
    pub errors: u64,
    pub latency_ms: Latency,
}

/// A blocking keep-alive HTTP/1.1 client, enough for the bench: Content-Length or chunked
/// answers; a body can be read into a sink without keeping it.
struct Client {
    stream: std::io::BufReader<std::net::TcpStream>,
    addr: String,
}

impl Client {
    fn open(addr: &str) -> anyhow::Result<Self> {
        let stream = std::net::TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream: std::io::BufReader::new(stream),
            addr: addr.to_owned(),
        })
    }

    /// Send a request; answer the status and the body (kept when `keep`, otherwise counted).
    fn call(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, &[u8])>,
        keep: bool,
    ) -> anyhow::Result<(u16, Vec<u8>, u64)> {
        use std::io::{BufRead, Read, Write};
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = body.unwrap_or(("application/json", b""));
        head.push_str(&format!(
            "Content-Type: {}\r\nContent-Length: {}\r\n\r\n",
            body.0,
            body.1.len()
        ));
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body.1)?;
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad status line {line:?}"))?;
        let (mut length, mut chunked) = (0u64, false);
        loop {
            line.clear();
            self.stream.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.trim().eq_ignore_ascii_case("chunked");
                }
            }
        }
        let mut kept = Vec::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        let mut take =
            |r: &mut std::io::BufReader<std::net::TcpStream>, mut n: u64| -> anyhow::Result<()> {
                while n > 0 {
                    let want = n.min(buf.len() as u64) as usize;
                    r.read_exact(&mut buf[..want])?;
                    if keep {
                        kept.extend_from_slice(&buf[..want]);
                    }
                    total += want as u64;
                    n -= want as u64;
                }
                Ok(())
            };
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line)?;
                let size = u64::from_str_radix(line.trim(), 16)?;
                take(&mut self.stream, size)?;
                line.clear();
                self.stream.read_line(&mut line)?;
                if size == 0 {
                    break;
                }
            }
        } else {
            take(&mut self.stream, length)?;
        }
        Ok((status, kept, total))
    }

    fn json(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let body = serde_json::to_vec(body)?;
        let (status, answer, _) =
            self.call(method, path, token, Some(("application/json", &body)), true)?;
        Ok((
            status,
            serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null),
        ))
    }
}

/// A `/proc/self/status` field in MiB (0 where there is no `/proc`).
fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A wide CSV of about `bytes` bytes and `columns` columns: an id, then short numbers, short
/// words and an email every tenth column (the default preset scrubs it). Answers the CSV and its
/// row count.
fn wide_csv(bytes: usize, columns: usize) -> (Vec<u8>, usize) {
    use std::io::Write;
    let mut out = Vec::with_capacity(bytes + 4096);
    let header: Vec<String> = (0..columns).map(|c| format!("c{c}")).collect();
    out.extend_from_slice(header.join(",").as_bytes());
    out.push(b'\n');
    let mut rows = 0;
    while out.len() < bytes {
        let r = rows as u64;
        let _ = write!(out, "{r}");
        for c in 1..columns as u64 {
            let _ = match c % 10 {
                0 => write!(out, ",u{}@example.com", (r * 7 + c) % 100_000),
                1 | 4 | 7 => write!(out, ",w{}", (r + c) % 997),
                _ => write!(out, ",{}", (r * 31 + c) % 1_000),
            };
        }
        out.push(b'\n');
        rows += 1;
    }
    (out, rows)
}

fn signup(c: &mut Client, name: &str) -> anyhow::Result<String> {
    let (status, v) = c.json(
        "POST",
        "/v1/signup",
        None,
        &serde_json::json!({"tenant_name": name, "email": format!("{}@bench.example", name.to_lowercase()), "name": name}),
    )?;
    anyhow::ensure!(status == 201, "sign-up failed: {status} {v}");
    let token = v["token"].as_str().unwrap_or_default().to_owned();
    let (status, v) = c.json(
        "POST",
        "/v1/tenant/plan",
        Some(&token),
        &serde_json::json!({"plan": "enterprise"}),
    )?;
    anyhow::ensure!(status == 200, "upgrade failed: {status} {v}");
    Ok(token)
}

fn upload(c: &mut Client, token: &str, name: &str, csv: &[u8]) -> anyhow::Result<String> {
    let (status, body, _) = c.call(
        "POST",
        &format!("/v1/datasets?name={name}"),
        Some(token),
        Some(("text/csv", csv)),
        true,
    )?;
    anyhow::ensure!(
        status == 201,
        "upload failed: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(v["dataset_id"].as_str().unwrap_or_default().to_owned())
}

/// Run the noisy-neighbour bench against the server at `addr` (in this process).
pub fn noisy(addr: &str, backend: String, cfg: &NoisyBench) -> anyhow::Result<NoisyReport> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    anyhow::ensure!(
        cfg.mb > 0
            && cfg.columns >= 2
            && cfg.seconds > 0.0
            && cfg.a_clients > 0
            && cfg.b_rate > 0.0,
        "sizes must be > 0"
    );
    let load_before = load_average();
    let rss_start_mib = status_mib("VmRSS:");
    let mut c = Client::open(addr)?;
    let a = signup(&mut c, "Noisy")?;
    let b = signup(&mut c, "Quiet")?;
    let (csv, csv_rows) = wide_csv(cfg.mb * 1_000_000, cfg.columns);
    let started = Instant::now();
    let a_data = upload(&mut c, &a, "wide", &csv)?;
    let upload_seconds = started.elapsed().as_secs_f64();
    let csv_bytes = csv.len();
    drop(csv);
    let mut small = String::from("id,city,amount\n");
    for i in 0..200 {
        small.push_str(&format!("{i},city {},{}\n", i % 17, i * 3));
    }
    let b_data = upload(&mut c, &b, "small", small.as_bytes())?;
    // Load A's table before the clock starts, as a running service would have it.
    let (status, v) = c.json(
        "POST",
        &format!("/v1/datasets/{a_data}/query"),
        Some(&a),
        &serde_json::json!({"sql": "SELECT count(*) FROM data"}),
    )?;
    anyhow::ensure!(status == 200, "A's first query failed: {status} {v}");

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let downloads = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let clock = Instant::now();
    let a_clients: Vec<_> = (0..cfg.a_clients)
        .map(|_| {
            let (addr, a, a_data) = (addr.to_owned(), a.clone(), a_data.clone());
            let (stop, ok, bytes, downloads, refused, errors) = (
                stop.clone(),
                ok.clone(),
                bytes.clone(),
                downloads.clone(),
                refused.clone(),
                errors.clone(),
            );
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let Ok(mut c) = Client::open(&addr) else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return latencies;
                };
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let body = serde_json::json!({"dataset_id": a_data, "format": "csv"});
                    match c.json("POST", "/v1/exports", Some(&a), &body) {
                        Ok((201, v)) => {
                            latencies.push(t.elapsed());
                            ok.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(v["bytes"].as_u64().unwrap_or(0), Ordering::Relaxed);
                            let url = v["download_url"].as_str().unwrap_or_default().to_owned();
                            match c.call("GET", &url, Some(&a), None, false) {
                                Ok((200, _, _)) => {
                                    downloads.fetch_add(1, Ordering::Relaxed);
                                }
                                _ => {
                                    errors.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        // Backpressure: a pushy client tries again soon, ignoring Retry-After.
                        Ok((429, _)) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        Ok(_) | Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(100));
                            match Client::open(&addr) {
                                Ok(fresh) => c = fresh,
                                Err(_) => return latencies,
                            }
                        }
                    }
                }
                latencies
            })
        })
        .collect();

    // Tenant B: one small query every 1/rate seconds, on its own connection.
    let interval = Duration::from_secs_f64(1.0 / cfg.b_rate);
    let mut b_latencies = Vec::new();
    let mut b_errors = 0u64;
    let mut bc = Client::open(addr)?;
    let mut next = Instant::now();
    let sqls = [
        "SELECT city, count(*), sum(amount) FROM data GROUP BY city ORDER BY city",
        "SELECT * FROM data WHERE id < 20",
        "SELECT count(*) FROM data WHERE amount > 300",
    ];
    let mut i = 0usize;
    while clock.elapsed().as_secs_f64() < cfg.seconds {
        let t = Instant::now();
        let body = serde_json::json!({"sql": sqls[i % sqls.len()]});
        i += 1;
        match bc.json(
            "POST",
            &format!("/v1/datasets/{b_data}/query"),
            Some(&b),
            &body,
        ) {
            Ok((200, _)) => b_latencies.push(t.elapsed()),
            Ok(_) | Err(_) => {
                b_latencies.push(t.elapsed());
                b_errors += 1;
                bc = Client::open(addr)?;
            }
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    let seconds = clock.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut a_latencies = Vec::new();
    for t in a_clients {
        a_latencies.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("an export client panicked"))?,
        );
    }
    let latency = |mut l: Vec<Duration>| {
        l.sort();
        Latency {
            p50: percentile_ms(&l, 0.50),
            p99: percentile_ms(&l, 0.99),
            max: l.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        }
    };
    let exports_ok = ok.load(Ordering::Relaxed);
    Ok(NoisyReport {
        backend,
        csv_bytes,
        csv_columns: cfg.columns,
        csv_rows,
        upload_seconds,
        seconds,
        a: NoisyA {
            clients: cfg.a_clients,
            exports_ok,
            exports_per_sec: exports_ok as f64 / seconds,
            export_bytes: bytes.load(Ordering::Relaxed),
            downloads_ok: downloads.load(Ordering::Relaxed),
            refused_429: refused.load(Ordering::Relaxed),
            errors: errors.load(Ordering::Relaxed),
            export_latency_ms: (!a_latencies.is_empty()).then(|| latency(a_latencies)),
        },
        b: NoisyB {
            queries: b_latencies.len() as u64,
            errors: b_errors,
            latency_ms: latency(b_latencies),
        },
        rss_start_mib,
        rss_peak_mib: status_mib("VmHWM:"),
        rss_end_mib: status_mib("VmRSS:"),
        load_average: (load_before, load_average()),
    })
}
