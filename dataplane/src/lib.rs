//! The analysts' data plane: CSV ingestion with type inference (`ingest`), a sandboxed read-only
//! SQL engine over one dataset (`sandbox`), and redacted exports with a PASS/FAIL badge
//! (`export`). Pure computation over bytes in memory: persistence stays in `store`.

pub mod export;
pub mod ingest;
pub mod sandbox;
