//! The first-success read model (SPEC §9): each user's way through the flow, from the facts the
//! log holds (the user joining, and their own uploads, queries and PASS exports, by the actor that
//! made them) and the onboarding records (screen reports, dismissed and snoozed nudges).

use crate::codec::{CodecError, Reader, Writer};
use crate::runtime::{Projection, Unreadable};
use domain::DomainEvent;
use domain::TenantId;
use domain::dataset::DatasetEvent;
use domain::insights::Step;
use domain::onboarding::{OnboardingEvent, Progress};
use domain::quota::UsageEvent;
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use store::Envelope;
use uuid::Uuid;

const LAYOUT: u16 = 1;

type Key = (Uuid, Uuid);

#[derive(Debug, Default)]
pub struct FirstSuccess {
    users: RwLock<HashMap<Key, Progress>>,
}

/// The user an actor string names (`user:<uuid>`).
fn user_of(actor: &str) -> Option<Uuid> {
    actor
        .strip_prefix("user:")
        .and_then(|u| Uuid::parse_str(u).ok())
}

#[derive(serde::Deserialize)]
struct Joined {
    user_id: Uuid,
}

impl FirstSuccess {
    /// One user's progress (a copy).
    pub fn progress(&self, tenant: TenantId, user: Uuid) -> Option<Progress> {
        self.users
            .read()
            .expect("onboarding lock")
            .get(&(*tenant.as_uuid(), user))
            .cloned()
    }

    /// Every user this model knows, as (tenant, user).
    pub fn users(&self) -> Vec<(TenantId, Uuid)> {
        self.users
            .read()
            .expect("onboarding lock")
            .keys()
            .map(|(t, u)| (TenantId::from_uuid(*t), *u))
            .collect()
    }

    /// Every user's progress (a snapshot).
    pub fn all(&self) -> Vec<Progress> {
        self.users
            .read()
            .expect("onboarding lock")
            .values()
            .cloned()
            .collect()
    }

    fn apply_one(users: &mut HashMap<Key, Progress>, e: &Envelope) -> Result<(), Unreadable> {
        if e.tenant_id == TenantId::PLATFORM {
            return Ok(());
        }
        let tenant = *e.tenant_id.as_uuid();
        let at = e.occurred_at;
        if e.event_type == "member.added" {
            let joined: Joined = serde_json::from_slice(e.payload.as_bytes())
                .map_err(|err| Unreadable::at(e, err))?;
            let p = users.entry((tenant, joined.user_id)).or_default();
            p.reached(Step::SignedUp, at);
            p.active(at);
        }
        let Some(user) = user_of(&e.actor) else {
            return Ok(());
        };
        let p = users.entry((tenant, user)).or_default();
        p.active(at);
        match e.event_type.as_str() {
            "dataset.uploaded" => {
                if let DatasetEvent::Uploaded(u) =
                    DatasetEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
                        .map_err(|err| Unreadable::at(e, err))?
                {
                    p.dataset_id = Some(u.dataset_id);
                }
                p.reached(Step::DatasetUploaded, at);
            }
            "query.run" | "export.completed" => {
                match UsageEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
                    .map_err(|err| Unreadable::at(e, err))?
                {
                    UsageEvent::QueryRun(q) => {
                        p.query_id = q.query_id.or(p.query_id);
                        p.reached(Step::FirstQuery, at);
                    }
                    UsageEvent::ExportCompleted(x) if x.badge == "PASS" => {
                        p.reached(Step::FirstExportPassed, at);
                    }
                    _ => {}
                }
            }
            t if t.starts_with("onboarding.") => {
                match OnboardingEvent::from_stored(t, e.schema_version, e.payload.as_bytes())
                    .map_err(|err| Unreadable::at(e, err))?
                {
                    OnboardingEvent::PositionReported(r) => {
                        p.position = Some((r.screen, r.step, at));
                    }
                    OnboardingEvent::NudgeDismissed(d) => {
                        p.snoozed.remove(&d.nudge);
                        p.dismissed.insert(d.nudge, at);
                    }
                    OnboardingEvent::NudgeSnoozed(s) => {
                        p.snoozed.insert(s.nudge, s.until);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl Projection for FirstSuccess {
    fn name(&self) -> &'static str {
        "first_success"
    }

    fn apply(&self, events: &[Envelope]) -> Result<(), Unreadable> {
        let mut users = self.users.write().expect("onboarding lock");
        for e in events {
            Self::apply_one(&mut users, e)?;
        }
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        let users = self.users.read().expect("onboarding lock");
        let list: Vec<(&Key, &Progress)> = users.iter().collect();
        let mut w = Writer::new(self.name(), LAYOUT);
        w.json(&list);
        w.finish()
    }

    fn decode(&self, bytes: &[u8]) -> Result<(), CodecError> {
        let mut r = Reader::new(bytes, self.name(), LAYOUT)?;
        let list: Vec<(Key, Progress)> = r.json()?;
        r.end()?;
        *self.users.write().expect("onboarding lock") = list.into_iter().collect();
        Ok(())
    }

    fn fresh(&self) -> Arc<dyn Projection> {
        Arc::new(FirstSuccess::default())
    }

    fn adopt(&self, other: &dyn Projection) {
        if let Some(o) = other.as_any().downcast_ref::<FirstSuccess>() {
            let taken = std::mem::take(&mut *o.users.write().expect("onboarding lock"));
            *self.users.write().expect("onboarding lock") = taken;
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
