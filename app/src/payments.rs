//! Payments (SPEC §5, ADR 024): the [`PaymentProvider`] trait with an in-process [`Stub`]
//! (injectable failure rate, latency and timeouts) and the [`Stripe`] adapter (form-encoded
//! PaymentIntents with an `Idempotency-Key`), and the use case that charges a finalized invoice:
//! every attempt is a `payment.attempted` event followed by `payment.succeeded` or
//! `payment.failed`; transient failures (timeouts, 5xx, 429) are retried with exponential backoff
//! and full jitter, 4xx never. Every attempt of one invoice sends the same idempotency key, so a
//! provider that charged but whose answer was lost replays that charge instead of making another:
//! an invoice is charged successfully exactly once, whatever fails.

pub mod http1;

use crate::{App, Ctx, Error};
use domain::TenantId;
use domain::billing::{self, AttemptOutcome, BillingError, BillingMode, BookCommand, BookEvent};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

/// One charge, as the provider is asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChargeRequest {
    pub idempotency_key: String,
    /// Minor units.
    pub amount: i64,
    pub currency: String,
    pub invoice_number: String,
    pub tenant: TenantId,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChargeError {
    /// Worth another attempt with the same key: a timeout, a 5xx, a 429, a broken connection.
    #[error("transient: {0}")]
    Transient(String),
    /// The provider refused (4xx): retrying cannot help.
    #[error("refused: {0}")]
    Refused(String),
}

pub type ChargeFuture<'a> = Pin<Box<dyn Future<Output = Result<String, ChargeError>> + Send + 'a>>;

/// A payment provider: one request per call, answering the charge's id.
pub trait PaymentProvider: Send + Sync + std::fmt::Debug {
    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> ChargeFuture<'a>;
}

/// An in-process provider for tests and demos: it charges each key once (replaying the charge for
/// a repeated key, like a real provider), and fails at random before or after charging.
#[derive(Debug)]
pub struct Stub {
    /// Probability that a call fails with a transient error before charging.
    pub failure_rate: f64,
    /// Probability that a call charges and then times out (the answer is lost).
    pub timeout_rate: f64,
    pub latency: Duration,
    charges: Mutex<HashMap<String, (ChargeRequest, String)>>,
    rng: Mutex<fastrand::Rng>,
}

impl Stub {
    pub fn new(failure_rate: f64, timeout_rate: f64, latency: Duration, seed: u64) -> Self {
        Self {
            failure_rate,
            timeout_rate,
            latency,
            charges: Mutex::new(HashMap::new()),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        }
    }

    /// Charges made (one per key).
    pub fn charges(&self) -> usize {
        self.charges.lock().expect("stub lock").len()
    }
}

impl PaymentProvider for Stub {
    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> ChargeFuture<'a> {
        Box::pin(async move {
            if !self.latency.is_zero() {
                tokio::time::sleep(self.latency).await;
            }
            let (fail, lose) = {
                let mut rng = self.rng.lock().expect("stub lock");
                (rng.f64() < self.failure_rate, rng.f64() < self.timeout_rate)
            };
            if fail {
                return Err(ChargeError::Transient("stub: injected failure".into()));
            }
            let id = {
                let mut charges = self.charges.lock().expect("stub lock");
                match charges.get(&request.idempotency_key) {
                    Some((first, _)) if first != request => {
                        return Err(ChargeError::Refused(
                            "idempotency key reused with other parameters".into(),
                        ));
                    }
                    Some((_, id)) => id.clone(),
                    None => {
                        let id = format!("stub_{}", charges.len() + 1);
                        charges.insert(
                            request.idempotency_key.clone(),
                            (request.clone(), id.clone()),
                        );
                        id
                    }
                }
            };
            if lose {
                return Err(ChargeError::Transient(
                    "stub: timed out after charging".into(),
                ));
            }
            Ok(id)
        })
    }
}

/// The provider of a mode with no key configured: refuses, so nothing is charged by mistake.
#[derive(Debug)]
pub struct Unconfigured;

impl PaymentProvider for Unconfigured {
    fn charge<'a>(&'a self, _request: &'a ChargeRequest) -> ChargeFuture<'a> {
        Box::pin(async {
            Err(ChargeError::Refused(
                "no payment provider key for this mode".into(),
            ))
        })
    }
}

/// The Stripe API: `POST {base}/v1/payment_intents`, form-encoded, confirmed at once, with the
/// invoice's idempotency key. The secret key decides test or live mode (Stripe's rule).
#[derive(Clone)]
pub struct Stripe {
    pub base_url: String,
    secret_key: String,
    /// The whole exchange of one attempt.
    pub timeout: Duration,
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripe")
            .field("base_url", &self.base_url)
            .field("secret_key", &"<redacted>")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Stripe {
    pub fn new(
        base_url: impl Into<String>,
        secret_key: impl Into<String>,
        timeout: Duration,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            secret_key: secret_key.into(),
            timeout,
        }
    }

    /// The form a charge sends.
    pub fn form(request: &ChargeRequest) -> String {
        http1::form(&[
            ("amount", request.amount.to_string()),
            ("currency", request.currency.to_ascii_lowercase()),
            ("confirm", "true".into()),
            ("off_session", "true".into()),
            ("description", format!("Invoice {}", request.invoice_number)),
            ("metadata[invoice]", request.invoice_number.clone()),
            ("metadata[tenant]", request.tenant.to_string()),
        ])
    }
}

#[derive(serde::Deserialize)]
struct Intent {
    id: String,
    status: String,
}

#[derive(serde::Deserialize)]
struct StripeError {
    error: StripeErrorBody,
}

#[derive(serde::Deserialize)]
struct StripeErrorBody {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl PaymentProvider for Stripe {
    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> ChargeFuture<'a> {
        Box::pin(async move {
            let url = format!("{}/v1/payment_intents", self.base_url.trim_end_matches('/'));
            let body = Self::form(request);
            let headers = [
                ("Authorization", format!("Bearer {}", self.secret_key)),
                ("Idempotency-Key", request.idempotency_key.clone()),
                ("Stripe-Version", "2024-06-20".to_owned()),
            ];
            let res = http1::post(
                &url,
                &headers,
                "application/x-www-form-urlencoded",
                body.as_bytes(),
                self.timeout,
            )
            .await
            .map_err(|e| ChargeError::Transient(e.to_string()))?;
            match res.status {
                200..=299 => {
                    let intent: Intent = serde_json::from_slice(&res.body)
                        .map_err(|e| ChargeError::Transient(format!("unreadable answer: {e}")))?;
                    if intent.status == "succeeded" {
                        Ok(intent.id)
                    } else {
                        Err(ChargeError::Refused(format!(
                            "payment intent {} is {}",
                            intent.id, intent.status
                        )))
                    }
                }
                429 | 500..=599 => Err(ChargeError::Transient(format!("HTTP {}", res.status))),
                status => {
                    let why = serde_json::from_slice::<StripeError>(&res.body)
                        .map(|e| {
                            format!(
                                "{}{}: {}",
                                e.error.kind,
                                e.error.code.map(|c| format!("/{c}")).unwrap_or_default(),
                                e.error.message.unwrap_or_default()
                            )
                        })
                        .unwrap_or_else(|_| "no error body".into());
                    Err(ChargeError::Refused(format!("HTTP {status} {why}")))
                }
            }
        })
    }
}

/// How often and how patiently a charge is attempted.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Full jitter: a random wait in `[0, min(cap, base × 2^attempt))`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.cap);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// The providers by mode: `active_test` charges through `test`, `active_live` through `live`.
#[derive(Debug)]
pub struct Providers<'a> {
    pub test: &'a dyn PaymentProvider,
    pub live: &'a dyn PaymentProvider,
}

/// How charging one invoice ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Charged {
    /// Paid by this charge (now, or before).
    Paid { charge_id: String, attempts: u32 },
    /// Not paid: refused, or still failing after the policy's attempts (a later run retries).
    Unpaid { reason: String, attempts: u32 },
    /// A shadow invoice, or nothing to charge.
    NotCharged(String),
}

async fn book_execute(
    app: &App,
    ctx: &Ctx,
    command: BookCommand,
) -> Result<
    (
        commands::Executed<billing::InvoiceBook>,
        billing::InvoiceBook,
    ),
    Error,
> {
    Ok(app
        .invoices
        .execute_with_state(
            TenantId::PLATFORM,
            billing::BOOK_STREAM,
            &command,
            &ctx.meta,
            ctx.now,
        )
        .await?)
}

/// Charge invoice `seq`: attempts until paid, refused, or the policy's attempts are spent.
pub async fn charge_invoice(
    app: &App,
    ctx: &Ctx,
    providers: &Providers<'_>,
    policy: RetryPolicy,
    seq: u64,
) -> Result<Charged, Error> {
    let mut tries = 0;
    loop {
        let (started, book) =
            match book_execute(app, ctx, BookCommand::StartAttempt { number: seq }).await {
                Ok(done) => done,
                Err(Error::Billing(BillingError::AlreadyPaid(_))) => {
                    let (book, _) = app
                        .invoices
                        .load(TenantId::PLATFORM, billing::BOOK_STREAM)
                        .await?;
                    let e = &book.invoices[&seq];
                    return Ok(Charged::Paid {
                        charge_id: e.paid_by.clone().unwrap_or_default(),
                        attempts: e.attempts,
                    });
                }
                Err(Error::Billing(
                    e @ (BillingError::Shadow(_) | BillingError::NothingToCharge(_)),
                )) => return Ok(Charged::NotCharged(e.to_string())),
                Err(e) => return Err(e),
            };
        let Some(BookEvent::Attempted(a)) = started.events.first() else {
            return Err(Error::Internal("an attempt decided nothing".into()));
        };
        let entry = &book.invoices[&seq];
        let request = ChargeRequest {
            idempotency_key: a.idempotency_key.clone(),
            amount: a.amount,
            currency: a.currency.clone(),
            invoice_number: a.number.clone(),
            tenant: entry.tenant,
        };
        let provider = match a.mode {
            BillingMode::ActiveLive => providers.live,
            _ => providers.test,
        };
        tries += 1;
        let result = provider.charge(&request).await;
        let outcome = match &result {
            Ok(id) => AttemptOutcome::Succeeded {
                charge_id: id.clone(),
            },
            Err(ChargeError::Transient(r)) => AttemptOutcome::Failed {
                reason: r.clone(),
                retryable: true,
            },
            Err(ChargeError::Refused(r)) => AttemptOutcome::Failed {
                reason: r.clone(),
                retryable: false,
            },
        };
        book_execute(
            app,
            ctx,
            BookCommand::SettleAttempt {
                number: seq,
                attempt: a.attempt,
                outcome,
            },
        )
        .await?;
        match result {
            Ok(charge_id) => {
                return Ok(Charged::Paid {
                    charge_id,
                    attempts: a.attempt,
                });
            }
            Err(ChargeError::Refused(reason)) => {
                return Ok(Charged::Unpaid {
                    reason,
                    attempts: a.attempt,
                });
            }
            Err(ChargeError::Transient(reason)) if tries >= policy.max_attempts => {
                return Ok(Charged::Unpaid {
                    reason,
                    attempts: a.attempt,
                });
            }
            Err(ChargeError::Transient(_)) => tokio::time::sleep(policy.backoff(tries)).await,
        }
    }
}

/// Charge every finalized, unpaid invoice of a charging mode, `concurrency` at a time.
pub async fn charge_due(
    app: &App,
    ctx: &Ctx,
    providers: &Providers<'_>,
    policy: RetryPolicy,
    concurrency: usize,
) -> Result<Vec<(u64, Charged)>, Error> {
    let book = crate::billing::book(app).await?;
    let due: Vec<u64> = book
        .invoices
        .iter()
        .filter(|(_, e)| e.mode.charges() && e.paid_by.is_none() && e.total > e.credited)
        .map(|(n, _)| *n)
        .collect();
    let mut out = Vec::with_capacity(due.len());
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut jobs = Vec::with_capacity(due.len());
    for seq in due {
        let sem = sem.clone();
        jobs.push(async move {
            let _permit = sem.acquire().await.expect("semaphore open");
            (seq, charge_invoice(app, ctx, providers, policy, seq).await)
        });
    }
    for (seq, r) in crate::billing::join_all(jobs).await {
        out.push((seq, r?));
    }
    Ok(out)
}
