//! Payload upcasting: stored history is never rewritten; readers see old payloads moved forward
//! along a chain `v1 → v2 → …`, keyed by `(event_type, schema_version)`.

use crate::envelope::{Envelope, RawJson};
use crate::error::{Result, StoreError};
use std::collections::HashMap;

/// Turns a payload of one schema version into the next version's payload.
pub type Upcaster =
    Box<dyn Fn(serde_json::Value) -> std::result::Result<serde_json::Value, String> + Send + Sync>;

/// The registry of upcasters. Each `(event_type, v)` entry yields version `v + 1`.
#[derive(Default)]
pub struct Upcasters {
    steps: HashMap<(String, u16), Upcaster>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upcasters")
            .field("steps", &self.steps.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Upcasters {
    /// Register the step from `from_version` to `from_version + 1` for `event_type`.
    pub fn register(
        mut self,
        event_type: &str,
        from_version: u16,
        step: impl Fn(serde_json::Value) -> std::result::Result<serde_json::Value, String>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.steps
            .insert((event_type.to_owned(), from_version), Box::new(step));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Move one envelope's payload as far forward as the chain goes.
    pub fn apply(&self, mut event: Envelope) -> Result<Envelope> {
        if self.steps.is_empty() {
            return Ok(event);
        }
        let mut value: Option<serde_json::Value> = None;
        while let Some(step) = self
            .steps
            .get(&(event.event_type.clone(), event.schema_version))
        {
            let current = value.take().unwrap_or_else(|| event.payload.to_value());
            value = Some(step(current).map_err(|reason| {
                StoreError::Backend(format!(
                    "upcasting {} v{} at position {} failed: {reason}",
                    event.event_type, event.schema_version, event.global_position
                ))
            })?);
            event.schema_version += 1;
        }
        if let Some(v) = value {
            event.payload = RawJson::from_value(&v);
        }
        Ok(event)
    }

    pub(crate) fn apply_all(&self, events: Vec<Envelope>) -> Result<Vec<Envelope>> {
        if self.steps.is_empty() {
            return Ok(events);
        }
        events.into_iter().map(|e| self.apply(e)).collect()
    }
}
