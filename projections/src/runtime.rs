//! The projections runtime: one reader per process feeds every projection in commit order, resumes
//! each from its persisted state, checkpoints them periodically, stops a projection at the first
//! event it cannot read (fail closed), and rebuilds one beside the live one on request (ADR 009).

use crate::codec::CodecError;
use std::any::Any;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{Envelope, ProjectionRow, ProjectionState, Store, StoreError};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// A read model fed by the log, in commit order, each event exactly once.
///
/// Its state can be written as bytes (`encode`) and read back (`decode`) so that a process resumes
/// from the last checkpoint instead of replaying the whole log; `fresh` and `adopt` let a rebuild
/// grow a second instance beside the live one and hand its state over.
pub trait Projection: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Apply `events` (consecutive, in commit order). At the first event it cannot decode or
    /// upcast, stop: the events before it are applied, it and those after are not.
    fn apply(&self, events: &[Envelope]) -> Result<(), Unreadable>;
    /// The state, in the projection's current layout.
    fn encode(&self) -> Vec<u8>;
    /// Replace the state with persisted bytes; on an error the state is left as it was.
    fn decode(&self, bytes: &[u8]) -> Result<(), CodecError>;
    /// An empty projection of the same kind.
    fn fresh(&self) -> Arc<dyn Projection>;
    /// Take over the state of `other` (a projection of the same kind), leaving it empty.
    fn adopt(&self, other: &dyn Projection);
    fn as_any(&self) -> &dyn Any;
    /// True for a projection that must see the stored bytes (sealed personal fields sealed, no
    /// upcasting): the audit tree hashes them (ADR 023, ADR 032). Every other reads them unsealed.
    fn reads_stored_bytes(&self) -> bool {
        false
    }
    /// The rows the `apply`s since the last call produced, for the store to keep instead of
    /// memory (ADR 039). The runtime writes them before it publishes the position that
    /// produced them, then calls [`Projection::rows_stored`]; a projection must not let readers
    /// count on rows before that.
    fn take_rows(&self) -> Vec<ProjectionRow> {
        Vec::new()
    }
    /// The rows taken last are in the store.
    fn rows_stored(&self) {}
}

/// Store `writes`, retrying until the store takes them: the projections have applied the
/// events that produced them already.
async fn put_rows(store: &Store, writes: Vec<(String, Vec<ProjectionRow>)>) {
    let mut delay = Duration::from_millis(50);
    while let Err(e) = store.put_rows_of(writes.clone()).await {
        tracing::warn!(error = %e, "read model rows not written; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Write the rows `p`'s last `apply`s produced, then tell it they are stored.
pub(crate) async fn keep_rows(store: &Store, p: &dyn Projection) {
    keep_rows_of(store, &[p]).await;
}

/// Write the rows the last `apply`s of `projections` produced, in one transaction (retrying
/// until the store takes them: the projections have applied the events already, and the
/// positions are published only after), then tell each they are stored.
async fn keep_rows_of(store: &Store, projections: &[&dyn Projection]) {
    let writes: Vec<(String, Vec<ProjectionRow>)> = projections
        .iter()
        .map(|p| (p.name().to_owned(), p.take_rows()))
        .filter(|(_, rows)| !rows.is_empty())
        .collect();
    if !writes.is_empty() {
        put_rows(store, writes).await;
    }
    for p in projections {
        p.rows_stored();
    }
}

/// Feed `page` to every projection of `slots`: apply, hand the rows they produced to the
/// writer, then publish each one's new position (their reads see the rows not yet stored,
/// `pending.rs`).
async fn feed_all(rows: &RowWriter, slots: &[Slot], page: &Page, start_head: Option<u64>) {
    let applied: Vec<_> = slots.iter().map(|s| s.apply(page)).collect();
    rows.write(
        slots
            .iter()
            .zip(&applied)
            .filter(|(_, a)| a.is_some())
            .map(|(s, _)| s.projection.clone()),
    )
    .await;
    for (slot, applied) in slots.iter().zip(applied) {
        if let Some(applied) = applied {
            slot.publish(applied, start_head);
        }
    }
}

enum RowMsg {
    /// Rows of several projections (one page), and the projections to tell when stored.
    Write(Vec<(String, Vec<ProjectionRow>)>, Vec<Arc<dyn Projection>>),
    Flush(oneshot::Sender<()>),
}

/// The live reader's writes of read models' rows, in order, off the reader's path: the reader
/// queues a page's rows and goes on; a checkpoint waits for every row queued before it.
#[derive(Clone)]
struct RowWriter {
    tx: mpsc::Sender<RowMsg>,
}

/// Pages of rows queued at most; past it the reader waits for the store.
const ROW_QUEUE: usize = 64;
/// Projections' row sets written in one transaction at most (pages queued while the last
/// transaction ran go together).
const MAX_COALESCED: usize = 256;

impl RowWriter {
    fn start(store: Store) -> Self {
        let (tx, mut rx) = mpsc::channel::<RowMsg>(ROW_QUEUE);
        tokio::spawn(async move {
            let mut next = None;
            loop {
                let msg = match next.take() {
                    Some(m) => m,
                    None => match rx.recv().await {
                        Some(m) => m,
                        None => break,
                    },
                };
                match msg {
                    RowMsg::Write(mut writes, mut stored) => {
                        // The pages queued meanwhile go in the same transaction: fewer commits
                        // rewrite fewer pages of the rows' tables under load.
                        while writes.len() < MAX_COALESCED {
                            match rx.try_recv() {
                                Ok(RowMsg::Write(w, s)) => {
                                    writes.extend(w);
                                    stored.extend(s);
                                }
                                Ok(other) => {
                                    next = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        put_rows(&store, writes).await;
                        // In the order they were taken: each projection's batches, oldest first.
                        for p in stored {
                            p.rows_stored();
                        }
                    }
                    RowMsg::Flush(reply) => {
                        let _ = reply.send(());
                    }
                }
            }
        });
        Self { tx }
    }

    /// Queue the rows `projections` produced since their last `take_rows`.
    async fn write(&self, projections: impl Iterator<Item = Arc<dyn Projection>>) {
        let mut writes = Vec::new();
        let mut stored = Vec::new();
        for p in projections {
            let rows = p.take_rows();
            if !rows.is_empty() {
                writes.push((p.name().to_owned(), rows));
                stored.push(p);
            }
        }
        if !writes.is_empty() {
            let _ = self.tx.send(RowMsg::Write(writes, stored)).await;
        }
    }

    /// Wait until every row queued so far is stored.
    async fn flush(&self) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(RowMsg::Flush(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// A page of the log as each projection reads it: the stored events, and (when they read
/// differently) the same events unsealed and upcast, position for position.
pub(crate) struct Page {
    raw: Vec<Envelope>,
    readable: Option<Vec<Envelope>>,
}

impl std::ops::Deref for Page {
    type Target = [Envelope];
    fn deref(&self) -> &[Envelope] {
        &self.raw
    }
}

impl Page {
    /// `raw` (read through `store.raw()`) as `store` reads it.
    async fn read(store: &Store, raw: Vec<Envelope>) -> store::Result<Page> {
        let readable = if store.needs_readable(&raw) {
            Some(store.readable(raw.clone()).await?)
        } else {
            None
        };
        Ok(Page { raw, readable })
    }

    fn for_projection(&self, p: &dyn Projection) -> &[Envelope] {
        match &self.readable {
            Some(r) if !p.reads_stored_bytes() => r,
            _ => &self.raw,
        }
    }

    fn retain(&mut self, keep: impl Fn(&Envelope) -> bool) {
        if let Some(r) = &mut self.readable {
            r.retain(&keep);
        }
        self.raw.retain(keep);
    }
}

/// Read one page raw and make it a [`Page`].
async fn read_page(store: &Store, start: u64) -> store::Result<Page> {
    let raw = store.raw().read_all(start, PAGE).await?;
    Page::read(store, raw).await
}

/// An event a projection cannot read: it stops before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreadable {
    pub position: u64,
    pub event_type: String,
    pub reason: String,
}

impl Unreadable {
    pub fn at(e: &Envelope, reason: impl std::fmt::Display) -> Self {
        Self {
            position: e.global_position,
            event_type: e.event_type.clone(),
            reason: reason.to_string(),
        }
    }
}

/// When projections are checkpointed: after `every_events` events or `every` of time with
/// something unsaved, whichever comes first, and at a graceful shutdown. A checkpoint encodes
/// the read model whole on the reader's path, so the reader (and every command waiting to read
/// its own write) pauses for it: at most one projection is checkpointed each time the reader
/// reaches the head, and their first checkpoints are spread over `every` (ADR 038).
#[derive(Clone, Debug)]
pub struct Checkpointing {
    pub every_events: u64,
    pub every: Duration,
}

impl Default for Checkpointing {
    fn default() -> Self {
        Self {
            every_events: 1_000_000,
            every: Duration::from_secs(300),
        }
    }
}

/// Events per read of the log.
const PAGE: usize = 10_000;

/// Where a rebuild stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RebuildState {
    /// Replaying from position 1 beside the live projection.
    Running,
    /// Switched: the live projection now has the rebuilt state.
    Done { switched_at: u64 },
    /// Stopped; the live projection is untouched.
    Failed { reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebuildStatus {
    /// The name the rebuild runs under, beside the live one (`identity.rebuild`).
    pub name: String,
    pub position: u64,
    pub state: RebuildState,
}

/// One projection as `/readyz` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectionStatus {
    pub name: &'static str,
    /// The last position applied.
    pub position: u64,
    /// The persisted position this process resumed from (`None`: replayed from position 1).
    pub resumed_from: Option<u64>,
    /// Set when the projection met an event it cannot read; it applies nothing until rebuilt or
    /// restarted with code that reads it.
    pub stopped: Option<Unreadable>,
    pub rebuild: Option<RebuildStatus>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Progress {
    position: u64,
    stopped: bool,
    /// Has reached the log's head as it was when the process started.
    started: bool,
}

#[derive(Debug, Default)]
struct Info {
    resumed_from: Option<u64>,
    stopped: Option<Unreadable>,
    rebuild: Option<RebuildStatus>,
}

struct Slot {
    projection: Arc<dyn Projection>,
    progress: watch::Sender<Progress>,
    info: Mutex<Info>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("name", &self.projection.name())
            .field("progress", &*self.progress.borrow())
            .finish()
    }
}

impl Slot {
    fn position(&self) -> u64 {
        self.progress.borrow().position
    }

    fn info(&self) -> std::sync::MutexGuard<'_, Info> {
        self.info.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Apply the events of `page` this projection has not applied yet: `None` when there were
    /// none (or it is stopped), else the last position and the outcome.
    fn apply(&self, page: &Page) -> Option<(u64, Result<(), Unreadable>)> {
        let page = page.for_projection(&*self.projection);
        let p = *self.progress.borrow();
        if p.stopped {
            return None;
        }
        let start = page.partition_point(|e| e.global_position <= p.position);
        let events = &page[start..];
        let last = events.last()?.global_position;
        match self.projection.apply(events) {
            Ok(()) => Some((last, Ok(()))),
            Err(u) => {
                let applied = events
                    .iter()
                    .take_while(|e| e.global_position < u.position)
                    .last()
                    .map_or(p.position, |e| e.global_position);
                Some((applied, Err(u)))
            }
        }
    }

    /// Publish what [`Slot::apply`] did, once its rows are stored.
    fn publish(&self, (position, outcome): (u64, Result<(), Unreadable>), start_head: Option<u64>) {
        match outcome {
            Ok(()) => self.advance(position, false, start_head),
            Err(u) => {
                tracing::error!(
                    projection = self.projection.name(),
                    position = u.position,
                    event_type = %u.event_type,
                    reason = %u.reason,
                    "projection stopped at an event it cannot read"
                );
                self.info().stopped = Some(u);
                self.advance(position, true, start_head);
            }
        }
    }

    fn advance(&self, position: u64, stopped: bool, start_head: Option<u64>) {
        self.progress.send_modify(|p| {
            p.position = position;
            p.stopped = stopped;
            if start_head.is_some_and(|h| position >= h) {
                p.started = true;
            }
        });
    }
}

enum Control {
    Swap {
        index: usize,
        fresh: Arc<dyn Projection>,
        position: u64,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    Shutdown(oneshot::Sender<()>),
}

#[derive(Debug)]
struct Shared {
    slots: Vec<Slot>,
    reader_error: Mutex<Option<String>>,
}

/// Why a rebuild was not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RebuildError {
    #[error("no projection is named {0:?}")]
    Unknown(String),
    #[error("a rebuild of {0} is already running")]
    AlreadyRunning(String),
    #[error("the projections runtime has stopped")]
    Stopped,
}

/// The running projections of one process.
#[derive(Debug)]
pub struct Runtime {
    store: Store,
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
    reader: JoinHandle<()>,
    rebuilds: Mutex<Vec<JoinHandle<()>>>,
}

impl Runtime {
    /// Start every projection from its persisted state (or from position 1), with the default
    /// checkpointing.
    pub fn start(store: &Store, projections: Vec<Arc<dyn Projection>>) -> Self {
        Self::start_with(store, projections, Checkpointing::default())
    }

    pub fn start_with(
        store: &Store,
        projections: Vec<Arc<dyn Projection>>,
        checkpointing: Checkpointing,
    ) -> Self {
        let shared = Arc::new(Shared {
            slots: projections
                .into_iter()
                .map(|projection| Slot {
                    projection,
                    progress: watch::Sender::new(Progress::default()),
                    info: Mutex::new(Info::default()),
                })
                .collect(),
            reader_error: Mutex::new(None),
        });
        let (control, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(store.clone(), shared.clone(), rx, checkpointing));
        Self {
            store: store.clone(),
            shared,
            control,
            reader,
            rebuilds: Mutex::new(Vec::new()),
        }
    }

    /// Each projection's name and checkpoint.
    pub fn checkpoints(&self) -> Vec<(&'static str, u64)> {
        self.shared
            .slots
            .iter()
            .map(|s| (s.projection.name(), s.position()))
            .collect()
    }

    /// Each projection's position, stop and rebuild.
    pub fn status(&self) -> Vec<ProjectionStatus> {
        self.shared
            .slots
            .iter()
            .map(|s| {
                let info = s.info();
                ProjectionStatus {
                    name: s.projection.name(),
                    position: s.position(),
                    resumed_from: info.resumed_from,
                    stopped: info.stopped.clone(),
                    rebuild: info.rebuild.clone(),
                }
            })
            .collect()
    }

    /// The reader's last failure to read the log, while it retries.
    pub fn reader_error(&self) -> Option<String> {
        self.shared
            .reader_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn slot(&self, name: &str) -> Option<&Slot> {
        self.shared
            .slots
            .iter()
            .find(|s| s.projection.name() == name)
    }

    /// Where `name` stopped, if it met an event it cannot read.
    pub fn stopped(&self, name: &str) -> Option<Unreadable> {
        self.slot(name).and_then(|s| s.info().stopped.clone())
    }

    /// Wait (up to `timeout`) until `name` has reached the log's head as it was when this process
    /// started. True if it has; false if it is stopped, unknown, or still behind.
    pub async fn started(&self, name: &str, timeout: Duration) -> bool {
        let Some(slot) = self.slot(name) else {
            return false;
        };
        let mut rx = slot.progress.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|p| p.started || p.stopped)).await,
            Ok(Ok(p)) if p.started && !p.stopped
        )
    }

    /// Wait until every projection has applied `position` (or until `timeout`). True if reached;
    /// false at once when a projection stopped before it.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for s in &self.shared.slots {
            let mut rx = s.progress.subscribe();
            let left = deadline.saturating_duration_since(Instant::now());
            let reached =
                tokio::time::timeout(left, rx.wait_for(|p| p.position >= position || p.stopped))
                    .await;
            if !matches!(reached, Ok(Ok(p)) if p.position >= position) {
                return false;
            }
        }
        true
    }

    /// Wait until the projection `name` has caught up with the log's head as it is now (false at
    /// once when it is stopped or unknown).
    ///
    /// The head is read once for any number of concurrent callers (`Store::head_after_now`), and
    /// a projection already there answers at once.
    pub async fn catch_up_one(&self, name: &str, timeout: Duration) -> bool {
        let (Some(slot), Ok(head)) = (self.slot(name), self.store.head_after_now().await) else {
            return false;
        };
        let mut rx = slot.progress.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|p| p.position >= head || p.stopped)).await,
            Ok(Ok(p)) if p.position >= head
        )
    }

    /// Wait until every projection has caught up with the log's head as it is now.
    pub async fn catch_up(&self, timeout: Duration) -> bool {
        match self.store.head().await {
            Ok(head) => self.wait_for(head, timeout).await,
            Err(_) => false,
        }
    }

    /// Rebuild `name` from position 1 beside the live projection, which keeps serving; when the
    /// rebuild has caught up, the reader hands its state to the live one between two batches and
    /// checkpoints it. Progress shows in [`Runtime::status`].
    pub fn rebuild(&self, name: &str) -> Result<RebuildStatus, RebuildError> {
        let index = self
            .shared
            .slots
            .iter()
            .position(|s| s.projection.name() == name)
            .ok_or_else(|| RebuildError::Unknown(name.to_owned()))?;
        if self.control.is_closed() {
            return Err(RebuildError::Stopped);
        }
        let slot = &self.shared.slots[index];
        let status = {
            let mut info = slot.info();
            if matches!(&info.rebuild, Some(r) if r.state == RebuildState::Running) {
                return Err(RebuildError::AlreadyRunning(name.to_owned()));
            }
            let status = RebuildStatus {
                name: format!("{name}.rebuild"),
                position: 0,
                state: RebuildState::Running,
            };
            info.rebuild = Some(status.clone());
            status
        };
        let task = tokio::spawn(rebuild_task(
            self.store.clone(),
            self.shared.clone(),
            index,
            self.control.clone(),
        ));
        let mut rebuilds = self.rebuilds.lock().unwrap_or_else(|p| p.into_inner());
        rebuilds.retain(|t| !t.is_finished());
        rebuilds.push(task);
        Ok(status)
    }

    /// Checkpoint every projection and stop the reader (a graceful shutdown).
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.control.send(Control::Shutdown(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(30), rx).await;
        }
        self.stop();
    }

    /// Stop at once, without a checkpoint.
    pub fn stop(&self) {
        self.reader.abort();
        for t in self
            .rebuilds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            t.abort();
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pages read ahead while one is applied: on two cores, two reads and the projections' work
/// overlap.
const AHEAD: usize = 2;

/// The log read page by page in commit order, the next pages fetched (in parallel) while this one
/// is applied. Page `k` covers the positions `[start, start + PAGE)`; a page that comes back short
/// has reached the head, and the pages fetched beyond it are dropped (an event committed after
/// they were read could sit before their start).
struct Pages {
    store: Store,
    next: u64,
    ahead: VecDeque<(u64, JoinHandle<store::Result<Page>>)>,
}

impl Pages {
    fn new(store: Store, from: u64) -> Self {
        Self {
            store,
            next: from.max(1),
            ahead: VecDeque::new(),
        }
    }

    /// Read from `from` next (dropping pages fetched ahead from elsewhere).
    fn seek(&mut self, from: u64) {
        let from = from.max(1);
        if from != self.next {
            self.drop_ahead();
            self.next = from;
        }
    }

    fn drop_ahead(&mut self) {
        for (_, a) in self.ahead.drain(..) {
            a.abort();
        }
    }

    fn fetch(&mut self, start: u64) {
        let store = self.store.clone();
        self.ahead.push_back((
            start,
            tokio::spawn(async move { read_page(&store, start).await }),
        ));
    }

    async fn next(&mut self) -> store::Result<Page> {
        let start = self.next;
        let mut page = match self.ahead.pop_front() {
            Some((at, a)) if at == start => {
                a.await.map_err(|e| StoreError::Backend(e.to_string()))??
            }
            Some((_, a)) => {
                a.abort();
                self.drop_ahead();
                read_page(&self.store, start).await?
            }
            None => read_page(&self.store, start).await?,
        };
        if page.len() == PAGE {
            // Positions are dense, so this is exactly `[start, end)`; a page that went further
            // (a gap) leaves what is beyond `end` to the next page.
            let end = start + PAGE as u64;
            page.retain(|e| e.global_position < end);
            self.next = end;
            let mut at = self.ahead.back().map_or(end, |(s, _)| s + PAGE as u64);
            while self.ahead.len() < AHEAD {
                self.fetch(at);
                at += PAGE as u64;
            }
        } else {
            self.drop_ahead();
            self.next = page.last().map_or(start, |e| e.global_position + 1);
        }
        Ok(page)
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        self.drop_ahead();
    }
}

/// What was replayed.
#[derive(Clone, Debug)]
pub struct ReplayReport {
    pub position: u64,
    pub events: u64,
    pub seconds: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{projection} cannot read the {} event at position {}: {}", .unreadable.event_type, .unreadable.position, .unreadable.reason)]
    Unreadable {
        projection: &'static str,
        unreadable: Unreadable,
    },
}

/// Replay the log from position `from` up to `until` (inclusive; or to the head as it is when the
/// replay reaches it) through `projections`, as a rebuild does.
pub async fn replay(
    store: &Store,
    projections: &[Arc<dyn Projection>],
    from: u64,
    until: Option<u64>,
) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let mut pages = Pages::new(store.clone(), from);
    let mut position = from.saturating_sub(1);
    let mut events = 0u64;
    loop {
        if until.is_some_and(|u| position >= u) {
            break;
        }
        let mut page = pages.next().await?;
        if let Some(u) = until {
            page.retain(|e| e.global_position <= u);
        }
        let Some(last) = page.last() else { break };
        for p in projections {
            let applied = p.apply(page.for_projection(&**p));
            keep_rows(store, &**p).await;
            applied.map_err(|unreadable| ReplayError::Unreadable {
                projection: p.name(),
                unreadable,
            })?;
        }
        position = last.global_position;
        events += page.len() as u64;
    }
    Ok(ReplayReport {
        position,
        events,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Persist `projection`'s state as applied up to `position`, under its name.
pub async fn save(store: &Store, projection: &dyn Projection, position: u64) -> store::Result<()> {
    store
        .save_projection(ProjectionState {
            name: projection.name().to_owned(),
            position,
            state: projection.encode(),
        })
        .await
}

/// Load `projection`'s persisted state. `Some(position)` when it resumed; `None` when there is
/// none or it cannot be read (another layout version, corrupt): then it starts from position 1.
pub async fn load(store: &Store, projection: &dyn Projection) -> store::Result<Option<u64>> {
    let Some(saved) = store.load_projection(projection.name()).await? else {
        return Ok(None);
    };
    match projection.decode(&saved.state) {
        Ok(()) => Ok(Some(saved.position)),
        Err(e) => {
            tracing::warn!(
                projection = projection.name(),
                error = %e,
                "persisted state ignored; rebuilding from position 1"
            );
            Ok(None)
        }
    }
}

/// Checkpoint the due projection that was saved longest ago, if any (one per call: each encodes
/// its whole read model on the reader's path). True when another one is still due.
fn save_most_overdue(
    store: &Store,
    slots: &[Slot],
    savers: &mut [Saver],
    cfg: &Checkpointing,
) -> bool {
    let due: Vec<usize> = (0..slots.len())
        .filter(|&i| !savers[i].writing() && savers[i].due(slots[i].position(), cfg))
        .collect();
    let Some(&oldest) = due.iter().min_by_key(|&&i| savers[i].at) else {
        return false;
    };
    savers[oldest].save(store, &slots[oldest]);
    due.len() > 1
}

/// Per projection: what was saved last and whether a save is still being written.
struct Saver {
    saved: u64,
    at: Instant,
    writing: Option<JoinHandle<()>>,
    rows: RowWriter,
}

impl Saver {
    /// Whether its last checkpoint is still being written.
    fn writing(&self) -> bool {
        self.writing.as_ref().is_some_and(|w| !w.is_finished())
    }

    fn due(&self, position: u64, cfg: &Checkpointing) -> bool {
        position > self.saved
            && (position - self.saved >= cfg.every_events || self.at.elapsed() >= cfg.every)
    }

    /// Encode now (a consistent state at `position`), write in the background; skipped while
    /// the previous write is still going.
    fn save(&mut self, store: &Store, slot: &Slot) {
        if self.writing() {
            return;
        }
        let position = slot.position();
        let state = ProjectionState {
            name: slot.projection.name().to_owned(),
            position,
            state: slot.projection.encode(),
        };
        let (store, rows) = (store.clone(), self.rows.clone());
        self.writing = Some(tokio::spawn(async move {
            // The rows the state covers are in the store before the state is.
            rows.flush().await;
            if let Err(e) = store.save_projection(state).await {
                tracing::warn!(error = %e, "projection checkpoint not saved");
            }
        }));
        self.saved = position;
        self.at = Instant::now();
    }

    async fn flush(&mut self, store: &Store, slot: &Slot) {
        if let Some(w) = self.writing.take() {
            let _ = w.await;
        }
        if slot.position() > self.saved {
            self.save(store, slot);
            if let Some(w) = self.writing.take() {
                let _ = w.await;
            }
        }
    }
}

async fn read_loop(
    store: Store,
    shared: Arc<Shared>,
    mut control: mpsc::UnboundedReceiver<Control>,
    cfg: Checkpointing,
) {
    let set_error = |e: Option<String>| {
        *shared
            .reader_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = e;
    };
    let mut savers = Vec::new();
    let rows = RowWriter::start(store.clone());
    let slots = shared.slots.len().max(1) as u32;
    for (i, slot) in shared.slots.iter().enumerate() {
        let resumed = loop {
            match load(&store, &*slot.projection).await {
                Ok(r) => break r,
                Err(e) => {
                    set_error(Some(e.to_string()));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let position = resumed.unwrap_or(0);
        slot.info().resumed_from = resumed;
        slot.advance(position, false, None);
        // Spread the first checkpoints over `every`: projections started together would
        // otherwise all come due, and pause the reader, at the same moment every time.
        let offset = cfg.every / slots * i as u32;
        savers.push(Saver {
            saved: position,
            at: Instant::now() + offset,
            writing: None,
            rows: rows.clone(),
        });
    }
    let start_head = loop {
        match store.head().await {
            Ok(h) => break h,
            Err(e) => {
                set_error(Some(e.to_string()));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    set_error(None);
    for slot in &shared.slots {
        slot.advance(slot.position(), false, Some(start_head));
    }
    let start_head = Some(start_head);
    let mut pages = Pages::new(store.clone(), 1);
    loop {
        while let Ok(msg) = control.try_recv() {
            if handle(msg, &store, &shared, &mut savers, start_head).await {
                return;
            }
        }
        let from = shared
            .slots
            .iter()
            .filter(|s| !s.progress.borrow().stopped)
            .map(|s| s.position() + 1)
            .min();
        let Some(from) = from else {
            // Every projection has stopped: nothing to read until a rebuild or a shutdown.
            match control.recv().await {
                Some(msg) => {
                    if handle(msg, &store, &shared, &mut savers, start_head).await {
                        return;
                    }
                }
                None => return,
            }
            continue;
        };
        pages.seek(from);
        let page = match pages.next().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "projection reader cannot read the log; retrying");
                set_error(Some(e.to_string()));
                pages.drop_ahead();
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        set_error(None);
        if page.is_empty() {
            // At the head: checkpoint the most overdue projection, if one is due (one per
            // pass, so the reader pauses for one encoding at a time), then wait for new events,
            // a control message or the next checkpoint.
            let more = save_most_overdue(&store, &shared.slots, &mut savers, &cfg);
            let next_save = if more {
                Some(Instant::now())
            } else {
                shared
                    .slots
                    .iter()
                    .zip(&savers)
                    .filter(|(s, v)| s.position() > v.saved)
                    .map(|(_, v)| v.at + cfg.every)
                    .min()
            };
            let mut sub = store.raw().subscribe(from);
            tokio::select! {
                batch = sub.next_batch() => match batch {
                    Ok(batch) => {
                        let batch = match Page::read(&store, batch).await {
                            Ok(b) => b,
                            Err(e) => {
                                set_error(Some(e.to_string()));
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                continue;
                            }
                        };
                        feed_all(&rows, &shared.slots, &batch, start_head).await;
                        pages.seek(sub.position());
                    }
                    Err(e) => {
                        set_error(Some(e.to_string()));
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                msg = control.recv() => match msg {
                    Some(msg) => {
                        if handle(msg, &store, &shared, &mut savers, start_head).await {
                            return;
                        }
                    }
                    None => return,
                },
                () = sleep_until(next_save) => {}
            }
        } else {
            feed_all(&rows, &shared.slots, &page, start_head).await;
        }
        save_most_overdue(&store, &shared.slots, &mut savers, &cfg);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Handle a control message between two batches. True when the reader must end.
async fn handle(
    msg: Control,
    store: &Store,
    shared: &Shared,
    savers: &mut [Saver],
    start_head: Option<u64>,
) -> bool {
    match msg {
        Control::Shutdown(reply) => {
            for (slot, saver) in shared.slots.iter().zip(savers.iter_mut()) {
                saver.flush(store, slot).await;
            }
            let _ = reply.send(());
            true
        }
        Control::Swap {
            index,
            fresh,
            position,
            reply,
        } => {
            let slot = &shared.slots[index];
            // The live projection's rows in flight are stored before its state is replaced.
            savers[index].rows.flush().await;
            let outcome = switch(store, slot, &*fresh, position, start_head).await;
            if outcome.is_ok() {
                // The state changed at the same position: save it even though the position did
                // not move, or a restart would resume from the state the rebuild replaced.
                savers[index].saved = 0;
                savers[index].flush(store, slot).await;
            }
            let _ = reply.send(outcome);
            false
        }
    }
}

/// Bring the rebuilt projection up to the live one's position, then hand its state over. The
/// reader is the only writer of the live projection, so no event is applied twice or missed.
async fn switch(
    store: &Store,
    slot: &Slot,
    fresh: &dyn Projection,
    mut position: u64,
    start_head: Option<u64>,
) -> Result<u64, String> {
    let live = slot.position();
    if position < live {
        let mut pages = Pages::new(store.clone(), position + 1);
        while position < live {
            let mut page = pages.next().await.map_err(|e| e.to_string())?;
            page.retain(|e| e.global_position <= live);
            let Some(last) = page.last() else { break };
            let applied = fresh.apply(page.for_projection(fresh));
            keep_rows(store, fresh).await;
            applied.map_err(|u| {
                format!(
                    "cannot read the {} event at position {}: {}",
                    u.event_type, u.position, u.reason
                )
            })?;
            position = last.global_position;
        }
    }
    slot.projection.adopt(fresh);
    slot.info().stopped = None;
    slot.advance(position, false, start_head);
    tracing::info!(
        projection = slot.projection.name(),
        position,
        "rebuilt projection switched in"
    );
    Ok(position)
}

async fn rebuild_task(
    store: Store,
    shared: Arc<Shared>,
    index: usize,
    control: mpsc::UnboundedSender<Control>,
) {
    let slot = &shared.slots[index];
    let set = |position: u64, state: RebuildState| {
        if let Some(r) = slot.info().rebuild.as_mut() {
            r.position = position;
            r.state = state;
        }
    };
    let fresh = slot.projection.fresh();
    let mut pages = Pages::new(store.clone(), 1);
    let mut position = 0u64;
    // Replay up to the head as it is now (so a rebuild of a stopped projection meets the event it
    // stopped at), and at least to where the live projection is.
    let target = match store.head().await {
        Ok(head) => head,
        Err(e) => {
            set(
                0,
                RebuildState::Failed {
                    reason: e.to_string(),
                },
            );
            return;
        }
    };
    while position < target.max(slot.position()) {
        let page = match pages.next().await {
            Ok(p) => p,
            Err(e) => {
                set(
                    position,
                    RebuildState::Failed {
                        reason: e.to_string(),
                    },
                );
                return;
            }
        };
        let Some(last) = page.last() else { break };
        let applied = fresh.apply(page.for_projection(&*fresh));
        keep_rows(&store, &*fresh).await;
        if let Err(u) = applied {
            let reason = format!(
                "cannot read the {} event at position {}: {}",
                u.event_type, u.position, u.reason
            );
            set(
                u.position.saturating_sub(1),
                RebuildState::Failed { reason },
            );
            return;
        }
        position = last.global_position;
        set(position, RebuildState::Running);
    }
    drop(pages);
    let (tx, rx) = oneshot::channel();
    let sent = control.send(Control::Swap {
        index,
        fresh,
        position,
        reply: tx,
    });
    let outcome = match (sent, rx.await) {
        (Ok(()), Ok(outcome)) => outcome,
        _ => Err("the projections runtime has stopped".into()),
    };
    match outcome {
        Ok(at) => set(at, RebuildState::Done { switched_at: at }),
        Err(reason) => set(position, RebuildState::Failed { reason }),
    }
}
