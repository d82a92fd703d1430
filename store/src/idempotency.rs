//! Idempotency records for mutating requests (SPEC §13): the first response to a key is kept and
//! replayed for retries with the same request; a different request under the same key, or a key
//! still in flight, is refused. Records live beside the log (so they survive restarts and are
//! shared by every instance on one PostgreSQL database) and expire after a retention period.

use domain::TenantId;
use uuid::Uuid;

/// How long a key that is still "in flight" blocks retries before it is presumed abandoned
/// (its request died with its process). Longer than the longest request (an export's minute of
/// work, the executor's repeats of an append of unknown outcome), so a slow request is not
/// taken over while it runs. A takeover cannot apply the request twice anyway (its event ids
/// derive from the key); records carry no owner yet, so a late first owner could still
/// overwrite the kept answer.
pub const IN_FLIGHT_TIMEOUT_SECS: i64 = 300;
/// How long completed records are kept.
pub const RETENTION_SECS: i64 = 24 * 3600 + 3600;

/// A response kept for replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// What beginning a keyed request found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin {
    /// The key is new (or expired): the caller owns it and must complete or abandon it.
    Started,
    /// The same request is being processed right now.
    InFlight,
    /// The same request was answered before: replay this.
    Completed(StoredResponse),
    /// The key was used with a different request.
    Mismatch,
}

/// One operation on the records, as the embedded writer queues it.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Begin {
        tenant: TenantId,
        key: String,
        request_hash: String,
        owner: Uuid,
    },
    Complete {
        tenant: TenantId,
        key: String,
        owner: Uuid,
        response: StoredResponse,
    },
    Abandon {
        tenant: TenantId,
        key: String,
        owner: Uuid,
    },
    /// Delete every record (of every tenant) begun before `before_micros`.
    Purge { before_micros: i64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OpResult {
    Begin(Begin),
    /// Whether the record was still the caller's to complete or abandon.
    Owned(bool),
    Purged(u64),
}

/// A stored record as both backends read it.
pub(crate) struct Row {
    pub request_hash: String,
    pub completed: bool,
    pub created_at_micros: i64,
    pub response: Option<StoredResponse>,
}

/// Decide a `Begin` against what is stored: `None` means the caller may (re)start the key.
pub(crate) fn decide(row: Option<Row>, request_hash: &str, now_micros: i64) -> Option<Begin> {
    let row = row?;
    let age = now_micros - row.created_at_micros;
    if age > RETENTION_SECS * 1_000_000 {
        return None;
    }
    if row.request_hash != request_hash {
        return Some(Begin::Mismatch);
    }
    if row.completed {
        return row.response.map(Begin::Completed);
    }
    if age > IN_FLIGHT_TIMEOUT_SECS * 1_000_000 {
        return None;
    }
    Some(Begin::InFlight)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(hash: &str, completed: bool, created_at_micros: i64) -> Option<Row> {
        Some(Row {
            request_hash: hash.into(),
            completed,
            created_at_micros,
            response: completed.then(|| StoredResponse {
                status: 200,
                content_type: "application/json".into(),
                body: b"{}".to_vec(),
            }),
        })
    }

    const S: i64 = 1_000_000;

    #[test]
    fn an_in_flight_key_blocks_until_it_is_presumed_abandoned() {
        let now = 1_000 * S;
        assert_eq!(
            decide(row("h", false, now - 5 * S), "h", now),
            Some(Begin::InFlight)
        );
        assert_eq!(
            decide(row("h", false, now - 61 * S), "h", now),
            Some(Begin::InFlight),
            "a slow request is not taken over"
        );
        assert_eq!(decide(row("h", false, now - 301 * S), "h", now), None);
    }

    #[test]
    fn completed_keys_replay_until_retention_ends() {
        let now = 100_000 * S;
        assert!(matches!(
            decide(row("h", true, now - 3600 * S), "h", now),
            Some(Begin::Completed(_))
        ));
        assert_eq!(
            decide(row("x", true, now - 3600 * S), "h", now),
            Some(Begin::Mismatch)
        );
        assert_eq!(
            decide(row("h", true, now - RETENTION_SECS * S - S), "h", now),
            None
        );
        assert_eq!(decide(None, "h", now), None);
    }
}
