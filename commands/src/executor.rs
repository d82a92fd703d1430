//! The command executor for one aggregate type.

use domain::{Aggregate, DomainEvent, EventDecodeError, TenantId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use store::{
    AppendRequest, Appended, Expected, Metadata, NewEvent, RawJson, Snapshot, Store, StoreError,
};
use time::OffsetDateTime;
use tokio::sync::oneshot;

/// How an executor caches and retries.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// The snapshot kind; bump it when the state's layout changes so old snapshots are ignored.
    pub kind: &'static str,
    /// How many times a command is decided again after a version conflict.
    pub max_retries: u32,
    /// Save a snapshot each time a stream's version crosses a multiple of this.
    pub snapshot_every: u64,
    /// The most streams kept hot. Reaching it drops the least recently used half of the idle
    /// ones (they reload from a snapshot and their tail when next used): the executor's memory
    /// is bounded by this many states, not by how many streams the log has (a stream per
    /// dataset, per feedback item, per preset).
    pub max_hot_streams: usize,
}

impl ExecutorConfig {
    pub fn new(kind: &'static str) -> Self {
        Self {
            kind,
            max_retries: 8,
            snapshot_every: 1_000,
            max_hot_streams: 8_192,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<E: std::error::Error + 'static> {
    /// The command was refused by the aggregate. HTTP 4xx, by the domain error.
    #[error(transparent)]
    Domain(E),
    /// The store failed. HTTP 503, or 409 for an event id reused with other content.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored event cannot be read back. HTTP 500: a bug or a missing upcaster.
    #[error(transparent)]
    Decode(#[from] EventDecodeError),
    /// Other writers kept winning. HTTP 409; the client may retry.
    #[error("gave up after {attempts} attempts: the stream kept changing")]
    TooManyConflicts { attempts: u32 },
}

/// The outcome of a command.
#[derive(Debug)]
pub struct Executed<A: Aggregate> {
    /// The stream version after the command.
    pub version: u64,
    /// What was appended; `None` when the decision produced no events.
    pub appended: Option<Appended>,
    /// The events the decision produced.
    pub events: Vec<A::Event>,
}

#[derive(Debug)]
struct Hot<A> {
    version: u64,
    state: A,
    /// False until the state has been loaded from the store.
    loaded: bool,
}

/// The outcome, and the state after the command when the caller asked for it: a copy of the
/// aggregate's whole state per command is the largest cost of a batch of commands on a big
/// aggregate (a replay guard, a tenant's members and tokens), so only callers that read it pay.
type Reply<A> =
    oneshot::Sender<Result<(Executed<A>, Option<A>), ExecuteError<<A as Aggregate>::Error>>>;

/// A command waiting for its stream.
struct Pending<A: Aggregate> {
    command: A::Command,
    metadata: Metadata,
    now: OffsetDateTime,
    /// Whether the caller reads the state after its command (a copy of it is made).
    with_state: bool,
    reply: Reply<A>,
}

/// One stream's hot state, and the commands queued for it. Whoever holds the state decides
/// every queued command in order and appends all their events at once (one version check),
/// so a busy stream costs one append per batch, not one per command.
struct SlotInner<A: Aggregate> {
    hot: tokio::sync::Mutex<Hot<A>>,
    queue: Mutex<Vec<Pending<A>>>,
    /// The executor's use counter when this stream was last asked for (least recently used
    /// streams are dropped first).
    last_used: AtomicU64,
}

impl<A: Aggregate> std::fmt::Debug for SlotInner<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

type Slot<A> = Arc<SlotInner<A>>;

/// The most commands decided and appended together.
const MAX_BATCH: usize = 512;

/// Executes commands for one aggregate type against one store.
#[derive(Debug)]
pub struct Executor<A: Aggregate> {
    core: Core,
    hot: Mutex<HashMap<(TenantId, String), Slot<A>>>,
    /// Counts uses of streams: the clock of `SlotInner::last_used`.
    uses: AtomicU64,
}

/// What deciding and appending needs, shared with the tasks that drain a stream's queue.
#[derive(Clone, Debug)]
struct Core {
    store: Store,
    config: ExecutorConfig,
}

const PAGE: usize = 10_000;

/// How many times an append whose outcome is unknown is repeated (same event ids) before the
/// unknown outcome is reported to the caller (HTTP 503; a retry with the same
/// `Idempotency-Key` stays safe).
const UNKNOWN_OUTCOME_RETRIES: u32 = 5;

/// The id of the `index`-th event of a command made under an event-id seed (an idempotency
/// key): the same seed, stream, type and index give the same id on every attempt and every
/// instance.
fn derived_event_id(seed: uuid::Uuid, stream: &str, event_type: &str, index: usize) -> uuid::Uuid {
    let name = format!("{stream}\n{event_type}\n{index}");
    uuid::Uuid::new_v5(&seed, name.as_bytes())
}

/// Up to 2^attempt × 100 µs (capped at 50 ms), uniformly jittered.
fn backoff(attempt: u32) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let ceiling_us = (100u64 << attempt.min(9)).min(50_000);
    std::time::Duration::from_micros(random % ceiling_us + 1)
}

impl<A: Aggregate> Executor<A>
where
    A::Event: Clone,
    A::Command: Clone + Send,
{
    pub fn new(store: Store, config: ExecutorConfig) -> Self {
        Self {
            core: Core { store, config },
            hot: Mutex::new(HashMap::new()),
            uses: AtomicU64::new(0),
        }
    }

    fn slot(&self, tenant: TenantId, stream: &str) -> Slot<A> {
        let now = self.uses.fetch_add(1, Ordering::Relaxed);
        let mut hot = self.hot.lock().expect("hot lock");
        if let Some(slot) = hot.get(&(tenant, stream.to_owned())) {
            slot.last_used.store(now, Ordering::Relaxed);
            return slot.clone();
        }
        if hot.len() >= self.core.config.max_hot_streams {
            evict_least_recently_used(&mut hot);
        }
        hot.entry((tenant, stream.to_owned()))
            .or_insert_with(|| {
                Arc::new(SlotInner {
                    hot: tokio::sync::Mutex::new(Hot {
                        version: 0,
                        state: A::default(),
                        loaded: false,
                    }),
                    queue: Mutex::new(Vec::new()),
                    last_used: AtomicU64::new(now),
                })
            })
            .clone()
    }

    /// How many streams are hot now.
    pub fn hot_streams(&self) -> usize {
        self.hot.lock().expect("hot lock").len()
    }

    /// Drop a stream's hot state (after an erasure: it is decoded state and may hold erased
    /// plaintext). The next command reloads it from its snapshot (if any) and events.
    pub fn forget(&self, tenant: TenantId, stream: &str) {
        self.hot
            .lock()
            .expect("hot lock")
            .remove(&(tenant, stream.to_owned()));
    }

    /// The current state of a stream, as far as this store has it.
    pub async fn load(
        &self,
        tenant: TenantId,
        stream: &str,
    ) -> Result<(A, u64), ExecuteError<A::Error>> {
        let slot = self.slot(tenant, stream);
        let mut hot = slot.hot.lock().await;
        self.core.catch_up(tenant, stream, &mut hot).await?;
        Ok((hot.state.clone(), hot.version))
    }

    /// Decide `command` against the stream's state and append the result with the expected
    /// version; on a conflict, catch up and decide again. Commands for the same stream that
    /// arrive together are decided in order and appended at once. The outcome carries no state
    /// (see `execute_with_state`).
    pub async fn execute(
        &self,
        tenant: TenantId,
        stream: &str,
        command: &A::Command,
        metadata: &Metadata,
        now: OffsetDateTime,
    ) -> Result<Executed<A>, ExecuteError<A::Error>> {
        let (done, _) = self
            .submit(tenant, stream, command, metadata, now, false)
            .await?;
        Ok(done)
    }

    /// `execute`, and the stream's state right after this command (not after the commands
    /// decided with it in its batch).
    pub async fn execute_with_state(
        &self,
        tenant: TenantId,
        stream: &str,
        command: &A::Command,
        metadata: &Metadata,
        now: OffsetDateTime,
    ) -> Result<(Executed<A>, A), ExecuteError<A::Error>> {
        let (done, state) = self
            .submit(tenant, stream, command, metadata, now, true)
            .await?;
        Ok((
            done,
            state.expect("the batch copies the state for a caller that asks for it"),
        ))
    }

    async fn submit(
        &self,
        tenant: TenantId,
        stream: &str,
        command: &A::Command,
        metadata: &Metadata,
        now: OffsetDateTime,
        with_state: bool,
    ) -> Result<(Executed<A>, Option<A>), ExecuteError<A::Error>> {
        let slot = self.slot(tenant, stream);
        let (tx, rx) = oneshot::channel();
        slot.queue.lock().expect("queue lock").push(Pending {
            command: command.clone(),
            metadata: metadata.clone(),
            now,
            with_state,
            reply: tx,
        });
        // The queue is drained by a task of its own: a caller that goes away (its request was
        // dropped) cannot abort a batch that carries other callers' commands.
        let (core, stream_id) = (self.core.clone(), stream.to_owned());
        tokio::spawn(async move { core.drain(tenant, &stream_id, slot).await });
        rx.await
            .unwrap_or_else(|_| Err(ExecuteError::Store(StoreError::Closed)))
    }
}

/// Drop the least recently used half of the idle streams (a stream in use — a command queued or
/// running, a state being loaded — is never dropped: its slot is shared). They come back from
/// their snapshot and tail when next used. Linear in the hot streams, once per half of them made
/// hot, so constant per stream.
fn evict_least_recently_used<A: Aggregate>(hot: &mut HashMap<(TenantId, String), Slot<A>>) {
    let mut idle: Vec<u64> = hot
        .values()
        .filter(|slot| Arc::strong_count(slot) == 1)
        .map(|slot| slot.last_used.load(Ordering::Relaxed))
        .collect();
    if idle.is_empty() {
        return;
    }
    let middle = idle.len() / 2;
    let (_, median, _) = idle.select_nth_unstable(middle);
    let median = *median;
    hot.retain(|_, slot| {
        Arc::strong_count(slot) > 1 || slot.last_used.load(Ordering::Relaxed) > median
    });
}

impl Core {
    /// Take the stream's state and decide everything queued for it, batch after batch.
    async fn drain<A>(&self, tenant: TenantId, stream: &str, slot: Slot<A>)
    where
        A: Aggregate,
        A::Event: Clone,
    {
        let mut hot = slot.hot.lock().await;
        loop {
            let (taken, batch): (usize, Vec<Pending<A>>) = {
                let mut queue = slot.queue.lock().expect("queue lock");
                let n = queue.len().min(MAX_BATCH);
                // A caller that went away before its turn is not served later.
                (
                    n,
                    queue.drain(..n).filter(|p| !p.reply.is_closed()).collect(),
                )
            };
            if taken == 0 {
                return;
            }
            if !batch.is_empty() {
                self.run_batch(tenant, stream, &mut hot, batch).await;
            }
        }
    }

    async fn run_batch<A>(
        &self,
        tenant: TenantId,
        stream: &str,
        hot: &mut Hot<A>,
        batch: Vec<Pending<A>>,
    ) where
        A: Aggregate,
        A::Event: Clone,
    {
        let fail = |batch: Vec<Pending<A>>, error: &dyn Fn() -> ExecuteError<A::Error>| {
            for p in batch {
                let _ = p.reply.send(Err(error()));
            }
        };
        if !hot.loaded
            && let Err(e) = self.catch_up(tenant, stream, hot).await
        {
            let message = e.to_string();
            return fail(batch, &|| {
                ExecuteError::Store(StoreError::Backend(message.clone()))
            });
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Decide every command in order, each on the state the ones before it left.
            let mut state = hot.state.clone();
            let mut outcomes = Vec::with_capacity(batch.len());
            let mut new_events = Vec::new();
            for p in &batch {
                match state.decide(&p.command, p.now) {
                    Ok(events) => {
                        for (i, e) in events.iter().enumerate() {
                            state.evolve(e);
                            let mut event =
                                NewEvent::new(e.event_type(), RawJson::from_value(&e.to_payload()))
                                    .with_schema_version(e.schema_version())
                                    .with_metadata(p.metadata.clone())
                                    .occurred_at(p.now);
                            if let Some(seed) = p.metadata.event_id_seed {
                                event = event.with_id(derived_event_id(
                                    seed,
                                    stream,
                                    e.event_type(),
                                    i,
                                ));
                            }
                            new_events.push(event);
                        }
                        outcomes.push(Ok((events, p.with_state.then(|| state.clone()))));
                    }
                    Err(e) => outcomes.push(Err(e)),
                }
            }
            if new_events.is_empty() {
                // Nothing to append means nothing checks the version: a refusal (or a no-op)
                // decided on a stale cache would stand. One indexed read tells whether another
                // process or instance has moved the stream; if so, catch up and decide again.
                match self.store.stream_version(tenant, stream).await {
                    Ok(stored) if stored != hot.version && attempt <= self.config.max_retries => {
                        if let Err(e) = self.catch_up(tenant, stream, hot).await {
                            let message = e.to_string();
                            return fail(batch, &|| {
                                ExecuteError::Store(StoreError::Backend(message.clone()))
                            });
                        }
                        continue;
                    }
                    Ok(stored) if stored != hot.version => {
                        return fail(batch, &|| ExecuteError::TooManyConflicts {
                            attempts: attempt,
                        });
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let message = e.to_string();
                        return fail(batch, &|| {
                            ExecuteError::Store(StoreError::Backend(message.clone()))
                        });
                    }
                }
                for (p, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = p.reply.send(match outcome {
                        Ok((events, _)) => Ok((
                            Executed {
                                version: hot.version,
                                appended: None,
                                events,
                            },
                            p.with_state.then(|| hot.state.clone()),
                        )),
                        Err(e) => Err(ExecuteError::Domain(e)),
                    });
                }
                return;
            }
            let expected = if hot.version == 0 {
                Expected::NoStream
            } else {
                Expected::Exact(hot.version)
            };
            let count = new_events.len() as u64;
            let request = AppendRequest {
                tenant_id: tenant,
                stream_id: stream.to_owned(),
                expected,
                events: new_events,
                metadata: batch[0].metadata.clone(),
            };
            match self.append_resolving(request).await {
                Ok(appended) => {
                    // The stream version this batch's first event got.
                    let first = appended.stream_version + 1 - count;
                    // A replay (the same event ids, stored by an earlier attempt) or a write at
                    // another version is not what was decided here on this cache: read the
                    // stream back rather than trust the decided state.
                    let trusted = !appended.replayed && first == hot.version + 1;
                    if trusted {
                        let before = hot.version;
                        hot.state = state;
                        hot.version = appended.stream_version;
                        self.maybe_snapshot(tenant, stream, before, hot);
                    } else if let Err(e) = self.catch_up(tenant, stream, hot).await {
                        let message = e.to_string();
                        return fail(batch, &|| {
                            ExecuteError::Store(StoreError::Backend(message.clone()))
                        });
                    }
                    let mut offset = 0;
                    for (p, outcome) in batch.into_iter().zip(outcomes) {
                        let _ = p.reply.send(match outcome {
                            Ok((events, decided)) => {
                                let n = events.len();
                                let mine = (n > 0).then(|| Appended {
                                    positions: appended.positions[offset..offset + n].to_vec(),
                                    stream_version: first + (offset + n) as u64 - 1,
                                    replayed: appended.replayed,
                                });
                                offset += n;
                                Ok(if trusted {
                                    let version = first + offset as u64 - 1;
                                    let done = Executed {
                                        version,
                                        appended: mine,
                                        events,
                                    };
                                    (done, decided)
                                } else {
                                    let done = Executed {
                                        version: hot.version,
                                        appended: mine,
                                        events,
                                    };
                                    (done, p.with_state.then(|| hot.state.clone()))
                                })
                            }
                            Err(e) => Err(ExecuteError::Domain(e)),
                        });
                    }
                    return;
                }
                Err(e) if e.is_conflict() && attempt <= self.config.max_retries => {
                    tracing::debug!(
                        stream,
                        attempt,
                        "version conflict; catching up and deciding again"
                    );
                    // A short, jittered pause so that two busy writers do not starve each other.
                    tokio::time::sleep(backoff(attempt)).await;
                    if let Err(e) = self.catch_up(tenant, stream, hot).await {
                        let message = e.to_string();
                        return fail(batch, &|| {
                            ExecuteError::Store(StoreError::Backend(message.clone()))
                        });
                    }
                }
                Err(e) if e.is_conflict() => {
                    return fail(batch, &|| ExecuteError::TooManyConflicts {
                        attempts: attempt,
                    });
                }
                Err(e) if batch.len() == 1 => {
                    let p = batch.into_iter().next().expect("one");
                    let _ = p.reply.send(Err(e.into()));
                    return;
                }
                Err(e) if !e.is_transient() => {
                    // One command's events were refused (an event id already stored with other
                    // content, an invalid value): the others must not fail for it. Decide and
                    // append each on its own.
                    tracing::debug!(stream, error = %e, "batch refused; running its commands one by one");
                    for p in batch {
                        Box::pin(self.run_batch(tenant, stream, hot, vec![p])).await;
                    }
                    return;
                }
                Err(e) => {
                    // A passing condition: every caller gets it as it is (its kind says whether
                    // and when to retry).
                    return fail(batch, &|| ExecuteError::Store(e.clone()));
                }
            }
        }
    }

    /// Append; when the store cannot tell whether the append committed (the connection was lost
    /// around COMMIT), append the very same events again — same ids — until it can: the store's
    /// idempotent append then answers the truth (the original positions, or a first write).
    /// Deciding again with new ids instead could write the facts twice (a unit charged twice).
    async fn append_resolving(&self, request: AppendRequest) -> Result<Appended, StoreError> {
        let mut attempt = 0;
        loop {
            match self.store.append(request.clone()).await {
                Err(e) if e.is_outcome_unknown() && attempt < UNKNOWN_OUTCOME_RETRIES => {
                    attempt += 1;
                    tracing::warn!(
                        stream = %request.stream_id,
                        attempt,
                        error = %e,
                        "append outcome unknown; appending the same events again"
                    );
                    tokio::time::sleep(backoff(attempt + 4)).await;
                }
                other => return other,
            }
        }
    }

    /// Bring the hot state up to the stream's last event: from a snapshot on first use, then
    /// only the events after the version already held.
    async fn catch_up<A: Aggregate>(
        &self,
        tenant: TenantId,
        stream: &str,
        hot: &mut Hot<A>,
    ) -> Result<(), ExecuteError<A::Error>> {
        if !hot.loaded {
            if let Some(snapshot) = self
                .store
                .load_snapshot(tenant, stream, self.config.kind)
                .await?
            {
                match serde_json::from_slice::<A>(&snapshot.state) {
                    Ok(state) => {
                        hot.state = state;
                        hot.version = snapshot.version;
                    }
                    Err(e) => tracing::warn!(stream, error = %e, "unreadable snapshot ignored"),
                }
            }
            hot.loaded = true;
        }
        loop {
            let page = self
                .store
                .read_stream(tenant, stream, hot.version + 1, PAGE)
                .await?;
            for envelope in &page {
                let event = A::Event::from_stored(
                    &envelope.event_type,
                    envelope.schema_version,
                    envelope.payload.as_bytes(),
                )?;
                hot.state.evolve(&event);
                hot.version = envelope.stream_version;
            }
            if page.len() < PAGE {
                return Ok(());
            }
        }
    }

    fn maybe_snapshot<A: Aggregate>(
        &self,
        tenant: TenantId,
        stream: &str,
        before: u64,
        hot: &Hot<A>,
    ) {
        let every = self.config.snapshot_every.max(1);
        if before / every == hot.version / every {
            return;
        }
        let Ok(state) = serde_json::to_vec(&hot.state) else {
            return;
        };
        let snapshot = Snapshot {
            tenant_id: tenant,
            stream_id: stream.to_owned(),
            kind: self.config.kind.to_owned(),
            version: hot.version,
            state,
        };
        let store = self.store.clone();
        // A snapshot is only a cache: saving it off the command's path is safe.
        tokio::spawn(async move {
            if let Err(e) = store.save_snapshot(snapshot).await {
                tracing::warn!(error = %e, "snapshot not saved");
            }
        });
    }
}
