//! Tenants' SQL cannot starve the embedded event store (issue 9, item 5; ADR 034): with SQLite's
//! memory split, a sandbox holding its whole budget makes the next heavy query fail with a clear
//! error, while the store's own appends of large events, made at the same moment, all succeed.
//! The split is process-wide and must come before SQLite's first use: nextest runs this test in a
//! process of its own.

use dataplane::sandbox::{Limits, MemoryCap, QueryError, Table};
use domain::TenantId;
use std::time::Duration;
use store::{AppendRequest, Expected, Metadata, NewEvent, RawJson, Store};

const BUDGET: u64 = 40 << 20;

/// A dataset of about 1 MB of text.
fn csv() -> String {
    let mut out = String::from("id,note\n");
    for i in 0..7_000 {
        out.push_str(&format!("{i},{}\n", "n".repeat(140)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_at_its_budget_never_fails_the_embedded_stores_writes() {
    assert!(dataplane::sandbox::split_memory());
    assert_eq!(
        dataplane::sandbox::set_memory_cap(BUDGET).unwrap(),
        MemoryCap::Sandbox
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_embedded(dir.path()).unwrap();

    // Loaded tables are the sandbox's: load them until the next one no longer fits, so that the
    // sandbox holds its whole budget but for less than one table.
    let data = csv();
    let columns = dataplane::ingest::ingest(data.as_bytes()).unwrap().columns;
    let mut tables = Vec::new();
    let refusal = loop {
        match Table::load(data.as_bytes(), &columns) {
            Ok(t) => tables.push(t),
            Err(e) => break e,
        }
        assert!(tables.len() < 1_000, "the budget never filled");
    };
    assert!(
        matches!(&refusal, QueryError::Load(m) if m.contains("out of memory")),
        "{refusal:?}"
    );
    assert!(tables.len() >= 4, "{} tables", tables.len());

    // The store's appends of large events, with the sandbox full.
    let tenant = TenantId::from_uuid(uuid::Uuid::new_v4());
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(512 * 1024));
    for i in 0..40 {
        store
            .append(AppendRequest {
                tenant_id: tenant,
                stream_id: format!("s{}", i % 4),
                expected: Expected::Any,
                events: vec![NewEvent::new(
                    "test.large",
                    RawJson::parse(big.clone()).unwrap(),
                )],
                metadata: Metadata::actor("tester"),
            })
            .await
            .unwrap_or_else(|e| panic!("append {i} failed beside a full sandbox: {e}"));
    }
    assert_eq!(store.read_all(1, 100).await.unwrap().len(), 40);

    // A heavy query fails with a clear answer; a small one still runs.
    let limits = Limits {
        time: Duration::from_secs(120),
        ..Limits::default()
    };
    let err = tables[0]
        .query(
            "SELECT count(*) FROM (SELECT a.note || b.id AS s FROM data a, data b \
             WHERE b.id < 50 GROUP BY s)",
            limits,
        )
        .unwrap_err();
    assert!(
        matches!(&err, QueryError::Invalid(m) if m.contains("more memory")),
        "{err:?}"
    );
    assert_eq!(
        tables[1]
            .query("SELECT count(*) FROM data", Limits::default())
            .unwrap()
            .rows[0][0],
        serde_json::Value::from(7_000)
    );
    // The sandbox gives its memory back with its tables.
    drop(tables);
    assert_eq!(dataplane::sandbox::sandbox_memory_used(), 0);
}
