//! The `tenantry` command line's own tools: everything the binary does besides serving HTTP.
//! The service itself (`tenantry serve`) is `api`'s; this crate starts it and drives it, and
//! knows nothing of routes or handlers.

pub mod audit_bench;
pub mod bench;
pub mod bench_feedback;
pub mod bench_http;
pub mod bench_insights;
pub mod bench_invites;
pub mod bench_sso;
pub mod billing;
pub mod drill;
pub mod export;
pub mod ops;
pub mod pii;
pub mod retention;
pub mod seed;
pub mod soak;
