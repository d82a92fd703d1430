//! `tenantry bench http`: sign up N tenants, then drive them over C keep-alive connections with
//! an authenticated one-event command (`PATCH /v1/tenant`), an authenticated read
//! (`GET /v1/tenant`), and a refused command (`PATCH /v1/tenant` to the current name: 409, the
//! decision that writes nothing and so checks the stream's stored version first), each for a
//! fixed time. Prints one JSON object.

use crate::bench::{Latency, percentile_ms};
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Clone, Debug)]
pub struct HttpBench {
    pub tenants: usize,
    pub connections: usize,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct Phase {
    pub route: &'static str,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub requests_per_sec: f64,
    pub latency_ms: Latency,
}

#[derive(Debug, Serialize)]
pub struct HttpBenchReport {
    pub backend: String,
    pub tenants: usize,
    pub connections: usize,
    pub seconds_per_phase: f64,
    pub command: Phase,
    pub read: Phase,
    /// Refusals answered 409 count as successes here.
    pub refusal: Phase,
}

/// One keep-alive HTTP/1.1 connection (also the soak's client, `soak.rs`).
pub(crate) struct Conn {
    reader: BufReader<TcpStream>,
    host: String,
}

/// An answer: the status, the body, and whether the server is closing the connection.
pub(crate) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub close: bool,
}

impl Conn {
    pub(crate) async fn open(addr: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream),
            host: addr.to_owned(),
        })
    }

    /// Send one JSON request; returns the status and the body.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let body = body.map(|b| ("application/json", b.as_bytes()));
        let a = self.request(method, path, token, &[], body).await?;
        Ok((a.status, a.body))
    }

    /// Send one request with extra headers and a body of a content type.
    pub(crate) async fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> anyhow::Result<Answer> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        let mut bytes = req.into_bytes();
        match body {
            Some((content_type, b)) => {
                bytes.extend_from_slice(
                    format!(
                        "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                        b.len()
                    )
                    .as_bytes(),
                );
                bytes.extend_from_slice(b);
            }
            None => bytes.extend_from_slice(b"\r\n"),
        }
        self.reader.get_mut().write_all(&bytes).await?;
        let mut line = String::new();
        self.reader.read_line(&mut line).await?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad status line {line:?}"))?;
        let mut length = 0usize;
        let mut close = false;
        loop {
            line.clear();
            self.reader.read_line(&mut line).await?;
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
        self.reader.read_exact(&mut body).await?;
        Ok(Answer {
            status,
            body,
            close,
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Load {
    Rename,
    Read,
    Usage,
    /// Rename to the tenant's current name (`Steady {i}`): refused, nothing written.
    SameName,
}

async fn phase(
    addr: &str,
    tokens: &[String],
    cfg: &HttpBench,
    route: &'static str,
    load: Load,
) -> anyhow::Result<Phase> {
    let deadline = Instant::now() + Duration::from_secs_f64(cfg.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    let tenants = tokens.len();
    for c in 0..cfg.connections {
        let token = tokens[c % tokens.len()].clone();
        let addr = addr.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await?;
            let (mut ok, mut errors, mut latencies) = (0u64, 0u64, Vec::new());
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let t0 = Instant::now();
                let (status, _) = match load {
                    Load::Rename => {
                        let body = format!("{{\"name\":\"Bench c{c} n{n}\"}}");
                        conn.call("PATCH", "/v1/tenant", Some(&token), Some(&body))
                            .await?
                    }
                    Load::Read => conn.call("GET", "/v1/tenant", Some(&token), None).await?,
                    Load::SameName => {
                        let body = format!("{{\"name\":\"Steady {}\"}}", c % tenants);
                        let (status, body) = conn
                            .call("PATCH", "/v1/tenant", Some(&token), Some(&body))
                            .await?;
                        (if status == 409 { 200 } else { status }, body)
                    }
                    Load::Usage => {
                        let body = r#"{"meter":"queries","units":1}"#;
                        conn.call("POST", "/v1/usage", Some(&token), Some(body))
                            .await?
                    }
                };
                latencies.push(t0.elapsed());
                if status == 200 { ok += 1 } else { errors += 1 }
            }
            anyhow::Ok((ok, errors, latencies))
        }));
    }
    let (mut ok, mut errors, mut latencies) = (0, 0, Vec::new());
    for t in tasks {
        let (o, e, l) = t.await??;
        ok += o;
        errors += e;
        latencies.extend(l);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Ok(Phase {
        route,
        requests: ok + errors,
        ok,
        errors,
        requests_per_sec: ok as f64 / seconds,
        latency_ms: Latency {
            p50: percentile_ms(&latencies, 0.50),
            p99: percentile_ms(&latencies, 0.99),
            max: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        },
    })
}

async fn signup_tenants(addr: &str, n: usize, plan: Option<&str>) -> anyhow::Result<Vec<String>> {
    let mut conn = Conn::open(addr).await?;
    let mut tokens = Vec::new();
    for t in 0..n {
        let body = format!(
            "{{\"tenant_name\":\"Bench tenant {t}\",\"email\":\"owner{t}@bench.example\",\"name\":\"Owner {t}\"}}"
        );
        let (status, body) = conn.call("POST", "/v1/signup", None, Some(&body)).await?;
        anyhow::ensure!(
            status == 201,
            "sign-up failed: {status} {}",
            String::from_utf8_lossy(&body)
        );
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        let token = v["token"].as_str().unwrap_or_default().to_owned();
        if let Some(plan) = plan {
            let body = format!("{{\"plan\":\"{plan}\"}}");
            let (status, body) = conn
                .call("POST", "/v1/tenant/plan", Some(&token), Some(&body))
                .await?;
            anyhow::ensure!(
                status == 200,
                "upgrade failed: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        tokens.push(token);
    }
    Ok(tokens)
}

#[derive(Debug, Serialize)]
pub struct UsageBenchReport {
    pub backend: String,
    pub tenants: usize,
    pub connections: usize,
    pub seconds_per_phase: f64,
    pub spread: Phase,
    pub one_tenant: Phase,
}

/// `POST /v1/usage` over C connections: spread over N Enterprise tenants, then all on one.
pub async fn run_usage(
    addr: &str,
    backend: String,
    cfg: &HttpBench,
) -> anyhow::Result<UsageBenchReport> {
    let tokens = signup_tenants(addr, cfg.tenants, Some("enterprise")).await?;
    let spread = phase(addr, &tokens, cfg, "POST /v1/usage (spread)", Load::Usage).await?;
    let one = phase(
        addr,
        &tokens[..1],
        cfg,
        "POST /v1/usage (one tenant)",
        Load::Usage,
    )
    .await?;
    Ok(UsageBenchReport {
        backend,
        tenants: cfg.tenants,
        connections: cfg.connections,
        seconds_per_phase: cfg.seconds,
        spread,
        one_tenant: one,
    })
}

/// Drive the server at `addr`.
pub async fn run(addr: &str, backend: String, cfg: &HttpBench) -> anyhow::Result<HttpBenchReport> {
    anyhow::ensure!(
        cfg.tenants > 0 && cfg.connections > 0 && cfg.seconds > 0.0,
        "sizes must be > 0"
    );
    let tokens = signup_tenants(addr, cfg.tenants, None).await?;
    let command = phase(addr, &tokens, cfg, "PATCH /v1/tenant", Load::Rename).await?;
    let read = phase(addr, &tokens, cfg, "GET /v1/tenant", Load::Read).await?;
    let mut conn = Conn::open(addr).await?;
    for (i, token) in tokens.iter().enumerate() {
        let body = format!("{{\"name\":\"Steady {i}\"}}");
        let (status, _) = conn
            .call("PATCH", "/v1/tenant", Some(token), Some(&body))
            .await?;
        anyhow::ensure!(
            status == 200,
            "rename before the refusal phase failed: {status}"
        );
    }
    let refusal = phase(
        addr,
        &tokens,
        cfg,
        "PATCH /v1/tenant (no change: 409)",
        Load::SameName,
    )
    .await?;
    Ok(HttpBenchReport {
        backend,
        tenants: cfg.tenants,
        connections: cfg.connections,
        seconds_per_phase: cfg.seconds,
        command,
        read,
        refusal,
    })
}
