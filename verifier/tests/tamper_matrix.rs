//! The tamper matrix: each case builds a real bundle with `audit::BundleWriter`, changes it the way
//! an attacker or a bug would, and expects the named check to FAIL with its reason. Most cases
//! re-sign the manifest with the real export key: the export key alone must not be enough to lie,
//! because the checkpoint's log key and the Merkle proofs bind the events.

mod support;

use audit::{LogKey, SigningKey};
use serde_json::{Value, json};
use support::*;
use verifier::{Options, Report, verify};

type Mutate = Box<dyn Fn(&mut Unpacked, &mut Options)>;

struct Case {
    name: &'static str,
    params: Params,
    mutate: Mutate,
    /// The check that must fail and a piece of its reason.
    check: &'static str,
    reason: &'static str,
}

fn case(
    name: &'static str,
    check: &'static str,
    reason: &'static str,
    mutate: impl Fn(&mut Unpacked, &mut Options) + 'static,
) -> Case {
    Case {
        name,
        params: Params::default(),
        mutate: Box::new(mutate),
        check,
        reason,
    }
}

fn with(mut c: Case, params: Params) -> Case {
    c.params = params;
    c
}

fn options() -> Options {
    Options {
        keys: trusted(),
        tenant: Some(TENANT.into()),
        ..Options::default()
    }
}

fn run(params: &Params, mutate: &dyn Fn(&mut Unpacked, &mut Options)) -> Report {
    let mut u = Unpacked::of(&build(params));
    let mut opts = options();
    mutate(&mut u, &mut opts);
    verify(&u.pack()[..], &opts)
}

fn lines(u: &Unpacked) -> Vec<String> {
    u.text("events.jsonl").lines().map(str::to_string).collect()
}

fn set_lines(u: &mut Unpacked, lines: &[String]) {
    u.set_text(
        "events.jsonl",
        lines.iter().map(|l| format!("{l}\n")).collect(),
    );
}

fn edit_line(u: &mut Unpacked, i: usize, edit: impl FnOnce(&mut Value)) {
    let mut ls = lines(u);
    let mut v: Value = serde_json::from_str(&ls[i]).unwrap();
    edit(&mut v);
    ls[i] = serde_json::to_string(&v).unwrap();
    set_lines(u, &ls);
}

fn edit_json(u: &mut Unpacked, path: &str, edit: impl FnOnce(&mut Value)) {
    let mut v = u.json(path);
    edit(&mut v);
    u.set_json(path, &v);
}

/// Adds one to the S half of an Ed25519 signature (little-endian), giving S + L's sibling: the
/// group order L is added so the signature stays "valid" for a lax verifier.
fn malleate(sig: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let s = &mut sig[32..64];
    let mut carry = 0u16;
    for i in 0..32 {
        let v = u16::from(s[i]) + u16::from(L[i]) + carry;
        s[i] = v as u8;
        carry = v >> 8;
    }
}

fn flip_b64(s: &str) -> String {
    let mut b = s.as_bytes().to_vec();
    b[0] = if b[0] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap()
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        // Events.
        case(
            "changed payload",
            "events",
            "payload does not match",
            |u, _| {
                edit_line(u, 4, |e| {
                    e["payload"] = json!(r#"{"dataset":"evil","rows":1}"#)
                });
                u.resign(|_| {});
            },
        ),
        case(
            "changed payload and its hash",
            "range-proof",
            "not in the checkpoint's tree",
            |u, _| {
                let p = r#"{"dataset":"evil","rows":1}"#;
                edit_line(u, 4, |e| {
                    e["payload"] = serde_json::from_str(p).unwrap();
                    e["payload_sha256"] = json!(audit::hex(&audit::sha256(p.as_bytes())));
                });
                u.resign(|_| {});
            },
        ),
        case(
            "changed header field",
            "range-proof",
            "not in the checkpoint's tree",
            |u, _| {
                edit_line(u, 5, |e| e["stream"] = json!("tenant-someone-else"));
                u.resign(|_| {});
            },
        ),
        case("deleted event", "events", "expected", |u, _| {
            let mut ls = lines(u);
            ls.remove(7);
            set_lines(u, &ls);
            u.resign(|_| {});
        }),
        case(
            "deleted event with the range shrunk to match",
            "checkpoint",
            "another tree or range",
            |u, _| {
                let mut ls = lines(u);
                ls.pop();
                set_lines(u, &ls);
                u.resign(|m| {
                    m["range"]["last_sequence"] = json!(28);
                    m["event_count"] = json!(26);
                });
            },
        ),
        case("inserted event", "events", "expected", |u, _| {
            let mut ls = lines(u);
            let extra = ls[3].clone();
            ls.insert(4, extra.replace("\"sequence\":6", "\"sequence\":7"));
            set_lines(u, &ls);
            u.resign(|_| {});
        }),
        case("reordered events", "events", "expected", |u, _| {
            let mut ls = lines(u);
            ls.swap(2, 3);
            set_lines(u, &ls);
            u.resign(|_| {});
        }),
        case("duplicated event", "events", "expected", |u, _| {
            let mut ls = lines(u);
            let d = ls[10].clone();
            ls.insert(10, d);
            set_lines(u, &ls);
            u.resign(|_| {});
        }),
        case(
            "truncated tail, unsigned",
            "files",
            "events.jsonl",
            |u, _| {
                let t = u.text("events.jsonl");
                u.set_text("events.jsonl", t[..t.len() - 40].to_string());
            },
        ),
        case("truncated tail, re-signed", "events", "newline", |u, _| {
            let t = u.text("events.jsonl");
            u.set_text("events.jsonl", t[..t.len() - 40].to_string());
            u.resign(|_| {});
        }),
        case("last event cut, re-signed", "events", "needs 27", |u, _| {
            let mut ls = lines(u);
            ls.pop();
            set_lines(u, &ls);
            u.resign(|_| {});
        }),
        case(
            "non-monotonic time",
            "time-order",
            "recorded before",
            |u, _| {
                edit_line(u, 9, |e| {
                    e["recorded_at"] = json!("2026-01-02T00:00:00.000000Z")
                });
                u.resign(|_| {});
            },
        ),
        case("bad UTF-8 in an event", "events", "not UTF-8", |u, _| {
            let mut b = u.get("events.jsonl").to_vec();
            let i = b.iter().position(|&c| c == b'd').unwrap();
            b[i] = 0xff;
            *u.get_mut("events.jsonl") = b;
            u.resign(|_| {});
        }),
        case(
            "payload given twice",
            "events",
            "both payload and payload_text",
            |u, _| {
                edit_line(u, 2, |e| e["payload_text"] = json!("{}"));
                u.resign(|_| {});
            },
        ),
        case(
            "payload made a tombstone",
            "events",
            "no payload and no erasure",
            |u, _| {
                edit_line(u, 2, |e| {
                    e.as_object_mut().unwrap().remove("payload");
                });
                u.resign(|_| {});
            },
        ),
        case(
            "unknown member in an event",
            "events",
            "unknown field",
            |u, _| {
                edit_line(u, 1, |e| e["note"] = json!("hi"));
                u.resign(|_| {});
            },
        ),
        case("empty range", "manifest", "no event", |u, _| {
            u.set_text("events.jsonl", String::new());
            u.resign(|m| {
                m["range"]["last_sequence"] = json!(2);
                m["event_count"] = json!(0);
            });
        }),
        // Boundaries.
        case(
            "after-boundary dropped to hide later events",
            "boundaries",
            "not proven",
            |u, _| {
                edit_json(u, "proofs/range.json", |r| r["after"] = Value::Null);
                u.resign(|_| {});
            },
        ),
        case(
            "before-boundary dropped",
            "boundaries",
            "not proven",
            |u, _| {
                edit_json(u, "proofs/range.json", |r| r["before"] = Value::Null);
                u.resign(|_| {});
            },
        ),
        case(
            "range claimed wider than its events",
            "boundaries",
            "recorded inside it",
            |u, _| {
                u.resign(|m| m["range"]["to"] = json!("2026-02-15T00:00:00.000000Z"));
            },
        ),
        case(
            "boundary leaf moved in time",
            "boundaries",
            "inclusion proof does not lead to the root",
            |u, _| {
                edit_json(u, "proofs/range.json", |r| {
                    r["before"]["recorded_at"] = json!("2026-01-01T00:00:00.000000Z")
                });
                u.resign(|_| {});
            },
        ),
        case("boundary is another leaf", "boundaries", "not 2", |u, _| {
            edit_json(u, "proofs/range.json", |r| {
                r["before"]["sequence"] = json!(1)
            });
            u.resign(|_| {});
        }),
        // Files.
        case("file hash wrong", "files", "SHA-256 differs", |u, _| {
            let b = u.get_mut("VERIFY.md");
            b[0] = b'X';
        }),
        case("file missing", "files", "VERIFY.md is missing", |u, _| {
            u.remove("VERIFY.md")
        }),
        case("file unlisted", "files", "not in the manifest", |u, _| {
            u.entries.push(("extra.txt".into(), b"hi".to_vec()))
        }),
        case(
            "file listed twice in the archive",
            "archive",
            "appears twice",
            |u, _| {
                let e = u.entries[3].clone();
                u.entries.push(e);
            },
        ),
        case("archive truncated", "archive", "", |_, _| {}),
        // Keys and signatures.
        case(
            "wrong key given",
            "manifest-signature",
            "no trusted key",
            |_, o| {
                o.keys = vec![
                    other_key().verifying_key(),
                    SigningKey::from_bytes(&[44; 32]).verifying_key(),
                ];
            },
        ),
        case(
            "signed by an unknown key",
            "manifest-signature",
            "no trusted key",
            |u, _| {
                *u.get_mut("keys/export.pem") = pem_of(&other_key()).into_bytes();
                let raw = audit::base64(other_key().verifying_key().as_bytes());
                u.resign_with(&other_key(), |m| {
                    m["keys"]["export"]["public_key"] = json!(raw)
                });
            },
        ),
        case("no key given", "trust", "no --key", |_, o| o.keys.clear()),
        case(
            "manifest changed after signing",
            "manifest-signature",
            "no trusted key",
            |u, _| {
                let t = u.text("manifest.json").replace("b-0001", "b-0002");
                u.set_text("manifest.json", t);
            },
        ),
        case(
            "malleable manifest signature",
            "manifest-signature",
            "no trusted key",
            |u, _| {
                malleate(u.get_mut("manifest.json.sig"));
            },
        ),
        case(
            "malleable checkpoint signature",
            "checkpoint-signature",
            "does not verify",
            |u, _| {
                let t = u.text("checkpoint");
                let (body, sig) = t.split_once("\n\n").unwrap();
                let (name, b64) = sig
                    .trim_end()
                    .trim_start_matches("\u{2014} ")
                    .split_once(' ')
                    .unwrap();
                let mut blob = decode_b64(b64);
                malleate(&mut blob[4..]);
                u.set_text(
                    "checkpoint",
                    format!("{body}\n\n\u{2014} {name} {}\n", audit::base64(&blob)),
                );
                u.resign(|_| {});
            },
        ),
        case(
            "checkpoint root changed",
            "checkpoint-signature",
            "does not verify",
            |u, _| {
                let t = u.text("checkpoint");
                let mut ls: Vec<String> = t.split('\n').map(str::to_string).collect();
                ls[2] = audit::base64(&[7; 32]);
                u.set_text("checkpoint", ls.join("\n"));
                u.resign(|m| m["tree"]["root"] = json!(audit::base64(&[7; 32])));
            },
        ),
        case(
            "manifest root not the checkpoint's",
            "checkpoint",
            "differ",
            |u, _| {
                u.resign(|m| m["tree"]["root"] = json!(audit::base64(&[7; 32])));
            },
        ),
        case("manifest from another tenant", "tenant", "not", |_, o| {
            o.tenant = Some("someone-else".into())
        }),
        case(
            "manifest relabelled to another tenant",
            "tenant",
            "origin",
            |u, o| {
                u.resign(|m| m["tenant"] = json!("someone-else"));
                o.tenant = Some("someone-else".into());
            },
        ),
        // Manifest parsing.
        case(
            "bad UTF-8 in the manifest",
            "manifest",
            "not UTF-8",
            |u, _| {
                let mut b = u.get("manifest.json").to_vec();
                let i = b.windows(6).position(|w| w == b"b-0001").unwrap();
                b[i] = 0xc3;
                u.resign_raw(&export_key(), b);
            },
        ),
        case(
            "duplicate key in the manifest",
            "manifest",
            "duplicate field",
            |u, _| {
                let t =
                    u.text("manifest.json")
                        .replacen("{", "{\n  \"tenant\": \"someone-else\",", 1);
                u.resign_raw(&export_key(), t.into_bytes());
            },
        ),
        case(
            "unknown format version",
            "manifest",
            "unknown format version 2",
            |u, _| {
                u.resign(|m| m["format_version"] = json!(2));
            },
        ),
        case(
            "unknown manifest member",
            "manifest",
            "unknown field",
            |u, _| {
                u.resign(|m| m["extra"] = json!(1));
            },
        ),
        // Retention.
        case(
            "retention summary altered",
            "retention",
            "summary",
            |u, _| {
                u.resign(|m| m["retention"]["erased_events"] = json!(0));
            },
        ),
        case("erasures withheld", "retention", "not erased", |u, _| {
            u.set_text("retention/erasures.jsonl", String::new());
            u.resign(|m| m["retention"]["erasures"] = json!(0));
        }),
        with(
            case(
                "plaintext past the window",
                "retention",
                "plaintext /email",
                |_, _| {},
            ),
            Params {
                plaintext: true,
                ..Params::default()
            },
        ),
        with(
            case(
                "erasure without a policy reason",
                "retention",
                "no policy reason",
                |_, _| {},
            ),
            Params {
                erasure_rule: "whim",
                ..Params::default()
            },
        ),
        with(
            case(
                "erasure inside the window",
                "retention",
                "inside its retention window",
                |_, _| {},
            ),
            Params {
                erase_inside_window: true,
                ..Params::default()
            },
        ),
        with(
            case(
                "subject-request erasure of an event without sealed data",
                "retention",
                "holds no sealed personal data",
                |_, _| {},
            ),
            Params {
                erasure_rule: "$subject-request",
                erasure_sequences: Some("[1,6,27]"),
                ..Params::default()
            },
        ),
        // Known checkpoints.
        case("stale checkpoint", "known-checkpoint", "stale", |_, o| {
            let events = history(&Params::default(), 41);
            o.known_checkpoint = Some(checkpoint(&leaves(&events), 41).note.into_bytes());
        }),
        case(
            "forked log at the same size",
            "known-checkpoint",
            "forked",
            |_, o| {
                let mut events = history(&Params::default(), 40);
                events[39].header.stream = "fork".into();
                o.known_checkpoint = Some(checkpoint(&leaves(&events), 40).note.into_bytes());
            },
        ),
        case(
            "forked log at an earlier size",
            "known-checkpoint",
            "forked",
            |_, o| {
                let mut events = history(&Params::default(), 40);
                events[19].header.stream = "fork".into();
                o.known_checkpoint = Some(checkpoint(&leaves(&events), 20).note.into_bytes());
            },
        ),
        case(
            "known checkpoint without a proof",
            "known-checkpoint",
            "no consistency proof",
            |_, o| {
                let events = history(&Params::default(), 40);
                o.known_checkpoint = Some(checkpoint(&leaves(&events), 25).note.into_bytes());
            },
        ),
        case(
            "consistency proofs removed",
            "known-checkpoint",
            "consistency.json is missing",
            |u, o| {
                u.remove("proofs/consistency.json");
                o.known_checkpoint = Some(
                    checkpoint(&leaves(&history(&Params::default(), 40)), 20)
                        .note
                        .into_bytes(),
                );
            },
        ),
        case(
            "manifest signed with the log key",
            "manifest-signature",
            "no trusted key",
            |u, _| {
                u.resign_with(&log_signing_key(), |_| {});
            },
        ),
        case(
            "checkpoint signed with the export key",
            "checkpoint-signature",
            "no signature by a trusted key",
            |u, _| {
                let forged = LogKey::new(LOG_NAME, export_key()).unwrap();
                let cp = audit::Checkpoint {
                    origin: audit::origin(LOG_NAME, TENANT).unwrap(),
                    size: 40,
                    root: leaves_root(40),
                };
                u.set_text("checkpoint", forged.sign(cp).note);
                u.resign(|_| {});
            },
        ),
        case(
            "requested range not covered",
            "requested-range",
            "before the requested end",
            |_, o| {
                o.to = Some(BASE + 35 * DAY);
            },
        ),
    ];
    // Every element of every proof, mutated one at a time.
    let base = Unpacked::of(&build(&Params::default()));
    let range = base.json("proofs/range.json");
    let proofs: [(&str, &str, &'static str, &'static str); 4] = [
        (
            "proofs/range.json",
            "/left",
            "range-proof",
            "not in the checkpoint's tree",
        ),
        (
            "proofs/range.json",
            "/consistency",
            "range-proof",
            "not in the checkpoint's tree",
        ),
        (
            "proofs/range.json",
            "/before/inclusion",
            "boundaries",
            "does not lead to the root",
        ),
        (
            "proofs/range.json",
            "/after/inclusion",
            "boundaries",
            "does not lead to the root",
        ),
    ];
    for (file, pointer, check, reason) in proofs {
        let n = range.pointer(pointer).unwrap().as_array().unwrap().len();
        assert!(n > 0, "{pointer} is empty in the fixture");
        for i in 0..n {
            v.push(case(
                Box::leak(format!("{pointer}[{i}] mutated").into_boxed_str()),
                check,
                reason,
                move |u, _| {
                    edit_json(u, file, |r| {
                        let e = &mut r.pointer_mut(pointer).unwrap()[i];
                        *e = json!(flip_b64(e.as_str().unwrap()));
                    });
                    u.resign(|_| {});
                },
            ));
        }
    }
    let erasure: Value =
        serde_json::from_str(base.text("retention/erasures.jsonl").trim_end()).unwrap();
    for i in 0..erasure["inclusion"].as_array().unwrap().len() {
        v.push(case(
            Box::leak(format!("erasure inclusion[{i}] mutated").into_boxed_str()),
            "retention",
            "does not lead to the root",
            move |u, _| {
                let mut e: Value =
                    serde_json::from_str(u.text("retention/erasures.jsonl").trim_end()).unwrap();
                e["inclusion"][i] = json!(flip_b64(e["inclusion"][i].as_str().unwrap()));
                u.set_text("retention/erasures.jsonl", format!("{e}\n"));
                u.resign(|_| {});
            },
        ));
    }
    let cons = base.json("proofs/consistency.json");
    for i in 0..cons["from"][0]["proof"].as_array().unwrap().len() {
        v.push(case(
            Box::leak(format!("known consistency[{i}] mutated").into_boxed_str()),
            "known-checkpoint",
            "forked",
            move |u, o| {
                edit_json(u, "proofs/consistency.json", |c| {
                    let e = &mut c["from"][0]["proof"][i];
                    *e = json!(flip_b64(e.as_str().unwrap()));
                });
                u.resign(|_| {});
                o.known_checkpoint = Some(
                    checkpoint(&leaves(&history(&Params::default(), 40)), 20)
                        .note
                        .into_bytes(),
                );
            },
        ));
    }
    v
}

fn leaves_root(n: u64) -> audit::Hash {
    audit::root(&leaves(&history(&Params::default(), n)), n).unwrap()
}

fn decode_b64(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut bits, mut n) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let d = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        bits = (bits << 6) | u32::from(d);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

#[test]
fn an_untouched_bundle_passes_every_check() {
    let mut opts = options();
    opts.from = Some(BASE + 3 * DAY);
    opts.to = Some(BASE + 30 * DAY);
    opts.known_checkpoint = Some(
        checkpoint(&leaves(&history(&Params::default(), 40)), 20)
            .note
            .into_bytes(),
    );
    let report = verify(&build(&Params::default())[..], &opts);
    assert!(report.passed(), "{report}");
    for name in [
        "archive",
        "manifest-signature",
        "manifest",
        "keys",
        "files",
        "tenant",
        "checkpoint-signature",
        "checkpoint",
        "events",
        "time-order",
        "range-proof",
        "boundaries",
        "retention",
        "requested-range",
        "known-checkpoint",
        "trust",
    ] {
        assert!(
            report
                .checks
                .iter()
                .any(|c| c.name == name && c.result.is_ok()),
            "no PASS {name}:\n{report}"
        );
    }
}

#[test]
fn a_subject_request_erasure_inside_the_window_passes() {
    // A member erased at their request: events 1, 6 (past the window) and 26 (inside it) are
    // erased with the reason `$subject-request`, which no policy rule may take.
    let params = Params {
        erasure_rule: "$subject-request",
        erase_inside_window: true,
        ..Params::default()
    };
    let report = verify(&build(&params)[..], &options());
    assert!(report.passed(), "{report}");
}

#[test]
fn a_bundle_with_its_entries_in_another_order_still_passes() {
    let mut u = Unpacked::of(&build(&Params::default()));
    u.entries.reverse();
    let report = verify(&u.pack()[..], &options());
    assert!(report.passed(), "{report}");
}

#[test]
fn every_tamper_case_fails_with_its_reason() {
    let mut wrong = Vec::new();
    let all = cases();
    for c in &all {
        let report = if c.name == "archive truncated" {
            let b = build(&c.params);
            verify(&b[..b.len() / 2], &options())
        } else {
            run(&c.params, &*c.mutate)
        };
        match report.failure(c.check) {
            Some(reason) if reason.contains(c.reason) => {}
            got => wrong.push(format!(
                "{}: expected FAIL {}: …{}…, got {got:?}\n{report}",
                c.name, c.check, c.reason
            )),
        }
        assert!(!report.passed(), "{} passed", c.name);
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        all.len(),
        wrong.join("\n")
    );
}
