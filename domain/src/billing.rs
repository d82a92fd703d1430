//! Billing (SPEC §5): the rules that turn a tenant's history into money, and the two aggregates
//! that keep what was decided about it.
//!
//! - [`compute_invoice`] is pure arithmetic over a period: the tenant's plan timeline (base fee,
//!   prorated by seconds on an upgrade: the unused part of the old plan credited, the rest of the
//!   new one charged) and its admitted units, each priced at the registry version it was decided
//!   under (`usage.recorded.registry_version`). Money is integer minor units; each line is
//!   rounded half-even once, from exact decimals.
//! - [`BillingAccount`] (the tenant's stream `billing`): the billing mode, `shadow` by default.
//! - [`InvoiceBook`] (the platform stream `invoices`, one per issuer): finalized invoices with
//!   gapless numbers, payment attempts and their outcomes (an invoice is paid at most once), and
//!   credit notes (the only way to correct a finalized invoice).
//! - [`ReconciliationEvent`]: the result of a reconciliation run, a fact with no decision.

use crate::TenantId;
use crate::aggregate::{Aggregate, DomainEvent, EventDecodeError};
use crate::plans::{Decimal, PlanRegistry, Registry};
use crate::quota::{Meter, Period};
use crate::tenant::{Plan, TenantEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::{Duration, OffsetDateTime};

/// The tenant stream that holds the billing mode.
pub const ACCOUNT_STREAM: &str = "billing";
/// The platform stream of finalized invoices, payments and credit notes (one issuer).
pub const BOOK_STREAM: &str = "invoices";
/// The platform stream of reconciliation results.
pub const RECONCILIATION_STREAM: &str = "reconciliations";
/// The issuer whose invoice numbers are one gapless sequence.
pub const ISSUER: &str = "TEN";
/// How long an invoice stays a draft after its period ends (late usage).
pub const INVOICE_GRACE: Duration = Duration::hours(24);
/// Minor units per major unit are `10^MINOR_EXPONENT` (USD cents).
pub const MINOR_EXPONENT: u8 = 2;

/// `shadow` (computed, never charged), `active_test` (charged in the provider's test mode),
/// `active_live`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BillingMode {
    #[default]
    Shadow,
    ActiveTest,
    ActiveLive,
}

impl BillingMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "shadow" => Some(Self::Shadow),
            "active_test" => Some(Self::ActiveTest),
            "active_live" => Some(Self::ActiveLive),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Shadow => "shadow",
            Self::ActiveTest => "active_test",
            Self::ActiveLive => "active_live",
        }
    }

    pub fn charges(self) -> bool {
        self != Self::Shadow
    }
}

// ---------------------------------------------------------------------------------------------
// Invoice computation
// ---------------------------------------------------------------------------------------------

/// The plan in force from an instant on (until the next change).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanSpan {
    pub from: OffsetDateTime,
    pub plan: Plan,
}

/// The tenant's plans over time, from its events: sign-up, upgrades at once, downgrades at the
/// instant they were scheduled for (unless replaced before it).
pub fn plan_timeline<'a>(events: impl IntoIterator<Item = &'a TenantEvent>) -> Vec<PlanSpan> {
    let mut spans: Vec<PlanSpan> = Vec::new();
    let mut pending: Option<PlanSpan> = None;
    let push = |spans: &mut Vec<PlanSpan>, s: PlanSpan| {
        spans.retain(|x| x.from < s.from);
        spans.push(s);
    };
    for e in events {
        match e {
            TenantEvent::SignedUp(s) => push(
                &mut spans,
                PlanSpan {
                    from: s.at,
                    plan: s.plan,
                },
            ),
            TenantEvent::PlanChanged(c) => {
                if let Some(p) = pending.take().filter(|p| p.from <= c.at) {
                    push(&mut spans, p);
                }
                push(
                    &mut spans,
                    PlanSpan {
                        from: c.at,
                        plan: c.to,
                    },
                );
            }
            TenantEvent::PlanChangeScheduled(s) => {
                if let Some(p) = pending.take().filter(|p| p.from <= s.effective_at) {
                    push(&mut spans, p);
                }
                pending = Some(PlanSpan {
                    from: s.effective_at,
                    plan: s.to,
                });
            }
            _ => {}
        }
    }
    if let Some(p) = pending {
        push(&mut spans, p);
    }
    spans
}

/// One admitted record of units, as `usage.recorded` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitRecord {
    pub meter: Meter,
    pub units: u64,
    /// Units used in the period after this record, and the limit it was decided against.
    pub used: u64,
    pub limit: u64,
    pub plan: Plan,
    /// `None` in v1 events: decided under the defaults, version 1 (ADR 010).
    pub registry_version: Option<u32>,
    pub occurred_at: OffsetDateTime,
}

impl UnitRecord {
    /// Many records of one meter, registry version and plan, summed: `units` in all, `overage`
    /// of them past their limits (what a read model keeps instead of each record).
    pub fn summed(
        meter: Meter,
        plan: Plan,
        registry_version: u32,
        units: u64,
        overage: u64,
        occurred_at: OffsetDateTime,
    ) -> Self {
        Self {
            meter,
            units,
            used: overage.min(units),
            limit: 0,
            plan,
            registry_version: Some(registry_version),
            occurred_at,
        }
    }

    /// The units of this record past the limit it was decided against.
    pub fn overage(&self) -> u64 {
        self.units.min(self.used.saturating_sub(self.limit))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    BaseFee,
    ProrationCredit,
    ProratedFee,
    Overage,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    pub kind: LineKind,
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<Meter>,
    /// Units (overage), or seconds of the period (prorated fees).
    pub quantity: u64,
    /// The price of one unit, or of the whole period for a fee.
    pub unit_price: Decimal,
    /// The seconds the period has (prorated fees only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub of_seconds: Option<u64>,
    pub registry_version: u32,
    /// Minor units, negative for a credit; rounded half-even once.
    pub amount: i64,
}

/// An invoice as computed (a draft, or the content of a finalized one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub tenant: TenantId,
    pub period: Period,
    pub currency: String,
    pub lines: Vec<InvoiceLine>,
    /// Units used per meter in the period (what reconciliation compares with the rollups).
    pub quantities: BTreeMap<Meter, u64>,
    /// Minor units.
    pub total: i64,
}

/// `price × num / den` in minor units, rounded half-even once, exactly.
pub fn prorated_minor(price: Decimal, num: u64, den: u64) -> i64 {
    let (m, scale) = price.times(num);
    let exp = u32::from(MINOR_EXPONENT);
    let s = u32::from(scale);
    // value in minor units = m × 10^exp / (10^scale × den)
    let (n, d) = if s >= exp {
        (m, 10u128.pow(s - exp) * u128::from(den))
    } else {
        (m * 10u128.pow(exp - s), u128::from(den))
    };
    let (q, r) = (n / d, n % d);
    let q = match (2 * r).cmp(&d) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q % 2),
    };
    i64::try_from(q).expect("an invoice line fits in i64 minor units")
}

fn seconds(a: OffsetDateTime, b: OffsetDateTime) -> u64 {
    u64::try_from((b - a).whole_seconds()).unwrap_or(0)
}

fn registry_at(registry: &PlanRegistry, t: OffsetDateTime) -> Registry {
    registry.in_force(t).unwrap_or_default()
}

/// The invoice of `tenant` for `period`: base fees from the plan `timeline` (prorated by seconds
/// on an upgrade), overage from the admitted `units` at the price of each unit's registry
/// version. `until` cuts a preview at "now" (units after it are ignored; fees are the period's).
pub fn compute_invoice(
    tenant: TenantId,
    period: Period,
    timeline: &[PlanSpan],
    units: &[UnitRecord],
    registry: &PlanRegistry,
) -> Invoice {
    let (start, end) = (period.start(), period.end());
    let whole = seconds(start, end);
    let mut lines = Vec::new();
    // The plan in force at the period's start (the last span that began before it), then each
    // change inside the period.
    let at_start = timeline.iter().rev().find(|s| s.from <= start).copied();
    let mut current: Option<(Plan, Registry)> = None;
    if let Some(s) = at_start {
        let reg = registry_at(registry, start);
        let def = reg.get(s.plan);
        if def.base_price != Decimal::ZERO {
            lines.push(InvoiceLine {
                kind: LineKind::BaseFee,
                description: format!("{} plan, {period}", s.plan.as_str()),
                plan: Some(s.plan),
                meter: None,
                quantity: 1,
                unit_price: def.base_price,
                of_seconds: None,
                registry_version: reg.version(),
                amount: prorated_minor(def.base_price, 1, 1),
            });
        }
        current = Some((s.plan, reg));
    }
    for s in timeline.iter().filter(|s| s.from > start && s.from < end) {
        let left = seconds(s.from, end);
        if let Some((old, reg)) = &current {
            if *old == s.plan {
                continue;
            }
            let def = reg.get(*old);
            if def.base_price != Decimal::ZERO {
                lines.push(InvoiceLine {
                    kind: LineKind::ProrationCredit,
                    description: format!("unused {} plan from {}", old.as_str(), rfc3339(s.from)),
                    plan: Some(*old),
                    meter: None,
                    quantity: left,
                    unit_price: def.base_price,
                    of_seconds: Some(whole),
                    registry_version: reg.version(),
                    amount: -prorated_minor(def.base_price, left, whole),
                });
            }
        }
        let reg = registry_at(registry, s.from);
        let def = reg.get(s.plan);
        if def.base_price != Decimal::ZERO {
            lines.push(InvoiceLine {
                kind: LineKind::ProratedFee,
                description: format!("{} plan from {}", s.plan.as_str(), rfc3339(s.from)),
                plan: Some(s.plan),
                meter: None,
                quantity: left,
                unit_price: def.base_price,
                of_seconds: Some(whole),
                registry_version: reg.version(),
                amount: prorated_minor(def.base_price, left, whole),
            });
        }
        current = Some((s.plan, reg));
    }
    // Overage: one line per meter, registry version and price; each rounded once.
    let mut quantities: BTreeMap<Meter, u64> = Meter::ALL.iter().map(|m| (*m, 0)).collect();
    let mut overage: BTreeMap<(Meter, u32, &'static str), (Plan, u64)> = BTreeMap::new();
    for u in units
        .iter()
        .filter(|u| u.occurred_at >= start && u.occurred_at < end)
    {
        *quantities.entry(u.meter).or_default() += u.units;
        let over = u.overage();
        if over > 0 {
            overage
                .entry((u.meter, u.registry_version.unwrap_or(1), u.plan.as_str()))
                .or_insert((u.plan, 0))
                .1 += over;
        }
    }
    let mut by_price: BTreeMap<(Meter, u32, String), (u64, Decimal)> = BTreeMap::new();
    for ((meter, version, _), (plan, n)) in overage {
        let reg = registry
            .version(version)
            .unwrap_or_else(|| registry_at(registry, start));
        let price = reg.get(plan).overage_price(meter);
        if price == Decimal::ZERO {
            continue;
        }
        let e = by_price
            .entry((meter, version, price.to_string()))
            .or_insert((0, price));
        e.0 += n;
    }
    for ((meter, version, _), (n, price)) in by_price {
        lines.push(InvoiceLine {
            kind: LineKind::Overage,
            description: format!("{meter} overage at {price} (registry v{version})"),
            plan: None,
            meter: Some(meter),
            quantity: n,
            unit_price: price,
            of_seconds: None,
            registry_version: version,
            amount: prorated_minor(price, n, 1),
        });
    }
    let currency = current
        .map(|(p, reg)| reg.get(p).currency.clone())
        .unwrap_or_else(|| "USD".into());
    let total = lines.iter().map(|l| l.amount).sum();
    Invoice {
        tenant,
        period,
        currency,
        lines,
        quantities,
        total,
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Minor units as a decimal string: `-1234` → `-12.34`.
pub fn format_minor(amount: i64) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    let a = amount.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

// ---------------------------------------------------------------------------------------------
// The billing account (tenant stream `billing`)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountCommand {
    SetMode { mode: BillingMode, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModeChanged {
    pub from: BillingMode,
    pub to: BillingMode,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountEvent {
    ModeChanged(ModeChanged),
}

impl AccountEvent {
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] = &[("billing.mode_changed", 1)];
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> &'static str {
        "billing.mode_changed"
    }
    fn to_payload(&self) -> serde_json::Value {
        match self {
            AccountEvent::ModeChanged(e) => serde_json::to_value(e).expect("serializes"),
        }
    }
    fn from_stored(t: &str, v: u16, payload: &[u8]) -> Result<Self, EventDecodeError> {
        match (t, v) {
            ("billing.mode_changed", 1) => Ok(AccountEvent::ModeChanged(EventDecodeError::parse(
                t, payload,
            )?)),
            _ => Err(EventDecodeError::UnknownType {
                event_type: t.to_owned(),
                schema_version: v,
            }),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BillingError {
    #[error("billing is already {0}")]
    SameMode(&'static str),
    #[error("a reason is required (1 to 500 characters)")]
    Reason,
    #[error("period {period} is still open or in its 24-hour invoice grace until {until}")]
    TooEarly { period: String, until: String },
    #[error("no invoice numbered {0}")]
    UnknownInvoice(String),
    #[error("invoice {0} is a shadow invoice and is never charged")]
    Shadow(String),
    #[error("invoice {0} is already paid")]
    AlreadyPaid(String),
    #[error("invoice {0} has nothing to charge")]
    NothingToCharge(String),
    #[error(
        "invoice {invoice} was already paid by charge {paid}; {other} would be a second charge"
    )]
    DoubleCharge {
        invoice: String,
        paid: String,
        other: String,
    },
    #[error(
        "a credit note of {amount} exceeds what is left to credit on invoice {invoice} ({left})"
    )]
    CreditTooLarge {
        invoice: String,
        amount: i64,
        left: i64,
    },
}

/// The tenant's billing mode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingAccount {
    pub mode: BillingMode,
}

impl Aggregate for BillingAccount {
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = BillingError;

    fn decide(
        &self,
        command: &AccountCommand,
        now: OffsetDateTime,
    ) -> Result<Vec<AccountEvent>, BillingError> {
        let AccountCommand::SetMode { mode, reason } = command;
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 500 {
            return Err(BillingError::Reason);
        }
        if *mode == self.mode {
            return Err(BillingError::SameMode(mode.as_str()));
        }
        Ok(vec![AccountEvent::ModeChanged(ModeChanged {
            from: self.mode,
            to: *mode,
            reason: reason.to_owned(),
            at: now,
        })])
    }

    fn evolve(&mut self, event: &AccountEvent) {
        let AccountEvent::ModeChanged(e) = event;
        self.mode = e.to;
    }
}

// ---------------------------------------------------------------------------------------------
// The invoice book (platform stream `invoices`)
// ---------------------------------------------------------------------------------------------

/// `TEN-000042`.
pub fn invoice_number(n: u64) -> String {
    format!("{ISSUER}-{n:06}")
}

/// `TEN-CN-000007`.
pub fn credit_note_number(n: u64) -> String {
    format!("{ISSUER}-CN-{n:06}")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BookCommand {
    /// Finalize `invoice` (computed from the log at `now`) under the tenant's `mode`. Nothing
    /// happens when the tenant's period already has one.
    Finalize { invoice: Invoice, mode: BillingMode },
    /// [`BookCommand::Finalize`] for many tenants at once (one decision, consecutive numbers).
    FinalizeMany(Vec<(Invoice, BillingMode)>),
    /// Begin a payment attempt of invoice `number`.
    StartAttempt { number: u64 },
    /// Record what the provider said about an attempt.
    SettleAttempt {
        number: u64,
        attempt: u32,
        outcome: AttemptOutcome,
    },
    IssueCreditNote {
        number: u64,
        amount: i64,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AttemptOutcome {
    Succeeded { charge_id: String },
    Failed { reason: String, retryable: bool },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceFinalized {
    pub number: String,
    pub seq: u64,
    pub issuer: String,
    pub mode: BillingMode,
    #[serde(flatten)]
    pub invoice: Invoice,
    #[serde(with = "time::serde::rfc3339")]
    pub finalized_at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentAttempted {
    pub number: String,
    pub seq: u64,
    pub attempt: u32,
    /// The key every attempt of this invoice sends: the provider charges it once.
    pub idempotency_key: String,
    pub amount: i64,
    pub currency: String,
    pub mode: BillingMode,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentSucceeded {
    pub number: String,
    pub seq: u64,
    pub attempt: u32,
    pub charge_id: String,
    pub amount: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub number: String,
    pub seq: u64,
    pub attempt: u32,
    pub reason: String,
    pub retryable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditNoteIssued {
    pub number: String,
    pub seq: u64,
    pub invoice_number: String,
    pub invoice_seq: u64,
    pub tenant: TenantId,
    pub amount: i64,
    pub currency: String,
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BookEvent {
    Finalized(Box<InvoiceFinalized>),
    Attempted(PaymentAttempted),
    Succeeded(PaymentSucceeded),
    Failed(PaymentFailed),
    CreditNote(CreditNoteIssued),
}

impl BookEvent {
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] = &[
        ("invoice.finalized", 1),
        ("payment.attempted", 1),
        ("payment.succeeded", 1),
        ("payment.failed", 1),
        ("credit_note.issued", 1),
    ];
}

impl DomainEvent for BookEvent {
    fn event_type(&self) -> &'static str {
        match self {
            BookEvent::Finalized(_) => "invoice.finalized",
            BookEvent::Attempted(_) => "payment.attempted",
            BookEvent::Succeeded(_) => "payment.succeeded",
            BookEvent::Failed(_) => "payment.failed",
            BookEvent::CreditNote(_) => "credit_note.issued",
        }
    }
    fn to_payload(&self) -> serde_json::Value {
        match self {
            BookEvent::Finalized(e) => serde_json::to_value(e),
            BookEvent::Attempted(e) => serde_json::to_value(e),
            BookEvent::Succeeded(e) => serde_json::to_value(e),
            BookEvent::Failed(e) => serde_json::to_value(e),
            BookEvent::CreditNote(e) => serde_json::to_value(e),
        }
        .expect("book events serialize")
    }
    fn from_stored(t: &str, v: u16, p: &[u8]) -> Result<Self, EventDecodeError> {
        Ok(match (t, v) {
            ("invoice.finalized", 1) => {
                BookEvent::Finalized(Box::new(EventDecodeError::parse(t, p)?))
            }
            ("payment.attempted", 1) => BookEvent::Attempted(EventDecodeError::parse(t, p)?),
            ("payment.succeeded", 1) => BookEvent::Succeeded(EventDecodeError::parse(t, p)?),
            ("payment.failed", 1) => BookEvent::Failed(EventDecodeError::parse(t, p)?),
            ("credit_note.issued", 1) => BookEvent::CreditNote(EventDecodeError::parse(t, p)?),
            _ => {
                return Err(EventDecodeError::UnknownType {
                    event_type: t.to_owned(),
                    schema_version: v,
                });
            }
        })
    }
}

/// What the book keeps of one finalized invoice (its lines stay in the event).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceEntry {
    pub tenant: TenantId,
    pub period: Period,
    pub mode: BillingMode,
    pub currency: String,
    pub total: i64,
    #[serde(default)]
    pub quantities: BTreeMap<Meter, u64>,
    pub attempts: u32,
    /// The charge that paid it.
    pub paid_by: Option<String>,
    pub credited: i64,
}

/// Every finalized invoice of the issuer, by sequence number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceBook {
    pub invoices: BTreeMap<u64, InvoiceEntry>,
    /// `(tenant, period)` → sequence number, kept as a list for JSON snapshots.
    pub credit_notes: u64,
}

impl InvoiceBook {
    pub fn find(&self, tenant: TenantId, period: Period) -> Option<u64> {
        self.invoices
            .iter()
            .rev()
            .find(|(_, e)| e.tenant == tenant && e.period == period)
            .map(|(n, _)| *n)
    }

    fn entry(&self, n: u64) -> Result<&InvoiceEntry, BillingError> {
        self.invoices
            .get(&n)
            .ok_or_else(|| BillingError::UnknownInvoice(invoice_number(n)))
    }
}

impl Aggregate for InvoiceBook {
    type Command = BookCommand;
    type Event = BookEvent;
    type Error = BillingError;

    fn decide(
        &self,
        command: &BookCommand,
        now: OffsetDateTime,
    ) -> Result<Vec<BookEvent>, BillingError> {
        match command {
            BookCommand::Finalize { invoice, mode } => {
                let until = invoice.period.end() + INVOICE_GRACE;
                if now < until {
                    return Err(BillingError::TooEarly {
                        period: invoice.period.to_string(),
                        until: rfc3339(until),
                    });
                }
                if self.find(invoice.tenant, invoice.period).is_some() {
                    return Ok(vec![]);
                }
                let seq = self.invoices.keys().next_back().map_or(1, |n| n + 1);
                Ok(vec![BookEvent::Finalized(Box::new(InvoiceFinalized {
                    number: invoice_number(seq),
                    seq,
                    issuer: ISSUER.into(),
                    mode: *mode,
                    invoice: invoice.clone(),
                    finalized_at: now,
                }))])
            }
            BookCommand::FinalizeMany(list) => {
                let done: std::collections::HashSet<(TenantId, Period)> = self
                    .invoices
                    .values()
                    .map(|e| (e.tenant, e.period))
                    .collect();
                let mut seq = self.invoices.keys().next_back().copied().unwrap_or(0);
                let mut out = Vec::new();
                let mut seen = std::collections::HashSet::new();
                for (invoice, mode) in list {
                    let until = invoice.period.end() + INVOICE_GRACE;
                    if now < until {
                        return Err(BillingError::TooEarly {
                            period: invoice.period.to_string(),
                            until: rfc3339(until),
                        });
                    }
                    let key = (invoice.tenant, invoice.period);
                    if done.contains(&key) || !seen.insert(key) {
                        continue;
                    }
                    seq += 1;
                    out.push(BookEvent::Finalized(Box::new(InvoiceFinalized {
                        number: invoice_number(seq),
                        seq,
                        issuer: ISSUER.into(),
                        mode: *mode,
                        invoice: invoice.clone(),
                        finalized_at: now,
                    })));
                }
                Ok(out)
            }
            BookCommand::StartAttempt { number } => {
                let e = self.entry(*number)?;
                let name = invoice_number(*number);
                if !e.mode.charges() {
                    return Err(BillingError::Shadow(name));
                }
                if e.paid_by.is_some() {
                    return Err(BillingError::AlreadyPaid(name));
                }
                if e.total - e.credited <= 0 {
                    return Err(BillingError::NothingToCharge(name));
                }
                Ok(vec![BookEvent::Attempted(PaymentAttempted {
                    idempotency_key: format!("tenantry-invoice-{name}"),
                    number: name,
                    seq: *number,
                    attempt: e.attempts + 1,
                    amount: e.total - e.credited,
                    currency: e.currency.clone(),
                    mode: e.mode,
                })])
            }
            BookCommand::SettleAttempt {
                number,
                attempt,
                outcome,
            } => {
                let e = self.entry(*number)?;
                let name = invoice_number(*number);
                match outcome {
                    AttemptOutcome::Succeeded { charge_id } => match &e.paid_by {
                        Some(paid) if paid == charge_id => Ok(vec![]),
                        Some(paid) => Err(BillingError::DoubleCharge {
                            invoice: name,
                            paid: paid.clone(),
                            other: charge_id.clone(),
                        }),
                        None => Ok(vec![BookEvent::Succeeded(PaymentSucceeded {
                            number: name,
                            seq: *number,
                            attempt: *attempt,
                            charge_id: charge_id.clone(),
                            amount: e.total - e.credited,
                        })]),
                    },
                    AttemptOutcome::Failed { reason, retryable } => {
                        Ok(vec![BookEvent::Failed(PaymentFailed {
                            number: name,
                            seq: *number,
                            attempt: *attempt,
                            reason: reason.clone(),
                            retryable: *retryable,
                        })])
                    }
                }
            }
            BookCommand::IssueCreditNote {
                number,
                amount,
                reason,
            } => {
                let e = self.entry(*number)?;
                let reason = reason.trim();
                if reason.is_empty() || reason.chars().count() > 500 {
                    return Err(BillingError::Reason);
                }
                let left = e.total - e.credited;
                if *amount <= 0 || *amount > left {
                    return Err(BillingError::CreditTooLarge {
                        invoice: invoice_number(*number),
                        amount: *amount,
                        left,
                    });
                }
                let seq = self.credit_notes + 1;
                Ok(vec![BookEvent::CreditNote(CreditNoteIssued {
                    number: credit_note_number(seq),
                    seq,
                    invoice_number: invoice_number(*number),
                    invoice_seq: *number,
                    tenant: e.tenant,
                    amount: *amount,
                    currency: e.currency.clone(),
                    reason: reason.to_owned(),
                    at: now,
                })])
            }
        }
    }

    fn evolve(&mut self, event: &BookEvent) {
        match event {
            BookEvent::Finalized(f) => {
                self.invoices.insert(
                    f.seq,
                    InvoiceEntry {
                        tenant: f.invoice.tenant,
                        period: f.invoice.period,
                        mode: f.mode,
                        currency: f.invoice.currency.clone(),
                        total: f.invoice.total,
                        quantities: f.invoice.quantities.clone(),
                        attempts: 0,
                        paid_by: None,
                        credited: 0,
                    },
                );
            }
            BookEvent::Attempted(a) => {
                if let Some(e) = self.invoices.get_mut(&a.seq) {
                    e.attempts = e.attempts.max(a.attempt);
                }
            }
            BookEvent::Succeeded(s) => {
                if let Some(e) = self.invoices.get_mut(&s.seq) {
                    e.paid_by = Some(s.charge_id.clone());
                }
            }
            BookEvent::Failed(_) => {}
            BookEvent::CreditNote(c) => {
                self.credit_notes = self.credit_notes.max(c.seq);
                if let Some(e) = self.invoices.get_mut(&c.invoice_seq) {
                    e.credited += c.amount;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reconciliation results
// ---------------------------------------------------------------------------------------------

/// One difference a reconciliation found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    pub tenant: TenantId,
    pub meter: Meter,
    /// `YYYY-MM-DD` for a day's rollup, `YYYY-MM` for an invoice.
    pub when: String,
    /// `rollup.admitted`, `rollup.blocked`, `invoice.quantity`.
    pub what: String,
    /// What the raw log says.
    pub expected: u64,
    /// What the read model (or the invoice) says.
    pub found: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconciliationCompleted {
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    pub clean: bool,
    pub events_read: u64,
    pub days_checked: u64,
    pub invoices_checked: u64,
    pub differences: Vec<Difference>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReconciliationEvent {
    Completed(ReconciliationCompleted),
}

impl ReconciliationEvent {
    pub const ALL_EVENT_TYPES: &'static [(&'static str, u16)] = &[("reconciliation.completed", 1)];
}

impl DomainEvent for ReconciliationEvent {
    fn event_type(&self) -> &'static str {
        "reconciliation.completed"
    }
    fn to_payload(&self) -> serde_json::Value {
        let ReconciliationEvent::Completed(e) = self;
        serde_json::to_value(e).expect("serializes")
    }
    fn from_stored(t: &str, v: u16, p: &[u8]) -> Result<Self, EventDecodeError> {
        match (t, v) {
            ("reconciliation.completed", 1) => Ok(ReconciliationEvent::Completed(
                EventDecodeError::parse(t, p)?,
            )),
            _ => Err(EventDecodeError::UnknownType {
                event_type: t.to_owned(),
                schema_version: v,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::given;
    use crate::plans::{Publish, defaults};
    use crate::tenant::{PlanChanged, SignedUp, TenantName};
    use time::macros::datetime;
    use uuid::Uuid;

    fn tenant() -> TenantId {
        TenantId::from_uuid(Uuid::from_u128(7))
    }

    fn registry() -> PlanRegistry {
        let mut r = PlanRegistry::default();
        for e in r
            .decide(
                &Publish {
                    plans: defaults(),
                    effective_from: OffsetDateTime::UNIX_EPOCH,
                    source: "defaults".into(),
                },
                OffsetDateTime::UNIX_EPOCH,
            )
            .unwrap()
        {
            r.evolve(&e);
        }
        r
    }

    fn signed_up(at: OffsetDateTime) -> TenantEvent {
        TenantEvent::SignedUp(SignedUp {
            name: TenantName::parse("Acme").unwrap(),
            plan: Plan::Free,
            at,
        })
    }

    fn changed(from: Plan, to: Plan, at: OffsetDateTime) -> TenantEvent {
        TenantEvent::PlanChanged(PlanChanged {
            from,
            to,
            at,
            reason: None,
            registry_version: Some(1),
        })
    }

    fn march() -> Period {
        Period {
            year: 2026,
            month: 3,
        }
    }

    fn unit(meter: Meter, used: u64, limit: u64, plan: Plan, v: u32) -> UnitRecord {
        UnitRecord {
            meter,
            units: 1,
            used,
            limit,
            plan,
            registry_version: Some(v),
            occurred_at: datetime!(2026-03-20 12:00 UTC),
        }
    }

    #[test]
    fn an_upgrade_in_the_middle_of_a_month_is_prorated_to_the_second() {
        // March has 2,678,400 seconds. Pro from the start; Enterprise from 2026-03-16 12:34:56,
        // leaving 1,337,104 seconds.
        let at = datetime!(2026-03-16 12:34:56 UTC);
        let timeline = plan_timeline(&[
            signed_up(datetime!(2026-01-05 10:00 UTC)),
            changed(Plan::Free, Plan::Pro, datetime!(2026-02-01 00:00 UTC)),
            changed(Plan::Pro, Plan::Enterprise, at),
        ]);
        let inv = compute_invoice(tenant(), march(), &timeline, &[], &registry());
        let left = 1_337_104u64;
        assert_eq!((march().end() - at).whole_seconds() as u64, left);
        let amounts: Vec<_> = inv.lines.iter().map(|l| (l.kind, l.amount)).collect();
        // 4900 × 1337104 / 2678400 = 2446.15… → 2446; 49900 × … = 24910.95… → 24911.
        assert_eq!(
            amounts,
            vec![
                (LineKind::BaseFee, 4_900),
                (LineKind::ProrationCredit, -2_446),
                (LineKind::ProratedFee, 24_911),
            ]
        );
        assert_eq!(inv.total, 4_900 - 2_446 + 24_911);
        // One second later costs (49900 − 4900) / 2678400 of a cent less: the line is exact.
        let inv2 = compute_invoice(
            tenant(),
            march(),
            &plan_timeline(&[
                signed_up(datetime!(2026-01-05 10:00 UTC)),
                changed(Plan::Free, Plan::Pro, datetime!(2026-02-01 00:00 UTC)),
                changed(
                    Plan::Pro,
                    Plan::Enterprise,
                    datetime!(2026-03-31 23:59:59 UTC),
                ),
            ]),
            &[],
            &registry(),
        );
        let last: Vec<_> = inv2.lines.iter().map(|l| l.amount).collect();
        assert_eq!(
            last,
            vec![4_900, 0, 0],
            "one second of Enterprise is 0.019 cents"
        );
    }

    #[test]
    fn a_downgrade_applies_from_the_next_period_and_a_signup_mid_month_pays_nothing_for_free() {
        let timeline = plan_timeline(&[
            signed_up(datetime!(2026-03-10 10:00 UTC)),
            changed(Plan::Free, Plan::Pro, datetime!(2026-03-10 10:00 UTC)),
            TenantEvent::PlanChangeScheduled(crate::tenant::PlanChangeScheduled {
                from: Plan::Pro,
                to: Plan::Free,
                effective_at: march().end(),
                reason: None,
                registry_version: Some(1),
            }),
        ]);
        let inv = compute_invoice(tenant(), march(), &timeline, &[], &registry());
        assert_eq!(inv.lines.len(), 1);
        assert_eq!(inv.lines[0].kind, LineKind::ProratedFee);
        let april = compute_invoice(tenant(), march().next(), &timeline, &[], &registry());
        assert_eq!(april.total, 0, "Free from April on");
    }

    #[test]
    fn a_month_with_a_registry_price_change_prices_each_unit_at_its_version() {
        // Version 2 (from 2026-03-15) charges 0.003 per query past the limit.
        let mut reg = registry();
        let mut plans = defaults();
        plans[1].overage.queries = "0.003".parse().unwrap();
        for e in reg
            .decide(
                &Publish {
                    plans,
                    effective_from: datetime!(2026-03-15 00:00 UTC),
                    source: "settings".into(),
                },
                datetime!(2026-03-15 00:00 UTC),
            )
            .unwrap()
        {
            reg.evolve(&e);
        }
        let timeline = plan_timeline(&[
            signed_up(datetime!(2026-01-05 10:00 UTC)),
            changed(Plan::Free, Plan::Pro, datetime!(2026-01-05 11:00 UTC)),
        ]);
        // 20,000 included; 1,001 over under v1 and 1,001 over under v2.
        let mut units = vec![UnitRecord {
            units: 21_001,
            used: 21_001,
            ..unit(Meter::Queries, 0, 20_000, Plan::Pro, 1)
        }];
        for i in 0..1_001 {
            units.push(unit(Meter::Queries, 21_002 + i, 20_000, Plan::Pro, 2));
        }
        let inv = compute_invoice(tenant(), march(), &timeline, &units, &reg);
        let over: Vec<_> = inv
            .lines
            .iter()
            .filter(|l| l.kind == LineKind::Overage)
            .map(|l| {
                (
                    l.registry_version,
                    l.quantity,
                    l.unit_price.to_string(),
                    l.amount,
                )
            })
            .collect();
        // 1001 × 0.002 = 2.002 → 200; 1001 × 0.003 = 3.003 → 300 (each rounded once).
        assert_eq!(
            over,
            vec![
                (1, 1_001, "0.002".into(), 200),
                (2, 1_001, "0.003".into(), 300)
            ]
        );
        assert_eq!(inv.quantities[&Meter::Queries], 22_002);
        assert_eq!(inv.total, 4_900 + 200 + 300);
    }

    #[test]
    fn lines_are_rounded_half_even_once_not_per_unit() {
        // 1,234 units at 0.002 = 2.468 → 247; per unit each 0.2 cents would round to 0.
        assert_eq!(prorated_minor("0.002".parse().unwrap(), 1_234, 1), 247);
        assert_eq!(prorated_minor("0.125".parse().unwrap(), 1, 1), 12);
        assert_eq!(prorated_minor("0.135".parse().unwrap(), 1, 1), 14);
        assert_eq!(prorated_minor("49.00".parse().unwrap(), 1, 2), 2_450);
        assert_eq!(format_minor(-1_234), "-12.34");
        assert_eq!(format_minor(5), "0.05");
    }

    fn draft(total: i64) -> Invoice {
        Invoice {
            tenant: tenant(),
            period: march(),
            currency: "USD".into(),
            lines: vec![],
            quantities: BTreeMap::new(),
            total,
        }
    }

    fn finalized(seq: u64, total: i64, mode: BillingMode, at: OffsetDateTime) -> BookEvent {
        BookEvent::Finalized(Box::new(InvoiceFinalized {
            number: invoice_number(seq),
            seq,
            issuer: ISSUER.into(),
            mode,
            invoice: draft(total),
            finalized_at: at,
        }))
    }

    #[test]
    fn an_invoice_stays_a_draft_for_24_hours_after_its_period_and_a_late_unit_counts() {
        let end = march().end();
        let book = InvoiceBook::default();
        let err = book
            .decide(
                &BookCommand::Finalize {
                    invoice: draft(4_900),
                    mode: BillingMode::Shadow,
                },
                end + Duration::hours(23) + Duration::minutes(59),
            )
            .unwrap_err();
        assert!(matches!(err, BillingError::TooEarly { .. }));
        // A unit decided on the period's last second and appended 23 hours later is still in
        // the draft computed at finalization (occurred_at decides, not the append time).
        let timeline = plan_timeline(&[
            signed_up(datetime!(2026-01-05 10:00 UTC)),
            changed(Plan::Free, Plan::Pro, datetime!(2026-01-05 11:00 UTC)),
        ]);
        let late = UnitRecord {
            occurred_at: end - Duration::seconds(1),
            ..unit(Meter::Exports, 1_001, 1_000, Plan::Pro, 1)
        };
        let after = UnitRecord {
            occurred_at: end,
            ..late
        };
        let inv = compute_invoice(tenant(), march(), &timeline, &[late, after], &registry());
        assert_eq!(inv.quantities[&Meter::Exports], 1);
        assert_eq!(inv.total, 4_900 + 10);
        let at = end + INVOICE_GRACE;
        let events = book
            .decide(
                &BookCommand::Finalize {
                    invoice: inv.clone(),
                    mode: BillingMode::Shadow,
                },
                at,
            )
            .unwrap();
        assert!(matches!(&events[..], [BookEvent::Finalized(f)] if f.number == "TEN-000001"));
        // Finalized is never changed: finalizing the period again does nothing.
        let mut book = book;
        book.evolve(&events[0]);
        assert_eq!(
            book.decide(
                &BookCommand::Finalize {
                    invoice: draft(1),
                    mode: BillingMode::Shadow
                },
                at
            ),
            Ok(vec![])
        );
    }

    #[test]
    fn invoice_numbers_are_gapless_per_issuer() {
        let at = march().end() + INVOICE_GRACE;
        let mut book = InvoiceBook::default();
        for i in 0..5u128 {
            let inv = Invoice {
                tenant: TenantId::from_uuid(Uuid::from_u128(100 + i)),
                ..draft(100)
            };
            for e in book
                .decide(
                    &BookCommand::Finalize {
                        invoice: inv,
                        mode: BillingMode::ActiveTest,
                    },
                    at,
                )
                .unwrap()
            {
                book.evolve(&e);
            }
        }
        assert_eq!(
            book.invoices.keys().copied().collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        // Many at once continue the sequence, skipping what is already final.
        let many: Vec<_> = (3..8u128)
            .map(|i| {
                let inv = Invoice {
                    tenant: TenantId::from_uuid(Uuid::from_u128(100 + i)),
                    ..draft(100)
                };
                (inv, BillingMode::Shadow)
            })
            .collect();
        let events = book.decide(&BookCommand::FinalizeMany(many), at).unwrap();
        let numbers: Vec<_> = events
            .iter()
            .map(|e| match e {
                BookEvent::Finalized(f) => f.number.clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(numbers, ["TEN-000006", "TEN-000007", "TEN-000008"]);
    }

    #[test]
    fn credit_notes_correct_a_finalized_invoice_and_never_exceed_it() {
        let at = march().end() + INVOICE_GRACE;
        let f = finalized(1, 4_900, BillingMode::ActiveTest, at);
        let note = |amount| BookCommand::IssueCreditNote {
            number: 1,
            amount,
            reason: "late unit double counted".into(),
        };
        let state =
            given::<InvoiceBook>([f.clone()])
                .when(note(1_000))
                .then([BookEvent::CreditNote(CreditNoteIssued {
                    number: "TEN-CN-000001".into(),
                    seq: 1,
                    invoice_number: "TEN-000001".into(),
                    invoice_seq: 1,
                    tenant: tenant(),
                    amount: 1_000,
                    currency: "USD".into(),
                    reason: "late unit double counted".into(),
                    at: crate::aggregate::testing::test_now(),
                })]);
        assert_eq!(state.invoices[&1].credited, 1_000);
        assert_eq!(
            state.invoices[&1].total, 4_900,
            "the invoice itself never changes"
        );
        let next = state.decide(&note(3_901), at).unwrap_err();
        assert_eq!(
            next,
            BillingError::CreditTooLarge {
                invoice: "TEN-000001".into(),
                amount: 3_901,
                left: 3_900
            }
        );
        // The charge asks for what is left after credits.
        let ev = state
            .decide(&BookCommand::StartAttempt { number: 1 }, at)
            .unwrap();
        assert!(matches!(&ev[..], [BookEvent::Attempted(a)] if a.amount == 3_900));
    }

    #[test]
    fn an_invoice_is_paid_once_and_a_second_charge_is_refused() {
        let at = march().end() + INVOICE_GRACE;
        let f = finalized(1, 4_900, BillingMode::ActiveLive, at);
        let ok = |id: &str| BookCommand::SettleAttempt {
            number: 1,
            attempt: 1,
            outcome: AttemptOutcome::Succeeded {
                charge_id: id.into(),
            },
        };
        let paid = given::<InvoiceBook>([f.clone()])
            .when(ok("ch_1"))
            .then([BookEvent::Succeeded(PaymentSucceeded {
                number: "TEN-000001".into(),
                seq: 1,
                attempt: 1,
                charge_id: "ch_1".into(),
                amount: 4_900,
            })]);
        assert_eq!(
            paid.decide(&ok("ch_1"), at),
            Ok(vec![]),
            "a replay is no news"
        );
        assert!(matches!(
            paid.decide(&ok("ch_2"), at),
            Err(BillingError::DoubleCharge { .. })
        ));
        assert_eq!(
            paid.decide(&BookCommand::StartAttempt { number: 1 }, at),
            Err(BillingError::AlreadyPaid("TEN-000001".into()))
        );
        given::<InvoiceBook>([finalized(1, 4_900, BillingMode::Shadow, at)])
            .when(BookCommand::StartAttempt { number: 1 })
            .then_err(BillingError::Shadow("TEN-000001".into()));
    }

    #[test]
    fn the_billing_mode_changes_with_a_reason() {
        given::<BillingAccount>([])
            .when(AccountCommand::SetMode {
                mode: BillingMode::Shadow,
                reason: "x".into(),
            })
            .then_err(BillingError::SameMode("shadow"));
        given::<BillingAccount>([])
            .when(AccountCommand::SetMode {
                mode: BillingMode::ActiveTest,
                reason: " ".into(),
            })
            .then_err(BillingError::Reason);
        let s = given::<BillingAccount>([])
            .when(AccountCommand::SetMode {
                mode: BillingMode::ActiveTest,
                reason: "pilot".into(),
            })
            .then([AccountEvent::ModeChanged(ModeChanged {
                from: BillingMode::Shadow,
                to: BillingMode::ActiveTest,
                reason: "pilot".into(),
                at: crate::aggregate::testing::test_now(),
            })]);
        assert_eq!(s.mode, BillingMode::ActiveTest);
    }

    #[test]
    fn every_billing_event_type_round_trips_and_is_catalogued() {
        let at = march().end() + INVOICE_GRACE;
        let book = [
            finalized(1, 10, BillingMode::ActiveTest, at),
            BookEvent::Attempted(PaymentAttempted {
                number: "TEN-000001".into(),
                seq: 1,
                attempt: 1,
                idempotency_key: "k".into(),
                amount: 10,
                currency: "USD".into(),
                mode: BillingMode::ActiveTest,
            }),
            BookEvent::Succeeded(PaymentSucceeded {
                number: "TEN-000001".into(),
                seq: 1,
                attempt: 1,
                charge_id: "ch".into(),
                amount: 10,
            }),
            BookEvent::Failed(PaymentFailed {
                number: "TEN-000001".into(),
                seq: 1,
                attempt: 1,
                reason: "card_declined".into(),
                retryable: false,
            }),
            BookEvent::CreditNote(CreditNoteIssued {
                number: "TEN-CN-000001".into(),
                seq: 1,
                invoice_number: "TEN-000001".into(),
                invoice_seq: 1,
                tenant: tenant(),
                amount: 1,
                currency: "USD".into(),
                reason: "r".into(),
                at,
            }),
        ];
        let kinds: Vec<_> = book.iter().map(|e| (e.event_type(), 1)).collect();
        assert_eq!(kinds, BookEvent::ALL_EVENT_TYPES);
        for e in book {
            let bytes = serde_json::to_vec(&e.to_payload()).unwrap();
            assert_eq!(
                BookEvent::from_stored(e.event_type(), 1, &bytes).unwrap(),
                e
            );
        }
        let r = ReconciliationEvent::Completed(ReconciliationCompleted {
            from: at,
            to: at,
            clean: true,
            events_read: 0,
            days_checked: 0,
            invoices_checked: 0,
            differences: vec![],
        });
        let bytes = serde_json::to_vec(&r.to_payload()).unwrap();
        assert_eq!(
            ReconciliationEvent::from_stored("reconciliation.completed", 1, &bytes).unwrap(),
            r
        );
    }
}
