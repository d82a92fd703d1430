//! `cargo bench -p audit`: compact-range appends and writing a bundle of a million events
//! (target ≤ 5 s). `BENCH_EVENTS` changes the count.

use std::io::Cursor;
use std::time::Instant;

use audit::{
    BundleKeys, BundleSpec, BundleWriter, Checkpoint, CompactRange, LeafHeader, LogKey, SigningKey,
    StoredEvent, origin,
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

fn main() {
    let n: u64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let events: Vec<StoredEvent> = (0..n).map(event).collect();

    let t = Instant::now();
    let leaves: Vec<audit::Hash> = events
        .iter()
        .map(|e| e.header.leaf_hash().unwrap())
        .collect();
    let hashing = t.elapsed();
    let t = Instant::now();
    let mut c = CompactRange::new();
    for l in &leaves {
        c.push(*l);
    }
    let root = c.root();
    let pushes = t.elapsed();
    println!(
        "leaf hash: {n} headers in {hashing:?} ({:.0} ns each)",
        hashing.as_nanos() as f64 / n as f64
    );
    println!(
        "compact range: {n} pushes in {pushes:?} ({:.0} ns each), state {} bytes",
        pushes.as_nanos() as f64 / n as f64,
        c.to_bytes().len()
    );

    let key = LogKey::new(LOG, SigningKey::from_bytes(&[2; 32])).unwrap();
    let cp = key.sign(Checkpoint {
        origin: origin(LOG, TENANT).unwrap(),
        size: n,
        root,
    });
    let export = SigningKey::from_bytes(&[1; 32]);
    let spec = BundleSpec {
        bundle_id: "bench".into(),
        created_at_micros: 1_767_225_600_000_000 + n as i64 * 1000 + 10,
        tenant: TENANT.into(),
        previous_bundle_id: None,
        from_micros: 1_767_225_600_000_000,
        to_micros: 1_767_225_600_000_000 + n as i64 * 1000 + 10,
        first_sequence: 0,
        last_sequence: n - 1,
        checkpoint: &cp,
        leaves: &leaves,
        before: None,
        after: None,
        policy: None,
        erasures: vec![],
        known_sizes: vec![n / 2],
        keys: BundleKeys {
            export: &export,
            log_name: LOG,
            log_public: key.verifying_key(),
        },
    };
    let mut out = Vec::with_capacity(64 << 20);
    let mut spool = Cursor::new(Vec::with_capacity(400 << 20));
    let t = Instant::now();
    let s = BundleWriter::new(spec)
        .write(
            events.into_iter().map(Ok::<_, std::io::Error>),
            &mut spool,
            &mut out,
        )
        .unwrap();
    let took = t.elapsed();
    println!(
        "bundle: {} events ({} MB jsonl, {} MB tar.gz) written in {took:?} ({:.0} events/s)",
        s.event_count,
        s.events_bytes >> 20,
        out.len() >> 20,
        n as f64 / took.as_secs_f64()
    );
    if let Ok(p) = std::env::var("BENCH_BUNDLE_OUT") {
        std::fs::write(p, &out).unwrap();
    }
}
