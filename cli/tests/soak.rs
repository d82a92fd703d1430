//! `tenantry soak` against a real `tenantry serve` (issue 15, item 1; ADR 033): a short soak on
//! each store (two instances on one PostgreSQL), the report's structure, and the 0-loss check
//! proved both ways: every acknowledged write the soak lists is found in `tenantry events export`
//! by this test's own reading, and a check against a store that lacks the writes fails.

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// `tenantry serve` on `store_args` and a free port, sign-ups unlimited (the soak signs up every
/// tenant from one address): the child and its base URL.
fn serve(store_args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(store_args)
        .env("TENANTRY_SIGNUP_PER_MINUTE", "0")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the server stopped before saying where it listens"
        );
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (child, format!("http://{addr}"))
}

fn stop(mut server: Child) {
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(server.wait().unwrap().success());
}

fn soak(urls: &[&str], store_args: &[&str], report_dir: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantry"));
    cmd.arg("soak");
    for u in urls {
        cmd.args(["--url", u]);
    }
    // A debug build on a shared machine: the latency bounds are loose, the others are not.
    cmd.args([
        "--tenants",
        "3",
        "--duration",
        "5s",
        "--rate",
        "30",
        "--seed",
        "7",
        "--progress-secs",
        "2",
        "--bounds",
        "p95=3000,p99=6000,5xx=0,lost=0,memory=200,unanswered=0",
        "--report-dir",
        report_dir.to_str().unwrap(),
    ])
    .args(store_args)
    .output()
    .unwrap()
}

fn report_of(out: &Output, dir: &Path) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "soak failed with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(stderr.contains("soak: "), "no progress lines: {stderr}");
    let printed: Value = serde_json::from_str(&stdout).unwrap();
    let written: Value =
        serde_json::from_slice(&std::fs::read(dir.join("soak-report.json")).unwrap()).unwrap();
    assert_eq!(printed, written);
    let md = std::fs::read_to_string(dir.join("soak-report.md")).unwrap();
    assert!(md.contains("**PASS**"), "{md}");
    assert!(md.contains("## 0-loss check"), "{md}");
    written
}

/// The report's shape, and a soak that did what it says.
fn check_report(r: &Value, instances: usize) {
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["urls"].as_array().unwrap().len(), instances);
    let requests = r["requests"].as_u64().unwrap();
    // 5 s at 30/s is 150 due requests; keyed retries add their second sends.
    assert!((150..=200).contains(&requests), "{r:#}");
    assert!(r["throughput_rps"].as_f64().unwrap() > 20.0, "{r:#}");
    assert_eq!(r["status_5xx"], 0, "{r:#}");
    assert_eq!(r["unanswered"], 0, "{r:#}");
    let routes: Vec<&str> = r["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["route"].as_str().unwrap())
        .collect();
    for route in [
        "GET /v1/tenant",
        "POST /v1/usage",
        "PATCH /v1/tenant",
        "POST /v1/datasets/{id}/query",
    ] {
        assert!(routes.contains(&route), "{route} missing: {routes:?}");
    }
    assert!(routes.len() >= 10, "a thin mix: {routes:?}");
    for route in r["routes"].as_array().unwrap() {
        let l = &route["latency_ms"];
        let (p50, p95, p99, max) = (
            l["p50"].as_f64().unwrap(),
            l["p95"].as_f64().unwrap(),
            l["p99"].as_f64().unwrap(),
            l["max"].as_f64().unwrap(),
        );
        assert!(
            p50 <= p95 && p95 <= p99 && p99 <= max && p50 > 0.0,
            "{route:#}"
        );
    }
    assert!(r["commands"].as_u64().unwrap() > 50, "{r:#}");
    // Memory of every instance, sampled about once a second.
    let memory = r["memory"].as_array().unwrap();
    assert!(memory.len() >= 4, "{r:#}");
    for m in memory {
        let rss = m["rss_bytes"].as_array().unwrap();
        assert_eq!(rss.len(), instances);
        assert!(rss.iter().all(|b| b.as_u64().unwrap() > 1_000_000), "{m:#}");
        assert!(m["projection_lag"].is_u64(), "{m:#}");
    }
    assert!(r["memory_growth_pct"].is_f64(), "{r:#}");
    let loss = &r["loss"];
    assert!(loss["acknowledged"].as_u64().unwrap() > 30, "{loss:#}");
    assert_eq!(loss["missing_in_api"], 0, "{loss:#}");
    assert_eq!(loss["missing_in_log"], 0, "{loss:#}");
    assert_eq!(loss["lost"], 0, "{loss:#}");
    assert!(loss["keyed_retries"].as_u64().unwrap() > 0, "{loss:#}");
    assert_eq!(loss["keyed_retry_mismatches"], 0, "{loss:#}");
    assert_eq!(r["verdicts"].as_array().unwrap().len(), 6, "{r:#}");
}

/// Every acknowledged write the soak lists, found by this test in `tenantry events export`
/// with its tenant: the assertion that fails if a write were lost.
fn every_acknowledged_write_is_in_the_export(dir: &Path, store_args: &[&str], r: &Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["events", "export"])
        .args(store_args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log: HashMap<u64, String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let e: Value = serde_json::from_str(l).unwrap();
            (
                e["global_position"].as_u64().unwrap(),
                e["tenant_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let acked: Vec<Value> = std::fs::read_to_string(dir.join("acknowledged.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        acked.len() as u64,
        r["loss"]["acknowledged"].as_u64().unwrap()
    );
    for a in &acked {
        let position = a["global_position"].as_u64().unwrap();
        assert_eq!(
            log.get(&position).map(String::as_str),
            a["tenant_id"].as_str(),
            "acknowledged write {a} is not in the log"
        );
    }
}

#[test]
fn a_short_soak_on_the_embedded_store_loses_nothing_and_reports_every_part() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let store_args = ["--data", data];
    let (server, url) = serve(&store_args);
    let reports = dir.path().join("report");
    let out = soak(&[&url], &store_args, &reports);
    let r = report_of(&out, &reports);
    check_report(&r, 1);

    // The check can fail: against a store that never saw these writes, every one is missing.
    let empty = dir.path().join("empty");
    let out = soak(
        &[&url],
        &["--data", empty.to_str().unwrap()],
        &dir.path().join("r2"),
    );
    assert!(
        !out.status.success(),
        "a soak checked against an empty store passed"
    );
    let r2: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("r2/soak-report.json")).unwrap())
            .unwrap();
    assert_eq!(r2["ok"], false);
    assert_eq!(r2["loss"]["missing_in_api"], 0, "{:#}", r2["loss"]);
    assert_eq!(
        r2["loss"]["missing_in_log"], r2["loss"]["acknowledged"],
        "{:#}",
        r2["loss"]
    );
    assert_eq!(r2["loss"]["lost"], r2["loss"]["acknowledged"]);

    stop(server);
    every_acknowledged_write_is_in_the_export(&reports, &store_args, &r);
}

#[test]
fn a_short_soak_over_two_instances_on_one_postgres_loses_nothing() {
    let url = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(store::testing::fresh_postgres_url());
    let store_args = ["--store", url.as_str()];
    let (a, url_a) = serve(&store_args);
    let (b, url_b) = serve(&store_args);
    let dir = tempfile::tempdir().unwrap();
    let reports = dir.path().join("report");
    let out = soak(&[&url_a, &url_b], &store_args, &reports);
    let r = report_of(&out, &reports);
    check_report(&r, 2);
    stop(a);
    stop(b);
    every_acknowledged_write_is_in_the_export(&reports, &store_args, &r);
}
