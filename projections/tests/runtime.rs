//! The projections runtime against real stores (embedded and PostgreSQL): resuming from persisted
//! state, periodic checkpoints, ignoring a state of an unknown layout, stopping at an undecodable
//! event (fail closed), and a rebuild that switches without missing an event.

use domain::TenantId;
use projections::{
    AuditTree, Catalog, Checkpointing, Identity, Principal, Projection, RebuildState, Runtime,
    TokenProblem,
};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use store::testing::TestStore;
use store::{AppendRequest, Expected, Metadata, NewEvent, ProjectionState, RawJson, Store};
use time::OffsetDateTime;
use uuid::Uuid;

const EXPIRES: &str = "2099-01-01T00:00:00Z";

fn event(event_type: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent::new(event_type, RawJson::from_value(&payload))
}

async fn append(store: &Store, tenant: TenantId, stream: &str, events: Vec<NewEvent>) -> u64 {
    store
        .append(AppendRequest {
            tenant_id: tenant,
            stream_id: stream.to_owned(),
            expected: Expected::Any,
            events,
            metadata: Metadata::actor("test"),
        })
        .await
        .expect("append")
        .last_position()
}

/// A tenant with an owner and a token (stored as history is: v1 JSON payloads).
async fn tenant_with_token(store: &Store, hash: &str) -> (TenantId, Uuid) {
    let tenant = TenantId::from_uuid(Uuid::new_v4());
    let user = Uuid::new_v4();
    let token_id = Uuid::new_v4();
    append(
        store,
        tenant,
        &domain::tenant::stream_id(tenant),
        vec![
            event(
                "tenant.signed_up",
                json!({"name": "Acme", "plan": "free", "at": "2026-02-16T09:30:00Z"}),
            ),
            event(
                "member.added",
                json!({"user_id": user, "email": "a@example.com", "name": "A", "role": "owner"}),
            ),
            event(
                "token.issued",
                json!({"user_id": user, "token_id": token_id, "token_sha256": hash, "expires_at": EXPIRES}),
            ),
        ],
    )
    .await;
    (tenant, token_id)
}

async fn usage(store: &Store, tenant: TenantId, n: usize) -> u64 {
    let events = (0..n)
        .map(|i| {
            event(
                "usage.recorded",
                json!({"meter": "queries", "units": 1, "n": i}),
            )
        })
        .collect();
    append(store, tenant, "usage-queries-2026-02", events).await
}

struct Set {
    identity: Arc<Identity>,
    audit: Arc<AuditTree>,
    catalog: Arc<Catalog>,
    runtime: Runtime,
}

fn start(store: &Store, checkpointing: Checkpointing) -> Set {
    let identity = Arc::new(Identity::default());
    let audit = Arc::new(AuditTree::default());
    let catalog = Arc::new(Catalog::default());
    let all: Vec<Arc<dyn Projection>> = vec![identity.clone(), audit.clone(), catalog.clone()];
    Set {
        runtime: Runtime::start_with(store, all, checkpointing),
        identity,
        audit,
        catalog,
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

async fn resumes_from_its_persisted_checkpoint_after_a_graceful_shutdown(ts: TestStore) {
    let store = &ts.store;
    let hash = "ab".repeat(32);
    let (tenant, _) = tenant_with_token(store, &hash).await;
    let head = usage(store, tenant, 500).await;
    let first = start(store, Checkpointing::default());
    assert!(first.runtime.catch_up(Duration::from_secs(10)).await);
    first.runtime.shutdown().await;
    for name in ["identity", "audit_tree", "catalog"] {
        let saved = store.load_projection(name).await.unwrap().expect(name);
        assert_eq!(saved.position, head, "{name} checkpointed at the head");
    }
    let second = start(store, Checkpointing::default());
    assert!(
        second
            .runtime
            .started("identity", Duration::from_secs(5))
            .await
    );
    for status in second.runtime.status() {
        assert_eq!(status.resumed_from, Some(head), "{} resumed", status.name);
        assert_eq!(status.position, head);
    }
    assert!(matches!(
        second.identity.authenticate(&hash, now()),
        Ok(Principal::Member { tenant: t, .. }) if t == tenant
    ));
    assert_eq!(second.audit.size(tenant), 503);
    let view = second.audit.view(store, tenant).await.unwrap();
    assert_eq!(
        view.positions.len(),
        503,
        "the leaves are rows in the store"
    );
    assert_eq!(view.positions.last(), Some(&head));
    assert_eq!(view.root, audit::root(&view.leaves, 503).unwrap());
    let (datasets, _) = second
        .catalog
        .datasets_page(store, tenant, None, 10)
        .await
        .unwrap();
    assert!(datasets.is_empty());
}

/// Every projection gets its checkpoint, though they are written one at a time (each encoding
/// pauses the reader: ADR 038) and no new event comes after the last one to wake the reader.
async fn checkpoints_every_n_events_without_a_shutdown(ts: TestStore) {
    let store = &ts.store;
    let set = start(
        store,
        Checkpointing {
            every_events: 100,
            every: Duration::from_secs(3600),
        },
    );
    let tenant = TenantId::from_uuid(Uuid::new_v4());
    let head = usage(store, tenant, 250).await;
    assert!(set.runtime.catch_up(Duration::from_secs(10)).await);
    for name in ["identity", "audit_tree", "catalog"] {
        let mut saved = None;
        for _ in 0..100 {
            saved = store.load_projection(name).await.unwrap();
            if saved.as_ref().is_some_and(|s| s.position == head) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(saved.map(|s| s.position), Some(head), "{name}");
    }
}

async fn checkpoints_after_t_seconds_when_fewer_than_n_events_came(ts: TestStore) {
    let store = &ts.store;
    let set = start(
        store,
        Checkpointing {
            every_events: 1_000_000,
            every: Duration::from_millis(300),
        },
    );
    let tenant = TenantId::from_uuid(Uuid::new_v4());
    let head = usage(store, tenant, 5).await;
    assert!(set.runtime.catch_up(Duration::from_secs(10)).await);
    let mut saved = None;
    for _ in 0..60 {
        saved = store.load_projection("audit_tree").await.unwrap();
        if saved.as_ref().is_some_and(|s| s.position == head) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(saved.map(|s| s.position), Some(head), "saved while idle");
}

async fn a_state_of_an_unknown_layout_is_ignored_and_rebuilt_from_position_1(ts: TestStore) {
    let store = &ts.store;
    let tenant = TenantId::from_uuid(Uuid::new_v4());
    let head = usage(store, tenant, 40).await;
    store
        .save_projection(ProjectionState {
            name: "audit_tree".into(),
            position: head,
            state: br#"{"layout":"json v0","positions":{}}"#.to_vec(),
        })
        .await
        .unwrap();
    let set = start(store, Checkpointing::default());
    assert!(set.runtime.catch_up(Duration::from_secs(10)).await);
    let audit = set
        .runtime
        .status()
        .into_iter()
        .find(|s| s.name == "audit_tree")
        .unwrap();
    assert_eq!(audit.resumed_from, None);
    assert_eq!(set.audit.size(tenant), 40, "rebuilt from position 1");
}

async fn identity_stops_at_an_undecodable_revocation_and_never_checkpoints_past_it(ts: TestStore) {
    let store = &ts.store;
    let hash = "cd".repeat(32);
    let (tenant, token_id) = tenant_with_token(store, &hash).await;
    let before = store.head().await.unwrap();
    // A revocation the code cannot read (its token id is not a UUID), then a readable one.
    let bad = append(
        store,
        tenant,
        &domain::tenant::stream_id(tenant),
        vec![event("token.revoked", json!({"token_id": 42}))],
    )
    .await;
    append(
        store,
        tenant,
        &domain::tenant::stream_id(tenant),
        vec![event("token.revoked", json!({"token_id": token_id}))],
    )
    .await;
    let head = usage(store, tenant, 10).await;
    let set = start(
        store,
        Checkpointing {
            every_events: 1,
            every: Duration::from_millis(10),
        },
    );
    assert!(
        !set.runtime
            .started("identity", Duration::from_secs(10))
            .await
    );
    let stopped = set.runtime.stopped("identity").expect("identity stopped");
    assert_eq!(stopped.position, bad);
    assert_eq!(stopped.event_type, "token.revoked");
    assert!(!set.runtime.wait_for(head, Duration::from_secs(5)).await);
    let status = set.runtime.status();
    let identity = status.iter().find(|s| s.name == "identity").unwrap();
    assert_eq!(
        identity.position, before,
        "stops before the unreadable event"
    );
    // The other projections go on to the head.
    assert!(
        set.runtime
            .started("audit_tree", Duration::from_secs(5))
            .await
    );
    assert_eq!(set.audit.size(tenant), head);
    // The identity projection still believes the token valid (the revocation is behind the
    // stop): that is why authentication refuses while the runtime says identity is stopped
    // (api/src/auth.rs).
    assert!(set.identity.authenticate(&hash, now()).is_ok());
    assert_eq!(
        set.identity.authenticate(&"ef".repeat(32), now()),
        Err(TokenProblem::Unknown)
    );
    set.runtime.shutdown().await;
    let saved = store.load_projection("identity").await.unwrap();
    assert!(
        saved.is_none_or(|s| s.position < bad),
        "the checkpoint never passes the unreadable event"
    );
    // A rebuild meets the same event and leaves the live projection as it was.
    let again = start(store, Checkpointing::default());
    again.runtime.rebuild("identity").unwrap();
    let mut state = None;
    for _ in 0..100 {
        state = again
            .runtime
            .status()
            .into_iter()
            .find(|s| s.name == "identity")
            .and_then(|s| s.rebuild)
            .map(|r| r.state);
        if !matches!(state, Some(RebuildState::Running)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        matches!(state, Some(RebuildState::Failed { .. })),
        "{state:?}"
    );
    assert!(again.runtime.stopped("identity").is_some());
}

async fn a_rebuild_switches_in_when_caught_up_while_events_keep_coming(ts: TestStore) {
    let store = &ts.store;
    let tenant = TenantId::from_uuid(Uuid::new_v4());
    usage(store, tenant, 10_000).await;
    usage(store, tenant, 10_000).await;
    let set = start(store, Checkpointing::default());
    assert!(set.runtime.catch_up(Duration::from_secs(20)).await);
    set.runtime.rebuild("audit_tree").unwrap();
    assert!(
        set.runtime.rebuild("audit_tree").is_err(),
        "one rebuild at a time"
    );
    assert!(set.runtime.rebuild("nope").is_err());
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                usage(&store, tenant, 50).await;
            }
        })
    };
    let mut done = None;
    for _ in 0..400 {
        let r = set
            .runtime
            .status()
            .into_iter()
            .find(|s| s.name == "audit_tree")
            .and_then(|s| s.rebuild)
            .unwrap();
        if r.state != RebuildState::Running {
            done = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let done = done.expect("the rebuild finishes");
    assert!(matches!(done.state, RebuildState::Done { .. }), "{done:?}");
    assert_eq!(done.name, "audit_tree.rebuild");
    writer.await.unwrap();
    assert!(set.runtime.catch_up(Duration::from_secs(10)).await);
    let head = store.head().await.unwrap();
    assert_eq!(set.audit.size(tenant), head, "no event missed or doubled");
    let positions = set
        .audit
        .positions_after(store, tenant, 0, usize::MAX)
        .await
        .unwrap();
    assert_eq!(positions.len() as u64, head);
    assert!(positions.windows(2).all(|w| w[0] + 1 == w[1]));
    let view = set.audit.view(store, tenant).await.unwrap();
    assert_eq!(
        view.root,
        audit::root(&view.leaves, head).unwrap(),
        "the rows written by the rebuild and the live tree agree"
    );
}

/// Checks that it sees every position once, in order.
#[derive(Default)]
struct Sequence {
    last: std::sync::Mutex<u64>,
}

impl Projection for Sequence {
    fn name(&self) -> &'static str {
        "sequence"
    }
    fn apply(&self, events: &[store::Envelope]) -> Result<(), projections::Unreadable> {
        let mut last = self.last.lock().unwrap();
        for e in events {
            assert_eq!(
                e.global_position,
                *last + 1,
                "in order, none missed or doubled"
            );
            *last = e.global_position;
        }
        Ok(())
    }
    fn encode(&self) -> Vec<u8> {
        self.last.lock().unwrap().to_le_bytes().to_vec()
    }
    fn decode(&self, bytes: &[u8]) -> Result<(), projections::CodecError> {
        let b: [u8; 8] = bytes
            .try_into()
            .map_err(|_| projections::CodecError::Truncated)?;
        *self.last.lock().unwrap() = u64::from_le_bytes(b);
        Ok(())
    }
    fn fresh(&self) -> Arc<dyn Projection> {
        Arc::new(Sequence::default())
    }
    fn adopt(&self, other: &dyn Projection) {
        if let Some(o) = other.as_any().downcast_ref::<Sequence>() {
            *self.last.lock().unwrap() = *o.last.lock().unwrap();
        }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

async fn replay_and_the_reader_apply_every_event_once_in_order_across_pages_read_ahead(
    ts: TestStore,
) {
    let store = &ts.store;
    let tenant = TenantId::from_uuid(Uuid::new_v4());
    for _ in 0..3 {
        usage(store, tenant, 10_000).await;
    }
    let head = usage(store, tenant, 5_001).await;
    let offline: Arc<dyn Projection> = Arc::new(Sequence::default());
    let report = projections::replay(store, std::slice::from_ref(&offline), 1, None)
        .await
        .unwrap();
    assert_eq!((report.position, report.events), (head, head));
    let until = projections::replay(store, &[Arc::new(Sequence::default())], 1, Some(12_345))
        .await
        .unwrap();
    assert_eq!((until.position, until.events), (12_345, 12_345));
    // The live reader, with appends arriving while it pages through the log.
    let live = Arc::new(Sequence::default());
    let runtime = Runtime::start(store, vec![live.clone()]);
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..30 {
                usage(&store, tenant, 700).await;
            }
        })
    };
    writer.await.unwrap();
    assert!(runtime.catch_up(Duration::from_secs(20)).await);
    let head = store.head().await.unwrap();
    assert_eq!(*live.last.lock().unwrap(), head);
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(store::testing::TestStore::embedded().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(store::testing::TestStore::postgres().await).await;
                }
            )*
        }
    };
}

on_both_stores!(
    replay_and_the_reader_apply_every_event_once_in_order_across_pages_read_ahead,
    resumes_from_its_persisted_checkpoint_after_a_graceful_shutdown,
    checkpoints_every_n_events_without_a_shutdown,
    checkpoints_after_t_seconds_when_fewer_than_n_events_came,
    a_state_of_an_unknown_layout_is_ignored_and_rebuilt_from_position_1,
    identity_stops_at_an_undecodable_revocation_and_never_checkpoints_past_it,
    a_rebuild_switches_in_when_caught_up_while_events_keep_coming,
);
