//! Tenantry's HTTP service (actix-web) and the pieces of the `tenantry` command line.
//!
//! Architecture invariant: this is the only crate that knows HTTP.

pub mod bench;
pub mod export;
pub mod server;
