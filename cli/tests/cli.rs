//! The `tenantry` binary, run for real in a temp folder. On failure each assertion prints the
//! command, its stdout and its stderr.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use store::{AppendRequest, Expected, Location, Metadata, NewEvent, RawJson, Store};
use support::serve;
use uuid::Uuid;

fn tenantry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(args)
        .output()
        .expect("run tenantry")
}

#[track_caller]
fn ok(args: &[&str]) -> String {
    let out = tenantry(args);
    assert!(
        out.status.success(),
        "tenantry {args:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Two tenants, interleaved, five events in all.
async fn seed(location: &Location) -> (domain::TenantId, domain::TenantId) {
    let store = Store::open(location).await.unwrap();
    let (a, b) = (
        domain::TenantId::from_uuid(Uuid::new_v4()),
        domain::TenantId::from_uuid(Uuid::new_v4()),
    );
    for (i, t) in [a, b, a, a, b].into_iter().enumerate() {
        store
            .append(AppendRequest {
                tenant_id: t,
                stream_id: "s".into(),
                expected: Expected::Any,
                events: vec![NewEvent::new(
                    "test.exported",
                    RawJson::parse(format!("{{\"i\": {i}, \"text\": \"é\\n\\\"q\\\"\"}}")).unwrap(),
                )],
                metadata: Metadata::actor("user-7"),
            })
            .await
            .unwrap();
    }
    store.close().await;
    (a, b)
}

fn check_export(target: &[&str], a: domain::TenantId) {
    let all = ok(&[&["events", "export"], target].concat());
    let lines: Vec<serde_json::Value> = all
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON envelope"))
        .collect();
    assert_eq!(lines.len(), 5);
    for (i, e) in lines.iter().enumerate() {
        assert_eq!(e["global_position"], i as u64 + 1);
        assert_eq!(e["payload"]["i"], i as u64);
        assert_eq!(e["payload"]["text"], "é\n\"q\"");
        assert_eq!(e["actor"], "user-7");
        assert_eq!(e["event_type"], "test.exported");
        let at = e["recorded_at"].as_str().unwrap();
        assert!(
            at.ends_with('Z') && at.len() == 27,
            "RFC 3339 with microseconds: {at}"
        );
        for field in [
            "tenant_id",
            "stream_id",
            "stream_version",
            "event_id",
            "schema_version",
            "correlation_id",
            "causation_id",
            "trace_id",
        ] {
            assert!(e.get(field).is_some(), "envelope has {field}");
        }
    }
    let tenant = a.to_string();
    let only_a = ok(&[&["events", "export", "--tenant", &tenant], target].concat());
    let positions: Vec<u64> = only_a
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["global_position"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(positions, vec![1, 3, 4]);
    let from = ok(&[&["events", "export", "--from", "4"], target].concat());
    assert_eq!(from.lines().count(), 2);
}

#[tokio::test]
async fn export_writes_the_log_as_json_lines_in_commit_order_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = seed(&Location::Embedded(dir.path().to_path_buf())).await;
    check_export(&["--data", dir.path().to_str().unwrap()], a);
}

#[tokio::test]
async fn export_writes_the_log_as_json_lines_in_commit_order_postgres() {
    let url = store::testing::fresh_postgres_url().await;
    let (a, _) = seed(&Location::Postgres(url.clone())).await;
    check_export(&["--store", &url], a);
}

#[test]
fn export_refuses_a_bad_tenant_id_and_an_unreachable_store_with_a_clear_error() {
    let out = tenantry(&["events", "export", "--tenant", "not-a-uuid"]);
    assert_eq!(out.status.code(), Some(2), "usage error");
    let out = tenantry(&[
        "events",
        "export",
        "--store",
        "postgres://nobody@127.0.0.1:1/none",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open the store"), "{err}");
}

#[test]
fn bench_store_prints_one_json_report() {
    let out = ok(&[
        "bench",
        "store",
        "--backend",
        "embedded",
        "--writers",
        "4",
        "--events",
        "200",
        "--batch",
        "2",
    ]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(report["events"], 200);
    assert_eq!(report["appends"], 100);
    assert_eq!(report["read_all_events"], 200);
    for key in [
        "appends_per_sec",
        "events_per_sec",
        "read_all_events_per_sec",
    ] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert!(
        report["append_latency_ms"]["p99"].as_f64().unwrap()
            >= report["append_latency_ms"]["p50"].as_f64().unwrap()
    );
}

/// `tenantry serve` on an embedded store in `data`, on a free port; the child and its address.
#[test]
fn serve_answers_healthz_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, addr) = serve(&data);
    let mut conn = TcpStream::connect(&addr).unwrap();
    write!(
        conn,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"status\":\"ok\""), "{response}");
    assert!(
        Path::new(&data).join("events.db").exists(),
        "the embedded store was created"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

fn tenantry_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn pii_scrub_writes_one_line_out_for_each_line_in() {
    let input =
        "mail ada@example.com\n\ncall +44 20 7946 0958 now\r\nno pii\ncard 4111 1111 1111 1111";
    let out = tenantry_stdin(&["pii", "scrub"], input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text,
        "mail [email]\n\ncall [phone] now\r\nno pii\ncard [card]"
    );
    assert_eq!(text.split('\n').count(), input.split('\n').count());
    let masked = tenantry_stdin(
        &["pii", "scrub", "--method", "mask", "--detectors", "email"],
        b"ada@example.com 4111111111111111\n",
    );
    assert_eq!(
        String::from_utf8(masked.stdout).unwrap(),
        "*************** 4111111111111111\n"
    );
    let hashed = |key: &str| {
        let o = tenantry_stdin(
            &["pii", "scrub", "--method", "hash", "--key", key],
            b"ada@example.com\n",
        );
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(hashed("tenant-a"), hashed("tenant-a"));
    assert_ne!(hashed("tenant-a"), hashed("tenant-b"));
}

#[test]
fn pii_scan_prints_findings_without_values() {
    let out = tenantry_stdin(
        &["pii", "scan"],
        b"mail ada@example.com\nnothing\nssn 123-45-6789 and 10.1.2.3\n",
    );
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["lines"], 3);
    assert_eq!(report["counts"]["email"], 1);
    assert_eq!(report["counts"]["ssn"], 1);
    assert_eq!(report["counts"]["ipv4"], 1);
    assert_eq!(
        report["findings"][0],
        serde_json::json!({"line": 1, "detector": "email", "start": 5, "end": 20})
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ada@example.com"));
}

#[test]
fn pii_commands_refuse_bad_options_and_bad_input_clearly() {
    let cases: [(&[&str], &[u8], &str); 5] = [
        (
            &["pii", "scrub", "--preset", "marketing"],
            b"x\n",
            "only \"default\"",
        ),
        (&["pii", "scrub", "--method", "hash"], b"x\n", "needs --key"),
        (
            &["pii", "scrub", "--method", "shred"],
            b"x\n",
            "unknown method",
        ),
        (
            &["pii", "scan", "--detectors", "email,dna"],
            b"x\n",
            "unknown detector",
        ),
        (
            &["pii", "scrub"],
            b"fine\n\xff\xfe\n",
            "line 2 is not valid UTF-8",
        ),
    ];
    for (args, input, message) in cases {
        let out = tenantry_stdin(args, input);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(message), "{args:?}: {err}");
    }
}

#[test]
fn bench_pii_prints_one_json_report() {
    let out = ok(&["bench", "pii", "--mb", "2"]);
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(report["bytes"].as_u64().unwrap() >= 2_000_000);
    assert!(report["mb_per_sec"].as_f64().unwrap() > 0.0);
    assert!(report["findings"].as_u64().unwrap() > 0);
}

/// The log of a seeded store, one JSON value per event, in commit order.
fn exported(dir: &Path) -> Vec<serde_json::Value> {
    ok(&["events", "export", "--data", dir.to_str().unwrap()])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn seed_into(dir: &Path, tenants: &str, weeks: &str, seed: &str) -> serde_json::Value {
    let out = ok(&[
        "seed",
        "--tenants",
        tenants,
        "--weeks",
        weeks,
        "--seed",
        seed,
        "--data",
        dir.to_str().unwrap(),
    ]);
    serde_json::from_str(&out).unwrap()
}

/// `value` without its measured durations (`elapsed_ms`, at any depth).
fn without_durations(mut value: serde_json::Value) -> serde_json::Value {
    match &mut value {
        serde_json::Value::Object(map) => {
            map.remove("elapsed_ms");
            for v in map.values_mut() {
                *v = without_durations(v.take());
            }
        }
        serde_json::Value::Array(items) => {
            for v in items.iter_mut() {
                *v = without_durations(v.take());
            }
        }
        _ => {}
    }
    value
}

#[test]
fn seed_writes_the_same_realistic_history_for_the_same_seed() {
    let run = |dir: &Path| {
        let report = seed_into(dir, "12", "6", "3");
        // Tenants run concurrently within a simulated day: the same seed gives the same
        // history per stream, in the same business time. Queries and exports really run, so
        // their measured durations (`elapsed_ms`) are the one thing that differs.
        // The plan registry (platform tenant) is published at start, in real time (ADR 010).
        let mut shape: Vec<(String, String, u64, String, String, String)> = exported(dir)
            .iter()
            .filter(|e| e["tenant_id"] != domain::TenantId::PLATFORM.to_string())
            .map(|e| {
                (
                    e["tenant_id"].as_str().unwrap().to_owned(),
                    e["stream_id"].as_str().unwrap().to_owned(),
                    e["stream_version"].as_u64().unwrap(),
                    e["event_type"].as_str().unwrap().to_owned(),
                    e["occurred_at"].as_str().unwrap().to_owned(),
                    without_durations(e["payload"].clone()).to_string(),
                )
            })
            .collect();
        shape.sort();
        (report, shape)
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (report_a, log_a) = run(a.path());
    let (report_b, log_b) = run(b.path());
    assert_eq!(report_a, report_b);
    assert_eq!(log_a, log_b, "same seed, same history");
    assert_eq!(report_a["tenants"], 12);
    assert!(report_a["queries_admitted"].as_u64().unwrap() > 20);
    let types: std::collections::HashSet<&str> = log_a.iter().map(|e| e.3.as_str()).collect();
    for t in [
        "tenant.signed_up",
        "dataset.uploaded",
        "usage.recorded",
        "query.run",
        "member.added",
    ] {
        assert!(types.contains(t), "{t} in the history");
    }
}

/// ISO week number of an RFC 3339 UTC timestamp, counted from the seed's first Monday.
fn week_of(at: &str, start: time::OffsetDateTime) -> i64 {
    let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{at}: {e}"));
    (t - start).whole_days().div_euclid(7)
}

/// A 12-week seed spans twelve weeks of business time, in order, with the behaviours a funnel
/// or a cohort needs: sign-ups spread over the weeks, tenants that never upload, quota blocks
/// and upgrades, downgrades, churn.
#[test]
fn a_seeded_history_is_time_true_and_spread_as_simulated() {
    let dir = tempfile::tempdir().unwrap();
    let report = seed_into(dir.path(), "120", "12", "11");
    let start = time::macros::datetime!(2026-01-05 00:00 UTC);
    let all = exported(dir.path());
    // What the seed wrote: everything but the plan registry published at start (ADR 010).
    let seeded = all
        .iter()
        .filter(|e| e["tenant_id"] != domain::TenantId::PLATFORM.to_string())
        .count();
    assert_eq!(report["events"].as_u64().unwrap() as usize, seeded);
    // The tenants' histories (platform-wide facts, such as the plan registry written at start,
    // happen in real time).
    let tenants: std::collections::HashSet<&str> = all
        .iter()
        .filter(|e| e["event_type"] == "tenant.signed_up")
        .map(|e| e["tenant_id"].as_str().unwrap())
        .collect();
    assert_eq!(tenants.len(), 120);
    let log: Vec<&serde_json::Value> = all
        .iter()
        .filter(|e| tenants.contains(e["tenant_id"].as_str().unwrap()))
        .collect();

    let mut per_week = [0usize; 12];
    let mut signups_per_week = [0usize; 12];
    let mut previous_day = i64::MIN;
    let mut previous_in_tenant = std::collections::HashMap::new();
    for e in &log {
        let at = e["occurred_at"].as_str().unwrap();
        let week = week_of(at, start);
        assert!(
            (0..12).contains(&week),
            "{at} outside the 12 simulated weeks"
        );
        per_week[week as usize] += 1;
        if e["event_type"] == "tenant.signed_up" {
            signups_per_week[week as usize] += 1;
        }
        // The log is in business-time order to the simulated day, and each tenant's history
        // is in business-time order exactly.
        let t = time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .unwrap();
        let day = (t - start).whole_days();
        assert!(
            day >= previous_day,
            "position {} at {at} goes back in time",
            e["global_position"]
        );
        previous_day = day;
        let tenant = e["tenant_id"].as_str().unwrap();
        if let Some(before) = previous_in_tenant.insert(tenant, t) {
            assert!(before <= t, "tenant {tenant} goes back in time at {at}");
        }
        // Commit time is the real time, long after the simulated calendar.
        assert_ne!(e["recorded_at"], e["occurred_at"]);
    }
    // Every week has activity, none holds most of it.
    for (week, n) in per_week.iter().enumerate() {
        assert!(*n > 0, "week {week} is empty: {per_week:?}");
        assert!(
            *n * 4 < log.len(),
            "week {week} holds {n} of {} events: {per_week:?}",
            log.len()
        );
    }
    // Sign-ups are spread over the weeks, and grow towards the end.
    let weeks_with_signups = signups_per_week.iter().filter(|n| **n > 0).count();
    assert!(weeks_with_signups >= 9, "{signups_per_week:?}");
    let first_half: usize = signups_per_week[..6].iter().sum();
    let second_half: usize = signups_per_week[6..].iter().sum();
    assert!(second_half > first_half, "{signups_per_week:?}");
    assert_eq!(first_half + second_half, 120);

    // Behaviours, counted from the log itself.
    let tenants_with = |event_type: &str| {
        log.iter()
            .filter(|e| e["event_type"] == event_type)
            .map(|e| e["tenant_id"].as_str().unwrap())
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    let uploaded = tenants_with("dataset.uploaded");
    assert!(
        uploaded < 110 && uploaded > 60,
        "some tenants never upload: {uploaded} of 120 did"
    );
    assert_eq!(
        120 - uploaded,
        report["never_uploaded"].as_u64().unwrap() as usize
    );
    assert!(tenants_with("usage.blocked") > 0, "some hit the quota");
    assert!(tenants_with("plan.changed") > 0, "some pay or upgrade");
    assert!(tenants_with("plan.change_scheduled") > 0, "some downgrade");
    assert!(report["churned"].as_u64().unwrap() > 0, "some churn");
    assert!(report["upgrades_after_block"].as_u64().unwrap() > 0);
}

/// One HTTP/1.1 request on a new connection; the status code and the body.
fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// Refusals are coalesced per minute: the first is written at once, the rest counted in memory.
/// A graceful stop writes the count, so no refused attempt is lost with the process.
#[test]
fn a_graceful_stop_writes_the_refused_attempts_counted_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (mut child, addr) = serve(&data);
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/signup",
        None,
        r#"{"tenant_name": "Busy", "email": "busy@example.com", "name": "B"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    // The Free plan's 200 queries and 20 of grace, then refusals.
    for units in [200, 20] {
        let body = format!(r#"{{"meter": "queries", "units": {units}}}"#);
        let (status, answer) = http(&addr, "POST", "/v1/usage", Some(&token), &body);
        assert_eq!(status, 200, "{answer}");
    }
    for _ in 0..4 {
        let (status, answer) = http(
            &addr,
            "POST",
            "/v1/usage",
            Some(&token),
            r#"{"meter": "queries", "units": 1}"#,
        );
        assert_eq!(status, 402, "{answer}");
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(child.wait().unwrap().success());
    let log = ok(&["events", "export", "--data", data.to_str().unwrap()]);
    let refused: u64 = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event_type"] == "usage.blocked")
        .map(|e| e["payload"]["attempts"].as_u64().unwrap_or(1))
        .sum();
    assert_eq!(refused, 4, "every refused attempt is in the log:\n{log}");
}

/// The insights of a seeded history, through the real server, equal a recomputation from
/// `tenantry events export` written here from the definitions (SPEC §11, ADR 021), not from the
/// server's code: the funnel (overall and by plan at sign-up), the weekly cohorts and the
/// quota/upgrade report, to the unit. Their CSV and SVG forms are served too.
#[test]
fn insights_through_the_server_match_a_recomputation_from_the_exported_events() {
    use std::collections::{BTreeMap, HashMap};
    use time::{Duration, OffsetDateTime};
    let dir = tempfile::tempdir().unwrap();
    seed_into(dir.path(), "60", "8", "21");
    let data = dir.path().to_str().unwrap();
    let token: serde_json::Value =
        serde_json::from_str(&ok(&["operator", "token", "--role", "pm", "--data", data])).unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    let events = exported(dir.path());

    // The recomputation.
    let parse = |s: &serde_json::Value| {
        OffsetDateTime::parse(
            s.as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let monday = |t: OffsetDateTime| {
        (t.date() - Duration::days(i64::from(t.weekday().number_days_from_monday())))
            .midnight()
            .assume_utc()
    };
    let mut by_tenant: HashMap<String, Vec<&serde_json::Value>> = HashMap::new();
    for e in &events {
        by_tenant
            .entry(e["tenant_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(e);
    }
    let window = Duration::days(14);
    let mut reached = [0u64; 4];
    let mut by_plan: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    let mut to_convert = Vec::new();
    let mut cohorts: BTreeMap<OffsetDateTime, (u64, BTreeMap<i64, u64>)> = BTreeMap::new();
    let mut quota: BTreeMap<(OffsetDateTime, String), [u64; 4]> = BTreeMap::new();
    for list in by_tenant.values_mut() {
        list.sort_by_key(|e| (parse(&e["occurred_at"]), e["global_position"].as_u64()));
        let Some(signup) = list.iter().find(|e| e["event_type"] == "tenant.signed_up") else {
            continue;
        };
        let t0 = parse(&signup["occurred_at"]);
        let mut plan = signup["payload"]["plan"].as_str().unwrap().to_owned();
        for e in list.iter() {
            let at = parse(&e["occurred_at"]);
            if e["event_type"] == "plan.changed" && at >= t0 && at - t0 <= Duration::hours(1) {
                plan = e["payload"]["to"].as_str().unwrap().to_owned();
            }
        }
        // Each step: the first of its events at or after the previous step, within the window.
        let kinds = ["dataset.uploaded", "query.run", "export.completed"];
        let mut times = vec![t0];
        for kind in kinds {
            let previous = *times.last().unwrap();
            let next = list
                .iter()
                .map(|e| (e, parse(&e["occurred_at"])))
                .find(|(e, at)| {
                    e["event_type"] == kind
                        && *at >= previous
                        && (kind != "export.completed" || e["payload"]["badge"] == "PASS")
                });
            match next {
                Some((_, at)) if at - t0 <= window => times.push(at),
                _ => break,
            }
        }
        let counts = by_plan.entry(plan).or_default();
        for k in 0..times.len() {
            reached[k] += 1;
            counts[k] += 1;
        }
        if times.len() == 4 {
            to_convert.push((times[3] - t0).whole_seconds());
        }
        // Cohorts ("on"): active in week N after the sign-up's week.
        let cohort = cohorts.entry(monday(t0)).or_default();
        cohort.0 += 1;
        let weeks: std::collections::BTreeSet<i64> = list
            .iter()
            .filter(|e| {
                e["event_type"] == "usage.recorded"
                    && (e["stream_id"]
                        .as_str()
                        .unwrap()
                        .starts_with("usage-queries-")
                        || e["stream_id"]
                            .as_str()
                            .unwrap()
                            .starts_with("usage-exports-"))
            })
            .map(|e| (monday(parse(&e["occurred_at"])) - monday(t0)).whole_weeks())
            .collect();
        for w in weeks {
            *cohort.1.entry(w).or_default() += 1;
        }
        // Quota: blocks by their plan, upgrades by the plan they left, within 7 days of a block.
        let blocks: Vec<OffsetDateTime> = list
            .iter()
            .filter(|e| e["event_type"] == "usage.blocked")
            .map(|e| parse(&e["payload"]["at"]))
            .collect();
        let rank = |p: &str| ["free", "pro", "enterprise"].iter().position(|x| *x == p);
        let mut current = signup["payload"]["plan"].as_str().unwrap().to_owned();
        let mut pending: Option<(OffsetDateTime, String)> = None;
        for e in list.iter() {
            let at = parse(&e["occurred_at"]);
            if let Some((effective, to)) = pending.clone()
                && at >= effective
            {
                current = to;
                pending = None;
            }
            let p = &e["payload"];
            match e["event_type"].as_str().unwrap() {
                "usage.blocked" => {
                    let row = quota
                        .entry((monday(at), p["plan"].as_str().unwrap().to_owned()))
                        .or_default();
                    row[0] += p["attempts"].as_u64().unwrap();
                }
                "quota.grace_started" => {
                    quota.entry((monday(at), current.clone())).or_default()[1] += 1;
                }
                "plan.change_scheduled" => {
                    pending = Some((parse(&p["effective_at"]), p["to"].as_str().unwrap().into()));
                }
                "plan.changed" => {
                    let (from, to) = (p["from"].as_str().unwrap(), p["to"].as_str().unwrap());
                    if rank(to) > rank(from) {
                        let row = quota.entry((monday(at), from.to_owned())).or_default();
                        row[2] += 1;
                        if blocks
                            .iter()
                            .any(|b| *b <= at && at - *b <= Duration::days(7))
                        {
                            row[3] += 1;
                        }
                    }
                    current = to.to_owned();
                    pending = None;
                }
                _ => {}
            }
        }
    }
    to_convert.sort_unstable();
    assert!(
        reached[3] > 0,
        "some tenants reach a PASS export: {reached:?}"
    );

    // The server.
    let (mut child, addr) = serve(dir.path());
    let get = |path: &str| {
        let (status, body) = http(&addr, "GET", path, Some(&token), "");
        assert_eq!(status, 200, "{path}: {body}");
        body
    };
    let funnel: serde_json::Value = serde_json::from_str(&get("/v1/insights/funnel")).unwrap();
    let steps = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["tenants"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(steps(&funnel["steps"]), reached.to_vec(), "{funnel}");
    for (plan, counts) in &by_plan {
        assert_eq!(steps(&funnel["by_plan"][plan]), counts.to_vec(), "{plan}");
    }
    let median = to_convert
        .get(to_convert.len().div_ceil(2).max(1) - 1)
        .copied();
    assert_eq!(funnel["median_seconds_to_convert"].as_i64(), median);

    let served: serde_json::Value =
        serde_json::from_str(&get("/v1/insights/cohorts?weeks=10")).unwrap();
    let served = served["cohorts"].as_array().unwrap();
    assert_eq!(served.len(), cohorts.len());
    for (c, (week, (size, active))) in served.iter().zip(&cohorts) {
        assert_eq!(parse(&c["week_start"]), *week);
        assert_eq!(c["size"].as_u64().unwrap(), *size);
        for cell in c["weeks"].as_array().unwrap() {
            let n = cell["week"].as_i64().unwrap();
            let expected = if n == 0 {
                *size
            } else {
                active.get(&n).copied().unwrap_or(0)
            };
            assert_eq!(
                cell["retained"].as_u64().unwrap(),
                expected,
                "{week} week {n}"
            );
        }
    }

    let report: serde_json::Value = serde_json::from_str(&get("/v1/insights/quota")).unwrap();
    let mut served_quota: BTreeMap<(OffsetDateTime, String), [u64; 4]> = BTreeMap::new();
    for row in report["weeks"].as_array().unwrap() {
        served_quota.insert(
            (
                parse(&row["week_start"]),
                row["plan"].as_str().unwrap().to_owned(),
            ),
            [
                row["blocked_attempts"].as_u64().unwrap(),
                row["grace_entries"].as_u64().unwrap(),
                row["upgrades"].as_u64().unwrap(),
                row["upgrades_within_7_days_of_a_block"].as_u64().unwrap(),
            ],
        );
    }
    assert_eq!(served_quota, quota);

    // Drop-off per user: joined (`member.added`), then the user's own upload, query and PASS
    // export, each the first after the previous; "completed" when the next comes within 14 days.
    let mut users: HashMap<(String, String), [Option<OffsetDateTime>; 4]> = HashMap::new();
    let mut ordered: Vec<&serde_json::Value> = events.iter().collect();
    ordered.sort_by_key(|e| (parse(&e["occurred_at"]), e["global_position"].as_u64()));
    for e in ordered {
        let tenant = e["tenant_id"].as_str().unwrap().to_owned();
        let at = parse(&e["occurred_at"]);
        if e["event_type"] == "member.added" {
            let user = e["payload"]["user_id"].as_str().unwrap().to_owned();
            let steps = users.entry((tenant.clone(), user)).or_default();
            steps[0].get_or_insert(at);
        }
        let Some(user) = e["actor"].as_str().unwrap().strip_prefix("user:") else {
            continue;
        };
        let k = match e["event_type"].as_str().unwrap() {
            "dataset.uploaded" => 1,
            "query.run" => 2,
            "export.completed" if e["payload"]["badge"] == "PASS" => 3,
            _ => continue,
        };
        let steps = users.entry((tenant, user.to_owned())).or_default();
        if steps[k].is_none() && steps[k - 1].is_some_and(|p| p <= at) {
            steps[k] = Some(at);
        }
    }
    let served: serde_json::Value = serde_json::from_str(&get("/v1/insights/dropoff")).unwrap();
    for k in 0..4 {
        let reached = users.values().filter(|s| s[k].is_some()).count() as u64;
        let step = &served["steps"][k];
        assert_eq!(
            step["reached"].as_u64().unwrap(),
            reached,
            "step {k}: {step}"
        );
        if k < 3 {
            let completed = users
                .values()
                .filter(|s| match (s[k], s[k + 1]) {
                    (Some(a), Some(b)) => b - a <= window,
                    _ => false,
                })
                .count() as u64;
            assert_eq!(step["completed"].as_u64().unwrap(), completed, "step {k}");
            assert_eq!(step["dropped"].as_u64().unwrap(), reached - completed);
        }
    }

    // The files: CSV with a header and one row per step (4 overall, 4 per plan), and SVG.
    let csv = get("/v1/insights/funnel.csv");
    assert!(csv.starts_with("segment,step,tenants,"), "{csv}");
    assert_eq!(csv.lines().count(), 1 + 4 * 4);
    assert!(get("/v1/insights/cohorts.csv").starts_with("cohort_week,cohort_size,week,"));
    assert!(get("/v1/insights/quota.csv").starts_with("week,plan,blocked_attempts,"));
    for svg in [
        "/v1/insights/funnel.svg",
        "/v1/insights/cohorts.svg",
        "/v1/insights/dropoff.svg",
    ] {
        let body = get(svg);
        assert!(
            body.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
            "{body}"
        );
        assert!(body.trim_end().ends_with("</svg>"));
    }
    // Tenants' own tokens and bad parameters are refused.
    let (status, _) = http(
        &addr,
        "GET",
        "/v1/insights/funnel?window_days=0",
        Some(&token),
        "",
    );
    assert_eq!(status, 422);
    let (status, _) = http(&addr, "GET", "/v1/insights/funnel", None, "");
    assert_eq!(status, 401);
    child.kill().unwrap();
    let _ = child.wait();
}
