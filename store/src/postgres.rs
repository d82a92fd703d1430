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
use crate::planner::{Plan, StoredId};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use domain::TenantId;
use futures_util::StreamExt;
use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls, Row};
use uuid::Uuid;

/// The advisory lock every writing transaction holds from assigning positions until commit.
const WRITE_LOCK: i64 = 0x7465_6e61_6e74; // "tenant"
/// The advisory lock that serializes migrations when several instances start at once.
const MIGRATION_LOCK: i64 = 0x7465_6e61_6e75;
const CHANNEL: &str = "tenantry_events";
/// The most appends one group commit takes from the queue.
const MAX_GROUP: usize = 2048;

const MIGRATIONS: &[(i32, &str)] = &[(
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
        UNIQUE (tenant_id, event_id)
    );
    CREATE INDEX events_tenant_position ON events (tenant_id, global_position);
    CREATE TABLE streams (
        tenant_id uuid NOT NULL,
        stream_id text NOT NULL,
        version bigint NOT NULL,
        PRIMARY KEY (tenant_id, stream_id)
    );
    CREATE TABLE snapshots (
        tenant_id uuid NOT NULL,
        stream_id text NOT NULL,
        kind text NOT NULL,
        version bigint NOT NULL,
        state bytea NOT NULL,
        PRIMARY KEY (tenant_id, stream_id, kind)
    );",
)];

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
                let stmt = client
                    .prepare_cached(&format!(
                        "{SELECT} WHERE tenant_id = $1 AND global_position >= $2 \
                         ORDER BY global_position LIMIT $3"
                    ))
                    .await?;
                client.query(&stmt, &[t.as_uuid(), &from, &limit]).await?
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
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "{SELECT} WHERE tenant_id = $1 AND stream_id = $2 AND stream_version >= $3 \
                 ORDER BY stream_version LIMIT $4"
            ))
            .await?;
        let rows = client
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

const SELECT: &str = "SELECT global_position, tenant_id, stream_id, stream_version, event_id, \
    event_type, schema_version, recorded_at, actor, correlation_id, causation_id, trace_id, payload \
    FROM events";

fn envelope(r: &Row) -> Result<Envelope> {
    Ok(Envelope {
        global_position: r.try_get::<_, i64>(0)? as u64,
        tenant_id: TenantId::from_uuid(r.try_get(1)?),
        stream_id: r.try_get(2)?,
        stream_version: r.try_get::<_, i64>(3)? as u64,
        event_id: r.try_get(4)?,
        event_type: r.try_get(5)?,
        schema_version: u16::try_from(r.try_get::<_, i32>(6)?).map_err(StoreError::backend)?,
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

/// The batching writer: take everything queued, commit it in one transaction, answer each.
async fn writer_loop(
    pool: Pool,
    mut rx: mpsc::UnboundedReceiver<AppendReply>,
    head: watch::Sender<u64>,
) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, MAX_GROUP).await > 0 {
        let requests: Vec<&AppendRequest> = batch.iter().map(|(r, _)| r).collect();
        match commit_group(&pool, &requests).await {
            Ok((results, new_head)) => {
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
                tracing::error!(error = %e, "group commit failed");
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
    requests: &[&AppendRequest],
) -> Result<(Vec<Result<Appended>>, u64)> {
    let now = crate::envelope::now_micros();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .await?;

    // Everything the batch touches, loaded in three pipelined queries.
    let mut stream_keys = HashSet::new();
    let (mut st_tenants, mut st_ids) = (Vec::new(), Vec::new());
    let (mut id_tenants, mut id_ids) = (Vec::new(), Vec::new());
    for r in requests {
        if stream_keys.insert((r.tenant_id, r.stream_id.as_str())) {
            st_tenants.push(*r.tenant_id.as_uuid());
            st_ids.push(r.stream_id.as_str());
        }
        for e in &r.events {
            id_tenants.push(*r.tenant_id.as_uuid());
            id_ids.push(e.event_id);
        }
    }
    let head_q = tx.prepare_cached("SELECT coalesce(max(global_position), 0) FROM events");
    let streams_q = tx.prepare_cached(
        "SELECT s.tenant_id, s.stream_id, s.version \
         FROM unnest($1::uuid[], $2::text[]) AS k (tenant_id, stream_id) \
         JOIN streams s ON s.tenant_id = k.tenant_id AND s.stream_id = k.stream_id",
    );
    let ids_q = tx.prepare_cached(
        "SELECT e.tenant_id, e.event_id, e.global_position, e.stream_id, e.stream_version, \
         e.event_type, e.schema_version, e.payload \
         FROM unnest($1::uuid[], $2::uuid[]) AS k (tenant_id, event_id) \
         JOIN events e ON e.tenant_id = k.tenant_id AND e.event_id = k.event_id",
    );
    let (head_q, streams_q, ids_q) = tokio::try_join!(head_q, streams_q, ids_q)?;
    let streams_params: [&(dyn ToSql + Sync); 2] = [&st_tenants, &st_ids];
    let ids_params: [&(dyn ToSql + Sync); 2] = [&id_tenants, &id_ids];
    let (head_row, stream_rows, id_rows) = tokio::try_join!(
        tx.query_one(&head_q, &[]),
        tx.query(&streams_q, &streams_params),
        tx.query(&ids_q, &ids_params),
    )?;

    let mut plan = Plan::new(head_row.get::<_, i64>(0) as u64);
    for (tenant, stream) in &stream_keys {
        plan.load_stream(*tenant, stream, 0);
    }
    for r in &stream_rows {
        let tenant = TenantId::from_uuid(r.get(0));
        plan.load_stream(tenant, r.get(1), r.get::<_, i64>(2) as u64);
    }
    for r in &id_rows {
        plan.load_id(
            TenantId::from_uuid(r.get(0)),
            r.get(1),
            StoredId {
                global_position: r.get::<_, i64>(2) as u64,
                stream_id: r.get(3),
                stream_version: r.get::<_, i64>(4) as u64,
                event_type: r.get(5),
                schema_version: r.get::<_, i32>(6) as u16,
                payload: r.get(7),
            },
        );
    }
    let results: Vec<_> = requests.iter().map(|r| plan.decide(r, now)).collect();
    if plan.rows().is_empty() {
        tx.commit().await?;
        return Ok((results, plan.head()));
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
    let actors: Vec<&str> = rows.iter().map(|e| e.actor.as_str()).collect();
    let correlations: Vec<Uuid> = rows.iter().map(|e| e.correlation_id).collect();
    let causations: Vec<Option<Uuid>> = rows.iter().map(|e| e.causation_id).collect();
    let traces: Vec<Option<&str>> = rows.iter().map(|e| e.trace_id.as_deref()).collect();
    let payloads: Vec<&str> = rows.iter().map(|e| e.payload.as_str()).collect();

    let update_q = tx.prepare_cached(
        "UPDATE streams s SET version = k.after \
         FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[]) \
              AS k (tenant_id, stream_id, before, after) \
         WHERE s.tenant_id = k.tenant_id AND s.stream_id = k.stream_id AND s.version = k.before",
    );
    let insert_streams_q = tx.prepare_cached(
        "INSERT INTO streams (tenant_id, stream_id, version) \
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[])",
    );
    let insert_events_q = tx.prepare_cached(
        "INSERT INTO events (global_position, tenant_id, stream_id, stream_version, event_id, \
         event_type, schema_version, recorded_at, actor, correlation_id, causation_id, trace_id, \
         payload) SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::bigint[], \
         $5::uuid[], $6::text[], $7::integer[], $8::timestamptz[], $9::text[], $10::uuid[], \
         $11::uuid[], $12::text[], $13::text[])",
    );
    let (update_q, insert_streams_q, insert_events_q) =
        tokio::try_join!(update_q, insert_streams_q, insert_events_q)?;
    let notify = plan.head().to_string();
    let update_params: [&(dyn ToSql + Sync); 4] = [&up_t, &up_s, &up_before, &up_after];
    let insert_streams_params: [&(dyn ToSql + Sync); 3] = [&new_t, &new_s, &new_v];
    let notify_params: [&(dyn ToSql + Sync); 2] = [&CHANNEL, &notify];
    let insert_events_params: [&(dyn ToSql + Sync); 13] = [
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
    ];
    let (updated, _, _, _) = tokio::try_join!(
        tx.execute(&update_q, &update_params),
        tx.execute(&insert_streams_q, &insert_streams_params),
        tx.execute(&insert_events_q, &insert_events_params),
        tx.execute("SELECT pg_notify($1, $2)", &notify_params),
    )?;
    if updated as usize != up_t.len() {
        // Only a writer that bypasses the write lock could cause this; refuse the whole group.
        return Err(StoreError::Backend(
            "a stream version changed under the write lock; group rolled back".into(),
        ));
    }
    tx.commit().await?;
    Ok((results, plan.head()))
}

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
                if client.batch_execute(&format!("LISTEN {CHANNEL}")).await.is_ok() {
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
