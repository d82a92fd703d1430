//! Tenantry's event store: an append-only log of envelopes with optimistic concurrency per
//! stream, idempotent appends, a global order that readers can checkpoint without ever skipping
//! an event, live subscriptions and payload upcasting.
//!
//! Two backends sit behind [`Store`]: embedded SQLite (the default, no server) and PostgreSQL.
//! Architecture invariant: this is the only crate that knows how Tenantry's state is persisted.

mod embedded;
mod envelope;
mod error;
mod head;
pub mod idempotency;
mod planner;
mod postgres;
mod sealing;
mod subscription;
pub mod testing;
mod tls;
mod upcast;

pub use envelope::{
    AppendRequest, Appended, Envelope, Expected, InvalidJson, Metadata, NewEvent, RawJson,
    format_rfc3339_micros, new_event_id,
};
pub use error::{Result, StoreError};
pub use planner::MAX_EVENTS_PER_APPEND;
pub use postgres::BlobChunks;
pub use sealing::{KEY_MEMBER, key_ids_of, open_value, sealed_parts};
pub use subscription::Subscription;
pub use tls::SslMode;
pub use upcast::{Upcaster, Upcasters};

use domain::TenantId;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Where a store lives, as given on the command line (`--data DIR` or `--store postgres://…`).
/// Its `Debug` never shows a password.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    Embedded(std::path::PathBuf),
    Postgres(String),
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Embedded(dir) => f.debug_tuple("Embedded").field(dir).finish(),
            Location::Postgres(url) => f
                .debug_tuple("Postgres")
                .field(&tls::redact_url(url))
                .finish(),
        }
    }
}

impl Location {
    /// The location as it may be logged: a PostgreSQL URL without its password.
    pub fn redacted(&self) -> String {
        match self {
            Location::Embedded(dir) => dir.display().to_string(),
            Location::Postgres(url) => tls::redact_url(url),
        }
    }
}

/// Limits of the write path. The defaults suit a service; tests make them small.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Appends waiting for the writer (beside the group it is committing) past which new ones
    /// are refused with [`StoreError::Overloaded`] instead of queueing without bound.
    pub append_queue: usize,
    /// The longest wait for a lock, the global write lock included: PostgreSQL `lock_timeout`,
    /// SQLite's busy timeout for the writer.
    pub lock_timeout: Duration,
    /// PostgreSQL `statement_timeout` on every connection of the store.
    pub statement_timeout: Duration,
    /// PostgreSQL `idle_in_transaction_session_timeout`: a session of ours that stalls inside a
    /// transaction (and so may hold the write lock) is ended by the server after this long.
    pub idle_in_transaction_timeout: Duration,
    /// The client-side bound on one PostgreSQL group commit, for what the server cannot see (a
    /// half-open connection). Past it the group fails with [`StoreError::Timeout`] before COMMIT
    /// was sent, or [`StoreError::OutcomeUnknown`] after.
    pub write_timeout: Duration,
    /// TCP keepalive idle time on PostgreSQL connections (and the TCP user timeout).
    pub keepalive_idle: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            append_queue: 16_384,
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            idle_in_transaction_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(15),
            keepalive_idle: Duration::from_secs(30),
        }
    }
}

/// What `/readyz` needs to know about the store's writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// False once the writer has stopped for good while the store is open: appends then fail
    /// until the process is restarted.
    pub writer_running: bool,
    /// How often the writer died (a panic) and was started again since the store opened.
    pub writer_restarts: u64,
    /// Appends waiting for the writer now, and how many may wait before `Overloaded`.
    pub queued_appends: usize,
    pub queue_capacity: usize,
}

impl Health {
    /// Whether this instance should take traffic.
    pub fn is_ready(&self) -> bool {
        self.writer_running && self.queued_appends < self.queue_capacity
    }
}

/// The writer's vital signs, shared between the handle and its writer.
#[derive(Debug, Default)]
pub(crate) struct WriterState {
    pub(crate) stopped: std::sync::atomic::AtomicBool,
    pub(crate) restarts: std::sync::atomic::AtomicU64,
    /// A fault to inject: the writer panics when it next takes a group (tests only).
    pub(crate) panic_next: std::sync::atomic::AtomicBool,
}

impl WriterState {
    /// Called by the writer when it takes a group: panics once if a fault was injected.
    pub(crate) fn check_injected_fault(&self) {
        if self
            .panic_next
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("injected writer fault");
        }
    }
}

/// How long a refused append should wait before it is tried again.
pub(crate) const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A cached aggregate state at a stream version. Only a cache: appends are still guarded by
/// the expected-version check, so a stale snapshot can cost a retry but never a wrong write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub tenant_id: TenantId,
    pub stream_id: String,
    /// Which aggregate (and which state layout) this is, e.g. `tenant/v1`.
    pub kind: String,
    pub version: u64,
    pub state: Vec<u8>,
}

/// The persisted state of a read model and the last global position it applied. Saved by the
/// projection itself; read back at start so that a projection resumes instead of replaying the
/// whole log. Only a cache of the log: deleting it costs a replay, never a wrong answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectionState {
    /// The projection's name, e.g. `identity` (a rebuild beside it uses another name).
    pub name: String,
    pub position: u64,
    pub state: Vec<u8>,
}

/// One row a read model keeps in the store instead of in memory (ADR 039): under the
/// projection's name, one tenant's `key` (bytes, ordered bytewise: a big-endian position, a
/// time-ordered id) and what to write there.
///
/// Rows are written by the projections runtime before the position that produced them is
/// published, and they are durable before any checkpoint that covers them is. A row-keeping
/// projection is a deterministic function of the stored log, and its writes are chosen so that
/// applying a stretch of the log again (a replay after a crash, a rebuild beside the live
/// projection) leaves the rows as they were and never shows an older state meanwhile: a row
/// that is replaced or removed later is first written with [`RowWrite::Insert`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectionRow {
    pub tenant: TenantId,
    pub key: Vec<u8>,
    pub write: RowWrite,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowWrite {
    /// Write these bytes, replacing what is there.
    Put(Vec<u8>),
    /// Write these bytes only where no row is.
    Insert(Vec<u8>),
    /// Remove the row.
    Delete,
}

impl RowWrite {
    /// One write with the effect of `self` then `next` on the same row.
    pub fn then(self, next: RowWrite) -> RowWrite {
        match (self, next) {
            (_, RowWrite::Put(v)) => RowWrite::Put(v),
            (_, RowWrite::Delete) => RowWrite::Delete,
            (RowWrite::Delete, RowWrite::Insert(v)) => RowWrite::Put(v),
            (earlier, RowWrite::Insert(_)) => earlier,
        }
    }
}

/// One write per key, with the effect of all of `rows` in order (one statement may not touch a
/// row twice on PostgreSQL).
fn distinct(rows: Vec<ProjectionRow>) -> Vec<ProjectionRow> {
    let mut index: std::collections::HashMap<(TenantId, Vec<u8>), usize> =
        std::collections::HashMap::with_capacity(rows.len());
    let mut out: Vec<ProjectionRow> = Vec::with_capacity(rows.len());
    for r in rows {
        match index.get(&(r.tenant, r.key.clone())) {
            Some(&i) => {
                let earlier = std::mem::replace(&mut out[i].write, RowWrite::Delete);
                out[i].write = earlier.then(r.write);
            }
            None => {
                index.insert((r.tenant, r.key.clone()), out.len());
                out.push(r);
            }
        }
    }
    out
}

/// The longest key a projection row may have, in bytes.
pub const MAX_ROW_KEY: usize = 256;

#[derive(Debug)]
enum Backend {
    Embedded(embedded::Embedded),
    Postgres(postgres::Postgres),
}

/// A handle on an event store. Cheap to clone; all clones share one writer.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Arc<Backend>,
    upcasters: Arc<Upcasters>,
    head_probe: Arc<head::HeadProbe>,
    /// Subject keys cached for sealing and unsealing personal fields (ADR 032).
    sealer: Arc<sealing::Sealer>,
    /// A raw handle reads the stored bytes: no unsealing, no upcasting (the audit's read).
    raw: bool,
}

/// A blob opened for reading (`Store::open_blob`).
#[derive(Debug)]
pub enum BlobBody {
    /// A file and its length, to read in pieces.
    File(std::fs::File, u64),
    /// The whole blob: PostgreSQL's blobs of at most one chunk (1 MiB).
    Bytes(Vec<u8>),
    /// Its length and its chunks in order: PostgreSQL's larger blobs, read a chunk at a time
    /// (docs/adr/036).
    Chunks(u64, BlobChunks),
}

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match &*$self.backend {
            Backend::Embedded(b) => b.$method($($arg),*).await,
            Backend::Postgres(b) => b.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// Open (creating if needed) the embedded store in `dir`.
    pub fn open_embedded(dir: &Path) -> Result<Self> {
        Self::open_embedded_with(dir, &StoreOptions::default())
    }

    pub fn open_embedded_with(dir: &Path, options: &StoreOptions) -> Result<Self> {
        Ok(Self::new(Backend::Embedded(embedded::Embedded::open(
            dir, options,
        )?)))
    }

    /// Connect to PostgreSQL, applying any pending migrations. `sslmode` in the URL chooses TLS
    /// (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`; `sslrootcert` names the CA
    /// file for the verifying modes, else the platform's web roots are trusted).
    pub async fn connect_postgres(url: &str) -> Result<Self> {
        Self::connect_postgres_with(url, &StoreOptions::default()).await
    }

    pub async fn connect_postgres_with(url: &str, options: &StoreOptions) -> Result<Self> {
        Ok(Self::new(Backend::Postgres(
            postgres::Postgres::connect(url, options).await?,
        )))
    }

    pub async fn open(location: &Location) -> Result<Self> {
        Self::open_with(location, &StoreOptions::default()).await
    }

    pub async fn open_with(location: &Location, options: &StoreOptions) -> Result<Self> {
        match location {
            Location::Embedded(dir) => Self::open_embedded_with(dir, options),
            Location::Postgres(url) => Self::connect_postgres_with(url, options).await,
        }
    }

    /// The writer's health, without IO: whether it runs, how often it was restarted, how full
    /// its queue is. `/readyz` turns red when [`Health::is_ready`] is false.
    pub fn health(&self) -> Health {
        match &*self.backend {
            Backend::Embedded(b) => b.health(),
            Backend::Postgres(b) => b.health(),
        }
    }

    /// Make the writer panic when it next takes a group, as a bug would: the appends of that
    /// group answer [`StoreError::OutcomeUnknown`] and the writer is started again. For fault
    /// tests only.
    #[doc(hidden)]
    pub fn inject_writer_panic(&self) {
        let state = match &*self.backend {
            Backend::Embedded(b) => b.writer_state(),
            Backend::Postgres(b) => b.writer_state(),
        };
        state
            .panic_next
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn new(backend: Backend) -> Self {
        Self {
            backend: Arc::new(backend),
            upcasters: Arc::new(Upcasters::default()),
            head_probe: Arc::default(),
            sealer: Arc::new(sealing::Sealer::default()),
            raw: false,
        }
    }

    /// The same store, reading events exactly as stored: sealed personal fields stay sealed and
    /// no upcaster runs (the bytes hashed for audit are the bytes stored). Appends through it are
    /// sealed like any other.
    pub fn raw(&self) -> Self {
        Self {
            upcasters: Arc::new(Upcasters::default()),
            raw: true,
            ..self.clone()
        }
    }

    /// Whether this handle reads raw (see [`Store::raw`]).
    pub fn is_raw(&self) -> bool {
        self.raw
    }

    /// Events read raw, as a readable handle reads them: sealed fields unsealed (or erased),
    /// then upcast. For readers that need both (the projections' runtime feeds the audit tree
    /// the stored bytes and every other read model the readable events).
    pub async fn readable(&self, events: Vec<Envelope>) -> Result<Vec<Envelope>> {
        if self.raw {
            return Ok(events);
        }
        let events = self.unseal(events).await?;
        self.upcasters.apply_all(events)
    }

    /// Whether events read raw would read differently through this handle (sealed events, or
    /// upcasters to run).
    pub fn needs_readable(&self, events: &[Envelope]) -> bool {
        !self.raw
            && (!self.upcasters.is_empty()
                || events
                    .iter()
                    .any(|e| domain::personal::is_sealed_version(e.schema_version)))
    }

    pub(crate) async fn key_op(&self, op: sealing::KeyOp) -> Result<sealing::KeyAnswer> {
        dispatch!(self.key_op(op))
    }

    /// The same store, reading payloads through `upcasters`.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = Arc::new(upcasters);
        self
    }

    pub fn backend_name(&self) -> &'static str {
        match &*self.backend {
            Backend::Embedded(_) => "embedded",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Append atomically: all events or none. Waits until the append is durable.
    pub async fn append(&self, request: AppendRequest) -> Result<Appended> {
        planner::validate(&request)?;
        // Personal fields are sealed before the append joins a group (ADR 032); the sealed
        // request is validated again, as it is what the backend writes.
        let request = self.seal(request).await?;
        planner::validate(&request)?;
        dispatch!(self.append(request))
    }

    /// Events of one stream from `from_version` (1-based, inclusive), at most `limit`.
    pub async fn read_stream(
        &self,
        tenant: TenantId,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>> {
        let events = dispatch!(self.read_stream(tenant, stream, from_version, limit))?;
        self.readable(events).await
    }

    /// Events in commit order from `from_position` (inclusive), at most `limit`.
    pub async fn read_all(&self, from_position: u64, limit: usize) -> Result<Vec<Envelope>> {
        let events = dispatch!(self.read_all(from_position, limit, None))?;
        self.readable(events).await
    }

    /// One tenant's events in commit order from `from_position` (inclusive), at most `limit`.
    pub async fn read_tenant(
        &self,
        tenant: TenantId,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>> {
        let events = dispatch!(self.read_all(from_position, limit, Some(tenant)))?;
        self.readable(events).await
    }

    /// The stream's current version, 0 when it has no events.
    pub async fn stream_version(&self, tenant: TenantId, stream: &str) -> Result<u64> {
        dispatch!(self.stream_version(tenant, stream))
    }

    /// The last committed global position (0 for an empty store).
    pub async fn head(&self) -> Result<u64> {
        dispatch!(self.head())
    }

    /// The head as found by a read that began after this call: exact for "is everything committed
    /// before I asked visible?", yet shared, so that any number of concurrent callers cost one
    /// store round trip at a time (ADR 014).
    pub async fn head_after_now(&self) -> Result<u64> {
        self.head_probe.after_now(|| self.head()).await
    }

    /// How many reads [`Store::head_after_now`] sent to the store since it was opened.
    pub fn shared_head_reads(&self) -> u64 {
        self.head_probe.reads()
    }

    /// Live events in commit order from `from_position` (inclusive).
    pub fn subscribe(&self, from_position: u64) -> Subscription {
        Subscription::new(self.clone(), from_position)
    }

    /// A receiver that changes when new events may be readable. Only a wake-up: the value may
    /// lag (another process wrote) and readers must re-read the log.
    pub(crate) fn head_watch(&self) -> watch::Receiver<u64> {
        match &*self.backend {
            Backend::Embedded(b) => b.head_watch(),
            Backend::Postgres(b) => b.head_watch(),
        }
    }

    /// Keep a blob (an uploaded file, an export) under the tenant, durably, replacing any blob
    /// of the same id. Ids are letters, digits and '-'.
    pub async fn put_blob(&self, tenant: TenantId, id: &str, bytes: Vec<u8>) -> Result<()> {
        dispatch!(self.put_blob(tenant, id, bytes))
    }

    /// Keep `bytes` unless a blob of that id exists (the first writer wins, also across
    /// processes and instances); answer with what is stored.
    pub async fn put_blob_if_absent(
        &self,
        tenant: TenantId,
        id: &str,
        bytes: Vec<u8>,
    ) -> Result<Vec<u8>> {
        dispatch!(self.put_blob_if_absent(tenant, id, bytes))
    }

    pub async fn get_blob(&self, tenant: TenantId, id: &str) -> Result<Option<Vec<u8>>> {
        dispatch!(self.get_blob(tenant, id))
    }

    /// Remove a blob; removing one that does not exist is not an error.
    pub async fn delete_blob(&self, tenant: TenantId, id: &str) -> Result<()> {
        dispatch!(self.delete_blob(tenant, id))
    }

    /// Keep the file at `path` as a blob, like `put_blob`, without reading it into memory where
    /// the backend allows: the embedded store copies it into place (a temporary name, fsync,
    /// rename); PostgreSQL reads it a chunk at a time into the rows of one transaction
    /// (docs/adr/036).
    pub async fn put_blob_file(&self, tenant: TenantId, id: &str, path: &Path) -> Result<()> {
        match &*self.backend {
            Backend::Embedded(b) => {
                let to = b.blob_path(tenant, id)?;
                let from = path.to_owned();
                tokio::task::spawn_blocking(move || {
                    embedded::write_blob_file(&to, |tmp| {
                        std::fs::copy(&from, tmp)?;
                        std::fs::File::open(tmp)?.sync_all()
                    })
                })
                .await
                .map_err(StoreError::backend)?
                .map_err(StoreError::backend)
            }
            Backend::Postgres(b) => {
                let from = path.to_owned();
                let file = tokio::task::spawn_blocking(move || std::fs::File::open(from))
                    .await
                    .map_err(StoreError::backend)?
                    .map_err(StoreError::backend)?;
                b.put_blob_reader(tenant, id, Box::new(file)).await
            }
        }
    }

    /// Keep what `reader` gives as a blob, like `put_blob`, holding a chunk of it at a time:
    /// the embedded store copies it into a temporary file renamed into place, PostgreSQL writes
    /// it in chunks in one transaction (docs/adr/036). A reader that fails leaves nothing of
    /// this write visible: a blob of that id is then the one before, or none.
    pub async fn put_blob_reader(
        &self,
        tenant: TenantId,
        id: &str,
        mut reader: impl std::io::Read + Send + 'static,
    ) -> Result<()> {
        match &*self.backend {
            Backend::Embedded(b) => {
                let to = b.blob_path(tenant, id)?;
                tokio::task::spawn_blocking(move || {
                    embedded::write_blob_file(&to, |tmp| {
                        let mut file = std::fs::File::create(tmp)?;
                        std::io::copy(&mut reader, &mut file)?;
                        file.sync_all()
                    })
                })
                .await
                .map_err(StoreError::backend)?
                .map_err(StoreError::backend)
            }
            Backend::Postgres(b) => b.put_blob_reader(tenant, id, Box::new(reader)).await,
        }
    }

    /// A blob to read as a stream: the embedded store's blob is a file, opened; PostgreSQL's
    /// comes in chunks (`BlobBody::Chunks`, one short read each; docs/adr/036), or whole when
    /// it is one chunk or less.
    pub async fn open_blob(&self, tenant: TenantId, id: &str) -> Result<Option<BlobBody>> {
        match &*self.backend {
            Backend::Embedded(b) => {
                let path = b.blob_path(tenant, id)?;
                tokio::task::spawn_blocking(move || match std::fs::File::open(&path) {
                    Ok(f) => {
                        let len = f.metadata().map_err(StoreError::backend)?.len();
                        Ok(Some(BlobBody::File(f, len)))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(StoreError::backend(e)),
                })
                .await
                .map_err(StoreError::backend)?
            }
            Backend::Postgres(b) => b.open_blob(tenant, id).await,
        }
    }

    /// The events at these positions (those that exist), in position order.
    pub async fn read_positions(&self, positions: Vec<u64>) -> Result<Vec<Envelope>> {
        let events = dispatch!(self.read_positions(positions))?;
        self.readable(events).await
    }

    /// This process instance's id (one per opened store; clones share it). Idempotency records
    /// begun through it carry it, and a record whose instance is dead is taken over at once
    /// (docs/adr/035): PostgreSQL knows an instance alive by a session advisory lock it holds,
    /// the embedded store by a file lock.
    pub fn instance(&self) -> uuid::Uuid {
        match &*self.backend {
            Backend::Embedded(b) => b.instance(),
            Backend::Postgres(b) => b.instance(),
        }
    }

    /// Begin a request under an idempotency key (see [`idempotency`]). `owner` names this
    /// attempt: only it may complete or abandon the key it started. A key in flight whose
    /// instance is dead is taken over at once; one of a live instance answers `InFlight`
    /// (until [`idempotency::IN_FLIGHT_TIMEOUT_SECS`]).
    pub async fn idempotency_begin(
        &self,
        tenant: TenantId,
        key: &str,
        request_hash: &str,
        owner: uuid::Uuid,
    ) -> Result<idempotency::Begin> {
        self.idempotency_begin_seeded(tenant, key, request_hash, owner, None)
            .await
    }

    /// [`Store::idempotency_begin`] for a request whose events carry ids derived from `seed`
    /// (`Metadata::event_id_seed`): a key taken over from an attempt whose events were written
    /// answers [`idempotency::Begin::Applied`] (docs/adr/035).
    pub async fn idempotency_begin_seeded(
        &self,
        tenant: TenantId,
        key: &str,
        request_hash: &str,
        owner: uuid::Uuid,
        seed: Option<uuid::Uuid>,
    ) -> Result<idempotency::Begin> {
        let op = idempotency::Op::Begin {
            tenant,
            key: key.to_owned(),
            request_hash: request_hash.to_owned(),
            owner,
            instance: self.instance(),
            seed,
        };
        match dispatch!(self.idempotency(op))? {
            idempotency::OpResult::Begin(b) => Ok(b),
            _ => Err(StoreError::Backend("unexpected answer".into())),
        }
    }

    /// Keep the response of a request begun with [`Store::idempotency_begin`]. False when the key
    /// is no longer `owner`'s (another attempt took it over): nothing is changed then.
    pub async fn idempotency_complete(
        &self,
        tenant: TenantId,
        key: &str,
        owner: uuid::Uuid,
        response: idempotency::StoredResponse,
    ) -> Result<bool> {
        let op = idempotency::Op::Complete {
            tenant,
            key: key.to_owned(),
            owner,
            response,
        };
        match dispatch!(self.idempotency(op))? {
            idempotency::OpResult::Owned(owned) => Ok(owned),
            _ => Err(StoreError::Backend("unexpected answer".into())),
        }
    }

    /// Forget a key whose request failed in a way worth retrying (a 5xx), if it is still
    /// `owner`'s and not completed. False when it was not.
    pub async fn idempotency_abandon(
        &self,
        tenant: TenantId,
        key: &str,
        owner: uuid::Uuid,
    ) -> Result<bool> {
        let op = idempotency::Op::Abandon {
            tenant,
            key: key.to_owned(),
            owner,
        };
        match dispatch!(self.idempotency(op))? {
            idempotency::OpResult::Owned(owned) => Ok(owned),
            _ => Err(StoreError::Backend("unexpected answer".into())),
        }
    }

    /// Delete the idempotency records past their retention ([`idempotency::RETENTION_SECS`]):
    /// they can no longer be replayed, and what they keep (responses, sealed tokens) must not
    /// outlive that. Answers how many were deleted.
    pub async fn idempotency_purge(&self) -> Result<u64> {
        let now = envelope::to_micros(envelope::now_micros());
        let op = idempotency::Op::Purge {
            before_micros: now - idempotency::RETENTION_SECS * 1_000_000,
        };
        match dispatch!(self.idempotency(op))? {
            idempotency::OpResult::Purged(n) => Ok(n),
            _ => Err(StoreError::Backend("unexpected answer".into())),
        }
    }

    pub async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        dispatch!(self.save_snapshot(snapshot))
    }

    pub async fn load_snapshot(
        &self,
        tenant: TenantId,
        stream: &str,
        kind: &str,
    ) -> Result<Option<Snapshot>> {
        dispatch!(self.load_snapshot(tenant, stream, kind))
    }

    /// Keep a projection's state and checkpoint durably, replacing what was kept under its name.
    pub async fn save_projection(&self, state: ProjectionState) -> Result<()> {
        dispatch!(self.save_projection(state))
    }

    pub async fn load_projection(&self, name: &str) -> Result<Option<ProjectionState>> {
        dispatch!(self.load_projection(name))
    }

    /// Forget a projection's persisted state (it is rebuilt from position 1 when next started).
    pub async fn delete_projection(&self, name: &str) -> Result<()> {
        dispatch!(self.delete_projection(name))
    }

    /// Write `rows` of the projection `projection` in order, in one transaction: each puts,
    /// inserts or removes the row under its key. Durable before the next
    /// [`Store::save_projection`] returns.
    pub async fn put_projection_rows(
        &self,
        projection: &str,
        rows: Vec<ProjectionRow>,
    ) -> Result<()> {
        self.put_rows_of(vec![(projection.to_owned(), rows)]).await
    }

    /// The rows of several projections (`(name, rows)`), each as [`Store::put_projection_rows`]
    /// writes them, all in one transaction: what the projections runtime writes for one page.
    pub async fn put_rows_of(&self, writes: Vec<(String, Vec<ProjectionRow>)>) -> Result<()> {
        // One set of rows per projection, in the order given (a name may come more than once).
        let mut grouped: Vec<(String, Vec<ProjectionRow>)> = Vec::with_capacity(writes.len());
        for (projection, rows) in writes {
            match grouped.iter_mut().find(|(p, _)| *p == projection) {
                Some((_, all)) => all.extend(rows),
                None => grouped.push((projection, rows)),
            }
        }
        let mut distinct_writes = Vec::with_capacity(grouped.len());
        for (projection, rows) in grouped {
            if let Some(r) = rows.iter().find(|r| r.key.len() > MAX_ROW_KEY) {
                return Err(StoreError::Backend(format!(
                    "a projection row key of {} bytes is longer than {MAX_ROW_KEY}",
                    r.key.len()
                )));
            }
            let rows = distinct(rows);
            if !rows.is_empty() {
                distinct_writes.push((projection, rows));
            }
        }
        if distinct_writes.is_empty() {
            return Ok(());
        }
        dispatch!(self.put_rows_of(distinct_writes))
    }

    /// `tenant`'s rows of `projection` with keys in `from..=to` (bytewise), in key order, at most
    /// `limit`: `(key, value)` pairs. Read in the tenant's scope (row-level security on
    /// PostgreSQL).
    pub async fn projection_rows(
        &self,
        projection: &str,
        tenant: TenantId,
        from: &[u8],
        to: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if from > to || limit == 0 {
            return Ok(Vec::new());
        }
        dispatch!(self.projection_rows(projection, tenant, from, to, limit))
    }

    /// The rows of `projection` under each `(tenant, key)`, in the order asked (`None` where no
    /// row is). Keys of one tenant are read in that tenant's scope; a set that spans tenants (a
    /// platform view, such as the feedback board across tenants) is read as the platform.
    pub async fn projection_rows_at(
        &self,
        projection: &str,
        keys: Vec<(TenantId, Vec<u8>)>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        dispatch!(self.projection_rows_at(projection, keys))
    }

    /// One row of `tenant`'s under `key`.
    pub async fn projection_row(
        &self,
        projection: &str,
        tenant: TenantId,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>> {
        Ok(self
            .projection_rows(projection, tenant, key, key, 1)
            .await?
            .pop()
            .map(|(_, v)| v))
    }

    /// Stop accepting appends, commit what is queued, release the backend.
    pub async fn close(&self) {
        dispatch!(self.close())
    }
}
