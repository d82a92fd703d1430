//! The store under faults, on both backends where the fault exists on both: a session that holds
//! the write lock, a full queue, a writer that dies, an invalid append in a busy group; and on
//! PostgreSQL, a connection cut during COMMIT or stalled (through a TCP proxy the test controls),
//! an insert that bypasses the store, and TLS modes. Each test asserts what a user needs: no hang
//! beyond the timeout, a clear error, nothing written by a failed append, no acknowledged write
//! lost, no write applied twice.

use domain::TenantId;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use store::testing::TestStore;
use store::{
    AppendRequest, Expected, Location, Metadata, NewEvent, RawJson, Store, StoreError, StoreOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

/// The PostgreSQL advisory lock every writing transaction takes (docs/adr/002).
const WRITE_LOCK: i64 = 0x7465_6e61_6e74;

fn tenant() -> TenantId {
    TenantId::from_uuid(Uuid::new_v4())
}

fn request(t: TenantId, stream: &str, expected: Expected, n: usize) -> AppendRequest {
    AppendRequest {
        tenant_id: t,
        stream_id: stream.to_owned(),
        expected,
        events: (0..n)
            .map(|i| {
                NewEvent::new(
                    "fault.tested",
                    RawJson::parse(format!(r#"{{"i":{i}}}"#)).expect("valid JSON"),
                )
            })
            .collect(),
        metadata: Metadata::actor("tester"),
    }
}

fn quick() -> StoreOptions {
    StoreOptions {
        lock_timeout: Duration::from_millis(500),
        write_timeout: Duration::from_secs(3),
        ..StoreOptions::default()
    }
}

async fn count(store: &Store, t: TenantId, stream: &str) -> usize {
    store
        .read_stream(t, stream, 1, usize::MAX)
        .await
        .expect("read")
        .len()
}

/// Something outside the store holds the write lock until it is dropped: a PostgreSQL session
/// in an open transaction that took the advisory lock, or a SQLite connection inside
/// `BEGIN IMMEDIATE`.
enum LockHolder {
    Postgres(tokio_postgres::Client, tokio::task::JoinHandle<()>),
    Embedded(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>),
}

impl LockHolder {
    async fn take(location: &Location) -> Self {
        match location {
            Location::Postgres(url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .expect("connect");
                let driver = tokio::spawn(async move {
                    let _ = connection.await;
                });
                client
                    .batch_execute(&format!(
                        "BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
                    ))
                    .await
                    .expect("take the write lock");
                LockHolder::Postgres(client, driver)
            }
            Location::Embedded(dir) => {
                let path = dir.join("events.db");
                let (taken_tx, taken_rx) = std::sync::mpsc::channel();
                let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
                let thread = std::thread::spawn(move || {
                    let conn = rusqlite::Connection::open(path).expect("open");
                    conn.execute_batch("BEGIN IMMEDIATE")
                        .expect("take the write lock");
                    taken_tx.send(()).expect("tell");
                    let _ = release_rx.recv();
                    conn.execute_batch("ROLLBACK").expect("release");
                });
                taken_rx.recv().expect("lock taken");
                LockHolder::Embedded(release_tx, thread)
            }
        }
    }

    async fn release(self) {
        match self {
            LockHolder::Postgres(client, driver) => {
                client.batch_execute("ROLLBACK").await.expect("release");
                drop(client);
                let _ = driver.await;
            }
            LockHolder::Embedded(release, thread) => {
                let _ = release.send(());
                tokio::task::spawn_blocking(move || thread.join())
                    .await
                    .expect("join")
                    .expect("holder thread");
            }
        }
    }
}

async fn a_held_write_lock_fails_the_append_within_the_timeout_and_writes_nothing(h: TestStore) {
    let t = tenant();
    // A warm writer (head and stream cached) sends BEGIN, the lock, the writes and COMMIT in
    // one pipeline: the lock's timeout must still fail it cleanly, as "not written".
    h.store
        .append(request(t, "s", Expected::NoStream, 1))
        .await
        .expect("warm-up");
    let holder = LockHolder::take(&h.location).await;
    let started = Instant::now();
    let err = h
        .store
        .append(request(t, "s", Expected::Exact(1), 2))
        .await
        .expect_err("the lock is held");
    let waited = started.elapsed();
    assert!(matches!(err, StoreError::Timeout(_)), "{err:?}");
    assert!(err.is_transient() && err.retry_after().is_some());
    assert!(
        waited < Duration::from_secs(3),
        "no hang beyond the lock timeout: waited {waited:?}"
    );
    holder.release().await;
    assert_eq!(count(&h.store, t, "s").await, 1, "nothing was written");
    assert_eq!(h.store.head().await.expect("head"), 1, "no position wasted");
    let ok = h
        .store
        .append(request(t, "s", Expected::Exact(1), 2))
        .await
        .expect("appends work again once the lock is free");
    assert_eq!(ok.positions, vec![2, 3]);
    assert!(h.store.health().is_ready());
}

async fn a_full_queue_answers_overloaded_and_every_accepted_append_commits(h: TestStore) {
    let t = tenant();
    let holder = LockHolder::take(&h.location).await;
    // The writer takes the first append and waits for the lock.
    let first = tokio::spawn({
        let store = h.store.clone();
        async move { store.append(request(t, "a", Expected::Any, 1)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    wait_until(|| h.store.health().queued_appends == 0).await;
    // Two more fill the queue (capacity 2).
    let queued: Vec<_> = ["b", "c"]
        .into_iter()
        .map(|stream| {
            let store = h.store.clone();
            tokio::spawn(async move { store.append(request(t, stream, Expected::Any, 1)).await })
        })
        .collect();
    wait_until(|| h.store.health().queued_appends == 2).await;
    assert!(!h.store.health().is_ready(), "a full queue is not ready");
    let started = Instant::now();
    let err = h
        .store
        .append(request(t, "d", Expected::Any, 1))
        .await
        .expect_err("the queue is full");
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "refused at once"
    );
    match &err {
        StoreError::Overloaded {
            queued,
            retry_after,
        } => {
            assert_eq!(*queued, 2);
            assert!(*retry_after >= Duration::from_secs(1));
        }
        other => panic!("expected Overloaded, got {other:?}"),
    }
    holder.release().await;
    first
        .await
        .expect("join")
        .expect("the first append commits");
    for q in queued {
        q.await.expect("join").expect("a queued append commits");
    }
    assert_eq!(
        count(&h.store, t, "d").await,
        0,
        "the refused append wrote nothing"
    );
    assert_eq!(h.store.head().await.expect("head"), 3);
    h.store
        .append(request(t, "d", Expected::Any, 1))
        .await
        .expect("accepted again once the queue drained");
}

async fn wait_until(condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "condition not reached in 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the writer settle into its wait.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn a_writer_that_dies_is_restarted_and_its_group_answers_outcome_unknown(h: TestStore) {
    let t = tenant();
    let before = h.store.health();
    assert!(before.writer_running && before.writer_restarts == 0);
    h.store.inject_writer_panic();
    let lost = request(t, "s", Expected::NoStream, 2);
    let err = h
        .store
        .append(lost.clone())
        .await
        .expect_err("the writer died holding it");
    assert!(err.is_outcome_unknown(), "{err:?}");
    wait_until(|| h.store.health().writer_restarts == 1).await;
    let after = h.store.health();
    assert!(after.writer_running && after.is_ready(), "{after:?}");
    // The retry with the same ids answers the truth: here, the group had not been written.
    let retried = h.store.append(lost.clone()).await.expect("the retry");
    assert_eq!(retried.positions, vec![1, 2]);
    // And again: the same ids are never written twice.
    let again = h.store.append(lost).await.expect("the second retry");
    assert!(again.replayed);
    assert_eq!(again.positions, vec![1, 2]);
    assert_eq!(count(&h.store, t, "s").await, 2);
}

async fn an_invalid_append_fails_alone_and_its_group_neighbours_commit(h: TestStore) {
    let t = tenant();
    let mut bad = Vec::new();
    bad.push(request(t, "bad\0stream", Expected::Any, 1));
    let mut nul_type = request(t, "nul-type", Expected::Any, 1);
    nul_type.events[0].event_type = "fault\0tested".into();
    bad.push(nul_type);
    let mut nul_actor = request(t, "nul-actor", Expected::Any, 1);
    nul_actor.metadata.actor = "user\0".into();
    bad.push(nul_actor);
    let mut nul_trace = request(t, "nul-trace", Expected::Any, 1);
    nul_trace.metadata.trace_id = Some("trace\0".into());
    bad.push(nul_trace);
    let mut nul_event_actor = request(t, "nul-event-actor", Expected::Any, 1);
    nul_event_actor.events[0].metadata = Some(Metadata::actor("\0"));
    bad.push(nul_event_actor);
    let mut ancient = request(t, "ancient", Expected::Any, 1);
    ancient.events[0].occurred_at = Some(time::macros::datetime!(-4800-01-01 0:00 UTC));
    bad.push(ancient);
    // A NUL escaped inside JSON is valid everywhere and kept byte for byte.
    let mut escaped = request(t, "escaped", Expected::Any, 1);
    escaped.events[0].payload = RawJson::parse(r#"{"s":"a\u0000b"}"#).expect("valid JSON");

    let mut tasks = Vec::new();
    for (i, r) in bad.into_iter().enumerate() {
        let store = h.store.clone();
        let good = request(t, &format!("good-{i}"), Expected::NoStream, 3);
        let good_store = h.store.clone();
        tasks.push(tokio::spawn(async move {
            let (bad, good) = tokio::join!(store.append(r), good_store.append(good));
            (bad, good)
        }));
    }
    for task in tasks {
        let (bad, good) = task.await.expect("join");
        let err = bad.expect_err("invalid");
        assert!(matches!(err, StoreError::InvalidAppend(_)), "{err:?}");
        good.expect("a valid neighbour commits");
    }
    let stored = h.store.append(escaped).await.expect("escaped NUL is fine");
    let back = h
        .store
        .read_positions(stored.positions)
        .await
        .expect("read");
    assert_eq!(back[0].payload.as_str(), r#"{"s":"a\u0000b"}"#);
    assert_eq!(h.store.head().await.expect("head"), 6 * 3 + 1);
}

async fn conflicts_in_a_busy_group_fail_alone_and_every_other_append_commits(h: TestStore) {
    let t = tenant();
    for s in 0..8 {
        h.store
            .append(request(t, &format!("s{s}"), Expected::NoStream, 1))
            .await
            .expect("seed");
    }
    // 64 appends at once: each stream gets one that expects version 1 (one wins) and others
    // that expect stale versions, or retries of a stored append (replays).
    let seed = request(t, "replayed", Expected::NoStream, 2);
    h.store.append(seed.clone()).await.expect("seed replay");
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = h.store.clone();
        let r = match i % 4 {
            0 => request(t, &format!("s{}", (i / 4) % 8), Expected::Exact(1), 1),
            1 => request(t, &format!("s{}", (i / 4) % 8), Expected::Exact(7), 1),
            2 => seed.clone(),
            _ => request(t, &format!("fresh-{i}"), Expected::NoStream, 1),
        };
        tasks.push(tokio::spawn(async move { (i, store.append(r).await) }));
    }
    let mut exact_wins = std::collections::HashMap::new();
    for task in tasks {
        let (i, result) = task.await.expect("join");
        match i % 4 {
            0 => {
                if result.is_ok() {
                    *exact_wins.entry((i / 4) % 8).or_insert(0) += 1;
                } else {
                    assert!(result.expect_err("lost").is_conflict());
                }
            }
            1 => assert!(result.expect_err("stale").is_conflict()),
            2 => assert!(result.expect("replay").replayed),
            _ => assert!(!result.expect("fresh").replayed),
        }
    }
    assert_eq!(exact_wins.len(), 8);
    assert!(exact_wins.values().all(|w| *w == 1), "{exact_wins:?}");
    let all = h.store.read_all(1, usize::MAX).await.expect("read");
    assert_eq!(all.len(), 8 + 2 + 8 + 16);
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, e)| e.global_position == i as u64 + 1),
        "dense positions"
    );
}

macro_rules! both {
    ($($name:ident => $options:expr),* $(,)?) => {
        mod embedded {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(TestStore::embedded_with(&$options).await).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(TestStore::postgres_with(&$options).await).await;
                }
            )*
        }
    };
}

both!(
    a_held_write_lock_fails_the_append_within_the_timeout_and_writes_nothing => quick(),
    a_full_queue_answers_overloaded_and_every_accepted_append_commits => StoreOptions {
        append_queue: 2,
        lock_timeout: Duration::from_secs(10),
        write_timeout: Duration::from_secs(15),
        ..StoreOptions::default()
    },
    a_writer_that_dies_is_restarted_and_its_group_answers_outcome_unknown => quick(),
    an_invalid_append_fails_alone_and_its_group_neighbours_commit => quick(),
    conflicts_in_a_busy_group_fail_alone_and_every_other_append_commits => quick(),
);

// ---- PostgreSQL only: the network between the store and the server ----

/// What the proxy does to the next client bytes that carry COMMIT, or to everything.
const PASS: u8 = 0;
/// Forward COMMIT, then cut the connection before its answer reaches the store.
const CUT_AFTER_COMMIT: u8 = 1;
/// Cut the connection instead of forwarding COMMIT.
const CUT_BEFORE_COMMIT: u8 = 2;
/// Forward nothing, in either direction, and keep the connections open (a half-open network).
const STALL: u8 = 3;

/// A TCP proxy between the store and PostgreSQL that the test controls.
struct Proxy {
    port: u16,
    mode: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(AtomicU8::new(PASS));
        let task = tokio::spawn({
            let mode = mode.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    tokio::spawn(relay(client, server, mode.clone()));
                }
            }
        });
        Self { port, mode, task }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, mode: Arc<AtomicU8>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Set once this connection is cut: nothing more reaches the store.
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let upstream = {
        let (mode, cut) = (mode.clone(), cut.clone());
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                let has_commit = chunk.windows(6).any(|w| w == b"COMMIT");
                match mode.load(Ordering::SeqCst) {
                    STALL => continue,
                    CUT_AFTER_COMMIT if has_commit => {
                        mode.store(PASS, Ordering::SeqCst);
                        cut.store(true, Ordering::SeqCst);
                        let _ = server_write.write_all(chunk).await;
                        // Give the server time to commit, then drop both sides.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        return;
                    }
                    CUT_BEFORE_COMMIT if has_commit => {
                        mode.store(PASS, Ordering::SeqCst);
                        cut.store(true, Ordering::SeqCst);
                        return;
                    }
                    _ => {
                        if server_write.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    };
    let downstream = {
        let cut = cut.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match server_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                // After a cut, and while stalled, the server's answers are read and dropped:
                // leaving them unread would make closing the socket a reset, which could
                // discard the COMMIT the server has not read yet.
                if cut.load(Ordering::SeqCst) || mode.load(Ordering::SeqCst) == STALL {
                    continue;
                }
                if client_write.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    };
    // Either direction ending (or the upstream cutting) ends the connection: both halves are
    // dropped.
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

/// A fresh database, and its URL through a new proxy.
async fn proxied() -> (String, Proxy) {
    let url = store::testing::fresh_postgres_url().await;
    let config: tokio_postgres::Config = url.parse().expect("valid URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        other => panic!("the fault suite needs PostgreSQL over TCP, got {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let upstream = tokio::net::lookup_host((host.as_str(), port))
        .await
        .expect("resolve")
        .next()
        .expect("an address");
    let proxy = Proxy::start(upstream).await;
    let (head, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_once('/').expect("a path");
    let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    let through = format!(
        "{head}://{}127.0.0.1:{}/{path}",
        user.unwrap_or_default(),
        proxy.port
    );
    (through, proxy)
}

/// Count a tenant's events on a connection of its own (the proxy passes it through).
async fn direct_count(url_through_proxy: &str, t: TenantId) -> i64 {
    let (client, connection) = tokio_postgres::connect(url_through_proxy, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(connection);
    let n = client
        .query_one(
            "SELECT count(*) FROM events WHERE tenant_id = $1",
            &[t.as_uuid()],
        )
        .await
        .expect("count")
        .get(0);
    drop(client);
    let _ = driver.await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_cut_after_commit_reports_outcome_unknown_and_the_retry_finds_the_write() {
    let (url, proxy) = proxied().await;
    let store = Store::connect_postgres_with(&url, &quick())
        .await
        .expect("connect");
    let t = tenant();
    store
        .append(request(t, "warm", Expected::Any, 1))
        .await
        .expect("warm-up");
    proxy.set(CUT_AFTER_COMMIT);
    let append = request(t, "s", Expected::NoStream, 3);
    let err = store
        .append(append.clone())
        .await
        .expect_err("the answer to COMMIT never arrives");
    assert!(err.is_outcome_unknown(), "never 'not written': {err:?}");
    assert_eq!(direct_count(&url, t).await, 4, "the server committed it");
    // The retry with the same ids answers the truth, and writes nothing twice.
    let retried = store.append(append).await.expect("the retry");
    assert!(retried.replayed, "{retried:?}");
    assert_eq!(retried.positions, vec![2, 3, 4]);
    assert_eq!(direct_count(&url, t).await, 4);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_cut_before_commit_reports_outcome_unknown_and_the_retry_writes_once() {
    let (url, proxy) = proxied().await;
    let store = Store::connect_postgres_with(&url, &quick())
        .await
        .expect("connect");
    let t = tenant();
    proxy.set(CUT_BEFORE_COMMIT);
    let append = request(t, "s", Expected::NoStream, 2);
    let err = store
        .append(append.clone())
        .await
        .expect_err("the connection breaks as COMMIT is sent");
    assert!(err.is_outcome_unknown(), "{err:?}");
    let retried = store.append(append.clone()).await.expect("the retry");
    assert!(!retried.replayed, "it had not been written: {retried:?}");
    assert_eq!(retried.positions, vec![1, 2], "no position was wasted");
    assert!(store.append(append).await.expect("again").replayed);
    assert_eq!(direct_count(&url, t).await, 2);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_connection_answers_a_timeout_instead_of_hanging() {
    let (url, proxy) = proxied().await;
    let options = StoreOptions {
        write_timeout: Duration::from_secs(1),
        ..quick()
    };
    let store = Store::connect_postgres_with(&url, &options)
        .await
        .expect("connect");
    let t = tenant();
    proxy.set(STALL);
    let started = Instant::now();
    let err = store
        .append(request(t, "s", Expected::NoStream, 1))
        .await
        .expect_err("nothing gets through");
    assert!(matches!(err, StoreError::Timeout(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(4), "bounded wait");
    proxy.set(PASS);
    let ok = store
        .append(request(t, "s", Expected::NoStream, 1))
        .await
        .expect("the stalled connection was dropped; a new one works");
    assert_eq!(ok.positions, vec![1]);
    store.close().await;
}

async fn raw(url: &str) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, driver)
}

const RAW_INSERT: &str = "INSERT INTO events (global_position, tenant_id, stream_id, \
    stream_version, event_id, event_type, schema_version, recorded_at, actor, correlation_id, \
    payload) VALUES ($1, $2, 'psql', 1, $3, 't', 1, now(), 'a', $3, '{}')";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_insert_from_outside_the_store_takes_the_write_lock_and_cannot_leave_a_hole() {
    let h = TestStore::postgres_with(&quick()).await;
    let Location::Postgres(url) = &h.location else {
        unreachable!()
    };
    let t = tenant();
    h.store
        .append(request(t, "s", Expected::NoStream, 2))
        .await
        .expect("seed");

    // While another session holds the write lock, an insert that never asked for it waits for
    // it all the same (and gives up at its lock timeout).
    let holder = LockHolder::take(&h.location).await;
    let (client, _driver) = raw(url).await;
    client
        .batch_execute("SET lock_timeout = '300ms'")
        .await
        .expect("set");
    let err = client
        .execute(RAW_INSERT, &[&3i64, t.as_uuid(), &Uuid::new_v4()])
        .await
        .expect_err("waits for the write lock");
    assert_eq!(
        err.as_db_error().map(|d| d.code().code()),
        Some("55P03"),
        "{err:?}"
    );
    holder.release().await;

    // A hole in the positions is refused.
    let err = client
        .execute(RAW_INSERT, &[&7i64, t.as_uuid(), &Uuid::new_v4()])
        .await
        .expect_err("position 7 after head 2 leaves a hole");
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "23514");
    assert!(
        db.message().contains("right after the head"),
        "{}",
        db.message()
    );

    // The next position is accepted, and the store's writer carries on after it.
    client
        .execute(RAW_INSERT, &[&3i64, t.as_uuid(), &Uuid::new_v4()])
        .await
        .expect("the next position is fine");
    let next = h
        .store
        .append(request(t, "s", Expected::Exact(2), 1))
        .await
        .expect("the writer's cached head was stale; the database caught it");
    assert_eq!(next.positions, vec![4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sslmode_disable_connects_and_verify_full_is_refused_by_a_server_without_tls() {
    let url = store::testing::fresh_postgres_url().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let plain = Store::connect_postgres_with(&format!("{url}{sep}sslmode=disable"), &quick())
        .await
        .expect("sslmode=disable connects");
    plain
        .append(request(tenant(), "s", Expected::NoStream, 1))
        .await
        .expect("and appends");
    plain.close().await;

    // The development and CI servers run without TLS: a mode that demands it must refuse to
    // fall back to plain TCP.
    for mode in ["require", "verify-ca", "verify-full"] {
        let err = Store::connect_postgres_with(&format!("{url}{sep}sslmode={mode}"), &quick())
            .await
            .expect_err("no TLS, no connection");
        let text = err.to_string();
        assert!(
            text.to_lowercase().contains("tls") || text.to_lowercase().contains("ssl"),
            "{mode}: {text}"
        );
    }
}

// ---- Embedded only: the disk fills up ----

/// A small tmpfs mounted for one test (the suite runs as root, as CI does), unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {size} tmpfs failed: the fault suite needs root (scripts/test.sh in CI runs as root)"
        );
        Self { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_fails_appends_cleanly_and_keeps_every_acknowledged_write() {
    let disk = SmallDisk::mount("4m");
    let data = disk.path().join("store");
    // Room to give back once the disk is full.
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0u8; 512 * 1024]).expect("filler");
    let location = Location::Embedded(data.clone());
    let store = Store::open_with(&location, &quick()).await.expect("open");
    let t = tenant();
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(8 * 1024));
    let append = |n: usize| {
        let mut r = request(t, "s", Expected::Any, 4);
        for (i, e) in r.events.iter_mut().enumerate() {
            e.payload = RawJson::parse(big.replace("\"pad\"", &format!("\"pad{n}-{i}\"")))
                .expect("valid JSON");
        }
        r
    };
    let mut acknowledged = 0;
    let err = loop {
        match store.append(append(acknowledged)).await {
            Ok(_) => acknowledged += 1,
            Err(e) => break e,
        }
        assert!(acknowledged < 10_000, "the disk never filled");
    };
    assert!(acknowledged > 0, "some appends fit");
    assert!(
        matches!(&err, StoreError::Backend(m) if m.contains("full")),
        "a clear error: {err:?}"
    );
    assert!(store.health().writer_running, "the writer survives");
    let stored = store
        .read_all(1, usize::MAX)
        .await
        .expect("reads still work");
    assert_eq!(
        stored.len(),
        acknowledged * 4,
        "every acknowledged event, nothing else"
    );

    std::fs::remove_file(&filler).expect("free some room");
    store
        .append(append(acknowledged))
        .await
        .expect("appends work again once there is room");
    store.close().await;
    let reopened = Store::open_with(&location, &quick()).await.expect("reopen");
    assert_eq!(
        reopened.read_all(1, usize::MAX).await.expect("read").len(),
        (acknowledged + 1) * 4,
        "nothing acknowledged was lost"
    );
    reopened.close().await;
}

/// A blob that does not fit fails cleanly and leaves no partial file behind: a failed export on a
/// nearly full disk must not keep the disk full (and the event store down).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_that_does_not_fit_leaves_no_partial_file() {
    let disk = SmallDisk::mount("4m");
    let data = disk.path().join("store");
    let store = Store::open_with(&Location::Embedded(data.clone()), &quick())
        .await
        .expect("open");
    let t = tenant();
    let big = vec![7u8; 6 * 1024 * 1024];
    assert!(store.put_blob(t, "too-big", big.clone()).await.is_err());
    let source = tempfile::NamedTempFile::new().expect("source");
    std::fs::write(source.path(), &big).expect("write source");
    assert!(
        store
            .put_blob_file(t, "too-big-file", source.path())
            .await
            .is_err()
    );
    let left: Vec<_> = std::fs::read_dir(data.join("blobs").join(t.to_string()))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "partial files left: {left:?}");
    // The room is there again: a small blob fits.
    store.put_blob(t, "small", vec![1; 1024]).await.unwrap();
    store.close().await;
}
