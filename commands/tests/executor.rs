//! The executor against real stores: deciding, appending with the expected version, retrying
//! on conflict, and snapshots that are only a cache.

use commands::{ExecuteError, Executor, ExecutorConfig};
use domain::identity::IssuedToken;
use domain::tenant::{self, NewMember, Plan, Tenant, TenantCommand, TenantError, TenantName};
use domain::{Email, PersonName, TenantId, TenantRole, UserId};
use store::testing::TestStore;
use store::{Metadata, Store};
use time::OffsetDateTime;
use uuid::Uuid;

fn executor(store: &Store, snapshot_every: u64) -> Executor<Tenant> {
    let mut config = ExecutorConfig::new("tenant/v1");
    config.snapshot_every = snapshot_every;
    Executor::new(store.clone(), config)
}

fn name(s: &str) -> TenantName {
    TenantName::parse(s).unwrap()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn signup(tenant_name: &str) -> TenantCommand {
    TenantCommand::SignUp {
        name: name(tenant_name),
        owner: NewMember {
            user_id: UserId::from_uuid(Uuid::new_v4()),
            email: Email::parse("owner@example.com").unwrap(),
            name: PersonName::parse("Owner").unwrap(),
            role: TenantRole::Owner,
            token: IssuedToken {
                token_id: Uuid::new_v4(),
                token_sha256: "00".repeat(32),
                expires_at: now(),
            },
        },
    }
}

fn rename(s: &str) -> TenantCommand {
    TenantCommand::Rename { name: name(s) }
}

async fn commands_are_decided_and_appended(h: TestStore) {
    let ex = executor(&h.store, 1_000);
    let t = TenantId::from_uuid(Uuid::new_v4());
    let stream = tenant::stream_id(t);
    let meta = Metadata::actor("user-1");
    let signup = signup("Acme");
    let done = ex.execute(t, &stream, &signup, &meta, now()).await.unwrap();
    assert_eq!(done.version, 3);
    assert_eq!(done.appended.as_ref().unwrap().positions.len(), 3);
    let err = ex
        .execute(t, &stream, &signup, &meta, now())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ExecuteError::Domain(TenantError::AlreadySignedUp)
    ));
    let upgrade = TenantCommand::ChangePlan {
        plan: Plan::Pro,
        reason: None,
        seats: Some(25),
        registry_version: 1,
    };
    let (_, state) = ex
        .execute_with_state(t, &stream, &upgrade, &meta, now())
        .await
        .unwrap();
    assert_eq!(state.plan, Plan::Pro);
    let stored = h.store.read_stream(t, &stream, 1, 10).await.unwrap();
    assert_eq!(
        stored
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        [
            "tenant.signed_up",
            "member.added",
            "token.issued",
            "plan.changed"
        ]
    );
    assert!(stored.iter().all(|e| e.actor == "user-1"));
}

/// Two executors on two handles (two processes): each one's hot state goes stale when the other
/// writes, the version check catches it, and the retry decides on fresh state.
async fn a_stale_executor_retries_on_fresh_state(h: TestStore) {
    let other = h.another_handle().await;
    let (a, b) = (executor(&h.store, 1_000), executor(&other, 1_000));
    let t = TenantId::from_uuid(Uuid::new_v4());
    let stream = tenant::stream_id(t);
    let meta = Metadata::system();
    let signup = signup("One");
    a.execute(t, &stream, &signup, &meta, now()).await.unwrap();
    // b loads now, then a moves on: b's state is stale.
    assert_eq!(b.load(t, &stream).await.unwrap().1, 3);
    a.execute(t, &stream, &rename("Two"), &meta, now())
        .await
        .unwrap();
    // b decides on fresh state after the conflict: renaming to "Two" is now refused.
    let err = b
        .execute(t, &stream, &rename("Two"), &meta, now())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ExecuteError::Domain(TenantError::SameName)),
        "{err:?}"
    );
    let done = b
        .execute(t, &stream, &rename("Three"), &meta, now())
        .await
        .unwrap();
    assert_eq!(done.version, 5);

    // Many concurrent renames through both executors: every one lands exactly once.
    let a = std::sync::Arc::new(a);
    let b = std::sync::Arc::new(b);
    let mut tasks = Vec::new();
    for i in 0..40 {
        let ex = if i % 2 == 0 { a.clone() } else { b.clone() };
        let stream = stream.clone();
        tasks.push(tokio::spawn(async move {
            let command = rename(&format!("Name {i}"));
            ex.execute(t, &stream, &command, &Metadata::system(), now())
                .await
                .map(|_| ())
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(h.store.stream_version(t, &stream).await.unwrap(), 45);
    other.close().await;
}

/// A fresh executor starts from the snapshot and reads only the events after it.
async fn snapshots_bound_the_replay_on_a_cold_start(h: TestStore) {
    let ex = executor(&h.store, 10);
    let t = TenantId::from_uuid(Uuid::new_v4());
    let stream = tenant::stream_id(t);
    let meta = Metadata::system();
    let signup = signup("N0");
    ex.execute(t, &stream, &signup, &meta, now()).await.unwrap();
    for i in 1..25 {
        ex.execute(t, &stream, &rename(&format!("N{i}")), &meta, now())
            .await
            .unwrap();
    }
    // Snapshots are written off the command path; wait for the one at version 20.
    let mut snapshot = None;
    for _ in 0..500 {
        snapshot = h
            .store
            .load_snapshot(t, &stream, "tenant/v1")
            .await
            .unwrap();
        if snapshot.as_ref().is_some_and(|s| s.version == 20) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let snapshot = snapshot.expect("a snapshot was saved");
    assert_eq!(snapshot.version, 20);

    // Prove a cold start uses the snapshot: replace it with a state the history never had (the
    // Enterprise plan) at the same version. If the executor replayed from event 1 it would see
    // the Free plan; from the snapshot it sees Enterprise, plus the renames after version 20.
    let mut planted: Tenant = serde_json::from_slice(&snapshot.state).unwrap();
    planted.plan = Plan::Enterprise;
    let mut doctored = snapshot.clone();
    doctored.state = serde_json::to_vec(&planted).unwrap();
    h.store.save_snapshot(doctored).await.unwrap();
    let cold = executor(&h.store, 10);
    let (state, version) = cold.load(t, &stream).await.unwrap();
    assert_eq!(version, 27);
    assert_eq!(state.plan, Plan::Enterprise, "started from the snapshot");
    assert_eq!(
        state.name,
        Some(name("N24")),
        "events after the snapshot are applied"
    );
    // The expected-version check still guards appends made from cached state.
    let done = cold
        .execute(t, &stream, &rename("Last"), &meta, now())
        .await
        .unwrap();
    assert_eq!(done.version, 28);
}

/// Commands arriving together on one stream are decided in order and appended at once; each
/// caller still gets its own positions and version, and its own actor in the log; a caller that
/// asks for the state gets the state after its own command, the others get none.
async fn concurrent_commands_on_one_stream_each_get_their_own_answer(h: TestStore) {
    let ex = std::sync::Arc::new(executor(&h.store, 1_000));
    let t = TenantId::from_uuid(Uuid::new_v4());
    let stream = tenant::stream_id(t);
    ex.execute(t, &stream, &signup("Batch"), &Metadata::system(), now())
        .await
        .unwrap();
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (ex, stream) = (ex.clone(), stream.clone());
            tokio::spawn(async move {
                let meta = Metadata::actor(format!("user-{i}"));
                let command = rename(&format!("Name {i}"));
                let done = if i % 2 == 0 {
                    ex.execute_with_state(t, &stream, &command, &meta, now())
                        .await
                        .map(|(d, s)| (d, Some(s)))
                } else {
                    ex.execute(t, &stream, &command, &meta, now())
                        .await
                        .map(|d| (d, None))
                };
                done.map(|(d, state)| {
                    let name = state.map(|s| s.name.map(|n| n.as_str().to_owned()));
                    (i, d.version, d.appended.unwrap().positions, name)
                })
            })
        })
        .collect();
    let mut versions = std::collections::HashSet::new();
    let mut positions = std::collections::HashSet::new();
    for task in tasks {
        let (i, version, p, name) = task.await.unwrap().unwrap();
        let expected = (i % 2 == 0).then(|| Some(format!("Name {i}")));
        assert_eq!(
            name, expected,
            "the state after command {i}, only when asked"
        );
        assert!(versions.insert(version), "each command has its own version");
        assert_eq!(p.len(), 1);
        assert!(positions.insert(p[0]));
    }
    assert_eq!(h.store.stream_version(t, &stream).await.unwrap(), 103);
    let events = h.store.read_stream(t, &stream, 4, 1_000).await.unwrap();
    let actors: std::collections::HashSet<_> = events.iter().map(|e| e.actor.clone()).collect();
    assert_eq!(
        actors.len(),
        100,
        "every event keeps its own command's actor"
    );
    for e in &events {
        let i: usize = e.actor.strip_prefix("user-").unwrap().parse().unwrap();
        assert_eq!(e.payload.to_value()["to"], format!("Name {i}"));
    }
}

/// A refusal appends nothing, so no version check would catch a stale cache: the executor
/// checks the stream's stored version before it answers one, and decides again on fresh state.
async fn a_refusal_is_never_decided_on_a_stale_cache(h: TestStore) {
    let other = h.another_handle().await;
    let (a, b) = (executor(&h.store, 1_000), executor(&other, 1_000));
    let t = TenantId::from_uuid(Uuid::new_v4());
    let stream = tenant::stream_id(t);
    let meta = Metadata::system();
    a.execute(t, &stream, &signup("One"), &meta, now())
        .await
        .unwrap();
    assert_eq!(b.load(t, &stream).await.unwrap().1, 3);
    a.execute(t, &stream, &rename("Two"), &meta, now())
        .await
        .unwrap();
    // b's cache still says "One": renaming to "One" would be refused as the same name.
    let (done, state) = b
        .execute_with_state(t, &stream, &rename("One"), &meta, now())
        .await
        .unwrap();
    assert_eq!(
        (state.name.as_ref().map(TenantName::as_str), done.version),
        (Some("One"), 5)
    );

    // A token issued through another handle (the CLI, a second instance) can be revoked at once.
    let member = NewMember {
        user_id: UserId::from_uuid(Uuid::new_v4()),
        email: Email::parse("analyst@example.com").unwrap(),
        name: PersonName::parse("Ana").unwrap(),
        role: TenantRole::Analyst,
        token: IssuedToken {
            token_id: Uuid::new_v4(),
            token_sha256: "11".repeat(32),
            expires_at: now() + time::Duration::days(1),
        },
    };
    let token_id = member.token.token_id;
    a.execute(
        t,
        &stream,
        &TenantCommand::AddMember {
            member,
            by: TenantRole::Owner,
            seats: None,
        },
        &meta,
        now(),
    )
    .await
    .unwrap();
    let revoked = b
        .execute(
            t,
            &stream,
            &TenantCommand::RevokeToken { token_id },
            &meta,
            now(),
        )
        .await
        .unwrap();
    assert_eq!(revoked.events.len(), 1, "{:?}", revoked.events);
    // An unknown token is still refused, after the check found the cache fresh.
    let err = b
        .execute(
            t,
            &stream,
            &TenantCommand::RevokeToken {
                token_id: Uuid::new_v4(),
            },
            &meta,
            now(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ExecuteError::Domain(TenantError::UnknownToken)),
        "{err:?}"
    );
    other.close().await;
}

/// Every event carries the decision's time as its business time, whatever the commit time.
async fn events_carry_the_decision_time_as_occurred_at(h: TestStore) {
    let ex = executor(&h.store, 1_000);
    let t = TenantId::from_uuid(Uuid::new_v4());
    let stream = tenant::stream_id(t);
    let then = time::macros::datetime!(2025-03-03 10:15:00 UTC);
    ex.execute(t, &stream, &signup("Then"), &Metadata::system(), then)
        .await
        .unwrap();
    let stored = h.store.read_stream(t, &stream, 1, 10).await.unwrap();
    assert_eq!(stored.len(), 3);
    for e in &stored {
        assert_eq!(e.occurred_at, then, "{}", e.event_type);
        assert!(e.recorded_at > then);
    }
}

fn usage(store: &Store) -> Executor<domain::quota::Usage> {
    Executor::new(store.clone(), ExecutorConfig::new("usage/v1"))
}

fn one_query() -> domain::quota::UsageCommand {
    use domain::quota::{Meter, MeterLimits, Record};
    Record::units(
        Meter::Queries,
        1,
        MeterLimits {
            plan: Plan::Pro,
            limit: 1_000,
            blocking: false,
            registry_version: 1,
        },
    )
    .into()
}

/// A command made under an event-id seed (a request's Idempotency-Key) writes the same ids on
/// every attempt: a retry from a fresh process, after the first attempt was written but never
/// answered, is refused by the store instead of recording the unit a second time.
async fn a_retry_under_the_same_seed_never_writes_twice(h: TestStore) {
    let t = TenantId::from_uuid(Uuid::new_v4());
    let stream = "usage-queries-2026-03";
    let mut meta = Metadata::actor("user-1");
    meta.event_id_seed = Some(Uuid::new_v4());
    let now = time::macros::datetime!(2026-03-03 10:00 UTC);
    let first = usage(&h.store)
        .execute(t, stream, &one_query(), &meta, now)
        .await
        .unwrap();
    assert_eq!(first.version, 1);
    // The "crashed" process is gone; a new one decides the retry on the stored state (one unit
    // used), so the payload differs, but the ids are the same.
    let other = h.another_handle().await;
    let err = usage(&other)
        .execute(t, stream, &one_query(), &meta, now)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExecuteError::Store(store::StoreError::DuplicateEventId { .. })
        ),
        "{err:?}"
    );
    assert_eq!(
        h.store.stream_version(t, stream).await.unwrap(),
        1,
        "one unit, once"
    );
    // Without a seed (another request), the next unit is recorded as usual.
    let next = usage(&other)
        .execute(t, stream, &one_query(), &Metadata::actor("user-1"), now)
        .await
        .unwrap();
    assert_eq!(next.version, 2);
    other.close().await;
}

/// One command whose events the store refuses does not fail the commands decided with it.
async fn a_refused_command_does_not_fail_the_others_of_its_batch(h: TestStore) {
    let t = TenantId::from_uuid(Uuid::new_v4());
    let stream = "usage-queries-2026-03";
    let now = time::macros::datetime!(2026-03-03 10:00 UTC);
    let mut poisoned = Metadata::actor("user-1");
    poisoned.event_id_seed = Some(Uuid::new_v4());
    let ex = std::sync::Arc::new(usage(&h.store));
    // Its ids are taken by an earlier attempt with other content.
    ex.execute(t, stream, &one_query(), &poisoned, now)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (ex, meta) = (
            ex.clone(),
            if i == 20 {
                poisoned.clone()
            } else {
                Metadata::actor(format!("user-{i}"))
            },
        );
        tasks.push(tokio::spawn(async move {
            ex.execute(t, stream, &one_query(), &meta, now)
                .await
                .map(|_| ())
        }));
    }
    let mut failed = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await.unwrap() {
            Ok(()) => assert_ne!(i, 20),
            Err(e) => {
                assert_eq!(i, 20, "{e:?}");
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 1);
    assert_eq!(h.store.stream_version(t, stream).await.unwrap(), 40);
}

/// A retry whose append the store answers as a replay (the same event ids and content, stored by
/// the first attempt) leaves the executor's cache equal to the log, not the events applied twice.
async fn a_replayed_append_leaves_the_cache_equal_to_the_log(h: TestStore) {
    use domain::quota::{CountRefusals, Meter, MeterLimits, UsageCommand};
    let t = TenantId::from_uuid(Uuid::new_v4());
    let stream = "usage-queries-2026-03";
    let now = time::macros::datetime!(2026-03-03 10:00 UTC);
    let command = UsageCommand::CountRefusals(CountRefusals {
        meter: Meter::Queries,
        limits: MeterLimits {
            plan: Plan::Free,
            limit: 200,
            blocking: true,
            registry_version: 1,
        },
        minute: now,
        attempts: 5,
        units: 5,
        last_at: now,
    });
    let mut meta = Metadata::actor("user-1");
    meta.event_id_seed = Some(Uuid::new_v4());
    let ex = usage(&h.store);
    let (_, first) = ex
        .execute_with_state(t, stream, &command, &meta, now)
        .await
        .unwrap();
    assert_eq!(first.blocked_attempts, 5);
    let again = ex.execute(t, stream, &command, &meta, now).await.unwrap();
    assert_eq!(again.appended.map(|a| a.replayed), Some(true));
    assert_eq!(h.store.stream_version(t, stream).await.unwrap(), 1);
    let (cached, version) = ex.load(t, stream).await.unwrap();
    let (fresh, _) = usage(&h.store).load(t, stream).await.unwrap();
    assert_eq!(
        (cached.blocked_attempts, version),
        (fresh.blocked_attempts, 1)
    );
    assert_eq!(cached.blocked_attempts, 5);
}

/// The executor keeps at most `max_hot_streams` streams hot, whatever the log holds: past it the
/// least recently used idle half is dropped, the busiest stream stays, and a dropped stream comes
/// back from the log with its state (its next command decided on it, at the right version).
async fn hot_streams_are_bounded_and_the_least_recently_used_go_first(h: TestStore) {
    let mut config = ExecutorConfig::new("tenant/v1");
    config.max_hot_streams = 8;
    let ex = Executor::<Tenant>::new(h.store.clone(), config);
    let meta = Metadata::system();
    let tenants: Vec<TenantId> = (0..40)
        .map(|_| TenantId::from_uuid(Uuid::new_v4()))
        .collect();
    let busy = tenants[0];
    let busy_stream = tenant::stream_id(busy);
    // Which streams are hot shows through planted snapshots (a state the log never had, the
    // Enterprise plan, at the stream's current version): a hot stream never reads its snapshot,
    // a dropped one reloads from it.
    let plant = |t: TenantId, version: u64| {
        let store = h.store.clone();
        async move {
            let reader = executor(&store, 1_000);
            let (mut state, at) = reader.load(t, &tenant::stream_id(t)).await.unwrap();
            assert_eq!(at, version);
            state.plan = Plan::Enterprise;
            store
                .save_snapshot(store::Snapshot {
                    tenant_id: t,
                    stream_id: tenant::stream_id(t),
                    kind: "tenant/v1".into(),
                    version,
                    state: serde_json::to_vec(&state).unwrap(),
                })
                .await
                .unwrap();
        }
    };
    ex.execute(busy, &busy_stream, &signup("Busy"), &meta, now())
        .await
        .unwrap();
    for (i, t) in tenants.iter().enumerate().skip(1) {
        if i == 10 {
            // From here on, a reload of the busy stream would show.
            plant(busy, 3 + 9).await;
        }
        ex.execute(
            *t,
            &tenant::stream_id(*t),
            &signup(&format!("T{i}")),
            &meta,
            now(),
        )
        .await
        .unwrap();
        // The busy tenant is used between every other stream's first use.
        ex.execute(
            busy,
            &busy_stream,
            &rename(&format!("Busy {i}")),
            &meta,
            now(),
        )
        .await
        .unwrap();
        assert!(ex.hot_streams() <= 8, "{} hot streams", ex.hot_streams());
    }
    let (state, _) = ex.load(busy, &busy_stream).await.unwrap();
    assert_eq!(
        (state.plan, state.name),
        (Plan::Free, Some(name("Busy 39"))),
        "the busy stream stayed hot through every eviction"
    );
    let early = tenants[1];
    plant(early, 3).await;
    let (state, version) = ex.load(early, &tenant::stream_id(early)).await.unwrap();
    assert_eq!(
        (state.plan, version),
        (Plan::Enterprise, 3),
        "the early stream was dropped and came back from its snapshot"
    );
    let done = ex
        .execute(
            early,
            &tenant::stream_id(early),
            &rename("Back"),
            &meta,
            now(),
        )
        .await
        .unwrap();
    assert_eq!(done.version, 4);
    assert!(ex.hot_streams() <= 8);
}

macro_rules! on_both_stores {
    ($($name:ident),*) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(store::testing::TestStore::embedded().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(store::testing::TestStore::postgres().await).await;
                }
            )*
        }
    };
}

on_both_stores!(
    commands_are_decided_and_appended,
    a_stale_executor_retries_on_fresh_state,
    snapshots_bound_the_replay_on_a_cold_start,
    concurrent_commands_on_one_stream_each_get_their_own_answer,
    a_refusal_is_never_decided_on_a_stale_cache,
    a_retry_under_the_same_seed_never_writes_twice,
    a_replayed_append_leaves_the_cache_equal_to_the_log,
    a_refused_command_does_not_fail_the_others_of_its_batch,
    events_carry_the_decision_time_as_occurred_at,
    hot_streams_are_bounded_and_the_least_recently_used_go_first
);
