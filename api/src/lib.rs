#![recursion_limit = "512"]
//! Tenantry's HTTP service (actix-web), a library: the `tenantry` binary and its command-line
//! tools live in the `cli` crate, which starts this service with `server::serve`.
//!
//! Architecture invariant: this is the only crate that knows HTTP.

pub mod access_routes;
pub mod audit_routes;
pub mod auth;
pub mod billing_routes;
pub mod data_routes;
pub mod erasure_routes;
pub mod feedback_routes;
pub mod http;
pub mod insights_routes;
pub mod limits;
pub mod metrics;
pub mod onboarding_routes;
pub mod openapi;
pub mod ops_routes;
pub mod problem;
pub mod quota_routes;
pub mod rbac;
pub mod replay;
pub mod routes;
pub mod scim_routes;
pub mod server;
pub mod settings;
pub mod sso_routes;
pub mod telemetry;

pub use app::tokens;
