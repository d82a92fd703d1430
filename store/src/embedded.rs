//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL`, one writer thread that
//! group-commits every append waiting in its queue, and a small pool of reader connections.
//!
//! Positions are dense and in commit order: the writer takes SQLite's write lock (`BEGIN
//! IMMEDIATE`) before reading the head position, so even a second process writing to the same
//! file (the operator CLI beside a running server) cannot interleave positions.

use crate::envelope::{AppendRequest, Appended, Envelope, RawJson, from_micros, now_micros, to_micros};
use crate::error::{Result, StoreError};
use crate::planner::{Plan, StoredId};
use crate::Snapshot;
use domain::TenantId;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

/// The most appends one group commit takes from the queue.
const MAX_GROUP: usize = 4096;

const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    "CREATE TABLE events (
        global_position INTEGER PRIMARY KEY,
        tenant_id BLOB NOT NULL,
        stream_id TEXT NOT NULL,
        stream_version INTEGER NOT NULL,
        event_id BLOB NOT NULL,
        event_type TEXT NOT NULL,
        schema_version INTEGER NOT NULL,
        recorded_at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        correlation_id BLOB NOT NULL,
        causation_id BLOB,
        trace_id TEXT,
        payload TEXT NOT NULL
    );
    CREATE UNIQUE INDEX events_stream ON events (tenant_id, stream_id, stream_version);
    CREATE UNIQUE INDEX events_event_id ON events (tenant_id, event_id);
    CREATE INDEX events_tenant_position ON events (tenant_id, global_position);
    CREATE TABLE snapshots (
        tenant_id BLOB NOT NULL,
        stream_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        version INTEGER NOT NULL,
        state BLOB NOT NULL,
        PRIMARY KEY (tenant_id, stream_id, kind)
    );",
)];

enum WriteOp {
    Append(AppendRequest, oneshot::Sender<Result<Appended>>),
    Snapshot(Snapshot, oneshot::Sender<Result<()>>),
}

#[derive(Debug)]
pub(crate) struct Embedded {
    queue: Mutex<Option<mpsc::Sender<WriteOp>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<ReaderPool>,
    head: watch::Receiver<u64>,
}

impl Embedded {
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("events.db");
        let mut conn = Connection::open(&path)?;
        configure(&conn)?;
        migrate(&mut conn)?;
        let head = head_position(&conn)?;
        let (head_tx, head_rx) = watch::channel(head);
        let (tx, rx) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("tenantry-store-writer".into())
            .spawn(move || writer_loop(conn, rx, head_tx))
            .map_err(StoreError::backend)?;
        Ok(Self {
            queue: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            readers: Arc::new(ReaderPool {
                path,
                idle: Mutex::new(Vec::new()),
            }),
            head: head_rx,
        })
    }

    fn submit(&self, op: WriteOp) -> Result<()> {
        let queue = self.queue.lock().expect("queue lock");
        let tx = queue.as_ref().ok_or(StoreError::Closed)?;
        tx.send(op).map_err(|_| StoreError::Closed)
    }

    pub(crate) async fn append(&self, request: AppendRequest) -> Result<Appended> {
        let (tx, rx) = oneshot::channel();
        self.submit(WriteOp::Append(request, tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub(crate) async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.submit(WriteOp::Snapshot(snapshot, tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub(crate) fn head_watch(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.get()?;
            let out = f(&conn);
            pool.put(conn);
            out
        })
        .await
        .map_err(StoreError::backend)?
    }

    pub(crate) async fn read_all(
        &self,
        from: u64,
        limit: usize,
        tenant: Option<TenantId>,
    ) -> Result<Vec<Envelope>> {
        self.read(move |conn| {
            let from = i64::try_from(from).unwrap_or(i64::MAX);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            match tenant {
                None => {
                    let mut stmt = conn.prepare_cached(&format!(
                        "{SELECT} WHERE global_position >= ?1 ORDER BY global_position LIMIT ?2"
                    ))?;
                    collect(stmt.query(params![from, limit])?)
                }
                Some(t) => {
                    let mut stmt = conn.prepare_cached(&format!(
                        "{SELECT} WHERE tenant_id = ?1 AND global_position >= ?2 \
                         ORDER BY global_position LIMIT ?3"
                    ))?;
                    collect(stmt.query(params![t.as_uuid().as_bytes(), from, limit])?)
                }
            }
        })
        .await
    }

    pub(crate) async fn read_stream(
        &self,
        tenant: TenantId,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>> {
        let stream = stream.to_owned();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "{SELECT} WHERE tenant_id = ?1 AND stream_id = ?2 AND stream_version >= ?3 \
                 ORDER BY stream_version LIMIT ?4"
            ))?;
            collect(stmt.query(params![
                tenant.as_uuid().as_bytes(),
                stream,
                i64::try_from(from_version).unwrap_or(i64::MAX),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ])?)
        })
        .await
    }

    pub(crate) async fn stream_version(&self, tenant: TenantId, stream: &str) -> Result<u64> {
        let stream = stream.to_owned();
        self.read(move |conn| stream_version(conn, tenant, &stream))
            .await
    }

    pub(crate) async fn head(&self) -> Result<u64> {
        self.read(head_position).await
    }

    pub(crate) async fn load_snapshot(
        &self,
        tenant: TenantId,
        stream: &str,
        kind: &str,
    ) -> Result<Option<Snapshot>> {
        let (stream, kind) = (stream.to_owned(), kind.to_owned());
        self.read(move |conn| {
            let row = conn
                .prepare_cached(
                    "SELECT version, state FROM snapshots \
                     WHERE tenant_id = ?1 AND stream_id = ?2 AND kind = ?3",
                )?
                .query_row(params![tenant.as_uuid().as_bytes(), stream, kind], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .optional()?;
            Ok(row.map(|(version, state)| Snapshot {
                tenant_id: tenant,
                stream_id: stream,
                kind,
                version: version as u64,
                state,
            }))
        })
        .await
    }

    /// Stop taking appends, let the writer commit what it has queued, and wait for it.
    pub(crate) async fn close(&self) {
        drop(self.queue.lock().expect("queue lock").take());
        let handle = self.writer.lock().expect("writer lock").take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

const SELECT: &str = "SELECT global_position, tenant_id, stream_id, stream_version, event_id, \
    event_type, schema_version, recorded_at, actor, correlation_id, causation_id, trace_id, payload \
    FROM events";

fn collect(mut rows: rusqlite::Rows<'_>) -> Result<Vec<Envelope>> {
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(Envelope {
            global_position: r.get::<_, i64>(0)? as u64,
            tenant_id: TenantId::from_uuid(uuid_col(r, 1)?),
            stream_id: r.get(2)?,
            stream_version: r.get::<_, i64>(3)? as u64,
            event_id: uuid_col(r, 4)?,
            event_type: r.get(5)?,
            schema_version: r.get(6)?,
            recorded_at: from_micros(r.get(7)?),
            actor: r.get(8)?,
            correlation_id: uuid_col(r, 9)?,
            causation_id: r
                .get_ref(10)?
                .as_blob_or_null()?
                .map(Uuid::from_slice)
                .transpose()
                .map_err(StoreError::backend)?,
            trace_id: r.get(11)?,
            payload: RawJson::from_stored(r.get(12)?),
        });
    }
    Ok(out)
}

fn uuid_col(r: &rusqlite::Row<'_>, i: usize) -> Result<Uuid> {
    Uuid::from_slice(r.get_ref(i)?.as_blob()?).map_err(StoreError::backend)
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    for (version, sql) in MIGRATIONS {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let applied: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?1)",
            [version],
            |r| r.get(0),
        )?;
        if !applied {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![version, to_micros(now_micros())],
            )?;
        }
        tx.commit()?;
    }
    Ok(())
}

fn head_position(conn: &Connection) -> Result<u64> {
    let head: i64 = conn
        .prepare_cached("SELECT coalesce(max(global_position), 0) FROM events")?
        .query_row([], |r| r.get(0))?;
    Ok(head as u64)
}

fn stream_version(conn: &Connection, tenant: TenantId, stream: &str) -> Result<u64> {
    let v: i64 = conn
        .prepare_cached(
            "SELECT coalesce(max(stream_version), 0) FROM events \
             WHERE tenant_id = ?1 AND stream_id = ?2",
        )?
        .query_row(params![tenant.as_uuid().as_bytes(), stream], |r| r.get(0))?;
    Ok(v as u64)
}

/// The writer: wait for work, take everything queued, commit it as one transaction, answer.
fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<WriteOp>, head: watch::Sender<u64>) {
    while let Ok(first) = rx.recv() {
        let mut appends = Vec::new();
        let mut snapshots = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(op) = next.take() {
            match op {
                WriteOp::Append(req, reply) => appends.push((req, reply)),
                WriteOp::Snapshot(s, reply) => snapshots.push((s, reply)),
            }
            taken += 1;
            if taken < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        match commit_group(&mut conn, &appends, &snapshots) {
            Ok((results, new_head)) => {
                head.send_if_modified(|h| {
                    let moved = new_head > *h;
                    *h = (*h).max(new_head);
                    moved
                });
                for ((_, reply), result) in appends.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
                for (_, reply) in snapshots {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed; nothing of it was written");
                let message = e.to_string();
                for (_, reply) in appends {
                    let _ = reply.send(Err(StoreError::Backend(message.clone())));
                }
                for (_, reply) in snapshots {
                    let _ = reply.send(Err(StoreError::Backend(message.clone())));
                }
            }
        }
    }
}

type AppendReply = (AppendRequest, oneshot::Sender<Result<Appended>>);
type SnapshotReply = (Snapshot, oneshot::Sender<Result<()>>);

/// One transaction for the whole group: either it all commits (and every `Ok` answer is
/// durable) or none of it does.
fn commit_group(
    conn: &mut Connection,
    appends: &[AppendReply],
    snapshots: &[SnapshotReply],
) -> Result<(Vec<Result<Appended>>, u64)> {
    let now = now_micros();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut plan = Plan::new(head_position(&tx)?);
    let mut results = Vec::with_capacity(appends.len());
    {
        let mut by_id = tx.prepare_cached(
            "SELECT global_position, stream_id, stream_version, event_type, schema_version, payload \
             FROM events WHERE tenant_id = ?1 AND event_id = ?2",
        )?;
        for (req, _) in appends {
            let tenant = req.tenant_id;
            if !plan.has_stream(tenant, &req.stream_id) {
                plan.load_stream(tenant, &req.stream_id, stream_version(&tx, tenant, &req.stream_id)?);
            }
            for e in &req.events {
                let stored = by_id
                    .query_row(
                        params![tenant.as_uuid().as_bytes(), e.event_id.as_bytes()],
                        |r| {
                            Ok(StoredId {
                                global_position: r.get::<_, i64>(0)? as u64,
                                stream_id: r.get(1)?,
                                stream_version: r.get::<_, i64>(2)? as u64,
                                event_type: r.get(3)?,
                                schema_version: r.get(4)?,
                                payload: r.get(5)?,
                            })
                        },
                    )
                    .optional()?;
                if let Some(stored) = stored {
                    plan.load_id(tenant, e.event_id, stored);
                }
            }
            results.push(plan.decide(req, now));
        }
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (global_position, tenant_id, stream_id, stream_version, event_id, \
             event_type, schema_version, recorded_at, actor, correlation_id, causation_id, trace_id, \
             payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        for e in plan.rows() {
            insert.execute(params![
                e.global_position as i64,
                e.tenant_id.as_uuid().as_bytes(),
                e.stream_id,
                e.stream_version as i64,
                e.event_id.as_bytes(),
                e.event_type,
                e.schema_version,
                to_micros(e.recorded_at),
                e.actor,
                e.correlation_id.as_bytes(),
                e.causation_id.as_ref().map(|u| u.as_bytes().to_vec()),
                e.trace_id,
                e.payload.as_str(),
            ])?;
        }
        let mut snap = tx.prepare_cached(
            "INSERT INTO snapshots (tenant_id, stream_id, kind, version, state) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (tenant_id, stream_id, kind) \
             DO UPDATE SET version = excluded.version, state = excluded.state \
             WHERE excluded.version >= snapshots.version",
        )?;
        for (s, _) in snapshots {
            snap.execute(params![
                s.tenant_id.as_uuid().as_bytes(),
                s.stream_id,
                s.kind,
                s.version as i64,
                s.state
            ])?;
        }
    }
    tx.commit()?;
    Ok((results, plan.head()))
}

/// Reader connections, reused across reads.
#[derive(Debug)]
struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn get(&self) -> Result<Connection> {
        if let Some(conn) = self.idle.lock().expect("pool lock").pop() {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }

    fn put(&self, conn: Connection) {
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < 16 {
            idle.push(conn);
        }
    }
}
