//! `tenantry drill` against a real `tenantry serve` (issue 15, item 3; ADR 028): the page alert
//! fires in `GET /v1/ops/slo` while the drill injects errors, clears after it stops, and the drill
//! is in the log as `ops.drill_started` and `ops.drill_stopped`.

mod support;

use std::path::Path;
use std::process::Command;
use support::serve;

fn tenantry(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(args)
        .output()
        .expect("run tenantry");
    assert!(
        out.status.success(),
        "tenantry {args:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_drill_fires_the_page_alert_and_clears_it_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let token: serde_json::Value = serde_json::from_str(&tenantry(&[
        "operator", "token", "--role", "ops", "--data", data,
    ]))
    .unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    let (mut server, addr) = serve(Path::new(data));
    let url = format!("http://{addr}");

    let out = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args([
            "drill",
            "--url",
            &url,
            "--token",
            &token,
            "--error-ratio",
            "0.5",
            "--route-prefix",
            "/v1/plans",
            "--scale",
            "60",
            "--timeout-secs",
            "60",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "drill failed: {stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["alert"], "availability:page-fast");
    assert_eq!(report["quiet_before"], true, "{report:#}");
    assert_eq!(report["fired"], true, "{report:#}");
    assert_eq!(report["cleared"], true, "{report:#}");
    let during = report["firing_during"].as_array().unwrap();
    assert!(
        during.contains(&serde_json::json!("availability:page-fast")),
        "{report:#}"
    );
    assert!(
        !report["firing_after"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("availability:page-fast")),
        "{report:#}"
    );
    // Half the drilled requests were injected 503s; none after the drill stopped.
    let injected = report["traffic_during"]["by_status"]["503"]
        .as_u64()
        .unwrap();
    let total = report["traffic_during"]["requests"].as_u64().unwrap();
    assert!(
        injected * 2 >= total - 1 && injected * 2 <= total + 1,
        "{report:#}"
    );
    assert!(
        report["traffic_after"]["by_status"].get("503").is_none(),
        "{report:#}"
    );
    assert!(
        report["traffic_after"]["by_status"]["200"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        report["burn_rates_during"]["5m"].as_f64().unwrap() > 14.4,
        "{report:#}"
    );
    assert_eq!(report["drill"]["route_prefix"], "/v1/plans");
    let (started, stopped) = (
        report["started_position"].as_u64().unwrap(),
        report["stopped_position"].as_u64().unwrap(),
    );
    assert!(started > 0 && stopped > started, "{report:#}");

    // The drill is in the log.
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(server.wait().unwrap().success());
    let events: Vec<serde_json::Value> = tenantry(&["events", "export", "--data", data])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let drill: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["stream_id"] == "drills")
        .collect();
    assert_eq!(drill.len(), 2, "{drill:#?}");
    assert_eq!(drill[0]["event_type"], "ops.drill_started");
    assert_eq!(drill[0]["global_position"], started);
    assert_eq!(drill[0]["payload"]["error_ratio"], 0.5);
    assert!(drill[0]["actor"].as_str().unwrap().starts_with("operator:"));
    assert_eq!(drill[1]["event_type"], "ops.drill_stopped");
    assert_eq!(drill[1]["payload"]["reason"], "stopped");
}
