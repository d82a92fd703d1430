//! Crypto-shredding on both backends (ADR 032): personal fields are sealed at append with a key
//! of their subject, read back in plaintext, read raw as the stored (sealed) bytes, and read as
//! `[erased]` once the key is destroyed, while the stored bytes stay exactly as they were.

use domain::TenantId;
use domain::personal::{ERASED, SEALED_VERSION_BASE};
use store::testing::TestStore;
use store::{AppendRequest, Expected, Metadata, NewEvent, RawJson, Store, Upcasters};
use uuid::Uuid;

fn member(user: Uuid, email: &str) -> NewEvent {
    NewEvent::new(
        "member.added",
        RawJson::parse(format!(
            r#"{{"user_id":"{user}","email":"{email}","name":"Ann Example","role":"analyst"}}"#
        ))
        .unwrap(),
    )
}

fn request(t: TenantId, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        tenant_id: t,
        stream_id: format!("tenant-{t}"),
        expected: Expected::Any,
        events,
        metadata: Metadata::actor("user:someone"),
    }
}

async fn personal_fields_are_sealed_read_back_and_erased_for_good(h: TestStore) {
    let s: &Store = &h.store;
    let t = TenantId::from_uuid(Uuid::new_v4());
    let user = Uuid::new_v4();
    let first = request(t, vec![member(user, "ann@example.com")]);
    let appended = s.append(first.clone()).await.unwrap();
    // A retry with the same event ids is recognised: sealing is deterministic.
    let again = s.append(first).await.unwrap();
    assert!(again.replayed, "a retried sealed append replays");
    assert_eq!(again.positions, appended.positions);

    let stream = format!("tenant-{t}");
    let read = s.read_stream(t, &stream, 1, 10).await.unwrap();
    assert_eq!(read[0].schema_version, 1);
    let v = read[0].payload.to_value();
    assert_eq!(v["email"], "ann@example.com");
    assert_eq!(v["name"], "Ann Example");
    assert_eq!(v["role"], "analyst");

    // The audit's raw read: the stored bytes, sealed, and no upcaster runs even if one exists.
    let upcasting = s.clone().with_upcasters(Upcasters::default().register(
        "member.added",
        SEALED_VERSION_BASE + 1,
        |_| Err("must not run on a raw read".into()),
    ));
    let raw = upcasting
        .raw()
        .read_stream(t, &stream, 1, 10)
        .await
        .unwrap();
    assert_eq!(raw[0].schema_version, SEALED_VERSION_BASE + 1);
    let stored = raw[0].payload.clone();
    assert!(!stored.as_str().contains("ann@example.com"), "{stored:?}");
    assert!(!stored.as_str().contains("Ann Example"));
    let kids = store::key_ids_of("member.added", raw[0].schema_version, &stored);
    assert_eq!(kids.len(), 1, "one key seals the event's fields");
    let subject = domain::personal::user_subject(&user.to_string());
    assert_eq!(s.subject_key_ids(t, &subject).await.unwrap(), kids);
    let key = s
        .subject_key(t, &kids[0])
        .await
        .unwrap()
        .expect("a live key");
    let sealed = stored.to_value()["email"]["$sealed"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        store::open_value(&key, &raw[0].event_id, "/email", &sealed).unwrap(),
        br#""ann@example.com""#
    );
    let other = TenantId::from_uuid(Uuid::new_v4());
    assert!(
        s.subject_key(other, &kids[0]).await.unwrap().is_none(),
        "keys are per tenant"
    );

    // Erasure: the key is gone, the fields read as erased, the stored bytes did not change.
    assert_eq!(s.erase_subject_keys(t, kids.clone()).await.unwrap(), 1);
    assert_eq!(s.erase_subject_keys(t, kids.clone()).await.unwrap(), 0);
    assert!(s.subject_key(t, &kids[0]).await.unwrap().is_none());
    assert!(s.subject_key_ids(t, &subject).await.unwrap().is_empty());
    let fresh = h.another_handle().await;
    for handle in [s, &fresh] {
        let read = handle.read_stream(t, &stream, 1, 10).await.unwrap();
        let v = read[0].payload.to_value();
        assert_eq!(v["email"], ERASED);
        assert_eq!(v["name"], ERASED);
        assert_eq!(v["role"], "analyst");
        let raw = handle.raw().read_stream(t, &stream, 1, 10).await.unwrap();
        assert_eq!(raw[0].payload, stored, "the stored bytes stay as they were");
    }

    // The same subject writes again the same day: a new key, readable.
    s.append(request(t, vec![member(user, "ann@new.example")]))
        .await
        .unwrap();
    let read = s.read_stream(t, &stream, 1, 10).await.unwrap();
    assert_eq!(read[0].payload.to_value()["email"], ERASED);
    assert_eq!(read[1].payload.to_value()["email"], "ann@new.example");
    assert_eq!(s.subject_key_ids(t, &subject).await.unwrap().len(), 1);
}

async fn free_text_is_sealed_under_its_actor(h: TestStore) {
    let s = &h.store;
    let t = TenantId::from_uuid(Uuid::new_v4());
    let mut req = request(
        t,
        vec![NewEvent::new(
            "feedback.submitted",
            RawJson::parse(r#"{"feedback_id":"00000000-0000-4000-8000-000000000001","message":"call me at home","screen":"s","step":"x","severity":"low"}"#).unwrap(),
        )],
    );
    req.stream_id = "feedback-1".into();
    req.metadata = Metadata::actor("user:u-42");
    s.append(req).await.unwrap();
    let raw = s.raw().read_stream(t, "feedback-1", 1, 1).await.unwrap();
    assert!(!raw[0].payload.as_str().contains("call me"));
    let ids = s.subject_key_ids(t, "user:u-42").await.unwrap();
    assert_eq!(ids.len(), 1);
    s.erase_subject_keys(t, ids).await.unwrap();
    let read = s.read_stream(t, "feedback-1", 1, 1).await.unwrap();
    assert_eq!(read[0].payload.to_value()["message"], ERASED);
    assert_eq!(read[0].payload.to_value()["screen"], "s");
}

#[tokio::test]
async fn personal_fields_are_sealed_and_erased_on_the_embedded_store() {
    personal_fields_are_sealed_read_back_and_erased_for_good(TestStore::embedded().await).await;
    free_text_is_sealed_under_its_actor(TestStore::embedded().await).await;
}

#[tokio::test]
async fn personal_fields_are_sealed_and_erased_on_postgresql() {
    personal_fields_are_sealed_read_back_and_erased_for_good(TestStore::postgres().await).await;
    free_text_is_sealed_under_its_actor(TestStore::postgres().await).await;
}
