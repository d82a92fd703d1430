//! `cargo bench -p verifier`: verifying a bundle of a million events (target ≥ 1M events/s).
//! `BENCH_EVENTS` changes the count. The bundle is made with `audit` first (not timed).

use std::io::Cursor;
use std::time::Instant;

use audit::{
    BundleKeys, BundleSpec, BundleWriter, Checkpoint, LeafHeader, LogKey, SigningKey, StoredEvent,
    origin,
};

const TENANT: &str = "6f1c0b3e-0000-4000-8000-000000000001";
const LOG: &str = "tenantry.bench/audit";

fn event(i: u64) -> StoredEvent {
    let t = 1_767_225_600_000_000 + i as i64 * 1000;
    let payload = format!(
        r#"{{"dataset_id":"0b5e{i:012}","name":"events-{i}.csv","rows":{},"columns":["a","b","c","d"],"bytes":{}}}"#,
        i * 7 % 10_000,
        i * 131 % 1_000_000
    );
    StoredEvent {
        header: LeafHeader::new(
            i,
            10 + i * 2,
            t,
            t + 5,
            "dataset.uploaded",
            1,
            format!("dataset-{}", i % 1000),
            payload.as_bytes(),
        ),
        payload: Some(payload.into_bytes()),
    }
}

/// `BENCH_SEALED=1`: the retention worst case (ADR 032). Event 0 is a policy whose zero-day
/// window puts every member past it, events 1..n-1 are `member.added` with a sealed email and
/// name, and the last event is the `erasure.applied` of all of them: every payload is parsed and
/// each personal field checked sealed.
fn sealed_event(i: u64, n: u64) -> StoredEvent {
    let t = 1_767_225_600_000_000 + i as i64 * 1000;
    let (ty, stream, payload) = if i == 0 {
        (
            "retention.policy_set",
            "retention".to_owned(),
            r#"{"rules":[{"name":"members","event_types":["member.added"],"fields":["/email","/name"],"keep_days":0}]}"#.to_owned(),
        )
    } else if i == n - 1 {
        let seqs: Vec<String> = (1..n - 1).map(|s| s.to_string()).collect();
        (
            "erasure.applied",
            "erasures".to_owned(),
            format!(r#"{{"rule":"members","sequences":[{}]}}"#, seqs.join(",")),
        )
    } else {
        let sealed = |tag: &str| {
            format!(
                r#"{{"$sealed":"{tag}{i:020}AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==","kid":"{:032x}"}}"#,
                i % 977
            )
        };
        (
            "member.added",
            format!("tenant-{TENANT}"),
            format!(
                r#"{{"email":{},"name":{},"role":"analyst","user_id":"00000000-0000-4000-8000-{i:012}"}}"#,
                sealed("e"),
                sealed("n")
            ),
        )
    };
    StoredEvent {
        header: LeafHeader::new(
            i,
            10 + i * 2,
            t,
            t + 5,
            ty,
            32769,
            stream,
            payload.as_bytes(),
        ),
        payload: Some(payload.into_bytes()),
    }
}

fn main() {
    let n: u64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let from_file = std::env::var("BENCH_BUNDLE").is_ok();
    let sealed = std::env::var("BENCH_SEALED").is_ok_and(|v| v == "1");
    let count = if from_file { 1 } else { n };
    let events: Vec<StoredEvent> = if sealed {
        (0..count).map(|i| sealed_event(i, count)).collect()
    } else {
        (0..count).map(event).collect()
    };
    let (policy, erasures) = if sealed {
        (
            Some(StoredEvent {
                header: events[0].header.clone(),
                payload: events[0].payload.clone(),
            }),
            vec![StoredEvent {
                header: events[count as usize - 1].header.clone(),
                payload: events[count as usize - 1].payload.clone(),
            }],
        )
    } else {
        (None, vec![])
    };
    let leaves: Vec<audit::Hash> = events
        .iter()
        .map(|e| e.header.leaf_hash().unwrap())
        .collect();
    let key = LogKey::new(LOG, SigningKey::from_bytes(&[2; 32])).unwrap();
    let size = leaves.len() as u64;
    let cp = key.sign(Checkpoint {
        origin: origin(LOG, TENANT).unwrap(),
        size,
        root: audit::root(&leaves, size).unwrap(),
    });
    let export = SigningKey::from_bytes(&[1; 32]);
    let end = 1_767_225_600_000_000 + n as i64 * 1000 + 10;
    let spec = BundleSpec {
        bundle_id: "bench".into(),
        created_at_micros: end,
        tenant: TENANT.into(),
        previous_bundle_id: None,
        from_micros: 1_767_225_600_000_000,
        to_micros: end,
        first_sequence: 0,
        last_sequence: size - 1,
        checkpoint: &cp,
        leaves: &leaves,
        before: None,
        after: None,
        policy,
        erasures,
        known_sizes: vec![],
        keys: BundleKeys {
            export: &export,
            log_name: LOG,
            log_public: key.verifying_key(),
        },
    };
    let mut bundle = Vec::new();
    // `BENCH_BUNDLE=path` verifies a bundle written by `cargo bench -p audit` (same keys) instead.
    if let Ok(path) = std::env::var("BENCH_BUNDLE") {
        bundle = std::fs::read(path).unwrap();
    } else {
        BundleWriter::new(spec)
            .write(
                events.into_iter().map(Ok::<_, std::io::Error>),
                &mut Cursor::new(Vec::new()),
                &mut bundle,
            )
            .unwrap();
    }

    let opts = verifier::Options {
        keys: vec![export.verifying_key(), key.verifying_key()],
        tenant: Some(TENANT.into()),
        ..verifier::Options::default()
    };
    let mut best = f64::MAX;
    let mut best_cpu = f64::MAX;
    for _ in 0..5 {
        let (t, cpu) = (Instant::now(), cpu_seconds());
        let report = verifier::verify(&bundle[..], &opts);
        let s = t.elapsed().as_secs_f64();
        assert!(report.passed(), "{report}");
        best = best.min(s);
        best_cpu = best_cpu.min(cpu_seconds() - cpu);
    }
    let n = bundle_events(&bundle).unwrap_or(n);
    println!(
        "verify{}: {n} events ({} MB tar.gz) in {best:.3} s best of 5 ({:.0} events/s); CPU {best_cpu:.2} s over all threads",
        if sealed { " (sealed, all erased)" } else { "" },
        bundle.len() >> 20,
        n as f64 / best
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average while measuring: {}",
        load.split(' ').take(3).collect::<Vec<_>>().join(" ")
    );
}

/// User + system CPU time of this process, threads included (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The event count a bundle's manifest states.
fn bundle_events(bundle: &[u8]) -> Option<u64> {
    use std::io::Read;
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(bundle));
    let mut e = a.entries().ok()?.next()?.ok()?;
    let mut s = String::new();
    e.read_to_string(&mut s).ok()?;
    serde_json::from_str::<serde_json::Value>(&s).ok()?["event_count"].as_u64()
}
