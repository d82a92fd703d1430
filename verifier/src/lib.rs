//! The standalone audit-bundle verifier (`tenantry-verify`). It depends on nothing of Tenantry's:
//! it reads the bundle format from its documentation (docs/audit-bundle.md) and checks every proof
//! with its own RFC 9162 code, so a bug in the writer cannot hide behind a shared one.

mod encoding;
mod format;
pub mod merkle;
mod note;
mod pem;
mod verify;

pub use encoding::loose_timestamp;
pub use pem::public_key as parse_public_key_pem;
pub use verify::{Check, Options, Report, verify};
