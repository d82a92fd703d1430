//! Tenantry's event store: an append-only log of envelopes with optimistic concurrency per
//! stream, idempotent appends, a global order that readers can checkpoint without ever skipping
//! an event, live subscriptions and payload upcasting.
//!
//! Two backends sit behind [`Store`]: embedded SQLite (the default, no server) and PostgreSQL.
//! Architecture invariant: this is the only crate that knows how Tenantry's state is persisted.

mod embedded;
mod envelope;
mod error;
pub mod idempotency;
mod planner;
mod postgres;
mod subscription;
pub mod testing;
mod upcast;

pub use envelope::{
    AppendRequest, Appended, Envelope, Expected, InvalidJson, Metadata, NewEvent, RawJson,
    format_rfc3339_micros, new_event_id,
};
pub use error::{Result, StoreError};
pub use planner::MAX_EVENTS_PER_APPEND;
pub use subscription::Subscription;
pub use upcast::{Upcaster, Upcasters};

use domain::TenantId;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

/// Where a store lives, as given on the command line (`--data DIR` or `--store postgres://…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Embedded(std::path::PathBuf),
    Postgres(String),
}

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
        Ok(Self::new(Backend::Embedded(embedded::Embedded::open(dir)?)))
    }

    /// Connect to PostgreSQL, applying any pending migrations.
    pub async fn connect_postgres(url: &str) -> Result<Self> {
        Ok(Self::new(Backend::Postgres(
            postgres::Postgres::connect(url).await?,
        )))
    }

    pub async fn open(location: &Location) -> Result<Self> {
        match location {
            Location::Embedded(dir) => Self::open_embedded(dir),
            Location::Postgres(url) => Self::connect_postgres(url).await,
        }
    }

    fn new(backend: Backend) -> Self {
        Self {
            backend: Arc::new(backend),
            upcasters: Arc::new(Upcasters::default()),
        }
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
        self.upcasters.apply_all(events)
    }

    /// Events in commit order from `from_position` (inclusive), at most `limit`.
    pub async fn read_all(&self, from_position: u64, limit: usize) -> Result<Vec<Envelope>> {
        let events = dispatch!(self.read_all(from_position, limit, None))?;
        self.upcasters.apply_all(events)
    }

    /// One tenant's events in commit order from `from_position` (inclusive), at most `limit`.
    pub async fn read_tenant(
        &self,
        tenant: TenantId,
        from_position: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>> {
        let events = dispatch!(self.read_all(from_position, limit, Some(tenant)))?;
        self.upcasters.apply_all(events)
    }

    /// The stream's current version, 0 when it has no events.
    pub async fn stream_version(&self, tenant: TenantId, stream: &str) -> Result<u64> {
        dispatch!(self.stream_version(tenant, stream))
    }

    /// The last committed global position (0 for an empty store).
    pub async fn head(&self) -> Result<u64> {
        dispatch!(self.head())
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

    /// The events at these positions (those that exist), in position order.
    pub async fn read_positions(&self, positions: Vec<u64>) -> Result<Vec<Envelope>> {
        let events = dispatch!(self.read_positions(positions))?;
        self.upcasters.apply_all(events)
    }

    /// Begin a request under an idempotency key (see [`idempotency`]).
    pub async fn idempotency_begin(
        &self,
        tenant: TenantId,
        key: &str,
        request_hash: &str,
    ) -> Result<idempotency::Begin> {
        let op = idempotency::Op::Begin {
            tenant,
            key: key.to_owned(),
            request_hash: request_hash.to_owned(),
        };
        match dispatch!(self.idempotency(op))? {
            idempotency::OpResult::Begin(b) => Ok(b),
            idempotency::OpResult::Done => Err(StoreError::Backend("unexpected answer".into())),
        }
    }

    /// Keep the response of a request begun with [`Store::idempotency_begin`].
    pub async fn idempotency_complete(
        &self,
        tenant: TenantId,
        key: &str,
        response: idempotency::StoredResponse,
    ) -> Result<()> {
        let op = idempotency::Op::Complete {
            tenant,
            key: key.to_owned(),
            response,
        };
        dispatch!(self.idempotency(op)).map(|_| ())
    }

    /// Forget a key whose request failed in a way worth retrying (a 5xx).
    pub async fn idempotency_abandon(&self, tenant: TenantId, key: &str) -> Result<()> {
        let op = idempotency::Op::Abandon {
            tenant,
            key: key.to_owned(),
        };
        dispatch!(self.idempotency(op)).map(|_| ())
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

    /// Stop accepting appends, commit what is queued, release the backend.
    pub async fn close(&self) {
        dispatch!(self.close())
    }
}
