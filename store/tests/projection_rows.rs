//! The embedded store keeps read models' rows in a file of their own (`projections.db`, ADR 039).
//! A data directory that lost that file must not resume projections from states that counted on
//! its rows.

use domain::TenantId;
use store::{ProjectionRow, ProjectionState, Store};
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_saved_with_rows_are_forgotten_when_the_rows_file_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::from_uuid(Uuid::new_v4());
    let state = |name: &str| ProjectionState {
        name: name.into(),
        position: 7,
        state: b"state".to_vec(),
    };
    {
        let store = Store::open_embedded(dir.path()).unwrap();
        store
            .put_projection_rows(
                "tree",
                vec![ProjectionRow {
                    tenant,
                    key: vec![7],
                    write: store::RowWrite::Put(b"row".to_vec()),
                }],
            )
            .await
            .unwrap();
        store.save_projection(state("tree")).await.unwrap();
        store.close().await;
    }
    {
        // Reopened as it was: the state and its rows are both there.
        let store = Store::open_embedded(dir.path()).unwrap();
        assert_eq!(
            store.load_projection("tree").await.unwrap(),
            Some(state("tree"))
        );
        assert_eq!(
            store.projection_row("tree", tenant, &[7]).await.unwrap(),
            Some(b"row".to_vec())
        );
        store.close().await;
    }
    for f in ["projections.db", "projections.db-wal", "projections.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    let store = Store::open_embedded(dir.path()).unwrap();
    assert_eq!(
        store.load_projection("tree").await.unwrap(),
        None,
        "replayed from position 1, not resumed over rows that are gone"
    );
    assert!(
        store
            .projection_row("tree", tenant, &[7])
            .await
            .unwrap()
            .is_none()
    );
}
