//! The store's one error type. Each variant says how the API maps it to HTTP.

use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
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
    /// The append itself is malformed (no events, an id twice in one call, …). HTTP 422.
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// The store is closed or its writer has stopped. HTTP 503.
    #[error("the store is closed")]
    Closed,
    /// The backend failed (IO, connection, SQL). HTTP 503; the append may be retried with the
    /// same event ids, which makes the retry safe.
    #[error("store backend error: {0}")]
    Backend(String),
}

impl StoreError {
    pub(crate) fn backend(e: impl std::fmt::Display) -> Self {
        StoreError::Backend(e.to_string())
    }

    /// Conflicts are the one error a command executor retries.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::backend(e)
    }
}

impl From<rusqlite::types::FromSqlError> for StoreError {
    fn from(e: rusqlite::types::FromSqlError) -> Self {
        StoreError::backend(e)
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => StoreError::Backend(format!("{}: {}", db.code().code(), db.message())),
            None => StoreError::backend(e),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::backend(e)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
