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
use store::idempotency::Begin;
use uuid::Uuid;

/// Set by the context middleware on every request.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub request_id: String,
    /// The W3C trace id: from `traceparent` when valid, otherwise new.
    pub trace_id: String,
    /// Set under an `Idempotency-Key`: the seed the events' ids are derived from
    /// ([`store::Metadata::event_id_seed`]).
    pub event_id_seed: Option<Uuid>,
    /// Set on a retry of a request whose events were already written: its appends must replay
    /// them ([`store::Metadata::replay_only`]).
    pub replay_only: bool,
}

impl RequestContext {
    pub fn of(req: &HttpRequest) -> RequestContext {
        req.extensions()
            .get::<RequestContext>()
            .cloned()
            .unwrap_or_else(|| RequestContext {
                request_id: Uuid::now_v7().to_string(),
                trace_id: Uuid::new_v4().simple().to_string(),
                event_id_seed: None,
                replay_only: false,
            })
    }

    /// Append metadata for a command made by `actor` in this request.
    pub fn metadata(&self, actor: String) -> store::Metadata {
        store::Metadata {
            actor,
            correlation_id: Uuid::parse_str(&self.request_id).unwrap_or_else(|_| Uuid::now_v7()),
            causation_id: None,
            trace_id: Some(self.trace_id.clone()),
            event_id_seed: self.event_id_seed,
            replay_only: self.replay_only,
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
    let mut document: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        Problem::bad_request(format!(
            "invalid JSON body at line {} column {}: {e}",
            e.line(),
            e.column()
        ))
    })?;
    integral_numbers(&mut document);
    T::deserialize(document).map_err(|e| Problem::validation(vec![("body".into(), e.to_string())]))
}

/// JSON has one number type: `3.0` is the integer 3 (JSON Schema says so too), but serde's
/// integers refuse it. Turn every integral number that fits an integer into one.
fn integral_numbers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
            {
                if (0.0..u64::MAX as f64).contains(&f) {
                    *value = serde_json::Value::from(f as u64);
                } else if (i64::MIN as f64..0.0).contains(&f) {
                    *value = serde_json::Value::from(f as i64);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(integral_numbers),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(integral_numbers),
        _ => {}
    }
}

/// The query of a plain read: `?min_position=N` waits for the read models (read-your-writes).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// Wait (bounded) until the read models have applied this global position; one beyond the
    /// last position written is 404 `position-not-written`.
    pub min_position: Option<u64>,
}

/// A field that must be an RFC 3339 timestamp, or its validation error as (field, reason).
pub fn rfc3339_field(field: &str, raw: &str) -> Result<time::OffsetDateTime, (String, String)> {
    time::OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339)
        .map_err(|_| (field.to_owned(), "must be an RFC 3339 timestamp".to_owned()))
}

/// The content type of CSV answers (RFC 4180).
pub const CSV: &str = "text/csv; charset=utf-8";
/// The content type of SVG charts.
pub const SVG: &str = "image/svg+xml";

/// A 200 answer of text (a CSV, an SVG chart).
pub fn text(content_type: &str, body: String) -> HttpResponse {
    HttpResponse::Ok().content_type(content_type).body(body)
}

/// Wait, bounded, until the projections have applied `min_position` (read-your-writes).
pub async fn wait_for(state: &AppState, min_position: Option<u64>) -> Result<(), Problem> {
    Ok(state.app.wait_for(min_position).await?)
}

/// After a command has committed: wait, bounded, for this instance's projections to apply it.
pub async fn settle(state: &AppState, position: u64) {
    state.app.settle(position).await;
}

/// The UUID namespace of event-id seeds derived from idempotency keys.
const IDEMPOTENT_EVENTS: Uuid = Uuid::from_u128(0x7465_6e61_6e74_7279_6964_656d_706f_7465);

/// Who an idempotency key belongs to, set by authentication (`user:…`, `operator:…`). Keys are
/// scoped per tenant *and* caller: two members of a tenant cannot replay each other's answers.
#[derive(Clone, Debug)]
pub struct CallerScope(pub String);

/// The client's address: the peer's, or — when the settings trust a proxy in front — the last
/// `X-Forwarded-For` entry, the address that proxy saw. Entries before it are whatever the client
/// sent and are never believed.
pub fn client_address(state: &AppState, req: &HttpRequest) -> std::net::IpAddr {
    let forwarded = state
        .settings
        .trust_forwarded_for
        .then(|| req.headers().get_all("x-forwarded-for").last())
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse().ok());
    forwarded
        .or_else(|| req.peer_addr().map(|a| a.ip()))
        .unwrap_or(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED))
}

/// Whether `reply` is the problem `slug` with `status`.
fn is_problem(reply: &Reply, status: StatusCode, slug: &str) -> bool {
    reply.status == status
        && serde_json::from_slice::<serde_json::Value>(&reply.body).is_ok_and(|p| {
            p["type"]
                .as_str()
                .and_then(|t| t.rsplit('/').next())
                .is_some_and(|t| t == slug)
        })
}

/// An answer worth retrying (the same request may succeed later) is never kept for replay: a
/// retry must run again, not be told "busy" for 25 hours.
fn retryable(reply: &Reply) -> bool {
    let status = reply.status;
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        return true;
    }
    is_problem(reply, StatusCode::CONFLICT, "busy")
        || is_problem(reply, StatusCode::CONFLICT, "idempotency-key-in-flight")
}

/// The answer to a retry whose request went through before while its answer was lost with its
/// process.
fn already_applied() -> Reply {
    Problem::conflict(
        "idempotency-key-already-applied",
        "a request under this Idempotency-Key was already applied; its first answer was lost and \
         running it again would decide otherwise (the change is in the log)",
    )
    .into()
}

/// The record a keyed request is kept under: its key in the store (method, caller and the
/// client's key) and the hash of the request as the handler reads it (path, query, the body and
/// how it is to be read, hashed as it is read: an upload's body is not copied for it). Public for
/// tests that leave a record behind as a dead instance would (docs/adr/035).
pub fn idempotency_record(
    method: &str,
    caller: &str,
    key: &str,
    path: &str,
    query: &str,
    content_types: &[&[u8]],
    body: &[u8],
) -> (String, String) {
    let mut parts: Vec<&[u8]> = vec![path.as_bytes(), b"?", query.as_bytes(), b"\n"];
    for value in content_types {
        parts.extend([*value, b"\n"]);
    }
    parts.extend([b"\n".as_slice(), body]);
    (
        format!("{method} {caller} {key}"),
        crate::tokens::sha256_hex_of(parts),
    )
}

/// Run a mutating request under its `Idempotency-Key` (SPEC §13): the same key and request
/// replay the first response, headers and token included; the same key with another request is
/// 422; a key in flight is 409. Keys are scoped per tenant and caller (per client address for
/// anonymous sign-up). Answers worth retrying (5xx, 429, 408, 409 busy) are not kept.
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
    let mut hash = RequestHash::of(req);
    hash.update(body);
    idempotent_hashed(state, req, scope, hash, run).await
}

/// The request hash an idempotency record keeps, fed the body as it arrives: a body read as a
/// stream (a CSV of invites) is hashed without being kept. The same bytes as
/// [`idempotency_record`] hashes at once.
pub struct RequestHash(sha2::Sha256);

impl std::fmt::Debug for RequestHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestHash")
    }
}

impl RequestHash {
    pub fn of(req: &HttpRequest) -> Self {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in [
            req.path().as_bytes(),
            b"?",
            req.query_string().as_bytes(),
            b"\n",
        ] {
            h.update(part);
        }
        for value in req.headers().get_all(header::CONTENT_TYPE) {
            h.update(value.as_bytes());
            h.update(b"\n");
        }
        h.update(b"\n");
        RequestHash(h)
    }

    pub fn update(&mut self, chunk: &[u8]) {
        sha2::Digest::update(&mut self.0, chunk);
    }

    fn hex(self) -> String {
        sha2::Digest::finalize(self.0)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// [`idempotent`] with the request's hash made by the caller (its body streamed).
pub async fn idempotent_hashed<F, Fut>(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    scope: TenantId,
    request_hash: RequestHash,
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
    let caller = req
        .extensions()
        .get::<CallerScope>()
        .map(|c| c.0.clone())
        .unwrap_or_else(|| format!("addr:{}", client_address(state, req)));
    let key = format!("{} {caller} {key}", req.method().as_str());
    let hash = request_hash.hex();
    let aad = format!("{scope} {key}");
    let owner = Uuid::new_v4();
    // The same key and request always derive the same event ids: a retry after a crash (the
    // record left in flight, then taken over) cannot write the same facts twice; and the
    // store marks the seed applied with the events, so a retry that would decide other facts
    // is not run at all (docs/adr/035).
    let seed = Uuid::new_v5(&IDEMPOTENT_EVENTS, format!("{aad}\n{hash}").as_bytes());
    match state
        .store
        .idempotency_begin_seeded(scope, &key, &hash, owner, Some(seed))
        .await
    {
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
            crate::replay::replay(stored, state.seal_key(), &aad)
        }
        Ok(begun @ (Begin::Started | Begin::Applied)) => {
            // An earlier attempt wrote its events and its answer was lost (its process died, or
            // it answered 5xx after the append): the request runs again only as a replay of
            // those events, which rebuilds the first answer when it decides the same; a run that
            // would decide other events writes nothing (docs/adr/035).
            let replay_only = begun == Begin::Applied;
            if let Some(ctx) = req.extensions_mut().get_mut::<RequestContext>() {
                ctx.event_id_seed = Some(seed);
                ctx.replay_only = replay_only;
            }
            let mut reply = run().await.unwrap_or_else(Reply::from);
            if is_problem(&reply, StatusCode::CONFLICT, "duplicate-event-id")
                || (replay_only && !reply.status.is_success())
            {
                // The events this key derives are stored already, with another decision (or the
                // replay was refused): the request went through before and its answer is lost.
                reply = already_applied();
            }
            let kept = if retryable(&reply) {
                state.store.idempotency_abandon(scope, &key, owner).await
            } else {
                let stored = crate::replay::keep(&reply, state.seal_key(), &aad);
                state
                    .store
                    .idempotency_complete(scope, &key, owner, stored)
                    .await
            };
            match kept {
                Ok(true) => {}
                // Another attempt took the key over (this one ran past the in-flight timeout, or
                // this instance looked dead: its liveness session was cut, docs/adr/035): its
                // answer stands; this one is not kept.
                Ok(false) => tracing::warn!("idempotency key taken over; this answer is not kept"),
                Err(e) => tracing::error!(error = %e, "idempotency record not kept"),
            }
            reply
        }
    }
}

/// A file read in pieces of 256 KiB on the blocking pool, as a response body.
pub fn file_chunks(
    file: std::fs::File,
) -> impl futures_util::Stream<Item = Result<web::Bytes, actix_web::Error>> {
    futures_util::stream::try_unfold(file, |mut file| async move {
        let (file, chunk) = web::block(move || {
            use std::io::Read;
            let mut chunk = vec![0u8; 256 * 1024];
            let n = file.read(&mut chunk)?;
            chunk.truncate(n);
            Ok::<_, std::io::Error>((file, chunk))
        })
        .await??;
        Ok(if chunk.is_empty() {
            None
        } else {
            Some((web::Bytes::from(chunk), file))
        })
    })
}

#[cfg(test)]
mod request_hash_tests {
    use super::*;

    #[test]
    fn a_body_hashed_as_it_streams_is_the_records_hash() {
        let req = actix_web::test::TestRequest::post()
            .uri("/v1/invites/csv?dry_run=true")
            .insert_header((header::CONTENT_TYPE, "text/csv"))
            .to_http_request();
        let mut streamed = RequestHash::of(&req);
        for chunk in [b"a@x.io,".as_slice(), b"viewer\r", b"\n"] {
            streamed.update(chunk);
        }
        let (_, whole) = idempotency_record(
            "POST",
            "user:1",
            "k",
            "/v1/invites/csv",
            "dry_run=true",
            &[b"text/csv"],
            b"a@x.io,viewer\r\n",
        );
        assert_eq!(streamed.hex(), whole);
    }
}
