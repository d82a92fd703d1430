//! `tenantry drill`: an alert drill against a running server (issue 15, item 3; ADR 028).
//!
//! With a platform ops token it turns the drill's fault injection on (`PUT /v1/ops/drill`:
//! an error ratio, added latency, a route prefix, an expiry), drives traffic at the prefix until
//! `GET /v1/ops/slo` shows the availability page alert (`page-fast`: 1 h and 5 m at 14.4×)
//! firing, turns the drill off, drives clean traffic until the alert clears, and prints a JSON
//! report. The alert's windows are divided by `--scale` (default 60: the hour lasts a minute and
//! the five minutes five seconds), so a drill takes seconds; `--scale 1` drills with the windows
//! as stated (and takes hours to clear). The drill is recorded in the log as
//! `ops.drill_started` and `ops.drill_stopped`.

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The flags of `tenantry drill`.
#[derive(clap::Args, Debug, Clone)]
pub struct DrillArgs {
    /// The server's base URL (http only), e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: String,
    /// A platform ops token (`tenantry operator token --role ops`).
    #[arg(long, env = "TENANTRY_OPS_TOKEN")]
    pub token: String,
    /// Share of the drilled requests answered 503 `drill-injected` (0 to 1).
    #[arg(long, default_value_t = 0.5)]
    pub error_ratio: f64,
    /// Milliseconds added to each drilled request.
    #[arg(long, default_value_t = 0)]
    pub added_latency_ms: u64,
    /// The drilled routes: paths that start with this. Traffic is driven at this path (GET).
    #[arg(long, default_value = "/v1/plans")]
    pub route_prefix: String,
    /// How long the server keeps the drill on if this command dies midway (minutes).
    #[arg(long, default_value_t = 5)]
    pub minutes: u64,
    /// Divide the SLO windows by this (1 to 3600; 60: 1 h → 60 s, 5 m → 5 s).
    #[arg(long, default_value_t = 60)]
    pub scale: u64,
    /// Give up waiting for the alert to fire, then to clear, after this many seconds each.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// A Prometheus server (http://host:port) that scrapes this server and evaluates
    /// `ops/prometheus/rules/slo.yml` (scaled by the same `--scale`: see
    /// `scripts/drill-prometheus.sh`): the drill then also waits for
    /// `TenantryAvailabilityBurnPageFast` to fire and clear in Prometheus's own rule evaluation
    /// (`GET /api/v1/alerts`).
    #[arg(long)]
    pub prometheus: Option<String>,
}

/// The alert the drill shows firing and clearing.
pub const ALERT: &str = "availability:page-fast";
/// The same alert in the Prometheus rules (`ops/prometheus/rules/slo.yml`).
pub const PROMETHEUS_ALERT: &str = "TenantryAvailabilityBurnPageFast";

/// What Prometheus's own rule evaluation showed (`--prometheus`).
#[derive(Debug, Default, Serialize)]
pub struct PrometheusSeen {
    pub url: String,
    pub alert: String,
    pub quiet_before: bool,
    pub fired: bool,
    pub fired_after_ms: Option<u64>,
    pub cleared: bool,
    pub cleared_after_ms: Option<u64>,
}

/// Requests driven in one phase, by status.
#[derive(Debug, Default, Serialize)]
pub struct Traffic {
    pub requests: u64,
    pub by_status: BTreeMap<u16, u64>,
}

#[derive(Debug, Serialize)]
pub struct DrillReport {
    pub url: String,
    pub alert: String,
    pub scale: u64,
    pub drill: Value,
    pub started_position: u64,
    pub stopped_position: u64,
    /// The alert was not firing before the drill.
    pub quiet_before: bool,
    pub fired: bool,
    pub fired_after_ms: Option<u64>,
    /// Every alert firing when the drill's alert fired.
    pub firing_during: Vec<String>,
    /// The availability burn rates (short and long window of the alert) when it fired.
    pub burn_rates_during: Value,
    pub cleared: bool,
    pub cleared_after_ms: Option<u64>,
    pub firing_after: Vec<String>,
    pub traffic_during: Traffic,
    pub traffic_after: Traffic,
    /// Prometheus's view of the same alert, when `--prometheus` was given.
    pub prometheus: Option<PrometheusSeen>,
    /// Fired, then cleared, and the drill is off.
    pub ok: bool,
}

/// One keep-alive HTTP/1.1 connection (reopened after an error).
struct Client {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    fn new(url: &str) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("--url must start with http:// (got {url})");
        };
        let addr = rest.trim_end_matches('/').to_owned();
        anyhow::ensure!(
            !addr.is_empty() && !addr.contains('/'),
            "--url must be a base URL such as http://127.0.0.1:8080"
        );
        Ok(Self { addr, conn: None })
    }

    async fn call(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let reused = self.conn.is_some();
        let result = self.try_call(method, path, token, body).await;
        if result.is_err() {
            self.conn = None;
            // The server closes idle keep-alive connections: one more try on a new one.
            if reused {
                return self.try_call(method, path, token, body).await;
            }
        }
        result
    }

    async fn try_call(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(&self.addr)
                .await
                .with_context(|| format!("cannot connect to {}", self.addr))?;
            stream.set_nodelay(true)?;
            self.conn = Some(BufReader::new(stream));
        }
        let reader = self.conn.as_mut().expect("connected above");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        match body {
            Some(b) => {
                let b = b.to_string();
                req.push_str(&format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                ));
            }
            None => req.push_str("\r\n"),
        }
        reader.get_mut().write_all(req.as_bytes()).await?;
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad status line {line:?}"))?;
        let mut length = 0usize;
        let mut close = false;
        loop {
            line.clear();
            reader.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                } else if name.eq_ignore_ascii_case("connection")
                    && value.trim().eq_ignore_ascii_case("close")
                {
                    close = true;
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;
        if close {
            self.conn = None;
        }
        Ok((status, body))
    }

    /// A JSON call that must answer 200.
    async fn json(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, bytes) = self.call(method, path, Some(token), body).await?;
        let text = String::from_utf8_lossy(&bytes);
        anyhow::ensure!(status == 200, "{method} {path} answered {status}: {text}");
        serde_json::from_slice(&bytes).with_context(|| format!("{method} {path}: {text}"))
    }
}

/// What `GET /v1/ops/slo` (and Prometheus, with `--prometheus`) says about the drill's alert.
struct Seen {
    firing: Vec<String>,
    alert_firing: bool,
    burn_rates: Value,
    /// Whether Prometheus has the alert firing (`None` without `--prometheus`).
    prometheus_firing: Option<bool>,
}

/// Whether Prometheus's rule evaluation has `PROMETHEUS_ALERT` firing. HTTP/1.0, so the answer
/// comes whole (never chunked) and the connection closes after it.
async fn prometheus_firing(base: &str) -> anyhow::Result<bool> {
    let Some(addr) = base.strip_prefix("http://") else {
        bail!("--prometheus must start with http:// (got {base})");
    };
    let addr = addr.trim_end_matches('/');
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to Prometheus at {addr}"))?;
    stream
        .write_all(format!("GET /api/v1/alerts HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("Prometheus answered without a body: {text}"))?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "Prometheus /api/v1/alerts answered {}",
        head.lines().next().unwrap_or_default()
    );
    let v: Value = serde_json::from_str(body).context("Prometheus /api/v1/alerts")?;
    Ok(v["data"]["alerts"].as_array().is_some_and(|alerts| {
        alerts
            .iter()
            .any(|a| a["labels"]["alertname"] == PROMETHEUS_ALERT && a["state"] == "firing")
    }))
}

async fn look(client: &mut Client, args: &DrillArgs) -> anyhow::Result<Seen> {
    let report = client
        .json(
            "GET",
            &format!("/v1/ops/slo?scale={}", args.scale),
            &args.token,
            None,
        )
        .await?;
    let firing: Vec<String> = report["firing"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let availability = report["slos"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["slo"] == "availability"))
        .cloned()
        .unwrap_or(Value::Null);
    let burn = |name: &str| {
        availability["windows"]
            .as_array()
            .and_then(|w| w.iter().find(|w| w["window"] == name))
            .map_or(Value::Null, |w| w["burn_rate"].clone())
    };
    let prometheus_firing = match &args.prometheus {
        Some(base) => Some(prometheus_firing(base).await?),
        None => None,
    };
    Ok(Seen {
        alert_firing: firing.iter().any(|f| f == ALERT),
        burn_rates: json!({"1h": burn("1h"), "5m": burn("5m")}),
        firing,
        prometheus_firing,
    })
}

/// When each view first showed the wanted state (ms after the phase began).
struct Reached {
    service: Option<u64>,
    prometheus: Option<u64>,
}

/// Drive requests at the drilled path until the service (and Prometheus, with `--prometheus`)
/// show the alert in the wanted state, or the timeout; returns when each did, if it did, and
/// the service's last look.
async fn drive(
    client: &mut Client,
    traffic_client: &mut Client,
    args: &DrillArgs,
    traffic: &mut Traffic,
    want_firing: bool,
    min: Duration,
) -> anyhow::Result<(Reached, Seen)> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let mut next_look = started + min;
    let mut reached = Reached {
        service: None,
        prometheus: None,
    };
    let mut last_service_look = None;
    loop {
        for _ in 0..20 {
            let (status, _) = traffic_client
                .call("GET", &args.route_prefix, Some(&args.token), None)
                .await?;
            traffic.requests += 1;
            *traffic.by_status.entry(status).or_default() += 1;
        }
        let now = Instant::now();
        if now >= next_look {
            let seen = look(client, args).await?;
            let at = started.elapsed().as_millis() as u64;
            if reached.service.is_none() && seen.alert_firing == want_firing {
                reached.service = Some(at);
                last_service_look = Some(seen.firing.clone());
            }
            if reached.prometheus.is_none() && seen.prometheus_firing == Some(want_firing) {
                reached.prometheus = Some(at);
            }
            let done = reached.service.is_some()
                && (args.prometheus.is_none() || reached.prometheus.is_some());
            if done || now >= deadline {
                // Report what the service showed when it reached the state (not later).
                let seen = match last_service_look {
                    Some(firing) if want_firing => Seen { firing, ..seen },
                    _ => seen,
                };
                return Ok((reached, seen));
            }
            next_look = now + Duration::from_millis(500);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn set_drill(client: &mut Client, args: &DrillArgs, minutes: u64) -> anyhow::Result<Value> {
    client
        .json(
            "PUT",
            "/v1/ops/drill",
            &args.token,
            Some(&json!({
                "error_ratio": args.error_ratio,
                "added_latency_ms": args.added_latency_ms,
                "route_prefix": args.route_prefix,
                "minutes": minutes,
            })),
        )
        .await
}

/// Run the drill; the report says whether the alert fired and cleared.
pub async fn run(args: &DrillArgs) -> anyhow::Result<DrillReport> {
    anyhow::ensure!(
        (1..=3600).contains(&args.scale),
        "--scale must be 1 to 3600"
    );
    anyhow::ensure!(
        args.minutes >= 1,
        "--minutes must be at least 1 (the drill's expiry)"
    );
    let mut client = Client::new(&args.url)?;
    let mut traffic_client = Client::new(&args.url)?;
    let before = look(&mut client, args).await?;
    let started = set_drill(&mut client, args, args.minutes).await?;
    eprintln!(
        "drill on: {} of GET {}… answered 503, +{} ms; waiting for {ALERT} (windows ÷{})",
        args.error_ratio, args.route_prefix, args.added_latency_ms, args.scale
    );
    // The short window must be filled by the drill's traffic before it can burn.
    let short = Duration::from_secs((300 / args.scale).max(1));
    let mut during = Traffic::default();
    let fire = drive(
        &mut client,
        &mut traffic_client,
        args,
        &mut during,
        true,
        short,
    )
    .await;
    // Whatever happened, the drill is turned off.
    let stopped = set_drill(&mut client, args, 0).await?;
    let (fired_reached, seen_during) = fire?;
    let fired_after_ms = fired_reached.service;
    eprintln!(
        "drill off; {}; waiting for it to clear",
        if fired_after_ms.is_some() {
            format!("{ALERT} fired")
        } else {
            format!("{ALERT} did not fire")
        }
    );
    let mut after = Traffic::default();
    let (cleared_reached, seen_after) = drive(
        &mut client,
        &mut traffic_client,
        args,
        &mut after,
        false,
        short,
    )
    .await?;
    let cleared_after_ms = cleared_reached.service;
    let fired = fired_after_ms.is_some();
    let cleared = cleared_after_ms.is_some();
    let drill_off = stopped["active"] == json!(false);
    let prometheus = args.prometheus.as_ref().map(|url| PrometheusSeen {
        url: url.clone(),
        alert: PROMETHEUS_ALERT.into(),
        quiet_before: before.prometheus_firing == Some(false),
        fired: fired_reached.prometheus.is_some(),
        fired_after_ms: fired_reached.prometheus,
        cleared: cleared_reached.prometheus.is_some(),
        cleared_after_ms: cleared_reached.prometheus,
    });
    let prometheus_ok = prometheus
        .as_ref()
        .is_none_or(|p| p.quiet_before && p.fired && p.cleared);
    Ok(DrillReport {
        url: args.url.clone(),
        alert: ALERT.into(),
        scale: args.scale,
        started_position: started["global_position"].as_u64().unwrap_or(0),
        stopped_position: stopped["global_position"].as_u64().unwrap_or(0),
        drill: started["drill"].clone(),
        quiet_before: !before.alert_firing,
        fired,
        fired_after_ms,
        firing_during: seen_during.firing,
        burn_rates_during: seen_during.burn_rates,
        cleared,
        cleared_after_ms,
        firing_after: seen_after.firing,
        traffic_during: during,
        traffic_after: after,
        prometheus,
        ok: fired && cleared && drill_off && prometheus_ok,
    })
}
