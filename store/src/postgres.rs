//! The PostgreSQL backend: one batching writer task per process that group-commits appends, a
//! connection pool for reads, and LISTEN/NOTIFY to wake subscribers.
//!
//! Why readers never skip an event (docs/adr/002): every writing transaction takes one
//! transaction-scoped advisory lock *before* it reads the head position and assigns positions,
//! and holds it until it has committed. PostgreSQL makes a commit visible before it releases the
//! transaction's locks, so when a transaction can assign position `p + 1` the one that wrote `p`
//! is already visible to every new snapshot. Positions therefore become visible in order, and a
//! reader that resumes after the last position it saw cannot jump over a late commit. Positions
//! are also dense, because a transaction that rolls back has written none.

use crate::Snapshot;
use crate::envelope::{AppendRequest, Appended, Envelope, RawJson};
use crate::error::{Result, StoreError};
use crate::idempotency;
use crate::planner::{Plan, StoredId};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use domain::TenantId;
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls, Row};
use uuid::Uuid;

/// The advisory lock every writing transaction holds from assigning positions until commit.
const WRITE_LOCK: i64 = 0x7465_6e61_6e74; // "tenant"
/// The advisory lock that serializes migrations when several instances start at once.
const MIGRATION_LOCK: i64 = 0x7465_6e61_6e75;
const CHANNEL: &str = "tenantry_events";
/// The most appends one group commit takes from the queue.
const MAX_GROUP: usize = 2048;

const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE events (
        global_position bigint PRIMARY KEY,
        tenant_id uuid NOT NULL,
        stream_id text NOT NULL,
        stream_version bigint NOT NULL,
        event_id uuid NOT NULL,
        event_type text NOT NULL,
        schema_version integer NOT NULL,
        recorded_at timestamptz NOT NULL,
        actor text NOT NULL,
        correlation_id uuid NOT NULL,
        causation_id uuid,
        trace_id text,
        payload text NOT NULL,
        UNIQUE (tenant_id, stream_id, stream_version),
        UNIQUE (event_id, tenant_id)
    );
    CREATE TABLE streams (
        tenant_id uuid NOT NULL,
        stream_id text NOT NULL,
        version bigint NOT NULL,
        PRIMARY KEY (tenant_id, stream_id)
    );
    CREATE TABLE idempotency (
        tenant_id uuid NOT NULL,
        key text NOT NULL,
        request_hash text NOT NULL,
        completed boolean NOT NULL,
        created_at bigint NOT NULL,
        status integer,
        content_type text,
        body bytea,
        PRIMARY KEY (tenant_id, key)
    );
    CREATE TABLE snapshots (
        tenant_id uuid NOT NULL,
        stream_id text NOT NULL,
        kind text NOT NULL,
        version bigint NOT NULL,
        state bytea NOT NULL,
        PRIMARY KEY (tenant_id, stream_id, kind)
    );",
    ),
    (
        2,
        // Row-level security on tenant_id: a connection acting as `tenantry_tenant` sees and writes
        // only the rows of the tenant named in the transaction setting `tenantry.tenant_id`.
        "DO $$ BEGIN
        CREATE ROLE tenantry_tenant NOLOGIN;
    EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
    END $$;
    DO $$ BEGIN
        EXECUTE format('GRANT tenantry_tenant TO %I', current_user);
    EXCEPTION WHEN duplicate_object OR invalid_grant_operation THEN NULL;
    END $$;
    GRANT SELECT, INSERT ON events, streams, snapshots, idempotency TO tenantry_tenant;
    ALTER TABLE events ENABLE ROW LEVEL SECURITY;
    ALTER TABLE streams ENABLE ROW LEVEL SECURITY;
    ALTER TABLE snapshots ENABLE ROW LEVEL SECURITY;
    ALTER TABLE idempotency ENABLE ROW LEVEL SECURITY;
    CREATE POLICY tenant_isolation ON events
        USING (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid)
        WITH CHECK (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid);
    CREATE POLICY tenant_isolation ON streams
        USING (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid)
        WITH CHECK (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid);
    CREATE POLICY tenant_isolation ON snapshots
        USING (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid)
        WITH CHECK (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid);
    CREATE POLICY tenant_isolation ON idempotency
        USING (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid)
        WITH CHECK (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid);",
    ),
    (
        3,
        "CREATE TABLE blobs (
        tenant_id uuid NOT NULL,
        blob_id text NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (tenant_id, blob_id)
    );
    GRANT SELECT, INSERT ON blobs TO tenantry_tenant;
    ALTER TABLE blobs ENABLE ROW LEVEL SECURITY;
    CREATE POLICY tenant_isolation ON blobs
        USING (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid)
        WITH CHECK (tenant_id = nullif(current_setting('tenantry.tenant_id', true), '')::uuid);",
    ),
    (
        4,
        // Business time beside commit time (NULL for events written before it existed: read as
        // recorded_at; adding a nullable column rewrites nothing), and the persisted state of each
        // read model with its checkpoint (platform-wide, not tenant data).
        "ALTER TABLE events ADD COLUMN occurred_at timestamptz;
    CREATE TABLE projection_state (
        name text PRIMARY KEY,
        position bigint NOT NULL,
        state bytea NOT NULL,
        saved_at timestamptz NOT NULL DEFAULT now()
    );",
    ),
];

type AppendReply = (AppendRequest, oneshot::Sender<Result<Appended>>);

#[derive(Debug)]
pub(crate) struct Postgres {
    pool: Pool,
    queue: std::sync::Mutex<Option<mpsc::UnboundedSender<AppendReply>>>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    head: watch::Receiver<u64>,
}

impl Postgres {
    pub(crate) async fn connect(url: &str) -> Result<Self> {
        let config = tokio_postgres::Config::from_str(url)
            .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .build()
            .map_err(StoreError::backend)?;
        migrate(&pool).await?;
        let head = {
            let client = pool.get().await?;
            client
                .query_one("SELECT coalesce(max(global_position), 0) FROM events", &[])
                .await?
                .get::<_, i64>(0) as u64
        };
        let (head_tx, head_rx) = watch::channel(head);
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(writer_loop(pool.clone(), rx, head_tx.clone()));
        let listener = tokio::spawn(listen_loop(config, head_tx));
        Ok(Self {
            pool,
            queue: std::sync::Mutex::new(Some(tx)),
            tasks: std::sync::Mutex::new(vec![writer, listener]),
            head: head_rx,
        })
    }

    pub(crate) async fn append(&self, request: AppendRequest) -> Result<Appended> {
        let (tx, rx) = oneshot::channel();
        {
            let queue = self.queue.lock().expect("queue lock");
            let queue = queue.as_ref().ok_or(StoreError::Closed)?;
            queue.send((request, tx)).map_err(|_| StoreError::Closed)?;
        }
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub(crate) fn head_watch(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    pub(crate) async fn read_all(
        &self,
        from: u64,
        limit: usize,
        tenant: Option<TenantId>,
    ) -> Result<Vec<Envelope>> {
        let client = self.pool.get().await?;
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match tenant {
            None => {
                let stmt = client
                    .prepare_cached(&format!(
                        "{SELECT} WHERE global_position >= $1 ORDER BY global_position LIMIT $2"
                    ))
                    .await?;
                client.query(&stmt, &[&from, &limit]).await?
            }
            Some(t) => {
                let mut client = client;
                let tx = tenant_scope(&mut client, t).await?;
                let stmt = tx
                    .prepare_cached(&format!(
                        "{SELECT} WHERE tenant_id = $1 AND global_position >= $2 \
                         ORDER BY global_position LIMIT $3"
                    ))
                    .await?;
                let rows = tx.query(&stmt, &[t.as_uuid(), &from, &limit]).await?;
                tx.commit().await?;
                rows
            }
        };
        rows.iter().map(envelope).collect()
    }

    pub(crate) async fn read_stream(
        &self,
        tenant: TenantId,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>> {
        let mut client = self.pool.get().await?;
        let tx = tenant_scope(&mut client, tenant).await?;
        let stmt = tx
            .prepare_cached(&format!(
                "{SELECT} WHERE tenant_id = $1 AND stream_id = $2 AND stream_version >= $3 \
                 ORDER BY stream_version LIMIT $4"
            ))
            .await?;
        let rows = tx
            .query(
                &stmt,
                &[
                    tenant.as_uuid(),
                    &stream,
                    &i64::try_from(from_version).unwrap_or(i64::MAX),
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await?;
        tx.commit().await?;
        rows.iter().map(envelope).collect()
    }

    pub(crate) async fn stream_version(&self, tenant: TenantId, stream: &str) -> Result<u64> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT version FROM streams WHERE tenant_id = $1 AND stream_id = $2",
                &[tenant.as_uuid(), &stream],
            )
            .await?;
        Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
    }

    pub(crate) async fn head(&self) -> Result<u64> {
        let client = self.pool.get().await?;
        let row = client
            .query_one("SELECT coalesce(max(global_position), 0) FROM events", &[])
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    pub(crate) async fn put_blob(&self, tenant: TenantId, id: &str, bytes: Vec<u8>) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO blobs (tenant_id, blob_id, data) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant_id, blob_id) DO UPDATE SET data = excluded.data",
                &[tenant.as_uuid(), &id, &bytes],
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn put_blob_if_absent(
        &self,
        tenant: TenantId,
        id: &str,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO blobs (tenant_id, blob_id, data) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant_id, blob_id) DO NOTHING",
                &[tenant.as_uuid(), &id, &bytes],
            )
            .await?;
        let row = client
            .query_one(
                "SELECT data FROM blobs WHERE tenant_id = $1 AND blob_id = $2",
                &[tenant.as_uuid(), &id],
            )
            .await?;
        Ok(row.get(0))
    }

    pub(crate) async fn get_blob(&self, tenant: TenantId, id: &str) -> Result<Option<Vec<u8>>> {
        let mut client = self.pool.get().await?;
        let tx = tenant_scope(&mut client, tenant).await?;
        let row = tx
            .query_opt(
                "SELECT data FROM blobs WHERE tenant_id = $1 AND blob_id = $2",
                &[tenant.as_uuid(), &id],
            )
            .await?;
        tx.commit().await?;
        Ok(row.map(|r| r.get(0)))
    }

    pub(crate) async fn delete_blob(&self, tenant: TenantId, id: &str) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                "DELETE FROM blobs WHERE tenant_id = $1 AND blob_id = $2",
                &[tenant.as_uuid(), &id],
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn read_positions(&self, positions: Vec<u64>) -> Result<Vec<Envelope>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "{SELECT} WHERE global_position = ANY($1) ORDER BY global_position"
            ))
            .await?;
        let positions: Vec<i64> = positions.into_iter().map(|p| p as i64).collect();
        let rows = client.query(&stmt, &[&positions]).await?;
        rows.iter().map(envelope).collect()
    }

    pub(crate) async fn idempotency(&self, op: idempotency::Op) -> Result<idempotency::OpResult> {
        use idempotency::{Op, OpResult};
        let now = crate::envelope::to_micros(crate::envelope::now_micros());
        let mut client = self.pool.get().await?;
        match op {
            Op::Begin {
                tenant,
                key,
                request_hash,
            } => {
                let tx = client.transaction().await?;
                // Lock the key (or its absence) for the decision, across instances.
                tx.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1::text || $2, 0))",
                    &[&tenant.as_uuid().to_string(), &key],
                )
                .await?;
                let row = tx
                    .query_opt(
                        "SELECT request_hash, completed, created_at, status, content_type, body \
                         FROM idempotency WHERE tenant_id = $1 AND key = $2",
                        &[tenant.as_uuid(), &key],
                    )
                    .await?
                    .map(|r| {
                        let completed: bool = r.get(1);
                        idempotency::Row {
                            request_hash: r.get(0),
                            completed,
                            created_at_micros: r.get(2),
                            response: completed.then(|| idempotency::StoredResponse {
                                status: r.get::<_, i32>(3) as u16,
                                content_type: r.get(4),
                                body: r.get(5),
                            }),
                        }
                    });
                let found = idempotency::decide(row, &request_hash, now);
                if found.is_none() {
                    tx.execute(
                        "INSERT INTO idempotency (tenant_id, key, request_hash, completed, created_at) \
                         VALUES ($1, $2, $3, false, $4) ON CONFLICT (tenant_id, key) DO UPDATE SET \
                         request_hash = excluded.request_hash, completed = false, \
                         created_at = excluded.created_at, status = NULL, content_type = NULL, \
                         body = NULL",
                        &[tenant.as_uuid(), &key, &request_hash, &now],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(OpResult::Begin(
                    found.unwrap_or(idempotency::Begin::Started),
                ))
            }
            Op::Complete {
                tenant,
                key,
                response,
            } => {
                client
                    .execute(
                        "UPDATE idempotency SET completed = true, status = $3, content_type = $4, \
                         body = $5 WHERE tenant_id = $1 AND key = $2",
                        &[
                            tenant.as_uuid(),
                            &key,
                            &i32::from(response.status),
                            &response.content_type,
                            &response.body,
                        ],
                    )
                    .await?;
                Ok(OpResult::Done)
            }
            Op::Abandon { tenant, key } => {
                client
                    .execute(
                        "DELETE FROM idempotency WHERE tenant_id = $1 AND key = $2",
                        &[tenant.as_uuid(), &key],
                    )
                    .await?;
                Ok(OpResult::Done)
            }
        }
    }

    pub(crate) async fn save_snapshot(&self, s: Snapshot) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO snapshots (tenant_id, stream_id, kind, version, state) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, stream_id, kind) \
                 DO UPDATE SET version = excluded.version, state = excluded.state \
                 WHERE excluded.version >= snapshots.version",
                &[
                    s.tenant_id.as_uuid(),
                    &s.stream_id,
                    &s.kind,
                    &(s.version as i64),
                    &s.state,
                ],
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn save_projection(&self, p: crate::ProjectionState) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute(
                "INSERT INTO projection_state (name, position, state, saved_at) \
                 VALUES ($1, $2, $3, now()) ON CONFLICT (name) DO UPDATE SET \
                 position = excluded.position, state = excluded.state, saved_at = now()",
                &[&p.name, &(p.position as i64), &p.state],
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn load_projection(
        &self,
        name: &str,
    ) -> Result<Option<crate::ProjectionState>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT position, state FROM projection_state WHERE name = $1",
                &[&name],
            )
            .await?;
        Ok(row.map(|r| crate::ProjectionState {
            name: name.to_owned(),
            position: r.get::<_, i64>(0) as u64,
            state: r.get(1),
        }))
    }

    pub(crate) async fn delete_projection(&self, name: &str) -> Result<()> {
        let client = self.pool.get().await?;
        client
            .execute("DELETE FROM projection_state WHERE name = $1", &[&name])
            .await?;
        Ok(())
    }

    pub(crate) async fn load_snapshot(
        &self,
        tenant: TenantId,
        stream: &str,
        kind: &str,
    ) -> Result<Option<Snapshot>> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT version, state FROM snapshots \
                 WHERE tenant_id = $1 AND stream_id = $2 AND kind = $3",
                &[tenant.as_uuid(), &stream, &kind],
            )
            .await?;
        Ok(row.map(|r| Snapshot {
            tenant_id: tenant,
            stream_id: stream.to_owned(),
            kind: kind.to_owned(),
            version: r.get::<_, i64>(0) as u64,
            state: r.get(1),
        }))
    }

    pub(crate) async fn close(&self) {
        drop(self.queue.lock().expect("queue lock").take());
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
        let mut tasks = tasks.into_iter();
        if let Some(writer) = tasks.next() {
            let _ = writer.await;
        }
        for t in tasks {
            t.abort();
        }
        self.pool.close();
    }
}

impl Drop for Postgres {
    /// The writer ends when its queue closes; the listener must be told.
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter().skip(1) {
                t.abort();
            }
        }
    }
}

/// A transaction that acts as `tenantry_tenant` for one tenant: row-level security then lets it
/// see and write that tenant's rows only, whatever its SQL says.
async fn tenant_scope(
    client: &mut deadpool_postgres::Object,
    tenant: TenantId,
) -> Result<deadpool_postgres::Transaction<'_>> {
    let tx = client.transaction().await?;
    let role = tx.prepare_cached("SET LOCAL ROLE tenantry_tenant");
    let scope = tx.prepare_cached("SELECT set_config('tenantry.tenant_id', $1, true)");
    let (role, scope) = tokio::try_join!(role, scope)?;
    let tenant = tenant.to_string();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&tenant];
    tokio::try_join!(tx.execute(&role, &[]), tx.execute(&scope, &params))?;
    Ok(tx)
}

const SELECT: &str = "SELECT global_position, tenant_id, stream_id, stream_version, event_id, \
    event_type, schema_version, recorded_at, actor, correlation_id, causation_id, trace_id, payload, \
    coalesce(occurred_at, recorded_at) FROM events";

fn envelope(r: &Row) -> Result<Envelope> {
    Ok(Envelope {
        global_position: r.try_get::<_, i64>(0)? as u64,
        tenant_id: TenantId::from_uuid(r.try_get(1)?),
        stream_id: r.try_get(2)?,
        stream_version: r.try_get::<_, i64>(3)? as u64,
        event_id: r.try_get(4)?,
        event_type: r.try_get(5)?,
        schema_version: u16::try_from(r.try_get::<_, i32>(6)?).map_err(StoreError::backend)?,
        occurred_at: r.try_get(13)?,
        recorded_at: r.try_get(7)?,
        actor: r.try_get(8)?,
        correlation_id: r.try_get(9)?,
        causation_id: r.try_get(10)?,
        trace_id: r.try_get(11)?,
        payload: RawJson::from_stored(r.try_get(12)?),
    })
}

async fn migrate(pool: &Pool) -> Result<()> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    for (version, sql) in MIGRATIONS {
        let applied = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?
            .is_some();
        if !applied {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// What the writer remembers between groups: the head position and stream versions it last
/// committed. Another instance may have moved on since; the database catches every stale value
/// (the primary key on positions, the compare-and-swap on stream versions), and the group is
/// then planned again from fresh reads.
#[derive(Debug, Default)]
struct WriterCache {
    head: Option<u64>,
    streams: HashMap<(TenantId, String), u64>,
}

const MAX_CACHED_STREAMS: usize = 200_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Plan from the cache and let constraints catch staleness and duplicate ids.
    Optimistic,
    /// Read everything the group touches under the write lock, then plan.
    Careful,
}

/// A sign that the optimistic plan may be wrong; the group is planned again carefully.
#[derive(Debug)]
struct Replan;

/// The batching writer: take everything queued, commit it in one transaction, answer each.
async fn writer_loop(
    pool: Pool,
    mut rx: mpsc::UnboundedReceiver<AppendReply>,
    head: watch::Sender<u64>,
) {
    let mut batch = Vec::new();
    let mut cache = WriterCache::default();
    while rx.recv_many(&mut batch, MAX_GROUP).await > 0 {
        let requests: Vec<&AppendRequest> = batch.iter().map(|(r, _)| r).collect();
        let outcome = match commit_group(&pool, &mut cache, &requests, Mode::Optimistic).await {
            Ok(Ok(results)) => Ok(results),
            Ok(Err(Replan)) => {
                cache = WriterCache::default();
                commit_group(&pool, &mut cache, &requests, Mode::Careful)
                    .await
                    .and_then(|r| r.map_err(|Replan| StoreError::Backend("replan failed".into())))
            }
            Err(e) => {
                tracing::debug!(error = %e, "optimistic group failed; planning it again carefully");
                cache = WriterCache::default();
                commit_group(&pool, &mut cache, &requests, Mode::Careful)
                    .await
                    .and_then(|r| r.map_err(|Replan| StoreError::Backend("replan failed".into())))
            }
        };
        match outcome {
            Ok(results) => {
                let new_head = cache.head.unwrap_or(0);
                head.send_if_modified(|h| {
                    let moved = new_head > *h;
                    *h = (*h).max(new_head);
                    moved
                });
                for ((_, reply), result) in batch.drain(..).zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed; nothing of it was written");
                cache = WriterCache::default();
                let message = e.to_string();
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(StoreError::Backend(message.clone())));
                }
            }
        }
    }
}

async fn commit_group(
    pool: &Pool,
    cache: &mut WriterCache,
    requests: &[&AppendRequest],
    mode: Mode,
) -> Result<std::result::Result<Vec<Result<Appended>>, Replan>> {
    let now = crate::envelope::now_micros();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let lock_stmt = tx
        .prepare_cached("SELECT pg_advisory_xact_lock($1)")
        .await?;
    if mode == Mode::Careful {
        // Careful reads must see everything committed before us: take the lock first.
        tx.execute(&lock_stmt, &[&WRITE_LOCK]).await?;
    }

    // What the plan needs and the cache does not have (in careful mode: everything).
    let mut unknown = HashSet::new();
    let (mut st_tenants, mut st_ids) = (Vec::new(), Vec::new());
    let (mut id_tenants, mut id_ids) = (Vec::new(), Vec::new());
    for r in requests {
        let key = (r.tenant_id, r.stream_id.clone());
        let cached = mode == Mode::Optimistic && cache.streams.contains_key(&key);
        if !cached && unknown.insert(key) {
            st_tenants.push(*r.tenant_id.as_uuid());
            st_ids.push(r.stream_id.as_str());
        }
        if mode == Mode::Careful {
            for e in &r.events {
                id_tenants.push(*r.tenant_id.as_uuid());
                id_ids.push(e.event_id);
            }
        }
    }
    let need_head = mode == Mode::Careful || cache.head.is_none();
    let head_q = async {
        if need_head {
            let row = tx
                .query_one("SELECT coalesce(max(global_position), 0) FROM events", &[])
                .await?;
            Ok::<_, tokio_postgres::Error>(Some(row.get::<_, i64>(0) as u64))
        } else {
            Ok(None)
        }
    };
    let streams_q = async {
        if st_tenants.is_empty() {
            return Ok(Vec::new());
        }
        let stmt = tx.prepare_cached(STREAMS_BY_KEY).await?;
        tx.query(&stmt, &[&st_tenants, &st_ids]).await
    };
    let ids_q = async {
        if id_tenants.is_empty() {
            return Ok(Vec::new());
        }
        let stmt = tx.prepare_cached(EVENTS_BY_ID).await?;
        tx.query(&stmt, &[&id_tenants, &id_ids]).await
    };
    // Optimistic reads are pipelined with the lock: whatever they return, the constraints
    // check it again under the lock when the group writes.
    let lock = async {
        if mode == Mode::Optimistic {
            tx.execute(&lock_stmt, &[&WRITE_LOCK]).await?;
        }
        Ok(())
    };
    let ((), head_row, stream_rows, id_rows) = tokio::try_join!(lock, head_q, streams_q, ids_q)?;

    let head = head_row.or(cache.head).unwrap_or(0);
    let mut plan = Plan::new(head);
    let mut loaded = Vec::new();
    for (tenant, stream) in &unknown {
        plan.load_stream(*tenant, stream, 0);
    }
    for r in &stream_rows {
        let tenant = TenantId::from_uuid(r.get(0));
        let stream: &str = r.get(1);
        let version = r.get::<_, i64>(2) as u64;
        plan.load_stream(tenant, stream, version);
        loaded.push(((tenant, stream.to_owned()), version));
    }
    for r in requests {
        if !plan.has_stream(r.tenant_id, &r.stream_id) {
            let version = cache.streams[&(r.tenant_id, r.stream_id.clone())];
            plan.load_stream(r.tenant_id, &r.stream_id, version);
        }
    }
    for r in &id_rows {
        plan.load_id(TenantId::from_uuid(r.get(0)), r.get(1), stored_id(r));
    }
    let mut results = Vec::with_capacity(requests.len());
    for r in requests {
        let result = plan.decide(r, now);
        if mode == Mode::Optimistic && matches!(result, Err(StoreError::Conflict { .. })) {
            // The cache may be stale, or this may be a retry of an append that went through.
            return Ok(Err(Replan));
        }
        results.push(result);
    }
    if plan.rows().is_empty() {
        tx.commit().await?;
        cache.head = Some(plan.head());
        return Ok(Ok(results));
    }

    // The compare-and-swap on each stream's version, then one multi-row insert.
    let (mut up_t, mut up_s, mut up_before, mut up_after) = (vec![], vec![], vec![], vec![]);
    let (mut new_t, mut new_s, mut new_v) = (vec![], vec![], vec![]);
    for (tenant, stream, before, after) in plan.stream_updates() {
        if before == 0 {
            new_t.push(*tenant.as_uuid());
            new_s.push(stream);
            new_v.push(after as i64);
        } else {
            up_t.push(*tenant.as_uuid());
            up_s.push(stream);
            up_before.push(before as i64);
            up_after.push(after as i64);
        }
    }
    let rows = plan.rows();
    let positions: Vec<i64> = rows.iter().map(|e| e.global_position as i64).collect();
    let tenants: Vec<Uuid> = rows.iter().map(|e| *e.tenant_id.as_uuid()).collect();
    let streams: Vec<&str> = rows.iter().map(|e| e.stream_id.as_str()).collect();
    let versions: Vec<i64> = rows.iter().map(|e| e.stream_version as i64).collect();
    let ids: Vec<Uuid> = rows.iter().map(|e| e.event_id).collect();
    let types: Vec<&str> = rows.iter().map(|e| e.event_type.as_str()).collect();
    let schemas: Vec<i32> = rows.iter().map(|e| i32::from(e.schema_version)).collect();
    let recorded: Vec<OffsetDateTime> = rows.iter().map(|e| e.recorded_at).collect();
    let occurred: Vec<OffsetDateTime> = rows.iter().map(|e| e.occurred_at).collect();
    let actors: Vec<&str> = rows.iter().map(|e| e.actor.as_str()).collect();
    let correlations: Vec<Uuid> = rows.iter().map(|e| e.correlation_id).collect();
    let causations: Vec<Option<Uuid>> = rows.iter().map(|e| e.causation_id).collect();
    let traces: Vec<Option<&str>> = rows.iter().map(|e| e.trace_id.as_deref()).collect();
    let payloads: Vec<&str> = rows.iter().map(|e| e.payload.as_str()).collect();

    let update_q = async {
        if up_t.is_empty() {
            return Ok(0);
        }
        let stmt = tx.prepare_cached(UPDATE_STREAMS).await?;
        tx.execute(&stmt, &[&up_t, &up_s, &up_before, &up_after])
            .await
    };
    let insert_streams_q = async {
        if new_t.is_empty() {
            return Ok(0);
        }
        let stmt = tx.prepare_cached(INSERT_STREAMS).await?;
        tx.execute(&stmt, &[&new_t, &new_s, &new_v]).await
    };
    let insert_events_q = async {
        if rows.len() > COPY_THRESHOLD {
            return copy_events(&tx, rows).await;
        }
        let stmt = tx.prepare_cached(INSERT_EVENTS).await?;
        tx.execute(
            &stmt,
            &[
                &positions,
                &tenants,
                &streams,
                &versions,
                &ids,
                &types,
                &schemas,
                &recorded,
                &actors,
                &correlations,
                &causations,
                &traces,
                &payloads,
                &occurred,
            ],
        )
        .await
    };
    let notify = plan.head().to_string();
    let notify_q = async {
        let stmt = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
        tx.execute(&stmt, &[&CHANNEL, &notify]).await
    };
    let (updated, _, _, _) =
        tokio::try_join!(update_q, insert_streams_q, insert_events_q, notify_q)?;
    if updated as usize != up_t.len() {
        // A stream moved since it was cached (another instance wrote to it).
        return Ok(Err(Replan));
    }
    tx.commit().await?;

    cache.head = Some(plan.head());
    if cache.streams.len() > MAX_CACHED_STREAMS {
        cache.streams.clear();
    }
    cache.streams.extend(loaded);
    for (tenant, stream, _, after) in plan.stream_updates() {
        cache.streams.insert((tenant, stream.to_owned()), after);
    }
    Ok(Ok(results))
}

/// Above this many rows a group is written with binary COPY, which PostgreSQL ingests faster
/// than an INSERT of unnested arrays; below it the INSERT saves a round trip.
const COPY_THRESHOLD: usize = 256;

async fn copy_events(
    tx: &deadpool_postgres::Transaction<'_>,
    rows: &[Envelope],
) -> std::result::Result<u64, tokio_postgres::Error> {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;
    let sink = tx
        .copy_in(
            "COPY events (global_position, tenant_id, stream_id, stream_version, event_id, \
             event_type, schema_version, recorded_at, actor, correlation_id, causation_id, \
             trace_id, payload, occurred_at) FROM STDIN BINARY",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT8,
            Type::UUID,
            Type::TEXT,
            Type::INT8,
            Type::UUID,
            Type::TEXT,
            Type::INT4,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::UUID,
            Type::UUID,
            Type::TEXT,
            Type::TEXT,
            Type::TIMESTAMPTZ,
        ],
    );
    futures_util::pin_mut!(writer);
    for e in rows {
        writer
            .as_mut()
            .write(&[
                &(e.global_position as i64),
                e.tenant_id.as_uuid(),
                &e.stream_id,
                &(e.stream_version as i64),
                &e.event_id,
                &e.event_type,
                &i32::from(e.schema_version),
                &e.recorded_at,
                &e.actor,
                &e.correlation_id,
                &e.causation_id,
                &e.trace_id,
                &e.payload.as_str(),
                &e.occurred_at,
            ])
            .await?;
    }
    writer.finish().await
}

fn stored_id(r: &Row) -> StoredId {
    StoredId {
        global_position: r.get::<_, i64>(2) as u64,
        stream_id: r.get(3),
        stream_version: r.get::<_, i64>(4) as u64,
        event_type: r.get(5),
        schema_version: r.get::<_, i32>(6) as u16,
        payload: r.get(7),
    }
}

// The LIMIT 1 inside each LATERAL keeps PostgreSQL from flattening the look-up into a hash join
// over the whole table: each key is one index probe.
const STREAMS_BY_KEY: &str = "SELECT k.tenant_id, k.stream_id, s.version \
    FROM unnest($1::uuid[], $2::text[]) AS k (tenant_id, stream_id) \
    CROSS JOIN LATERAL (SELECT version FROM streams s \
        WHERE s.tenant_id = k.tenant_id AND s.stream_id = k.stream_id LIMIT 1) s";
const EVENTS_BY_ID: &str = "SELECT k.tenant_id, k.event_id, e.global_position, e.stream_id, \
    e.stream_version, e.event_type, e.schema_version, e.payload \
    FROM unnest($1::uuid[], $2::uuid[]) AS k (tenant_id, event_id) \
    CROSS JOIN LATERAL (SELECT * FROM events e \
        WHERE e.event_id = k.event_id AND e.tenant_id = k.tenant_id LIMIT 1) e";
const UPDATE_STREAMS: &str = "UPDATE streams s SET version = k.after \
    FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[]) \
         AS k (tenant_id, stream_id, before, after) \
    WHERE s.tenant_id = k.tenant_id AND s.stream_id = k.stream_id AND s.version = k.before";
const INSERT_STREAMS: &str = "INSERT INTO streams (tenant_id, stream_id, version) \
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[])";
const INSERT_EVENTS: &str = "INSERT INTO events (global_position, tenant_id, stream_id, \
    stream_version, event_id, event_type, schema_version, recorded_at, actor, correlation_id, \
    causation_id, trace_id, payload, occurred_at) SELECT * FROM unnest($1::bigint[], $2::uuid[], \
    $3::text[], $4::bigint[], $5::uuid[], $6::text[], $7::integer[], $8::timestamptz[], $9::text[], \
    $10::uuid[], $11::uuid[], $12::text[], $13::text[], $14::timestamptz[])";

/// Keep a LISTEN connection open and move the head watch forward on every notification.
/// Notifications only wake readers: readers always re-read the table, and also poll.
async fn listen_loop(config: tokio_postgres::Config, head: watch::Sender<u64>) {
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(Ok(message)) = messages.next().await {
                        if let AsyncMessage::Notification(n) = message {
                            let _ = tx.send(n.payload().parse::<u64>().unwrap_or(0));
                        }
                    }
                });
                if client
                    .batch_execute(&format!("LISTEN {CHANNEL}"))
                    .await
                    .is_ok()
                {
                    while let Some(position) = rx.recv().await {
                        head.send_if_modified(|h| {
                            let moved = position > *h;
                            *h = (*h).max(position);
                            moved
                        });
                    }
                }
                driver.abort();
            }
            Err(e) => tracing::warn!(error = %e, "LISTEN connection failed; retrying"),
        }
        if head.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
