//! Authentication and authorization, in one place: the `Caller` extractor looks up the matched
//! route in the permission table (`rbac::ROUTES`), checks the bearer token, the caller's role and
//! the route's feature flag. A handler that needs a caller takes `Caller`; a route missing from
//! the table is refused.

use crate::problem::Problem;
use crate::rbac::{self, Role, RouteSpec};
use crate::server::AppState;
use actix_web::HttpMessage;
use actix_web::http::{StatusCode, header};
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use domain::TenantId;
use futures_util::future::LocalBoxFuture;
use projections::Principal;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Caller {
    pub principal: Principal,
    pub spec: &'static RouteSpec,
}

impl Caller {
    pub fn role(&self) -> Role {
        match &self.principal {
            Principal::Member { role, .. } => Role::Tenant(*role),
            Principal::Operator { role, .. } => Role::Platform(*role),
        }
    }

    /// The caller's tenant; platform operators have none.
    pub fn tenant(&self) -> Option<TenantId> {
        match &self.principal {
            Principal::Member { tenant, .. } => Some(*tenant),
            Principal::Operator { .. } => None,
        }
    }

    /// The caller's tenant, for routes only tenant roles reach (the table guarantees it).
    pub fn tenant_or_forbidden(&self) -> Result<TenantId, Problem> {
        self.tenant().ok_or_else(|| {
            Problem::forbidden("this route acts on a tenant; platform tokens have none")
        })
    }

    /// The envelope's `actor`: `user:<id>` or `operator:<id>`.
    pub fn actor(&self) -> String {
        match &self.principal {
            Principal::Member { user_id, .. } => format!("user:{user_id}"),
            Principal::Operator { operator_id, .. } => format!("operator:{operator_id}"),
        }
    }
}

impl FromRequest for Caller {
    type Error = Problem;
    type Future = LocalBoxFuture<'static, Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { authorize(&req).await })
    }
}

async fn authorize(req: &HttpRequest) -> Result<Caller, Problem> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(Problem::internal)?;
    let spec = req
        .match_pattern()
        .and_then(|pattern| rbac::find(req.method().as_str(), &pattern))
        .ok_or_else(|| {
            tracing::error!(path = req.path(), "route missing from the permission table");
            Problem::internal()
        })?;
    let mut values = req.headers().get_all(header::AUTHORIZATION);
    let value = match (values.next(), values.next()) {
        (None, _) => return Err(Problem::unauthorized("send Authorization: Bearer <token>")),
        (Some(_), Some(_)) => return Err(Problem::bad_request("send one Authorization header")),
        (Some(v), None) => v,
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|t| crate::tokens::well_formed(t))
        .ok_or_else(|| Problem::unauthorized("the bearer token is malformed"))?;
    identity_current(state).await?;
    let hash = crate::tokens::sha256_hex(token.as_bytes());
    // The application's clock: the one decisions are made with (a test moves it forward).
    let now = state.clock.now();
    let mut found = state.identity.authenticate(&hash, now);
    if found == Err(projections::TokenProblem::Unknown) {
        // A token issued a moment ago (here or by another instance) may not be applied yet.
        state
            .projections
            .catch_up_one("identity", Duration::from_secs(2))
            .await;
        found = state.identity.authenticate(&hash, now);
    }
    let principal = found.map_err(|p| match p {
        projections::TokenProblem::Unknown => Problem::unauthorized("unknown token"),
        projections::TokenProblem::Expired => Problem::unauthorized("the token has expired"),
        projections::TokenProblem::Revoked => Problem::unauthorized("the token was revoked"),
    })?;
    let caller = Caller { principal, spec };
    // Idempotency keys are scoped per caller (`http::idempotent`).
    req.extensions_mut()
        .insert(crate::http::CallerScope(caller.actor()));
    if !rbac::allows(spec, caller.role()) {
        return Err(Problem::forbidden(format!(
            "the {} role may not call {} {}",
            caller.role(),
            spec.method,
            spec.path
        ))
        .with("role", caller.role().to_string()));
    }
    if let (Some(flag), Some(tenant)) = (spec.flag, caller.tenant()) {
        let overrides = state
            .identity
            .tenant(tenant)
            .map(|t| t.flags)
            .unwrap_or_default();
        if !state.settings.flag_enabled(flag, &overrides) {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "feature-disabled",
                "This feature is not enabled for your tenant",
            )
            .detail(format!("the {flag} feature is turned off for this tenant"))
            .with("flag", flag.as_str()));
        }
    }
    Ok(caller)
}

/// Authentication answers from the identity projection only while it can be trusted: it must have
/// reached the log's head as it was when this process started (a revocation may be in the tail
/// after its persisted checkpoint), and it must not be stopped at an event it cannot read (that
/// event may be a revocation). Otherwise the request is refused with 503, never let through.
async fn identity_current(state: &AppState) -> Result<(), Problem> {
    const IDENTITY: &str = "identity";
    let stopped = |u: projections::Unreadable| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "identity-stopped",
            "Authentication is paused",
        )
        .detail(format!(
            "the identity read model stopped at position {} ({}) and cannot tell whether a token \
             was revoked after it; operators have been told (see /readyz)",
            u.position, u.event_type
        ))
        .with("projection", IDENTITY)
        .with("stopped_at", u.position)
        .header(header::RETRY_AFTER, "30")
    };
    if let Some(u) = state.projections.stopped(IDENTITY) {
        return Err(stopped(u));
    }
    if !state
        .projections
        .started(IDENTITY, Duration::from_secs(2))
        .await
    {
        if let Some(u) = state.projections.stopped(IDENTITY) {
            return Err(stopped(u));
        }
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "identity-starting",
            "Authentication is not ready yet",
        )
        .detail("the identity read model is still catching up with the log after a start")
        .with("projection", IDENTITY)
        .header(header::RETRY_AFTER, "1"));
    }
    Ok(())
}
