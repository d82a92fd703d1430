//! Idempotency records for mutating requests (SPEC §13): the first response to a key is kept and
//! replayed for retries with the same request; a different request under the same key, or a key
//! still in flight, is refused. Records live beside the log (so they survive restarts and are
//! shared by every instance on one PostgreSQL database) and expire after a retention period.
//! A key in flight whose instance is dead is taken over at once, and a key taken over after its
//! request's events were written (their seed marked applied with them) is not run again
//! (docs/adr/035).

use domain::TenantId;
use uuid::Uuid;

/// How long a key that is still "in flight" blocks retries while its owner instance is alive
/// (or cannot be known: records of a release before ADR 035 carry no instance). Longer than the
/// longest request (an export's minute of work, the executor's repeats of an append of unknown
/// outcome), so a slow request is not taken over while it runs; the bound for a live instance
/// whose request is stuck. A record whose owner instance is dead (its process ended, or its
/// connection to PostgreSQL was cut) is taken over at once (docs/adr/035). A takeover cannot
/// apply the request twice (its event ids derive from the key), and the late first owner cannot
/// overwrite the kept answer (complete and abandon check the attempt's owner id).
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
    /// An earlier attempt of this request wrote its events (marked in their transaction,
    /// docs/adr/035) but its answer was not kept: it died (the key was taken over) or answered
    /// something worth retrying (a 5xx after the append; the key was abandoned). The caller owns
    /// the key and must complete it; it may run the request only as a replay
    /// (`Metadata::replay_only`): a second run may decide other events, which the derived ids
    /// alone would not catch.
    Applied,
}

/// One operation on the records, as the embedded writer queues it.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    Begin {
        tenant: TenantId,
        key: String,
        request_hash: String,
        owner: Uuid,
        /// The process instance (store handle) that begins it: its liveness lets a retry take
        /// the key over at once when it dies (docs/adr/035).
        instance: Uuid,
        /// The request's event-id seed: a key (re)started whose seed is marked applied answers
        /// [`Begin::Applied`].
        seed: Option<Uuid>,
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
    /// The instance that began it (`None` on records written before docs/adr/035).
    pub instance: Option<Uuid>,
}

/// Decide a `Begin` against what is stored: `None` means the caller may (re)start the key.
/// `alive` answers whether an instance still runs; it is asked only about the owner of a record
/// that is in flight and younger than [`IN_FLIGHT_TIMEOUT_SECS`], never about `me` (the caller's
/// own instance, alive by definition).
pub(crate) fn decide(
    row: Option<Row>,
    request_hash: &str,
    now_micros: i64,
    me: Uuid,
    alive: impl FnOnce(Uuid) -> bool,
) -> Option<Begin> {
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
    match row.instance {
        // Its process is gone: the request died with it and nobody will complete it.
        Some(owner) if owner != me && !alive(owner) => None,
        _ => Some(Begin::InFlight),
    }
}

/// The oldest record or applied mark still in force at `now_micros`: older ones are expired
/// (a key reused after them is a new request).
pub(crate) fn retained_since(now_micros: i64) -> i64 {
    now_micros - RETENTION_SECS * 1_000_000
}

/// The instance [`decide`] would ask about, if any: for backends whose liveness check is IO
/// that must happen before the decision (PostgreSQL asks the server in the same transaction).
pub(crate) fn owner_to_ask(
    row: &Row,
    request_hash: &str,
    now_micros: i64,
    me: Uuid,
) -> Option<Uuid> {
    let age = now_micros - row.created_at_micros;
    let in_flight = age <= IN_FLIGHT_TIMEOUT_SECS * 1_000_000
        && row.request_hash == request_hash
        && !row.completed;
    row.instance.filter(|owner| in_flight && *owner != me)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Uuid = Uuid::from_u128(1);
    const OTHER: Uuid = Uuid::from_u128(2);

    fn decide_alive(row: Option<Row>, hash: &str, now: i64) -> Option<Begin> {
        decide(row, hash, now, ME, |_| true)
    }

    fn row(hash: &str, completed: bool, created_at_micros: i64) -> Option<Row> {
        Some(Row {
            instance: Some(OTHER),
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
            decide_alive(row("h", false, now - 5 * S), "h", now),
            Some(Begin::InFlight)
        );
        assert_eq!(
            decide_alive(row("h", false, now - 61 * S), "h", now),
            Some(Begin::InFlight),
            "a slow request is not taken over"
        );
        assert_eq!(decide_alive(row("h", false, now - 301 * S), "h", now), None);
    }

    #[test]
    fn completed_keys_replay_until_retention_ends() {
        let now = 100_000 * S;
        assert!(matches!(
            decide_alive(row("h", true, now - 3600 * S), "h", now),
            Some(Begin::Completed(_))
        ));
        assert_eq!(
            decide_alive(row("x", true, now - 3600 * S), "h", now),
            Some(Begin::Mismatch)
        );
        assert_eq!(
            decide_alive(row("h", true, now - RETENTION_SECS * S - S), "h", now),
            None
        );
        assert_eq!(decide_alive(None, "h", now), None);
    }

    #[test]
    fn an_in_flight_key_of_a_dead_instance_is_taken_over_at_once() {
        let now = 1_000 * S;
        let fresh = || row("h", false, now - S);
        assert_eq!(decide(fresh(), "h", now, ME, |i| i != OTHER), None);
        assert_eq!(
            decide(fresh(), "x", now, ME, |_| false),
            Some(Begin::Mismatch),
            "another request under the key is refused whoever began it"
        );
        assert_eq!(
            decide(fresh(), "h", now, OTHER, |_| false),
            Some(Begin::InFlight),
            "the caller's own instance is alive"
        );
        let mut legacy = fresh().unwrap();
        legacy.instance = None;
        assert_eq!(
            decide(Some(legacy), "h", now, ME, |_| false),
            Some(Begin::InFlight),
            "a record without an instance waits for the timeout"
        );
        let mut done = row("h", true, now - S).unwrap();
        done.instance = Some(OTHER);
        assert!(matches!(
            decide(Some(done), "h", now, ME, |_| false),
            Some(Begin::Completed(_))
        ));
    }
}
