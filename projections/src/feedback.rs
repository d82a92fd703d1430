//! The triage board (SPEC §7): every feedback item with its triage state, newest first, filtered
//! by tenant, severity, screen, state and text, with counts by severity and screen.
//!
//! A view with its counts is a scan of every item, so each item has a compact entry in memory:
//! position, tenant, id, severity, state, screen (interned), the text the filter searches and its
//! triage. The submission itself — message, step, category, diagnostics — is a row in the store
//! (ADR 039), read for the items of the page only (from the pending rows until stored,
//! `pending.rs`).

use crate::codec::{CodecError, Reader, Writer};
use crate::pending::Pending;
use crate::runtime::{Projection, Unreadable};
use domain::DomainEvent;
use domain::TenantId;
use domain::feedback::{Diagnostics, FeedbackEvent, Priority, Severity, State};
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use store::{Envelope, ProjectionRow, RowWrite, Store, StoreError};
use time::OffsetDateTime;
use uuid::Uuid;

const NAME: &str = "feedback";
/// 2: compact entries, the submissions in rows (1 held every item whole).
const LAYOUT: u16 = 2;

/// One item on the board.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackItem {
    pub feedback_id: Uuid,
    pub tenant_id: TenantId,
    /// The position of its submission (the board's order, newest first, and the cursor).
    pub position: u64,
    pub submitted_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub message: Option<String>,
    pub screen: String,
    pub step: String,
    pub severity: Severity,
    pub category: Option<String>,
    pub diagnostics: Option<Diagnostics>,
    pub state: State,
    pub assignee: Option<String>,
    pub labels: Vec<String>,
    pub priority: Option<Priority>,
}

/// What the board is filtered by (every field optional; all given must match).
#[derive(Clone, Debug, Default)]
pub struct FeedbackFilter {
    pub tenant: Option<TenantId>,
    pub severity: Option<Severity>,
    pub screen: Option<String>,
    pub state: Option<State>,
    /// A case-insensitive substring of the message, category or labels.
    pub text: Option<String>,
}

/// One page of a filtered view, with the counts of the whole view.
#[derive(Clone, Debug, Default)]
pub struct FeedbackPage {
    pub items: Vec<FeedbackItem>,
    /// The position to pass as `after` for the next page (`None`: this was the last).
    pub next: Option<u64>,
    pub total: u64,
    pub by_severity: BTreeMap<Severity, u64>,
    pub by_screen: BTreeMap<String, u64>,
}

/// The submission as its row keeps it.
#[derive(Serialize, Deserialize)]
struct Submission {
    submitted_at: OffsetDateTime,
    message: Option<String>,
    step: String,
    category: Option<String>,
    diagnostics: Option<Diagnostics>,
}

/// What triage set (absent until an item is triaged).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Triage {
    assignee: Option<String>,
    labels: Vec<String>,
    priority: Option<Priority>,
}

/// An item as the board scans it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    position: u64,
    tenant: TenantId,
    id: Uuid,
    severity: Severity,
    state: State,
    /// An index into `Board::screens`.
    screen: u32,
    /// The message in lower case and the category, what the text filter searches (with the
    /// labels).
    text: Box<str>,
    updated_at: OffsetDateTime,
    triage: Option<Box<Triage>>,
}

impl Entry {
    fn matches(&self, f: &FeedbackFilter, screen: Option<u32>, text: Option<&str>) -> bool {
        f.tenant.is_none_or(|t| t == self.tenant)
            && f.severity.is_none_or(|s| s == self.severity)
            && f.state.is_none_or(|s| s == self.state)
            && (f.screen.is_none() || screen == Some(self.screen))
            && text.is_none_or(|t| {
                self.text.contains(t)
                    || self
                        .triage
                        .as_ref()
                        .is_some_and(|g| g.labels.iter().any(|l| l.contains(t)))
            })
    }
}

fn key(position: u64) -> Vec<u8> {
    position.to_be_bytes().to_vec()
}

fn searched(message: Option<&str>, category: Option<&str>) -> Box<str> {
    let mut h = message.unwrap_or("").to_lowercase();
    if let Some(c) = category {
        h.push('\n');
        h.push_str(c);
    }
    h.into_boxed_str()
}

#[derive(Debug, Default)]
struct Board {
    /// In submission order (positions ascending).
    entries: Vec<Entry>,
    by_id: HashMap<Uuid, u32>,
    screens: Vec<String>,
    screen_ids: HashMap<String, u32>,
}

impl Board {
    fn screen_id(&mut self, screen: String) -> u32 {
        if let Some(&i) = self.screen_ids.get(&screen) {
            return i;
        }
        let i = self.screens.len() as u32;
        self.screens.push(screen.clone());
        self.screen_ids.insert(screen, i);
        i
    }

    fn index(&self, id: Uuid) -> Option<usize> {
        self.by_id.get(&id).map(|&i| i as usize)
    }
}

fn missing(what: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("a feedback row cannot be read: {what}"))
}

#[derive(Debug, Default)]
pub struct FeedbackBoard {
    board: RwLock<Board>,
    pending: Pending,
}

impl FeedbackBoard {
    /// One item of a tenant's.
    pub async fn get(
        &self,
        store: &Store,
        tenant: TenantId,
        feedback: Uuid,
    ) -> store::Result<Option<FeedbackItem>> {
        let (entry, screen) = {
            let b = self.board.read().expect("feedback lock");
            let Some(i) = b.index(feedback) else {
                return Ok(None);
            };
            let e = b.entries[i].clone();
            if e.tenant != tenant {
                return Ok(None);
            }
            let screen = b.screens[e.screen as usize].clone();
            (e, screen)
        };
        Ok(self.items(store, vec![(entry, screen)]).await?.pop())
    }

    /// The tenant an item belongs to.
    pub fn tenant_of(&self, feedback: Uuid) -> Option<TenantId> {
        let b = self.board.read().expect("feedback lock");
        b.index(feedback).map(|i| b.entries[i].tenant)
    }

    /// A filtered view, newest first: up to `limit` items submitted before position `before`
    /// (the previous page's `next`), with the counts of the whole view.
    pub async fn list(
        &self,
        store: &Store,
        filter: &FeedbackFilter,
        before: Option<u64>,
        limit: usize,
    ) -> store::Result<FeedbackPage> {
        let text = filter.text.as_ref().map(|t| t.to_lowercase());
        let mut page = FeedbackPage::default();
        let picked = {
            let b = self.board.read().expect("feedback lock");
            let screen = filter
                .screen
                .as_ref()
                .and_then(|s| b.screen_ids.get(s).copied());
            if filter.screen.is_some() && screen.is_none() {
                return Ok(page);
            }
            let mut by_screen: HashMap<u32, u64> = HashMap::new();
            let mut picked = Vec::new();
            for e in b.entries.iter().rev() {
                if !e.matches(filter, screen, text.as_deref()) {
                    continue;
                }
                page.total += 1;
                *page.by_severity.entry(e.severity).or_default() += 1;
                *by_screen.entry(e.screen).or_default() += 1;
                if before.is_none_or(|p| e.position < p) {
                    if picked.len() < limit {
                        picked.push((e.clone(), b.screens[e.screen as usize].clone()));
                    } else if page.next.is_none() {
                        page.next = picked.last().map(|(l, _): &(Entry, String)| l.position);
                    }
                }
            }
            page.by_screen = by_screen
                .into_iter()
                .map(|(i, n)| (b.screens[i as usize].clone(), n))
                .collect();
            picked
        };
        page.items = self.items(store, picked).await?;
        Ok(page)
    }

    /// The items of `entries`, their submissions read from the rows.
    async fn items(
        &self,
        store: &Store,
        entries: Vec<(Entry, String)>,
    ) -> store::Result<Vec<FeedbackItem>> {
        let keys = entries
            .iter()
            .map(|(e, _)| (e.tenant, key(e.position)))
            .collect();
        let rows = self.pending.rows_at(store, NAME, keys).await?;
        entries
            .into_iter()
            .zip(rows)
            .map(|((e, screen), row)| {
                let row = row.ok_or_else(|| missing(format!("no row for {}", e.id)))?;
                let s: Submission = serde_json::from_slice(&row).map_err(missing)?;
                let triage = e.triage.map(|t| *t).unwrap_or_default();
                Ok(FeedbackItem {
                    feedback_id: e.id,
                    tenant_id: e.tenant,
                    position: e.position,
                    submitted_at: s.submitted_at,
                    updated_at: e.updated_at,
                    message: s.message,
                    screen,
                    step: s.step,
                    severity: e.severity,
                    category: s.category,
                    diagnostics: s.diagnostics,
                    state: e.state,
                    assignee: triage.assignee,
                    labels: triage.labels,
                    priority: triage.priority,
                })
            })
            .collect()
    }

    fn apply_one(&self, b: &mut Board, e: &Envelope) -> Result<(), Unreadable> {
        // A tenant's settings (`feedback.diagnostics_set`) are read from their own stream.
        if !e.event_type.starts_with("feedback.") || e.event_type == "feedback.diagnostics_set" {
            return Ok(());
        }
        let event =
            FeedbackEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
                .map_err(|err| Unreadable::at(e, err))?;
        match event {
            FeedbackEvent::Submitted(s) => {
                let s = *s;
                let screen = b.screen_id(s.screen);
                let entry = Entry {
                    position: e.global_position,
                    tenant: e.tenant_id,
                    id: s.feedback_id,
                    severity: s.severity,
                    state: State::New,
                    screen,
                    text: searched(s.message.as_deref(), s.category.as_deref()),
                    updated_at: e.occurred_at,
                    triage: None,
                };
                let row = Submission {
                    submitted_at: e.occurred_at,
                    message: s.message,
                    step: s.step,
                    category: s.category,
                    diagnostics: s.diagnostics,
                };
                let row = serde_json::to_vec(&row).map_err(|err| Unreadable::at(e, err))?;
                self.pending.push(ProjectionRow {
                    tenant: e.tenant_id,
                    key: key(e.global_position),
                    write: RowWrite::Put(row),
                });
                b.by_id.insert(entry.id, b.entries.len() as u32);
                b.entries.push(entry);
            }
            FeedbackEvent::Triaged(t) => {
                if let Some(entry) = Self::entry_of(b, e) {
                    let triage = entry.triage.get_or_insert_with(Box::default);
                    if let Some(a) = t.assignee {
                        triage.assignee = a;
                    }
                    if let Some(l) = t.labels {
                        triage.labels = l;
                    }
                    if let Some(p) = t.priority {
                        triage.priority = p;
                    }
                    entry.updated_at = e.occurred_at;
                }
            }
            FeedbackEvent::StateChanged(c) => {
                if let Some(entry) = Self::entry_of(b, e) {
                    entry.state = c.to;
                    entry.updated_at = e.occurred_at;
                }
            }
        }
        Ok(())
    }

    fn entry_of<'a>(b: &'a mut Board, e: &Envelope) -> Option<&'a mut Entry> {
        let id = e
            .stream_id
            .strip_prefix("feedback-")
            .and_then(|u| Uuid::parse_str(u).ok())?;
        let &i = b.by_id.get(&id)?;
        Some(&mut b.entries[i as usize]).filter(|i| i.tenant == e.tenant_id)
    }
}

impl Projection for FeedbackBoard {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(&self, events: &[Envelope]) -> Result<(), Unreadable> {
        let mut b = self.board.write().expect("feedback lock");
        for e in events {
            self.apply_one(&mut b, e)?;
        }
        Ok(())
    }

    fn take_rows(&self) -> Vec<ProjectionRow> {
        self.pending.take()
    }

    fn rows_stored(&self) {
        self.pending.stored();
    }

    fn encode(&self) -> Vec<u8> {
        let b = self.board.read().expect("feedback lock");
        let mut w = Writer::new(self.name(), LAYOUT);
        w.json(&b.screens);
        w.json(&b.entries);
        w.finish()
    }

    fn decode(&self, bytes: &[u8]) -> Result<(), CodecError> {
        let mut r = Reader::new(bytes, self.name(), LAYOUT)?;
        let screens: Vec<String> = r.json()?;
        let entries: Vec<Entry> = r.json()?;
        r.end()?;
        let mut by_id = HashMap::with_capacity(entries.len());
        for (n, e) in entries.iter().enumerate() {
            if e.screen as usize >= screens.len() {
                return Err(CodecError::Malformed("a screen out of range".into()));
            }
            by_id.insert(e.id, n as u32);
        }
        let screen_ids = screens
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        *self.board.write().expect("feedback lock") = Board {
            entries,
            by_id,
            screens,
            screen_ids,
        };
        self.pending.clear();
        Ok(())
    }

    fn fresh(&self) -> Arc<dyn Projection> {
        Arc::new(FeedbackBoard::default())
    }

    fn adopt(&self, other: &dyn Projection) {
        if let Some(o) = other.as_any().downcast_ref::<FeedbackBoard>() {
            let taken = std::mem::take(&mut *o.board.write().expect("feedback lock"));
            *self.board.write().expect("feedback lock") = taken;
            self.pending.clear();
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::feedback::Submitted;
    use store::RawJson;

    fn submitted(k: usize, tenant: TenantId) -> Envelope {
        let screens = ["home", "exports", "datasets", "queries", "billing"];
        let id = Uuid::from_u128(k as u128 + 1);
        let event = FeedbackEvent::Submitted(Box::new(Submitted {
            feedback_id: id,
            message: Some(format!("The export of report {k} fails with a timeout")),
            screen: screens[k % screens.len()].into(),
            step: "main".into(),
            severity: Severity::ALL[k % 4],
            category: k.is_multiple_of(10).then(|| "bug".to_owned()),
            diagnostics: None,
        }));
        Envelope {
            global_position: k as u64 + 1,
            tenant_id: tenant,
            stream_id: domain::feedback::stream_id(id),
            stream_version: 1,
            event_id: id,
            event_type: event.event_type().into(),
            schema_version: event.schema_version(),
            occurred_at: OffsetDateTime::UNIX_EPOCH,
            recorded_at: OffsetDateTime::UNIX_EPOCH,
            actor: "user:1".into(),
            correlation_id: id,
            causation_id: None,
            trace_id: None,
            payload: RawJson::from_value(&event.to_payload()),
        }
    }

    fn tenant(t: u128) -> TenantId {
        TenantId::from_uuid(Uuid::from_u128(t + 1))
    }

    async fn board(store: &Store, n: usize) -> FeedbackBoard {
        let b = FeedbackBoard::default();
        let events: Vec<Envelope> = (0..n)
            .map(|k| submitted(k, tenant((k % 3) as u128)))
            .collect();
        b.apply(&events).unwrap();
        crate::runtime::keep_rows(store, &b).await;
        b
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn feedback_board_pages_newest_first_with_counts_of_the_whole_view() {
        let ts = store::testing::TestStore::embedded().await;
        let store = &ts.store;
        let b = board(store, 100).await;
        let filter = FeedbackFilter {
            severity: Some(Severity::Low),
            ..FeedbackFilter::default()
        };
        let first = b.list(store, &filter, None, 10).await.unwrap();
        assert_eq!(first.total, 25);
        assert_eq!(first.items.len(), 10);
        assert_eq!(first.items[0].position, 97);
        assert_eq!(
            first.items[0].message.as_deref(),
            Some("The export of report 96 fails with a timeout"),
            "the submission comes back from its row"
        );
        assert_eq!(first.by_screen.values().sum::<u64>(), 25);
        let second = b.list(store, &filter, first.next, 10).await.unwrap();
        assert_eq!(second.items[0].position, 57);
        assert_eq!(second.total, 25);
        let third = b.list(store, &filter, second.next, 10).await.unwrap();
        assert_eq!(third.items.len(), 5);
        assert_eq!(third.next, None);
        // Text (case-insensitive, in the message or the category), screen and tenant.
        let text = |t: &str| FeedbackFilter {
            text: Some(t.into()),
            ..FeedbackFilter::default()
        };
        let found = b.list(store, &text("REPORT 42 "), None, 10).await.unwrap();
        assert_eq!(found.total, 1);
        assert_eq!(
            b.list(store, &text("bug"), None, 100).await.unwrap().total,
            10
        );
        let screen = FeedbackFilter {
            screen: Some("billing".into()),
            tenant: Some(tenant(1)),
            ..FeedbackFilter::default()
        };
        let billing = b.list(store, &screen, None, 100).await.unwrap();
        assert!(
            billing
                .items
                .iter()
                .all(|i| i.screen == "billing" && i.tenant_id == tenant(1))
        );
        assert_eq!(billing.total, 7);
        let unknown = FeedbackFilter {
            screen: Some("nowhere".into()),
            ..FeedbackFilter::default()
        };
        assert_eq!(b.list(store, &unknown, None, 10).await.unwrap().total, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_item_not_yet_stored_is_listed_from_its_pending_row_and_the_state_keeps_the_entries()
    {
        let ts = store::testing::TestStore::embedded().await;
        let store = &ts.store;
        let b = board(store, 3).await;
        b.apply(&[submitted(3, tenant(0))]).unwrap();
        let all = FeedbackFilter::default();
        let listed = b.list(store, &all, None, 10).await.unwrap();
        assert_eq!(listed.total, 4);
        assert_eq!(
            listed.items[0].message.as_deref(),
            Some("The export of report 3 fails with a timeout"),
            "its submission from the pending row"
        );
        assert_eq!(b.tenant_of(Uuid::from_u128(4)), Some(tenant(0)));
        crate::runtime::keep_rows(store, &b).await;
        assert_eq!(b.list(store, &all, None, 10).await.unwrap().total, 4);
        assert_eq!(b.tenant_of(Uuid::from_u128(4)), Some(tenant(0)));
        let back = FeedbackBoard::default();
        back.decode(&b.encode()).unwrap();
        assert_eq!(
            back.list(store, &all, None, 10).await.unwrap().items,
            b.list(store, &all, None, 10).await.unwrap().items
        );
        let item = back
            .get(store, tenant(0), Uuid::from_u128(4))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(item.position, 4);
        assert_eq!(
            back.get(store, tenant(1), Uuid::from_u128(4))
                .await
                .unwrap(),
            None
        );
    }
}
