#![recursion_limit = "512"]
//! Tenantry's HTTP service (actix-web) and the pieces of the `tenantry` command line.
//!
//! Architecture invariant: this is the only crate that knows HTTP.

pub mod auth;
pub mod bench;
pub mod bench_http;
pub mod cli;
pub mod data_routes;
pub mod export;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod ops_routes;
pub mod pii_cli;
pub mod problem;
pub mod quota_routes;
pub mod rbac;
pub mod replay;
pub mod routes;
pub mod seed;
pub mod server;
pub mod settings;
pub mod shares;
pub mod telemetry;
pub mod tokens;
