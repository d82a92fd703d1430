//! Billing routes (SPEC §5, ADR 024): the invoice preview (JSON, or CSV / PDF by `Accept`), a
//! tenant's invoices, the platform's cross-tenant list, billing modes, finalization, credit notes
//! and the reconciliation report. Each handler parses, calls one use case of `app::billing` and
//! answers.

use crate::auth::Caller;
use crate::http::{ReadQuery, Reply, RequestContext, idempotent, json, wait_for};
use crate::problem::Problem;
use crate::server::AppState;
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, web};
use domain::TenantId;
use domain::billing::{BillingMode, Invoice, InvoiceEntry, format_minor};
use domain::quota::Period;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// One line of an invoice.
#[derive(Debug, Serialize, ToSchema)]
pub struct LineDoc {
    /// `base_fee`, `proration_credit`, `prorated_fee` or `overage`.
    kind: String,
    description: String,
    /// Units, or seconds of the period for a prorated fee.
    quantity: u64,
    /// An exact decimal, e.g. `0.002`.
    unit_price: String,
    registry_version: u32,
    /// Minor units (cents), negative for a credit.
    amount_minor: i64,
    /// The amount as a decimal string, e.g. `-24.46`.
    amount: String,
}

/// An invoice: a preview (`status: "draft"`) or a finalized one.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvoiceDoc {
    #[serde(skip_serializing_if = "Option::is_none")]
    number: Option<String>,
    /// `draft`, `finalized`, `paid`.
    status: String,
    /// `shadow`, `active_test` or `active_live`.
    mode: String,
    #[schema(value_type = String, format = Uuid)]
    tenant_id: String,
    tenant_name: String,
    /// `YYYY-MM`.
    period: String,
    currency: String,
    lines: Vec<LineDoc>,
    /// Units used per meter in the period.
    quantities: BTreeMap<String, u64>,
    total_minor: i64,
    total: String,
    /// Credited by credit notes (minor units).
    credited_minor: i64,
}

fn doc(
    invoice: &Invoice,
    name: String,
    number: Option<String>,
    status: &str,
    mode: BillingMode,
    credited: i64,
) -> InvoiceDoc {
    InvoiceDoc {
        number,
        status: status.into(),
        mode: mode.as_str().into(),
        tenant_id: invoice.tenant.to_string(),
        tenant_name: name,
        period: invoice.period.to_string(),
        currency: invoice.currency.clone(),
        lines: invoice
            .lines
            .iter()
            .map(|l| LineDoc {
                kind: serde_json::to_value(l.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                description: l.description.clone(),
                quantity: l.quantity,
                unit_price: l.unit_price.to_string(),
                registry_version: l.registry_version,
                amount_minor: l.amount,
                amount: format_minor(l.amount),
            })
            .collect(),
        quantities: invoice
            .quantities
            .iter()
            .map(|(m, n)| (m.as_str().to_owned(), *n))
            .collect(),
        total_minor: invoice.total,
        total: format_minor(invoice.total),
        credited_minor: credited,
    }
}

/// JSON, or CSV / PDF when the client's `Accept` asks for it.
fn negotiate(req: &HttpRequest, invoice: &Invoice, d: &InvoiceDoc, title: &str) -> Reply {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let file = |content_type: &str, ext: &str, body: Vec<u8>| Reply {
        status: StatusCode::OK,
        content_type: content_type.into(),
        body,
        headers: vec![(
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"invoice-{}-{}.{ext}\"",
                d.number.as_deref().unwrap_or("preview"),
                d.period
            ),
        )],
    };
    if accept.contains("application/pdf") {
        file(
            "application/pdf",
            "pdf",
            app::billing::render::pdf(invoice, &d.tenant_name, title, &d.mode),
        )
    } else if accept.contains("text/csv") {
        file(
            "text/csv; charset=utf-8",
            "csv",
            app::billing::render::csv(invoice).into_bytes(),
        )
    } else {
        Reply::json(StatusCode::OK, d)
    }
}

/// `GET /v1/tenant/invoices/preview`: the open period to date (JSON; `Accept: text/csv` or
/// `application/pdf` for a file).
pub async fn preview(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    q: web::Query<ReadQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = caller.tenant_or_forbidden()?;
    let p = app::billing::preview(&state, tenant, state.clock.now()).await?;
    let d = doc(&p.invoice, p.tenant_name, None, "draft", p.mode, 0);
    let title = format!("Invoice preview (draft) {}", p.invoice.period);
    Ok(negotiate(&req, &p.invoice, &d, &title))
}

/// A finalized invoice in a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvoiceSummary {
    number: String,
    #[schema(value_type = String, format = Uuid)]
    tenant_id: String,
    period: String,
    mode: String,
    /// `finalized` or `paid`.
    status: String,
    currency: String,
    total_minor: i64,
    credited_minor: i64,
    attempts: u32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InvoiceList {
    invoices: Vec<InvoiceSummary>,
}

fn status(e: &InvoiceEntry) -> &'static str {
    if e.paid_by.is_some() {
        "paid"
    } else {
        "finalized"
    }
}

fn summaries(list: Vec<(u64, InvoiceEntry)>) -> InvoiceList {
    InvoiceList {
        invoices: list
            .into_iter()
            .map(|(n, e)| InvoiceSummary {
                number: domain::billing::invoice_number(n),
                tenant_id: e.tenant.to_string(),
                period: e.period.to_string(),
                mode: e.mode.as_str().into(),
                status: status(&e).into(),
                currency: e.currency.clone(),
                total_minor: e.total,
                credited_minor: e.credited,
                attempts: e.attempts,
            })
            .collect(),
    }
}

/// `GET /v1/tenant/invoices`.
pub async fn my_invoices(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<ReadQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = caller.tenant_or_forbidden()?;
    let list = app::billing::list(&state, Some(tenant)).await?;
    Ok(Reply::json(StatusCode::OK, &summaries(list)))
}

/// `GET /v1/tenant/invoices/{number}` (JSON, CSV or PDF by `Accept`).
pub async fn my_invoice(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    q: web::Query<ReadQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let tenant = caller.tenant_or_forbidden()?;
    let (f, entry) = app::billing::invoice(&state, Some(tenant), &path).await?;
    let name = app::billing::tenant_name(&state, tenant);
    let d = doc(
        &f.invoice,
        name,
        Some(f.number.clone()),
        status(&entry),
        f.mode,
        entry.credited,
    );
    let title = format!("Invoice {} ({})", f.number, f.invoice.period);
    Ok(negotiate(&req, &f.invoice, &d, &title))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AllInvoicesQuery {
    /// Only this tenant's invoices.
    #[param(value_type = Option<String>, format = Uuid)]
    tenant_id: Option<String>,
    /// Wait (bounded) until the read models have applied this global position.
    min_position: Option<u64>,
}

/// `GET /v1/invoices`: every tenant's finalized invoices (platform finance and ops).
pub async fn all_invoices(
    state: web::Data<AppState>,
    // The extractor is what authenticates and checks the role (`auth.rs`).
    _caller: Caller,
    query: web::Query<AllInvoicesQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, query.min_position).await?;
    let tenant = match &query.tenant_id {
        Some(raw) => Some(raw.parse::<TenantId>().map_err(|_| {
            Problem::validation(vec![("tenant_id".into(), "must be a UUID".into())])
        })?),
        None => None,
    };
    let list = app::billing::list(&state, tenant).await?;
    Ok(Reply::json(StatusCode::OK, &summaries(list)))
}

/// `PUT /v1/tenants/{tenant_id}/billing-mode`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModeRequest {
    mode: ModeName,
    /// Why (kept in the event), 1 to 500 characters.
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
}

/// A billing mode: `shadow` (computed, never charged), `active_test`, `active_live`.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModeName {
    Shadow,
    ActiveTest,
    ActiveLive,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModeChanged {
    #[schema(value_type = String, format = Uuid)]
    tenant_id: String,
    from: String,
    mode: String,
    global_position: u64,
}

pub async fn set_mode(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    body: web::Bytes,
) -> Reply {
    idempotent(&state, &req, TenantId::PLATFORM, &body, || async {
        let tenant = app::identity::known_tenant(&state, &path)?;
        let dto: ModeRequest = json(&req, &body)?;
        let mode = match dto.mode {
            ModeName::Shadow => BillingMode::Shadow,
            ModeName::ActiveTest => BillingMode::ActiveTest,
            ModeName::ActiveLive => BillingMode::ActiveLive,
        };
        let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
        let set = app::billing::set_mode(&state, &ctx, tenant, mode, dto.reason).await?;
        Ok(Reply::json(
            StatusCode::OK,
            &ModeChanged {
                tenant_id: tenant.to_string(),
                from: set.from.as_str().into(),
                mode: set.to.as_str().into(),
                global_position: set.position,
            },
        ))
    })
    .await
}

/// `POST /v1/ops/invoices/finalize`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinalizeRequest {
    /// `YYYY-MM`, a period that ended at least 24 hours ago.
    #[schema(pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])$")]
    period: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FinalizeReport {
    period: String,
    /// Numbers given now, in order.
    finalized: Vec<String>,
    /// Tenants whose invoice for the period was already final.
    already_final: usize,
    global_position: u64,
}

fn parse_period(raw: &str) -> Option<Period> {
    let (y, m) = raw.split_once('-')?;
    let (year, month) = (y.parse().ok()?, m.parse().ok()?);
    (y.len() == 4 && m.len() == 2 && (1..=12).contains(&month)).then_some(Period { year, month })
}

pub async fn finalize(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Reply {
    idempotent(&state, &req, TenantId::PLATFORM, &body, || async {
        let dto: FinalizeRequest = json(&req, &body)?;
        let period = parse_period(&dto.period).ok_or_else(|| {
            Problem::validation(vec![("period".into(), "must be YYYY-MM".into())])
        })?;
        let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
        let done = app::billing::finalize_period(&state, &ctx, period).await?;
        state.settle(done.position).await;
        Ok(Reply::json(
            StatusCode::OK,
            &FinalizeReport {
                period: period.to_string(),
                finalized: done.finalized,
                already_final: done.already,
                global_position: done.position,
            },
        ))
    })
    .await
}

/// `POST /v1/invoices/{number}/credit-notes`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditNoteRequest {
    /// Minor units (cents), at most what is left to credit on the invoice.
    #[schema(minimum = 1)]
    amount_minor: i64,
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreditNote {
    number: String,
    invoice_number: String,
    amount_minor: i64,
    global_position: u64,
}

pub async fn credit_note(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    body: web::Bytes,
) -> Reply {
    idempotent(&state, &req, TenantId::PLATFORM, &body, || async {
        let dto: CreditNoteRequest = json(&req, &body)?;
        let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
        let (number, position) =
            app::billing::credit_note(&state, &ctx, &path, dto.amount_minor, dto.reason).await?;
        Ok(Reply::json(
            StatusCode::CREATED,
            &CreditNote {
                number,
                invoice_number: path.into_inner(),
                amount_minor: dto.amount_minor,
                global_position: position,
            },
        ))
    })
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReconciliationQuery {
    /// First UTC day, `YYYY-MM-DD`.
    #[param(format = Date)]
    from: String,
    /// The day after the last, `YYYY-MM-DD` (exclusive; not after `from`: an empty range).
    #[param(format = Date)]
    to: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DifferenceDoc {
    #[schema(value_type = String, format = Uuid)]
    tenant_id: String,
    meter: String,
    when: String,
    /// `rollup.admitted`, `rollup.blocked`, `invoice.quantity`, `invoice.rollups`.
    what: String,
    /// What the raw log says.
    expected: u64,
    /// What the read model or the invoice says.
    found: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReconciliationReport {
    from: String,
    to: String,
    clean: bool,
    /// `clean` in words, or how many differences.
    summary: String,
    events_read: u64,
    days_checked: u64,
    invoices_checked: u64,
    differences: Vec<DifferenceDoc>,
    /// Where `reconciliation.completed` was written.
    global_position: u64,
}

fn parse_day(field: &str, raw: &str) -> Result<time::Date, (String, String)> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(raw, &fmt).map_err(|_| (field.to_owned(), "must be YYYY-MM-DD".to_owned()))
}

/// `GET /v1/ops/reconciliation?from=…&to=…`.
pub async fn reconciliation(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    query: web::Query<ReconciliationQuery>,
) -> Result<Reply, Problem> {
    let (from, to) = match (parse_day("from", &query.from), parse_day("to", &query.to)) {
        (Ok(f), Ok(t)) => (f, t),
        (a, b) => {
            return Err(Problem::validation(
                [a.err(), b.err()].into_iter().flatten().collect(),
            ));
        }
    };
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let done = app::billing::reconcile(&state, &ctx, from, to).await?;
    let r = done.report;
    Ok(Reply::json(
        StatusCode::OK,
        &ReconciliationReport {
            from: from.to_string(),
            to: to.to_string(),
            clean: r.clean,
            summary: if r.clean {
                "clean: every rollup and invoice quantity equals the raw log".into()
            } else {
                format!("{} differences", r.differences.len())
            },
            events_read: r.events_read,
            days_checked: r.days_checked,
            invoices_checked: r.invoices_checked,
            differences: r
                .differences
                .into_iter()
                .map(|d| DifferenceDoc {
                    tenant_id: d.tenant.to_string(),
                    meter: d.meter.as_str().into(),
                    when: d.when,
                    what: d.what,
                    expected: d.expected,
                    found: d.found,
                })
                .collect(),
            global_position: done.position,
        },
    ))
}
