//! Group-commit planning, shared by both backends and free of IO.
//!
//! A writer takes a batch of appends, loads what the batch touches (the streams' versions, the
//! event ids already stored, the head position), and asks the planner to decide each append in
//! order. The planner checks idempotency first (a retried append must succeed even if the stream
//! moved on), then the expected version, then assigns dense positions. The backend then writes all
//! planned rows in one transaction. A failed append changes nothing in the plan.

use crate::envelope::{AppendRequest, Appended, Envelope};
use crate::error::{Result, StoreError};
use domain::TenantId;
use std::collections::{HashMap, HashSet};
use time::OffsetDateTime;
use uuid::Uuid;

/// The most events one append may carry.
pub const MAX_EVENTS_PER_APPEND: usize = 10_000;

/// An already stored event, as much of it as idempotency needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredId {
    pub global_position: u64,
    pub stream_id: String,
    pub stream_version: u64,
    pub event_type: String,
    pub schema_version: u16,
    pub payload: String,
}

/// The fields of a stored or planned event that a retry is compared on.
#[derive(Clone, Copy, Debug)]
struct IdView<'a> {
    global_position: u64,
    stream_id: &'a str,
    stream_version: u64,
    event_type: &'a str,
    schema_version: u16,
    payload: &'a str,
}

impl StoredId {
    fn view(&self) -> IdView<'_> {
        IdView {
            global_position: self.global_position,
            stream_id: &self.stream_id,
            stream_version: self.stream_version,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            payload: &self.payload,
        }
    }
}

impl<'a> IdView<'a> {
    fn of(e: &'a Envelope) -> Self {
        IdView {
            global_position: e.global_position,
            stream_id: &e.stream_id,
            stream_version: e.stream_version,
            event_type: &e.event_type,
            schema_version: e.schema_version,
            payload: e.payload.as_str(),
        }
    }
}

/// What the planner needs loaded before deciding a batch.
#[derive(Debug, Default)]
pub struct Plan {
    head: u64,
    streams: HashMap<(TenantId, String), u64>,
    ids: HashMap<(TenantId, Uuid), StoredId>,
    /// Event ids planned in this batch, by their index in `rows`.
    planned: HashMap<(TenantId, Uuid), usize>,
    /// Streams whose version changed in this batch, with the version they were loaded at.
    touched: HashMap<(TenantId, String), u64>,
    rows: Vec<Envelope>,
    /// The event-id seeds (idempotency keys) whose events this batch writes, to be marked
    /// applied in the same transaction (docs/adr/035).
    seeds: Vec<(TenantId, Uuid)>,
}

/// Reject malformed appends before anything is loaded, and before they join a group: whatever
/// one backend would refuse (PostgreSQL's text cannot hold NUL, its timestamps end in year
/// 294276 and begin in 4713 BC) is refused here for both, so an append is valid or not the same
/// way everywhere and an invalid one can never fail the group it would have joined.
pub fn validate(request: &AppendRequest) -> Result<()> {
    validate_shape(request)?;
    text("stream id", &request.stream_id)?;
    metadata(&request.metadata)?;
    for e in &request.events {
        text("event type", &e.event_type)?;
        // Valid JSON text cannot hold a raw NUL (JSON escapes it as \u0000, which PostgreSQL
        // keeps as six characters), but the check is one pass of a fast byte search.
        text("payload", e.payload.as_str())?;
        if let Some(m) = &e.metadata {
            metadata(m)?;
        }
        if let Some(at) = e.occurred_at
            && !(1..=9999).contains(&at.year())
        {
            return Err(StoreError::InvalidAppend(format!(
                "occurred_at {at} is outside the years 1 to 9999"
            )));
        }
    }
    Ok(())
}

fn metadata(m: &crate::envelope::Metadata) -> Result<()> {
    text("actor", &m.actor)?;
    if m.actor.len() > MAX_TEXT {
        return Err(StoreError::InvalidAppend(format!(
            "actor must be at most {MAX_TEXT} bytes"
        )));
    }
    if let Some(trace) = &m.trace_id {
        text("trace id", trace)?;
        if trace.len() > MAX_TEXT {
            return Err(StoreError::InvalidAppend(format!(
                "trace id must be at most {MAX_TEXT} bytes"
            )));
        }
    }
    Ok(())
}

/// The longest actor or trace id: these are identifiers, not documents.
const MAX_TEXT: usize = 1024;

/// Text both backends store the same: no NUL character.
fn text(what: &str, value: &str) -> Result<()> {
    if value.as_bytes().contains(&0) {
        return Err(StoreError::InvalidAppend(format!(
            "{what} must not contain a NUL character"
        )));
    }
    Ok(())
}

fn validate_shape(request: &AppendRequest) -> Result<()> {
    if request.events.is_empty() {
        return Err(StoreError::InvalidAppend(
            "an append needs at least one event".into(),
        ));
    }
    if request.events.len() > MAX_EVENTS_PER_APPEND {
        return Err(StoreError::InvalidAppend(format!(
            "an append may carry at most {MAX_EVENTS_PER_APPEND} events"
        )));
    }
    if request.stream_id.is_empty() || request.stream_id.len() > 200 {
        return Err(StoreError::InvalidAppend(
            "stream id must be 1 to 200 bytes".into(),
        ));
    }
    let mut seen = HashSet::with_capacity(request.events.len());
    for e in &request.events {
        if !seen.insert(e.event_id) {
            return Err(StoreError::InvalidAppend(format!(
                "event id {} appears twice in one append",
                e.event_id
            )));
        }
        if e.event_type.is_empty() || e.event_type.len() > 100 {
            return Err(StoreError::InvalidAppend(
                "event type must be 1 to 100 bytes".into(),
            ));
        }
    }
    Ok(())
}

impl Plan {
    /// Start a plan after the last stored position `head`.
    pub fn new(head: u64) -> Self {
        Self {
            head,
            ..Self::default()
        }
    }

    /// Record a stream's stored version (0 when it has no events).
    pub fn load_stream(&mut self, tenant: TenantId, stream: &str, version: u64) {
        self.streams.insert((tenant, stream.to_owned()), version);
    }

    /// Record an event id that is already stored.
    pub fn load_id(&mut self, tenant: TenantId, event_id: Uuid, stored: StoredId) {
        self.ids.insert((tenant, event_id), stored);
    }

    pub fn has_stream(&self, tenant: TenantId, stream: &str) -> bool {
        self.streams.contains_key(&(tenant, stream.to_owned()))
    }

    /// Decide one append against the stored state plus everything planned before it.
    pub fn decide(&mut self, request: &AppendRequest, now: OffsetDateTime) -> Result<Appended> {
        let tenant = request.tenant_id;
        if let Some(replayed) = self.replay(request)? {
            return Ok(replayed);
        }
        if let Some(e) = request.events.first().filter(|_| request.replay_only()) {
            return Err(StoreError::NotAReplay {
                event_id: e.event_id,
            });
        }
        let key = (tenant, request.stream_id.clone());
        let current = *self
            .streams
            .get(&key)
            .expect("the writer loads every stream of the batch before planning");
        if !request.expected.admits(current) {
            return Err(StoreError::Conflict {
                stream_id: request.stream_id.clone(),
                expected: request.expected.to_string(),
                actual: current,
            });
        }
        self.touched.entry(key.clone()).or_insert(current);
        let mut positions = Vec::with_capacity(request.events.len());
        let mut version = current;
        for e in &request.events {
            self.head += 1;
            version += 1;
            positions.push(self.head);
            self.planned.insert((tenant, e.event_id), self.rows.len());
            self.rows.push(Envelope {
                global_position: self.head,
                tenant_id: tenant,
                stream_id: request.stream_id.clone(),
                stream_version: version,
                event_id: e.event_id,
                event_type: e.event_type.clone(),
                schema_version: e.schema_version,
                occurred_at: e.occurred_at.map_or(now, crate::envelope::truncate_micros),
                recorded_at: now,
                actor: e
                    .metadata
                    .as_ref()
                    .unwrap_or(&request.metadata)
                    .actor
                    .clone(),
                correlation_id: e
                    .metadata
                    .as_ref()
                    .unwrap_or(&request.metadata)
                    .correlation_id,
                causation_id: e
                    .metadata
                    .as_ref()
                    .unwrap_or(&request.metadata)
                    .causation_id,
                trace_id: e
                    .metadata
                    .as_ref()
                    .unwrap_or(&request.metadata)
                    .trace_id
                    .clone(),
                payload: e.payload.clone(),
            });
        }
        self.streams.insert(key, version);
        for e in &request.events {
            let seed = e
                .metadata
                .as_ref()
                .unwrap_or(&request.metadata)
                .event_id_seed;
            if let Some(seed) = seed
                && !self.seeds.contains(&(tenant, seed))
            {
                self.seeds.push((tenant, seed));
            }
        }
        Ok(Appended {
            positions,
            stream_version: version,
            replayed: false,
        })
    }

    /// `Some` when every event of the request is already stored with the same content in the
    /// same stream; an error when only some are, or any differs.
    fn replay(&self, request: &AppendRequest) -> Result<Option<Appended>> {
        let tenant = request.tenant_id;
        let mut found = Vec::new();
        let mut first_stored = None;
        for e in &request.events {
            let key = (tenant, e.event_id);
            let stored = match (self.ids.get(&key), self.planned.get(&key)) {
                (Some(stored), _) => stored.view(),
                (None, Some(&row)) => IdView::of(&self.rows[row]),
                (None, None) => continue,
            };
            let same = stored.stream_id == request.stream_id
                && stored.event_type == e.event_type
                && stored.schema_version == e.schema_version
                && stored.payload == e.payload.as_str();
            if !same {
                return Err(StoreError::DuplicateEventId {
                    event_id: e.event_id,
                });
            }
            first_stored.get_or_insert(e.event_id);
            found.push(stored);
        }
        let Some(first_stored) = first_stored else {
            return Ok(None);
        };
        // A partial re-append, or the same events in another order, is not a retry of one call.
        let consecutive = found
            .windows(2)
            .all(|w| w[1].stream_version == w[0].stream_version + 1);
        if found.len() != request.events.len() || !consecutive {
            return Err(StoreError::DuplicateEventId {
                event_id: first_stored,
            });
        }
        Ok(Some(Appended {
            positions: found.iter().map(|s| s.global_position).collect(),
            stream_version: found.last().expect("not empty").stream_version,
            replayed: true,
        }))
    }

    /// The idempotency seeds of the appends this plan writes (replays and refusals excluded):
    /// the backend marks them applied in the transaction that writes the rows.
    pub fn applied_seeds(&self) -> &[(TenantId, Uuid)] {
        &self.seeds
    }

    /// The rows to insert, in position order.
    pub fn rows(&self) -> &[Envelope] {
        &self.rows
    }

    /// The streams to write: (tenant, stream, version loaded, new version).
    pub fn stream_updates(&self) -> impl Iterator<Item = (TenantId, &str, u64, u64)> + '_ {
        self.touched.iter().map(|((tenant, stream), before)| {
            (
                *tenant,
                stream.as_str(),
                *before,
                self.streams[&(*tenant, stream.clone())],
            )
        })
    }

    pub fn head(&self) -> u64 {
        self.head
    }
}
