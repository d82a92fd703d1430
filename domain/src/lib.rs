//! Tenantry's domain: identifiers, the decide/evolve kernel and the aggregates.
//!
//! Architecture invariant: this crate does no IO, has no async, and never reads a clock or a random
//! source. Time and identifiers come in as arguments.

pub mod aggregate;
pub mod dataset;
pub mod identity;
pub mod ids;
pub mod pii;
pub mod plans;
pub mod platform;
pub mod preset;
pub mod quota;
pub mod tenant;

pub use aggregate::{Aggregate, DomainEvent, EventDecodeError};
pub use identity::{Email, Flag, PersonName, PlatformRole, TenantRole};
pub use ids::{TenantId, UserId};
