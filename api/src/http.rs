//! The request plumbing every handler shares: the request context (id, trace), JSON bodies
//! parsed at the edge, replies, read-your-writes waits, and `Idempotency-Key` handling.

use crate::problem::Problem;
use crate::server::AppState;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, Responder, web};
use domain::TenantId;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::time::Duration;
use store::idempotency::{Begin, StoredResponse};
use uuid::Uuid;

/// Set by the context middleware on every request.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub request_id: String,
    /// The W3C trace id: from `traceparent` when valid, otherwise new.
    pub trace_id: String,
}

impl RequestContext {
    pub fn of(req: &HttpRequest) -> RequestContext {
        req.extensions()
            .get::<RequestContext>()
            .cloned()
            .unwrap_or_else(|| RequestContext {
                request_id: Uuid::now_v7().to_string(),
                trace_id: Uuid::new_v4().simple().to_string(),
            })
    }

    /// Append metadata for a command made by `actor` in this request.
    pub fn metadata(&self, actor: String) -> store::Metadata {
        store::Metadata {
            actor,
            correlation_id: Uuid::parse_str(&self.request_id).unwrap_or_else(|_| Uuid::now_v7()),
            causation_id: None,
            trace_id: Some(self.trace_id.clone()),
        }
    }
}

/// An incoming `x-request-id` is kept when it is short and plain; otherwise we make one.
pub fn request_id(req: &actix_web::dev::ServiceRequest) -> String {
    let mut values = req.headers().get_all("x-request-id");
    match (values.next(), values.next()) {
        (Some(v), None) => match v.to_str() {
            Ok(s)
                if !s.is_empty()
                    && s.len() <= 128
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) =>
            {
                s.to_owned()
            }
            _ => Uuid::now_v7().to_string(),
        },
        _ => Uuid::now_v7().to_string(),
    }
}

/// The trace id of a valid W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if any.
pub fn trace_id(req: &actix_web::dev::ServiceRequest) -> Option<String> {
    let mut values = req.headers().get_all("traceparent");
    let (Some(v), None) = (values.next(), values.next()) else {
        return None;
    };
    let parts: Vec<&str> = v.to_str().ok()?.trim().split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    match parts.as_slice() {
        [version, trace, parent, flags]
            if hex(version, 2)
                && *version != "ff"
                && hex(trace, 32)
                && hex(parent, 16)
                && hex(flags, 2)
                && trace.bytes().any(|b| b != b'0')
                && parent.bytes().any(|b| b != b'0') =>
        {
            Some((*trace).to_owned())
        }
        _ => None,
    }
}

/// A JSON reply (or a problem), in a form that can be kept for idempotent replays.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Vec<u8>,
    pub headers: Vec<(HeaderName, String)>,
}

impl Reply {
    pub fn json(status: StatusCode, value: &impl Serialize) -> Reply {
        Reply {
            status,
            content_type: "application/json".into(),
            body: serde_json::to_vec(value).expect("replies serialize"),
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: HeaderName, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    pub fn with_headers(mut self, headers: Vec<(HeaderName, String)>) -> Reply {
        self.headers.extend(headers);
        self
    }
}

impl From<Problem> for Reply {
    fn from(p: Problem) -> Reply {
        let status = p.status_code();
        Reply {
            status,
            content_type: "application/problem+json".into(),
            body: serde_json::to_vec(&p).expect("problems serialize"),
            headers: p.headers().to_vec(),
        }
    }
}

impl Responder for Reply {
    type Body = actix_web::body::BoxBody;
    fn respond_to(self, _req: &HttpRequest) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        res.insert_header((header::CONTENT_TYPE, self.content_type));
        for (name, value) in self.headers {
            res.insert_header((name, value));
        }
        res.body(self.body)
    }
}

/// Parse a JSON body at the edge: the content type must be JSON and the document must match `T`
/// (whose DTOs refuse unknown fields).
pub fn json<T: DeserializeOwned>(req: &HttpRequest, body: &[u8]) -> Result<T, Problem> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json" && !essence.ends_with("+json") {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        )
        .detail("send the body as application/json"));
    }
    serde_json::from_slice(body).map_err(|e| {
        let detail = format!(
            "invalid JSON body at line {} column {}: {e}",
            e.line(),
            e.column()
        );
        match e.classify() {
            serde_json::error::Category::Data => {
                Problem::validation(vec![("body".into(), e.to_string())])
            }
            _ => Problem::bad_request(detail),
        }
    })
}

/// The query of a plain read: `?min_position=N` waits for the read models (read-your-writes).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    pub min_position: Option<u64>,
}

/// Map an executor's error to a problem document; `domain` maps the aggregate's own errors.
pub fn execute_problem<E: std::error::Error + 'static>(
    e: commands::ExecuteError<E>,
    domain: impl FnOnce(E) -> Problem,
) -> Problem {
    match e {
        commands::ExecuteError::Domain(d) => domain(d),
        commands::ExecuteError::Store(s) => s.into(),
        commands::ExecuteError::Decode(d) => {
            tracing::error!(error = %d, "stored event cannot be decoded");
            Problem::internal()
        }
        commands::ExecuteError::TooManyConflicts { .. } => Problem::conflict(
            "busy",
            "the resource kept changing while we tried; retry the request",
        ),
    }
}

/// Wait, bounded, until the projections have applied `min_position` (read-your-writes).
pub async fn wait_for(state: &AppState, min_position: Option<u64>) -> Result<(), Problem> {
    let Some(position) = min_position else {
        return Ok(());
    };
    let wait = Duration::from_millis(state.settings.read_wait_ms);
    if state.projections.wait_for(position, wait).await {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-caught-up",
            "The read models have not reached that position yet",
        )
        .detail(format!(
            "position {position} is not applied yet; retry shortly"
        ))
        .with("min_position", position)
        .header(header::RETRY_AFTER, "1"))
    }
}

/// The body kept for replays: a bearer token is shown once, so it is never stored — a replay
/// says it was issued (`"token": null, "token_redacted": true`) without repeating it.
fn without_secrets(body: &[u8]) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return body.to_vec();
    };
    if map.get("token").is_some_and(|t| !t.is_null()) {
        map.insert("token".into(), serde_json::Value::Null);
        map.insert("token_redacted".into(), serde_json::Value::Bool(true));
        return serde_json::to_vec(&map).unwrap_or_else(|_| body.to_vec());
    }
    body.to_vec()
}

/// After a command has committed: wait, bounded, for this instance's projections to apply it, so
/// that reads here see the change. Never an error: the change is stored whatever happens here,
/// and turning a late projection into a 5xx would make a client retry a command that went through.
pub async fn settle(state: &AppState, position: u64) {
    let wait = Duration::from_millis(state.settings.read_wait_ms);
    if !state.projections.wait_for(position, wait).await {
        tracing::warn!(
            position,
            "projections did not reach a committed position in time"
        );
    }
}

/// Run a mutating request under its `Idempotency-Key` (SPEC §13): the same key and request
/// replay the first response; the same key with another request is 422; a key in flight is 409.
/// Responses of 5xx are not kept, so a retry runs again.
pub async fn idempotent<F, Fut>(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    scope: TenantId,
    body: &[u8],
    run: F,
) -> Reply
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Reply, Problem>>,
{
    let mut keys = req.headers().get_all("idempotency-key");
    let key = match (keys.next(), keys.next()) {
        (None, _) => return run().await.unwrap_or_else(Reply::from),
        (Some(_), Some(_)) => {
            return Problem::bad_request("send one Idempotency-Key header, not several").into();
        }
        (Some(v), None) => match v.to_str() {
            Ok(k)
                if !k.is_empty()
                    && k.len() <= 255
                    && k.bytes().all(|b| (0x21..0x7f).contains(&b)) =>
            {
                k.to_owned()
            }
            _ => {
                return Problem::bad_request(
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                )
                .into();
            }
        },
    };
    let key = format!("{} {}", req.method(), key);
    let mut fingerprint = Vec::with_capacity(body.len() + 64);
    fingerprint.extend_from_slice(req.path().as_bytes());
    fingerprint.push(b'?');
    fingerprint.extend_from_slice(req.query_string().as_bytes());
    fingerprint.push(b'\n');
    fingerprint.extend_from_slice(body);
    let hash = crate::tokens::sha256_hex(&fingerprint);
    match state.store.idempotency_begin(scope, &key, &hash).await {
        Err(e) => Problem::from(e).into(),
        Ok(Begin::InFlight) => Problem::conflict(
            "idempotency-key-in-flight",
            "a request with this Idempotency-Key is still being processed",
        )
        .header(header::RETRY_AFTER, "1")
        .into(),
        Ok(Begin::Mismatch) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
            "Idempotency-Key reused with a different request",
        )
        .detail("this key was used for another request; use a new key")
        .into(),
        Ok(Begin::Completed(stored)) => {
            state
                .metrics
                .idempotent_replays
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Reply {
                status: StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK),
                content_type: stored.content_type,
                body: stored.body,
                headers: vec![(
                    HeaderName::from_static("idempotency-replayed"),
                    "true".into(),
                )],
            }
        }
        Ok(Begin::Started) => {
            let reply = run().await.unwrap_or_else(Reply::from);
            let kept = if reply.status.is_server_error() {
                state.store.idempotency_abandon(scope, &key).await
            } else {
                let stored = StoredResponse {
                    status: reply.status.as_u16(),
                    content_type: reply.content_type.clone(),
                    body: without_secrets(&reply.body),
                };
                state.store.idempotency_complete(scope, &key, stored).await
            };
            if let Err(e) = kept {
                tracing::error!(error = %e, "idempotency record not kept");
            }
            reply
        }
    }
}
