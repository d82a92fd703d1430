//! Billing through the use cases on a real store: a month finalized after its 24-hour grace
//! with a late unit, reconciliation (clean, then a deleted rollup row found), and 1,000 invoices
//! charged through a local fake of the Stripe API that fails 30 % of the time (timeouts after it
//! has charged included): exactly one successful charge per invoice.

use app::billing;
use app::payments::{
    self, ChargeError, ChargeRequest, PaymentProvider, Providers, RetryPolicy, Stripe,
};
use app::{App, Ctx, FixedClock};
use domain::billing::{BillingMode, BookCommand, Invoice, InvoiceBook};
use domain::quota::{Meter, Period};
use domain::tenant::{Plan, TenantName};
use domain::{Email, PersonName, TenantId};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use time::macros::datetime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn config() -> app::Config {
    app::Config {
        public_url: "http://localhost".into(),
        plans: domain::plans::Registry::default(),
        token_ttl_days: 30,
        read_wait: Duration::from_secs(5),
        flags: BTreeMap::new(),
        dataset_limit: 1 << 20,
        query_time: Duration::from_secs(1),
        query_max_rows: 1000,
        export_max_rows: 1000,
        sandbox_cache_bytes: 1 << 20,
        sandbox_dir: None,
        concurrency_per_tenant: 4,
        concurrency_global: 16,
        refusal_timer: false,
    }
}

fn ctx(at: OffsetDateTime) -> Ctx {
    Ctx {
        meta: store::Metadata::actor("test"),
        now: at,
        id_seed: None,
    }
}

async fn start(store: &store::Store) -> Arc<App> {
    App::start(
        config(),
        store.clone(),
        Arc::new(FixedClock(datetime!(2026-03-01 00:00 UTC))),
    )
    .await
}

async fn a_month_is_finalized_after_its_grace_and_reconciles_until_a_rollup_row_is_deleted(
    store: store::Store,
) {
    let app = start(&store).await;
    let t = app::identity::sign_up(
        &app,
        &ctx(datetime!(2026-03-01 09:00 UTC)),
        app::identity::SignUp {
            tenant_name: TenantName::parse("Acme").unwrap(),
            email: Email::parse("owner@example.com").unwrap(),
            name: PersonName::parse("Owner").unwrap(),
            token: None,
        },
    )
    .await
    .unwrap()
    .tenant_id;
    // 150 exports on Free (20 included, then grace and blocked: refusals are counted too).
    for day in 2..=4u8 {
        for _ in 0..10 {
            let at = datetime!(2026-03-01 10:00 UTC) + time::Duration::days(i64::from(day) - 1);
            let _ = app::metering::use_units(&app, &ctx(at), t, Meter::Exports, 1).await;
        }
    }
    // Upgrade to Pro to the second, then 1,000 exports included and 5 over.
    app::metering::change_plan(
        &app,
        &ctx(datetime!(2026-03-10 12:34:56 UTC)),
        t,
        Plan::Pro,
        None,
    )
    .await
    .unwrap();
    app::metering::use_units(
        &app,
        &ctx(datetime!(2026-03-20 08:00 UTC)),
        t,
        Meter::Exports,
        980,
    )
    .await
    .unwrap();
    // The late unit: decided on the period's last second (appended whenever it arrives).
    app::metering::use_units(
        &app,
        &ctx(datetime!(2026-03-31 23:59:59 UTC)),
        t,
        Meter::Exports,
        25,
    )
    .await
    .unwrap();

    let early = billing::finalize_period(
        &app,
        &ctx(datetime!(2026-04-01 23:59 UTC)),
        Period {
            year: 2026,
            month: 3,
        },
    )
    .await;
    assert!(
        matches!(
            early,
            Err(app::Error::Billing(
                domain::billing::BillingError::TooEarly { .. }
            ))
        ),
        "{early:?}"
    );
    let done = billing::finalize_period(
        &app,
        &ctx(datetime!(2026-04-02 00:00 UTC)),
        Period {
            year: 2026,
            month: 3,
        },
    )
    .await
    .unwrap();
    assert_eq!(done.finalized, vec!["TEN-000001".to_owned()]);
    let (f, _) = billing::invoice(&app, Some(t), "TEN-000001").await.unwrap();
    // 22 exports admitted on Free (20 + 2 grace), then 1,005 on Pro.
    assert_eq!(f.invoice.quantities[&Meter::Exports], 22 + 980 + 25);
    let kinds: Vec<_> = f.invoice.lines.iter().map(|l| (l.kind, l.amount)).collect();
    // Pro from 2026-03-10 12:34:56: 1,855,504 of 2,678,400 seconds of 49.00 → 3394.55 → 3395;
    // exports: used 22+980+25 = 1027 > 1000 → 27 over at 0.10 = 2.70.
    assert_eq!(
        kinds,
        vec![
            (domain::billing::LineKind::ProratedFee, 3_395),
            (domain::billing::LineKind::Overage, 270)
        ],
        "{:#?}",
        f.invoice.lines
    );
    // Finalized invoices never change: a second run does nothing.
    let again = billing::finalize_period(
        &app,
        &ctx(datetime!(2026-04-03 00:00 UTC)),
        Period {
            year: 2026,
            month: 3,
        },
    )
    .await
    .unwrap();
    assert_eq!((again.finalized.len(), again.already), (0, 1));

    // A credit note corrects it; the invoice's total stays.
    let (cn, _) = billing::credit_note(
        &app,
        &ctx(datetime!(2026-04-03 00:00 UTC)),
        "TEN-000001",
        270,
        "overage waived".into(),
    )
    .await
    .unwrap();
    assert_eq!(cn, "TEN-CN-000001");
    let (_, entry) = billing::invoice(&app, Some(t), "TEN-000001").await.unwrap();
    assert_eq!((entry.total, entry.credited), (3_395 + 270, 270));

    let (from, to) = (
        time::macros::date!(2026 - 03 - 01),
        time::macros::date!(2026 - 04 - 01),
    );
    let clean = billing::reconcile(&app, &ctx(datetime!(2026-04-03 00:00 UTC)), from, to)
        .await
        .unwrap();
    assert!(clean.report.clean, "{:#?}", clean.report);
    assert_eq!(clean.report.invoices_checked, 1);

    // Plant a difference: delete the rollup row of 2026-03-20.
    let key = (t, Meter::Exports, time::macros::date!(2026 - 03 - 20));
    let removed = app.rollups.remove_row(&key).expect("the row exists");
    assert_eq!(removed.admitted, 980);
    let dirty = billing::reconcile(&app, &ctx(datetime!(2026-04-03 00:00 UTC)), from, to)
        .await
        .unwrap();
    assert!(!dirty.report.clean);
    let found: Vec<_> = dirty
        .report
        .differences
        .iter()
        .map(|d| (d.when.as_str(), d.what.as_str(), d.expected, d.found))
        .collect();
    assert_eq!(
        found,
        vec![
            ("2026-03-20", "rollup.admitted", 980, 0),
            ("2026-03", "invoice.rollups", 47, 1_027),
        ]
    );
    // Both results are in the log.
    let events = store
        .read_stream(
            TenantId::PLATFORM,
            domain::billing::RECONCILIATION_STREAM,
            1,
            10,
        )
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    app.projections.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_with_a_late_unit_finalizes_reconciles_and_a_deleted_rollup_row_is_found_embedded()
{
    let s = store::testing::TestStore::embedded().await;
    a_month_is_finalized_after_its_grace_and_reconciles_until_a_rollup_row_is_deleted(
        s.store.clone(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_with_a_late_unit_finalizes_reconciles_and_a_deleted_rollup_row_is_found_postgres()
{
    let s = store::testing::TestStore::postgres().await;
    a_month_is_finalized_after_its_grace_and_reconciles_until_a_rollup_row_is_deleted(
        s.store.clone(),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// A fake of the Stripe API, as Stripe documents it: the first response for an idempotency key
// is replayed for every retry with the same parameters; the same key with other parameters is
// 400 `idempotency_error`; and it fails at random: 500 and 429 before doing anything, a timeout
// before doing anything, and a timeout *after* it has charged (the answer is lost, the charge is
// made and saved for the key).
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct FakeState {
    /// key → (form body, status, response body)
    keys: HashMap<String, (String, u16, String)>,
    /// invoice number → charges made
    charges: HashMap<String, u32>,
    requests: u64,
    faults: u64,
}

struct Fake {
    addr: String,
    state: Arc<Mutex<FakeState>>,
}

async fn fake_stripe(fault_rate: f64, stall: Duration, seed: u64) -> Fake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(Mutex::new(FakeState::default()));
    let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (st, rng) = (st.clone(), rng.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, len) = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        break (i + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
                let key = head
                    .lines()
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case("idempotency-key"))
                            .map(|(_, v)| v.trim().to_owned())
                    })
                    .unwrap_or_default();
                let invoice = body
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("metadata%5Binvoice%5D="))
                    .unwrap_or("")
                    .to_owned();
                let roll = rng.lock().unwrap().f64();
                let fault = roll < fault_rate;
                let kind = (roll / fault_rate * 4.0) as u32; // 0..4 among faults
                let reply = |status: u16, text: &str, json: &str| {
                    format!(
                        "HTTP/1.1 {status} {text}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                        json.len()
                    )
                };
                let answer: Option<String> = {
                    let mut s = st.lock().unwrap();
                    s.requests += 1;
                    if fault {
                        s.faults += 1;
                    }
                    if fault && kind == 0 {
                        Some(reply(
                            500,
                            "Internal Server Error",
                            r#"{"error":{"type":"api_error","message":"injected"}}"#,
                        ))
                    } else if fault && kind == 1 {
                        Some(reply(
                            429,
                            "Too Many Requests",
                            r#"{"error":{"type":"rate_limit_error"}}"#,
                        ))
                    } else if fault && kind == 2 {
                        None // a timeout before anything happened
                    } else {
                        let saved = s.keys.get(&key).cloned();
                        let out = match saved {
                            Some((first, _, _)) if first != body => reply(
                                400,
                                "Bad Request",
                                r#"{"error":{"type":"idempotency_error","message":"Keys for idempotent requests can only be used with the same parameters they were first used with."}}"#,
                            ),
                            Some((_, status, json)) => reply(status, "OK", &json),
                            None => {
                                let n = s.charges.entry(invoice.clone()).or_default();
                                *n += 1;
                                let json = format!(
                                    r#"{{"id":"pi_{}_{}","object":"payment_intent","status":"succeeded"}}"#,
                                    invoice, n
                                );
                                s.keys
                                    .insert(key.clone(), (body.clone(), 200, json.clone()));
                                reply(200, "OK", &json)
                            }
                        };
                        // kind 3: charged (or replayed), then the answer is lost.
                        if fault { None } else { Some(out) }
                    }
                };
                match answer {
                    Some(text) => {
                        let _ = sock.write_all(text.as_bytes()).await;
                        let _ = sock.shutdown().await;
                    }
                    None => tokio::time::sleep(stall).await,
                }
            });
        }
    });
    Fake { addr, state }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stripe_fake_replays_a_key_and_refuses_it_with_other_parameters() {
    let fake = fake_stripe(0.0, Duration::ZERO, 1).await;
    let stripe = Stripe::new(fake.addr.clone(), "sk_test_x", Duration::from_secs(2));
    let req = ChargeRequest {
        idempotency_key: "k1".into(),
        amount: 4_900,
        currency: "USD".into(),
        invoice_number: "TEN-000001".into(),
        tenant: TenantId::from_uuid(uuid::Uuid::from_u128(1)),
    };
    let a = stripe.charge(&req).await.unwrap();
    let b = stripe.charge(&req).await.unwrap();
    assert_eq!(a, b, "the first response is replayed");
    let other = ChargeRequest {
        amount: 5_000,
        ..req.clone()
    };
    let err = stripe.charge(&other).await.unwrap_err();
    assert!(
        matches!(&err, ChargeError::Refused(r) if r.contains("idempotency_error")),
        "{err:?}"
    );
    assert_eq!(fake.state.lock().unwrap().charges["TEN-000001"], 1);
}

/// Counts provider calls and fails the test on a call for an already-paid invoice.
#[derive(Debug)]
struct Counting<P> {
    inner: P,
    calls: std::sync::atomic::AtomicU64,
}

impl<P: PaymentProvider> PaymentProvider for Counting<P> {
    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> payments::ChargeFuture<'a> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.charge(request)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_invoices_at_30_percent_faults_are_charged_exactly_once_each() {
    let s = store::testing::TestStore::embedded().await;
    let app = start(&s.store).await;
    let at = datetime!(2026-04-02 00:00 UTC);
    // 1,000 finalized invoices of tenants in active_test.
    let mut jobs = Vec::new();
    for i in 0..1_000u128 {
        let app = app.clone();
        jobs.push(tokio::spawn(async move {
            let invoice = Invoice {
                tenant: TenantId::from_uuid(uuid::Uuid::from_u128(1_000 + i)),
                period: Period {
                    year: 2026,
                    month: 3,
                },
                currency: "USD".into(),
                lines: vec![],
                quantities: BTreeMap::new(),
                total: 100 + i as i64,
            };
            app.invoices
                .execute(
                    TenantId::PLATFORM,
                    domain::billing::BOOK_STREAM,
                    &BookCommand::Finalize {
                        invoice,
                        mode: BillingMode::ActiveTest,
                    },
                    &store::Metadata::actor("test"),
                    at,
                )
                .await
                .unwrap();
        }));
    }
    for j in jobs {
        j.await.unwrap();
    }
    let fake = fake_stripe(0.30, Duration::from_millis(400), 42).await;
    let stripe = Counting {
        inner: Stripe::new(
            fake.addr.clone(),
            "sk_test_fake",
            Duration::from_millis(150),
        ),
        calls: Default::default(),
    };
    let providers = Providers {
        test: &stripe,
        live: &stripe,
    };
    let policy = RetryPolicy {
        max_attempts: 40,
        base: Duration::from_millis(2),
        cap: Duration::from_millis(40),
    };
    let results = payments::charge_due(&app, &ctx(at), &providers, policy, 64)
        .await
        .unwrap();
    assert_eq!(results.len(), 1_000);
    let unpaid: Vec<_> = results
        .iter()
        .filter(|(_, r)| !matches!(r, payments::Charged::Paid { .. }))
        .collect();
    assert!(unpaid.is_empty(), "{unpaid:?}");
    // Nothing is due any more: a second run charges nothing.
    assert!(
        payments::charge_due(&app, &ctx(at), &providers, policy, 64)
            .await
            .unwrap()
            .is_empty()
    );

    {
        let fs = fake.state.lock().unwrap();
        assert_eq!(fs.charges.len(), 1_000, "every invoice charged");
        assert!(
            fs.charges.values().all(|n| *n == 1),
            "no invoice charged twice"
        );
        let faults = fs.faults as f64 / fs.requests as f64;
        assert!((0.2..0.4).contains(&faults), "faults were {faults}");
    }

    // Every attempt is an event, and exactly one success per invoice is in the log.
    let events = s
        .store
        .read_stream(
            TenantId::PLATFORM,
            domain::billing::BOOK_STREAM,
            1,
            usize::MAX,
        )
        .await
        .unwrap();
    let count = |t: &str| events.iter().filter(|e| e.event_type == t).count() as u64;
    let calls = stripe.calls.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(count("payment.succeeded"), 1_000);
    assert_eq!(count("payment.attempted"), calls);
    assert_eq!(count("payment.failed") + 1_000, calls);
    let (book, _): (InvoiceBook, _) = app
        .invoices
        .load(TenantId::PLATFORM, domain::billing::BOOK_STREAM)
        .await
        .unwrap();
    assert!(book.invoices.values().all(|e| e.paid_by.is_some()));
    println!("1,000 invoices: {calls} attempts, {} faults", calls - 1_000);
    app.projections.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nightly_run_finalizes_charges_an_active_tenant_once_and_reconciles() {
    let s = store::testing::TestStore::embedded().await;
    let app = start(&s.store).await;
    let t = app::identity::sign_up(
        &app,
        &ctx(datetime!(2026-03-01 09:00 UTC)),
        app::identity::SignUp {
            tenant_name: TenantName::parse("Nightly").unwrap(),
            email: Email::parse("owner@example.com").unwrap(),
            name: PersonName::parse("Owner").unwrap(),
            token: None,
        },
    )
    .await
    .unwrap()
    .tenant_id;
    app::metering::change_plan(
        &app,
        &ctx(datetime!(2026-03-01 09:00 UTC)),
        t,
        Plan::Pro,
        None,
    )
    .await
    .unwrap();
    billing::set_mode(
        &app,
        &ctx(datetime!(2026-03-02 00:00 UTC)),
        t,
        BillingMode::ActiveTest,
        "pilot".into(),
    )
    .await
    .unwrap();
    let stub = Arc::new(payments::Stub::new(0.3, 0.2, Duration::ZERO, 7));
    let nightly = billing::Nightly {
        at: time::macros::time!(02:00),
        providers: Some((stub.clone(), stub.clone())),
    };
    // On the 1st the grace is not over: nothing is finalized.
    billing::nightly_once(&app, &nightly, datetime!(2026-04-01 02:00 UTC)).await;
    assert!(billing::list(&app, Some(t)).await.unwrap().is_empty());
    billing::nightly_once(&app, &nightly, datetime!(2026-04-02 02:00 UTC)).await;
    billing::nightly_once(&app, &nightly, datetime!(2026-04-03 02:00 UTC)).await;
    let list = billing::list(&app, Some(t)).await.unwrap();
    assert_eq!(list.len(), 1);
    let (_, e) = &list[0];
    assert!(e.paid_by.is_some(), "{e:?}");
    // 49.00 × 2,646,000 / 2,678,400: Pro from 09:00 on the 1st (the sign-up and upgrade instant).
    assert_eq!(e.total, 4_841);
    assert_eq!(stub.charges(), 1, "one charge whatever failed");
    let recs = s
        .store
        .read_stream(
            TenantId::PLATFORM,
            domain::billing::RECONCILIATION_STREAM,
            1,
            10,
        )
        .await
        .unwrap();
    assert_eq!(recs.len(), 3, "one reconciliation per night");
    app.projections.stop();
}
