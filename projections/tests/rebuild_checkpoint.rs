//! A rebuild that swaps a state in at the same position checkpoints the rebuilt state, so that a
//! restart does not bring back the state the rebuild replaced.

use domain::TenantId;
use projections::{Checkpointing, Projection, RebuildState, Runtime};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::testing::TestStore;
use store::{AppendRequest, Expected, Metadata, NewEvent, ProjectionState, RawJson};
use uuid::Uuid;

#[derive(Default)]
struct Counter(Mutex<u64>);

impl Projection for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }
    fn apply(&self, events: &[store::Envelope]) -> Result<(), projections::Unreadable> {
        *self.0.lock().unwrap() += events.len() as u64;
        Ok(())
    }
    fn encode(&self) -> Vec<u8> {
        self.0.lock().unwrap().to_le_bytes().to_vec()
    }
    fn decode(&self, bytes: &[u8]) -> Result<(), projections::CodecError> {
        let b: [u8; 8] = bytes
            .try_into()
            .map_err(|_| projections::CodecError::Truncated)?;
        *self.0.lock().unwrap() = u64::from_le_bytes(b);
        Ok(())
    }
    fn fresh(&self) -> Arc<dyn Projection> {
        Arc::new(Counter::default())
    }
    fn adopt(&self, other: &dyn Projection) {
        if let Some(o) = other.as_any().downcast_ref::<Counter>() {
            *self.0.lock().unwrap() = *o.0.lock().unwrap();
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_state_is_checkpointed_even_when_no_event_follows_the_swap() {
    let ts = TestStore::embedded().await;
    let store = &ts.store;
    let tenant = TenantId::from_uuid(Uuid::new_v4());
    let head = store
        .append(AppendRequest {
            tenant_id: tenant,
            stream_id: "s".into(),
            expected: Expected::Any,
            events: (0..10)
                .map(|_| NewEvent::new("x.y", RawJson::from_value(&serde_json::json!({}))))
                .collect(),
            metadata: Metadata::actor("t"),
        })
        .await
        .unwrap()
        .last_position();
    // A wrong state persisted at the head (the bug a rebuild is for).
    store
        .save_projection(ProjectionState {
            name: "counter".into(),
            position: head,
            state: 999u64.to_le_bytes().to_vec(),
        })
        .await
        .unwrap();
    let live = Arc::new(Counter::default());
    let rt = Runtime::start_with(
        store,
        vec![live.clone() as Arc<dyn Projection>],
        Checkpointing::default(),
    );
    assert!(rt.catch_up(Duration::from_secs(5)).await);
    assert_eq!(*live.0.lock().unwrap(), 999);
    rt.rebuild("counter").unwrap();
    for _ in 0..200 {
        let r = rt
            .status()
            .into_iter()
            .find(|s| s.name == "counter")
            .and_then(|s| s.rebuild)
            .unwrap();
        if r.state != RebuildState::Running {
            assert!(matches!(r.state, RebuildState::Done { .. }), "{r:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        *live.0.lock().unwrap(),
        10,
        "the live projection has the rebuilt state"
    );
    rt.shutdown().await;
    let saved = store.load_projection("counter").await.unwrap().unwrap();
    let n = u64::from_le_bytes(saved.state.try_into().unwrap());
    assert_eq!(
        n, 10,
        "the rebuilt state is what is checkpointed (position {})",
        saved.position
    );
}
