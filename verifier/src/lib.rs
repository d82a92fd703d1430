//! The standalone audit-bundle verifier (`tenantry-verify`). It depends on nothing of Tenantry's:
//! it reads the bundle format from its documentation (docs/audit-bundle.md) and checks every proof
//! with its own RFC 9162 code, so a bug in the writer cannot hide behind a shared one.
//! The one exception is `replay` (issue 12, item 8), which folds a verified bundle's events with
//! the pure `domain` crate to show the tenant's state at a moment; the checks never use it.

mod encoding;
mod format;
pub mod merkle;
mod note;
mod pem;
mod replay;
mod verify;

pub use encoding::loose_timestamp;
pub use pem::public_key as parse_public_key_pem;
pub use replay::replay;
pub use verify::{Check, Options, Report, verify};
