//! A writer process killed with SIGKILL in the middle of a load: every append acknowledged
//! before the kill is present after reopening, and nothing unacknowledged is half-written.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use store::{Location, Store};
use uuid::Uuid;

#[derive(Debug)]
struct Ack {
    append: Uuid,
    first: u64,
    count: u64,
}

/// Start the writer, let it acknowledge at least `min_acks` appends, kill it, and return every
/// acknowledgement it printed completely before dying.
fn run_and_kill(location: &Location, min_acks: usize) -> Vec<Ack> {
    let target = match location {
        Location::Embedded(dir) => ["--data".to_owned(), dir.display().to_string()],
        Location::Postgres(url) => ["--store".to_owned(), url.clone()],
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash-writer"))
        .args(&target)
        .arg("16")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start crash-writer");
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut acks = Vec::new();
    let mut line = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acks.len() < min_acks {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).expect("read acks");
        if n == 0 || Instant::now() > deadline {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
            panic!(
                "crash-writer stopped after {} acks; stderr:\n{err}",
                acks.len()
            );
        }
        acks.extend(parse(&line));
    }
    // SIGKILL in the middle of the load: no destructor, no flush, no goodbye.
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    // Lines already in the pipe were acknowledged before the kill; a torn last line was not.
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).expect("drain") == 0 {
            break;
        }
        acks.extend(parse(&line));
    }
    acks
}

fn parse(line: &[u8]) -> Option<Ack> {
    let text = std::str::from_utf8(line).ok()?.strip_suffix('\n')?;
    let mut parts = text.split(' ');
    (parts.next()? == "ack").then_some(())?;
    Some(Ack {
        append: parts.next()?.parse().ok()?,
        first: parts.next()?.parse().ok()?,
        count: parts.next()?.parse().ok()?,
    })
}

async fn check_after_kills(location: Location) {
    let mut all_acks = Vec::new();
    for _round in 0..2 {
        let acks = tokio::task::spawn_blocking({
            let location = location.clone();
            move || run_and_kill(&location, 3_000)
        })
        .await
        .unwrap();
        all_acks.extend(acks);
    }

    let store = Store::open(&location).await.expect("reopen after SIGKILL");
    let log = store.read_all(1, usize::MAX).await.unwrap();
    let by_position: HashMap<u64, &store::Envelope> =
        log.iter().map(|e| (e.global_position, e)).collect();

    // Every acknowledged append is there, whole, where it was acknowledged.
    for ack in &all_acks {
        for index in 0..ack.count {
            let e = by_position
                .get(&(ack.first + index))
                .unwrap_or_else(|| panic!("acknowledged append {ack:?} lost event {index}"));
            let p = e.payload.to_value();
            assert_eq!(p["append"], ack.append.to_string(), "{ack:?}");
            assert_eq!(p["index"], index);
        }
    }
    // Nothing is half-written: every append in the log is complete and contiguous.
    let mut groups: HashMap<String, Vec<(u64, u64, u64)>> = HashMap::new();
    for e in &log {
        let p = e.payload.to_value();
        groups
            .entry(p["append"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                e.global_position,
                p["index"].as_u64().unwrap(),
                p["count"].as_u64().unwrap(),
            ));
    }
    for (append, events) in &groups {
        let count = events[0].2;
        assert_eq!(
            events.len() as u64,
            count,
            "append {append} is half-written"
        );
        for (k, (position, index, _)) in events.iter().enumerate() {
            assert_eq!(*index, k as u64);
            assert_eq!(*position, events[0].0 + k as u64);
        }
    }
    // Positions stay dense and the store takes new appends.
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e.global_position, i as u64 + 1);
    }
    assert!(groups.len() >= all_acks.len());
    let t = domain::TenantId::from_uuid(Uuid::new_v4());
    let appended = store
        .append(store::AppendRequest {
            tenant_id: t,
            stream_id: "after".into(),
            expected: store::Expected::NoStream,
            events: vec![store::NewEvent::new(
                "after.crash",
                store::RawJson::parse("{}").unwrap(),
            )],
            metadata: store::Metadata::system(),
        })
        .await
        .unwrap();
    assert_eq!(appended.positions, vec![log.len() as u64 + 1]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_every_acknowledged_append_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    check_after_kills(Location::Embedded(dir.path().to_path_buf())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_keeps_every_acknowledged_append_after_sigkill() {
    let url = store::testing::fresh_postgres_url().await;
    check_after_kills(Location::Postgres(url)).await;
}
