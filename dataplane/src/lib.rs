//! The analysts' data plane: CSV ingestion with type inference (`ingest`), a sandboxed read-only
//! SQL engine over one dataset (`sandbox`), and redacted exports with a PASS/FAIL badge
//! (`export`). Computation over bytes; the one file it writes is an export's temporary file
//! (`export::to_temp_file`), so that a result is never built whole in memory. Persistence
//! stays in `store`.

pub mod export;
pub mod ingest;
pub mod sandbox;
