//! In-product feedback and its triage (SPEC §7, FAM-101; ADR 029): a member's report is scrubbed
//! by the PII engine *before* its command is built, so no raw text reaches the store; the server
//! attaches diagnostics unless the member opts out; platform support and pm (every tenant) and
//! tenant owners and admins (their own) triage it on a read model.

use crate::{App, Ctx, Error};
use domain::feedback::{
    self, Diagnostics, FeedbackCommand, FeedbackError, Priority, Severity, State, Submitted,
};
use domain::pii::{self, Detector, Method};
use domain::{Flag, TenantId, UserId};
use projections::{FeedbackFilter, FeedbackItem, FeedbackPage};
use std::collections::BTreeMap;
use std::sync::LazyLock;
use uuid::Uuid;

/// The deployment's name in diagnostics: `TENANTRY_ENVIRONMENT`, or `dev`.
static ENVIRONMENT: LazyLock<String> = LazyLock::new(|| {
    std::env::var("TENANTRY_ENVIRONMENT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "dev".to_owned())
});

/// The largest page of the board.
pub const MAX_PAGE: usize = 500;

impl From<FeedbackError> for Error {
    fn from(e: FeedbackError) -> Self {
        match e {
            FeedbackError::Invalid { field, reason } => Error::field(field, reason),
            FeedbackError::NotFound => Error::NotFound("no such feedback".into()),
            FeedbackError::AlreadySubmitted => Error::Conflict {
                slug: "feedback-exists",
                detail: e.to_string(),
            },
            FeedbackError::InvalidTransition { .. } => Error::Conflict {
                slug: "invalid-transition",
                detail: e.to_string(),
            },
        }
    }
}

/// What a member sends.
#[derive(Clone, Debug)]
pub struct Submission {
    pub message: String,
    pub screen: String,
    pub step: String,
    pub severity: Severity,
    pub category: Option<String>,
    /// `false`: the member opts out — only screen, step and severity are kept.
    pub diagnostics: bool,
}

/// What the edge knows of the request (for the diagnostics).
#[derive(Clone, Debug)]
pub struct RequestIds {
    pub request_id: String,
    pub trace_id: String,
}

/// A stored submission.
#[derive(Clone, Debug)]
pub struct Receipt {
    pub feedback_id: Uuid,
    pub position: u64,
}

/// The anonymised user reference: hex SHA-256 of the tenant's PII key and the user id — stable
/// within the tenant, unrelated across tenants, not computable without the platform secret.
pub fn user_ref(app: &App, tenant: TenantId, user: UserId) -> String {
    use sha2::Digest;
    let key = app.pii_key(tenant);
    let mut h = sha2::Sha256::new();
    h.update((key.len() as u64).to_be_bytes());
    h.update(&key);
    h.update(user.as_uuid().as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn scrub(text: &str) -> String {
    pii::scrub(text, Detector::ALL, Method::Replace, &[])
}

/// Submit a member's feedback: check it, scrub it, attach diagnostics, record it.
pub async fn submit(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    user: UserId,
    ids: &RequestIds,
    s: Submission,
) -> Result<Receipt, Error> {
    let mut fields = Vec::new();
    let chars = s.message.chars().count();
    if chars == 0 || chars > feedback::MAX_MESSAGE_CHARS {
        fields.push(("message".to_owned(), "1 to 4096 characters".to_owned()));
    }
    for (name, value) in [("screen", Some(&s.screen)), ("step", Some(&s.step))]
        .into_iter()
        .chain([("category", s.category.as_ref())])
    {
        if value.is_some_and(|v| !feedback::valid_name(v)) {
            fields.push((name.to_owned(), "1 to 64 of a-z, 0-9, _ - . /".to_owned()));
        }
    }
    if !fields.is_empty() {
        return Err(Error::Validation(fields));
    }
    // The store refuses NUL in any text; it carries nothing a reader needs.
    let message = s.message.replace('\0', "\u{FFFD}");
    let feedback_id = ctx.new_id("feedback");
    let (settings, _) = app
        .feedback_settings
        .load(tenant, &feedback::settings_stream_id(tenant))
        .await?;
    let diagnostics = if s.diagnostics && !settings.diagnostics_off {
        Some(diagnostics(app, ctx, tenant, user, ids).await?)
    } else {
        None
    };
    // Scrubbed here, before the command exists: the aggregate, the event and the store only ever
    // see the scrubbed text. The names are scrubbed too (digits and dots can be an address).
    let opted_out = diagnostics.is_none();
    let event = Submitted {
        feedback_id,
        message: (!opted_out).then(|| scrub(&message)),
        screen: scrub(&s.screen),
        step: scrub(&s.step),
        severity: s.severity,
        category: s.category.filter(|_| !opted_out).map(|c| scrub(&c)),
        diagnostics,
    };
    let done = app
        .feedback
        .execute(
            tenant,
            &feedback::stream_id(feedback_id),
            &FeedbackCommand::Submit(Box::new(event)),
            &ctx.meta,
            ctx.now,
        )
        .await?;
    Ok(Receipt {
        feedback_id,
        position: app.settled(&done.appended).await,
    })
}

async fn diagnostics(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    user: UserId,
    ids: &RequestIds,
) -> Result<Diagnostics, Error> {
    let plan = crate::metering::plan_of(app, tenant, ctx.now).await?;
    let overrides = app
        .identity
        .tenant(tenant)
        .map(|t| t.flags)
        .unwrap_or_default();
    let flags: BTreeMap<String, bool> = Flag::ALL
        .iter()
        .map(|f| {
            (
                f.as_str().to_owned(),
                app.config.flag_enabled(*f, &overrides),
            )
        })
        .collect();
    Ok(Diagnostics {
        trace_id: ids.trace_id.clone(),
        request_id: ids.request_id.clone(),
        app_version: env!("CARGO_PKG_VERSION").to_owned(),
        environment: ENVIRONMENT.clone(),
        plan: plan.as_str().to_owned(),
        flags,
        user_ref: user_ref(app, tenant, user),
    })
}

/// Turn diagnostics on or off for every member of `tenant` (off: only screen, step and severity
/// are kept). Answers the position written (0 when it was already so).
pub async fn set_tenant_diagnostics(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    enabled: bool,
) -> Result<u64, Error> {
    let done = app
        .feedback_settings
        .execute(
            tenant,
            &feedback::settings_stream_id(tenant),
            &feedback::SettingsCommand::SetDiagnostics { enabled },
            &ctx.meta,
            ctx.now,
        )
        .await?;
    Ok(app.settled(&done.appended).await)
}

/// What triage changes (absent: unchanged; `Some(None)` clears).
#[derive(Clone, Debug, Default)]
pub struct Triage {
    pub state: Option<State>,
    pub assignee: Option<Option<String>>,
    pub labels: Option<Vec<String>>,
    pub priority: Option<Option<Priority>>,
}

/// Triage one item. `scope` is the caller's tenant (`None`: platform staff, any tenant).
pub async fn triage(
    app: &App,
    ctx: &Ctx,
    scope: Option<TenantId>,
    feedback_id: Uuid,
    t: Triage,
) -> Result<(FeedbackItem, u64), Error> {
    let not_found = || Error::NotFound("no such feedback".into());
    let tenant = app
        .feedback_board
        .tenant_of(feedback_id)
        .ok_or_else(not_found)?;
    if scope.is_some_and(|s| s != tenant) {
        return Err(not_found());
    }
    let command = FeedbackCommand::Triage {
        state: t.state,
        assignee: t.assignee,
        labels: t.labels,
        priority: t.priority,
    };
    let done = app
        .feedback
        .execute(
            tenant,
            &feedback::stream_id(feedback_id),
            &command,
            &ctx.meta,
            ctx.now,
        )
        .await?;
    let position = app.settled(&done.appended).await;
    let item = app
        .feedback_board
        .get(&app.store, tenant, feedback_id)
        .await?
        .ok_or_else(not_found)?;
    Ok((item, position))
}

/// A page of the board. `scope` limits it to the caller's tenant (platform staff: `None`).
pub async fn list(
    app: &App,
    scope: Option<TenantId>,
    filter: FeedbackFilter,
    cursor: Option<&str>,
    limit: Option<usize>,
) -> Result<FeedbackPage, Error> {
    let limit = limit.unwrap_or(50);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(Error::field("limit", "must be 1 to 500"));
    }
    let before = match cursor {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or_else(|| Error::field("cursor", "not a cursor"))?),
    };
    match scoped(scope, filter) {
        Some(f) => Ok(app
            .feedback_board
            .list(&app.store, &f, before, limit)
            .await?),
        None => Ok(FeedbackPage::default()),
    }
}

/// The filter, limited to the caller's tenant (platform staff: `scope` is `None`);
/// `None` when the caller asks for another tenant's items (an empty view, not an error).
fn scoped(scope: Option<TenantId>, mut filter: FeedbackFilter) -> Option<FeedbackFilter> {
    if let Some(s) = scope {
        if filter.tenant.is_some_and(|t| t != s) {
            return None;
        }
        filter.tenant = Some(s);
    }
    Some(filter)
}

/// The opaque cursor of a page's `next`.
pub fn encode_cursor(position: u64) -> String {
    format!("f{position:x}")
}

fn decode_cursor(c: &str) -> Option<u64> {
    u64::from_str_radix(c.strip_prefix('f')?, 16).ok()
}

/// The CSV columns, in order (stable: new columns go at the end).
pub const CSV_COLUMNS: &[&str] = &[
    "feedback_id",
    "tenant_id",
    "submitted_at",
    "updated_at",
    "state",
    "severity",
    "priority",
    "assignee",
    "labels",
    "screen",
    "step",
    "category",
    "message",
    "trace_id",
    "app_version",
    "environment",
    "plan",
    "user_ref",
];

/// One RFC 4180 field: quoted when it holds a comma, quote, CR or LF; a cell a spreadsheet would
/// run as a formula (`=`, `+`, `-`, `@`, tab, CR at the start) gets a leading `'` (OWASP).
fn field(out: &mut String, v: &str) {
    let v = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_owned()
    };
    if v.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(&v);
    }
}

/// Items as CSV (RFC 4180: CRLF line ends, a header row of [`CSV_COLUMNS`]).
pub fn csv(items: &[FeedbackItem]) -> String {
    let mut out = CSV_COLUMNS.join(",");
    out.push_str("\r\n");
    let time = |t| store::format_rfc3339_micros(t);
    for i in items {
        let d = i.diagnostics.as_ref();
        let cells: [String; 18] = [
            i.feedback_id.to_string(),
            i.tenant_id.to_string(),
            time(i.submitted_at),
            time(i.updated_at),
            i.state.as_str().to_owned(),
            i.severity.as_str().to_owned(),
            i.priority
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            i.assignee.clone().unwrap_or_default(),
            i.labels.join(";"),
            i.screen.clone(),
            i.step.clone(),
            i.category.clone().unwrap_or_default(),
            i.message.clone().unwrap_or_default(),
            d.map(|d| d.trace_id.clone()).unwrap_or_default(),
            d.map(|d| d.app_version.clone()).unwrap_or_default(),
            d.map(|d| d.environment.clone()).unwrap_or_default(),
            d.map(|d| d.plan.clone()).unwrap_or_default(),
            d.map(|d| d.user_ref.clone()).unwrap_or_default(),
        ];
        for (n, c) in cells.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            field(&mut out, c);
        }
        out.push_str("\r\n");
    }
    out
}

/// Every item of a filtered view (for the CSV), newest first.
pub async fn all(
    app: &App,
    scope: Option<TenantId>,
    filter: FeedbackFilter,
) -> Result<Vec<FeedbackItem>, Error> {
    match scoped(scope, filter) {
        Some(f) => Ok(app
            .feedback_board
            .list(&app.store, &f, None, usize::MAX)
            .await?
            .items),
        None => Ok(Vec::new()),
    }
}
