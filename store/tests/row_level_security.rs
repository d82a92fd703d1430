//! PostgreSQL row-level security: a connection bound to tenant A can neither read nor insert
//! tenant B's rows, whatever SQL it sends.

use domain::TenantId;
use store::{AppendRequest, Expected, Metadata, NewEvent, RawJson, Store};
use uuid::Uuid;

async fn append(store: &Store, tenant: TenantId, n: usize) {
    for i in 0..n {
        store
            .append(AppendRequest {
                tenant_id: tenant,
                stream_id: "s".into(),
                expected: Expected::Any,
                events: vec![NewEvent::new(
                    "rls.test",
                    RawJson::parse(format!("{{\"i\":{i}}}")).unwrap(),
                )],
                metadata: Metadata::system(),
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_connection_bound_to_one_tenant_cannot_read_or_insert_another_tenants_rows() {
    let url = store::testing::fresh_postgres_url().await;
    let store = Store::connect_postgres(&url).await.unwrap();
    let (a, b) = (
        TenantId::from_uuid(Uuid::new_v4()),
        TenantId::from_uuid(Uuid::new_v4()),
    );
    append(&store, a, 3).await;
    append(&store, b, 5).await;

    let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL ROLE tenantry_tenant")
        .await
        .unwrap();
    tx.execute(
        "SELECT set_config('tenantry.tenant_id', $1, true)",
        &[&a.to_string()],
    )
    .await
    .unwrap();
    let count = |sql: &'static str| {
        let tx = &tx;
        async move { tx.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        count("SELECT count(*) FROM events").await,
        3,
        "only A's rows are visible"
    );
    assert_eq!(
        count("SELECT count(DISTINCT tenant_id) FROM events").await,
        1
    );
    let b_rows = tx
        .query_one(
            "SELECT count(*) FROM events WHERE tenant_id = $1",
            &[b.as_uuid()],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(b_rows, 0, "asking for B by name finds nothing");
    assert_eq!(count("SELECT count(*) FROM streams").await, 1);

    // Inserting a row of B is refused by the policy.
    let err = tx
        .execute(
            "INSERT INTO events (global_position, tenant_id, stream_id, stream_version, event_id, \
             event_type, schema_version, recorded_at, actor, correlation_id, payload) \
             VALUES (1000, $1, 'x', 1, $2, 't', 1, now(), 'a', $2, '{}')",
            &[b.as_uuid(), &Uuid::new_v4()],
        )
        .await
        .unwrap_err();
    let db = err.as_db_error().expect("a database error");
    assert!(
        db.message().contains("row-level security"),
        "{}",
        db.message()
    );
    tx.rollback().await.unwrap();

    // Without a tenant bound, the role sees nothing at all.
    let tx = client.transaction().await.unwrap();
    tx.batch_execute("SET LOCAL ROLE tenantry_tenant")
        .await
        .unwrap();
    let none = tx
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(none, 0);
    tx.rollback().await.unwrap();

    // And the store's own tenant-scoped reads go through the same policy.
    assert_eq!(store.read_stream(a, "s", 1, 100).await.unwrap().len(), 3);
    assert_eq!(store.read_tenant(b, 1, 100).await.unwrap().len(), 5);
    store.close().await;
}
