//! The triage board (SPEC §7): every feedback item with its triage state, newest first, filtered
//! by tenant, severity, screen, state and text, with counts by severity and screen.

use crate::codec::{CodecError, Reader, Writer};
use crate::runtime::{Projection, Unreadable};
use domain::DomainEvent;
use domain::TenantId;
use domain::feedback::{Diagnostics, FeedbackEvent, Priority, Severity, State};
use serde::{Deserialize, Serialize};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use store::Envelope;
use time::OffsetDateTime;
use uuid::Uuid;

const LAYOUT: u16 = 1;

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
    /// The message, category and labels in lower case, for the text filter.
    #[serde(skip)]
    haystack: String,
}

impl FeedbackItem {
    fn index_text(&mut self) {
        let mut h = self.message.as_deref().unwrap_or("").to_lowercase();
        for part in self.category.iter().chain(self.labels.iter()) {
            h.push('\n');
            h.push_str(part);
        }
        self.haystack = h;
    }
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

impl FeedbackFilter {
    fn matches(&self, i: &FeedbackItem, text: Option<&str>) -> bool {
        self.tenant.is_none_or(|t| t == i.tenant_id)
            && self.severity.is_none_or(|s| s == i.severity)
            && self.state.is_none_or(|s| s == i.state)
            && self.screen.as_deref().is_none_or(|s| s == i.screen)
            && text.is_none_or(|t| i.haystack.contains(t))
    }
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

#[derive(Debug, Default)]
struct Board {
    /// In submission order (positions ascending).
    items: Vec<FeedbackItem>,
    by_id: HashMap<Uuid, usize>,
}

#[derive(Debug, Default)]
pub struct FeedbackBoard {
    board: RwLock<Board>,
}

impl FeedbackBoard {
    /// One item of a tenant's.
    pub fn get(&self, tenant: TenantId, feedback: Uuid) -> Option<FeedbackItem> {
        let b = self.board.read().expect("feedback lock");
        b.by_id
            .get(&feedback)
            .map(|&i| &b.items[i])
            .filter(|i| i.tenant_id == tenant)
            .cloned()
    }

    /// The tenant an item belongs to.
    pub fn tenant_of(&self, feedback: Uuid) -> Option<TenantId> {
        let b = self.board.read().expect("feedback lock");
        b.by_id.get(&feedback).map(|&i| b.items[i].tenant_id)
    }

    /// A filtered view, newest first: up to `limit` items submitted before position `before`
    /// (the previous page's `next`), with the counts of the whole view.
    pub fn list(&self, filter: &FeedbackFilter, before: Option<u64>, limit: usize) -> FeedbackPage {
        let text = filter.text.as_ref().map(|t| t.to_lowercase());
        let b = self.board.read().expect("feedback lock");
        let mut page = FeedbackPage::default();
        for i in b.items.iter().rev() {
            if !filter.matches(i, text.as_deref()) {
                continue;
            }
            page.total += 1;
            *page.by_severity.entry(i.severity).or_default() += 1;
            match page.by_screen.get_mut(&i.screen) {
                Some(n) => *n += 1,
                None => {
                    page.by_screen.insert(i.screen.clone(), 1);
                }
            }
            if before.is_none_or(|p| i.position < p) {
                if page.items.len() < limit {
                    page.items.push(i.clone());
                } else if page.next.is_none() {
                    page.next = page.items.last().map(|l| l.position);
                }
            }
        }
        page
    }

    fn apply_one(b: &mut Board, e: &Envelope) -> Result<(), Unreadable> {
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
                let mut item = FeedbackItem {
                    feedback_id: s.feedback_id,
                    tenant_id: e.tenant_id,
                    position: e.global_position,
                    submitted_at: e.occurred_at,
                    updated_at: e.occurred_at,
                    message: s.message,
                    screen: s.screen,
                    step: s.step,
                    severity: s.severity,
                    category: s.category,
                    diagnostics: s.diagnostics,
                    state: State::New,
                    assignee: None,
                    labels: Vec::new(),
                    priority: None,
                    haystack: String::new(),
                };
                item.index_text();
                b.by_id.insert(item.feedback_id, b.items.len());
                b.items.push(item);
            }
            FeedbackEvent::Triaged(t) => {
                if let Some(item) = Self::item_of(b, e) {
                    if let Some(a) = t.assignee {
                        item.assignee = a;
                    }
                    if let Some(l) = t.labels {
                        item.labels = l;
                    }
                    if let Some(p) = t.priority {
                        item.priority = p;
                    }
                    item.updated_at = e.occurred_at;
                    item.index_text();
                }
            }
            FeedbackEvent::StateChanged(c) => {
                if let Some(item) = Self::item_of(b, e) {
                    item.state = c.to;
                    item.updated_at = e.occurred_at;
                }
            }
        }
        Ok(())
    }

    fn item_of<'a>(b: &'a mut Board, e: &Envelope) -> Option<&'a mut FeedbackItem> {
        let id = e
            .stream_id
            .strip_prefix("feedback-")
            .and_then(|u| Uuid::parse_str(u).ok())?;
        let &i = b.by_id.get(&id)?;
        Some(&mut b.items[i]).filter(|i| i.tenant_id == e.tenant_id)
    }
}

impl Projection for FeedbackBoard {
    fn name(&self) -> &'static str {
        "feedback"
    }

    fn apply(&self, events: &[Envelope]) -> Result<(), Unreadable> {
        let mut b = self.board.write().expect("feedback lock");
        for e in events {
            Self::apply_one(&mut b, e)?;
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let b = self.board.read().expect("feedback lock");
        let mut w = Writer::new(self.name(), LAYOUT);
        w.json(&b.items);
        w.finish()
    }

    fn decode(&self, bytes: &[u8]) -> Result<(), CodecError> {
        let mut r = Reader::new(bytes, self.name(), LAYOUT)?;
        let mut items: Vec<FeedbackItem> = r.json()?;
        r.end()?;
        let mut by_id = HashMap::with_capacity(items.len());
        for (n, i) in items.iter_mut().enumerate() {
            i.index_text();
            by_id.insert(i.feedback_id, n);
        }
        *self.board.write().expect("feedback lock") = Board { items, by_id };
        Ok(())
    }

    fn fresh(&self) -> Arc<dyn Projection> {
        Arc::new(FeedbackBoard::default())
    }

    fn adopt(&self, other: &dyn Projection) {
        if let Some(o) = other.as_any().downcast_ref::<FeedbackBoard>() {
            let taken = std::mem::take(&mut *o.board.write().expect("feedback lock"));
            *self.board.write().expect("feedback lock") = taken;
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn board(n: usize) -> FeedbackBoard {
        let screens = ["home", "exports", "datasets", "queries", "billing"];
        let tenants: Vec<TenantId> = (0..100)
            .map(|t| TenantId::from_uuid(Uuid::from_u128(t + 1)))
            .collect();
        let mut b = Board::default();
        for k in 0..n {
            let mut item = FeedbackItem {
                feedback_id: Uuid::from_u128(k as u128 + 1),
                tenant_id: tenants[k % tenants.len()],
                position: k as u64 + 1,
                submitted_at: OffsetDateTime::UNIX_EPOCH,
                updated_at: OffsetDateTime::UNIX_EPOCH,
                message: Some(format!("the export of report {k} fails with a timeout")),
                screen: screens[k % screens.len()].to_owned(),
                step: "main".to_owned(),
                severity: Severity::ALL[k % 4],
                category: None,
                diagnostics: None,
                state: State::ALL[k % 6],
                assignee: None,
                labels: Vec::new(),
                priority: None,
                haystack: String::new(),
            };
            item.index_text();
            b.by_id.insert(item.feedback_id, k);
            b.items.push(item);
        }
        FeedbackBoard {
            board: RwLock::new(b),
        }
    }

    #[test]
    fn feedback_board_pages_newest_first_with_counts_of_the_whole_view() {
        let b = board(100);
        let filter = FeedbackFilter {
            severity: Some(Severity::Low),
            ..FeedbackFilter::default()
        };
        let first = b.list(&filter, None, 10);
        assert_eq!(first.total, 25);
        assert_eq!(first.items.len(), 10);
        assert_eq!(first.items[0].position, 97);
        let second = b.list(&filter, first.next, 10);
        assert_eq!(second.items[0].position, 57);
        assert_eq!(second.total, 25);
        let third = b.list(&filter, second.next, 10);
        assert_eq!(third.items.len(), 5);
        assert_eq!(third.next, None);
    }
}
