//! Read models derived from the event log.
//!
//! One reader per process feeds every projection in commit order (`Runtime`). Each projection
//! persists its state and checkpoint in the store it follows and resumes from them at start, so
//! start-up does not grow with the log; a projection that meets an event it cannot decode stops
//! before it (fail closed) and says so; a rebuild replays one from position 1 beside the live one
//! and switches when caught up (ADR 009). Readers can wait until the projections have reached a
//! position (read-your-writes, ADR 004).

mod audit_tree;
mod billing;
mod catalog;
mod codec;
mod directory;
mod feedback;
mod identity;
mod insights;
mod onboarding;
mod pending;
mod rollups;
mod runtime;

pub use audit_tree::{AuditTree, TreeView, leaf_header};
pub use billing::BillingView;
pub use catalog::{Catalog, DatasetView, ExportView, PresetView};
pub use codec::CodecError;
pub use directory::{
    Directory, Filter as DirectoryFilter, Page as DirectoryPage, UserWithGroups, Versioned,
};
pub use feedback::{FeedbackBoard, FeedbackFilter, FeedbackItem, FeedbackPage};
pub use identity::{
    Identity, MemberView, OutboxMessage, Principal, TenantView, TokenEntry, TokenProblem,
};
pub use insights::{Insights, TenantInsight};
pub use onboarding::FirstSuccess;
pub use rollups::{DailyRollups, PriceKey, Priced, Rollup, RollupKey, day_of};
pub use runtime::{
    Checkpointing, Projection, ProjectionStatus, RebuildError, RebuildState, RebuildStatus,
    ReplayError, ReplayReport, Runtime, Unreadable, load, replay, save,
};
