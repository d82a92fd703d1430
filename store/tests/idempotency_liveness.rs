//! A key left in flight by an instance that died is taken over by the next begin at once, not
//! after the in-flight timeout; a key of a live instance still answers `InFlight` (docs/adr/035).
//! Both backends: the embedded store (the dying instance is a second handle on the same folder,
//! dropped or closed as a process end would) and PostgreSQL (the dying instance's liveness
//! session ends with the handle, or is terminated by the server).

use domain::TenantId;
use std::time::{Duration, Instant};
use store::idempotency::{Begin, StoredResponse};
use store::testing::TestStore;
use store::{AppendRequest, Expected, Location, Metadata, NewEvent, RawJson, Store};
use uuid::Uuid;

fn tenant() -> TenantId {
    TenantId::from_uuid(Uuid::new_v4())
}

fn answer() -> StoredResponse {
    StoredResponse {
        status: 201,
        content_type: "application/json".into(),
        body: br#"{"ok":true}"#.to_vec(),
    }
}

/// The backend pids holding `instance`'s liveness lock (PostgreSQL: two `int4` keys from the
/// instance id's first 64 bits, `objsubid = 2`).
async fn liveness_holders(url: &str, instance: Uuid) -> Vec<i32> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(conn);
    let b = instance.as_bytes();
    let classid = i64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let objid = i64::from(u32::from_be_bytes([b[4], b[5], b[6], b[7]]));
    let rows = client
        .query(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 2 \
             AND mode = 'ExclusiveLock'",
            &[&classid, &objid],
        )
        .await
        .expect("read pg_locks");
    drop(client);
    let _ = driver.await;
    rows.iter().map(|r| r.get(0)).collect()
}

/// Wait (bounded) until the server has released a dead instance's liveness lock: the backend
/// of a closed session exits a moment after its socket closes.
async fn until_released(location: &Location, instance: Uuid) {
    let Location::Postgres(url) = location else {
        return;
    };
    let start = Instant::now();
    while !liveness_holders(url, instance).await.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the liveness lock outlived its session"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One instance begins a key and dies; a live one's retry takes it over at once.
async fn a_key_of_an_instance_that_died_is_taken_over_at_once(h: TestStore, close: bool) {
    let live = &h.store;
    let t = tenant();
    let (first, retry) = (Uuid::new_v4(), Uuid::new_v4());
    let dying = h.another_handle().await;
    let dead_instance = dying.instance();
    assert_ne!(dead_instance, live.instance(), "each handle is an instance");
    assert_eq!(
        dying.idempotency_begin(t, "k", "h", first).await.unwrap(),
        Begin::Started
    );
    // While it lives, its key is in flight for every other instance.
    assert_eq!(
        live.idempotency_begin(t, "k", "h", retry).await.unwrap(),
        Begin::InFlight,
        "a live instance's key is not taken over"
    );
    if close {
        dying.close().await;
    }
    drop(dying);
    until_released(&h.location, dead_instance).await;
    assert_eq!(
        live.idempotency_begin(t, "k", "h", retry).await.unwrap(),
        Begin::Started,
        "the dead instance's key is taken over at once"
    );
    // Now it is the retry's, and of a live instance: in flight for others, then completed.
    let third = h.another_handle().await;
    assert_eq!(
        third
            .idempotency_begin(t, "k", "h", Uuid::new_v4())
            .await
            .unwrap(),
        Begin::InFlight
    );
    assert!(
        live.idempotency_complete(t, "k", retry, answer())
            .await
            .unwrap()
    );
    assert_eq!(
        third
            .idempotency_begin(t, "k", "h", Uuid::new_v4())
            .await
            .unwrap(),
        Begin::Completed(answer())
    );
    // Another request under a dead instance's key is still refused as one.
    let other = h.another_handle().await;
    let other_instance = other.instance();
    assert_eq!(
        other.idempotency_begin(t, "k2", "h", first).await.unwrap(),
        Begin::Started
    );
    drop(other);
    until_released(&h.location, other_instance).await;
    assert_eq!(
        live.idempotency_begin(t, "k2", "x", retry).await.unwrap(),
        Begin::Mismatch
    );
    third.close().await;
}

/// A key the live instance itself began stays in flight for its own later begins: an instance
/// never takes its own running request over.
async fn an_instance_keeps_its_own_keys_in_flight(h: TestStore) {
    let s = &h.store;
    let t = tenant();
    assert_eq!(
        s.idempotency_begin(t, "k", "h", Uuid::new_v4())
            .await
            .unwrap(),
        Begin::Started
    );
    assert_eq!(
        s.idempotency_begin(t, "k", "h", Uuid::new_v4())
            .await
            .unwrap(),
        Begin::InFlight
    );
    // A clone is the same instance.
    let clone: Store = s.clone();
    assert_eq!(clone.instance(), s.instance());
    assert_eq!(
        clone
            .idempotency_begin(t, "k", "h", Uuid::new_v4())
            .await
            .unwrap(),
        Begin::InFlight
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_a_key_of_a_dropped_instance_is_taken_over_at_once() {
    a_key_of_an_instance_that_died_is_taken_over_at_once(TestStore::embedded().await, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_a_key_of_a_closed_instance_is_taken_over_at_once() {
    a_key_of_an_instance_that_died_is_taken_over_at_once(TestStore::embedded().await, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_key_of_a_dropped_instance_is_taken_over_at_once() {
    a_key_of_an_instance_that_died_is_taken_over_at_once(TestStore::postgres().await, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_key_of_a_closed_instance_is_taken_over_at_once() {
    a_key_of_an_instance_that_died_is_taken_over_at_once(TestStore::postgres().await, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_an_instance_keeps_its_own_keys_in_flight() {
    an_instance_keeps_its_own_keys_in_flight(TestStore::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_an_instance_keeps_its_own_keys_in_flight() {
    an_instance_keeps_its_own_keys_in_flight(TestStore::postgres().await).await;
}

/// PostgreSQL: an instance whose liveness session the server ends (its connection lost, as
/// `pg_terminate_backend` does) looks dead at once, and its key is taken over; the instance
/// takes its lock again on a new session a moment later and is alive again for new keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_key_of_an_instance_whose_connection_was_cut_is_taken_over() {
    let h = TestStore::postgres().await;
    let Location::Postgres(url) = h.location.clone() else {
        unreachable!()
    };
    let live = &h.store;
    let cut = h.another_handle().await;
    let t = tenant();
    let admin = {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    };
    // The instance re-takes its lock a second after the cut; a begin that raced with that is
    // tried again with a fresh key, never more than a few times.
    let mut taken_over = false;
    for attempt in 0..5 {
        let key = format!("k{attempt}");
        assert_eq!(
            cut.idempotency_begin(t, &key, "h", Uuid::new_v4())
                .await
                .unwrap(),
            Begin::Started
        );
        let start = Instant::now();
        let holders = loop {
            let holders = liveness_holders(&url, cut.instance()).await;
            if !holders.is_empty() {
                break holders;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "lock never retaken"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            live.idempotency_begin(t, &key, "h", Uuid::new_v4())
                .await
                .unwrap(),
            Begin::InFlight,
            "alive while its session holds the lock"
        );
        for pid in holders {
            admin
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .unwrap();
        }
        until_released(&h.location, cut.instance()).await;
        let got = live
            .idempotency_begin(t, &key, "h", Uuid::new_v4())
            .await
            .unwrap();
        if got == Begin::Started {
            taken_over = true;
            break;
        }
        // Only a lock taken again since the check may explain an InFlight.
        assert!(
            !liveness_holders(&url, cut.instance()).await.is_empty(),
            "a key whose instance holds no liveness lock answered {got:?}"
        );
    }
    assert!(taken_over, "the key of a cut instance was never taken over");
    // The instance comes back: its session and lock are taken again, and its new keys are
    // in flight for others.
    let start = Instant::now();
    while liveness_holders(&url, cut.instance()).await.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the lock was not retaken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        cut.idempotency_begin(t, "again", "h", Uuid::new_v4())
            .await
            .unwrap(),
        Begin::Started
    );
    assert_eq!(
        live.idempotency_begin(t, "again", "h", Uuid::new_v4())
            .await
            .unwrap(),
        Begin::InFlight
    );
    cut.close().await;
}

fn seeded(
    t: TenantId,
    stream: &str,
    expected: Expected,
    seed: Uuid,
    per_event: bool,
) -> AppendRequest {
    let mut metadata = Metadata::actor("tester");
    metadata.event_id_seed = Some(seed);
    let event = NewEvent::new("test.happened", RawJson::parse(r#"{"n":1}"#).unwrap());
    let (event, metadata) = if per_event {
        // As the executor batches commands: each event carries its command's metadata.
        (event.with_metadata(metadata), Metadata::actor("batch"))
    } else {
        (event, metadata)
    };
    AppendRequest {
        tenant_id: t,
        stream_id: stream.to_owned(),
        expected,
        events: vec![event],
        metadata,
    }
}

/// The events of a keyed request mark its seed applied in their own transaction: a key taken
/// over from a dead attempt whose events were written answers `Applied` (the retry may run only
/// as a replay: it could decide other events); one whose events were never written, or were
/// refused, answers `Started`; so does a key abandoned by an attempt that wrote nothing, while
/// one abandoned after its events were written answers `Applied`.
async fn a_key_taken_over_after_its_events_were_written_answers_applied(h: TestStore) {
    let live = &h.store;
    let t = tenant();
    let seeds: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    let dying = h.another_handle().await;
    for (i, seed) in seeds.iter().enumerate() {
        assert_eq!(
            dying
                .idempotency_begin_seeded(t, &format!("k{i}"), "h", Uuid::new_v4(), Some(*seed))
                .await
                .unwrap(),
            Begin::Started
        );
    }
    // k0 and k3 wrote their events (k3's carried per event, as a batch does); k1 wrote
    // nothing; k2's append was refused (a version conflict).
    dying
        .append(seeded(t, "s0", Expected::Any, seeds[0], false))
        .await
        .unwrap();
    dying
        .append(seeded(t, "s3", Expected::Any, seeds[3], true))
        .await
        .unwrap();
    assert!(
        dying
            .append(seeded(t, "s2", Expected::Exact(7), seeds[2], false))
            .await
            .unwrap_err()
            .is_conflict()
    );
    // k4 wrote 300 events at once (PostgreSQL's writer copies such a group: its other path).
    let mut big = seeded(t, "s4", Expected::Any, seeds[4], false);
    big.events = (0..300)
        .map(|i| {
            NewEvent::new(
                "test.happened",
                RawJson::parse(format!(r#"{{"n":{i}}}"#)).unwrap(),
            )
        })
        .collect();
    dying.append(big).await.unwrap();
    let dead = dying.instance();
    drop(dying);
    until_released(&h.location, dead).await;
    let owner = Uuid::new_v4();
    let begin = |key: &'static str, seed: Uuid| {
        live.idempotency_begin_seeded(t, key, "h", owner, Some(seed))
    };
    assert_eq!(begin("k0", seeds[0]).await.unwrap(), Begin::Applied);
    assert_eq!(begin("k3", seeds[3]).await.unwrap(), Begin::Applied);
    assert_eq!(begin("k4", seeds[4]).await.unwrap(), Begin::Applied);
    assert_eq!(begin("k1", seeds[1]).await.unwrap(), Begin::Started);
    assert_eq!(begin("k2", seeds[2]).await.unwrap(), Begin::Started);
    // The key taken over is the retry's to complete (with its "already applied" answer).
    assert!(
        live.idempotency_complete(t, "k0", owner, answer())
            .await
            .unwrap()
    );
    // Not a takeover: an attempt that answered something worth retrying after its events were
    // written (a 5xx) abandons its key; the retry begins it afresh and still learns it applied.
    let seed = Uuid::new_v4();
    let first = Uuid::new_v4();
    assert_eq!(
        live.idempotency_begin_seeded(t, "k5", "h", first, Some(seed))
            .await
            .unwrap(),
        Begin::Started
    );
    live.append(seeded(t, "s5", Expected::Any, seed, false))
        .await
        .unwrap();
    assert!(live.idempotency_abandon(t, "k5", first).await.unwrap());
    assert_eq!(begin("k5", seed).await.unwrap(), Begin::Applied);
    // An abandoned key whose attempt wrote nothing starts again.
    let (unwritten, first) = (Uuid::new_v4(), Uuid::new_v4());
    live.idempotency_begin_seeded(t, "k6", "h", first, Some(unwritten))
        .await
        .unwrap();
    assert!(live.idempotency_abandon(t, "k6", first).await.unwrap());
    assert_eq!(begin("k6", unwritten).await.unwrap(), Begin::Started);
}

/// An append under `Metadata::replay_only` (the retry of a request whose events were written)
/// is answered as a replay when it carries exactly the stored events, and is refused with
/// `NotAReplay`, writing nothing, when any of its events is not stored — alone or decided with
/// other commands in one request. Both backends.
async fn a_replay_only_append_writes_nothing_new(h: TestStore) {
    let store = &h.store;
    let t = tenant();
    let seed = Uuid::new_v4();
    let first = store
        .append(seeded(t, "r", Expected::Any, seed, false))
        .await
        .unwrap();
    let head = store.head().await.unwrap();
    // The same events again, replay-only: the first answer.
    let mut again = seeded(t, "r", Expected::Any, seed, false);
    again.events[0].event_id = first_event_id(store, t, "r").await;
    again.metadata.replay_only = true;
    let replayed = store.append(again.clone()).await.unwrap();
    assert!(replayed.replayed);
    assert_eq!(replayed.positions, first.positions);
    // Another decision (a new event): refused, nothing written.
    let mut other = again.clone();
    other.events[0] = NewEvent::new("test.other", RawJson::parse(r#"{"n":2}"#).unwrap());
    assert!(matches!(
        store.append(other.clone()).await.unwrap_err(),
        store::StoreError::NotAReplay { .. }
    ));
    // Replay-only carried by one event of the request (as a batch of commands carries it).
    let mut mixed = other.clone();
    mixed.metadata.replay_only = false;
    let mut flagged = Metadata::actor("retry");
    flagged.replay_only = true;
    mixed.events[0] = mixed.events[0].clone().with_metadata(flagged);
    assert!(matches!(
        store.append(mixed).await.unwrap_err(),
        store::StoreError::NotAReplay { .. }
    ));
    assert_eq!(store.head().await.unwrap(), head, "nothing was written");
    // Without the flag the same new event is an ordinary append.
    other.metadata.replay_only = false;
    assert!(!store.append(other).await.unwrap().replayed);
    assert_eq!(store.head().await.unwrap(), head + 1);
}

async fn first_event_id(store: &Store, t: TenantId, stream: &str) -> Uuid {
    store.read_stream(t, stream, 1, 1).await.unwrap()[0].event_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_a_replay_only_append_writes_nothing_new() {
    a_replay_only_append_writes_nothing_new(TestStore::embedded().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_replay_only_append_writes_nothing_new() {
    a_replay_only_append_writes_nothing_new(TestStore::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_a_key_taken_over_after_its_events_were_written_answers_applied() {
    a_key_taken_over_after_its_events_were_written_answers_applied(TestStore::embedded().await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_key_taken_over_after_its_events_were_written_answers_applied() {
    a_key_taken_over_after_its_events_were_written_answers_applied(TestStore::postgres().await)
        .await;
}

/// PostgreSQL: the applied marks are tenant-scoped like every tenant table (ADR 017): row-level
/// security forced, a session bound to tenant A sees A's marks and none of B's, one bound to no
/// tenant sees none, and the tenant role cannot write a mark (only the group commit does).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_applied_marks_are_tenant_scoped_under_forced_row_level_security() {
    let h = TestStore::postgres().await;
    let Location::Postgres(url) = h.location.clone() else {
        unreachable!()
    };
    let (a, b) = (tenant(), tenant());
    for (t, n) in [(a, 2), (b, 3)] {
        for i in 0..n {
            h.store
                .append(seeded(
                    t,
                    &format!("s{i}"),
                    Expected::Any,
                    Uuid::new_v4(),
                    false,
                ))
                .await
                .unwrap();
        }
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    let (mut client, conn) = tokio_postgres::connect(
        &format!("{url}{sep}options=-c%20role%3Dtenantry_tenant"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let forced: bool = client
        .query_one(
            "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class \
             WHERE relname = 'idempotency_applied'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(forced, "row-level security forced");
    let count = "SELECT count(*), count(*) FILTER (WHERE tenant_id = $1) FROM idempotency_applied";
    let unbound = client.query_one(count, &[b.as_uuid()]).await.unwrap();
    assert_eq!(unbound.get::<_, i64>(0), 0, "bound to no tenant: nothing");
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "SELECT set_config('tenantry.tenant_id', $1, true)",
        &[&a.to_string()],
    )
    .await
    .unwrap();
    let bound = tx.query_one(count, &[b.as_uuid()]).await.unwrap();
    assert_eq!(bound.get::<_, i64>(0), 2, "A's own marks");
    assert_eq!(bound.get::<_, i64>(1), 0, "none of B's");
    let written = tx
        .execute(
            "INSERT INTO idempotency_applied (tenant_id, seed, applied_at) VALUES ($1, $2, 0)",
            &[a.as_uuid(), &Uuid::new_v4()],
        )
        .await;
    assert!(written.is_err(), "the tenant role cannot mark a seed");
}
