//! `BundleWriter` refuses inputs that disagree with the tree instead of signing them.

use std::io::Cursor;

use audit::{
    BundleError, BundleKeys, BundleSpec, BundleWriter, Checkpoint, LeafHeader, LogKey, SigningKey,
    StoredEvent, origin, root,
};

const TENANT: &str = "t1";
const LOG: &str = "tenantry.test/audit";
const S: i64 = 1_000_000;

fn events(n: u64) -> Vec<StoredEvent> {
    (0..n)
        .map(|i| {
            let p = format!(r#"{{"n":{i}}}"#);
            let t = 1_700_000_000 * S + i as i64 * S;
            StoredEvent {
                header: LeafHeader::new(i, 100 + i, t, t, "x.happened", 1, "s", p.as_bytes()),
                payload: Some(p.into_bytes()),
            }
        })
        .collect()
}

/// Writes a bundle of events 2..=5 of a 10-event tree after `tweak` changes the inputs.
fn write(
    tweak: impl FnOnce(&mut Vec<StoredEvent>, &mut Vec<audit::Hash>, &mut (i64, i64)),
) -> Result<Vec<u8>, BundleError> {
    let mut all = events(10);
    let mut leaves: Vec<audit::Hash> = all.iter().map(|e| e.header.leaf_hash().unwrap()).collect();
    let mut range = (1_700_000_002 * S, 1_700_000_006 * S);
    tweak(&mut all, &mut leaves, &mut range);
    let log = LogKey::new(LOG, SigningKey::from_bytes(&[2; 32])).unwrap();
    let cp = log.sign(Checkpoint {
        origin: origin(LOG, TENANT).unwrap(),
        size: 10,
        root: root(&leaves, 10).unwrap(),
    });
    let export = SigningKey::from_bytes(&[1; 32]);
    let spec = BundleSpec {
        bundle_id: "b".into(),
        created_at_micros: 1_700_000_100 * S,
        tenant: TENANT.into(),
        previous_bundle_id: None,
        from_micros: range.0,
        to_micros: range.1,
        first_sequence: 2,
        last_sequence: 5,
        checkpoint: &cp,
        leaves: &leaves,
        before: Some(all[1].header.clone()),
        after: Some(all[6].header.clone()),
        policy: None,
        erasures: vec![],
        known_sizes: vec![3],
        keys: BundleKeys {
            export: &export,
            log_name: LOG,
            log_public: log.verifying_key(),
        },
    };
    let mut out = Vec::new();
    let range_events: Vec<Result<StoredEvent, std::io::Error>> =
        all[2..=5].iter().cloned().map(Ok).collect();
    BundleWriter::new(spec)
        .write(range_events, &mut Cursor::new(Vec::new()), &mut out)
        .map(|_| out)
}

fn refused(r: Result<Vec<u8>, BundleError>, why: &str) {
    match r {
        Err(BundleError::Invalid(m)) if m.contains(why) => {}
        other => panic!(
            "expected a refusal mentioning {why:?}, got {:?}",
            other.map(|b| b.len())
        ),
    }
}

#[test]
fn consistent_inputs_make_a_bundle() {
    assert!(!write(|_, _, _| {}).unwrap().is_empty());
}

#[test]
fn an_event_that_is_not_its_leaf_is_refused() {
    refused(
        write(|all, _, _| all[3].header.stream = "other".into()),
        "does not match its leaf",
    );
}

#[test]
fn a_payload_that_is_not_its_hash_is_refused() {
    refused(
        write(|all, _, _| all[4].payload = Some(b"{}".to_vec())),
        "does not match its hash",
    );
}

#[test]
fn a_range_whose_neighbours_are_inside_it_is_refused() {
    refused(
        write(|_, _, r| r.0 -= S),
        "before the range was recorded inside it",
    );
    refused(
        write(|_, _, r| r.1 += S),
        "after the range was recorded inside it",
    );
}

#[test]
fn a_tree_whose_leaves_are_not_the_events_is_refused() {
    // The checkpoint is signed over a tree in which leaf 3 is something else.
    refused(
        write(|_, leaves, _| leaves[3] = [0; 32]),
        "does not match its leaf",
    );
}
