//! One conformance suite, run against every backend: the embedded store and PostgreSQL.
//!
//! Each test is written once against `Harness`; the macro at the bottom instantiates it per
//! backend. PostgreSQL tests need `DATABASE_URL` (scripts/test.sh provides one).

use domain::TenantId;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use store::{
    AppendRequest, Envelope, Expected, Metadata, NewEvent, RawJson, Snapshot, Store, StoreError,
    Upcasters,
};
use uuid::Uuid;

use store::testing::TestStore as Harness;

/// The one attempt that owns the keys these tests begin.
const ME: Uuid = Uuid::from_u128(0x6d65);

fn tenant() -> TenantId {
    TenantId::from_uuid(Uuid::new_v4())
}

fn event(n: u64) -> NewEvent {
    NewEvent::new(
        "test.happened",
        RawJson::parse(format!(r#"{{"n":{n}}}"#)).unwrap(),
    )
}

fn request(t: TenantId, stream: &str, expected: Expected, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        tenant_id: t,
        stream_id: stream.to_owned(),
        expected,
        events,
        metadata: Metadata::actor("tester"),
    }
}

async fn all(store: &Store) -> Vec<Envelope> {
    store.read_all(1, usize::MAX).await.unwrap()
}

async fn expected_version_modes_admit_and_refuse(h: &Harness) {
    let s = &h.store;
    let t = tenant();
    // NoStream on a new stream: admitted; again: conflict.
    let a = s
        .append(request(t, "s", Expected::NoStream, vec![event(1)]))
        .await
        .unwrap();
    assert_eq!(a.stream_version, 1);
    let err = s
        .append(request(t, "s", Expected::NoStream, vec![event(2)]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { actual: 1, .. }),
        "{err:?}"
    );
    // Exists: refused on a new stream, admitted on an existing one.
    let err = s
        .append(request(t, "other", Expected::Exists, vec![event(3)]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { actual: 0, .. }),
        "{err:?}"
    );
    let a = s
        .append(request(t, "s", Expected::Exists, vec![event(4), event(5)]))
        .await
        .unwrap();
    assert_eq!(a.stream_version, 3);
    // Exact: only the current version.
    let err = s
        .append(request(t, "s", Expected::Exact(2), vec![event(6)]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { actual: 3, .. }),
        "{err:?}"
    );
    let a = s
        .append(request(t, "s", Expected::Exact(3), vec![event(7)]))
        .await
        .unwrap();
    assert_eq!(a.stream_version, 4);
    let err = s
        .append(request(t, "new", Expected::Exact(1), vec![event(8)]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { actual: 0, .. }),
        "{err:?}"
    );
    // Any: always.
    s.append(request(t, "s", Expected::Any, vec![event(9)]))
        .await
        .unwrap();
    s.append(request(t, "fresh", Expected::Any, vec![event(10)]))
        .await
        .unwrap();
    assert_eq!(s.stream_version(t, "s").await.unwrap(), 5);
    assert_eq!(s.stream_version(t, "fresh").await.unwrap(), 1);
    assert_eq!(s.stream_version(t, "other").await.unwrap(), 0);
}

async fn a_conflict_writes_nothing(h: &Harness) {
    let s = &h.store;
    let t = tenant();
    s.append(request(t, "s", Expected::NoStream, vec![event(1)]))
        .await
        .unwrap();
    let before = all(s).await;
    let err = s
        .append(request(
            t,
            "s",
            Expected::Exact(0),
            vec![event(2), event(3)],
        ))
        .await
        .unwrap_err();
    assert!(err.is_conflict());
    assert_eq!(all(s).await, before);
    assert_eq!(s.head().await.unwrap(), 1);

    // Many racing appends that all expect version 1: exactly one wins, losers write nothing,
    // and the winner's position follows directly (no position wasted by the losers).
    let racers: Vec<_> = (0..32)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.append(request(t, "s", Expected::Exact(1), vec![event(100 + i)]))
                    .await
            })
        })
        .collect();
    let mut wins = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(a) => {
                wins += 1;
                assert_eq!(a.positions, vec![2]);
            }
            Err(e) => assert!(e.is_conflict(), "{e:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(all(s).await.len(), 2);
}

async fn idempotent_reappend_returns_original_positions(h: &Harness) {
    let s = &h.store;
    let t = tenant();
    s.append(request(t, "x", Expected::Any, vec![event(0)]))
        .await
        .unwrap();
    let events = vec![event(1), event(2), event(3)];
    let first = s
        .append(request(t, "s", Expected::NoStream, events.clone()))
        .await
        .unwrap();
    assert!(!first.replayed);
    assert_eq!(first.positions, vec![2, 3, 4]);
    s.append(request(t, "s", Expected::Exact(3), vec![event(4)]))
        .await
        .unwrap();
    let head = s.head().await.unwrap();
    // The retry carries the original expectation, which no longer holds: still a replay.
    let again = s
        .append(request(t, "s", Expected::NoStream, events))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.positions, first.positions);
    assert_eq!(again.stream_version, 3);
    assert_eq!(s.head().await.unwrap(), head, "a replay writes nothing");

    // Concurrent duplicates of one append: one write, every caller the same positions.
    let dup = vec![event(50)];
    let racers: Vec<_> = (0..16)
        .map(|_| {
            let (s, dup) = (s.clone(), dup.clone());
            tokio::spawn(async move { s.append(request(t, "d", Expected::Any, dup)).await })
        })
        .collect();
    let mut positions = HashSet::new();
    for r in racers {
        positions.insert(r.await.unwrap().unwrap().positions);
    }
    assert_eq!(positions.len(), 1);
    assert_eq!(s.stream_version(t, "d").await.unwrap(), 1);
}

async fn same_event_id_with_other_content_is_rejected(h: &Harness) {
    let s = &h.store;
    let t = tenant();
    let e = event(1);
    s.append(request(t, "s", Expected::Any, vec![e.clone()]))
        .await
        .unwrap();
    let head = s.head().await.unwrap();

    let mut changed = e.clone();
    changed.payload = RawJson::parse(r#"{"n":2}"#).unwrap();
    let err = s
        .append(request(t, "s", Expected::Any, vec![changed]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateEventId { event_id } if event_id == e.event_id),
        "{err:?}"
    );
    // Same content in another stream is another event, not a retry.
    let err = s
        .append(request(t, "elsewhere", Expected::Any, vec![e.clone()]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateEventId { .. }),
        "{err:?}"
    );
    // A partial retry (one old id, one new) is rejected whole.
    let err = s
        .append(request(t, "s", Expected::Any, vec![e.clone(), event(3)]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateEventId { .. }),
        "{err:?}"
    );
    // Two ids twice in one append, and an empty append, are malformed.
    let err = s
        .append(request(
            t,
            "s",
            Expected::Any,
            vec![event(4).with_id(e.event_id), e],
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidAppend(_)), "{err:?}");
    let err = s
        .append(request(t, "s", Expected::Any, vec![]))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidAppend(_)), "{err:?}");
    assert_eq!(s.head().await.unwrap(), head);

    // Event ids are unique per tenant, not globally.
    let other = tenant();
    let first = all(s).await.remove(0);
    let mut same_id = event(1);
    same_id.event_id = first.event_id;
    s.append(request(other, "s", Expected::Any, vec![same_id]))
        .await
        .unwrap();
}

async fn streams_and_the_global_log_keep_their_order(h: &Harness) {
    let s = &h.store;
    let (t1, t2) = (tenant(), tenant());
    for i in 0..10u64 {
        let (t, stream) = if i % 3 == 0 { (t2, "b") } else { (t1, "a") };
        s.append(request(
            t,
            stream,
            Expected::Any,
            vec![event(i), event(i + 100)],
        ))
        .await
        .unwrap();
    }
    let log = all(s).await;
    assert_eq!(log.len(), 20);
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e.global_position, i as u64 + 1, "positions are dense");
    }
    let a = s.read_stream(t1, "a", 1, usize::MAX).await.unwrap();
    assert_eq!(
        a.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        (1..=12).collect::<Vec<_>>()
    );
    assert!(
        a.windows(2)
            .all(|w| w[0].global_position < w[1].global_position)
    );
    assert!(a.iter().all(|e| e.tenant_id == t1));
    // Same stream name, other tenant: another stream.
    assert!(s.read_stream(t2, "a", 1, 10).await.unwrap().is_empty());
    let page = s.read_stream(t1, "a", 5, 3).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );
    let page = s.read_all(7, 4).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        vec![7, 8, 9, 10]
    );
    let only_t2 = s.read_tenant(t2, 1, usize::MAX).await.unwrap();
    assert_eq!(only_t2.len(), 8);
    assert!(only_t2.iter().all(|e| e.tenant_id == t2));
}

async fn everything_survives_close_and_reopen(h: &mut Harness) {
    let t = tenant();
    // Odd spacing, key order and Unicode: the stored bytes are the appended bytes.
    let payload = RawJson::parse("{ \"b\" : 1,\n \"a\": \"é\\u00e9 🚀\" }").unwrap();
    let mut metadata = Metadata::actor("user-1");
    metadata.causation_id = Some(Uuid::new_v4());
    metadata.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
    h.store
        .append(AppendRequest {
            tenant_id: t,
            stream_id: "s".into(),
            expected: Expected::NoStream,
            events: vec![NewEvent::new("odd.payload", payload.clone()).with_schema_version(3)],
            metadata,
        })
        .await
        .unwrap();
    h.store
        .append(request(t, "s", Expected::Exact(1), vec![event(2)]))
        .await
        .unwrap();
    let before = all(&h.store).await;
    h.reopen().await;
    let after = all(&h.store).await;
    assert_eq!(after, before);
    assert_eq!(after[0].payload.as_str(), payload.as_str());
    assert_eq!(after[0].schema_version, 3);
    // And the reopened store carries on from where it was.
    let a = h
        .store
        .append(request(t, "s", Expected::Exact(2), vec![event(3)]))
        .await
        .unwrap();
    assert_eq!(a.positions, vec![3]);
}

async fn subscribers_get_live_events_in_order(h: &Harness) {
    let s = &h.store;
    let t = tenant();
    s.append(request(t, "s", Expected::Any, vec![event(1)]))
        .await
        .unwrap();
    let mut sub = s.subscribe(1);
    assert_eq!(sub.next().await.unwrap().global_position, 1);
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 2..=50 {
                s.append(request(t, "s", Expected::Any, vec![event(i)]))
                    .await
                    .unwrap();
            }
        })
    };
    for expected in 2..=50 {
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
            .await
            .expect("a live event arrives")
            .unwrap();
        assert_eq!(e.global_position, expected);
    }
    writer.await.unwrap();
    // An append by another handle (another process) is seen too, without its notification.
    let other = h.another_handle().await;
    other
        .append(request(t, "s", Expected::Any, vec![event(51)]))
        .await
        .unwrap();
    let e = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
        .await
        .expect("an event from another handle arrives")
        .unwrap();
    assert_eq!(e.global_position, 51);
    other.close().await;
}

async fn payloads_are_upcast_on_read_and_never_rewritten(h: &Harness) {
    let t = tenant();
    let old = RawJson::parse(r#"{"fullname":"Ada Lovelace"}"#).unwrap();
    h.store
        .append(request(
            t,
            "u",
            Expected::Any,
            vec![NewEvent::new("user.named", old.clone())],
        ))
        .await
        .unwrap();
    let upcasting = h.another_handle().await.with_upcasters(
        Upcasters::default()
            .register("user.named", 1, |mut v| {
                let name = v["fullname"].take();
                Ok(serde_json::json!({ "name": name }))
            })
            .register("user.named", 2, |mut v| {
                v["locale"] = "en".into();
                Ok(v)
            }),
    );
    let read = upcasting.read_stream(t, "u", 1, 10).await.unwrap();
    assert_eq!(read[0].schema_version, 3);
    assert_eq!(
        read[0].payload.to_value(),
        serde_json::json!({"name": "Ada Lovelace", "locale": "en"})
    );
    let raw = h.store.read_stream(t, "u", 1, 10).await.unwrap();
    assert_eq!(raw[0].schema_version, 1);
    assert_eq!(raw[0].payload.as_str(), old.as_str());
    upcasting.close().await;
}

async fn snapshots_are_kept_and_never_go_backwards(h: &Harness) {
    let s = &h.store;
    let t = tenant();
    let snap = |version: u64, state: &[u8]| Snapshot {
        tenant_id: t,
        stream_id: "s".into(),
        kind: "test/v1".into(),
        version,
        state: state.to_vec(),
    };
    assert_eq!(s.load_snapshot(t, "s", "test/v1").await.unwrap(), None);
    s.save_snapshot(snap(10, b"ten")).await.unwrap();
    s.save_snapshot(snap(5, b"five")).await.unwrap();
    assert_eq!(
        s.load_snapshot(t, "s", "test/v1").await.unwrap(),
        Some(snap(10, b"ten"))
    );
    s.save_snapshot(snap(11, b"eleven")).await.unwrap();
    assert_eq!(
        s.load_snapshot(t, "s", "test/v1")
            .await
            .unwrap()
            .unwrap()
            .state,
        b"eleven"
    );
}

/// 16 concurrent writers × 2,000 appends over overlapping streams, through two independent
/// handles, while a reader tails the log, checkpoints and resumes: the reader sees every event
/// exactly once, in the final commit order.
async fn a_tailing_reader_sees_every_event_once_in_commit_order(h: &Harness) {
    const WRITERS: u64 = 16;
    const APPENDS: u64 = 2_000;
    let second = h.another_handle().await;
    let t = tenant();
    let done = Arc::new(AtomicBool::new(false));

    let reader = {
        let store = h.store.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen: Vec<(u64, Uuid)> = Vec::new();
            let mut checkpoint = 0u64;
            let mut sub = store.subscribe(1);
            let mut round = 0u64;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let batch = sub.poll_batch().await.unwrap();
                for e in &batch {
                    seen.push((e.global_position, e.event_id));
                    checkpoint = e.global_position;
                }
                if batch.is_empty() {
                    if finished {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
                round += 1;
                // Resume from the checkpoint now and then, as a restarted projection would.
                if round.is_multiple_of(7) {
                    sub = store.subscribe(checkpoint + 1);
                }
            }
            seen
        })
    };

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = if w % 2 == 0 {
                h.store.clone()
            } else {
                second.clone()
            };
            tokio::spawn(async move {
                for i in 0..APPENDS {
                    // Overlapping streams: every writer visits all 24 of them.
                    let stream = format!("s{}", (w * 7 + i) % 24);
                    let n = if i % 10 == 0 { 2 } else { 1 };
                    let events = (0..n).map(|k| event(w * 1_000_000 + i * 10 + k)).collect();
                    store
                        .append(request(t, &stream, Expected::Any, events))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();

    let log = all(&h.store).await;
    let expected_events = (WRITERS * APPENDS + WRITERS * APPENDS / 10) as usize;
    assert_eq!(log.len(), expected_events);
    let final_order: Vec<(u64, Uuid)> = log
        .iter()
        .map(|e| (e.global_position, e.event_id))
        .collect();
    assert_eq!(
        seen.len(),
        final_order.len(),
        "the reader saw every event exactly once"
    );
    assert!(seen == final_order, "the reader saw the final commit order");
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for e in &log {
        let v = versions.entry(e.stream_id.as_str()).or_default();
        *v += 1;
        assert_eq!(
            e.stream_version, *v,
            "stream versions are dense and ordered"
        );
    }
    second.close().await;
}

async fn idempotency_records_replay_refuse_mismatches_and_outlive_the_handle(h: &Harness) {
    use store::idempotency::{Begin, StoredResponse};
    let s = &h.store;
    let (t, other) = (tenant(), tenant());
    assert_eq!(
        s.idempotency_begin(t, "k1", "hash-a", ME).await.unwrap(),
        Begin::Started
    );
    // In flight: the same request waits, a different one is refused.
    assert_eq!(
        s.idempotency_begin(t, "k1", "hash-a", ME).await.unwrap(),
        Begin::InFlight
    );
    assert_eq!(
        s.idempotency_begin(t, "k1", "hash-b", ME).await.unwrap(),
        Begin::Mismatch
    );
    // Keys are per tenant.
    assert_eq!(
        s.idempotency_begin(other, "k1", "hash-b", ME)
            .await
            .unwrap(),
        Begin::Started
    );
    let response = StoredResponse {
        status: 201,
        content_type: "application/json".into(),
        body: br#"{"ok":true}"#.to_vec(),
    };
    s.idempotency_complete(t, "k1", ME, response.clone())
        .await
        .unwrap();
    assert_eq!(
        s.idempotency_begin(t, "k1", "hash-a", ME).await.unwrap(),
        Begin::Completed(response.clone())
    );
    assert_eq!(
        s.idempotency_begin(t, "k1", "hash-b", ME).await.unwrap(),
        Begin::Mismatch
    );
    // Abandoned keys start over; records survive another handle (restart, other instance).
    s.idempotency_abandon(other, "k1", ME).await.unwrap();
    let second = h.another_handle().await;
    assert_eq!(
        second
            .idempotency_begin(other, "k1", "hash-c", ME)
            .await
            .unwrap(),
        Begin::Started
    );
    assert_eq!(
        second
            .idempotency_begin(t, "k1", "hash-a", ME)
            .await
            .unwrap(),
        Begin::Completed(response)
    );
    second.close().await;
}

/// Records past their retention are deleted, not only ignored: what they keep must not outlive it.
async fn expired_idempotency_records_are_purged(h: &Harness) {
    use store::idempotency::{Begin, StoredResponse};
    let s = &h.store;
    let (old, fresh) = (tenant(), tenant());
    let response = StoredResponse {
        status: 201,
        content_type: "application/json".into(),
        body: br#"{"ok":true}"#.to_vec(),
    };
    for t in [old, fresh] {
        assert_eq!(
            s.idempotency_begin(t, "k", "h", ME).await.unwrap(),
            Begin::Started
        );
        s.idempotency_complete(t, "k", ME, response.clone())
            .await
            .unwrap();
    }
    store::testing::rewind_idempotency(&h.location, old, None, 26 * 3600, false).await;
    assert_eq!(
        s.idempotency_purge().await.unwrap(),
        1,
        "the old record is deleted"
    );
    // The fresh record still replays; the old one is gone (its key starts over).
    assert_eq!(
        s.idempotency_begin(fresh, "k", "h", ME).await.unwrap(),
        Begin::Completed(response)
    );
    assert_eq!(
        s.idempotency_begin(old, "k", "other", ME).await.unwrap(),
        Begin::Started
    );
}

/// A key begun by one attempt and taken over by another (the first ran past the in-flight
/// timeout) is the second's: the first can neither complete it nor abandon it.
async fn a_taken_over_idempotency_key_belongs_to_its_new_owner(h: &Harness) {
    use store::idempotency::{Begin, StoredResponse};
    let s = &h.store;
    let t = tenant();
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(
        s.idempotency_begin(t, "k", "h", first).await.unwrap(),
        Begin::Started
    );
    assert_eq!(
        s.idempotency_begin(t, "k", "h", second).await.unwrap(),
        Begin::InFlight
    );
    store::testing::rewind_idempotency(&h.location, t, Some("k"), 600, true).await;
    assert_eq!(
        s.idempotency_begin(t, "k", "h", second).await.unwrap(),
        Begin::Started
    );
    let answer = |status| StoredResponse {
        status,
        content_type: "application/json".into(),
        body: b"{}".to_vec(),
    };
    assert!(!s.idempotency_abandon(t, "k", first).await.unwrap());
    assert!(
        !s.idempotency_complete(t, "k", first, answer(500))
            .await
            .unwrap()
    );
    assert!(
        s.idempotency_complete(t, "k", second, answer(201))
            .await
            .unwrap()
    );
    assert_eq!(
        s.idempotency_begin(t, "k", "h", first).await.unwrap(),
        Begin::Completed(answer(201))
    );
    // A completed record is kept: neither owner abandons it.
    assert!(!s.idempotency_abandon(t, "k", second).await.unwrap());
}

async fn events_are_read_back_by_position(h: &Harness) {
    let s = &h.store;
    let t = tenant();
    for i in 0..10 {
        s.append(request(t, "s", Expected::Any, vec![event(i)]))
            .await
            .unwrap();
    }
    let got = s.read_positions(vec![9, 2, 5, 42]).await.unwrap();
    assert_eq!(
        got.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        vec![2, 5, 9]
    );
    assert!(s.read_positions(vec![]).await.unwrap().is_empty());
}

async fn a_shared_head_read_is_never_older_than_its_caller_and_serves_a_crowd(h: &Harness) {
    let s = &h.store;
    let t = tenant();
    for i in 0..3 {
        let done = s
            .append(request(t, "s", Expected::Any, vec![event(i)]))
            .await
            .unwrap();
        // What was committed before the call is always within the head it answers.
        assert!(s.head_after_now().await.unwrap() >= done.last_position());
    }
    let before = s.shared_head_reads();
    let crowd: Vec<_> = (0..200)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.head_after_now().await.unwrap() })
        })
        .collect();
    for call in crowd {
        assert_eq!(call.await.unwrap(), 3);
    }
    let reads = s.shared_head_reads() - before;
    assert!(
        (1..200).contains(&reads),
        "200 concurrent callers made {reads} store reads"
    );
}

async fn blobs_are_kept_per_tenant_replaced_and_removed(h: &Harness) {
    let s = &h.store;
    let (t, other) = (tenant(), tenant());
    assert_eq!(s.get_blob(t, "b-1").await.unwrap(), None);
    s.put_blob(t, "b-1", b"first".to_vec()).await.unwrap();
    s.put_blob(t, "b-1", b"second".to_vec()).await.unwrap();
    assert_eq!(
        s.get_blob(t, "b-1").await.unwrap().as_deref(),
        Some(&b"second"[..])
    );
    assert_eq!(
        s.get_blob(other, "b-1").await.unwrap(),
        None,
        "blobs are per tenant"
    );
    let big = vec![7u8; 3 * 1024 * 1024];
    s.put_blob(t, "big", big.clone()).await.unwrap();
    assert_eq!(
        h.another_handle().await.get_blob(t, "big").await.unwrap(),
        Some(big)
    );
    // First writer wins, across handles.
    let first = s
        .put_blob_if_absent(t, "once", b"a".to_vec())
        .await
        .unwrap();
    let second = h
        .another_handle()
        .await
        .put_blob_if_absent(t, "once", b"b".to_vec())
        .await
        .unwrap();
    assert_eq!((first, second), (b"a".to_vec(), b"a".to_vec()));
    s.delete_blob(t, "b-1").await.unwrap();
    s.delete_blob(t, "b-1").await.unwrap();
    assert_eq!(s.get_blob(t, "b-1").await.unwrap(), None);
}

/// Bytes that differ from chunk to chunk (251 is prime, a chunk is not a multiple of it), so
/// chunks read out of order or twice cannot pass for the blob.
fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + seed) % 251) as u8).collect()
}

/// A blob as read for a download, whole: a file read to its end, or a stream of chunks
/// collected (its announced length checked).
async fn body(blob: store::BlobBody) -> Vec<u8> {
    use futures_util::StreamExt;
    use std::io::Read;
    let (out, len) = match blob {
        store::BlobBody::File(mut f, len) => {
            let mut out = Vec::new();
            f.read_to_end(&mut out).unwrap();
            (out, len)
        }
        store::BlobBody::Bytes(b) => {
            let len = b.len() as u64;
            (b, len)
        }
        store::BlobBody::Chunks(len, mut chunks) => {
            let mut out = Vec::new();
            while let Some(chunk) = chunks.next().await {
                out.extend_from_slice(&chunk.unwrap());
            }
            (out, len)
        }
    };
    assert_eq!(out.len() as u64, len, "the announced length is the blob's");
    out
}

/// A reader that gives `left` bytes, then fails (a disk that went away mid-export).
struct FailingReader {
    left: usize,
}

impl std::io::Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("the source went away"));
        }
        let n = buf.len().min(self.left);
        buf[..n].fill(9);
        self.left -= n;
        Ok(n)
    }
}

async fn blobs_of_several_chunks_round_trip_byte_exact(h: &Harness) {
    let s = &h.store;
    let t = tenant();
    const MIB: usize = 1 << 20;
    // Around PostgreSQL's one-value bound (a chunk, 1 MiB) and well past it.
    for (seed, (id, len)) in [
        ("one-chunk", MIB),
        ("just-over", MIB + 1),
        ("several", 3 * MIB + 12_345),
    ]
    .into_iter()
    .enumerate()
    {
        let bytes = pattern(len, seed);
        s.put_blob(t, id, bytes.clone()).await.unwrap();
        assert_eq!(
            body(s.open_blob(t, id).await.unwrap().unwrap()).await,
            bytes,
            "{id}"
        );
        assert_eq!(
            s.get_blob(t, id).await.unwrap().as_ref(),
            Some(&bytes),
            "{id}"
        );
        // Through a reader, replacing it.
        let other = pattern(len, seed + 100);
        s.put_blob_reader(t, id, std::io::Cursor::new(other.clone()))
            .await
            .unwrap();
        let again = h.another_handle().await;
        assert_eq!(
            body(again.open_blob(t, id).await.unwrap().unwrap()).await,
            other,
            "{id}"
        );
        assert_eq!(again.get_blob(t, id).await.unwrap(), Some(other), "{id}");
    }
    // A blob of several chunks replaced by a small one and back: each read answers the last
    // write, whole.
    s.put_blob(t, "several", b"small".to_vec()).await.unwrap();
    assert_eq!(
        body(s.open_blob(t, "several").await.unwrap().unwrap()).await,
        b"small"
    );
    let big = pattern(2 * MIB + 7, 7);
    s.put_blob(t, "several", big.clone()).await.unwrap();
    assert_eq!(
        body(s.open_blob(t, "several").await.unwrap().unwrap()).await,
        big
    );
    assert_eq!(s.get_blob(t, "several").await.unwrap().as_ref(), Some(&big));
    // The first writer wins over a blob of several chunks too, and a large first write wins.
    assert_eq!(
        s.put_blob_if_absent(t, "several", b"x".to_vec())
            .await
            .unwrap(),
        big
    );
    let once = pattern(2 * MIB + 3, 8);
    assert_eq!(
        s.put_blob_if_absent(t, "big-once", once.clone())
            .await
            .unwrap(),
        once
    );
    assert_eq!(
        h.another_handle()
            .await
            .put_blob_if_absent(t, "big-once", b"y".to_vec())
            .await
            .unwrap(),
        once
    );
    assert!(
        s.open_blob(tenant(), "several").await.unwrap().is_none(),
        "blobs are per tenant"
    );
    s.delete_blob(t, "several").await.unwrap();
    assert!(s.open_blob(t, "several").await.unwrap().is_none());
    assert_eq!(s.get_blob(t, "several").await.unwrap(), None);
}

async fn a_blob_whose_write_fails_midway_leaves_nothing_visible(h: &Harness) {
    let s = &h.store;
    let t = tenant();
    let midway = || FailingReader { left: 2_500_000 };
    assert!(s.put_blob_reader(t, "never", midway()).await.is_err());
    assert!(s.open_blob(t, "never").await.unwrap().is_none());
    assert_eq!(s.get_blob(t, "never").await.unwrap(), None);
    // A blob whose replacement fails midway is the one before, whole.
    for (id, len) in [("kept-small", 1000), ("kept-large", 2_600_000)] {
        let before = pattern(len, 3);
        s.put_blob(t, id, before.clone()).await.unwrap();
        assert!(s.put_blob_reader(t, id, midway()).await.is_err());
        assert_eq!(
            body(s.open_blob(t, id).await.unwrap().unwrap()).await,
            before,
            "{id}"
        );
        assert_eq!(
            s.get_blob(t, id).await.unwrap().as_ref(),
            Some(&before),
            "{id}"
        );
        // Nothing is left half-done or held: the next write of the id succeeds.
        let after = pattern(len + 1, 4);
        s.put_blob_reader(t, id, std::io::Cursor::new(after.clone()))
            .await
            .unwrap();
        assert_eq!(
            body(s.open_blob(t, id).await.unwrap().unwrap()).await,
            after,
            "{id}"
        );
    }
}

async fn business_time_is_kept_beside_commit_time(h: &Harness) {
    let s = &h.store;
    let t = tenant();
    let then = time::macros::datetime!(2026-01-05 08:00:00.123456789 UTC);
    s.append(request(
        t,
        "s",
        Expected::Any,
        vec![event(1).occurred_at(then), event(2)],
    ))
    .await
    .unwrap();
    let events = s.read_stream(t, "s", 1, 10).await.unwrap();
    // Kept to the microsecond, as recorded_at is.
    assert_eq!(
        events[0].occurred_at,
        time::macros::datetime!(2026-01-05 08:00:00.123456 UTC)
    );
    assert!(events[0].recorded_at > events[0].occurred_at);
    // Without a business time, the fact occurred when it was recorded.
    assert_eq!(events[1].occurred_at, events[1].recorded_at);
    let json = serde_json::to_value(&events[0]).unwrap();
    assert_eq!(json["occurred_at"], "2026-01-05T08:00:00.123456Z");
}

async fn projection_state_is_kept_replaced_and_forgotten(h: &Harness) {
    let s = &h.store;
    let name = format!("test-{}", Uuid::new_v4());
    assert_eq!(s.load_projection(&name).await.unwrap(), None);
    let big = vec![7u8; 3 << 20];
    for (position, state) in [(10, b"first".to_vec()), (25, big.clone())] {
        s.save_projection(store::ProjectionState {
            name: name.clone(),
            position,
            state,
        })
        .await
        .unwrap();
    }
    let kept = s.load_projection(&name).await.unwrap().unwrap();
    assert_eq!((kept.position, kept.state.len()), (25, big.len()));
    assert_eq!(
        h.another_handle()
            .await
            .load_projection(&name)
            .await
            .unwrap()
            .map(|p| p.position),
        Some(25)
    );
    s.delete_projection(&name).await.unwrap();
    assert_eq!(s.load_projection(&name).await.unwrap(), None);
}

async fn projection_rows_are_kept_per_tenant_put_inserted_removed_and_read_in_key_order(
    h: &Harness,
) {
    let s = &h.store;
    let name = format!("test-{}", Uuid::new_v4());
    let (a, b) = (
        TenantId::from_uuid(Uuid::new_v4()),
        TenantId::from_uuid(Uuid::new_v4()),
    );
    let row = |tenant, key: &[u8], value: Option<&str>| store::ProjectionRow {
        tenant,
        key: key.to_vec(),
        write: match value {
            Some(v) => store::RowWrite::Put(v.as_bytes().to_vec()),
            None => store::RowWrite::Delete,
        },
    };
    s.put_projection_rows(
        &name,
        vec![
            row(a, b"\x30", Some("a30")),
            row(a, b"\x10", Some("a10")),
            row(b, b"\x10", Some("b10")),
            row(a, b"\x40", Some("a40")),
            row(a, b"\x50", Some("a50, removed in the same write")),
            row(a, b"\x50", None),
        ],
    )
    .await
    .unwrap();
    s.put_projection_rows(
        &name,
        vec![
            row(a, b"\x20", Some("a20")),
            row(a, b"\x30", Some("a30 first")),
            row(a, b"\x30", Some("a30 again")),
            row(a, b"\x40", None),
            row(a, b"\x60", None),
        ],
    )
    .await
    .unwrap();
    s.put_projection_rows(&name, Vec::new()).await.unwrap();
    let text = |rows: Vec<(Vec<u8>, Vec<u8>)>| {
        rows.into_iter()
            .map(|(k, v)| (k[0], String::from_utf8(v).unwrap()))
            .collect::<Vec<_>>()
    };
    let all = |t| s.projection_rows(&name, t, &[], &[0xff; 8], 100);
    assert_eq!(
        text(all(a).await.unwrap()),
        vec![
            (0x10, "a10".to_owned()),
            (0x20, "a20".to_owned()),
            (0x30, "a30 again".to_owned())
        ],
        "the last write of a key counts, a removal removes"
    );
    assert_eq!(
        text(
            s.projection_rows(&name, a, b"\x11", b"\x30", 1)
                .await
                .unwrap()
        ),
        vec![(0x20, "a20".to_owned())],
        "from..=to, at most limit"
    );
    assert_eq!(
        s.projection_row(&name, a, b"\x30").await.unwrap(),
        Some(b"a30 again".to_vec())
    );
    assert_eq!(s.projection_row(&name, a, b"\x40").await.unwrap(), None);
    assert_eq!(
        text(all(b).await.unwrap()),
        vec![(0x10, "b10".to_owned())],
        "another tenant's rows"
    );
    assert_eq!(
        s.projection_rows_at(
            &name,
            vec![
                (a, b"\x30".to_vec()),
                (b, b"\x10".to_vec()),
                (a, b"\x99".to_vec())
            ]
        )
        .await
        .unwrap(),
        vec![Some(b"a30 again".to_vec()), Some(b"b10".to_vec()), None],
        "rows at keys of several tenants, in the order asked"
    );
    assert!(
        s.projection_rows("other", a, &[], &[0xff], 100)
            .await
            .unwrap()
            .is_empty(),
        "another projection's rows"
    );
    // Several projections' rows in one write.
    let other = format!("{name}-other");
    s.put_rows_of(vec![
        (other.clone(), vec![row(b, b"\x01", Some("other b01"))]),
        (name.clone(), vec![row(b, b"\x02", Some("b02 first"))]),
        (name.clone(), vec![row(b, b"\x02", Some("b02"))]),
    ])
    .await
    .unwrap();
    assert_eq!(
        s.projection_row(&other, b, b"\x01").await.unwrap(),
        Some(b"other b01".to_vec())
    );
    assert_eq!(
        s.projection_row(&name, b, b"\x02").await.unwrap(),
        Some(b"b02".to_vec()),
        "one projection's rows given twice in one write: the later wins"
    );
    assert_eq!(text(all(b).await.unwrap()).len(), 2);
    // Insert writes only where no row is, also after earlier writes of the same call.
    let insert = |key: &[u8], value: &str| store::ProjectionRow {
        tenant: a,
        key: key.to_vec(),
        write: store::RowWrite::Insert(value.as_bytes().to_vec()),
    };
    s.put_projection_rows(
        &name,
        vec![
            insert(b"\x30", "a30 inserted over a row"),
            insert(b"\x70", "a70"),
            insert(b"\x70", "a70 inserted twice"),
            row(a, b"\x20", None),
            insert(b"\x20", "a20 after its removal"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        text(all(a).await.unwrap()),
        vec![
            (0x10, "a10".to_owned()),
            (0x20, "a20 after its removal".to_owned()),
            (0x30, "a30 again".to_owned()),
            (0x70, "a70".to_owned())
        ]
    );
    s.put_projection_rows(&name, vec![row(a, b"\x70", None)])
        .await
        .unwrap();
    assert!(
        s.put_projection_rows(&name, vec![row(a, &[1; 257], Some("too long"))])
            .await
            .is_err()
    );
    assert_eq!(
        h.another_handle()
            .await
            .projection_rows(&name, a, &[], &[0xff], 100)
            .await
            .unwrap()
            .len(),
        3
    );
}

macro_rules! conformance {
    ($($name:ident),* ; mut $($mname:ident),*) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(&super::Harness::embedded().await).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $mname() {
                    super::$mname(&mut super::Harness::embedded().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(&super::Harness::postgres().await).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $mname() {
                    super::$mname(&mut super::Harness::postgres().await).await;
                }
            )*
        }
    };
}

conformance!(
    expected_version_modes_admit_and_refuse,
    a_conflict_writes_nothing,
    idempotent_reappend_returns_original_positions,
    same_event_id_with_other_content_is_rejected,
    streams_and_the_global_log_keep_their_order,
    subscribers_get_live_events_in_order,
    payloads_are_upcast_on_read_and_never_rewritten,
    snapshots_are_kept_and_never_go_backwards,
    a_tailing_reader_sees_every_event_once_in_commit_order,
    idempotency_records_replay_refuse_mismatches_and_outlive_the_handle,
    events_are_read_back_by_position,
    a_shared_head_read_is_never_older_than_its_caller_and_serves_a_crowd,
    blobs_are_kept_per_tenant_replaced_and_removed,
    blobs_of_several_chunks_round_trip_byte_exact,
    a_blob_whose_write_fails_midway_leaves_nothing_visible,
    business_time_is_kept_beside_commit_time,
    expired_idempotency_records_are_purged,
    a_taken_over_idempotency_key_belongs_to_its_new_owner,
    projection_state_is_kept_replaced_and_forgotten,
    projection_rows_are_kept_per_tenant_put_inserted_removed_and_read_in_key_order;
    mut everything_survives_close_and_reopen
);
