//! The permission table: every route, who may call it, and the flag that gates it. Enforced in one
//! place, the `Caller` extractor (`auth.rs`); `docs/permissions.md` is generated from it.

use domain::{Flag, PlatformRole, TenantRole};
use std::fmt;

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
}

#[derive(Clone, Copy, Debug)]
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
    /// The feature flag that must be on for the caller's tenant.
    pub flag: Option<Flag>,
    pub summary: &'static str,
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
const AUDITORS: &[Role] = &[
    Role::Tenant(T::Owner),
    Role::Tenant(T::Admin),
    Role::Tenant(T::Compliance),
];
const PLATFORM_READERS: &[Role] = &[
    Role::Platform(P::Support),
    Role::Platform(P::Pm),
    Role::Platform(P::Ops),
];
const PLATFORM_OPS: &[Role] = &[Role::Platform(P::Ops)];
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

pub const ROUTES: &[RouteSpec] = &[
    RouteSpec {
        method: "GET",
        path: "/healthz",
        access: Access::Public,
        flag: None,
        summary: "Liveness",
    },
    RouteSpec {
        method: "GET",
        path: "/readyz",
        access: Access::Public,
        flag: None,
        summary: "Readiness: store reachable, projections caught up",
    },
    RouteSpec {
        method: "GET",
        path: "/metrics",
        access: Access::Public,
        flag: None,
        summary: "Prometheus metrics",
    },
    RouteSpec {
        method: "GET",
        path: "/openapi.json",
        access: Access::Public,
        flag: None,
        summary: "This API's OpenAPI 3.1 document",
    },
    RouteSpec {
        method: "POST",
        path: "/v1/signup",
        access: Access::Public,
        flag: None,
        summary: "Create a tenant and its owner; returns the owner's first token",
    },
    RouteSpec {
        method: "GET",
        path: "/v1/me",
        access: Access::Roles(EVERYONE),
        flag: None,
        summary: "Who the token speaks for",
    },
    RouteSpec {
        method: "GET",
        path: "/v1/tenant",
        access: Access::Roles(EVERY_TENANT_ROLE),
        flag: None,
        summary: "The caller's tenant",
    },
    RouteSpec {
        method: "PATCH",
        path: "/v1/tenant",
        access: Access::Roles(TENANT_ADMINS),
        flag: None,
        summary: "Rename the caller's tenant",
    },
    RouteSpec {
        method: "POST",
        path: "/v1/members",
        access: Access::Roles(TENANT_ADMINS),
        flag: None,
        summary: "Add a member; returns their first token",
    },
    RouteSpec {
        method: "DELETE",
        path: "/v1/tokens/current",
        access: Access::Roles(EVERYONE),
        flag: None,
        summary: "Revoke the token used for this request",
    },
    RouteSpec {
        method: "GET",
        path: "/v1/flags",
        access: Access::Roles(EVERY_TENANT_ROLE),
        flag: None,
        summary: "The caller's tenant's effective feature flags",
    },
    RouteSpec {
        method: "GET",
        path: "/v1/tenants/{tenant_id}/flags",
        access: Access::Roles(PLATFORM_READERS),
        flag: None,
        summary: "A tenant's effective flags and overrides (platform)",
    },
    RouteSpec {
        method: "PUT",
        path: "/v1/tenants/{tenant_id}/flags/{flag}",
        access: Access::Roles(PLATFORM_OPS),
        flag: None,
        summary: "Override a flag for a tenant (platform ops)",
    },
    RouteSpec {
        method: "GET",
        path: "/v1/audit/events",
        access: Access::Roles(AUDITORS),
        flag: Some(Flag::AuditV12),
        summary: "The tenant's events: actor, time, type, payload",
    },
    RouteSpec {
        method: "POST",
        path: "/v1/datasets",
        access: Access::Roles(DATA_WRITERS),
        flag: None,
        summary: "Upload a CSV dataset (?name=…, text/csv body)",
    },
    RouteSpec {
        method: "GET",
        path: "/v1/datasets",
        access: Access::Roles(DATA_READERS),
        flag: None,
        summary: "The tenant's datasets",
    },
    RouteSpec {
        method: "GET",
        path: "/v1/datasets/{dataset_id}",
        access: Access::Roles(DATA_READERS),
        flag: None,
        summary: "One dataset: columns and their types, rows, bytes, SHA-256",
    },
    RouteSpec {
        method: "DELETE",
        path: "/v1/datasets/{dataset_id}",
        access: Access::Roles(DATA_WRITERS),
        flag: None,
        summary: "Delete a dataset (an event) and its data",
    },
    RouteSpec {
        method: "POST",
        path: "/v1/datasets/{dataset_id}/query",
        access: Access::Roles(DATA_WRITERS),
        flag: None,
        summary: "Run read-only SQL over table `data`",
    },
    RouteSpec {
        method: "POST",
        path: "/v1/exports",
        access: Access::Roles(DATA_WRITERS),
        flag: None,
        summary: "Export a dataset or a query with a redaction preset; PASS or FAIL badge",
    },
    RouteSpec {
        method: "GET",
        path: "/v1/exports/{export_id}",
        access: Access::Roles(DATA_READERS),
        flag: None,
        summary: "An export's metadata: rows, bytes, SHA-256, preset, badge",
    },
    RouteSpec {
        method: "GET",
        path: "/v1/exports/{export_id}/download",
        access: Access::Roles(DATA_READERS),
        flag: None,
        summary: "Download an export's file",
    },
    RouteSpec {
        method: "POST",
        path: "/v1/presets",
        access: Access::Roles(TENANT_ADMINS),
        flag: Some(Flag::RedactionPresetBuilder),
        summary: "Create a redaction preset (version 1)",
    },
    RouteSpec {
        method: "GET",
        path: "/v1/presets",
        access: Access::Roles(DATA_READERS),
        flag: Some(Flag::RedactionPresetBuilder),
        summary: "The tenant's presets with their versions, and the built-in default",
    },
    RouteSpec {
        method: "GET",
        path: "/v1/presets/{preset_id}",
        access: Access::Roles(DATA_READERS),
        flag: Some(Flag::RedactionPresetBuilder),
        summary: "A preset's latest version, or ?version=N",
    },
    RouteSpec {
        method: "PUT",
        path: "/v1/presets/{preset_id}",
        access: Access::Roles(TENANT_ADMINS),
        flag: Some(Flag::RedactionPresetBuilder),
        summary: "Edit a preset: a new version",
    },
    RouteSpec {
        method: "DELETE",
        path: "/v1/presets/{preset_id}",
        access: Access::Roles(TENANT_ADMINS),
        flag: Some(Flag::RedactionPresetBuilder),
        summary: "Delete a preset (its history is kept)",
    },
    RouteSpec {
        method: "GET",
        path: "/v1/plans",
        access: Access::Public,
        flag: None,
        summary: "The plan registry: prices, included units, seats",
    },
    RouteSpec {
        method: "POST",
        path: "/v1/usage",
        access: Access::Roles(DATA_WRITERS),
        flag: None,
        summary: "Record metered units; admitted, admitted in grace, or 402",
    },
    RouteSpec {
        method: "GET",
        path: "/v1/tenant/quota",
        access: Access::Roles(EVERY_TENANT_ROLE),
        flag: None,
        summary: "Each meter: used, limit, state, grace left, reset time",
    },
    RouteSpec {
        method: "POST",
        path: "/v1/tenant/plan",
        access: Access::Roles(TENANT_ADMINS),
        flag: None,
        summary: "Change plan: upgrades now (lifting a block), downgrades next period",
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
                Access::Roles(_) if allows(spec, *r) => "✅",
                Access::Roles(_) => "—",
            };
            out.push_str(&format!(" {cell} |"));
        }
        out.push('\n');
    }
    out
}
