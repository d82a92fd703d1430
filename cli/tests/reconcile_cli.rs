//! `tenantry reconcile`, run for real: a seeded history reconciles clean; a row deleted from the
//! persisted daily rollups (the projection's saved state, as a restart would load it) is found
//! and listed, and the exit status says so.

use std::process::Command;
use store::{Location, Store};

fn reconcile(dir: &std::path::Path) -> (i32, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args([
            "reconcile",
            "--from",
            "2026-01-01",
            "--to",
            "2026-03-01",
            "--data",
        ])
        .arg(dir)
        .output()
        .expect("run tenantry");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not a JSON report ({e}):\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_history_reconciles_clean_until_a_persisted_rollup_row_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let seeded = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(["seed", "--tenants", "8", "--weeks", "3", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(seeded.status.success(), "{seeded:?}");

    let (code, report) = reconcile(&data);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["clean"], true);
    assert!(report["summary"].as_str().unwrap().starts_with("clean"));
    assert!(report["events_read"].as_u64().unwrap() > 100);

    // Delete one row of the rollups' persisted state (saved at the command's shutdown).
    let store = Store::open(&Location::Embedded(data.clone()))
        .await
        .unwrap();
    let rollups = projections::DailyRollups::default();
    let position = projections::load(&store, &rollups)
        .await
        .unwrap()
        .expect("the rollups were saved");
    let from = time::macros::date!(2026 - 01 - 01);
    let to = time::macros::date!(2026 - 03 - 01);
    let (key, row) = rollups
        .rows(None, from, to)
        .into_iter()
        .find(|(_, r)| r.admitted > 0)
        .expect("a day with admitted units");
    rollups.remove_row(&key);
    projections::save(&store, &rollups, position).await.unwrap();
    store.close().await;

    let (code, report) = reconcile(&data);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["clean"], false);
    let diffs = report["differences"].as_array().unwrap();
    assert!(
        diffs.iter().any(|d| d["tenant"] == key.0.to_string()
            && d["when"] == key.2.to_string()
            && d["what"] == "rollup.admitted"
            && d["expected"] == row.admitted
            && d["found"] == 0),
        "{report:#}"
    );
}
