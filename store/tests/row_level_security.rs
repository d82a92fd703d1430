//! PostgreSQL row-level security, forced (docs/adr/017): the store acts as roles that own
//! nothing, every tenant-scoped read runs bound to its tenant, and whatever SQL a session bound
//! to tenant A sends, it sees and changes nothing of tenant B, in every tenant-scoped table.
//!
//! The tests connect as the cluster's superuser (which bypasses row-level security); the store
//! and the canary act through the roles of migration 7, as the service does.

use domain::TenantId;
use store::idempotency::{Begin, StoredResponse};
use store::{AppendRequest, Expected, Metadata, NewEvent, RawJson, Snapshot, Store};
use tokio_postgres::{Client, GenericClient, NoTls};
use uuid::Uuid;

/// The tenant-scoped tables: every one of them must hide B from a session bound to A.
const TABLES: [&str; 9] = [
    "events",
    "streams",
    "snapshots",
    "idempotency",
    "idempotency_applied",
    "blobs",
    "chunked_blobs",
    "blob_chunks",
    "projection_rows",
];

/// A blob of two chunks (docs/adr/036), its bytes the tenant's own.
fn chunked(tenant: TenantId) -> Vec<u8> {
    tenant.as_uuid().as_bytes().repeat((1 << 20) / 16 + 1)
}

fn event(i: usize) -> NewEvent {
    NewEvent::new(
        "rls.test",
        RawJson::parse(format!("{{\"i\":{i}}}")).expect("valid JSON"),
    )
}

/// `n` events of `tenant` on stream `s`, one append each (the first under an idempotency seed,
/// which the group commit marks applied), then one append of `batch` events (above the COPY
/// threshold when large: the writer's other path).
async fn append(store: &Store, tenant: TenantId, n: usize, batch: usize) {
    for i in 0..n {
        let mut metadata = Metadata::system();
        if i == 0 {
            metadata.event_id_seed = Some(Uuid::new_v4());
        }
        store
            .append(AppendRequest {
                tenant_id: tenant,
                stream_id: "s".into(),
                expected: Expected::Any,
                events: vec![event(i)],
                metadata,
            })
            .await
            .expect("append");
    }
    if batch > 0 {
        store
            .append(AppendRequest {
                tenant_id: tenant,
                stream_id: "batch".into(),
                expected: Expected::NoStream,
                events: (0..batch).map(event).collect(),
                metadata: Metadata::system(),
            })
            .await
            .expect("append a batch");
    }
}

/// Rows of `tenant` in every tenant-scoped table: events and streams by appends, then a
/// snapshot, a completed idempotency record, a blob of one value and one of chunks, each
/// through the store.
async fn populate(store: &Store, tenant: TenantId, events: usize, batch: usize) {
    append(store, tenant, events, batch).await;
    store
        .save_snapshot(Snapshot {
            tenant_id: tenant,
            stream_id: "s".into(),
            kind: "rls/v1".into(),
            version: events as u64,
            state: tenant.as_uuid().as_bytes().to_vec(),
        })
        .await
        .expect("save a snapshot");
    let owner = Uuid::new_v4();
    assert_eq!(
        store
            .idempotency_begin(tenant, "k", "hash", owner)
            .await
            .expect("begin a key"),
        Begin::Started
    );
    assert!(
        store
            .idempotency_complete(tenant, "k", owner, response(tenant))
            .await
            .expect("complete a key")
    );
    store
        .put_blob(tenant, "b", tenant.as_uuid().as_bytes().to_vec())
        .await
        .expect("put a blob");
    store
        .put_blob(tenant, "c", chunked(tenant))
        .await
        .expect("put a blob of chunks");
    store
        .put_projection_rows(
            "rls",
            vec![store::ProjectionRow {
                tenant,
                key: vec![1],
                write: store::RowWrite::Put(tenant.as_uuid().as_bytes().to_vec()),
            }],
        )
        .await
        .expect("put a projection row");
}

fn response(tenant: TenantId) -> StoredResponse {
    StoredResponse {
        status: 201,
        content_type: "application/json".into(),
        body: tenant.to_string().into_bytes(),
    }
}

fn two_tenants() -> (TenantId, TenantId) {
    (
        TenantId::from_uuid(Uuid::new_v4()),
        TenantId::from_uuid(Uuid::new_v4()),
    )
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// `url` with another user (a later `user` parameter wins over the one in the authority).
fn as_user(url: &str, user: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}user={user}")
}

/// How many rows of each tenant-scoped table `client` sees, and how many of them are `of`'s.
async fn visible(client: &impl GenericClient, of: TenantId) -> Vec<(&'static str, i64, i64)> {
    let mut seen = Vec::new();
    for table in TABLES {
        let row = client
            .query_one(
                &format!("SELECT count(*), count(*) FILTER (WHERE tenant_id = $1) FROM {table}"),
                &[of.as_uuid()],
            )
            .await
            .expect("count rows");
        seen.push((table, row.get::<_, i64>(0), row.get::<_, i64>(1)));
    }
    seen
}

/// What a superuser sees of `tenant` in each table: proof that the rows a scoped session could
/// not see are there, and unchanged.
async fn stored(url: &str, tenant: TenantId) -> Vec<(&'static str, i64, i64)> {
    let admin = connect(url).await;
    visible(&admin, tenant).await
}

/// Every read of one tenant's data that the store offers answers that tenant's rows: each runs
/// bound to its tenant, from a session that starts bound to none, so a read path whose tenant
/// scope is removed answers nothing and fails here.
#[tokio::test]
async fn every_tenant_scoped_read_of_the_store_answers_its_tenants_rows_through_the_policies() {
    let url = store::testing::fresh_postgres_url().await;
    let store = Store::connect_postgres(&url).await.expect("connect");
    let (a, b) = two_tenants();
    populate(&store, a, 3, 0).await;
    populate(&store, b, 5, 0).await;

    let stream = store
        .read_stream(a, "s", 1, 100)
        .await
        .expect("read_stream");
    assert_eq!(stream.len(), 3, "read_stream");
    assert!(stream.iter().all(|e| e.tenant_id == a));
    let tenant = store.read_tenant(b, 1, 100).await.expect("read_tenant");
    assert_eq!(tenant.len(), 5, "read_tenant");
    assert!(tenant.iter().all(|e| e.tenant_id == b));
    assert_eq!(
        store.stream_version(a, "s").await.expect("stream_version"),
        3
    );
    assert_eq!(
        store.stream_version(b, "s").await.expect("stream_version"),
        5
    );
    let snapshot = store
        .load_snapshot(a, "s", "rls/v1")
        .await
        .expect("load_snapshot")
        .expect("A's snapshot");
    assert_eq!(
        (snapshot.version, snapshot.state),
        (3, a.as_uuid().as_bytes().to_vec())
    );
    assert_eq!(
        store.get_blob(b, "b").await.expect("get_blob"),
        Some(b.as_uuid().as_bytes().to_vec())
    );
    assert_eq!(
        store
            .put_blob_if_absent(a, "b", b"other".to_vec())
            .await
            .expect("put_blob_if_absent"),
        a.as_uuid().as_bytes().to_vec(),
        "the first writer's blob wins"
    );
    assert_eq!(
        store
            .idempotency_begin(a, "k", "hash", Uuid::new_v4())
            .await
            .expect("begin again"),
        Begin::Completed(response(a)),
        "the kept answer is replayed"
    );
    assert_eq!(
        store.get_blob(a, "c").await.expect("get_blob"),
        Some(chunked(a))
    );
    match store.open_blob(b, "c").await.expect("open_blob") {
        Some(store::BlobBody::Chunks(len, chunks)) => {
            use futures_util::StreamExt;
            let read: Vec<_> = chunks.map(|c| c.expect("a chunk")).collect().await;
            assert_eq!((len, read.concat()), (chunked(b).len() as u64, chunked(b)));
        }
        other => panic!("B's blob of chunks: {other:?}"),
    }
    assert_eq!(
        store
            .projection_rows("rls", b, &[], &[0xff], 10)
            .await
            .expect("projection_rows"),
        vec![(vec![1], b.as_uuid().as_bytes().to_vec())],
        "projection_rows"
    );
    assert_eq!(
        store
            .projection_rows_at("rls", vec![(b, vec![1]), (b, vec![2])])
            .await
            .expect("projection_rows_at"),
        vec![Some(b.as_uuid().as_bytes().to_vec()), None],
        "projection_rows_at, one tenant"
    );
    assert_eq!(
        store
            .projection_rows_at("rls", vec![(a, vec![1]), (b, vec![1])])
            .await
            .expect("projection_rows_at"),
        vec![
            Some(a.as_uuid().as_bytes().to_vec()),
            Some(b.as_uuid().as_bytes().to_vec())
        ],
        "projection_rows_at across tenants (the platform's view)"
    );
    store.delete_blob(a, "b").await.expect("delete_blob");
    assert_eq!(store.get_blob(a, "b").await.expect("get_blob"), None);
    assert_eq!(
        stored(&url, b).await[5],
        ("blobs", 1, 1),
        "A's delete leaves B's blob"
    );

    // The platform's cross-tenant reads see every tenant, through their own role.
    assert_eq!(store.read_all(1, 100).await.expect("read_all").len(), 8);
    assert_eq!(store.head().await.expect("head"), 8);
    assert_eq!(
        store
            .read_positions(vec![1, 8])
            .await
            .expect("read_positions")
            .len(),
        2
    );
    store.close().await;
}

/// The canary: SQL the store never sends, run as the role the service uses and bound to
/// tenant A, sees nothing of B in any tenant-scoped table, cannot insert, change or delete B's
/// rows, and bound to no tenant sees nothing at all. Only row-level security can make this
/// pass: the statements do not mention a tenant, or ask for B by name.
#[tokio::test]
async fn sql_the_store_never_sends_bound_to_tenant_a_sees_and_changes_nothing_of_b() {
    let url = store::testing::fresh_postgres_url().await;
    let store = Store::connect_postgres(&url).await.expect("connect");
    let (a, b) = two_tenants();
    populate(&store, a, 3, 0).await;
    populate(&store, b, 5, 0).await;
    store.close().await;
    let before = stored(&url, b).await;
    assert!(
        before.iter().all(|(_, _, of_b)| *of_b > 0),
        "B has rows in every table: {before:?}"
    );

    // A session like the store's: it starts as the tenant role (the startup option the
    // store's connections carry), then binds tenant A for one transaction.
    let mut client = connect(&format!(
        "{url}{}options=-c%20role%3Dtenantry_tenant",
        if url.contains('?') { '&' } else { '?' }
    ))
    .await;
    let role = client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("current role")
        .get::<_, String>(0);
    assert_eq!(role, "tenantry_tenant");

    let tx = client.transaction().await.expect("begin");
    tx.execute(
        "SELECT set_config('tenantry.tenant_id', $1, true)",
        &[&a.to_string()],
    )
    .await
    .expect("bind A");
    for (table, all, of_b) in visible(&tx, b).await {
        assert_eq!(of_b, 0, "{table}: nothing of B is visible");
        assert!(
            all > 0,
            "{table}: A's own rows are visible (the canary is alive)"
        );
    }
    for table in TABLES {
        let tenants = tx
            .query_one(
                &format!("SELECT count(DISTINCT tenant_id) FROM {table}"),
                &[],
            )
            .await
            .expect("distinct tenants")
            .get::<_, i64>(0);
        assert_eq!(tenants, 1, "{table}: one tenant visible");
    }
    let joined = tx
        .query_one(
            "SELECT count(*) FROM events e JOIN streams s USING (stream_id) \
             WHERE e.tenant_id <> s.tenant_id OR e.tenant_id = $1",
            &[b.as_uuid()],
        )
        .await
        .expect("a join")
        .get::<_, i64>(0);
    assert_eq!(joined, 0, "a join across the tables finds nothing of B");
    tx.rollback().await.expect("rollback");

    // Changes aimed at B change nothing: updates and deletes match no row; inserts are
    // refused, by the policy (tables the tenant role may write) or by privilege (the log).
    for (sql, refused_by) in [
        (
            "INSERT INTO snapshots (tenant_id, stream_id, kind, version, state) \
             VALUES ($1, 'x', 'k', 1, '')",
            "row-level security",
        ),
        (
            "INSERT INTO idempotency (tenant_id, key, request_hash, completed, created_at) \
             VALUES ($1, 'x', 'h', false, 0)",
            "row-level security",
        ),
        (
            "INSERT INTO blobs (tenant_id, blob_id, data) VALUES ($1, 'x', '')",
            "row-level security",
        ),
        (
            "INSERT INTO chunked_blobs (tenant_id, blob_id, generation, size, chunks) \
             VALUES ($1, 'x', gen_random_uuid(), 0, 0)",
            "row-level security",
        ),
        (
            "INSERT INTO blob_chunks (tenant_id, blob_id, generation, seq, bytes) \
             VALUES ($1, 'x', gen_random_uuid(), 0, '')",
            "row-level security",
        ),
        (
            "INSERT INTO streams (tenant_id, stream_id, version) VALUES ($1, 'x', 1)",
            "permission denied",
        ),
        (
            "INSERT INTO events (global_position, tenant_id, stream_id, stream_version, \
             event_id, event_type, schema_version, recorded_at, actor, correlation_id, payload) \
             VALUES (1000, $1, 'x', 1, gen_random_uuid(), 't', 1, now(), 'a', \
             gen_random_uuid(), '{}')",
            "permission denied",
        ),
    ] {
        let tx = client.transaction().await.expect("begin");
        tx.execute(
            "SELECT set_config('tenantry.tenant_id', $1, true)",
            &[&a.to_string()],
        )
        .await
        .expect("bind A");
        let err = tx
            .execute(sql, &[b.as_uuid()])
            .await
            .expect_err("an insert of B's row is refused");
        let db = err.as_db_error().expect("a database error");
        assert!(db.message().contains(refused_by), "{sql}: {}", db.message());
        tx.rollback().await.expect("rollback");
    }
    let tx = client.transaction().await.expect("begin");
    tx.execute(
        "SELECT set_config('tenantry.tenant_id', $1, true)",
        &[&a.to_string()],
    )
    .await
    .expect("bind A");
    for sql in [
        "UPDATE snapshots SET state = 'x' WHERE tenant_id = $1",
        "UPDATE idempotency SET body = 'x' WHERE tenant_id = $1",
        "UPDATE blobs SET data = 'x' WHERE tenant_id = $1",
        "UPDATE chunked_blobs SET size = 0 WHERE tenant_id = $1",
        "UPDATE blob_chunks SET bytes = 'x' WHERE tenant_id = $1",
        "DELETE FROM snapshots WHERE tenant_id = $1",
        "DELETE FROM idempotency WHERE tenant_id = $1",
        "DELETE FROM blobs WHERE tenant_id = $1",
        "DELETE FROM chunked_blobs WHERE tenant_id = $1",
        "DELETE FROM blob_chunks WHERE tenant_id = $1",
    ] {
        let n = tx.execute(sql, &[b.as_uuid()]).await.expect(sql);
        assert_eq!(n, 0, "{sql} touches none of B's rows");
    }
    tx.commit().await.expect("commit");

    // Bound to no tenant, the role sees nothing at all.
    let tx = client.transaction().await.expect("begin");
    for (table, all, _) in visible(&tx, b).await {
        assert_eq!(all, 0, "{table}: nothing without a tenant");
    }
    tx.rollback().await.expect("rollback");

    assert_eq!(stored(&url, b).await, before, "B's rows are all there");
}

/// Migrations run as a user that is neither superuser nor given anything but CREATEROLE and
/// its own database (what a managed PostgreSQL offers), the store works through the roles
/// they create (a group large enough for COPY included), and the tables' owner is bound by the
/// forced policies.
#[tokio::test]
async fn a_non_superuser_owner_runs_the_migrations_and_is_bound_by_the_forced_policies() {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL is set");
    let admin = connect(&base).await;
    admin
        .batch_execute(
            "DO $$ BEGIN
                IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenantry_test_owner') THEN
                    CREATE ROLE tenantry_test_owner LOGIN CREATEROLE NOSUPERUSER NOBYPASSRLS;
                END IF;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
            END $$",
        )
        .await
        .expect("a managed-style login role");
    let name = format!("tenantry_test_{}", Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {name} OWNER tenantry_test_owner"))
        .await
        .expect("its database");
    let url = as_user(
        &store::testing::with_database(&base, &name),
        "tenantry_test_owner",
    );

    let store = Store::connect_postgres(&url)
        .await
        .expect("migrations run without superuser");
    let (a, b) = two_tenants();
    populate(&store, a, 2, 300).await;
    populate(&store, b, 4, 0).await;
    assert_eq!(
        store.read_tenant(a, 1, 1000).await.expect("read").len(),
        302
    );
    assert_eq!(
        store.read_stream(b, "s", 1, 100).await.expect("read").len(),
        4
    );
    assert_eq!(store.read_all(1, 1000).await.expect("read_all").len(), 306);
    store.close().await;
    // A second start applies nothing again and reads the head through the platform role.
    let store = Store::connect_postgres(&url).await.expect("reconnect");
    assert_eq!(store.head().await.expect("head"), 306);
    store.close().await;

    let owner = connect(&url).await;
    let facts = owner
        .query_one(
            "SELECT r.rolsuper, r.rolbypassrls, \
             (SELECT count(*) FROM pg_class c WHERE c.relname = ANY($1) \
              AND c.relowner = r.oid AND c.relrowsecurity AND c.relforcerowsecurity) \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[&TABLES.to_vec()],
        )
        .await
        .expect("facts");
    assert!(!facts.get::<_, bool>(0), "not a superuser");
    assert!(
        !facts.get::<_, bool>(1),
        "does not bypass row-level security"
    );
    assert_eq!(
        facts.get::<_, i64>(2),
        TABLES.len() as i64,
        "owns every tenant-scoped table, each with row-level security forced"
    );
    // The service's sessions on this database start as the tenant role: bound to no tenant,
    // they see nothing, owner's database or not.
    let service = connect(&format!("{url}&options=-c%20role%3Dtenantry_tenant")).await;
    for (table, all, _) in visible(&service, a).await {
        assert_eq!(
            all, 0,
            "{table}: a service session outside any scope sees nothing"
        );
    }
    // The owner itself is bound too (FORCE): on the tables no cross-tenant path reads, it sees
    // none of the rows while it binds no tenant.
    for table in ["snapshots", "blobs", "chunked_blobs", "blob_chunks"] {
        let n = owner
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count")
            .get::<_, i64>(0);
        assert_eq!(n, 0, "{table}: the owner is bound by the forced policies");
    }
    let admin_view = stored(&url.replace("user=tenantry_test_owner", "user=postgres"), a).await;
    assert!(
        admin_view.iter().all(|(_, _, of_a)| *of_a > 0),
        "{admin_view:?}"
    );
}
