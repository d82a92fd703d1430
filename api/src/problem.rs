//! RFC 9457 problem documents: every error a client sees, with a stable `type` URI.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;

pub const BASE: &str = "https://tenantry.dev/problems/";

/// A problem document. Boxed: it travels in every `Result` of the request path.
#[derive(Clone, Debug)]
pub struct Problem(Box<Document>);

#[derive(Clone, Debug, Serialize)]
pub struct Document {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
    #[serde(skip)]
    headers: Vec<(header::HeaderName, String)>,
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &str) -> Self {
        Self(Box::new(Document {
            kind: format!("{BASE}{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
            extra: Map::new(),
            headers: Vec::new(),
        }))
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.0.detail = Some(detail.into());
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn header(mut self, name: header::HeaderName, value: impl Into<String>) -> Self {
        self.0.headers.push((name, value.into()));
        self
    }

    /// Headers that go with the problem (`WWW-Authenticate`, `Retry-After`, `Link` …).
    pub fn headers(&self) -> &[(header::HeaderName, String)] {
        &self.0.headers
    }

    pub fn kind(&self) -> &str {
        &self.0.kind
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "The request is malformed",
        )
        .detail(detail)
    }

    /// A body that parsed but whose fields are invalid: one entry per field.
    pub fn validation(errors: Vec<(String, String)>) -> Self {
        let list: Vec<Value> = errors
            .into_iter()
            .map(|(field, reason)| serde_json::json!({"field": field, "reason": reason}))
            .collect();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
            "Some fields are invalid",
        )
        .with("errors", list)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
        )
        .detail(detail)
        .header(header::WWW_AUTHENTICATE, "Bearer realm=\"tenantry\"")
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Not allowed").detail(detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found").detail(detail)
    }

    pub fn conflict(slug: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, slug, "Conflict").detail(detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
        )
        .detail(detail)
        .header(header::RETRY_AFTER, "1")
    }

    /// Too many requests (429), with `Retry-After` in whole seconds.
    pub fn too_many_requests(
        slug: &str,
        detail: impl Into<String>,
        retry_after: std::time::Duration,
    ) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, slug, "Too many requests")
            .detail(detail)
            .retry_after(retry_after.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// Replace the `Retry-After` header (seconds).
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.0
            .headers
            .retain(|(name, _)| name != header::RETRY_AFTER);
        self.header(header::RETRY_AFTER, seconds.to_string())
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
        )
        .detail("The request failed on our side; it has been logged.")
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.0.title, self.0.status)?;
        if let Some(d) = &self.0.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        Problem::status_code(self)
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(Problem::status_code(self));
        res.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        ));
        for (name, value) in &self.0.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                res.insert_header((name.clone(), v));
            }
        }
        res.body(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// Store errors as clients see them.
impl From<store::StoreError> for Problem {
    fn from(e: store::StoreError) -> Self {
        use store::StoreError as E;
        match e {
            E::Conflict { .. } => Problem::conflict("version-conflict", e.to_string()),
            E::DuplicateEventId { .. } => Problem::conflict("duplicate-event-id", e.to_string()),
            E::NotAReplay { .. } => {
                Problem::conflict("idempotency-key-already-applied", e.to_string())
            }
            E::InvalidAppend(m) => Problem::validation(vec![("events".into(), m)]),
            E::Overloaded { retry_after, .. } => {
                tracing::warn!(error = %e, "store overloaded");
                Problem::unavailable("The event store is overloaded; retry shortly.")
                    .retry_after(retry_after.as_secs().max(1))
            }
            E::Timeout(_) | E::OutcomeUnknown(_) | E::Closed | E::Backend(_) => {
                tracing::error!(error = %e, "store unavailable");
                Problem::unavailable("The event store is unavailable; retry shortly.")
            }
        }
    }
}

/// The rate-limit and quota headers of a metered answer (`RateLimit-Policy`, `RateLimit`,
/// `Tenantry-Quota-State`).
pub fn quota_headers(m: &app::metering::Metered) -> Vec<(header::HeaderName, String)> {
    use domain::quota::{Period, QuotaState};
    let v = &m.view;
    let now = m.decided_at;
    let window = (v.resets_at - Period::of(now).start())
        .whole_seconds()
        .max(1);
    let reset = (v.resets_at - now).whole_seconds().max(0);
    let remaining = match v.state {
        QuotaState::Blocked | QuotaState::Overage => 0,
        QuotaState::Grace => v.grace_units_left,
        _ => v.limit.saturating_sub(v.used),
    };
    vec![
        (
            header::HeaderName::from_static("ratelimit-policy"),
            format!("\"{}\";q={};w={window}", v.meter, m.quota.max(v.limit)),
        ),
        (
            header::HeaderName::from_static("ratelimit"),
            format!("\"{}\";r={remaining};t={reset}", v.meter),
        ),
        (
            header::HeaderName::from_static("tenantry-quota-state"),
            serde_json::to_value(v.state)
                .ok()
                .and_then(|s| s.as_str().map(str::to_owned))
                .unwrap_or_default(),
        ),
    ]
}

/// The 402 of a blocked unit: what happened, until when, and how to get out.
fn quota_blocked(m: &app::metering::Metered) -> Problem {
    let v = &m.view;
    let rfc3339 = store::format_rfc3339_micros;
    let mut p = Problem::new(
        StatusCode::PAYMENT_REQUIRED,
        "plan-quota-exceeded",
        "Your plan's quota is used up",
    )
    .detail(format!(
        "the {} plan includes {} {} per month; {} were used and the grace period is over. Upgrade to go on now, or wait until {}.",
        v.plan.as_str(),
        v.limit,
        v.meter,
        v.used,
        rfc3339(v.resets_at)
    ))
    .with("plan", v.plan.as_str())
    .with("meter", v.meter.as_str())
    .with("limit", v.limit)
    .with("used", v.used)
    .with("resets_at", rfc3339(v.resets_at))
    .with("grace_ended_at", m.grace_ended_at.map(rfc3339))
    .with("upgrade_url", m.upgrade_url.clone())
    .header(header::LINK, format!("<{}>; rel=\"upgrade\"", m.upgrade_url));
    for (name, value) in quota_headers(m) {
        p = p.header(name, value);
    }
    p
}

impl From<app::Error> for Problem {
    fn from(e: app::Error) -> Self {
        use app::Error as E;
        use dataplane::sandbox::QueryError;
        use domain::dataset::DatasetError;
        use domain::platform::PlatformError;
        use domain::preset::PresetError;
        use domain::tenant::TenantError;
        let refused = |status, slug: &str, detail: String| {
            Problem::new(status, slug, "The request was refused").detail(detail)
        };
        match e {
            E::Validation(fields) => Problem::validation(fields),
            E::NotFound(what) => Problem::not_found(what),
            E::QuotaBlocked(m) => quota_blocked(&m),
            E::Charged { cause, metered } => quota_headers(&metered)
                .into_iter()
                .fold(Problem::from(*cause), |p, (name, value)| {
                    p.header(name, value)
                }),
            e @ E::TooManyConcurrent { work, limit, .. } => Problem::too_many_requests(
                "too-many-concurrent",
                e.to_string(),
                std::time::Duration::from_secs(1),
            )
            .with("kind", work)
            .with("limit", limit as u64),
            E::Query(q) => {
                let (slug, title) = match &q {
                    QueryError::NotAllowed(_) => {
                        ("query-not-allowed", "Only reading queries are allowed")
                    }
                    QueryError::Timeout(_) | QueryError::Expired(_) => {
                        ("query-timeout", "The query ran out of time")
                    }
                    QueryError::Invalid(_) => ("query-invalid", "The query is invalid"),
                    QueryError::Load(_) => return Problem::internal(),
                };
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, slug, title).detail(q.to_string())
            }
            E::UnsupportedMediaType(detail) => Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            )
            .detail(detail),
            E::Ingest(e) => {
                use dataplane::ingest::IngestError as I;
                let line = match &e {
                    I::Encoding { line } | I::Shape { line, .. } | I::Malformed { line, .. } => {
                        Some(*line)
                    }
                    I::EmptyColumnName { .. }
                    | I::DuplicateColumn { .. }
                    | I::BadColumnName { .. }
                    | I::TooManyColumns => Some(1),
                    I::Empty => None,
                };
                let p = Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-csv",
                    "The CSV file cannot be read",
                )
                .detail(e.to_string());
                match line {
                    Some(line) => p.with("line", line),
                    None => p,
                }
            }
            E::Tenant(d) => {
                let (status, slug) = match &d {
                    TenantError::AlreadySignedUp => (StatusCode::CONFLICT, "tenant-exists"),
                    TenantError::NotFound => (StatusCode::NOT_FOUND, "not-found"),
                    TenantError::SameName | TenantError::SamePlan(_) => {
                        (StatusCode::CONFLICT, "no-change")
                    }
                    TenantError::EmailTaken(_) | TenantError::UserIdTaken => {
                        (StatusCode::CONFLICT, "member-exists")
                    }
                    TenantError::OnlyOwnersAddOwners => (StatusCode::FORBIDDEN, "forbidden"),
                    TenantError::UnknownToken => (StatusCode::NOT_FOUND, "not-found"),
                    TenantError::AlreadyRevoked => (StatusCode::CONFLICT, "already-revoked"),
                    TenantError::TooManyMembers { .. } => (StatusCode::CONFLICT, "seat-limit"),
                    TenantError::NotAMember | TenantError::UnknownInvite => {
                        (StatusCode::NOT_FOUND, "not-found")
                    }
                    TenantError::LastOwner => (StatusCode::CONFLICT, "last-owner"),
                    TenantError::AdminsCannotTouchOwners | TenantError::NotAllowed(_) => {
                        (StatusCode::FORBIDDEN, "forbidden")
                    }
                    TenantError::SameRole(_) => (StatusCode::CONFLICT, "no-change"),
                    TenantError::InviteUsed => (StatusCode::CONFLICT, "invite-used"),
                    TenantError::InviteExpired => (StatusCode::GONE, "invite-expired"),
                    TenantError::SignInRefused => {
                        return Problem::unauthorized("the code is wrong or no longer valid");
                    }
                };
                refused(status, slug, d.to_string())
            }
            E::Dataset(DatasetError::NotFound) => Problem::not_found("no such dataset"),
            E::Dataset(d) => Problem::conflict("dataset-exists", d.to_string()),
            E::Preset(PresetError::Invalid(fields)) => Problem::validation(fields),
            E::Preset(PresetError::NotFound) => Problem::not_found("no such preset"),
            E::Preset(d @ PresetError::Deleted) => {
                Problem::conflict("preset-deleted", d.to_string())
            }
            E::Preset(d) => Problem::conflict("preset-exists", d.to_string()),
            E::Platform(PlatformError::AlreadyRevoked) => {
                Problem::conflict("already-revoked", "the token is already revoked")
            }
            E::Platform(PlatformError::UnknownToken) => Problem::not_found("no such token"),
            E::Billing(b) => {
                use domain::billing::BillingError as B;
                let detail = b.to_string();
                match b {
                    B::UnknownInvoice(_) => Problem::not_found(detail),
                    B::Reason => Problem::validation(vec![("reason".into(), detail)]),
                    B::CreditTooLarge { .. } => {
                        Problem::validation(vec![("amount".into(), detail)])
                    }
                    B::SameMode(_) => Problem::conflict("billing-same-mode", detail),
                    B::TooEarly { .. } => Problem::conflict("invoice-still-draft", detail),
                    B::Shadow(_) => Problem::conflict("invoice-shadow", detail),
                    B::AlreadyPaid(_) => Problem::conflict("invoice-already-paid", detail),
                    B::NothingToCharge(_) => Problem::conflict("invoice-nothing-to-charge", detail),
                    B::DoubleCharge { .. } => Problem::conflict("double-charge", detail),
                }
            }
            E::Usage(d) => Problem::validation(vec![("units".into(), d.to_string())]),
            E::Onboarding(domain::onboarding::OnboardingError::Invalid { field, reason }) => {
                Problem::validation(vec![(field.into(), reason)])
            }
            E::Onboarding(d) => Problem::validation(vec![("minutes".into(), d.to_string())]),
            E::Store(s) => s.into(),
            E::Decode(_) | E::Internal(_) => Problem::internal(),
            E::Conflict { slug, detail } => Problem::conflict(slug, detail),
            E::Unauthorized { slug, detail } => {
                Problem::new(StatusCode::UNAUTHORIZED, slug, "Authentication failed")
                    .detail(detail)
                    .header(header::WWW_AUTHENTICATE, "Bearer realm=\"tenantry\"")
            }
            E::Forbidden { slug, detail } => {
                Problem::new(StatusCode::FORBIDDEN, slug, "Not allowed").detail(detail)
            }
            E::Busy => Problem::conflict(
                "busy",
                "the resource kept changing while we tried; retry the request",
            ),
            E::PositionNotWritten { position, head } => Problem::new(
                StatusCode::NOT_FOUND,
                "position-not-written",
                "No event has been written at that position",
            )
            .detail(format!(
                "min_position {position} is beyond the last position written ({head})"
            ))
            .with("min_position", position)
            .with("head_position", head),
            E::NotCaughtUp { position } => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-caught-up",
                "The read models have not reached that position yet",
            )
            .detail(format!(
                "position {position} is not applied yet; retry shortly"
            ))
            .with("min_position", position)
            .header(header::RETRY_AFTER, "1"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn retry_after(p: &Problem) -> Option<&str> {
        p.headers()
            .iter()
            .find(|(name, _)| name == header::RETRY_AFTER)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn store_faults_are_503_problems_with_retry_after() {
        let overloaded = Problem::from(store::StoreError::Overloaded {
            queued: 10,
            retry_after: Duration::from_secs(2),
        });
        assert_eq!(overloaded.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after(&overloaded), Some("2"));
        assert_eq!(overloaded.headers().len(), 1, "one Retry-After");
        for e in [
            store::StoreError::Timeout("lock".into()),
            store::StoreError::OutcomeUnknown("cut".into()),
            store::StoreError::Closed,
        ] {
            let p = Problem::from(e);
            assert_eq!(p.status_code(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(retry_after(&p), Some("1"));
        }
        let invalid = Problem::from(store::StoreError::InvalidAppend("NUL".into()));
        assert_eq!(invalid.status_code(), StatusCode::UNPROCESSABLE_ENTITY);
    }
}
