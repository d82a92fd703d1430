//! The command side: an executor that keeps aggregate state hot in memory, decides, and appends
//! with the expected version, retrying a bounded number of times when another writer got there
//! first.
//!
//! Architecture invariant: the hot state and snapshots are caches. The store's expected-version
//! check guards every append, so a stale cache (another process wrote) costs one retry, never a
//! wrong decision.

mod executor;

pub use executor::{ExecuteError, Executed, Executor, ExecutorConfig};
