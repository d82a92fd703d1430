//! Workspace-level integration tests live in `tests/tests/`; `src/bin/` holds the helper
//! processes they drive (such as the writer that is killed mid-load).
