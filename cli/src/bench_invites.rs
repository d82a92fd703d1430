//! `tenantry bench invites`: CSV invite imports of N rows end to end — a real server on a fresh
//! embedded store, `POST /v1/invites/csv` over HTTP, each import into a new Enterprise tenant —
//! timed from the first byte sent to the last byte of the report (issue 10: 10,000 rows ≤ 2 s).

use serde::Serialize;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct InvitesReport {
    pub rows: usize,
    pub runs: usize,
    pub csv_bytes: usize,
    /// Each import's wall time, in milliseconds, in run order.
    pub import_ms: Vec<f64>,
    pub import_median_ms: f64,
    pub import_max_ms: f64,
    /// The same file under `dry_run=true` (decided, not written), per run.
    pub dry_run_median_ms: f64,
    pub rows_per_second: f64,
    /// From the last import's answer until the outbox directory held every message of every run
    /// (one `.eml` file each; each file is followed by its `message.delivered`), in
    /// milliseconds; `null` when it took more than 300 s.
    pub outbox_drained_ms: Option<f64>,
}

fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut conn = std::net::TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP answer"))?;
    let status: u16 = std::str::from_utf8(&raw[9..12])?.parse()?;
    Ok((status, raw[split + 4..].to_vec()))
}

fn json_of(body: &[u8]) -> anyhow::Result<serde_json::Value> {
    // Answers may be chunked; the JSON object is between the first `{` and the last `}`.
    let start = body.iter().position(|b| *b == b'{').unwrap_or(0);
    let end = body
        .iter()
        .rposition(|b| *b == b'}')
        .map_or(body.len(), |e| e + 1);
    Ok(serde_json::from_slice(&body[start..end])?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// A real server on a fresh embedded store in `dir` (its outbox in `dir/outbox`): its address.
fn serve(dir: &std::path::Path) -> anyhow::Result<String> {
    let location = store::Location::Embedded(dir.join("store"));
    let outbox = dir.join("outbox");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let store = match store::Store::open(&location).await {
                Ok(s) => s,
                Err(e) => return drop(tx.send(Err(e.to_string()))),
            };
            let settings = api::settings::Settings {
                listen: "127.0.0.1:0".into(),
                store: location,
                signup_per_minute: 0,
                outbox_dir: Some(outbox),
                ..Default::default()
            };
            match api::server::start(settings, store).await {
                Ok(running) => {
                    let _ = tx.send(Ok(running.addrs[0].to_string()));
                    let _ = running.server.await;
                }
                Err(e) => drop(tx.send(Err(e.to_string()))),
            }
        })
    });
    rx.recv()?.map_err(|e| anyhow::anyhow!(e))
}

/// Run the benchmark: `runs` imports of `rows` rows each.
pub fn invites(rows: usize, runs: usize) -> anyhow::Result<InvitesReport> {
    let dir = tempfile::tempdir()?;
    let outbox_dir = dir.path().join("outbox");
    let addr = serve(dir.path())?;
    let (mut import_ms, mut dry_ms) = (Vec::new(), Vec::new());
    let mut csv_bytes = 0;
    for run in 0..runs {
        let signup = serde_json::json!({
            "tenant_name": format!("Bench {run}"),
            "email": format!("owner{run}@bench.example.com"),
            "name": "Owner",
        });
        let (status, body) = request(
            &addr,
            "POST",
            "/v1/signup",
            &[("Content-Type", "application/json")],
            signup.to_string().as_bytes(),
        )?;
        anyhow::ensure!(status == 201, "sign-up answered {status}");
        let token = json_of(&body)?["token"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no token"))?
            .to_owned();
        let auth = format!("Bearer {token}");
        let (status, _) = request(
            &addr,
            "POST",
            "/v1/tenant/plan",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            br#"{"plan": "enterprise"}"#,
        )?;
        anyhow::ensure!(status == 200, "plan change answered {status}");
        let mut csv = String::from("email,role,name\r\n");
        for i in 0..rows {
            csv.push_str(&format!(
                "user{i}.run{run}@bench.example.com,viewer,\"User {i}, Run {run}\"\r\n"
            ));
        }
        csv_bytes = csv.len();
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "text/csv"),
        ];
        let started = Instant::now();
        let (status, body) = request(
            &addr,
            "POST",
            "/v1/invites/csv?dry_run=true",
            &headers,
            csv.as_bytes(),
        )?;
        dry_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(status == 200, "dry run answered {status}");
        let started = Instant::now();
        let (status, body2) = request(&addr, "POST", "/v1/invites/csv", &headers, csv.as_bytes())?;
        import_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(
            status == 200,
            "import answered {status}: {}",
            String::from_utf8_lossy(&body2)
        );
        let created = json_of(&body2)?["counts"]["created"].as_u64().unwrap_or(0);
        anyhow::ensure!(created as usize == rows, "{created} of {rows} rows created");
        drop(body);
    }
    let drain_started = Instant::now();
    let mut outbox_drained_ms = None;
    while drain_started.elapsed() < Duration::from_secs(300) {
        let files = std::fs::read_dir(&outbox_dir).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .count()
        });
        if files >= rows * runs {
            outbox_drained_ms = Some(drain_started.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let import_median_ms = median(import_ms.clone());
    Ok(InvitesReport {
        rows,
        runs,
        csv_bytes,
        import_max_ms: import_ms.iter().copied().fold(0.0, f64::max),
        import_median_ms,
        dry_run_median_ms: median(dry_ms),
        rows_per_second: rows as f64 / (import_median_ms / 1000.0),
        import_ms,
        outbox_drained_ms,
    })
}

#[derive(Debug, Serialize)]
pub struct SignInReport {
    pub requests: usize,
    /// `POST /v1/sign-in` for a member's email, then for an unknown one, in milliseconds.
    pub known_p50_ms: f64,
    pub known_p95_ms: f64,
    pub unknown_p50_ms: f64,
    pub unknown_p95_ms: f64,
    /// Every answer's status and body were the same for both.
    pub identical_answers: bool,
}

/// `tenantry bench sign-in`: `requests` sign-in requests for a member's email and as many for
/// an unknown one, alternating, each on a new connection to a real server (fresh embedded
/// store), timed from the first byte sent to the last byte read. Each member is asked for once
/// (`requests` members: a member may ask 5 times an hour), so every known request writes its
/// code request.
pub fn sign_in(requests: usize) -> anyhow::Result<SignInReport> {
    let dir = tempfile::tempdir()?;
    let addr = serve(dir.path())?;
    let signup = serde_json::json!({
        "tenant_name": "Bench sign-in", "email": "owner@bench.example.com", "name": "Owner",
    });
    let (status, body) = request(
        &addr,
        "POST",
        "/v1/signup",
        &[("Content-Type", "application/json")],
        signup.to_string().as_bytes(),
    )?;
    anyhow::ensure!(status == 201, "sign-up answered {status}");
    let signed_up = json_of(&body)?;
    let tenant = signed_up["tenant_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let auth = format!("Bearer {}", signed_up["token"].as_str().unwrap_or_default());
    let json = [("Content-Type", "application/json")];
    let (status, _) = request(
        &addr,
        "POST",
        "/v1/tenant/plan",
        &[("Authorization", &auth), json[0]],
        br#"{"plan": "enterprise"}"#,
    )?;
    anyhow::ensure!(status == 200, "plan change answered {status}");
    for i in 0..requests {
        let member = serde_json::json!({
            "email": format!("m{i}@bench.example.com"), "name": "Member", "role": "viewer",
        });
        let (status, _) = request(
            &addr,
            "POST",
            "/v1/members",
            &[("Authorization", &auth), json[0]],
            member.to_string().as_bytes(),
        )?;
        anyhow::ensure!(status == 201, "adding a member answered {status}");
    }
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    let mut answers = std::collections::BTreeSet::new();
    for i in 0..requests {
        for (email, times) in [
            (format!("m{i}@bench.example.com"), &mut known),
            (format!("nobody{i}@bench.example.com"), &mut unknown),
        ] {
            let body = serde_json::json!({"tenant": tenant, "email": email}).to_string();
            let started = Instant::now();
            let (status, answer) = request(&addr, "POST", "/v1/sign-in", &json, body.as_bytes())?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            answers.insert((status, answer));
        }
    }
    let pct = |mut v: Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    Ok(SignInReport {
        requests,
        known_p50_ms: pct(known.clone(), 0.5),
        known_p95_ms: pct(known, 0.95),
        unknown_p50_ms: pct(unknown.clone(), 0.5),
        unknown_p95_ms: pct(unknown, 0.95),
        identical_answers: answers.len() == 1,
    })
}
