//! `tenantry soak`: a load generator in its own process that speaks HTTP to running servers
//! (issue 15, item 1; SPEC §12; ADR 033).
//!
//! It signs up `--tenants` tenants (Enterprise, one dataset each), spread over the `--url`s
//! given (two instances on one PostgreSQL share the tenants), then offers a realistic mix at
//! `--rate` requests per second for `--duration`: reads (tenant, me, quota, datasets, the audit
//! feed), usage, renames, queries, exports, uploads, new members, feedback, sign-ups, and keyed
//! writes sent twice with one `Idempotency-Key` (the second must replay the first's position).
//!
//! The load is open-loop: request `i` is due at `start + i / rate` whatever the earlier ones are
//! doing, and its latency is measured from when it was due, not from when a connection was free;
//! a slow server therefore shows as latency, never as a lower offered rate (no coordinated
//! omission). Every `--progress-secs` a line goes to standard error. At the end every
//! acknowledged write (a 2xx that named its `global_position`) is looked for through the API
//! (the tenant's audit feed) and, with `--data` or `--store`, in the log itself (the same
//! reader as `tenantry events export`); the report (JSON and Markdown in `--report-dir`, the
//! JSON on standard output too) says what was lost, and the bounds decide the exit code.

use crate::bench_http::{Answer, Conn};
use anyhow::{Context, bail};
use fixtures::pii_corpus::Rng;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{Location, Store};

/// The flags of `tenantry soak`.
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// A server's base URL (http only); repeat it for several instances on one store: the
    /// tenants are spread over them.
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// Tenants signed up before the load (each gets a dataset and the Enterprise plan).
    #[arg(long, default_value_t = 20)]
    pub tenants: usize,
    /// How long the load lasts: seconds, or a number with s, m or h (`30s`, `10m`).
    #[arg(long, default_value = "60s")]
    pub duration: String,
    /// Requests per second offered (open loop).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// The random seed of the mix and the payloads.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The servers' `metrics_token`, when one is set (`/metrics` answers loopback otherwise).
    #[arg(long, env = "TENANTRY_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Where the report goes (`soak-report.json`, `soak-report.md`).
    #[arg(long, default_value = ".")]
    pub report_dir: PathBuf,
    /// The servers' embedded store, read (never written) for the 0-loss check in the log.
    #[arg(long, value_name = "DIR", conflicts_with = "store")]
    pub data: Option<PathBuf>,
    /// The servers' PostgreSQL, read for the 0-loss check in the log.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// The bounds that decide the exit code: p95 and p99 of commands in ms, 5xx answers, lost
    /// writes, memory growth after the warm-up in percent, unanswered requests.
    #[arg(
        long,
        default_value = "p95=100,p99=250,5xx=0,lost=0,memory=5,unanswered=0"
    )]
    pub bounds: String,
    /// The warm-up excluded from the memory growth (default: a fifth of the run, at most 60 s).
    #[arg(long)]
    pub warmup: Option<String>,
    /// Requests in flight at most; past it, due requests wait (and their wait counts).
    #[arg(long, default_value_t = 512)]
    pub max_in_flight: usize,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5)]
    pub progress_secs: u64,
    /// Tries per request for answers worth retrying (5xx, 429, a broken connection), with the
    /// same `Idempotency-Key` on writes; 1 means no retry. The canary's load uses 4.
    #[arg(long, default_value_t = 1)]
    pub tries: u32,
    /// New tenants the mix may sign up per minute, beyond `--tenants` (ADR 033 addendum): a
    /// soak of N tenants stays a soak of about N. Past the allowance, the mix's sign-up is the
    /// last sign-up sent again with its `Idempotency-Key`, which must answer the same tenant.
    #[arg(long, default_value_t = 6.0)]
    pub signups_per_minute: f64,
}

/// The bounds of a soak.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Bounds {
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_5xx: u64,
    pub max_lost: u64,
    /// `None` (`memory=off`): not checked (e.g. `/metrics` unreachable through a proxy).
    pub max_memory_growth_pct: Option<f64>,
    pub max_unanswered: u64,
}

impl Bounds {
    /// `p95=100,p99=250,5xx=0,lost=0,memory=5,unanswered=0`; keys left out keep these values.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut b = Bounds {
            p95_ms: 100.0,
            p99_ms: 250.0,
            max_5xx: 0,
            max_lost: 0,
            max_memory_growth_pct: Some(5.0),
            max_unanswered: 0,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .with_context(|| format!("--bounds: {part:?} is not key=value"))?;
            let bad = || anyhow::anyhow!("--bounds: {k}={v} is not a number");
            match k.trim() {
                "p95" => b.p95_ms = v.parse().map_err(|_| bad())?,
                "p99" => b.p99_ms = v.parse().map_err(|_| bad())?,
                "5xx" => b.max_5xx = v.parse().map_err(|_| bad())?,
                "lost" => b.max_lost = v.parse().map_err(|_| bad())?,
                "memory" if v.trim() == "off" => b.max_memory_growth_pct = None,
                "memory" => b.max_memory_growth_pct = Some(v.parse().map_err(|_| bad())?),
                "unanswered" => b.max_unanswered = v.parse().map_err(|_| bad())?,
                other => {
                    bail!(
                        "--bounds: unknown key {other:?} (p95, p99, 5xx, lost, memory, unanswered)"
                    )
                }
            }
        }
        Ok(b)
    }
}

/// `90`, `90s`, `10m`, `1h`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let t = text.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("{text:?} is not a duration (90, 90s, 10m, 1h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("{text:?}: the unit must be s, m or h"),
    };
    anyhow::ensure!(
        secs > 0.0 && secs <= 7.0 * 86_400.0,
        "{text:?}: more than 0 and at most a week"
    );
    Ok(Duration::from_secs_f64(secs))
}

/// Latency of one route (or all commands), in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(sorted_us: &[u32]) -> Self {
        let at = |q: f64| {
            if sorted_us.is_empty() {
                return 0.0;
            }
            let i = ((sorted_us.len() as f64 * q).ceil() as usize).clamp(1, sorted_us.len()) - 1;
            f64::from(sorted_us[i]) / 1000.0
        };
        Self {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: sorted_us.last().map_or(0.0, |&m| f64::from(m) / 1000.0),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct RouteReport {
    pub route: String,
    pub requests: u64,
    pub by_status: BTreeMap<String, u64>,
    pub latency_ms: Percentiles,
}

#[derive(Debug, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub at_s: f64,
    /// The resident memory of each instance (bytes), in `--url` order; `null` when unread.
    pub rss_bytes: Vec<Option<u64>>,
    /// The largest projection lag of any instance (events), from `/readyz`.
    pub projection_lag: Option<u64>,
    /// What each instance's dataset cache holds (bytes; ADR 040), where `/metrics` tells it.
    pub dataset_cache_bytes: Vec<Option<u64>>,
    /// Streams each instance's executors keep hot, where `/metrics` tells it.
    pub hot_streams: Vec<Option<u64>>,
}

/// One instance's readings.
struct Reading {
    rss: Option<u64>,
    lag: Option<u64>,
    dataset_cache_bytes: Option<u64>,
    hot_streams: Option<u64>,
}

/// A gauge's value in a Prometheus exposition (`tenantry_` prefix or none).
fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let l = l.trim();
        let rest = l
            .strip_prefix("tenantry_")
            .unwrap_or(l)
            .strip_prefix(name)?
            .strip_prefix(' ')?;
        rest.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

#[derive(Debug, Serialize)]
pub struct LossCheck {
    /// Writes answered 2xx with a `global_position`.
    pub acknowledged: u64,
    /// Their tenants' audit feeds read through the API.
    pub tenants_checked: usize,
    /// Acknowledged writes not in their tenant's audit feed.
    pub missing_in_api: u64,
    /// `tenantry events export` of the store given (`--data`, `--store`): how many events read.
    pub log_events_read: Option<u64>,
    /// Acknowledged writes not in the log (with that tenant), when the log was read.
    pub missing_in_log: Option<u64>,
    /// The first few missing positions, to start an investigation from.
    pub examples: Vec<String>,
    /// Writes sent twice with one `Idempotency-Key`, and how many answered another position.
    pub keyed_retries: u64,
    pub keyed_retry_mismatches: u64,
    pub lost: u64,
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    pub name: String,
    pub bound: String,
    pub measured: String,
    pub ok: bool,
}

#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub urls: Vec<String>,
    pub tenants: usize,
    pub seed: u64,
    pub rate_offered: f64,
    pub duration_s: f64,
    pub warmup_s: f64,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: time::OffsetDateTime,
    pub requests: u64,
    /// Requests that never got an answer (the connection broke or could not be opened), after
    /// the tries allowed.
    pub unanswered: u64,
    pub throughput_rps: f64,
    /// How late the last request left, behind its due time (ms): the generator's own lag.
    pub max_send_lag_ms: f64,
    pub by_status: BTreeMap<String, u64>,
    pub status_5xx: u64,
    /// Commands (POST, PUT, PATCH, DELETE) together: the SLO's latency population.
    pub commands: u64,
    pub commands_latency_ms: Percentiles,
    pub all_latency_ms: Percentiles,
    pub routes: Vec<RouteReport>,
    pub memory: Vec<Sample>,
    /// Growth of the summed resident memory from the end of the warm-up to the end (%).
    pub memory_growth_pct: Option<f64>,
    pub projection_lag_max: Option<u64>,
    pub loss: LossCheck,
    pub bounds: Bounds,
    pub verdicts: Vec<Verdict>,
    pub ok: bool,
    /// Every acknowledged write (tenant, position, route), written to `acknowledged.jsonl`.
    #[serde(skip)]
    pub acknowledged: Vec<(String, u64, &'static str)>,
}

/// A tenant of the soak.
struct Tenant {
    id: String,
    token: String,
    url: usize,
    datasets: Mutex<Vec<String>>,
    /// Tokens of the members the soak added: feedback comes from them (10 a minute per user).
    members: Mutex<Vec<String>>,
}

/// Idle keep-alive connections to one server.
struct Pool {
    addr: String,
    idle: Mutex<Vec<Conn>>,
}

impl Pool {
    fn new(url: &str) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("--url must start with http:// (got {url})");
        };
        let addr = rest.trim_end_matches('/').to_owned();
        anyhow::ensure!(
            !addr.is_empty() && !addr.contains('/'),
            "--url must be a base URL such as http://127.0.0.1:8080 (got {url})"
        );
        Ok(Self {
            addr,
            idle: Mutex::new(Vec::new()),
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> anyhow::Result<Answer> {
        let idle = self.idle.lock().expect("pool lock").pop();
        let reused = idle.is_some();
        let mut conn = match idle {
            Some(c) => c,
            None => Conn::open(&self.addr)
                .await
                .with_context(|| format!("cannot connect to {}", self.addr))?,
        };
        let answer = match conn.request(method, path, token, headers, body).await {
            Ok(a) => a,
            // A kept-alive connection the server closed meanwhile: once more on a new one.
            Err(_) if reused => {
                conn = Conn::open(&self.addr).await?;
                conn.request(method, path, token, headers, body).await?
            }
            Err(e) => return Err(e),
        };
        if !answer.close {
            self.idle.lock().expect("pool lock").push(conn);
        }
        Ok(answer)
    }
}

/// What one request taught: its route label, status (`None`: no answer), latency.
struct Outcome {
    route: &'static str,
    command: bool,
    status: Option<u16>,
    latency: Duration,
}

#[derive(Default)]
struct RouteStats {
    latencies_us: Vec<u32>,
    by_status: BTreeMap<String, u64>,
}

struct Acked {
    tenant: Arc<Tenant>,
    position: u64,
    route: &'static str,
}

#[derive(Default)]
struct Stats {
    routes: BTreeMap<&'static str, RouteStats>,
    commands_us: Vec<u32>,
    all_us: Vec<u32>,
    acked: Vec<Acked>,
    keyed_retries: u64,
    keyed_retry_mismatches: u64,
    unanswered: u64,
    status_5xx: u64,
    // Since the last progress line.
    window_requests: u64,
    window_us: Vec<u32>,
}

impl Stats {
    fn record(&mut self, o: &Outcome) {
        let us = u32::try_from(o.latency.as_micros()).unwrap_or(u32::MAX);
        let r = self.routes.entry(o.route).or_default();
        r.latencies_us.push(us);
        let status = o.status.map_or("no-answer".to_owned(), |s| s.to_string());
        *r.by_status.entry(status).or_default() += 1;
        match o.status {
            None => self.unanswered += 1,
            Some(s) if s >= 500 => self.status_5xx += 1,
            _ => {}
        }
        if o.command {
            self.commands_us.push(us);
        }
        self.all_us.push(us);
        self.window_requests += 1;
        self.window_us.push(us);
    }
}

/// Everything a request needs.
struct Shared {
    pools: Vec<Pool>,
    tenants: Vec<Arc<Tenant>>,
    stats: Mutex<Stats>,
    csv: Vec<u8>,
    seq: AtomicU64,
    tries: u32,
    run_id: String,
    started: Instant,
    signups_per_minute: f64,
    /// New tenants signed up by the mix so far, and the last one's request (for replays).
    signups: Mutex<(u64, Option<KeptSignup>)>,
}

/// A sign-up the mix sent, kept to send again under its key.
#[derive(Clone)]
struct KeptSignup {
    key: String,
    body: Vec<u8>,
    /// Its answer's position, once answered.
    position: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    ReadTenant,
    ReadMe,
    ReadQuota,
    ListDatasets,
    AuditPage,
    Usage,
    Rename,
    Query,
    Export,
    Upload,
    AddMember,
    Feedback,
    Signup,
    KeyedRetry,
}

/// The mix, in requests per hundred (a keyed retry is two requests).
const MIX: &[(Op, u32)] = &[
    (Op::ReadTenant, 20),
    (Op::ReadMe, 8),
    (Op::ReadQuota, 6),
    (Op::ListDatasets, 6),
    (Op::AuditPage, 2),
    (Op::Usage, 18),
    (Op::Rename, 8),
    (Op::Query, 12),
    (Op::Export, 3),
    (Op::Upload, 2),
    (Op::AddMember, 3),
    (Op::Feedback, 4),
    (Op::Signup, 1),
    (Op::KeyedRetry, 7),
];

fn pick_op(rng: &mut Rng) -> Op {
    let total: u32 = MIX.iter().map(|(_, w)| w).sum();
    let mut x = (rng.next_u64() % u64::from(total)) as u32;
    for (op, w) in MIX {
        if x < *w {
            return *op;
        }
        x -= w;
    }
    MIX[0].0
}

/// A request of the mix, prepared.
struct Req {
    route: &'static str,
    method: &'static str,
    path: String,
    token: Option<String>,
    content_type: &'static str,
    body: Option<Vec<u8>>,
    key: Option<String>,
}

impl Req {
    fn json(
        route: &'static str,
        method: &'static str,
        path: String,
        t: &Tenant,
        body: Value,
    ) -> Self {
        Self {
            route,
            method,
            path,
            token: Some(t.token.clone()),
            content_type: "application/json",
            body: Some(body.to_string().into_bytes()),
            key: None,
        }
    }

    fn get(route: &'static str, path: String, t: &Tenant) -> Self {
        Self {
            route,
            method: "GET",
            path,
            token: Some(t.token.clone()),
            content_type: "application/json",
            body: None,
            key: None,
        }
    }

    fn command(&self) -> bool {
        self.method != "GET"
    }
}

/// Members a tenant's team grows to; past it, the mix's member adds become reads (real teams
/// stop growing, and a team of thousands would measure the soak, not the service).
pub const MAX_TEAM: usize = 50;

/// The route name of a sign-up sent again under its key (`--signups-per-minute`).
const SIGNUP_REPLAY: &str = "POST /v1/signup (keyed retry)";

const NOTES: &[&str] = &[
    "the chart takes a while to load",
    "export button is hard to find",
    "query editor lost my text after a refresh",
    "love the new funnel view",
    "upload failed once, then worked",
];

impl Shared {
    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn prepare(&self, op: Op, t: &Tenant, rng: &mut Rng) -> Req {
        let n = self.next();
        let dataset = {
            let d = t.datasets.lock().expect("datasets lock");
            d.get(rng.below(d.len().max(1))).cloned()
        };
        let run = &self.run_id;
        let team_full = t.members.lock().expect("members lock").len() >= MAX_TEAM;
        let op = match op {
            Op::AddMember if team_full => Op::ReadTenant,
            op => op,
        };
        match op {
            Op::ReadTenant => Req::get("GET /v1/tenant", "/v1/tenant".into(), t),
            Op::ReadMe => Req::get("GET /v1/me", "/v1/me".into(), t),
            Op::ReadQuota => Req::get("GET /v1/tenant/quota", "/v1/tenant/quota".into(), t),
            Op::ListDatasets => Req::get("GET /v1/datasets", "/v1/datasets".into(), t),
            Op::AuditPage => Req::get(
                "GET /v1/audit/events",
                "/v1/audit/events?limit=20".into(),
                t,
            ),
            Op::Usage => Req::json(
                "POST /v1/usage",
                "POST",
                "/v1/usage".into(),
                t,
                json!({"meter": if rng.below(2) == 0 { "queries" } else { "exports" }, "units": 1 + rng.below(3)}),
            ),
            Op::Rename => Req::json(
                "PATCH /v1/tenant",
                "PATCH",
                "/v1/tenant".into(),
                t,
                json!({"name": format!("Soak {run} tenant r{n}")}),
            ),
            Op::Query => {
                let sql = *rng.pick(&[
                    "SELECT city, sum(amount) AS total FROM data GROUP BY city ORDER BY total DESC",
                    "SELECT count(*) FROM data WHERE active = 'true'",
                    "SELECT day, avg(quantity) FROM data GROUP BY day ORDER BY day LIMIT 20",
                    "SELECT id, city, amount FROM data WHERE amount > 50 ORDER BY amount LIMIT 10",
                ]);
                match dataset {
                    Some(d) => Req::json(
                        "POST /v1/datasets/{id}/query",
                        "POST",
                        format!("/v1/datasets/{d}/query"),
                        t,
                        json!({ "sql": sql }),
                    ),
                    None => Req::get("GET /v1/tenant", "/v1/tenant".into(), t),
                }
            }
            Op::Export => match dataset {
                Some(d) => Req::json(
                    "POST /v1/exports",
                    "POST",
                    "/v1/exports".into(),
                    t,
                    json!({"dataset_id": d, "format": if rng.below(2) == 0 { "csv" } else { "jsonl" }}),
                ),
                None => Req::get("GET /v1/tenant", "/v1/tenant".into(), t),
            },
            Op::Upload => Req {
                route: "POST /v1/datasets",
                method: "POST",
                path: format!("/v1/datasets?name=soak-{n}"),
                token: Some(t.token.clone()),
                content_type: "text/csv",
                body: Some(self.csv.clone()),
                key: None,
            },
            Op::AddMember => Req::json(
                "POST /v1/members",
                "POST",
                "/v1/members".into(),
                t,
                json!({
                    "email": format!("member{n}.{run}@soak.example"),
                    "name": format!("Member {n}"),
                    "role": *rng.pick(&["analyst", "viewer", "admin"]),
                }),
            ),
            Op::Feedback => {
                let mut r = Req::json(
                    "POST /v1/feedback",
                    "POST",
                    "/v1/feedback".into(),
                    t,
                    json!({
                        "message": *rng.pick(NOTES),
                        "screen": *rng.pick(&["datasets/list", "query/editor", "exports/new"]),
                        "step": "open",
                        "severity": *rng.pick(&["low", "medium", "high"]),
                    }),
                );
                // From one of the tenant's members (or its owner): a person, not a firehose.
                let members = t.members.lock().expect("members lock");
                let pick = rng.below(members.len() + 1);
                if let Some(token) = members.get(pick) {
                    r.token = Some(token.clone());
                }
                r
            }
            Op::Signup => {
                let mut signups = self.signups.lock().expect("signups lock");
                let allowance = 1
                    + (self.started.elapsed().as_secs_f64() / 60.0
                        * self.signups_per_minute.max(0.0)) as u64;
                match &signups.1 {
                    Some(kept) if signups.0 >= allowance => Req {
                        route: SIGNUP_REPLAY,
                        method: "POST",
                        path: "/v1/signup".into(),
                        token: None,
                        content_type: "application/json",
                        body: Some(kept.body.clone()),
                        key: Some(kept.key.clone()),
                    },
                    _ => {
                        let body = json!({
                            "tenant_name": format!("Soak {run} late {n}"),
                            "email": format!("owner{n}.{run}@soak.example"),
                            "name": format!("Owner {n}"),
                        })
                        .to_string()
                        .into_bytes();
                        let key = format!("soak-{run}-signup-{n}");
                        signups.0 += 1;
                        signups.1 = Some(KeptSignup {
                            key: key.clone(),
                            body: body.clone(),
                            position: None,
                        });
                        Req {
                            route: "POST /v1/signup",
                            method: "POST",
                            path: "/v1/signup".into(),
                            token: None,
                            content_type: "application/json",
                            body: Some(body),
                            key: Some(key),
                        }
                    }
                }
            }
            Op::KeyedRetry => {
                let mut r = if team_full || rng.below(2) == 0 {
                    Req::json(
                        "POST /v1/usage (keyed)",
                        "POST",
                        "/v1/usage".into(),
                        t,
                        json!({"meter": "queries", "units": 1}),
                    )
                } else {
                    Req::json(
                        "POST /v1/members (keyed)",
                        "POST",
                        "/v1/members".into(),
                        t,
                        json!({
                            "email": format!("keyed{n}.{run}@soak.example"),
                            "name": format!("Keyed {n}"),
                            "role": "viewer",
                        }),
                    )
                };
                r.key = Some(format!("soak-{run}-{n}"));
                r
            }
        }
    }

    /// Send `req` (up to `tries` times for answers worth retrying; writes keep one key so a
    /// retry never applies twice). Returns the last answer, if any.
    async fn send(&self, url: usize, req: &mut Req) -> Option<Answer> {
        if self.tries > 1 && req.command() && req.key.is_none() {
            req.key = Some(format!("soak-{}-{}", self.run_id, self.next()));
        }
        let mut last = None;
        for attempt in 0..self.tries.max(1) {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(20 << attempt.min(5))).await;
            }
            let mut headers: Vec<(&str, &str)> = Vec::new();
            if let Some(k) = &req.key {
                headers.push(("Idempotency-Key", k));
            }
            let answer = self.pools[url]
                .send(
                    req.method,
                    &req.path,
                    req.token.as_deref(),
                    &headers,
                    req.body.as_deref().map(|b| (req.content_type, b)),
                )
                .await;
            let retry = match &answer {
                Ok(a) => a.status >= 500 || a.status == 429,
                Err(_) => true,
            };
            last = answer.ok();
            if !retry {
                break;
            }
        }
        last
    }

    async fn run(&self, op: Op, tenant: usize, due: Instant, mut rng: Rng) {
        let t = self.tenants[tenant].clone();
        let mut req = self.prepare(op, &t, &mut rng);
        // A sign-up replayed while its first sending is still in flight is rightly answered 409
        // `idempotency-key-in-flight`: only a replay sent after the first answer came back must
        // answer that answer's position.
        let answered_before = (req.route == SIGNUP_REPLAY)
            .then(|| {
                let kept = self.signups.lock().expect("signups lock").1.clone();
                kept.filter(|k| Some(&k.key) == req.key.as_ref())
                    .and_then(|k| k.position)
            })
            .flatten();
        let answer = self.send(t.url, &mut req).await;
        let first = Outcome {
            route: req.route,
            command: req.command(),
            status: answer.as_ref().map(|a| a.status),
            latency: due.elapsed(),
        };
        let body: Option<Value> = answer
            .as_ref()
            .filter(|a| (200..300).contains(&a.status))
            .and_then(|a| serde_json::from_slice(&a.body).ok());
        let position = body.as_ref().and_then(|b| b["global_position"].as_u64());
        let mut acked: Vec<Acked> = Vec::new();
        let mut second = None;
        match (op, &body) {
            (Op::Signup, answer) if req.route == SIGNUP_REPLAY => {
                // A replay answers the kept sign-up: the same position, never a new tenant.
                if let Some(p) = answered_before {
                    let replayed = answer.as_ref().and_then(|b| b["global_position"].as_u64());
                    let mut s = self.stats.lock().expect("stats lock");
                    s.keyed_retries += 1;
                    s.keyed_retry_mismatches += u64::from(replayed != Some(p));
                }
            }
            (Op::Signup, Some(b)) => {
                if let Some(kept) = self.signups.lock().expect("signups lock").1.as_mut()
                    && Some(&kept.key) == req.key.as_ref()
                {
                    kept.position = position;
                }
                if let (Some(id), Some(token), Some(p)) =
                    (b["tenant_id"].as_str(), b["token"].as_str(), position)
                {
                    let late = Arc::new(Tenant {
                        id: id.to_owned(),
                        token: token.to_owned(),
                        url: t.url,
                        datasets: Mutex::new(Vec::new()),
                        members: Mutex::new(Vec::new()),
                    });
                    acked.push(Acked {
                        tenant: late,
                        position: p,
                        route: req.route,
                    });
                }
            }
            (Op::AddMember | Op::KeyedRetry, Some(b)) => {
                if let Some(token) = b["token"].as_str() {
                    t.members
                        .lock()
                        .expect("members lock")
                        .push(token.to_owned());
                }
            }
            (Op::Upload, Some(b)) => {
                if let Some(d) = b["dataset_id"].as_str() {
                    t.datasets.lock().expect("datasets lock").push(d.to_owned());
                }
            }
            _ => {}
        }
        if !matches!(op, Op::Signup)
            && let Some(p) = position
        {
            acked.push(Acked {
                tenant: t.clone(),
                position: p,
                route: req.route,
            });
        }
        if matches!(op, Op::KeyedRetry) && answer.is_some() {
            // The same request and key again: the kept answer, never a second write.
            let again_due = Instant::now();
            let mut again = Req {
                route: if req.route.contains("usage") {
                    "POST /v1/usage (keyed retry)"
                } else {
                    "POST /v1/members (keyed retry)"
                },
                method: req.method,
                path: req.path.clone(),
                token: req.token.clone(),
                content_type: req.content_type,
                body: req.body.clone(),
                key: req.key.clone(),
            };
            let a = self.send(t.url, &mut again).await;
            let p2 = a
                .as_ref()
                .filter(|a| (200..300).contains(&a.status))
                .and_then(|a| serde_json::from_slice::<Value>(&a.body).ok())
                .and_then(|b| b["global_position"].as_u64());
            second = Some((
                Outcome {
                    route: again.route,
                    command: true,
                    status: a.as_ref().map(|a| a.status),
                    latency: again_due.elapsed(),
                },
                position.is_some() && p2 != position,
            ));
        }
        let mut s = self.stats.lock().expect("stats lock");
        s.record(&first);
        s.acked.extend(acked);
        if let Some((o, mismatch)) = second {
            s.record(&o);
            s.keyed_retries += 1;
            s.keyed_retry_mismatches += u64::from(mismatch);
        }
    }
}

/// Sign up one tenant on `pool`, move it to Enterprise, upload its first dataset, add three
/// members.
async fn setup_tenant(
    shared_csv: &[u8],
    pool: &Pool,
    i: usize,
    url: usize,
    run: &str,
) -> anyhow::Result<Tenant> {
    let body = json!({
        "tenant_name": format!("Soak {run} tenant {i}"),
        "email": format!("owner{i}.{run}@soak.example"),
        "name": format!("Owner {i}"),
    })
    .to_string();
    let a = pool
        .send(
            "POST",
            "/v1/signup",
            None,
            &[],
            Some(("application/json", body.as_bytes())),
        )
        .await?;
    anyhow::ensure!(
        a.status == 201,
        "sign-up answered {} {} (is signup_per_minute = 0 on the server under soak?)",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
    let v: Value = serde_json::from_slice(&a.body)?;
    let token = v["token"]
        .as_str()
        .context("sign-up without a token")?
        .to_owned();
    let id = v["tenant_id"]
        .as_str()
        .context("sign-up without a tenant id")?
        .to_owned();
    let plan = json!({"plan": "enterprise", "reason": "soak"}).to_string();
    let a = pool
        .send(
            "POST",
            "/v1/tenant/plan",
            Some(&token),
            &[],
            Some(("application/json", plan.as_bytes())),
        )
        .await?;
    anyhow::ensure!(
        a.status == 200,
        "plan change answered {}: {}",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
    let a = pool
        .send(
            "POST",
            &format!("/v1/datasets?name=soak-{i}"),
            Some(&token),
            &[],
            Some(("text/csv", shared_csv)),
        )
        .await?;
    anyhow::ensure!(
        a.status == 201,
        "upload answered {}: {}",
        a.status,
        String::from_utf8_lossy(&a.body)
    );
    let v: Value = serde_json::from_slice(&a.body)?;
    let dataset = v["dataset_id"]
        .as_str()
        .context("upload without a dataset id")?
        .to_owned();
    // A small team from the start: feedback comes from people, each under their own limit.
    let mut members = Vec::new();
    for (m, role) in ["analyst", "viewer", "admin"].into_iter().enumerate() {
        let body = json!({
            "email": format!("team{m}.{i}.{run}@soak.example"),
            "name": format!("Team member {m}"),
            "role": role,
        })
        .to_string();
        let a = pool
            .send(
                "POST",
                "/v1/members",
                Some(&token),
                &[],
                Some(("application/json", body.as_bytes())),
            )
            .await?;
        anyhow::ensure!(
            a.status == 201,
            "adding a member answered {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
        let v: Value = serde_json::from_slice(&a.body)?;
        members.push(
            v["token"]
                .as_str()
                .context("a member without a token")?
                .to_owned(),
        );
    }
    Ok(Tenant {
        id,
        token,
        url,
        datasets: Mutex::new(vec![dataset]),
        members: Mutex::new(members),
    })
}

/// The resident memory and caches an instance's `/metrics` reports, and `/readyz`'s largest lag.
async fn sample_instance(pool: &Pool, metrics_token: Option<&str>) -> Reading {
    let metrics = match pool.send("GET", "/metrics", metrics_token, &[], None).await {
        Ok(a) if a.status == 200 => String::from_utf8_lossy(&a.body).into_owned(),
        _ => String::new(),
    };
    let lag = match pool.send("GET", "/readyz", None, &[], None).await {
        Ok(a) => serde_json::from_slice::<Value>(&a.body).ok().and_then(|v| {
            v["details"].as_array().map(|d| {
                d.iter()
                    .filter_map(|p| p["lag"].as_u64())
                    .max()
                    .unwrap_or(0)
            })
        }),
        Err(_) => None,
    };
    Reading {
        rss: gauge(&metrics, "process_resident_memory_bytes"),
        lag,
        dataset_cache_bytes: gauge(&metrics, "dataset_cache_bytes"),
        hot_streams: gauge(&metrics, "executor_hot_streams"),
    }
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

/// Every acknowledged write, looked for in its tenant's audit feed (API) and in the log.
async fn check_loss(
    shared: &Shared,
    args: &SoakArgs,
    acked: &[Acked],
    keyed: (u64, u64),
) -> anyhow::Result<LossCheck> {
    let mut by_tenant: HashMap<&str, (Arc<Tenant>, Vec<u64>)> = HashMap::new();
    for a in acked {
        by_tenant
            .entry(a.tenant.id.as_str())
            .or_insert_with(|| (a.tenant.clone(), Vec::new()))
            .1
            .push(a.position);
    }
    let mut examples = Vec::new();
    let mut missing_in_api = 0u64;
    for (tenant, positions) in by_tenant.values_mut() {
        positions.sort_unstable();
        positions.dedup();
        let (first, last) = (positions[0], *positions.last().expect("not empty"));
        let mut seen: HashSet<u64> = HashSet::new();
        let mut cursor = format!("c1{:x}", first - 1);
        loop {
            let path = format!("/v1/audit/events?limit=500&cursor={cursor}&min_position={last}");
            // An instance still applying the load's last writes answers 503 not-caught-up.
            let mut tries = 0;
            let a = loop {
                let a = shared.pools[tenant.url]
                    .send("GET", &path, Some(&tenant.token), &[], None)
                    .await?;
                tries += 1;
                if a.status != 503 || tries == 20 {
                    break a;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            anyhow::ensure!(
                a.status == 200,
                "audit feed of {} answered {}: {}",
                tenant.id,
                a.status,
                String::from_utf8_lossy(&a.body)
            );
            let page: Value = serde_json::from_slice(&a.body)?;
            let mut past_last = false;
            for e in page["events"].as_array().into_iter().flatten() {
                if let Some(p) = e["global_position"].as_u64() {
                    seen.insert(p);
                    past_last |= p >= last;
                }
            }
            match page["next_cursor"].as_str() {
                Some(c) if !past_last => cursor = c.to_owned(),
                _ => break,
            }
        }
        for p in positions.iter().filter(|p| !seen.contains(p)) {
            missing_in_api += 1;
            if examples.len() < 10 {
                examples.push(format!("api: tenant {} position {p}", tenant.id));
            }
        }
    }
    let (mut log_events_read, mut missing_in_log) = (None, None);
    let location = match (&args.data, &args.store) {
        (Some(d), _) => Some(Location::Embedded(d.clone())),
        (None, Some(u)) => Some(Location::Postgres(u.clone())),
        _ => None,
    };
    if let Some(location) = location {
        let store = Store::open(&location)
            .await
            .context("cannot open the store given for the 0-loss check")?;
        let from = acked.iter().map(|a| a.position).min().unwrap_or(1);
        let mut out = LogIndex::default();
        let read = crate::export::export(&store, from, None, &mut out).await;
        store.close().await;
        log_events_read = Some(read?);
        let mut missing = 0u64;
        for a in acked {
            if out.positions.get(&a.position).map(String::as_str) != Some(a.tenant.id.as_str()) {
                missing += 1;
                if examples.len() < 20 {
                    examples.push(format!(
                        "log: tenant {} position {} ({})",
                        a.tenant.id, a.position, a.route
                    ));
                }
            }
        }
        missing_in_log = Some(missing);
    }
    let lost = missing_in_api.max(missing_in_log.unwrap_or(0));
    Ok(LossCheck {
        acknowledged: acked.len() as u64,
        tenants_checked: by_tenant.len(),
        missing_in_api,
        log_events_read,
        missing_in_log,
        examples,
        keyed_retries: keyed.0,
        keyed_retry_mismatches: keyed.1,
        lost,
    })
}

/// The export's JSON Lines, kept as position → tenant.
#[derive(Default)]
struct LogIndex {
    line: Vec<u8>,
    positions: HashMap<u64, String>,
}

impl std::io::Write for LogIndex {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                if let Ok(v) = serde_json::from_slice::<Value>(&self.line)
                    && let (Some(p), Some(t)) =
                        (v["global_position"].as_u64(), v["tenant_id"].as_str())
                {
                    self.positions.insert(p, t.to_owned());
                }
                self.line.clear();
            } else {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Run the soak; the report says whether the bounds held.
pub async fn run(args: &SoakArgs) -> anyhow::Result<SoakReport> {
    let duration = parse_duration(&args.duration)?;
    let warmup = match &args.warmup {
        Some(w) => parse_duration(w)?,
        None => (duration / 5).min(Duration::from_secs(60)),
    };
    anyhow::ensure!(
        warmup < duration,
        "--warmup must be shorter than --duration"
    );
    let bounds = Bounds::parse(&args.bounds)?;
    anyhow::ensure!(
        args.rate > 0.0 && args.rate <= 100_000.0,
        "--rate must be more than 0 and at most 100000"
    );
    anyhow::ensure!(
        (1..=100_000).contains(&args.tenants),
        "--tenants must be 1 to 100000"
    );
    anyhow::ensure!(
        (1..=65_536).contains(&args.max_in_flight),
        "--max-in-flight must be 1 to 65536"
    );
    anyhow::ensure!((1..=10).contains(&args.tries), "--tries must be 1 to 10");
    let pools = args
        .urls
        .iter()
        .map(|u| Pool::new(u))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started_at = time::OffsetDateTime::now_utc();
    // Names and e-mails must not collide with an earlier soak on the same store.
    let run_id = format!("{:x}", started_at.unix_timestamp_nanos() as u64 ^ args.seed);
    let csv = fixtures::pii_corpus::dataset_csv(args.seed, 200).into_bytes();

    // Set up: tenants spread over the instances, 16 at a time.
    eprintln!(
        "soak: signing up {} tenants over {} instance(s)…",
        args.tenants,
        pools.len()
    );
    let pools = Arc::new(pools);
    let csv = Arc::new(csv);
    let mut tenants: Vec<Arc<Tenant>> = Vec::with_capacity(args.tenants);
    let indices: Vec<usize> = (0..args.tenants).collect();
    for chunk in indices.chunks(16) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let (pools, csv, run) = (pools.clone(), csv.clone(), run_id.clone());
            tasks.push(tokio::spawn(async move {
                let url = i % pools.len();
                setup_tenant(&csv, &pools[url], i, url, &run).await
            }));
        }
        for t in tasks {
            tenants.push(Arc::new(t.await??));
        }
    }
    let pools = Arc::try_unwrap(pools).map_err(|_| anyhow::anyhow!("pools still shared"))?;
    let csv = Arc::try_unwrap(csv).unwrap_or_else(|c| (*c).clone());
    let shared = Arc::new(Shared {
        pools,
        tenants,
        stats: Mutex::new(Stats::default()),
        csv,
        seq: AtomicU64::new(0),
        tries: args.tries,
        run_id,
        started: Instant::now(),
        signups_per_minute: args.signups_per_minute,
        signups: Mutex::new((0, None)),
    });

    // The sampler: memory and projection lag of every instance, once a second.
    let start = Instant::now();
    let end = start + duration;
    let sampler = {
        let shared = shared.clone();
        let token = args.metrics_token.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let mut rss = Vec::new();
                let mut cache = Vec::new();
                let mut hot = Vec::new();
                let mut lag: Option<u64> = None;
                for p in &shared.pools {
                    let r = sample_instance(p, token.as_deref()).await;
                    rss.push(r.rss);
                    cache.push(r.dataset_cache_bytes);
                    hot.push(r.hot_streams);
                    lag = match (lag, r.lag) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                }
                samples.push(Sample {
                    at_s: start.elapsed().as_secs_f64(),
                    rss_bytes: rss,
                    projection_lag: lag,
                    dataset_cache_bytes: cache,
                    hot_streams: hot,
                });
                if Instant::now() >= end {
                    break samples;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    // The load: request i is due at start + i / rate.
    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight));
    let mut rng = Rng::new(args.seed);
    let mut tasks = tokio::task::JoinSet::new();
    let mut i: u64 = 0;
    let mut max_send_lag = Duration::ZERO;
    let mut next_progress = start + Duration::from_secs(args.progress_secs.max(1));
    let mut last_progress = start;
    loop {
        let due = start + Duration::from_secs_f64(i as f64 / args.rate);
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let permit = semaphore.clone().acquire_owned().await?;
        max_send_lag = max_send_lag.max(due.elapsed());
        let op = pick_op(&mut rng);
        let tenant = rng.below(shared.tenants.len());
        let req_rng = Rng::new(rng.next_u64());
        let s = shared.clone();
        tasks.spawn(async move {
            s.run(op, tenant, due, req_rng).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
        i += 1;
        let now = Instant::now();
        if now >= next_progress {
            let (n, mut w, errors, unanswered) = {
                let mut s = shared.stats.lock().expect("stats lock");
                let n = s.window_requests;
                s.window_requests = 0;
                (
                    n,
                    std::mem::take(&mut s.window_us),
                    s.status_5xx,
                    s.unanswered,
                )
            };
            w.sort_unstable();
            let p = Percentiles::of(&w);
            eprintln!(
                "soak: {:>5.0}s offered {} done {:.0}/s p95 {:.1} ms p99 {:.1} ms in flight {} 5xx {} unanswered {}",
                now.duration_since(start).as_secs_f64(),
                i,
                n as f64 / now.duration_since(last_progress).as_secs_f64(),
                p.p95,
                p.p99,
                args.max_in_flight - semaphore.available_permits(),
                errors,
                unanswered
            );
            last_progress = now;
            next_progress = now + Duration::from_secs(args.progress_secs.max(1));
        }
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed();
    let memory = sampler.await?;

    // Every acknowledged write, looked for.
    let (acked, keyed) = {
        let mut s = shared.stats.lock().expect("stats lock");
        (
            std::mem::take(&mut s.acked),
            (s.keyed_retries, s.keyed_retry_mismatches),
        )
    };
    eprintln!(
        "soak: load done; checking {} acknowledged writes…",
        acked.len()
    );
    let loss = check_loss(&shared, args, &acked, keyed).await?;

    let mut s = shared.stats.lock().expect("stats lock");
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut routes = Vec::new();
    for (route, r) in s.routes.iter_mut() {
        r.latencies_us.sort_unstable();
        for (k, v) in &r.by_status {
            *by_status.entry(k.clone()).or_default() += v;
        }
        routes.push(RouteReport {
            route: (*route).to_owned(),
            requests: r.latencies_us.len() as u64,
            by_status: r.by_status.clone(),
            latency_ms: Percentiles::of(&r.latencies_us),
        });
    }
    s.commands_us.sort_unstable();
    s.all_us.sort_unstable();
    let requests = s.all_us.len() as u64;
    let after_warmup: Vec<&Sample> = memory
        .iter()
        .filter(|m| m.at_s >= warmup.as_secs_f64())
        .collect();
    let total = |m: &Sample| -> Option<u64> { m.rss_bytes.iter().copied().sum::<Option<u64>>() };
    let memory_growth_pct = {
        let head: Vec<u64> = after_warmup
            .iter()
            .take(3)
            .filter_map(|m| total(m))
            .collect();
        let tail: Vec<u64> = after_warmup
            .iter()
            .rev()
            .take(3)
            .filter_map(|m| total(m))
            .collect();
        match (median(head), median(tail)) {
            (Some(a), Some(b)) if a > 0 && after_warmup.len() >= 2 => {
                Some((b as f64 - a as f64) * 100.0 / a as f64)
            }
            _ => None,
        }
    };
    let commands_latency_ms = Percentiles::of(&s.commands_us);
    let mut verdicts = vec![
        Verdict {
            name: "p95 of commands".into(),
            bound: format!("< {} ms", bounds.p95_ms),
            measured: format!("{:.1} ms", commands_latency_ms.p95),
            ok: commands_latency_ms.p95 < bounds.p95_ms,
        },
        Verdict {
            name: "p99 of commands".into(),
            bound: format!("< {} ms", bounds.p99_ms),
            measured: format!("{:.1} ms", commands_latency_ms.p99),
            ok: commands_latency_ms.p99 < bounds.p99_ms,
        },
        Verdict {
            name: "5xx answers".into(),
            bound: format!("≤ {}", bounds.max_5xx),
            measured: s.status_5xx.to_string(),
            ok: s.status_5xx <= bounds.max_5xx,
        },
        Verdict {
            name: "unanswered requests".into(),
            bound: format!("≤ {}", bounds.max_unanswered),
            measured: s.unanswered.to_string(),
            ok: s.unanswered <= bounds.max_unanswered,
        },
        Verdict {
            name: "acknowledged writes lost".into(),
            bound: format!("≤ {}", bounds.max_lost),
            measured: format!(
                "{} of {} (keyed retries answering another position: {})",
                loss.lost, loss.acknowledged, loss.keyed_retry_mismatches
            ),
            ok: loss.lost <= bounds.max_lost && loss.keyed_retry_mismatches == 0,
        },
    ];
    verdicts.push(Verdict {
        name: "memory growth after warm-up".into(),
        bound: bounds
            .max_memory_growth_pct
            .map_or("not checked".into(), |m| format!("≤ {m} %")),
        measured: memory_growth_pct
            .map_or("not measured (no /metrics)".into(), |g| format!("{g:.1} %")),
        // Unmeasured memory is not a pass, unless the bound is off.
        ok: match bounds.max_memory_growth_pct {
            None => true,
            Some(max) => memory_growth_pct.is_some_and(|g| g <= max),
        },
    });
    let ok = verdicts.iter().all(|v| v.ok);
    Ok(SoakReport {
        urls: args.urls.clone(),
        tenants: args.tenants,
        seed: args.seed,
        rate_offered: args.rate,
        duration_s: elapsed.as_secs_f64(),
        warmup_s: warmup.as_secs_f64(),
        started_at,
        requests,
        unanswered: s.unanswered,
        throughput_rps: requests as f64 / elapsed.as_secs_f64(),
        max_send_lag_ms: max_send_lag.as_secs_f64() * 1e3,
        by_status,
        status_5xx: s.status_5xx,
        commands: s.commands_us.len() as u64,
        commands_latency_ms,
        all_latency_ms: Percentiles::of(&s.all_us),
        routes,
        projection_lag_max: memory.iter().filter_map(|m| m.projection_lag).max(),
        memory,
        memory_growth_pct,
        loss,
        bounds,
        verdicts,
        ok,
        acknowledged: acked
            .iter()
            .map(|a| (a.tenant.id.clone(), a.position, a.route))
            .collect(),
    })
}

/// The report for people.
pub fn markdown(r: &SoakReport) -> String {
    let mut md = String::new();
    md.push_str(&format!(
        "# Soak report — {}\n\n{}\n\n",
        r.started_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        if r.ok {
            "**PASS**: every bound held."
        } else {
            "**FAIL**: a bound did not hold."
        }
    ));
    md.push_str(&format!(
        "- servers: {}\n- tenants: {}, seed {}\n- offered {:.0} req/s for {:.0} s (warm-up {:.0} s); served {} requests, {:.0} req/s; generator lag at most {:.1} ms\n- projection lag at most {} events\n\n",
        r.urls.join(", "),
        r.tenants,
        r.seed,
        r.rate_offered,
        r.duration_s,
        r.warmup_s,
        r.requests,
        r.throughput_rps,
        r.max_send_lag_ms,
        r.projection_lag_max.map_or("unknown".into(), |l| l.to_string()),
    ));
    md.push_str("## Bounds\n\n| check | bound | measured | |\n|---|---|---|---|\n");
    for v in &r.verdicts {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            v.name,
            v.bound,
            v.measured,
            if v.ok { "ok" } else { "**FAIL**" }
        ));
    }
    md.push_str("\n## Latency by route (ms, measured from when each request was due)\n\n| route | requests | p50 | p95 | p99 | max | statuses |\n|---|---:|---:|---:|---:|---:|---|\n");
    let row = |name: &str, n: u64, p: &Percentiles, statuses: String| {
        format!(
            "| {name} | {n} | {:.1} | {:.1} | {:.1} | {:.1} | {statuses} |\n",
            p.p50, p.p95, p.p99, p.max
        )
    };
    for route in &r.routes {
        let statuses = route
            .by_status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        md.push_str(&row(
            &route.route,
            route.requests,
            &route.latency_ms,
            statuses,
        ));
    }
    md.push_str(&row(
        "**commands**",
        r.commands,
        &r.commands_latency_ms,
        String::new(),
    ));
    md.push_str(&row(
        "**all**",
        r.requests,
        &r.all_latency_ms,
        String::new(),
    ));
    md.push_str(&format!(
        "\n## 0-loss check\n\n{} acknowledged writes over {} tenants; missing in the API: {}; in the log: {} ({} events read); keyed retries: {} ({} answered another position).\n",
        r.loss.acknowledged,
        r.loss.tenants_checked,
        r.loss.missing_in_api,
        r.loss.missing_in_log.map_or("not read (no --data/--store)".into(), |m| m.to_string()),
        r.loss.log_events_read.unwrap_or(0),
        r.loss.keyed_retries,
        r.loss.keyed_retry_mismatches,
    ));
    for e in &r.loss.examples {
        md.push_str(&format!("- {e}\n"));
    }
    md.push_str(
        "\n## Memory (per instance)\n\n| s | RSS, MiB | projection lag | dataset cache, MiB | hot streams |\n|---:|---|---:|---|---|\n",
    );
    let step = (r.memory.len() / 30).max(1);
    let per = |v: &[Option<u64>], f: &dyn Fn(u64) -> String| {
        v.iter()
            .map(|b| b.map_or("?".into(), f))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let mib = |b: u64| format!("{:.1}", b as f64 / 1_048_576.0);
    for m in r.memory.iter().step_by(step) {
        md.push_str(&format!(
            "| {:.0} | {} | {} | {} | {} |\n",
            m.at_s,
            per(&m.rss_bytes, &mib),
            m.projection_lag.map_or("?".into(), |l| l.to_string()),
            per(&m.dataset_cache_bytes, &mib),
            per(&m.hot_streams, &|n| n.to_string()),
        ));
    }
    md.push_str(&format!(
        "\nGrowth after warm-up: {}.\n",
        r.memory_growth_pct
            .map_or("not measured".into(), |g| format!("{g:.1} %"))
    ));
    md
}

/// Write `soak-report.json`, `soak-report.md` and `acknowledged.jsonl` (every acknowledged
/// write, one JSON object a line) into `dir`.
pub fn write_report(dir: &std::path::Path, r: &SoakReport) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("soak-report.json"), serde_json::to_vec_pretty(r)?)?;
    std::fs::write(dir.join("soak-report.md"), markdown(r))?;
    let mut lines = String::new();
    for (tenant, position, route) in &r.acknowledged {
        lines.push_str(
            &json!({"tenant_id": tenant, "global_position": position, "route": route}).to_string(),
        );
        lines.push('\n');
    }
    std::fs::write(dir.join("acknowledged.jsonl"), lines)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_parse_with_defaults_for_keys_left_out() {
        let b = Bounds::parse("p95=50, 5xx=3").unwrap();
        assert_eq!(b.p95_ms, 50.0);
        assert_eq!(b.max_5xx, 3);
        assert_eq!(b.p99_ms, 250.0);
        assert_eq!(b.max_memory_growth_pct, Some(5.0));
        assert_eq!(
            Bounds::parse("memory=off").unwrap().max_memory_growth_pct,
            None
        );
        assert!(Bounds::parse("p95").is_err());
        assert!(Bounds::parse("p42=1").is_err());
        assert!(Bounds::parse("lost=many").is_err());
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        let p = Percentiles::of(&v);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(&[]).p99, 0.0);
    }

    #[test]
    fn the_mix_picks_every_operation() {
        let mut rng = Rng::new(7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            seen.insert(format!("{:?}", pick_op(&mut rng)));
        }
        assert_eq!(seen.len(), MIX.len());
    }
}
