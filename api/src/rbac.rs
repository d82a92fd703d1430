//! The route table: every route said once — its method and path, who may call it, the flag that
//! gates it, its handler and its OpenAPI shape. The server registers it (`server::routes`), the
//! `Caller` extractor (`auth.rs`) enforces it, `docs/permissions.md` and `/openapi.json` are
//! generated from it. A new route is one entry here and nothing anywhere else.

use crate::http::ReadQuery;
use crate::{billing_routes as billing, data_routes as data, quota_routes as quota, routes as r};
use domain::{Flag, PlatformRole, TenantRole};
use std::fmt;
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, ToSchema};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Tenant(TenantRole),
    Platform(PlatformRole),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Tenant(r) => write!(f, "{r}"),
            Role::Platform(r) => write!(f, "platform:{r}"),
        }
    }
}

impl Role {
    pub fn all() -> Vec<Role> {
        TenantRole::ALL
            .iter()
            .map(|r| Role::Tenant(*r))
            .chain(PlatformRole::ALL.iter().map(|r| Role::Platform(*r)))
            .collect()
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Access {
    /// No token needed.
    Public,
    /// A valid token of one of these roles.
    Roles(&'static [Role]),
    /// The tenant's SCIM token (`scim_routes::ScimCaller`), not a member's or operator's token:
    /// SCIM routes answer SCIM errors (ADR 031).
    Scim,
}

/// One route, said once: its method and path, who may call it, the handler that answers it and
/// how the OpenAPI document describes it. Registration (`server.rs`), the permission check
/// (`auth.rs`), `docs/permissions.md` and `/openapi.json` (`openapi.rs`) are all read from here.
#[derive(Clone, Copy, Debug)]
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    /// The feature flag that must be on for the caller's tenant.
    pub flag: Option<Flag>,
    pub summary: &'static str,
    /// Attaches the handler to actix's route for this method and path.
    pub handler: fn(actix_web::Route) -> actix_web::Route,
    pub api: Api,
}

/// How a route's input and answer are shaped, for the OpenAPI document. Schemas come from the
/// Rust types that parse the request and serialize the answer (`utoipa::ToSchema`), so the
/// document cannot drift from the code.
#[derive(Clone, Copy, Debug)]
pub struct Api {
    /// The query string's parameters (`utoipa::IntoParams` of the type the handler parses).
    pub query: Option<Params>,
    pub request: Body,
    /// The success status.
    pub status: u16,
    pub response: Body,
    /// Problem statuses the route answers besides the ones every route of its kind answers
    /// (see `openapi::problems`).
    pub problems: &'static [(u16, &'static str)],
    /// Whether the route honours `Idempotency-Key` (`http::idempotent`).
    pub idempotent: bool,
    /// Problem statuses that may also carry the success body's type (readiness: 503 with the
    /// report while catching up, a problem document when the store is unreachable).
    pub body_also_on: &'static [u16],
}

/// Collects a type's schema and the schemas it refers to; returns its name.
pub type Schema = fn(&mut Vec<(String, RefOr<utoipa::openapi::schema::Schema>)>) -> String;
/// A query type's parameters.
pub type Params = fn() -> Vec<utoipa::openapi::path::Parameter>;

#[derive(Clone, Copy, Debug)]
pub enum Body {
    None,
    /// `application/json` of this type.
    Json(Schema),
    /// Any JSON object (the OpenAPI document itself, the readiness report).
    AnyJson,
    /// A CSV upload (limited by `dataset_limit` instead of `body_limit`).
    Csv,
    /// Text of this content type.
    Text(&'static str),
    /// An export's file: CSV or JSON Lines.
    Download,
    /// A SCIM resource, list or message (`application/scim+json`, RFC 7643).
    Scim,
}

impl Body {
    pub const fn json<T: ToSchema>() -> Body {
        Body::Json(schema_of::<T>)
    }
}

fn schema_of<T: ToSchema>(
    out: &mut Vec<(String, RefOr<utoipa::openapi::schema::Schema>)>,
) -> String {
    T::schemas(out);
    let name = T::name().into_owned();
    out.push((name.clone(), T::schema()));
    name
}

pub const fn params<T: IntoParams>() -> Option<Params> {
    Some(params_of::<T>)
}

fn params_of<T: IntoParams>() -> Vec<utoipa::openapi::path::Parameter> {
    T::into_params(|| Some(utoipa::openapi::path::ParameterIn::Query))
}

impl Api {
    /// A read answering 200 with `T`, with `?min_position`.
    pub const fn read<T: ToSchema>() -> Api {
        Api {
            query: params::<ReadQuery>(),
            request: Body::None,
            status: 200,
            response: Body::json::<T>(),
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        }
    }

    /// A read answering 200 with text of `content_type` (CSV, SVG), its query described by
    /// `query`; a parameter out of range is 422.
    pub const fn text(query: Option<Params>, content_type: &'static str) -> Api {
        Api {
            query,
            request: Body::None,
            status: 200,
            response: Body::Text(content_type),
            problems: &[(422, "A parameter is invalid")],
            idempotent: false,
            body_also_on: &[],
        }
    }

    /// A command taking `Req` and answering `status` with `Res`.
    pub const fn command<Req: ToSchema, Res: ToSchema>(status: u16) -> Api {
        Api {
            query: None,
            request: Body::json::<Req>(),
            status,
            response: Body::json::<Res>(),
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        }
    }

    /// A command without a body answering 200 with `Res`.
    pub const fn bodiless<Res: ToSchema>() -> Api {
        Api {
            query: None,
            request: Body::None,
            status: 200,
            response: Body::json::<Res>(),
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        }
    }

    pub const fn with_query(mut self, query: Option<Params>) -> Api {
        self.query = query;
        self
    }

    /// Another success status (202 for work that goes on after the answer, …).
    pub const fn with_status(mut self, status: u16) -> Api {
        self.status = status;
        self
    }

    /// The route runs under `Idempotency-Key`.
    pub const fn idempotent(mut self) -> Api {
        self.idempotent = true;
        self
    }

    pub const fn with_problems(mut self, problems: &'static [(u16, &'static str)]) -> Api {
        self.problems = problems;
        self
    }
}

use PlatformRole as P;
use TenantRole as T;

const EVERY_TENANT_ROLE: &[Role] = &[
    Role::Tenant(T::Owner),
    Role::Tenant(T::Admin),
    Role::Tenant(T::Analyst),
    Role::Tenant(T::Viewer),
    Role::Tenant(T::Billing),
    Role::Tenant(T::Compliance),
];
const EVERYONE: &[Role] = &[
    Role::Tenant(T::Owner),
    Role::Tenant(T::Admin),
    Role::Tenant(T::Analyst),
    Role::Tenant(T::Viewer),
    Role::Tenant(T::Billing),
    Role::Tenant(T::Compliance),
    Role::Platform(P::Support),
    Role::Platform(P::Pm),
    Role::Platform(P::Ops),
    Role::Platform(P::Finance),
];
const TENANT_ADMINS: &[Role] = &[Role::Tenant(T::Owner), Role::Tenant(T::Admin)];
/// Tenant owners alone (the SCIM token).
const OWNERS: &[Role] = &[Role::Tenant(T::Owner)];
/// Who triages feedback (SPEC §7): platform support and pm across tenants, tenant owners and
/// admins for their own.
const FEEDBACK_TRIAGE: &[Role] = &[
    Role::Tenant(T::Owner),
    Role::Tenant(T::Admin),
    Role::Platform(P::Support),
    Role::Platform(P::Pm),
];
const AUDITORS: &[Role] = &[
    Role::Tenant(T::Owner),
    Role::Tenant(T::Admin),
    Role::Tenant(T::Compliance),
];
/// Who reads a tenant's signed checkpoint (issue 12).
const CHECKPOINT_READERS: &[Role] = &[
    Role::Tenant(T::Owner),
    Role::Tenant(T::Compliance),
    Role::Platform(P::Ops),
];
/// Who exports audit bundles (issue 12).
const BUNDLE_EXPORTERS: &[Role] = &[Role::Tenant(T::Owner), Role::Tenant(T::Compliance)];
const PLATFORM_READERS: &[Role] = &[
    Role::Platform(P::Support),
    Role::Platform(P::Pm),
    Role::Platform(P::Ops),
];
const PLATFORM_OPS: &[Role] = &[Role::Platform(P::Ops)];
/// Who sees a tenant's invoices (SPEC §5): its owners and its billing role.
const BILLING_READERS: &[Role] = &[Role::Tenant(T::Owner), Role::Tenant(T::Billing)];
/// Platform finance and ops: billing modes, finalization, credit notes, reconciliation.
const FINANCE: &[Role] = &[Role::Platform(P::Finance), Role::Platform(P::Ops)];
const INSIGHT_READERS: &[Role] = &[Role::Platform(P::Pm), Role::Platform(P::Ops)];
const DATA_WRITERS: &[Role] = &[
    Role::Tenant(T::Owner),
    Role::Tenant(T::Admin),
    Role::Tenant(T::Analyst),
];
const DATA_READERS: &[Role] = &[
    Role::Tenant(T::Owner),
    Role::Tenant(T::Admin),
    Role::Tenant(T::Analyst),
    Role::Tenant(T::Viewer),
];

/// Who revokes a token by id: members (their own; owners and admins any of their tenant's) and
/// platform ops (operator tokens).
const TOKEN_REVOKERS: &[Role] = &[
    Role::Tenant(T::Owner),
    Role::Tenant(T::Admin),
    Role::Tenant(T::Analyst),
    Role::Tenant(T::Viewer),
    Role::Tenant(T::Billing),
    Role::Tenant(T::Compliance),
    Role::Platform(P::Ops),
];

/// The problem a metered route adds.
const METERED: &[(u16, &str)] = &[(402, "The plan's quota is used up and its grace is over")];

pub const ROUTES: &[RouteSpec] = &[
    RouteSpec {
        method: "GET",
        path: "/healthz",
        access: Access::Public,
        flag: None,
        summary: "Liveness",
        handler: |route| route.to(r::healthz),
        api: Api {
            query: None,
            request: Body::None,
            status: 200,
            response: Body::json::<r::Health>(),
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "GET",
        path: "/readyz",
        access: Access::Public,
        flag: None,
        summary: "Readiness: store reachable, projections caught up",
        handler: |route| route.to(r::readyz),
        api: Api {
            query: None,
            request: Body::None,
            status: 200,
            response: Body::AnyJson,
            problems: &[(
                503,
                "Not ready: the read models are catching up or one is stopped at an event it cannot read (the report names it), or the store is unreachable (a problem)",
            )],
            idempotent: false,
            body_also_on: &[503],
        },
    },
    RouteSpec {
        method: "GET",
        path: "/metrics",
        access: Access::Public,
        flag: None,
        summary: "Metrics (OpenMetrics text): loopback clients, or the metrics token",
        handler: |route| route.to(r::metrics),
        api: Api {
            query: None,
            request: Body::None,
            status: 200,
            response: Body::Text("application/openmetrics-text"),
            problems: &[
                (401, "`metrics_token` is set and this is not it"),
                (403, "Not a loopback client, and no `metrics_token` is set"),
            ],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "GET",
        path: "/openapi.json",
        access: Access::Public,
        flag: None,
        summary: "This API's OpenAPI 3.1 document",
        handler: |route| route.to(r::openapi),
        api: Api {
            query: None,
            request: Body::None,
            status: 200,
            response: Body::AnyJson,
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "POST",
        path: "/v1/signup",
        access: Access::Public,
        flag: None,
        summary: "Create a tenant and its owner; returns the owner's first token",
        handler: |route| route.to(r::signup),
        api: Api::command::<r::SignupRequest, r::SignupResponse>(201)
            .idempotent()
            .with_problems(&[(429, "Too many sign-ups from this address (see Retry-After)")]),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/me",
        access: Access::Roles(EVERYONE),
        flag: None,
        summary: "Who the token speaks for",
        handler: |route| route.to(r::me),
        api: Api::read::<r::Me>(),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/tenant",
        access: Access::Roles(EVERY_TENANT_ROLE),
        flag: None,
        summary: "The caller's tenant",
        handler: |route| route.to(r::tenant_info),
        api: Api::read::<r::TenantInfo>(),
    },
    RouteSpec {
        method: "PATCH",
        path: "/v1/tenant",
        access: Access::Roles(TENANT_ADMINS),
        flag: None,
        summary: "Rename the caller's tenant",
        handler: |route| route.to(r::rename_tenant),
        api: Api::command::<r::RenameRequest, r::Renamed>(200).idempotent(),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/members",
        access: Access::Roles(TENANT_ADMINS),
        flag: None,
        summary: "Add a member; returns their first token",
        handler: |route| route.to(r::add_member),
        api: Api::command::<r::MemberRequest, r::MemberResponse>(201).idempotent(),
    },
    RouteSpec {
        method: "DELETE",
        path: "/v1/tokens/current",
        access: Access::Roles(EVERYONE),
        flag: None,
        summary: "Revoke the token used for this request",
        handler: |route| route.to(r::revoke_current_token),
        api: Api::bodiless::<r::Revoked>(),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/tokens",
        access: Access::Roles(EVERY_TENANT_ROLE),
        flag: Some(Flag::InviteSsoV1),
        summary: "Rotate: a new token for the caller; the one used for this request is revoked",
        handler: |route| route.to(crate::access_routes::rotate),
        api: Api::bodiless::<crate::access_routes::TokenOut>().with_status(201),
    },
    RouteSpec {
        method: "DELETE",
        path: "/v1/tokens/{token_id}",
        access: Access::Roles(TOKEN_REVOKERS),
        flag: Some(Flag::InviteSsoV1),
        summary: "Revoke a token: owners/admins any of the tenant (admins none of an owner), a member their own, platform ops an operator's",
        handler: |route| route.to(crate::access_routes::revoke),
        api: Api::bodiless::<crate::access_routes::TokenRevoked>()
            .with_query(params::<crate::access_routes::ReasonQuery>())
            .with_problems(&[
                (404, "No such token (or not one the caller may see)"),
                (409, "Already revoked"),
            ]),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/members/{user_id}/tokens",
        access: Access::Roles(TENANT_ADMINS),
        flag: Some(Flag::InviteSsoV1),
        summary: "Issue a new token for a member (owners, admins; admins not for an owner)",
        handler: |route| route.to(crate::access_routes::reissue),
        api: Api::bodiless::<crate::access_routes::TokenOut>()
            .with_status(201)
            .with_problems(&[(404, "No such member")]),
    },
    RouteSpec {
        method: "DELETE",
        path: "/v1/members/{user_id}",
        access: Access::Roles(EVERY_TENANT_ROLE),
        flag: Some(Flag::InviteSsoV1),
        summary: "Remove a member (owners, admins) or leave (yourself); their tokens stop at once, the seat is freed",
        handler: |route| route.to(crate::access_routes::remove),
        api: Api::bodiless::<crate::access_routes::MemberRemoved>()
            .with_query(params::<crate::access_routes::ReasonQuery>())
            .with_problems(&[(404, "No such member"), (409, "The last owner")]),
    },
    RouteSpec {
        method: "PATCH",
        path: "/v1/members/{user_id}",
        access: Access::Roles(TENANT_ADMINS),
        flag: Some(Flag::InviteSsoV1),
        summary: "Change a member's role (only owners make owners; never the last owner)",
        handler: |route| route.to(crate::access_routes::change_role),
        api: Api::command::<crate::access_routes::RoleRequest, crate::access_routes::RoleChanged>(
            200,
        )
        .with_problems(&[
            (404, "No such member"),
            (409, "The last owner, or the same role"),
        ]),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/sign-in",
        access: Access::Public,
        flag: None,
        summary: "Ask for a single-use sign-in code by email (the same answer for unknown emails)",
        handler: |route| route.to(crate::access_routes::sign_in),
        api: Api::command::<crate::access_routes::SignInRequest, crate::access_routes::SignInSent>(
            202,
        ),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/sign-in/verify",
        access: Access::Public,
        flag: None,
        summary: "Present the code: a fresh token (401 for a wrong, used or expired code, or too many attempts)",
        handler: |route| route.to(crate::access_routes::verify_sign_in),
        api: Api::command::<crate::access_routes::VerifyRequest, crate::access_routes::Admitted>(
            200,
        )
        .with_problems(&[(401, "The code is wrong or no longer valid")]),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/invites",
        access: Access::Roles(TENANT_ADMINS),
        flag: Some(Flag::InviteSsoV1),
        summary: "Invite one person by email (delivered through the outbox; expires in 7 days)",
        handler: |route| route.to(crate::access_routes::invite),
        api: Api::command::<crate::access_routes::InviteRequest, crate::access_routes::InviteOut>(
            201,
        )
        .idempotent()
        .with_problems(&[(
            409,
            "Already a member, a pending invite of another role, or no seat left",
        )]),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/invites/csv",
        access: Access::Roles(TENANT_ADMINS),
        flag: Some(Flag::InviteSsoV1),
        summary: "Invite from CSV rows `email,role[,name]` (at most 10,000): one outcome per row; `dry_run` changes nothing",
        handler: |route| route.to(crate::access_routes::import_csv),
        api: Api {
            query: params::<crate::access_routes::CsvQuery>(),
            request: Body::Csv,
            status: 200,
            response: Body::json::<crate::access_routes::ImportOut>(),
            problems: &[
                (409, "No seat left for the created rows"),
                (
                    422,
                    "The file as a whole cannot be read (empty, more than 10,000 rows, a bad header)",
                ),
            ],
            idempotent: true,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "POST",
        path: "/v1/invites/accept",
        access: Access::Public,
        flag: None,
        summary: "Accept an invite with its token: the member is made and their first token issued",
        handler: |route| route.to(crate::access_routes::accept),
        api: Api::command::<crate::access_routes::AcceptRequest, crate::access_routes::Admitted>(
            201,
        )
        .with_problems(&[
            (404, "No such invite"),
            (409, "Already accepted, or the email is a member"),
            (410, "The invite expired"),
        ]),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/flags",
        access: Access::Roles(EVERY_TENANT_ROLE),
        flag: None,
        summary: "The caller's tenant's effective feature flags",
        handler: |route| route.to(r::my_flags),
        api: Api::read::<r::Flags>(),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/tenants/{tenant_id}/flags",
        access: Access::Roles(PLATFORM_READERS),
        flag: None,
        summary: "A tenant's effective flags and overrides (platform)",
        handler: |route| route.to(r::tenant_flags),
        api: Api::read::<r::TenantFlags>(),
    },
    RouteSpec {
        method: "PUT",
        path: "/v1/tenants/{tenant_id}/flags/{flag}",
        access: Access::Roles(PLATFORM_OPS),
        flag: None,
        summary: "Override a flag for a tenant (platform ops)",
        handler: |route| route.to(r::set_tenant_flag),
        api: Api::command::<r::FlagRequest, r::FlagSet>(200),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/audit/events",
        access: Access::Roles(AUDITORS),
        flag: Some(Flag::AuditV12),
        summary: "The tenant's events: actor, time, type, payload",
        handler: |route| route.to(r::audit_events),
        api: Api::read::<r::AuditPage>()
            .with_query(params::<r::AuditQuery>())
            .with_problems(&[(422, "A filter, the cursor or the limit is invalid")]),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/audit/keys",
        access: Access::Roles(EVERYONE),
        flag: Some(Flag::AuditV12),
        summary: "The audit keyring: log and export public keys (PEM, C2SP vkey), rotated ones kept",
        handler: |route| route.to(crate::audit_routes::keys),
        api: Api::read::<crate::audit_routes::Keyring>().with_query(None),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/audit/keys/{kind}/rotate",
        access: Access::Roles(PLATFORM_OPS),
        flag: None,
        summary: "Rotate the audit log key or export key (platform ops); old keys stay listed",
        handler: |route| route.to(crate::audit_routes::rotate_key),
        api: Api::bodiless::<crate::audit_routes::KeyRotated>().with_status(201),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/audit/checkpoint",
        access: Access::Roles(CHECKPOINT_READERS),
        flag: Some(Flag::AuditV12),
        summary: "The tenant's audit tree, signed now (C2SP signed note); ?tenant= for platform ops",
        handler: |route| route.to(crate::audit_routes::checkpoint),
        api: Api::read::<crate::audit_routes::AuditCheckpoint>()
            .with_query(params::<crate::audit_routes::CheckpointQuery>())
            .with_problems(&[(422, "`tenant` is not a UUID")]),
    },
    RouteSpec {
        method: "PUT",
        path: "/v1/audit/retention",
        access: Access::Roles(BUNDLE_EXPORTERS),
        flag: Some(Flag::AuditV12),
        summary: "Set the tenant's retention policy (`retention.policy_set`), proven in its bundles",
        handler: |route| route.to(crate::audit_routes::set_retention),
        api: Api::command::<crate::audit_routes::RetentionRequest, crate::audit_routes::RetentionSet>(
            200,
        ),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/audit/erasures",
        access: Access::Roles(BUNDLE_EXPORTERS),
        flag: Some(Flag::AuditV12),
        summary: "Erase a member's personal data at their request (`erasure.applied`, keys destroyed)",
        handler: |route| route.to(crate::erasure_routes::erase_member),
        api: Api::command::<
            crate::erasure_routes::ErasureRequest,
            crate::erasure_routes::ErasureDone,
        >(200)
        .with_problems(&[(422, "`user_id` is not a UUID")]),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/audit/state",
        access: Access::Roles(BUNDLE_EXPORTERS),
        flag: Some(Flag::AuditV12),
        summary: "The tenant at a moment (?at=), rebuilt from its events as `tenantry-verify replay` does",
        handler: |route| route.to(crate::audit_routes::state_at),
        api: Api::read::<crate::audit_routes::AuditState>()
            .with_query(params::<crate::audit_routes::StateQuery>())
            .with_problems(&[(422, "`at` is not an RFC 3339 time")]),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/audit/bundles",
        access: Access::Roles(BUNDLE_EXPORTERS),
        flag: Some(Flag::AuditV12),
        summary: "A signed audit bundle (.tar.gz) of the tenant's events recorded in [from, to)",
        handler: |route| route.to(crate::audit_routes::create_bundle),
        api: Api {
            query: None,
            request: Body::json::<crate::audit_routes::BundleRequest>(),
            status: 200,
            response: Body::Text("application/gzip"),
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "GET",
        path: "/v1/insights/funnel",
        access: Access::Roles(INSIGHT_READERS),
        flag: None,
        summary: "The sign-up funnel across tenants (platform pm, ops)",
        handler: |route| route.to(crate::insights_routes::funnel),
        api: Api::read::<crate::insights_routes::FunnelOut>()
            .with_query(params::<crate::insights_routes::FunnelQuery>())
            .with_problems(&[(422, "A parameter is invalid")]),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/insights/funnel.csv",
        access: Access::Roles(INSIGHT_READERS),
        flag: None,
        summary: "The funnel as CSV",
        handler: |route| route.to(crate::insights_routes::funnel_csv),
        api: Api::text(params::<crate::insights_routes::FunnelQuery>(), "text/csv"),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/insights/funnel.svg",
        access: Access::Roles(INSIGHT_READERS),
        flag: None,
        summary: "The funnel as an SVG bar chart",
        handler: |route| route.to(crate::insights_routes::funnel_svg),
        api: Api::text(
            params::<crate::insights_routes::FunnelQuery>(),
            "image/svg+xml",
        ),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/insights/cohorts",
        access: Access::Roles(INSIGHT_READERS),
        flag: None,
        summary: "Weekly retention cohorts (platform pm, ops)",
        handler: |route| route.to(crate::insights_routes::cohorts),
        api: Api::read::<crate::insights_routes::CohortsOut>()
            .with_query(params::<crate::insights_routes::CohortQuery>())
            .with_problems(&[(422, "A parameter is invalid")]),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/insights/cohorts.csv",
        access: Access::Roles(INSIGHT_READERS),
        flag: None,
        summary: "The cohorts as CSV",
        handler: |route| route.to(crate::insights_routes::cohorts_csv),
        api: Api::text(params::<crate::insights_routes::CohortQuery>(), "text/csv"),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/insights/cohorts.svg",
        access: Access::Roles(INSIGHT_READERS),
        flag: None,
        summary: "The cohorts as an SVG heatmap",
        handler: |route| route.to(crate::insights_routes::cohorts_svg),
        api: Api::text(
            params::<crate::insights_routes::CohortQuery>(),
            "image/svg+xml",
        ),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/insights/quota",
        access: Access::Roles(INSIGHT_READERS),
        flag: None,
        summary: "Blocks, grace entries and upgrades by ISO week and plan (platform pm, ops)",
        handler: |route| route.to(crate::insights_routes::quota),
        api: Api::read::<crate::insights_routes::QuotaReportOut>()
            .with_query(params::<crate::insights_routes::QuotaQuery>())
            .with_problems(&[(422, "A parameter is invalid")]),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/insights/quota.csv",
        access: Access::Roles(INSIGHT_READERS),
        flag: None,
        summary: "The quota/upgrade report as CSV",
        handler: |route| route.to(crate::insights_routes::quota_csv),
        api: Api::text(params::<crate::insights_routes::QuotaQuery>(), "text/csv"),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/onboarding",
        access: Access::Roles(EVERY_TENANT_ROLE),
        flag: Some(Flag::FirstSuccessV11),
        summary: "The member's first-success flow: steps, resume payload after 30 minutes away, next nudge",
        handler: |route| route.to(crate::onboarding_routes::onboarding),
        api: Api::read::<crate::onboarding_routes::OnboardingOut>(),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/onboarding/position",
        access: Access::Roles(EVERY_TENANT_ROLE),
        flag: Some(Flag::FirstSuccessV11),
        summary: "Report the screen and step the client shows",
        handler: |route| route.to(crate::onboarding_routes::report_position),
        api: Api::command::<
            crate::onboarding_routes::PositionRequest,
            crate::onboarding_routes::Recorded,
        >(200)
        .idempotent(),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/onboarding/nudges/{nudge_id}/dismiss",
        access: Access::Roles(EVERY_TENANT_ROLE),
        flag: Some(Flag::FirstSuccessV11),
        summary: "Dismiss a nudge (it comes back only if its rule says so)",
        handler: |route| route.to(crate::onboarding_routes::dismiss),
        api: Api::bodiless::<crate::onboarding_routes::Recorded>()
            .idempotent()
            .with_problems(&[(404, "No nudge of that id")]),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/onboarding/nudges/{nudge_id}/snooze",
        access: Access::Roles(EVERY_TENANT_ROLE),
        flag: Some(Flag::FirstSuccessV11),
        summary: "Snooze a nudge for some minutes",
        handler: |route| route.to(crate::onboarding_routes::snooze),
        api: Api::command::<
            crate::onboarding_routes::SnoozeRequest,
            crate::onboarding_routes::Recorded,
        >(200)
        .idempotent()
        .with_problems(&[(404, "No nudge of that id")]),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/feedback",
        access: Access::Roles(EVERY_TENANT_ROLE),
        flag: Some(Flag::FeedbackMvp),
        summary: "Send in-product feedback (scrubbed before it is stored; diagnostics attached unless opted out)",
        handler: |route| route.to(crate::feedback_routes::submit),
        api: Api::command::<
            crate::feedback_routes::FeedbackRequest,
            crate::feedback_routes::FeedbackCreated,
        >(201)
        .idempotent()
        .with_problems(&[(429, "More than 10 submissions a minute by this user")]),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/feedback",
        access: Access::Roles(FEEDBACK_TRIAGE),
        flag: Some(Flag::FeedbackMvp),
        summary: "The triage board: filtered, paged, with counts by severity and screen (platform support, pm; tenant owners, admins: their own)",
        handler: |route| route.to(crate::feedback_routes::list),
        api: Api::read::<crate::feedback_routes::FeedbackList>()
            .with_query(params::<crate::feedback_routes::FeedbackQuery>())
            .with_problems(&[(422, "A parameter is invalid")]),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/feedback.csv",
        access: Access::Roles(FEEDBACK_TRIAGE),
        flag: Some(Flag::FeedbackMvp),
        summary: "A filtered view of the board as CSV (RFC 4180, stable columns)",
        handler: |route| route.to(crate::feedback_routes::csv),
        api: Api::text(
            params::<crate::feedback_routes::FeedbackCsvQuery>(),
            "text/csv",
        ),
    },
    RouteSpec {
        method: "PUT",
        path: "/v1/tenant/feedback-diagnostics",
        access: Access::Roles(TENANT_ADMINS),
        flag: Some(Flag::FeedbackMvp),
        summary: "Turn feedback diagnostics on or off for the whole tenant (off: only screen, step and severity are kept)",
        handler: |route| route.to(crate::feedback_routes::set_diagnostics),
        api: Api::command::<
            crate::feedback_routes::DiagnosticsSetting,
            crate::feedback_routes::DiagnosticsSettingOut,
        >(200),
    },
    RouteSpec {
        method: "PATCH",
        path: "/v1/feedback/{feedback_id}",
        access: Access::Roles(FEEDBACK_TRIAGE),
        flag: Some(Flag::FeedbackMvp),
        summary: "Triage an item: state, assignee, labels, priority",
        handler: |route| route.to(crate::feedback_routes::triage),
        api: Api::command::<
            crate::feedback_routes::TriageRequest,
            crate::feedback_routes::TriageDone,
        >(200)
        .with_problems(&[
            (404, "No feedback of that id (in the caller's tenant)"),
            (409, "The state cannot move that way"),
        ]),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/insights/dropoff",
        access: Access::Roles(INSIGHT_READERS),
        flag: None,
        summary: "First-success drop-off per step across users (platform pm, ops)",
        handler: |route| route.to(crate::onboarding_routes::dropoff),
        api: Api::read::<crate::onboarding_routes::DropOffReport>()
            .with_query(params::<crate::onboarding_routes::DropOffQuery>())
            .with_problems(&[(422, "A parameter is invalid")]),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/insights/dropoff.csv",
        access: Access::Roles(INSIGHT_READERS),
        flag: None,
        summary: "Drop-off as CSV",
        handler: |route| route.to(crate::onboarding_routes::dropoff_csv),
        api: Api::text(
            params::<crate::onboarding_routes::DropOffQuery>(),
            "text/csv",
        ),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/insights/dropoff.svg",
        access: Access::Roles(INSIGHT_READERS),
        flag: None,
        summary: "Drop-off as an SVG bar chart",
        handler: |route| route.to(crate::onboarding_routes::dropoff_svg),
        api: Api::text(
            params::<crate::onboarding_routes::DropOffQuery>(),
            "image/svg+xml",
        ),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/ops/projections/{name}/rebuild",
        access: Access::Roles(PLATFORM_OPS),
        flag: None,
        summary: "Rebuild a projection from position 1 beside the live one (platform ops)",
        handler: |route| route.to(crate::ops_routes::rebuild_projection),
        api: Api {
            query: None,
            request: Body::None,
            status: 202,
            response: Body::json::<crate::ops_routes::RebuildStarted>(),
            problems: &[
                (404, "No projection of that name"),
                (409, "A rebuild of it is already running"),
            ],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "GET",
        path: "/v1/ops/slo",
        access: Access::Roles(PLATFORM_OPS),
        flag: None,
        summary: "SLOs in-process: budget, burn rate per window, alerts firing; ?scale= shortens windows for drills (platform ops)",
        handler: |route| route.to(crate::ops_routes::slo),
        api: Api {
            query: params::<crate::ops_routes::SloQuery>(),
            request: Body::None,
            status: 200,
            response: Body::json::<crate::ops_routes::SloReport>(),
            problems: &[(422, "`scale` is not between 1 and 3600")],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "PUT",
        path: "/v1/ops/drill",
        access: Access::Roles(PLATFORM_OPS),
        flag: None,
        summary: "Start an alert drill (injected 503s, added latency; expires), or stop it with minutes 0 (platform ops)",
        handler: |route| route.to(crate::ops_routes::set_drill),
        api: Api::command::<crate::ops_routes::DrillRequest, crate::ops_routes::DrillAnswer>(200),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/datasets",
        access: Access::Roles(DATA_WRITERS),
        flag: None,
        summary: "Upload a CSV dataset (?name=…, text/csv body)",
        handler: |route| route.to(data::upload),
        api: Api {
            query: params::<data::UploadQuery>(),
            request: Body::Csv,
            status: 201,
            response: Body::json::<data::Dataset>(),
            problems: &[],
            idempotent: true,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "GET",
        path: "/v1/datasets",
        access: Access::Roles(DATA_READERS),
        flag: None,
        summary: "The tenant's datasets, a page at a time (?limit=…&cursor=…)",
        handler: |route| route.to(data::list),
        api: Api::read::<data::DatasetList>()
            .with_query(params::<data::ListQuery>())
            .with_problems(&[(422, "The cursor or the limit is invalid")]),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/datasets/{dataset_id}",
        access: Access::Roles(DATA_READERS),
        flag: None,
        summary: "One dataset: columns and their types, rows, bytes, SHA-256",
        handler: |route| route.to(data::get),
        api: Api::read::<data::Dataset>(),
    },
    RouteSpec {
        method: "DELETE",
        path: "/v1/datasets/{dataset_id}",
        access: Access::Roles(DATA_WRITERS),
        flag: None,
        summary: "Delete a dataset (an event) and its data",
        handler: |route| route.to(data::delete),
        api: Api::bodiless::<data::DatasetDeleted>().idempotent(),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/datasets/{dataset_id}/query",
        access: Access::Roles(DATA_WRITERS),
        flag: None,
        summary: "Run read-only SQL over table `data`",
        handler: |route| route.to(data::query),
        api: Api::command::<data::QueryRequest, data::QueryAnswer>(200)
            .with_problems(METERED)
            .idempotent(),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/exports",
        access: Access::Roles(DATA_WRITERS),
        flag: None,
        summary: "Export a dataset or a query with a redaction preset; PASS or FAIL badge",
        handler: |route| route.to(data::create_export),
        api: Api::command::<data::ExportRequest, data::Export>(201)
            .with_problems(METERED)
            .idempotent(),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/exports/{export_id}",
        access: Access::Roles(DATA_READERS),
        flag: None,
        summary: "An export's metadata: rows, bytes, SHA-256, preset, badge",
        handler: |route| route.to(data::get_export),
        api: Api::read::<data::Export>(),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/exports/{export_id}/download",
        access: Access::Roles(DATA_READERS),
        flag: None,
        summary: "Download an export's file (a FAIL file only with ?acknowledge=fail); every download is an event",
        handler: |route| route.to(data::download),
        api: Api {
            query: params::<data::DownloadQuery>(),
            request: Body::None,
            status: 200,
            response: Body::Download,
            problems: &[(
                409,
                "The badge is not PASS and `acknowledge=fail` was not given",
            )],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "POST",
        path: "/v1/presets",
        access: Access::Roles(TENANT_ADMINS),
        flag: Some(Flag::RedactionPresetBuilder),
        summary: "Create a redaction preset (version 1)",
        handler: |route| route.to(data::create_preset),
        api: Api::command::<data::NewPresetRequest, data::Preset>(201).idempotent(),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/presets",
        access: Access::Roles(DATA_READERS),
        flag: Some(Flag::RedactionPresetBuilder),
        summary: "The tenant's presets with their versions, and the built-in default",
        handler: |route| route.to(data::list_presets),
        api: Api::read::<data::PresetList>(),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/presets/{preset_id}",
        access: Access::Roles(DATA_READERS),
        flag: Some(Flag::RedactionPresetBuilder),
        summary: "A preset's latest version, or ?version=N",
        handler: |route| route.to(data::get_preset),
        api: Api::read::<data::Preset>().with_query(params::<data::PresetQuery>()),
    },
    RouteSpec {
        method: "PUT",
        path: "/v1/presets/{preset_id}",
        access: Access::Roles(TENANT_ADMINS),
        flag: Some(Flag::RedactionPresetBuilder),
        summary: "Edit a preset: a new version",
        handler: |route| route.to(data::edit_preset),
        api: Api::command::<data::PresetRequest, data::Preset>(200).idempotent(),
    },
    RouteSpec {
        method: "DELETE",
        path: "/v1/presets/{preset_id}",
        access: Access::Roles(TENANT_ADMINS),
        flag: Some(Flag::RedactionPresetBuilder),
        summary: "Delete a preset (its history is kept)",
        handler: |route| route.to(data::delete_preset),
        api: Api::bodiless::<data::PresetDeleted>().idempotent(),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/plans",
        access: Access::Public,
        flag: None,
        summary: "The plan registry: prices, included units, seats",
        handler: |route| route.to(quota::list_plans),
        api: Api {
            query: None,
            request: Body::None,
            status: 200,
            response: Body::json::<quota::Plans>(),
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "POST",
        path: "/v1/usage",
        access: Access::Roles(DATA_WRITERS),
        flag: None,
        summary: "Record metered units; admitted, admitted in grace, or 402",
        handler: |route| route.to(quota::record_usage),
        api: Api::command::<quota::UsageRequest, quota::UsageDecision>(200)
            .with_problems(METERED)
            .idempotent(),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/tenant/quota",
        access: Access::Roles(EVERY_TENANT_ROLE),
        flag: None,
        summary: "Each meter: used, limit, state, grace left, reset time",
        handler: |route| route.to(quota::quota),
        api: Api::read::<quota::Quota>(),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/tenant/plan",
        access: Access::Roles(TENANT_ADMINS),
        flag: None,
        summary: "Change plan: upgrades now (lifting a block), downgrades next period",
        handler: |route| route.to(quota::change_plan),
        api: Api::command::<quota::PlanRequest, quota::PlanChange>(200).idempotent(),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/tenant/invoices/preview",
        access: Access::Roles(BILLING_READERS),
        flag: Some(Flag::BillingActiveV1),
        summary: "The open period's invoice to date (JSON; CSV or PDF by Accept)",
        handler: |route| route.to(billing::preview),
        api: Api::read::<billing::InvoiceDoc>(),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/tenant/invoices",
        access: Access::Roles(BILLING_READERS),
        flag: Some(Flag::BillingActiveV1),
        summary: "The tenant's finalized invoices, newest first",
        handler: |route| route.to(billing::my_invoices),
        api: Api::read::<billing::InvoiceList>(),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/tenant/invoices/{number}",
        access: Access::Roles(BILLING_READERS),
        flag: Some(Flag::BillingActiveV1),
        summary: "One finalized invoice (JSON; CSV or PDF by Accept)",
        handler: |route| route.to(billing::my_invoice),
        api: Api::read::<billing::InvoiceDoc>(),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/invoices",
        access: Access::Roles(FINANCE),
        flag: None,
        summary: "Every tenant's finalized invoices (platform finance)",
        handler: |route| route.to(billing::all_invoices),
        api: Api::read::<billing::InvoiceList>()
            .with_query(params::<billing::AllInvoicesQuery>())
            .with_problems(&[(422, "`tenant_id` is not a UUID")]),
    },
    RouteSpec {
        method: "PUT",
        path: "/v1/tenants/{tenant_id}/billing-mode",
        access: Access::Roles(FINANCE),
        flag: None,
        summary: "Set a tenant's billing mode: shadow, active_test, active_live (platform finance)",
        handler: |route| route.to(billing::set_mode),
        api: Api::command::<billing::ModeRequest, billing::ModeChanged>(200).idempotent(),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/ops/invoices/finalize",
        access: Access::Roles(FINANCE),
        flag: None,
        summary: "Finalize every tenant's invoice of a period past its 24-hour grace",
        handler: |route| route.to(billing::finalize),
        api: Api::command::<billing::FinalizeRequest, billing::FinalizeReport>(200).idempotent(),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/invoices/{number}/credit-notes",
        access: Access::Roles(FINANCE),
        flag: None,
        summary: "Correct a finalized invoice with a credit note",
        handler: |route| route.to(billing::credit_note),
        api: Api::command::<billing::CreditNoteRequest, billing::CreditNote>(201).idempotent(),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/ops/reconciliation",
        access: Access::Roles(FINANCE),
        flag: None,
        summary: "Recount usage from the raw log and compare with rollups and invoices",
        handler: |route| route.to(billing::reconciliation),
        api: Api::read::<billing::ReconciliationReport>()
            .with_query(params::<billing::ReconciliationQuery>())
            .with_problems(&[(422, "`from` or `to` is not a date (YYYY-MM-DD)")]),
    },
    // SSO (issue 10, item 3; ADR 031).
    RouteSpec {
        method: "GET",
        path: "/v1/sso/settings",
        access: Access::Roles(TENANT_ADMINS),
        flag: Some(Flag::InviteSsoV1),
        summary: "The tenant's OIDC settings",
        handler: |route| route.to(crate::sso_routes::get_settings),
        api: Api::read::<crate::sso_routes::SettingsView>(),
    },
    RouteSpec {
        method: "PUT",
        path: "/v1/sso/settings",
        access: Access::Roles(TENANT_ADMINS),
        flag: Some(Flag::InviteSsoV1),
        summary: "Set the tenant's OIDC settings (issuer, audience, JWK set inline or a server file)",
        handler: |route| route.to(crate::sso_routes::put_settings),
        api: Api::command::<crate::sso_routes::SettingsRequest, crate::sso_routes::Saved>(200)
            .idempotent(),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/sso/mapping",
        access: Access::Roles(TENANT_ADMINS),
        flag: Some(Flag::InviteSsoV1),
        summary: "The group → role mapping in force",
        handler: |route| route.to(crate::sso_routes::get_mapping),
        api: Api::read::<crate::sso_routes::MappingView>(),
    },
    RouteSpec {
        method: "PUT",
        path: "/v1/sso/mapping",
        access: Access::Roles(TENANT_ADMINS),
        flag: Some(Flag::InviteSsoV1),
        summary: "Save the group → role mapping rules (an audited event; only owners grant owner)",
        handler: |route| route.to(crate::sso_routes::put_mapping),
        api: Api::command::<crate::sso_routes::MappingRequest, crate::sso_routes::Saved>(200)
            .idempotent(),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/sso/mapping/preview",
        access: Access::Roles(TENANT_ADMINS),
        flag: Some(Flag::InviteSsoV1),
        summary: "Who would gain or lose which role under these rules (nothing is saved)",
        handler: |route| route.to(crate::sso_routes::preview_mapping),
        api: Api::command::<crate::sso_routes::MappingRequest, crate::sso_routes::PreviewResponse>(
            200,
        ),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/sso/login",
        access: Access::Public,
        flag: None,
        summary: "Sign in with an ID token of the tenant's identity provider; returns a token",
        handler: |route| route.to(crate::sso_routes::login),
        api: Api::command::<crate::sso_routes::LoginRequest, crate::sso_routes::LoginResponse>(200)
            .with_problems(&[
                (
                    401,
                    "The ID token is refused (signature, issuer, audience, time, nonce, replay)",
                ),
                (
                    403,
                    "The mapping denies the user's groups, or the feature is off for the tenant",
                ),
                (
                    409,
                    "The tenant has no SSO settings, or its seats are taken",
                ),
            ]),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/scim/token",
        access: Access::Roles(OWNERS),
        flag: Some(Flag::InviteSsoV1),
        summary: "Create or rotate the tenant's SCIM token (shown once)",
        handler: |route| route.to(crate::sso_routes::create_scim_token),
        api: Api::bodiless::<crate::sso_routes::ScimTokenResponse>().with_status(201),
    },
    // SCIM 2.0 (issue 10, item 4; ADR 031): the tenant's SCIM token, SCIM errors.
    RouteSpec {
        method: "GET",
        path: "/scim/v2/Users",
        access: Access::Scim,
        flag: Some(Flag::InviteSsoV1),
        summary: "SCIM: list users (filter userName/externalId/id eq, startIndex, count)",
        handler: |route| route.to(crate::scim_routes::list_users),
        api: Api {
            query: params::<crate::scim_routes::ListQuery>(),
            request: Body::None,
            status: 200,
            response: Body::Scim,
            problems: &[(400, "An unsupported filter (`invalidFilter`)")],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "POST",
        path: "/scim/v2/Users",
        access: Access::Scim,
        flag: Some(Flag::InviteSsoV1),
        summary: "SCIM: create a user (a member while active)",
        handler: |route| route.to(crate::scim_routes::create_user),
        api: Api {
            query: None,
            request: Body::Scim,
            status: 201,
            response: Body::Scim,
            problems: &[(409, "userName taken (`uniqueness`), or no seat left")],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "GET",
        path: "/scim/v2/Users/{id}",
        access: Access::Scim,
        flag: Some(Flag::InviteSsoV1),
        summary: "SCIM: a user",
        handler: |route| route.to(crate::scim_routes::get_user),
        api: Api {
            query: params::<crate::scim_routes::GetQuery>(),
            request: Body::None,
            status: 200,
            response: Body::Scim,
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "PUT",
        path: "/scim/v2/Users/{id}",
        access: Access::Scim,
        flag: Some(Flag::InviteSsoV1),
        summary: "SCIM: replace a user",
        handler: |route| route.to(crate::scim_routes::replace_user),
        api: Api {
            query: None,
            request: Body::Scim,
            status: 200,
            response: Body::Scim,
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "PATCH",
        path: "/scim/v2/Users/{id}",
        access: Access::Scim,
        flag: Some(Flag::InviteSsoV1),
        summary: "SCIM: patch a user (active=false removes the member; its tokens stop)",
        handler: |route| route.to(crate::scim_routes::patch_user),
        api: Api {
            query: None,
            request: Body::Scim,
            status: 200,
            response: Body::Scim,
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "DELETE",
        path: "/scim/v2/Users/{id}",
        access: Access::Scim,
        flag: Some(Flag::InviteSsoV1),
        summary: "SCIM: delete a user (and the member)",
        handler: |route| route.to(crate::scim_routes::delete_user),
        api: Api {
            query: None,
            request: Body::None,
            status: 204,
            response: Body::None,
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "GET",
        path: "/scim/v2/Groups",
        access: Access::Scim,
        flag: Some(Flag::InviteSsoV1),
        summary: "SCIM: list groups (filter displayName/externalId/id eq)",
        handler: |route| route.to(crate::scim_routes::list_groups),
        api: Api {
            query: params::<crate::scim_routes::ListQuery>(),
            request: Body::None,
            status: 200,
            response: Body::Scim,
            problems: &[(400, "An unsupported filter (`invalidFilter`)")],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "POST",
        path: "/scim/v2/Groups",
        access: Access::Scim,
        flag: Some(Flag::InviteSsoV1),
        summary: "SCIM: create a group (its name feeds the role mapping)",
        handler: |route| route.to(crate::scim_routes::create_group),
        api: Api {
            query: None,
            request: Body::Scim,
            status: 201,
            response: Body::Scim,
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "GET",
        path: "/scim/v2/Groups/{id}",
        access: Access::Scim,
        flag: Some(Flag::InviteSsoV1),
        summary: "SCIM: a group",
        handler: |route| route.to(crate::scim_routes::get_group),
        api: Api {
            query: params::<crate::scim_routes::GetQuery>(),
            request: Body::None,
            status: 200,
            response: Body::Scim,
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "PUT",
        path: "/scim/v2/Groups/{id}",
        access: Access::Scim,
        flag: Some(Flag::InviteSsoV1),
        summary: "SCIM: replace a group",
        handler: |route| route.to(crate::scim_routes::replace_group),
        api: Api {
            query: None,
            request: Body::Scim,
            status: 200,
            response: Body::Scim,
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "PATCH",
        path: "/scim/v2/Groups/{id}",
        access: Access::Scim,
        flag: Some(Flag::InviteSsoV1),
        summary: "SCIM: add or remove members, rename",
        handler: |route| route.to(crate::scim_routes::patch_group),
        api: Api {
            query: None,
            request: Body::Scim,
            status: 200,
            response: Body::Scim,
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "DELETE",
        path: "/scim/v2/Groups/{id}",
        access: Access::Scim,
        flag: Some(Flag::InviteSsoV1),
        summary: "SCIM: delete a group",
        handler: |route| route.to(crate::scim_routes::delete_group),
        api: Api {
            query: None,
            request: Body::None,
            status: 204,
            response: Body::None,
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "POST",
        path: "/scim/v2/.search",
        access: Access::Scim,
        flag: Some(Flag::InviteSsoV1),
        summary: "SCIM: search several resource types at once (not implemented: 501)",
        handler: |route| route.to(crate::scim_routes::search_root),
        api: Api {
            query: None,
            request: Body::Scim,
            status: 501,
            response: Body::Scim,
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "GET",
        path: "/scim/v2/ServiceProviderConfig",
        access: Access::Public,
        flag: None,
        summary: "SCIM: what this service provider supports",
        handler: |route| route.to(crate::scim_routes::service_provider_config),
        api: Api {
            query: None,
            request: Body::None,
            status: 200,
            response: Body::Scim,
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "GET",
        path: "/scim/v2/ResourceTypes",
        access: Access::Public,
        flag: None,
        summary: "SCIM: resource types",
        handler: |route| route.to(crate::scim_routes::list_resource_types),
        api: Api {
            query: None,
            request: Body::None,
            status: 200,
            response: Body::Scim,
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "GET",
        path: "/scim/v2/ResourceTypes/{id}",
        access: Access::Public,
        flag: None,
        summary: "SCIM: a resource type",
        handler: |route| route.to(crate::scim_routes::get_resource_type),
        api: Api {
            query: None,
            request: Body::None,
            status: 200,
            response: Body::Scim,
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "GET",
        path: "/scim/v2/Schemas",
        access: Access::Public,
        flag: None,
        summary: "SCIM: schemas",
        handler: |route| route.to(crate::scim_routes::list_schemas),
        api: Api {
            query: None,
            request: Body::None,
            status: 200,
            response: Body::Scim,
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
    RouteSpec {
        method: "GET",
        path: "/scim/v2/Schemas/{id}",
        access: Access::Public,
        flag: None,
        summary: "SCIM: a schema",
        handler: |route| route.to(crate::scim_routes::get_schema),
        api: Api {
            query: None,
            request: Body::None,
            status: 200,
            response: Body::Scim,
            problems: &[],
            idempotent: false,
            body_also_on: &[],
        },
    },
];

/// The spec of the route matched by `method` and actix's `pattern`.
pub fn find(method: &str, pattern: &str) -> Option<&'static RouteSpec> {
    ROUTES
        .iter()
        .find(|r| r.method == method && r.path == pattern)
}

pub fn allows(spec: &RouteSpec, role: Role) -> bool {
    match spec.access {
        Access::Public => true,
        Access::Roles(roles) => roles.contains(&role),
        Access::Scim => false,
    }
}

/// `docs/permissions.md`, generated from the table.
pub fn permissions_markdown() -> String {
    let roles = Role::all();
    let mut out = String::from(
        "# Permissions\n\nGenerated from `api/src/rbac.rs` by `tenantry docs permissions`; a test \
         fails when this file and the table disagree.\n\n✅ allowed · — denied (403) · public routes \
         need no token.\n\n",
    );
    out.push_str("| route | flag |");
    for r in &roles {
        out.push_str(&format!(" {r} |"));
    }
    out.push_str("\n|---|---|");
    for _ in &roles {
        out.push_str("---|");
    }
    out.push('\n');
    for spec in ROUTES {
        out.push_str(&format!(
            "| `{} {}` | {} |",
            spec.method,
            spec.path,
            spec.flag.map_or("—".to_owned(), |f| format!("`{f}`"))
        ));
        for r in &roles {
            let cell = match spec.access {
                Access::Public => "public",
                Access::Scim => "SCIM token",
                Access::Roles(_) if allows(spec, *r) => "✅",
                Access::Roles(_) => "—",
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out
}
