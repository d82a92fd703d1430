//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL`, one writer thread that
//! group-commits every append waiting in its queue, and a small pool of reader connections.
//!
//! Positions are dense and in commit order: the writer takes SQLite's write lock (`BEGIN
//! IMMEDIATE`) before reading the head position, so even a second process writing to the same
//! file (the operator CLI beside a running server) cannot interleave positions.

use crate::envelope::{
    AppendRequest, Appended, Envelope, RawJson, from_micros, now_micros, to_micros,
};
use crate::error::{Result, StoreError};
use crate::idempotency;
use crate::planner::{Plan, StoredId};
use crate::{Health, OVERLOADED_RETRY_AFTER, Snapshot, StoreOptions, WriterState};
use domain::TenantId;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

mod liveness;
mod rows;

const PAGE_SIZE: i64 = 4096;

/// The most appends one group commit takes from the queue.
const MAX_GROUP: usize = 4096;

const MIGRATIONS: &[(i64, &str)] = &[
    (
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
    CREATE UNIQUE INDEX events_event_id ON events (event_id, tenant_id);
    CREATE TABLE idempotency (
        tenant_id BLOB NOT NULL,
        key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        completed INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        status INTEGER,
        content_type TEXT,
        body BLOB,
        PRIMARY KEY (tenant_id, key)
    );
    CREATE TABLE snapshots (
        tenant_id BLOB NOT NULL,
        stream_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        version INTEGER NOT NULL,
        state BLOB NOT NULL,
        PRIMARY KEY (tenant_id, stream_id, kind)
    );",
    ),
    (
        2,
        // Business time beside commit time (NULL for events written before it existed: read as
        // recorded_at), and the persisted state of each read model with its checkpoint.
        "ALTER TABLE events ADD COLUMN occurred_at INTEGER;
    CREATE TABLE projection_state (
        name TEXT PRIMARY KEY,
        position INTEGER NOT NULL,
        state BLOB NOT NULL,
        saved_at INTEGER NOT NULL
    );",
    ),
    (
        3,
        // Who holds an idempotency key: only that request may complete or abandon it (a request
        // that took a stale key over is not undone by the late first owner).
        "ALTER TABLE idempotency ADD COLUMN owner BLOB;",
    ),
    (
        4,
        // Subject keys of sealed personal fields (docs/adr/032): one per tenant, subject, UTC
        // day and event type (and generation). Erasure overwrites `secret` with NULL on a
        // connection with `secure_delete` on, so the freed bytes are zeroed in the file.
        "CREATE TABLE subject_keys (
        tenant_id BLOB NOT NULL,
        key_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        day TEXT NOT NULL,
        event_type TEXT NOT NULL,
        secret BLOB,
        created_at INTEGER NOT NULL,
        erased_at INTEGER,
        PRIMARY KEY (tenant_id, key_id)
    );
    CREATE INDEX subject_keys_subject ON subject_keys (tenant_id, subject);",
    ),
    (
        5,
        // The store instance that began an idempotency record (docs/adr/035): a record in
        // flight whose instance no longer holds its lock file is taken over at once.
        "ALTER TABLE idempotency ADD COLUMN instance BLOB;",
    ),
    (
        6,
        // The idempotency seeds whose events were written, marked by the group commit in the
        // transaction that writes them (docs/adr/035).
        "CREATE TABLE idempotency_applied (
        tenant_id BLOB NOT NULL,
        seed BLOB NOT NULL,
        applied_at INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, seed)
    );",
    ),
];

enum WriteOp {
    Append(AppendRequest, oneshot::Sender<Result<Appended>>),
    Snapshot(Snapshot, oneshot::Sender<Result<()>>),
    Idempotency(
        idempotency::Op,
        oneshot::Sender<Result<idempotency::OpResult>>,
    ),
    /// New subject keys (ADR 032): made in the group commit, so a first sealed write pays no
    /// transaction and no fsync of its own.
    Keys(KeysRequest, oneshot::Sender<Result<KeyRows>>),
}

type KeysRequest = (TenantId, Vec<crate::sealing::NewKey>);
type KeyRows = Vec<(String, Option<Vec<u8>>)>;

#[derive(Debug)]
pub(crate) struct Embedded {
    queue: Mutex<Option<mpsc::Sender<WriteOp>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<JoinHandle<()>>>,
    stop_checkpointer: Arc<(Mutex<bool>, std::sync::Condvar)>,
    readers: Arc<ReaderPool>,
    /// The read models' rows, in a file of their own (ADR 039).
    rows: rows::Rows,
    head: watch::Receiver<u64>,
    blobs: PathBuf,
    state: Arc<WriterState>,
    queue_capacity: usize,
    /// This instance's id, and its lock file held while the store is open (docs/adr/035).
    instance: Uuid,
    alive: Mutex<Option<std::fs::File>>,
}

impl Embedded {
    pub(crate) fn open(dir: &Path, options: &StoreOptions) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("events.db");
        let mut conn = Connection::open(&path)?;
        configure(&conn)?;
        migrate(&mut conn, MIGRATIONS)?;
        let (rows, rows_created) = rows::Rows::open(dir)?;
        if rows_created {
            // States saved with rows this file no longer has: replay rather than trust them.
            let forgotten = conn.execute("DELETE FROM projection_state", [])?;
            if forgotten > 0 {
                tracing::warn!(
                    forgotten,
                    "projections.db was missing: every projection replays from position 1"
                );
            }
        }
        // The writer waits at most this long for SQLite's write lock (another process).
        conn.busy_timeout(options.lock_timeout)?;
        // The writer's page cache is small on purpose: at the end of every write transaction
        // SQLite scans the whole hash of the connection's page cache (`pcache1TruncateUnsafe`
        // from `pager_end_transaction`), which with the readers' 64 MiB was 8.5 % of the
        // writer's CPU in `bench store` singles; 4 MiB holds what a group touches (the right-most
        // leaves of the log and the index pages of its streams) and the rest is the OS's cache.
        conn.pragma_update(None, "cache_size", -4096)?;
        let head = head_position(&conn)?;
        // Alive before the first begin, until closed or dropped (or the process ends).
        let instance = Uuid::new_v4();
        let instances = liveness::folder(dir);
        let alive = liveness::hold(&instances, instance)?;
        let (head_tx, head_rx) = watch::channel(head);
        let queue_capacity = options.append_queue.max(1);
        let (tx, rx) = mpsc::channel(queue_capacity);
        let state = Arc::new(WriterState::default());
        let wal_frames = Arc::new(AtomicI64::new(0));
        let stop_checkpointer = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let writer = {
            let (wal_frames, state) = (wal_frames.clone(), state.clone());
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || supervise(conn, rx, head_tx, wal_frames, state, instances))
                .map_err(StoreError::backend)?
        };
        let checkpointer = {
            let (path, stop) = (path.clone(), stop_checkpointer.clone());
            std::thread::Builder::new()
                .name("store-checkpoint".into())
                .spawn(move || checkpointer(path, wal_frames, stop))
                .map_err(StoreError::backend)?
        };
        Ok(Self {
            queue: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            checkpointer: Mutex::new(Some(checkpointer)),
            stop_checkpointer,
            blobs: dir.join("blobs"),
            readers: Arc::new(ReaderPool::new(path)),
            rows,
            head: head_rx,
            state,
            queue_capacity,
            instance,
            alive: Mutex::new(Some(alive)),
        })
    }

    pub(crate) fn instance(&self) -> Uuid {
        self.instance
    }

    /// Queue a write, or refuse it at once when the queue is full.
    fn submit(&self, op: WriteOp) -> Result<()> {
        let queue = self.queue.lock().expect("queue lock");
        let tx = queue.as_ref().ok_or(StoreError::Closed)?;
        tx.try_send(op).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Overloaded {
                queued: self.queue_capacity,
                retry_after: OVERLOADED_RETRY_AFTER,
            },
            mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
        })
    }

    pub(crate) fn health(&self) -> Health {
        let (queued_appends, queue_capacity, open) = match &*self.queue.lock().expect("queue lock")
        {
            Some(q) => (q.max_capacity() - q.capacity(), q.max_capacity(), true),
            None => (0, self.queue_capacity, false),
        };
        let thread_alive = self
            .writer
            .lock()
            .expect("writer lock")
            .as_ref()
            .is_some_and(|t| !t.is_finished());
        Health {
            writer_running: open && thread_alive && !self.state.stopped.load(Ordering::SeqCst),
            writer_restarts: self.state.restarts.load(Ordering::SeqCst),
            queued_appends,
            queue_capacity,
        }
    }

    pub(crate) fn writer_state(&self) -> &WriterState {
        &self.state
    }

    pub(crate) async fn append(&self, request: AppendRequest) -> Result<Appended> {
        let (tx, rx) = oneshot::channel();
        self.submit(WriteOp::Append(request, tx))?;
        rx.await.map_err(|_| writer_died())?
    }

    pub(crate) async fn idempotency(&self, op: idempotency::Op) -> Result<idempotency::OpResult> {
        let (tx, rx) = oneshot::channel();
        self.submit(WriteOp::Idempotency(op, tx))?;
        rx.await.map_err(|_| writer_died())?
    }

    pub(crate) fn blob_path(&self, tenant: TenantId, id: &str) -> Result<PathBuf> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(StoreError::Backend(format!("invalid blob id {id:?}")));
        }
        Ok(self.blobs.join(tenant.to_string()).join(id))
    }

    /// Write a blob durably: a temporary file, fsync, rename, fsync of the folder.
    pub(crate) async fn put_blob(&self, tenant: TenantId, id: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.blob_path(tenant, id)?;
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            write_blob_file(&path, |tmp| {
                let mut f = std::fs::File::create(tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()
            })
        })
        .await
        .map_err(StoreError::backend)?
        .map_err(StoreError::backend)
    }

    /// Keep `bytes` unless a blob of that id exists; either way, answer with what is stored.
    pub(crate) async fn put_blob_if_absent(
        &self,
        tenant: TenantId,
        id: &str,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let path = self.blob_path(tenant, id)?;
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let dir = path.parent().expect("blob paths have a folder");
            std::fs::create_dir_all(dir)?;
            let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            // A hard link fails if the name exists: the first writer wins, atomically.
            let linked = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    std::fs::File::open(dir)?.sync_all()?;
                    Ok(bytes)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read(&path),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(StoreError::backend)?
        .map_err(StoreError::backend)
    }

    pub(crate) async fn get_blob(&self, tenant: TenantId, id: &str) -> Result<Option<Vec<u8>>> {
        let path = self.blob_path(tenant, id)?;
        tokio::task::spawn_blocking(move || match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::backend(e)),
        })
        .await
        .map_err(StoreError::backend)?
    }

    pub(crate) async fn delete_blob(&self, tenant: TenantId, id: &str) -> Result<()> {
        let path = self.blob_path(tenant, id)?;
        tokio::task::spawn_blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::backend(e)),
        })
        .await
        .map_err(StoreError::backend)?
    }

    /// Subject keys (ADR 032). Reads go to a reader; new keys are written by the group commit
    /// (beside the events that are sealed with them); erasures open their own connection, like
    /// projection state, with `secure_delete` on so an erased secret is zeroed in the file, and
    /// an erasure ends with a WAL checkpoint (TRUNCATE, best effort) so no old frame keeps it.
    pub(crate) async fn key_op(
        &self,
        op: crate::sealing::KeyOp,
    ) -> Result<crate::sealing::KeyAnswer> {
        use crate::sealing::{KeyAnswer, KeyOp};
        match op {
            KeyOp::Get { tenant, ids } => {
                self.read(move |conn| {
                    let mut stmt = conn.prepare_cached(
                        "SELECT secret FROM subject_keys WHERE tenant_id = ?1 AND key_id = ?2",
                    )?;
                    let mut out = Vec::new();
                    for id in ids {
                        let mut rows = stmt.query(params![tenant.as_uuid().as_bytes(), id])?;
                        if let Some(r) = rows.next()? {
                            out.push((id, r.get::<_, Option<Vec<u8>>>(0)?));
                        }
                    }
                    Ok(KeyAnswer::Keys(out))
                })
                .await
            }
            KeyOp::OfSubject { tenant, subject } => {
                self.read(move |conn| {
                    let mut stmt = conn.prepare_cached(
                        "SELECT key_id FROM subject_keys WHERE tenant_id = ?1 AND subject = ?2 \
                         AND secret IS NOT NULL ORDER BY key_id",
                    )?;
                    let ids = stmt
                        .query_map(params![tenant.as_uuid().as_bytes(), subject], |r| r.get(0))?
                        .collect::<rusqlite::Result<Vec<String>>>()?;
                    Ok(KeyAnswer::Ids(ids))
                })
                .await
            }
            KeyOp::GetOrCreate { tenant, keys } => {
                let (tx, rx) = oneshot::channel();
                self.submit(WriteOp::Keys((tenant, keys), tx))?;
                Ok(KeyAnswer::Keys(rx.await.map_err(|_| writer_died())??))
            }
            KeyOp::DropSnapshots { tenant, stream } => {
                let path = self.readers.path.clone();
                tokio::task::spawn_blocking(move || {
                    let conn = Connection::open(&path)?;
                    conn.busy_timeout(Duration::from_secs(30))?;
                    conn.pragma_update(None, "secure_delete", true)?;
                    let n = conn.execute(
                        "DELETE FROM snapshots WHERE tenant_id = ?1 AND stream_id = ?2",
                        params![tenant.as_uuid().as_bytes(), stream],
                    )?;
                    Ok(KeyAnswer::Count(n as u64))
                })
                .await
                .map_err(StoreError::backend)?
            }
            KeyOp::Erase { tenant, ids } => {
                let path = self.readers.path.clone();
                tokio::task::spawn_blocking(move || {
                    let mut conn = Connection::open(&path)?;
                    conn.busy_timeout(Duration::from_secs(30))?;
                    conn.pragma_update(None, "synchronous", "FULL")?;
                    conn.pragma_update(None, "secure_delete", true)?;
                    let tx =
                        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    let mut n = 0u64;
                    {
                        let mut stmt = tx.prepare(
                            "UPDATE subject_keys SET secret = NULL, erased_at = ?3 \
                             WHERE tenant_id = ?1 AND key_id = ?2 AND secret IS NOT NULL",
                        )?;
                        let now = to_micros(now_micros());
                        for id in &ids {
                            n +=
                                stmt.execute(params![tenant.as_uuid().as_bytes(), id, now])? as u64;
                        }
                    }
                    tx.commit()?;
                    // Old WAL frames may still hold the page as it was: copy the WAL back and
                    // empty it. Readers in the middle of a transaction make this a no-op; the
                    // writer's own checkpoints then overwrite those frames later (ADR 032).
                    let _ = conn.busy_timeout(Duration::from_millis(200));
                    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                    Ok(KeyAnswer::Count(n))
                })
                .await
                .map_err(StoreError::backend)?
            }
        }
    }

    pub(crate) async fn read_positions(&self, positions: Vec<u64>) -> Result<Vec<Envelope>> {
        self.read(move |conn| {
            let mut out = Vec::with_capacity(positions.len());
            for chunk in positions.chunks(256) {
                let placeholders = vec!["?"; chunk.len()].join(",");
                let mut stmt = conn.prepare_cached(&format!(
                    "{SELECT} WHERE global_position IN ({placeholders}) ORDER BY global_position"
                ))?;
                let params = rusqlite::params_from_iter(chunk.iter().map(|p| *p as i64));
                out.extend(collect(stmt.query(params)?)?);
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.submit(WriteOp::Snapshot(snapshot, tx))?;
        rx.await.map_err(|_| writer_died())?
    }

    pub(crate) fn head_watch(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    /// Written on a connection of its own, not through the append writer: a projection's state
    /// can be megabytes and must not hold up a group commit's queue (SQLite's write lock is
    /// still taken for the moment of the write; the busy timeout waits for it).
    pub(crate) async fn save_projection(&self, p: crate::ProjectionState) -> Result<()> {
        // The rows the state covers are durable before the state is.
        self.rows.sync().await?;
        let path = self.readers.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = Connection::open(&path)?;
            conn.busy_timeout(Duration::from_secs(30))?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.prepare(
                "INSERT INTO projection_state (name, position, state, saved_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name) DO UPDATE SET \
                 position = excluded.position, state = excluded.state, saved_at = excluded.saved_at",
            )?
            .execute(params![
                p.name,
                p.position as i64,
                p.state,
                to_micros(now_micros())
            ])?;
            Ok(())
        })
        .await
        .map_err(StoreError::backend)?
    }

    pub(crate) async fn load_projection(
        &self,
        name: &str,
    ) -> Result<Option<crate::ProjectionState>> {
        let name = name.to_owned();
        self.read(move |conn| {
            let row = conn
                .prepare_cached("SELECT position, state FROM projection_state WHERE name = ?1")?
                .query_row([&name], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .optional()?;
            Ok(row.map(|(position, state)| crate::ProjectionState {
                name,
                position: position as u64,
                state,
            }))
        })
        .await
    }

    pub(crate) async fn put_rows_of(
        &self,
        writes: Vec<(String, Vec<crate::ProjectionRow>)>,
    ) -> Result<()> {
        self.rows.put(writes).await
    }

    pub(crate) async fn projection_rows(
        &self,
        projection: &str,
        tenant: TenantId,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.rows.read(projection, tenant, from, to, limit).await
    }

    pub(crate) async fn projection_rows_at(
        &self,
        projection: &str,
        keys: Vec<(TenantId, Vec<u8>)>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        self.rows.read_at(projection, keys).await
    }

    pub(crate) async fn delete_projection(&self, name: &str) -> Result<()> {
        let (path, name) = (self.readers.path.clone(), name.to_owned());
        tokio::task::spawn_blocking(move || {
            let conn = Connection::open(&path)?;
            conn.busy_timeout(Duration::from_secs(30))?;
            conn.execute("DELETE FROM projection_state WHERE name = ?1", [&name])?;
            Ok(())
        })
        .await
        .map_err(StoreError::backend)?
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
                // No per-tenant index on the log (ADR 003): this scans in position order.
                Some(t) => {
                    let mut stmt = conn.prepare_cached(&format!(
                        "{SELECT} WHERE global_position >= ?2 AND tenant_id = ?1 \
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
        {
            let (lock, signal) = &*self.stop_checkpointer;
            *lock.lock().expect("stop lock") = true;
            signal.notify_all();
        }
        let handle = self.checkpointer.lock().expect("checkpointer lock").take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        // Closed, it completes no key it began: they may be taken over at once.
        drop(self.alive.lock().expect("liveness lock").take());
    }
}

impl Drop for Embedded {
    /// A store dropped without `close` still stops its background threads: the writer ends when
    /// its queue closes (after committing what it holds), the checkpointer when told.
    fn drop(&mut self) {
        let (lock, signal) = &*self.stop_checkpointer;
        if let Ok(mut stopped) = lock.lock() {
            *stopped = true;
        }
        signal.notify_all();
    }
}

const SELECT: &str = "SELECT global_position, tenant_id, stream_id, stream_version, event_id, \
    event_type, schema_version, recorded_at, actor, correlation_id, causation_id, trace_id, payload, \
    coalesce(occurred_at, recorded_at) FROM events";

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
            occurred_at: from_micros(r.get(13)?),
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
    stable_plans(conn)?;
    // Only takes effect when the file is created. Small pages keep each commit's WAL frames
    // small: a group commit touches one leaf page per stream and per tenant it writes to.
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -65_536)?;
    // Checkpoints run on their own thread (see `checkpointer`), not inside the writer's commits.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(())
}

/// Plan statements without looking at their bound values (SQLite's query planner stability
/// guarantee). Without it, a statement with `LIMIT ?` is prepared again on every run that binds
/// its limit: SQLite reads a bound limit to plan with, and marks the statement for re-preparation
/// whenever that parameter is bound again, so the statement cache saved nothing on the log's
/// reads (`sqlite3Reprepare` was 5–20 % of the server's CPU under load).
pub(super) fn stable_plans(conn: &Connection) -> Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

/// How many WAL frames past which the writer finishes a checkpoint itself, so that its next
/// transaction starts the WAL file over instead of growing it.
const WAL_RESTART_FRAMES: i64 = 32_768;

/// Copy the WAL back into the database file beside the writer, so commits rarely wait for it.
/// PASSIVE checkpoints never block the writer. They cannot finish while the writer keeps
/// appending, so the checkpointer publishes the WAL's length and the writer, between two groups,
/// runs the last (short) PASSIVE checkpoint itself once the WAL is long (see `writer_loop`).
fn checkpointer(
    path: PathBuf,
    wal_frames: Arc<AtomicI64>,
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
) {
    let conn = match Connection::open(&path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "checkpointer cannot open the store");
            return;
        }
    };
    let _ = conn.busy_timeout(Duration::from_millis(100));
    let (lock, signal) = &*stop;
    loop {
        let stopped = lock.lock().expect("stop lock");
        let (stopped, _) = signal
            .wait_timeout(stopped, Duration::from_millis(250))
            .expect("stop lock");
        if *stopped {
            break;
        }
        drop(stopped);
        if let Ok(frames) =
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
        {
            wal_frames.store(frames, Ordering::Relaxed);
        }
    }
}

/// Apply the `migrations` not yet recorded in the file's `schema_migrations`, each in a
/// transaction of its own (the log's, and the read models' rows' file).
fn migrate(conn: &mut Connection, migrations: &[(i64, &str)]) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    for (version, sql) in migrations {
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

/// What the writer remembers between groups. Valid only while no other connection has written,
/// which `PRAGMA data_version` tells exactly: when it moves, the cache is dropped.
#[derive(Debug, Default)]
struct WriterCache {
    data_version: Option<i64>,
    head: u64,
    streams: HashMap<(TenantId, String), u64>,
}

const MAX_CACHED_STREAMS: usize = 200_000;

/// How a group treats event ids. Duplicates are rare (they are retries), so the first try
/// lets the unique index find them; only a group that hits it is planned again, carefully.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ids {
    TrustUniqueIndex,
    LookUp,
}

/// The writer answers every write it takes, unless it dies holding it: the group may then
/// have committed or not.
fn writer_died() -> StoreError {
    StoreError::OutcomeUnknown("the writer stopped while it held this write".into())
}

/// Run the writer, and start it again when it panics (a bug must not stop every append of the
/// process). An open transaction is rolled back as the panic unwinds; the writes of the group it
/// held answer `OutcomeUnknown`; the queue, and what waits in it, is kept for the next writer.
fn supervise(
    mut conn: Connection,
    mut rx: mpsc::Receiver<WriteOp>,
    head: watch::Sender<u64>,
    wal_frames: Arc<AtomicI64>,
    state: Arc<WriterState>,
    instances: PathBuf,
) {
    conn.set_prepared_statement_cache_capacity(64);
    loop {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            writer_loop(&mut conn, &mut rx, &head, &wal_frames, &state, &instances)
        }));
        match run {
            Ok(()) => break,
            Err(_) => {
                let restarts = state.restarts.fetch_add(1, Ordering::SeqCst) + 1;
                tracing::error!(restarts, "the embedded writer died; starting it again");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    state.stopped.store(true, Ordering::SeqCst);
}

/// The writer: wait for work, take everything queued, commit it as one transaction, answer.
fn writer_loop(
    conn: &mut Connection,
    rx: &mut mpsc::Receiver<WriteOp>,
    head: &watch::Sender<u64>,
    wal_frames: &AtomicI64,
    state: &WriterState,
    instances: &Path,
) {
    let mut cache = WriterCache::default();
    while let Some(first) = rx.blocking_recv() {
        if wal_frames.load(Ordering::Relaxed) > WAL_RESTART_FRAMES {
            // The checkpointer has copied most of the WAL; finishing here, between two groups,
            // lets the next transaction restart the WAL file from its beginning.
            if let Ok(frames) =
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
            {
                tracing::trace!(frames, "writer finished a checkpoint");
            }
            wal_frames.store(0, Ordering::Relaxed);
        }
        let mut appends = Vec::new();
        let mut snapshots = Vec::new();
        let mut keyed = Vec::new();
        let mut keys = Vec::new();
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(op) = next.take() {
            match op {
                WriteOp::Append(req, reply) => appends.push((req, reply)),
                WriteOp::Snapshot(s, reply) => snapshots.push((s, reply)),
                WriteOp::Idempotency(op, reply) => keyed.push((op, reply)),
                WriteOp::Keys(request, reply) => keys.push((request, reply)),
            }
            taken += 1;
            if taken < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        state.check_injected_fault();
        let group = Group {
            appends: &appends,
            snapshots: &snapshots,
            keyed: &keyed,
            keys: &keys,
            instances,
        };
        let outcome = commit_group(conn, &mut cache, &group, Ids::TrustUniqueIndex).or_else(|e| {
            if matches!(e, StoreError::Timeout(_)) {
                // The write lock is taken elsewhere: trying again would only wait again.
                return Err(e);
            }
            tracing::debug!(error = %e, "group failed; planning it again with id look-ups");
            commit_group(conn, &mut cache, &group, Ids::LookUp)
        });
        match outcome {
            Ok((results, keyed_results, key_rows)) => {
                head.send_if_modified(|h| {
                    let moved = cache.head > *h;
                    *h = (*h).max(cache.head);
                    moved
                });
                for ((_, reply), result) in appends.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
                for ((_, reply), result) in keyed.into_iter().zip(keyed_results) {
                    let _ = reply.send(Ok(result));
                }
                for (_, reply) in snapshots {
                    let _ = reply.send(Ok(()));
                }
                for ((_, reply), rows) in keys.into_iter().zip(key_rows) {
                    let _ = reply.send(Ok(rows));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed; nothing of it was written");
                for (_, reply) in appends {
                    let _ = reply.send(Err(e.clone()));
                }
                for (_, reply) in snapshots {
                    let _ = reply.send(Err(e.clone()));
                }
                for (_, reply) in keyed {
                    let _ = reply.send(Err(e.clone()));
                }
                for (_, reply) in keys {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

type AppendReply = (AppendRequest, oneshot::Sender<Result<Appended>>);
type SnapshotReply = (Snapshot, oneshot::Sender<Result<()>>);
type KeyedReply = (
    idempotency::Op,
    oneshot::Sender<Result<idempotency::OpResult>>,
);
type KeysReply = (KeysRequest, oneshot::Sender<Result<KeyRows>>);

/// A committed group's answers: each append's, each keyed operation's, each key request's.
type GroupAnswers = (
    Vec<Result<Appended>>,
    Vec<idempotency::OpResult>,
    Vec<KeyRows>,
);

/// Everything one group commit writes.
struct Group<'a> {
    appends: &'a [AppendReply],
    snapshots: &'a [SnapshotReply],
    keyed: &'a [KeyedReply],
    keys: &'a [KeysReply],
    /// The instance lock files, to tell whether a key's owner is alive.
    instances: &'a Path,
}

/// One transaction for the whole group: either it all commits (and every `Ok` answer is
/// durable) or none of it does. The cache changes only after a commit.
fn commit_group(
    conn: &mut Connection,
    cache: &mut WriterCache,
    group: &Group<'_>,
    ids: Ids,
) -> Result<GroupAnswers> {
    let (appends, snapshots) = (group.appends, group.snapshots);
    let now = now_micros();
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let data_version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
    if cache.data_version != Some(data_version) || cache.streams.len() > MAX_CACHED_STREAMS {
        cache.streams.clear();
        cache.head = head_position(&tx)?;
        cache.data_version = Some(data_version);
    }
    let mut plan = Plan::new(cache.head);
    let mut loaded = Vec::new();
    let mut results = Vec::with_capacity(appends.len());
    {
        let mut by_id = tx.prepare_cached(
            "SELECT global_position, stream_id, stream_version, event_type, schema_version, payload \
             FROM events WHERE tenant_id = ?1 AND event_id = ?2",
        )?;
        for (req, _) in appends {
            let tenant = req.tenant_id;
            if !plan.has_stream(tenant, &req.stream_id) {
                let key = (tenant, req.stream_id.clone());
                let version = match cache.streams.get(&key) {
                    Some(v) => *v,
                    None => {
                        let v = stream_version(&tx, tenant, &req.stream_id)?;
                        loaded.push((key, v));
                        v
                    }
                };
                plan.load_stream(tenant, &req.stream_id, version);
            }
            if ids == Ids::LookUp || req.replay_only() {
                load_ids(&mut by_id, &mut plan, req)?;
            }
            let mut result = plan.decide(req, now);
            if ids == Ids::TrustUniqueIndex && matches!(result, Err(StoreError::Conflict { .. })) {
                // A conflict may be a retry of an append that went through: look before refusing.
                load_ids(&mut by_id, &mut plan, req)?;
                result = plan.decide(req, now);
            }
            results.push(result);
        }
        insert_rows(&tx, plan.rows())?;
        let mut mark = tx.prepare_cached(
            "INSERT INTO idempotency_applied (tenant_id, seed, applied_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT DO NOTHING",
        )?;
        for (tenant, seed) in plan.applied_seeds() {
            mark.execute(params![
                tenant.as_uuid().as_bytes(),
                &seed.as_bytes()[..],
                to_micros(now)
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
    let keyed = group
        .keyed
        .iter()
        .map(|(op, _)| idempotency_op(&tx, op, to_micros(now), group.instances))
        .collect::<Result<Vec<_>>>()?;
    let key_rows = group
        .keys
        .iter()
        .map(|((tenant, keys), _)| get_or_create_keys(&tx, *tenant, keys, to_micros(now)))
        .collect::<Result<Vec<_>>>()?;
    tx.commit()?;
    cache.head = plan.head();
    cache.streams.extend(loaded);
    for (tenant, stream, _, after) in plan.stream_updates() {
        cache.streams.insert((tenant, stream.to_owned()), after);
    }
    Ok((results, keyed, key_rows))
}

/// Insert each key unless one of its id exists; answer what is stored (`None`: erased).
fn get_or_create_keys(
    tx: &rusqlite::Transaction<'_>,
    tenant: TenantId,
    keys: &[crate::sealing::NewKey],
    now: i64,
) -> Result<KeyRows> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO subject_keys \
         (tenant_id, key_id, subject, day, event_type, secret, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
    )?;
    let mut select =
        tx.prepare_cached("SELECT secret FROM subject_keys WHERE tenant_id = ?1 AND key_id = ?2")?;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        insert.execute(params![
            tenant.as_uuid().as_bytes(),
            key.id,
            key.subject,
            key.day,
            key.event_type,
            key.secret,
            now
        ])?;
        let secret: Option<Vec<u8>> =
            select.query_row(params![tenant.as_uuid().as_bytes(), key.id], |r| r.get(0))?;
        out.push((key.id.clone(), secret));
    }
    Ok(out)
}

fn idempotency_op(
    tx: &rusqlite::Transaction<'_>,
    op: &idempotency::Op,
    now: i64,
    instances: &Path,
) -> Result<idempotency::OpResult> {
    use idempotency::{Op, OpResult};
    match op {
        Op::Begin {
            tenant,
            key,
            request_hash,
            owner,
            instance,
            seed,
        } => {
            let row = tx
                .prepare_cached(
                    "SELECT request_hash, completed, created_at, status, content_type, body, \
                     instance FROM idempotency WHERE tenant_id = ?1 AND key = ?2",
                )?
                .query_row(params![tenant.as_uuid().as_bytes(), key], |r| {
                    let completed: bool = r.get(1)?;
                    Ok(idempotency::Row {
                        request_hash: r.get(0)?,
                        completed,
                        created_at_micros: r.get(2)?,
                        response: if completed {
                            Some(idempotency::StoredResponse {
                                status: r.get(3)?,
                                content_type: r.get(4)?,
                                body: r.get(5)?,
                            })
                        } else {
                            None
                        },
                        instance: r
                            .get::<_, Option<Vec<u8>>>(6)?
                            .and_then(|b| Uuid::from_slice(&b).ok()),
                    })
                })
                .optional()?;
            let alive = |owner| liveness::alive(instances, owner);
            match idempotency::decide(row, request_hash, now, *instance, alive) {
                Some(found) => Ok(OpResult::Begin(found)),
                None => {
                    tx.prepare_cached(
                        "INSERT INTO idempotency (tenant_id, key, request_hash, completed, created_at, owner, \
                         instance) VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6) ON CONFLICT (tenant_id, key) \
                         DO UPDATE SET request_hash = excluded.request_hash, completed = 0, \
                         created_at = excluded.created_at, status = NULL, content_type = NULL, \
                         body = NULL, owner = excluded.owner, instance = excluded.instance",
                    )?
                    .execute(params![
                        tenant.as_uuid().as_bytes(),
                        key,
                        request_hash,
                        now,
                        &owner.as_bytes()[..],
                        &instance.as_bytes()[..]
                    ])?;
                    // An earlier attempt of this request (taken over, or abandoned after an answer
                    // worth retrying) may have written its events (docs/adr/035).
                    let applied = match seed {
                        Some(seed) => tx
                            .prepare_cached(
                                "SELECT EXISTS (SELECT 1 FROM idempotency_applied \
                                 WHERE tenant_id = ?1 AND seed = ?2 AND applied_at >= ?3)",
                            )?
                            .query_row(
                                params![
                                    tenant.as_uuid().as_bytes(),
                                    &seed.as_bytes()[..],
                                    idempotency::retained_since(now)
                                ],
                                |r| r.get::<_, bool>(0),
                            )?,
                        None => false,
                    };
                    Ok(OpResult::Begin(if applied {
                        idempotency::Begin::Applied
                    } else {
                        idempotency::Begin::Started
                    }))
                }
            }
        }
        Op::Complete {
            tenant,
            key,
            owner,
            response,
        } => {
            let n = tx
                .prepare_cached(
                    "UPDATE idempotency SET completed = 1, status = ?3, content_type = ?4, body = ?5 \
                     WHERE tenant_id = ?1 AND key = ?2 AND owner = ?6 AND completed = 0",
                )?
                .execute(params![
                    tenant.as_uuid().as_bytes(),
                    key,
                    response.status,
                    response.content_type,
                    response.body,
                    &owner.as_bytes()[..]
                ])?;
            Ok(OpResult::Owned(n == 1))
        }
        Op::Abandon { tenant, key, owner } => {
            let n = tx
                .prepare_cached(
                    "DELETE FROM idempotency WHERE tenant_id = ?1 AND key = ?2 AND owner = ?3 \
                     AND completed = 0",
                )?
                .execute(params![
                    tenant.as_uuid().as_bytes(),
                    key,
                    &owner.as_bytes()[..]
                ])?;
            Ok(OpResult::Owned(n == 1))
        }
        Op::Purge { before_micros } => {
            let n = tx
                .prepare_cached("DELETE FROM idempotency WHERE created_at < ?1")?
                .execute(params![before_micros])?;
            tx.prepare_cached("DELETE FROM idempotency_applied WHERE applied_at < ?1")?
                .execute(params![before_micros])?;
            Ok(OpResult::Purged(n as u64))
        }
    }
}

/// Tell the plan which of the request's event ids are already stored.
fn load_ids(
    by_id: &mut rusqlite::CachedStatement<'_>,
    plan: &mut Plan,
    req: &AppendRequest,
) -> Result<()> {
    let tenant = req.tenant_id;
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
    Ok(())
}

/// Rows per multi-row INSERT: 14 columns each, well under SQLite's parameter limit.
const ROWS_PER_INSERT: usize = 32;
const COLUMNS: usize = 14;

fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT OR ROLLBACK INTO events (global_position, tenant_id, stream_id, stream_version, event_id, \
         event_type, schema_version, recorded_at, actor, correlation_id, causation_id, trace_id, \
         payload, occurred_at) VALUES ",
    );
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..COLUMNS {
            if c > 0 {
                sql.push(',');
            }
            sql.push('?');
        }
        sql.push(')');
    }
    sql
}

fn insert_rows(tx: &rusqlite::Transaction<'_>, rows: &[Envelope]) -> Result<()> {
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut stmt = tx.prepare_cached(&insert_sql(chunk.len()))?;
        for (r, e) in chunk.iter().enumerate() {
            let base = r * COLUMNS;
            stmt.raw_bind_parameter(base + 1, e.global_position as i64)?;
            stmt.raw_bind_parameter(base + 2, &e.tenant_id.as_uuid().as_bytes()[..])?;
            stmt.raw_bind_parameter(base + 3, e.stream_id.as_str())?;
            stmt.raw_bind_parameter(base + 4, e.stream_version as i64)?;
            stmt.raw_bind_parameter(base + 5, &e.event_id.as_bytes()[..])?;
            stmt.raw_bind_parameter(base + 6, e.event_type.as_str())?;
            stmt.raw_bind_parameter(base + 7, e.schema_version)?;
            stmt.raw_bind_parameter(base + 8, to_micros(e.recorded_at))?;
            stmt.raw_bind_parameter(base + 9, e.actor.as_str())?;
            stmt.raw_bind_parameter(base + 10, &e.correlation_id.as_bytes()[..])?;
            stmt.raw_bind_parameter(
                base + 11,
                e.causation_id.as_ref().map(|u| &u.as_bytes()[..]),
            )?;
            stmt.raw_bind_parameter(base + 12, e.trace_id.as_deref())?;
            stmt.raw_bind_parameter(base + 13, e.payload.as_str())?;
            stmt.raw_bind_parameter(base + 14, to_micros(e.occurred_at))?;
        }
        stmt.raw_execute()?;
    }
    Ok(())
}

/// Write a blob durably at `path`: `fill` writes a temporary file of a unique name beside it
/// (fsynced), which is renamed into place, then the folder is fsynced. On any failure the
/// temporary file is removed: a failed write on a full disk must not keep the disk full.
pub(crate) fn write_blob_file(
    path: &Path,
    fill: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path.parent().expect("blob paths have a folder");
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp-{}", Uuid::new_v4().simple()));
    let written = fill(&tmp).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

/// Reader connections, reused across reads.
#[derive(Debug)]
struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

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
        stable_plans(&conn)?;
        Ok(conn)
    }

    fn put(&self, conn: Connection) {
        let mut idle = self.idle.lock().expect("pool lock");
        if idle.len() < 16 {
            idle.push(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;

    /// The log's reads bind their limit: with the planner's stability guarantee a cached
    /// statement runs again without being prepared again, whatever limit it is given.
    #[test]
    fn a_cached_read_with_a_bound_limit_is_not_prepared_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            configure(&conn).unwrap();
            migrate(&mut conn, MIGRATIONS).unwrap();
        }
        let reprepares = |conn: &Connection| {
            let sql =
                format!("{SELECT} WHERE global_position >= ?1 ORDER BY global_position LIMIT ?2");
            for limit in [10i64, 1_000, 10, 7] {
                let mut stmt = conn.prepare_cached(&sql).unwrap();
                collect(stmt.query(params![1i64, limit]).unwrap()).unwrap();
            }
            conn.prepare_cached(&sql)
                .unwrap()
                .get_status(StatementStatus::RePrepare)
        };
        let pool = ReaderPool::new(path.clone());
        assert_eq!(reprepares(&pool.get().unwrap()), 0);
        // Without it SQLite prepares the statement again on every run (the cost it removes).
        let plain = Connection::open(&path).unwrap();
        assert_eq!(reprepares(&plain), 4, "once per run");
    }
}
