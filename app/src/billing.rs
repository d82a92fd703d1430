//! Billing (SPEC §5, ADR 024): the tenant's billing mode, invoice drafts and previews (from the
//! plan timeline in the log and the usage-by-price read model), finalization after the 24-hour
//! invoice grace with gapless numbers, credit notes, lists, and the reconciliation that recomputes
//! usage from the raw log by its own path and lists every difference. Rendering of an invoice as
//! CSV and PDF is in [`render`].

pub mod render;

use crate::{App, Ctx, Error};
use domain::billing::{
    self, AccountCommand, BillingError, BillingMode, BookCommand, BookEvent, Difference, Invoice,
    InvoiceBook, InvoiceEntry, InvoiceFinalized, PlanSpan, ReconciliationCompleted,
    ReconciliationEvent, UnitRecord,
};
use domain::plans::{PlanRegistry, RegistryEvent};
use domain::quota::{Meter, Period, UsageEvent};
use domain::tenant::{self, TenantEvent};
use domain::{Aggregate, DomainEvent, TenantId};
use std::collections::BTreeMap;
use store::{AppendRequest, Expected, NewEvent, RawJson};
use time::{Date, OffsetDateTime};

impl From<BillingError> for Error {
    fn from(e: BillingError) -> Self {
        Error::Billing(e)
    }
}

/// What a mode change did.
#[derive(Clone, Debug)]
pub struct ModeSet {
    pub from: BillingMode,
    pub to: BillingMode,
    pub position: u64,
}

/// Set a tenant's billing mode (platform finance or ops), with a reason.
pub async fn set_mode(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    mode: BillingMode,
    reason: String,
) -> Result<ModeSet, Error> {
    if app.identity.tenant(tenant).is_none() {
        return Err(Error::NotFound(format!("no tenant {tenant}")));
    }
    let done = app
        .billing_accounts
        .execute(
            tenant,
            billing::ACCOUNT_STREAM,
            &AccountCommand::SetMode { mode, reason },
            &ctx.meta,
            ctx.now,
        )
        .await?;
    let position = app.settled(&done.appended).await;
    let from = done
        .events
        .first()
        .map(|billing::AccountEvent::ModeChanged(e)| e.from)
        .unwrap_or(mode);
    Ok(ModeSet {
        from,
        to: mode,
        position,
    })
}

pub async fn mode_of(app: &App, tenant: TenantId) -> Result<BillingMode, Error> {
    let (state, _) = app
        .billing_accounts
        .load(tenant, billing::ACCOUNT_STREAM)
        .await?;
    Ok(state.mode)
}

/// Every registry version in the log.
pub async fn registry(app: &App) -> Result<PlanRegistry, Error> {
    let mut reg = PlanRegistry::default();
    for e in app
        .store
        .read_stream(TenantId::PLATFORM, domain::plans::STREAM, 1, usize::MAX)
        .await?
    {
        let ev = RegistryEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
            .map_err(|x| Error::Decode(x.to_string()))?;
        reg.evolve(&ev);
    }
    Ok(reg)
}

/// The tenant's plans over time, from its own stream.
pub async fn timeline(app: &App, tenant: TenantId) -> Result<Vec<PlanSpan>, Error> {
    let events = app
        .store
        .read_stream(tenant, &tenant::stream_id(tenant), 1, usize::MAX)
        .await?;
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        match e.event_type.as_str() {
            "tenant.signed_up" | "plan.changed" | "plan.change_scheduled" => {
                out.push(
                    TenantEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
                        .map_err(|x| Error::Decode(x.to_string()))?,
                );
            }
            _ => {}
        }
    }
    Ok(billing::plan_timeline(&out))
}

/// A tenant's invoice for `period` as the log says it now (the read models caught up to
/// `min_position` first by the caller when it matters).
pub async fn draft(
    app: &App,
    reg: &PlanRegistry,
    tenant: TenantId,
    period: Period,
) -> Result<Invoice, Error> {
    let timeline = timeline(app, tenant).await?;
    Ok(draft_with(app, reg, tenant, period, &timeline))
}

fn draft_with(
    app: &App,
    reg: &PlanRegistry,
    tenant: TenantId,
    period: Period,
    timeline: &[PlanSpan],
) -> Invoice {
    let units: Vec<UnitRecord> = app
        .rollups
        .priced(tenant, period)
        .into_iter()
        .map(|((_, _, meter, version, plan), p)| {
            UnitRecord::summed(
                meter,
                plan,
                version,
                p.units,
                p.overage,
                period.start().max(p.last_at.unwrap_or(period.start())),
            )
        })
        .collect();
    billing::compute_invoice(tenant, period, timeline, &units, reg)
}

/// The open period to date.
#[derive(Clone, Debug)]
pub struct Preview {
    pub invoice: Invoice,
    pub mode: BillingMode,
    pub tenant_name: String,
    pub as_of: OffsetDateTime,
}

pub async fn preview(app: &App, tenant: TenantId, now: OffsetDateTime) -> Result<Preview, Error> {
    let reg = registry(app).await?;
    let invoice = draft(app, &reg, tenant, Period::of(now)).await?;
    Ok(Preview {
        invoice,
        mode: mode_of(app, tenant).await?,
        tenant_name: tenant_name(app, tenant),
        as_of: now,
    })
}

pub fn tenant_name(app: &App, tenant: TenantId) -> String {
    app.identity
        .tenant(tenant)
        .map_or_else(|| tenant.to_string(), |t| t.name)
}

/// What a finalization run did.
#[derive(Clone, Debug, Default)]
pub struct Finalized {
    pub finalized: Vec<String>,
    pub already: usize,
    pub position: u64,
}

/// Finalize every tenant's invoice for `period` (at least 24 hours after its end). Tenants whose
/// period is already finalized are left as they are.
pub async fn finalize_period(app: &App, ctx: &Ctx, period: Period) -> Result<Finalized, Error> {
    let until = period.end() + billing::INVOICE_GRACE;
    if ctx.now < until {
        return Err(BillingError::TooEarly {
            period: period.to_string(),
            until: until.to_string(),
        }
        .into());
    }
    // Everything appended so far is in the read models before anything is computed.
    let head = app.store.head().await?;
    app.settle(head).await;
    let reg = registry(app).await?;
    let tenants = app.identity.tenant_ids();
    let mut out = Finalized::default();
    // Each chunk of tenants is finalized in one decision of the book (consecutive numbers, one
    // append); the drafts come from read models, without reading a stream.
    for chunk in tenants.chunks(1_000) {
        let mut batch = Vec::with_capacity(chunk.len());
        for t in chunk {
            // A tenant that signed up after the period has no invoice for it (business time:
            // its sign-up's `at`, not when the read model saw it).
            let timeline = app.billing_view.timeline(*t);
            if timeline.first().is_none_or(|s| s.from >= period.end()) {
                continue;
            }
            let invoice = draft_with(app, &reg, *t, period, &timeline);
            batch.push((invoice, app.billing_view.mode(*t)));
        }
        let asked = batch.len();
        let done = app
            .invoices
            .execute(
                TenantId::PLATFORM,
                billing::BOOK_STREAM,
                &BookCommand::FinalizeMany(batch),
                &ctx.meta,
                ctx.now,
            )
            .await?;
        for e in &done.events {
            if let BookEvent::Finalized(f) = e {
                out.finalized.push(f.number.clone());
            }
        }
        out.already += asked - done.events.len();
        out.position = out.position.max(app.committed(&done.appended));
    }
    Ok(out)
}

/// Run futures concurrently on this task and collect their results in order.
pub(crate) async fn join_all<F: std::future::Future>(jobs: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::with_capacity(jobs.len());
    for j in jobs {
        set.push(Box::pin(j));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("every job ran")).collect()
}

/// The invoice book as this instance holds it.
pub async fn book(app: &App) -> Result<InvoiceBook, Error> {
    let (book, _) = app
        .invoices
        .load(TenantId::PLATFORM, billing::BOOK_STREAM)
        .await?;
    Ok(book)
}

/// Finalized invoices, newest first: one tenant's, or every tenant's (`None`).
pub async fn list(app: &App, tenant: Option<TenantId>) -> Result<Vec<(u64, InvoiceEntry)>, Error> {
    let book = book(app).await?;
    Ok(book
        .invoices
        .into_iter()
        .rev()
        .filter(|(_, e)| tenant.is_none_or(|t| t == e.tenant))
        .collect())
}

/// One finalized invoice as it was finalized, with what happened to it since. A tenant sees only
/// its own (another tenant's number is "not found").
pub async fn invoice(
    app: &App,
    tenant: Option<TenantId>,
    number: &str,
) -> Result<(InvoiceFinalized, InvoiceEntry), Error> {
    let not_found = || Error::NotFound(format!("no invoice {number}"));
    let seq: u64 = number
        .strip_prefix(billing::ISSUER)
        .and_then(|s| s.strip_prefix('-'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(not_found)?;
    let book = book(app).await?;
    let entry = book.invoices.get(&seq).cloned().ok_or_else(not_found)?;
    if tenant.is_some_and(|t| t != entry.tenant) {
        return Err(not_found());
    }
    let events = app
        .store
        .read_stream(TenantId::PLATFORM, billing::BOOK_STREAM, 1, usize::MAX)
        .await?;
    for e in events
        .iter()
        .filter(|e| e.event_type == "invoice.finalized")
    {
        if let BookEvent::Finalized(f) =
            BookEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes())
                .map_err(|x| Error::Decode(x.to_string()))?
            && f.seq == seq
        {
            return Ok((*f, entry));
        }
    }
    Err(not_found())
}

/// A credit note against a finalized invoice.
pub async fn credit_note(
    app: &App,
    ctx: &Ctx,
    number: &str,
    amount: i64,
    reason: String,
) -> Result<(String, u64), Error> {
    let (f, _) = invoice(app, None, number).await?;
    let done = app
        .invoices
        .execute(
            TenantId::PLATFORM,
            billing::BOOK_STREAM,
            &BookCommand::IssueCreditNote {
                number: f.seq,
                amount,
                reason,
            },
            &ctx.meta,
            ctx.now,
        )
        .await?;
    let position = app.settled(&done.appended).await;
    match done.events.first() {
        Some(BookEvent::CreditNote(c)) => Ok((c.number.clone(), position)),
        _ => Err(Error::Internal("a credit note decided nothing".into())),
    }
}

/// The reconciliation of `[from, to)` (UTC days), and where its event is.
#[derive(Clone, Debug)]
pub struct Reconciled {
    pub report: ReconciliationCompleted,
    pub position: u64,
}

/// Recount (tenant, meter, day) from the raw log, by its own reading of `usage.*` events (the
/// domain's decoder, not the read model's), and compare with the daily rollups and with every
/// finalized invoice whose period lies in the range. The result is appended as
/// `reconciliation.completed`.
pub async fn reconcile(app: &App, ctx: &Ctx, from: Date, to: Date) -> Result<Reconciled, Error> {
    // An empty range (`to` not after `from`) checks nothing, and says so.
    let to = to.max(from);
    let head = app.store.head().await?;
    if !app.projections.wait_for(head, app.config.read_wait).await {
        return Err(Error::NotCaughtUp { position: head });
    }
    let (counts, events_read) = recount(&app.store, from, to, head).await?;
    let mut report = compare(
        &counts,
        &app.rollups.rows(None, from, to),
        &book(app).await?,
        from,
        to,
    );
    report.events_read = events_read;
    let event = ReconciliationEvent::Completed(report.clone());
    let appended = app
        .store
        .append(AppendRequest {
            tenant_id: TenantId::PLATFORM,
            stream_id: billing::RECONCILIATION_STREAM.into(),
            expected: Expected::Any,
            events: vec![
                NewEvent::new(event.event_type(), RawJson::from_value(&event.to_payload()))
                    .occurred_at(ctx.now),
            ],
            metadata: ctx.meta.clone(),
        })
        .await?;
    let position = app.committed(&Some(appended));
    Ok(Reconciled { report, position })
}

/// Counts per (tenant, meter, UTC day): `(admitted, blocked)`.
pub type Counts = BTreeMap<(TenantId, Meter, Date), (u64, u64)>;

/// Read the whole log up to `head` and count usage by day of `occurred_at` in `[from, to)`.
pub async fn recount(
    store: &store::Store,
    from: Date,
    to: Date,
    head: u64,
) -> Result<(Counts, u64), Error> {
    let mut counts = Counts::new();
    let mut next = 1u64;
    let mut read = 0u64;
    while next <= head {
        let page = store.read_all(next, 20_000).await?;
        let Some(last) = page.last() else { break };
        next = last.global_position + 1;
        for e in &page {
            if e.global_position > head {
                break;
            }
            read += 1;
            if !e.event_type.starts_with("usage.") {
                continue;
            }
            let day = e.occurred_at.to_offset(time::UtcOffset::UTC).date();
            if day < from || day >= to {
                continue;
            }
            match UsageEvent::from_stored(&e.event_type, e.schema_version, e.payload.as_bytes()) {
                Ok(UsageEvent::Recorded(r)) => {
                    counts.entry((e.tenant_id, r.meter, day)).or_default().0 += r.units;
                }
                Ok(UsageEvent::Blocked(b)) => {
                    counts.entry((e.tenant_id, b.meter, day)).or_default().1 += b.attempts;
                }
                Ok(_) => {}
                Err(x) => return Err(Error::Decode(x.to_string())),
            }
        }
    }
    Ok((counts, read))
}

/// Compare the recount with the rollups and the invoices (pure).
pub fn compare(
    counts: &Counts,
    rollups: &[(projections::RollupKey, projections::Rollup)],
    book: &InvoiceBook,
    from: Date,
    to: Date,
) -> ReconciliationCompleted {
    let mut differences = Vec::new();
    let rolled: BTreeMap<_, _> = rollups.iter().map(|(k, v)| (*k, *v)).collect();
    let mut keys: Vec<_> = counts.keys().chain(rolled.keys()).copied().collect();
    keys.sort();
    keys.dedup();
    for key @ (tenant, meter, day) in &keys {
        let (admitted, blocked) = counts.get(key).copied().unwrap_or_default();
        let r = rolled.get(key).copied().unwrap_or_default();
        for (what, expected, found) in [
            ("rollup.admitted", admitted, r.admitted),
            ("rollup.blocked", blocked, r.blocked),
        ] {
            if expected != found {
                differences.push(Difference {
                    tenant: *tenant,
                    meter: *meter,
                    when: day.to_string(),
                    what: what.into(),
                    expected,
                    found,
                });
            }
        }
    }
    let mut invoices_checked = 0;
    for e in book.invoices.values() {
        let (start, end) = (e.period.start().date(), e.period.end().date());
        if start < from || end > to {
            continue;
        }
        invoices_checked += 1;
        for meter in Meter::ALL {
            let expected: u64 = counts
                .range((e.tenant, *meter, start)..(e.tenant, *meter, end))
                .map(|(_, c)| c.0)
                .sum();
            let rolled_sum: u64 = rolled
                .range((e.tenant, *meter, start)..(e.tenant, *meter, end))
                .map(|(_, r)| r.admitted)
                .sum();
            let found = e.quantities.get(meter).copied().unwrap_or(0);
            for (what, exp) in [
                ("invoice.quantity", expected),
                ("invoice.rollups", rolled_sum),
            ] {
                if exp != found {
                    differences.push(Difference {
                        tenant: e.tenant,
                        meter: *meter,
                        when: e.period.to_string(),
                        what: what.into(),
                        expected: exp,
                        found,
                    });
                }
            }
        }
    }
    let days_checked = u64::try_from((to - from).whole_days()).unwrap_or(0);
    ReconciliationCompleted {
        from: from.midnight().assume_utc(),
        to: to.midnight().assume_utc(),
        clean: differences.is_empty(),
        events_read: 0,
        days_checked,
        invoices_checked,
        differences,
    }
}

/// What the nightly billing run is given: when it runs (UTC) and the providers to charge with
/// (`None`: invoices are finalized and reconciled, nothing is charged).
#[derive(Debug)]
pub struct Nightly {
    pub at: time::Time,
    pub providers: Option<(
        std::sync::Arc<dyn crate::payments::PaymentProvider>,
        std::sync::Arc<dyn crate::payments::PaymentProvider>,
    )>,
}

/// One nightly run at `now`: finalize the previous period once its 24-hour grace is over (a
/// period already final is left as it is), charge what is due in a charging mode, and reconcile
/// yesterday (UTC). Each step's failure is logged and the next still runs.
pub async fn nightly_once(app: &App, nightly: &Nightly, now: OffsetDateTime) {
    let ctx = Ctx {
        meta: store::Metadata::actor("system:billing-nightly"),
        now,
        id_seed: None,
    };
    let open = Period::of(now);
    let previous = Period::of(open.start() - time::Duration::seconds(1));
    if now >= previous.end() + billing::INVOICE_GRACE {
        match finalize_period(app, &ctx, previous).await {
            Ok(f) => {
                tracing::info!(period = %previous, finalized = f.finalized.len(), already = f.already, "invoices finalized")
            }
            Err(e) => tracing::error!(error = %e, period = %previous, "invoices not finalized"),
        }
    }
    if let Some((test, live)) = &nightly.providers {
        let providers = crate::payments::Providers {
            test: test.as_ref(),
            live: live.as_ref(),
        };
        match crate::payments::charge_due(
            app,
            &ctx,
            &providers,
            crate::payments::RetryPolicy::default(),
            8,
        )
        .await
        {
            Ok(done) => tracing::info!(invoices = done.len(), "due invoices charged"),
            Err(e) => tracing::error!(error = %e, "due invoices not charged"),
        }
    }
    let today = now.to_offset(time::UtcOffset::UTC).date();
    if let Some(yesterday) = today.previous_day() {
        match reconcile(app, &ctx, yesterday, today).await {
            Ok(r) if r.report.clean => tracing::info!(day = %yesterday, "reconciliation clean"),
            Ok(r) => tracing::error!(
                day = %yesterday,
                differences = r.report.differences.len(),
                "reconciliation found differences"
            ),
            Err(e) => tracing::error!(error = %e, day = %yesterday, "reconciliation not run"),
        }
    }
}

/// Run [`nightly_once`] every day at `nightly.at` (UTC) by the app's clock, until the app goes.
pub fn spawn_nightly(app: &std::sync::Arc<App>, nightly: Nightly) {
    let weak = std::sync::Arc::downgrade(app);
    tokio::spawn(async move {
        loop {
            let Some(app) = weak.upgrade() else { return };
            let now = app.clock.now();
            let today = now.to_offset(time::UtcOffset::UTC).date();
            let mut next = today.with_time(nightly.at).assume_utc();
            if next <= now {
                next += time::Duration::days(1);
            }
            let wait = (next - now)
                .try_into()
                .unwrap_or(std::time::Duration::from_secs(60));
            drop(app);
            tokio::time::sleep(wait).await;
            let Some(app) = weak.upgrade() else { return };
            let now = app.clock.now();
            nightly_once(&app, &nightly, now).await;
        }
    });
}
