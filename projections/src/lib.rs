//! Read models derived from the event log.
//!
//! Each projection follows the log through its own subscription and keeps its own checkpoint
//! (the last position it applied). They live in memory and are rebuilt from position 1 when the
//! process starts (ADR 004); the runtime reports each one's lag and lets readers wait until a
//! projection has reached a position (read-your-writes).

mod audit;
mod catalog;
mod identity;
mod runtime;

pub use audit::Audit;
pub use catalog::{Catalog, DatasetView, ExportView, PresetView};
pub use identity::{Identity, MemberView, Principal, TenantView, TokenEntry, TokenProblem};
pub use runtime::{Projection, Runtime};
