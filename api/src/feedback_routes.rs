//! In-product feedback over HTTP (SPEC §7, ADR 029): any member submits (scrubbed before it is
//! stored, diagnostics attached by the server, a per-user rate limit); platform support and pm
//! (every tenant) and tenant owners and admins (their own) read the triage board, triage items and
//! export a filtered view as CSV.

use crate::auth::Caller;
use crate::http::{Reply, RequestContext, idempotent, json, wait_for};
use crate::problem::Problem;
use crate::server::AppState;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use domain::feedback::{Priority, Severity, State};
use domain::{TenantId, UserId};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use projections::{FeedbackFilter, FeedbackItem, Principal};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::LazyLock;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Submissions per user per minute (with a burst of the same size).
pub const PER_USER_PER_MINUTE: u32 = 10;

/// The per-user limit, keyed by (tenant, user): process-wide, like the users it counts.
static LIMITER: LazyLock<DefaultKeyedRateLimiter<(TenantId, UserId)>> = LazyLock::new(|| {
    let n = NonZeroU32::new(PER_USER_PER_MINUTE).expect("non-zero");
    RateLimiter::keyed(Quota::per_minute(n).allow_burst(n))
});

fn check_limit(tenant: TenantId, user: UserId) -> Result<(), Problem> {
    LIMITER.check_key(&(tenant, user)).map_err(|not_until| {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        Problem::too_many_requests(
            "rate-limited",
            format!("at most {PER_USER_PER_MINUTE} feedback submissions a minute per user"),
            wait,
        )
    })
}

macro_rules! mirror {
    ($(#[$m:meta])* $name:ident => $domain:ident { $($variant:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant),*
        }

        impl From<$name> for $domain {
            fn from(v: $name) -> $domain {
                match v {
                    $($name::$variant => $domain::$variant),*
                }
            }
        }

        impl From<$domain> for $name {
            fn from(v: $domain) -> $name {
                match v {
                    $($domain::$variant => $name::$variant),*
                }
            }
        }
    };
}

mirror!(
    /// How bad it is.
    SeverityName => Severity { Low, Medium, High, Critical }
);
mirror!(
    /// Where an item is in triage: `new → triaged → in_progress → resolved | wont_fix | spam`
    /// (`wont_fix` and `spam` also from `new` and `triaged`).
    StateName => State { New, Triaged, InProgress, Resolved, WontFix, Spam }
);

/// How soon support means to act.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PriorityName {
    P0,
    P1,
    P2,
    P3,
}

impl From<PriorityName> for Priority {
    fn from(p: PriorityName) -> Priority {
        match p {
            PriorityName::P0 => Priority::P0,
            PriorityName::P1 => Priority::P1,
            PriorityName::P2 => Priority::P2,
            PriorityName::P3 => Priority::P3,
        }
    }
}

impl From<Priority> for PriorityName {
    fn from(p: Priority) -> PriorityName {
        match p {
            Priority::P0 => PriorityName::P0,
            Priority::P1 => PriorityName::P1,
            Priority::P2 => PriorityName::P2,
            Priority::P3 => PriorityName::P3,
        }
    }
}

/// `POST /v1/feedback`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// What happened, in the member's words (1–4096 characters). Personal data and secrets are
    /// scrubbed before anything is stored.
    #[schema(min_length = 1, max_length = 4096)]
    message: String,
    /// The screen's id: 1–64 of `a-z 0-9 _ - . /`.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[a-z0-9_./-]{1,64}$")]
    screen: String,
    /// The step of the screen's flow: 1–64 of `a-z 0-9 _ - . /`.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[a-z0-9_./-]{1,64}$")]
    step: String,
    severity: SeverityName,
    /// 1–64 of `a-z 0-9 _ - . /`.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[a-z0-9_./-]{1,64}$")]
    category: Option<String>,
    /// `false` opts out of diagnostics: only screen, step and severity are kept. Default `true`.
    diagnostics: Option<bool>,
}

/// A stored submission.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedbackCreated {
    #[schema(value_type = String, format = Uuid)]
    feedback_id: Uuid,
    global_position: u64,
}

/// What the server attached.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiagnosticsOut {
    trace_id: String,
    request_id: String,
    app_version: String,
    environment: String,
    plan: String,
    flags: BTreeMap<String, bool>,
    /// A keyed hash of the member, stable within the tenant.
    user_ref: String,
}

/// One item on the board.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedbackOut {
    #[schema(value_type = String, format = Uuid)]
    feedback_id: Uuid,
    #[schema(value_type = String, format = Uuid)]
    tenant_id: String,
    #[schema(format = DateTime)]
    submitted_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    /// Scrubbed (`null` when the member opted out).
    message: Option<String>,
    screen: String,
    step: String,
    severity: SeverityName,
    category: Option<String>,
    diagnostics: Option<DiagnosticsOut>,
    state: StateName,
    assignee: Option<String>,
    labels: Vec<String>,
    priority: Option<PriorityName>,
}

fn out(i: FeedbackItem) -> FeedbackOut {
    FeedbackOut {
        feedback_id: i.feedback_id,
        tenant_id: i.tenant_id.to_string(),
        submitted_at: store::format_rfc3339_micros(i.submitted_at),
        updated_at: store::format_rfc3339_micros(i.updated_at),
        message: i.message,
        screen: i.screen,
        step: i.step,
        severity: i.severity.into(),
        category: i.category,
        diagnostics: i.diagnostics.map(|d| DiagnosticsOut {
            trace_id: d.trace_id,
            request_id: d.request_id,
            app_version: d.app_version,
            environment: d.environment,
            plan: d.plan,
            flags: d.flags,
            user_ref: d.user_ref,
        }),
        state: i.state.into(),
        assignee: i.assignee,
        labels: i.labels,
        priority: i.priority.map(Into::into),
    }
}

/// Counts of the whole filtered view.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedbackCounts {
    by_severity: BTreeMap<String, u64>,
    by_screen: BTreeMap<String, u64>,
}

/// `GET /v1/feedback`: a page of the board, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct FeedbackList {
    items: Vec<FeedbackOut>,
    /// Pass as `cursor` for the next page (`null`: this is the last).
    next_cursor: Option<String>,
    /// Items in the whole filtered view.
    total: u64,
    counts: FeedbackCounts,
}

/// `GET /v1/feedback` and `GET /v1/feedback.csv`'s query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedbackQuery {
    /// Only this tenant's items (platform staff; members always see only their own tenant's).
    #[param(value_type = Option<String>, format = Uuid)]
    tenant_id: Option<String>,
    #[param(inline)]
    severity: Option<SeverityName>,
    /// Only this screen.
    #[param(min_length = 1, max_length = 64, pattern = r"^[a-z0-9_./-]{1,64}$")]
    screen: Option<String>,
    #[param(inline)]
    state: Option<StateName>,
    /// A case-insensitive substring of the (scrubbed) message, category or labels.
    #[param(min_length = 1, max_length = 200)]
    text: Option<String>,
    /// The previous page's `next_cursor`.
    #[param(min_length = 2, max_length = 17, pattern = r"^f[0-9a-f]{1,16}$")]
    cursor: Option<String>,
    /// Items per page (1–500; 50 by default).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// Wait (bounded) until the read models have applied this global position.
    min_position: Option<u64>,
}

/// `GET /v1/feedback.csv`'s query: the board's filters; the file holds the whole filtered view.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedbackCsvQuery {
    /// Only this tenant's items (platform staff; members always see only their own tenant's).
    #[param(value_type = Option<String>, format = Uuid)]
    tenant_id: Option<String>,
    #[param(inline)]
    severity: Option<SeverityName>,
    /// Only this screen.
    #[param(min_length = 1, max_length = 64, pattern = r"^[a-z0-9_./-]{1,64}$")]
    screen: Option<String>,
    #[param(inline)]
    state: Option<StateName>,
    /// A case-insensitive substring of the (scrubbed) message, category or labels.
    #[param(min_length = 1, max_length = 200)]
    text: Option<String>,
    /// Wait (bounded) until the read models have applied this global position.
    min_position: Option<u64>,
}

impl From<FeedbackCsvQuery> for FeedbackQuery {
    fn from(q: FeedbackCsvQuery) -> FeedbackQuery {
        FeedbackQuery {
            tenant_id: q.tenant_id,
            severity: q.severity,
            screen: q.screen,
            state: q.state,
            text: q.text,
            cursor: None,
            limit: None,
            min_position: q.min_position,
        }
    }
}

impl FeedbackQuery {
    /// The filter, with every constraint the schema states checked.
    fn filter(&self) -> Result<FeedbackFilter, Problem> {
        let mut fields: Vec<(String, String)> = Vec::new();
        let tenant = match &self.tenant_id {
            Some(raw) => match raw.parse::<TenantId>() {
                Ok(t) => Some(t),
                Err(_) => {
                    fields.push(("tenant_id".into(), "must be a UUID".into()));
                    None
                }
            },
            None => None,
        };
        if self
            .screen
            .as_deref()
            .is_some_and(|s| !domain::feedback::valid_name(s))
        {
            fields.push(("screen".into(), "1 to 64 of a-z, 0-9, _ - . /".into()));
        }
        if self
            .text
            .as_deref()
            .is_some_and(|t| !(1..=200).contains(&t.chars().count()))
        {
            fields.push(("text".into(), "1 to 200 characters".into()));
        }
        if self.cursor.as_deref().is_some_and(|c| {
            !(2..=17).contains(&c.len())
                || !c.starts_with('f')
                || !c[1..]
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }) {
            fields.push(("cursor".into(), "not a cursor of this list".into()));
        }
        if !fields.is_empty() {
            return Err(Problem::validation(fields));
        }
        Ok(FeedbackFilter {
            tenant,
            severity: self.severity.map(Into::into),
            screen: self.screen.clone(),
            state: self.state.map(Into::into),
            text: self.text.clone(),
        })
    }
}

/// Distinguishes an absent field (`None`) from `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `PATCH /v1/feedback/{feedback_id}`: what triage changes (absent: unchanged; `null` clears).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriageRequest {
    state: Option<StateName>,
    /// Who works on it (1–128 characters, no control characters; `null` unassigns).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 128, pattern = r"^[^\x00-\x1f\x7f-\x9f]+$")]
    assignee: Option<Option<String>>,
    /// The whole new set of labels (each 1–64 of `a-z 0-9 _ - . /`; at most 16).
    #[schema(max_items = 16, value_type = Option<Vec<LabelName>>)]
    labels: Option<Vec<String>>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<PriorityName>)]
    priority: Option<Option<PriorityName>>,
}

/// A label: 1–64 of `a-z 0-9 _ - . /`.
#[derive(Debug)]
pub struct LabelName;

impl utoipa::PartialSchema for LabelName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("A label: 1–64 of `a-z 0-9 _ - . /`"))
            .min_length(Some(1))
            .max_length(Some(64))
            .pattern(Some(r"^[a-z0-9_./-]{1,64}$"))
            .into()
    }
}

impl ToSchema for LabelName {}

/// `PATCH /v1/feedback/{feedback_id}`'s answer: the item as it is now.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriageDone {
    item: FeedbackOut,
    /// 0 when nothing changed.
    global_position: u64,
}

fn member(caller: &Caller) -> Result<(TenantId, UserId), Problem> {
    match &caller.principal {
        Principal::Member {
            tenant, user_id, ..
        } => Ok((*tenant, *user_id)),
        Principal::Operator { .. } => Err(Problem::forbidden("only members send feedback")),
    }
}

pub async fn submit(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let (tenant, user) = member(&caller)?;
    Ok(idempotent(&state, &req, tenant, &body, || async {
        let dto: FeedbackRequest = json(&req, &body)?;
        // Inside the idempotent run: a replay does not spend the limit, a 429 is never kept.
        check_limit(tenant, user)?;
        let rc = RequestContext::of(&req);
        let ctx = state.ctx(rc.metadata(caller.actor()));
        let ids = app::feedback::RequestIds {
            request_id: rc.request_id.clone(),
            trace_id: rc.trace_id.clone(),
        };
        let submission = app::feedback::Submission {
            message: dto.message,
            screen: dto.screen,
            step: dto.step,
            severity: dto.severity.into(),
            category: dto.category,
            diagnostics: dto.diagnostics.unwrap_or(true),
        };
        let done = app::feedback::submit(&state, &ctx, tenant, user, &ids, submission).await?;
        Ok(Reply::json(
            StatusCode::CREATED,
            &FeedbackCreated {
                feedback_id: done.feedback_id,
                global_position: done.position,
            },
        ))
    })
    .await)
}

pub async fn list(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<FeedbackQuery>,
) -> Result<Reply, Problem> {
    wait_for(&state, q.min_position).await?;
    let page = app::feedback::list(
        &state,
        caller.tenant(),
        q.filter()?,
        q.cursor.as_deref(),
        q.limit.map(|l| l as usize),
    )
    .await?;
    let body = FeedbackList {
        next_cursor: page.next.map(app::feedback::encode_cursor),
        total: page.total,
        counts: FeedbackCounts {
            by_severity: page
                .by_severity
                .into_iter()
                .map(|(s, n)| (s.as_str().to_owned(), n))
                .collect(),
            by_screen: page.by_screen,
        },
        items: page.items.into_iter().map(out).collect(),
    };
    Ok(Reply::json(StatusCode::OK, &body))
}

pub async fn csv(
    state: web::Data<AppState>,
    caller: Caller,
    q: web::Query<FeedbackCsvQuery>,
) -> Result<HttpResponse, Problem> {
    let q = FeedbackQuery::from(q.into_inner());
    wait_for(&state, q.min_position).await?;
    let items = app::feedback::all(&state, caller.tenant(), q.filter()?).await?;
    Ok(HttpResponse::Ok()
        .content_type(crate::http::CSV)
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            "attachment; filename=\"feedback.csv\"",
        ))
        .body(app::feedback::csv(&items)))
}

pub async fn triage(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let id = Uuid::parse_str(&path).map_err(|_| Problem::not_found("no such feedback"))?;
    let dto: TriageRequest = json(&req, &body)?;
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let t = app::feedback::Triage {
        state: dto.state.map(Into::into),
        assignee: dto.assignee,
        labels: dto.labels,
        priority: dto.priority.map(|p| p.map(Into::into)),
    };
    let (item, position) = app::feedback::triage(&state, &ctx, caller.tenant(), id, t).await?;
    Ok(Reply::json(
        StatusCode::OK,
        &TriageDone {
            item: out(item),
            global_position: position,
        },
    ))
}

/// `PUT /v1/tenant/feedback-diagnostics`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiagnosticsSetting {
    /// `false`: every member's feedback keeps only screen, step and severity.
    enabled: bool,
}

/// The tenant's diagnostics setting, as set.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiagnosticsSettingOut {
    enabled: bool,
    /// 0 when it was already so.
    global_position: u64,
}

pub async fn set_diagnostics(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: web::Bytes,
) -> Result<Reply, Problem> {
    let tenant = caller.tenant_or_forbidden()?;
    let dto: DiagnosticsSetting = json(&req, &body)?;
    let ctx = state.ctx(RequestContext::of(&req).metadata(caller.actor()));
    let position = app::feedback::set_tenant_diagnostics(&state, &ctx, tenant, dto.enabled).await?;
    Ok(Reply::json(
        StatusCode::OK,
        &DiagnosticsSettingOut {
            enabled: dto.enabled,
            global_position: position,
        },
    ))
}
