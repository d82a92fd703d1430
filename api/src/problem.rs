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
