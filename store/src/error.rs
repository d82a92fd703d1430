//! The store's one error type. Each variant says how the API maps it to HTTP, and what a caller
//! may conclude about an append that answered it.

use std::time::Duration;
use uuid::Uuid;

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The stream was not at the expected version; nothing was written. HTTP 409.
    #[error("stream {stream_id} expected {expected} but is at version {actual}")]
    Conflict {
        stream_id: String,
        expected: String,
        /// The stream's current version, 0 when it does not exist.
        actual: u64,
    },
    /// An event id is already stored with other content (or in another stream). HTTP 409.
    #[error("event id {event_id} is already stored with different content")]
    DuplicateEventId { event_id: Uuid },
    /// An append made under [`crate::Metadata::replay_only`] (a retry of a request whose events
    /// were written) holds events that are not stored: the retry decided otherwise than the first
    /// attempt. Nothing was written. HTTP 409 `idempotency-key-already-applied`.
    #[error("a retry of an applied request decided events that are not stored ({event_id})")]
    NotAReplay { event_id: Uuid },
    /// The append itself is malformed (no events, an id twice in one call, a NUL character in a
    /// string, …). Decided before the append joins a group, the same on both backends, so it
    /// fails this append alone. HTTP 422.
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// The writer's queue is full: the append was refused before it was queued and nothing was
    /// written. HTTP 503 with `Retry-After: retry_after`.
    #[error("the store is overloaded ({queued} appends queued); retry in {retry_after:?}")]
    Overloaded {
        queued: usize,
        retry_after: Duration,
    },
    /// A time limit ran out before the append committed (the global write lock stayed taken
    /// past `lock_timeout`, a statement past `statement_timeout`, the whole group past the write
    /// timeout before COMMIT was sent). Nothing was written. HTTP 503 with `Retry-After`.
    #[error("the store timed out: {0}")]
    Timeout(String),
    /// The connection was lost while COMMIT was on its way or its answer was: the append may or
    /// may not be stored, and this error never means "not written". HTTP 503. Resolve it by
    /// retrying the append with the **same event ids**: the idempotent append then answers the
    /// truth (the original positions with `replayed: true`, or a fresh write). Retrying with new
    /// ids could write the facts twice.
    #[error("the outcome of the append is unknown: {0}")]
    OutcomeUnknown(String),
    /// The store is closed or its writer has stopped. HTTP 503.
    #[error("the store is closed")]
    Closed,
    /// The backend failed (IO, connection, SQL) before anything was committed. HTTP 503; the
    /// append may be retried with the same event ids, which makes the retry safe.
    #[error("store backend error: {0}")]
    Backend(String),
}

impl StoreError {
    pub(crate) fn backend(e: impl std::fmt::Display) -> Self {
        StoreError::Backend(e.to_string())
    }

    /// Conflicts are the one error a command executor retries with a new decision.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    /// The append may have been stored: retry it with the same event ids to learn the truth.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, StoreError::OutcomeUnknown(_))
    }

    /// A passing condition (overload, a timeout, a lost connection): the same request may
    /// succeed later, so an answer to it must not be kept as final.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Overloaded { .. }
                | StoreError::Timeout(_)
                | StoreError::OutcomeUnknown(_)
                | StoreError::Closed
                | StoreError::Backend(_)
        )
    }

    /// How long a client should wait before retrying, when the store knows.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            StoreError::Overloaded { retry_after, .. } => Some(*retry_after),
            StoreError::Timeout(_) | StoreError::OutcomeUnknown(_) | StoreError::Backend(_) => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked, DiskFull};
        match e.sqlite_error_code() {
            // The transaction was rolled back; the store works again once there is room.
            Some(DiskFull) => StoreError::Backend(format!("the disk is full: {e}")),
            // The busy timeout ran out waiting for another connection's write lock.
            Some(DatabaseBusy | DatabaseLocked) => {
                StoreError::Timeout(format!("SQLite's write lock stayed taken: {e}"))
            }
            _ => StoreError::backend(e),
        }
    }
}

impl From<rusqlite::types::FromSqlError> for StoreError {
    fn from(e: rusqlite::types::FromSqlError) -> Self {
        StoreError::backend(e)
    }
}

/// SQLSTATEs of a time limit: `lock_not_available` (lock_timeout), `query_canceled`
/// (statement_timeout), `idle_in_transaction_session_timeout`.
const TIMEOUT_STATES: [&str; 3] = ["55P03", "57014", "25P03"];

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) if TIMEOUT_STATES.contains(&db.code().code()) => {
                StoreError::Timeout(format!("{}: {}", db.code().code(), db.message()))
            }
            Some(db) => StoreError::Backend(format!("{}: {}", db.code().code(), db.message())),
            None => StoreError::backend(e),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Timeout(_) => {
                StoreError::Timeout("no PostgreSQL connection became free in time".into())
            }
            e => StoreError::backend(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
