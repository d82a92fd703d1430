//! The query sandbox: one dataset loaded as table `data` into a SQLite database that can only be
//! read. An authorizer allows reading and nothing else (no ATTACH, no PRAGMA, no writes, no
//! temporary tables, no extensions); a progress handler stops a query at its time budget; results
//! stop at a row cap and a memory cap (the memory the rows take in this process, not their
//! serialized size); SQLite's own limits bound string sizes and expression depth, and its temporary
//! storage (sorts, intermediate tables) is kept in memory under the sandbox's memory budget instead
//! of in unbounded temporary files (a budget of its own, apart from the event store's SQLite
//! memory: ADR 034). Rows can also be streamed one at a time (`Table::for_each_row`), which is how
//! exports are written.
//!
//! Loaded tables are cached per dataset, within a budget. A cache with a directory keeps each table
//! in a file of its own and opens a read-only connection per query, so that between queries a
//! cached table holds no memory at all and the budget is of disk (ADR 040); a cache without one
//! keeps tables in memory (tools and tests).

use crate::ingest::{self, Column, ColumnType};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::{Connection, types::ValueRef};
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per-query limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub time: Duration,
    pub max_rows: usize,
    /// The most memory a collected result may take: every value, its text and the row vectors
    /// (`value_memory`, `ROW_MEMORY`), not the bytes it serializes to (a wide row of short
    /// values takes many times its CSV size). The per-query memory budget of a result.
    pub max_result_bytes: usize,
    /// When the time budget started (the request's arrival), so that waiting for the dataset's
    /// connection counts against it; `None`: when the query gets its connection.
    pub since: Option<Instant>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            time: Duration::from_secs(5),
            max_rows: 10_000,
            max_result_bytes: 16 * 1024 * 1024,
            since: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// True when the row or memory cap cut the result short.
    pub truncated: bool,
}

/// What one row's vector takes besides its values.
pub const ROW_MEMORY: usize = std::mem::size_of::<Vec<Value>>();

/// The memory one value takes in a collected result: the `Value` itself and the heap its text
/// holds.
pub fn value_memory(v: &Value) -> usize {
    std::mem::size_of::<Value>()
        + match v {
            Value::String(s) => s.capacity(),
            _ => 0,
        }
}

/// The memory one collected row takes: its vector and its values.
pub fn row_memory(row: &Vec<Value>) -> usize {
    ROW_MEMORY
        + (row.capacity() - row.len()) * std::mem::size_of::<Value>()
        + row.iter().map(value_memory).sum::<usize>()
}

/// Whether a streamed query went on to its end or was stopped by its visitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Streamed {
    /// Every row was visited.
    Complete,
    /// The visitor asked to stop (a cap), or the row cap was reached.
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The statement tried something other than reading (HTTP 422, `query-not-allowed`).
    #[error("not allowed in a query: {0}")]
    NotAllowed(String),
    /// The time budget ran out (HTTP 422, `query-timeout`).
    #[error("the query ran longer than its {0:?} budget and was stopped")]
    Timeout(Duration),
    /// The time budget went by before the query started (waiting for the dataset's connection):
    /// nothing ran (HTTP 422, `query-timeout`; it costs no unit, ADR 015).
    #[error("the query's {0:?} budget went by before it could start")]
    Expired(Duration),
    /// SQL that SQLite refuses (HTTP 422, `query-invalid`).
    #[error("{0}")]
    Invalid(String),
    /// The dataset could not be loaded (HTTP 500).
    #[error("dataset could not be loaded: {0}")]
    Load(String),
}

/// Functions a query may not call, whatever the build of SQLite offers.
const DENIED_FUNCTIONS: &[&str] = &[
    "load_extension",
    "readfile",
    "writefile",
    "edit",
    "fts3_tokenizer",
    "sqlite_offset",
];

/// A dataset loaded for querying.
pub struct Table {
    pages: Pages,
    pub columns: Vec<Column>,
    /// What the table takes in its cache: the SQLite memory it holds when it is in memory, the
    /// bytes of its file when it is in a file.
    pub approx_bytes: usize,
}

/// Where a loaded table's pages are.
enum Pages {
    /// In this process's memory, on one connection that its queries take in turn.
    Memory(Mutex<Connection>),
    /// In a file, removed when the table is dropped. Each query opens a read-only connection of
    /// its own and closes it when done: queries of one dataset run side by side, and between
    /// queries the table holds no memory (the kernel's page cache keeps the file's pages warm,
    /// and gives them back under pressure).
    File(tempfile::TempPath),
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("columns", &self.columns)
            .field("approx_bytes", &self.approx_bytes)
            .field(
                "file",
                &match &self.pages {
                    Pages::Memory(_) => None,
                    Pages::File(path) => Some(path.to_path_buf()),
                },
            )
            .finish()
    }
}

/// The SQLite memory a table loaded on this thread holds: what the sandbox's allocator counted
/// since `before` (the connection, its in-memory pages, its lookaside), or `estimate` when the
/// allocator is not in place (a test binary that never installed it). Memory counted as memory:
/// an estimate from the CSV's size missed the connection's own ~150 KiB and undercounted small
/// tables several times over, so a cache "within its budget" held several times its budget.
fn held_since(before: i64, estimate: usize) -> usize {
    if !sqlite_budget::installed() {
        return estimate;
    }
    usize::try_from(sqlite_budget::thread_net().saturating_sub(before)).unwrap_or(0)
}

pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Table {
    /// Load a CSV file (already validated by `ingest`) with its inferred columns, in memory.
    pub fn load(csv: &[u8], columns: &[Column]) -> Result<Self, QueryError> {
        Self::load_in(None, csv, columns)
    }

    /// Load a CSV file (already validated by `ingest`) with its inferred columns: into a file of
    /// `dir` when one is given, in memory otherwise.
    pub fn load_in(dir: Option<&Path>, csv: &[u8], columns: &[Column]) -> Result<Self, QueryError> {
        let defs: Vec<String> = columns
            .iter()
            .map(|c| {
                let ty = match c.kind {
                    ColumnType::Integer | ColumnType::Boolean => "INTEGER",
                    ColumnType::Float => "REAL",
                    _ => "TEXT",
                };
                format!("{} {ty}", quote_identifier(&c.name))
            })
            .collect();
        let (_, records) = ingest::parse(csv).map_err(|e| QueryError::Load(e.to_string()))?;
        let fill = |conn: &mut Connection| -> Result<(), QueryError> {
            conn.execute_batch(&format!("CREATE TABLE data ({})", defs.join(", ")))
                .map_err(load_error)?;
            let tx = conn.transaction().map_err(load_error)?;
            {
                let placeholders = vec!["?"; columns.len()].join(", ");
                let mut insert = tx
                    .prepare(&format!("INSERT INTO data VALUES ({placeholders})"))
                    .map_err(load_error)?;
                for record in records {
                    let record = record.map_err(|e| QueryError::Load(e.to_string()))?;
                    for (i, (field, col)) in record.iter().zip(columns).enumerate() {
                        let v = field.trim();
                        let idx = i + 1;
                        let bound = if v.is_empty() {
                            insert.raw_bind_parameter(idx, rusqlite::types::Null)
                        } else {
                            match col.kind {
                                ColumnType::Integer => match ingest::parse_integer(v) {
                                    Some(n) => insert.raw_bind_parameter(idx, n),
                                    None => insert.raw_bind_parameter(idx, field),
                                },
                                ColumnType::Float => match ingest::parse_float(v) {
                                    Some(n) => insert.raw_bind_parameter(idx, n),
                                    None => insert.raw_bind_parameter(idx, field),
                                },
                                ColumnType::Boolean => match ingest::parse_bool(v) {
                                    Some(b) => insert.raw_bind_parameter(idx, i64::from(b)),
                                    None => insert.raw_bind_parameter(idx, field),
                                },
                                _ => insert.raw_bind_parameter(idx, field),
                            }
                        };
                        bound.map_err(load_error)?;
                    }
                    insert.raw_execute().map_err(load_error)?;
                }
            }
            tx.commit().map_err(load_error)
        };
        Self::build(dir, columns.to_vec(), csv.len() * 3 + 64 * 1024, fill)
    }

    /// A table made from rows already in memory (a redacted copy of a dataset), columns
    /// untyped: SQLite keeps each value's own type. In memory: it lives for one export.
    pub fn from_result(result: &QueryResult) -> Result<Self, QueryError> {
        let defs: Vec<String> = result.columns.iter().map(|c| quote_identifier(c)).collect();
        if defs.is_empty() {
            return Err(QueryError::Invalid(
                "every column was dropped by the preset".into(),
            ));
        }
        let approx = 64 * 1024
            + result
                .rows
                .iter()
                .flatten()
                .map(|v| v.as_str().map_or(0, str::len))
                .sum::<usize>();
        let fill = |conn: &mut Connection| -> Result<(), QueryError> {
            conn.execute_batch(&format!("CREATE TABLE data ({})", defs.join(", ")))
                .map_err(load_error)?;
            let tx = conn.transaction().map_err(load_error)?;
            {
                let placeholders = vec!["?"; defs.len()].join(", ");
                let mut insert = tx
                    .prepare(&format!("INSERT INTO data VALUES ({placeholders})"))
                    .map_err(load_error)?;
                for row in &result.rows {
                    for (i, v) in row.iter().enumerate() {
                        let idx = i + 1;
                        let bound = match v {
                            Value::Null => insert.raw_bind_parameter(idx, rusqlite::types::Null),
                            Value::Bool(b) => insert.raw_bind_parameter(idx, i64::from(*b)),
                            Value::Number(n) => match n.as_i64() {
                                Some(i) => insert.raw_bind_parameter(idx, i),
                                None => insert.raw_bind_parameter(idx, n.as_f64().unwrap_or(0.0)),
                            },
                            Value::String(s) => insert.raw_bind_parameter(idx, s.as_str()),
                            other => insert.raw_bind_parameter(idx, other.to_string()),
                        };
                        bound.map_err(load_error)?;
                    }
                    insert.raw_execute().map_err(load_error)?;
                }
            }
            tx.commit().map_err(load_error)
        };
        Self::build(None, Vec::new(), approx * 2, fill)
    }

    /// Make a table with `fill`: in a new file of `dir`, or in memory (counted as the SQLite
    /// memory it holds, or `estimate` when the sandbox's allocator is not in place).
    fn build(
        dir: Option<&Path>,
        columns: Vec<Column>,
        estimate: usize,
        fill: impl FnOnce(&mut Connection) -> Result<(), QueryError>,
    ) -> Result<Self, QueryError> {
        let _sandbox = sqlite_budget::SandboxScope::enter();
        match dir {
            None => {
                let held_before = sqlite_budget::thread_net();
                let mut conn = Connection::open_in_memory().map_err(load_error)?;
                sqlite_budget::without_lookaside(&conn);
                fill(&mut conn)?;
                lock_down(&conn).map_err(load_error)?;
                Ok(Self {
                    pages: Pages::Memory(Mutex::new(conn)),
                    columns,
                    approx_bytes: held_since(held_before, estimate),
                })
            }
            Some(dir) => {
                let io = |e: std::io::Error| QueryError::Load(e.to_string());
                let path = tempfile::Builder::new()
                    .prefix("dataset-")
                    .suffix(".db")
                    .tempfile_in(dir)
                    .map_err(io)?
                    .into_temp_path();
                {
                    let mut conn = Connection::open(&path).map_err(load_error)?;
                    sqlite_budget::without_lookaside(&conn);
                    // A cache file: nothing to recover after a crash, nothing to make durable.
                    conn.pragma_update(None, "journal_mode", "OFF")
                        .map_err(load_error)?;
                    conn.pragma_update(None, "synchronous", "OFF")
                        .map_err(load_error)?;
                    fill(&mut conn)?;
                }
                let bytes = std::fs::metadata(&path).map_err(io)?.len();
                Ok(Self {
                    pages: Pages::File(path),
                    columns,
                    approx_bytes: usize::try_from(bytes).unwrap_or(usize::MAX),
                })
            }
        }
    }

    /// Run one read-only statement and collect its rows, within the row and memory caps.
    pub fn query(&self, sql: &str, limits: Limits) -> Result<QueryResult, QueryError> {
        let mut columns = Vec::new();
        let mut rows = Vec::new();
        let mut memory = 0usize;
        let streamed = self.for_each_row(
            sql,
            limits,
            |c| columns = c.to_vec(),
            |row| {
                memory += row_memory(&row);
                if memory > limits.max_result_bytes {
                    return std::ops::ControlFlow::Break(());
                }
                rows.push(row);
                std::ops::ControlFlow::Continue(())
            },
        )?;
        Ok(QueryResult {
            columns,
            rows,
            truncated: streamed == Streamed::Stopped,
        })
    }

    /// Run one read-only statement and hand its rows to `row` one at a time, without keeping
    /// them: `columns` first, then each row until the end, the row cap of `limits`, or `row`
    /// answers `Break`. The time budget holds as in `query`; one row that alone would take more
    /// memory than `limits.max_result_bytes` stops the query too (checked value by value, so a
    /// row of huge values is never built whole); the memory of the rows together is the
    /// visitor's to count.
    pub fn for_each_row(
        &self,
        sql: &str,
        limits: Limits,
        columns: impl FnOnce(&[String]),
        row: impl FnMut(Vec<Value>) -> std::ops::ControlFlow<()>,
    ) -> Result<Streamed, QueryError> {
        let deadline = limits.since.unwrap_or_else(Instant::now) + limits.time;
        let expired = || Instant::now() >= deadline;
        match &self.pages {
            Pages::Memory(conn) => {
                let conn = conn
                    .lock()
                    .map_err(|_| QueryError::Load("poisoned".into()))?;
                if expired() {
                    // The budget went by waiting for the connection: do not start.
                    return Err(QueryError::Expired(limits.time));
                }
                let result = {
                    let _sandbox = sqlite_budget::SandboxScope::enter();
                    run_until(&conn, deadline, sql, limits, columns, row)
                };
                result.map_err(|e| classify(e, limits.time, deadline))
            }
            Pages::File(path) => {
                if expired() {
                    return Err(QueryError::Expired(limits.time));
                }
                // Opened, used and closed in the sandbox's scope: its page cache and its sorts
                // are tenants' SQL memory, given back when the query is done.
                let _sandbox = sqlite_budget::SandboxScope::enter();
                let conn = open_read_only(path).map_err(load_error)?;
                run_until(&conn, deadline, sql, limits, columns, row)
                    .map_err(|e| classify(e, limits.time, deadline))
            }
        }
    }
}

fn load_error(e: rusqlite::Error) -> QueryError {
    QueryError::Load(e.to_string())
}

/// A read-only connection to a table's file, locked down as a loaded table is.
fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    use rusqlite::OpenFlags;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    sqlite_budget::without_lookaside(&conn);
    lock_down(&conn)?;
    Ok(conn)
}

/// `run` on `conn`, stopped at `deadline`.
fn run_until(
    conn: &Connection,
    deadline: Instant,
    sql: &str,
    limits: Limits,
    columns: impl FnOnce(&[String]),
    row: impl FnMut(Vec<Value>) -> std::ops::ControlFlow<()>,
) -> rusqlite::Result<Streamed> {
    conn.progress_handler(1_000, Some(move || Instant::now() >= deadline));
    let result = run(conn, sql, limits, columns, row);
    conn.progress_handler(0, None::<fn() -> bool>);
    result
}

/// Give SQLite's memory its two budgets (ADR 034): call first thing in a process, before any
/// SQLite connection (the event store's included) is opened. True when the split is in force.
pub fn split_memory() -> bool {
    sqlite_budget::install()
}

/// The SQLite memory tenants' SQL holds now (loaded tables and running queries), when the split
/// is in force.
pub fn sandbox_memory_used() -> u64 {
    sqlite_budget::sandbox_used()
}

/// How the cap of [`set_memory_cap`] applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryCap {
    /// To tenants' SQL only (loaded tables, queries, their sorts): the store's connections are
    /// never refused memory.
    Sandbox,
    /// To all of SQLite in the process, the store included (the split came too late: SQLite was
    /// used before [`split_memory`]).
    Process,
}

/// Cap the SQLite memory tenants' SQL may hold, all sandbox connections together: a query that
/// would go past it fails with an error instead of taking the machine down. With the split in
/// force ([`split_memory`]) the cap is the sandbox's alone; otherwise it falls back to SQLite's
/// process-wide `hard_heap_limit`, which must then leave room for the store's own connections.
pub fn set_memory_cap(bytes: u64) -> Result<MemoryCap, QueryError> {
    if sqlite_budget::installed() {
        sqlite_budget::set_budget(bytes);
        return Ok(MemoryCap::Sandbox);
    }
    let conn = Connection::open_in_memory().map_err(|e| QueryError::Load(e.to_string()))?;
    conn.query_row(&format!("PRAGMA hard_heap_limit = {bytes}"), [], |_| Ok(()))
        .map_err(|e| QueryError::Load(e.to_string()))?;
    Ok(MemoryCap::Process)
}

/// After loading: read-only, tight limits, and the authorizer.
fn lock_down(conn: &Connection) -> rusqlite::Result<()> {
    // The page cache of one connection (and so of its sorts) is bounded by this.
    conn.pragma_update(None, "cache_size", -32_768)?;
    // What a sort or an intermediate table holds beyond the cache stays in SQLite's heap, under
    // the sandbox's memory budget (`set_memory_cap`), instead of in temporary files that nothing
    // bounds: a query that needs more fails cleanly (ADR 015, ADR 034).
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "query_only", true)?;
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, 8 * 1024 * 1024)?;
    conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, 100_000)?;
    conn.set_limit(Limit::SQLITE_LIMIT_COLUMN, 1_000)?;
    conn.set_limit(Limit::SQLITE_LIMIT_EXPR_DEPTH, 200)?;
    conn.set_limit(Limit::SQLITE_LIMIT_COMPOUND_SELECT, 50)?;
    conn.set_limit(Limit::SQLITE_LIMIT_FUNCTION_ARG, 32)?;
    conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
    conn.set_limit(Limit::SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 1_000)?;
    conn.set_limit(Limit::SQLITE_LIMIT_VARIABLE_NUMBER, 0)?;
    conn.set_limit(Limit::SQLITE_LIMIT_TRIGGER_DEPTH, 0)?;
    conn.authorizer(Some(|ctx: AuthContext<'_>| match ctx.action {
        AuthAction::Select | AuthAction::Recursive => Authorization::Allow,
        // Only `data` exists: nothing can be attached or created, so any read is of it (or of
        // a common table expression, or the schema).
        AuthAction::Read { .. } => Authorization::Allow,
        AuthAction::Function { function_name }
            if !DENIED_FUNCTIONS
                .iter()
                .any(|d| d.eq_ignore_ascii_case(function_name)) =>
        {
            Authorization::Allow
        }
        _ => Authorization::Deny,
    }));
    Ok(())
}

/// Whether `sql` holds more than one statement: a `;` outside quotes and comments followed by
/// anything but blanks and comments.
fn several_statements(sql: &str) -> bool {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut ended = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' | b'"' | b'`' | b'[' => {
                if ended {
                    return true;
                }
                let close = if c == b'[' { b']' } else { c };
                i += 1;
                while i < b.len() && b[i] != close {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b';' => ended = true,
            c if c.is_ascii_whitespace() => {}
            _ if ended => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

fn run(
    conn: &Connection,
    sql: &str,
    limits: Limits,
    on_columns: impl FnOnce(&[String]),
    mut on_row: impl FnMut(Vec<Value>) -> std::ops::ControlFlow<()>,
) -> rusqlite::Result<Streamed> {
    if several_statements(sql) {
        return Err(rusqlite::Error::MultipleStatement);
    }
    let mut stmt = conn.prepare(sql)?;
    if !stmt.readonly() {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_AUTH),
            Some("only statements that read are allowed".into()),
        ));
    }
    let columns: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    let n = columns.len();
    on_columns(&columns);
    let mut seen = 0usize;
    let mut cursor = stmt.raw_query();
    while let Some(row) = cursor.next()? {
        if seen >= limits.max_rows {
            return Ok(Streamed::Stopped);
        }
        seen += 1;
        let mut out = Vec::with_capacity(n);
        let mut memory = ROW_MEMORY + n * std::mem::size_of::<Value>();
        for i in 0..n {
            let v = match row.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(i) => Value::from(i),
                ValueRef::Real(f) => {
                    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
                }
                ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Value::String(b.iter().map(|x| format!("{x:02x}")).collect()),
            };
            memory += value_memory(&v) - std::mem::size_of::<Value>();
            if memory > limits.max_result_bytes {
                return Ok(Streamed::Stopped);
            }
            out.push(v);
        }
        if on_row(out).is_break() {
            return Ok(Streamed::Stopped);
        }
    }
    Ok(Streamed::Complete)
}

fn classify(e: rusqlite::Error, budget: Duration, deadline: Instant) -> QueryError {
    match &e {
        rusqlite::Error::SqliteFailure(err, msg) => match err.code {
            rusqlite::ErrorCode::OperationInterrupted => QueryError::Timeout(budget),
            // Past SQLite's heap limit, temporary storage included (`temp_store = MEMORY`).
            rusqlite::ErrorCode::OutOfMemory => QueryError::Invalid(
                "the query needs more memory than the sandbox allows (sorts and intermediate \
                 results included)"
                    .into(),
            ),
            rusqlite::ErrorCode::AuthorizationForStatementDenied => {
                QueryError::NotAllowed(msg.clone().unwrap_or_else(|| "not authorized".into()))
            }
            _ if Instant::now() >= deadline => QueryError::Timeout(budget),
            _ => QueryError::Invalid(msg.clone().unwrap_or_else(|| e.to_string())),
        },
        rusqlite::Error::MultipleStatement => {
            QueryError::Invalid("send one statement per query".into())
        }
        _ => QueryError::Invalid(e.to_string()),
    }
}

/// Loaded tables by dataset id, within a budget (least recently used leave first): of memory when
/// the tables are in memory, of disk when they are in the cache's directory; and at most
/// [`MAX_TABLES`] of them.
#[derive(Debug)]
pub struct Cache {
    budget: usize,
    /// The cache's own directory of table files (removed with the cache), if it has one.
    dir: Option<tempfile::TempDir>,
    entries: Mutex<Entries>,
    clock: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Entries {
    tables: HashMap<String, (Arc<Table>, u64)>,
    /// The sum of the tables' `approx_bytes`.
    bytes: usize,
}

impl Entries {
    fn remove(&mut self, key: &str) {
        if let Some((t, _)) = self.tables.remove(key) {
            self.bytes -= t.approx_bytes;
        }
    }
}

/// The most tables a cache keeps, whatever its budget: each costs its index entry in memory
/// (its key, columns and path) and, in files, an open-able file; thousands of tiny datasets would
/// otherwise fill a disk budget with entries for minutes.
pub const MAX_TABLES: usize = 2_048;

/// The name every cache directory starts with, then the process id that made it.
const DIR_PREFIX: &str = "tenantry-sandbox-";

impl Cache {
    /// A cache of tables in memory.
    pub fn new(budget_bytes: usize) -> Self {
        Self {
            budget: budget_bytes,
            dir: None,
            entries: Mutex::new(Entries::default()),
            clock: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A cache of tables in files, in a directory of its own made in `parent` (created if
    /// missing), removed with the cache; `budget_bytes` is then of disk. Directories that caches
    /// of processes no longer running left in `parent` (a crash, a kill) are removed first.
    pub fn in_dir(budget_bytes: usize, parent: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(parent)?;
        remove_abandoned(parent);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir_in(parent)?;
        Ok(Self {
            dir: Some(dir),
            ..Self::new(budget_bytes)
        })
    }

    /// The directory the tables' files are in, if they are in files.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(tempfile::TempDir::path)
    }

    /// The budget, in bytes (of disk when [`Cache::dir`] is some).
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// The loaded table of `key`, loading it with `load` when absent. `load` is given the
    /// directory its table's file goes in (`None`: in memory), as [`Table::load_in`] takes it.
    pub fn get_or_load(
        &self,
        key: &str,
        load: impl FnOnce(Option<&Path>) -> Result<Table, QueryError>,
    ) -> Result<Arc<Table>, QueryError> {
        if let Some(t) = self.get(key) {
            return Ok(t);
        }
        let tick = self
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let table = Arc::new(load(self.dir())?);
        let mut entries = self.entries.lock().expect("cache lock");
        entries.remove(key);
        entries.bytes += table.approx_bytes;
        entries.tables.insert(key.to_owned(), (table.clone(), tick));
        while (entries.bytes > self.budget || entries.tables.len() > MAX_TABLES)
            && entries.tables.len() > 1
        {
            let oldest = entries
                .tables
                .iter()
                .filter(|(k, _)| k.as_str() != key)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => entries.remove(&k),
                None => break,
            };
        }
        Ok(table)
    }

    /// The loaded table of `key`, if it is in the cache.
    pub fn get(&self, key: &str) -> Option<Arc<Table>> {
        let tick = self
            .clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut entries = self.entries.lock().expect("cache lock");
        let (t, used) = entries.tables.get_mut(key)?;
        *used = tick;
        Some(t.clone())
    }

    pub fn forget(&self, key: &str) {
        self.entries.lock().expect("cache lock").remove(key);
    }

    /// What the cached tables take (memory, or disk when they are in files).
    pub fn loaded_bytes(&self) -> usize {
        self.entries.lock().expect("cache lock").bytes
    }

    /// How many tables are cached.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("cache lock").tables.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Remove the cache directories in `parent` whose process is gone (Linux: no `/proc/<pid>`).
/// Where processes cannot be looked up, nothing is removed.
fn remove_abandoned(parent: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(list) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in list.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(csv: &str) -> Table {
        let d = ingest::ingest(csv.as_bytes()).unwrap();
        Table::load(csv.as_bytes(), &d.columns).unwrap()
    }

    const CSV: &str = "id,name,amount,ok\n1,Ada,10.5,true\n2,Bo,20,false\n3,Cy,,true\n";

    #[test]
    fn reads_typed_data() {
        let t = table(CSV);
        let r = t
            .query(
                "SELECT id, name, amount, ok FROM data WHERE id >= 2 ORDER BY id",
                Limits::default(),
            )
            .unwrap();
        assert_eq!(r.columns, ["id", "name", "amount", "ok"]);
        assert_eq!(
            r.rows,
            vec![
                vec![
                    Value::from(2),
                    Value::from("Bo"),
                    Value::from(20.0),
                    Value::from(0)
                ],
                vec![
                    Value::from(3),
                    Value::from("Cy"),
                    Value::Null,
                    Value::from(1)
                ],
            ]
        );
        let r = t
            .query(
                "SELECT ok, count(*) FROM data GROUP BY ok ORDER BY ok",
                Limits::default(),
            )
            .unwrap();
        assert_eq!(
            r.rows,
            vec![
                vec![Value::from(0), Value::from(1)],
                vec![Value::from(1), Value::from(2)]
            ]
        );
    }

    #[test]
    fn anything_but_reading_is_refused() {
        let t = table(CSV);
        for sql in [
            "DELETE FROM data",
            "INSERT INTO data VALUES (4, 'x', 1, 1)",
            "UPDATE data SET name = 'x'",
            "DROP TABLE data",
            "CREATE TABLE t (a)",
            "CREATE TEMP TABLE t AS SELECT * FROM data",
            "ATTACH DATABASE '/tmp/x.db' AS x",
            "PRAGMA writable_schema = 1",
            "PRAGMA table_info(data)",
            "SELECT load_extension('/tmp/evil.so')",
            "VACUUM INTO '/tmp/copy.db'",
            "BEGIN",
        ] {
            let err = t.query(sql, Limits::default()).unwrap_err();
            assert!(
                matches!(err, QueryError::NotAllowed(_) | QueryError::Invalid(_)),
                "{sql}: {err:?}"
            );
        }
        assert!(matches!(
            t.query("SELECT 1; DELETE FROM data", Limits::default()),
            Err(QueryError::Invalid(_))
        ));
        assert_eq!(
            t.query("SELECT count(*) FROM data", Limits::default())
                .unwrap()
                .rows[0][0],
            Value::from(3)
        );
    }

    #[test]
    fn a_query_whose_budget_went_by_before_it_started_expires_without_running() {
        let t = table(CSV);
        let limits = Limits {
            time: Duration::from_millis(200),
            since: Instant::now().checked_sub(Duration::from_secs(1)),
            ..Limits::default()
        };
        // Distinct from a timeout: nothing ran, so it costs no unit (ADR 015).
        assert_eq!(
            t.query("SELECT count(*) FROM data", limits),
            Err(QueryError::Expired(Duration::from_millis(200)))
        );
    }

    #[test]
    fn runaway_queries_are_stopped_by_the_budget_and_caps() {
        let t = table(CSV);
        let limits = Limits {
            time: Duration::from_millis(200),
            ..Limits::default()
        };
        let started = Instant::now();
        let err = t
            .query("WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r", limits)
            .unwrap_err();
        assert_eq!(err, QueryError::Timeout(Duration::from_millis(200)));
        assert!(started.elapsed() < Duration::from_secs(2));
        let err = t
            .query("SELECT count(*) FROM data a, data b, data c, data d, data e, data f, data g, data h, data i, data j, data k, data l, data m, data n, data o, data p, data q, data r, data s, data t", limits)
            .unwrap_err();
        assert_eq!(err, QueryError::Timeout(Duration::from_millis(200)));
        let capped = t
            .query(
                "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT x FROM r",
                Limits {
                    max_rows: 50,
                    ..limits
                },
            )
            .unwrap();
        assert_eq!(capped.rows.len(), 50);
        assert!(capped.truncated);
        assert!(matches!(
            t.query("SELECT randomblob(100000000)", limits),
            Err(QueryError::Invalid(_))
        ));
        let one_huge_row = t
            .query(
                "SELECT printf('%.*c', 1000000, 'x'), printf('%.*c', 1000000, 'y')",
                Limits {
                    max_result_bytes: 1_000,
                    ..limits
                },
            )
            .unwrap();
        assert!(one_huge_row.truncated, "the byte cap holds within a row");
        assert!(one_huge_row.rows.is_empty());
        // Still healthy afterwards.
        assert_eq!(
            t.query("SELECT count(*) FROM data", limits).unwrap().rows[0][0],
            Value::from(3)
        );
    }

    #[test]
    fn the_cache_stays_within_its_budget() {
        let cache = Cache::new(400 * 1024);
        for k in 0..5 {
            let key = format!("d{k}");
            cache.get_or_load(&key, |_| Ok(table(CSV))).unwrap();
        }
        assert!(cache.loaded_bytes() <= 400 * 1024);
    }

    #[test]
    fn the_cache_keeps_at_most_max_tables_whatever_its_budget() {
        let cache = Cache::new(usize::MAX);
        let t = Arc::new(table(CSV));
        for k in 0..MAX_TABLES + 10 {
            cache
                .get_or_load(&format!("d{k}"), |_| {
                    Ok(Table {
                        pages: Pages::Memory(Mutex::new(Connection::open_in_memory().unwrap())),
                        columns: t.columns.clone(),
                        approx_bytes: 1,
                    })
                })
                .unwrap();
        }
        assert_eq!(cache.len(), MAX_TABLES);
        assert_eq!(cache.loaded_bytes(), MAX_TABLES);
        assert!(
            cache.get("d0").is_none(),
            "the least recently used left first"
        );
        assert!(cache.get(&format!("d{}", MAX_TABLES + 9)).is_some());
    }

    #[test]
    fn a_result_is_capped_by_the_memory_its_rows_take_not_their_serialized_size() {
        // Twenty one-digit columns: about 40 bytes of CSV a row, but twenty `Value`s and a
        // vector in memory.
        let header: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
        let mut csv = header.join(",") + "\n";
        for _ in 0..1_000 {
            csv.push_str(&vec!["7"; 20].join(","));
            csv.push('\n');
        }
        let t = table(&csv);
        let per_row = ROW_MEMORY + 20 * std::mem::size_of::<Value>();
        assert!(
            per_row > 10 * 40,
            "a wide row takes many times its CSV size"
        );
        let limits = Limits {
            max_result_bytes: 100 * per_row,
            ..Limits::default()
        };
        let r = t.query("SELECT * FROM data", limits).unwrap();
        assert!(r.truncated);
        assert_eq!(
            r.rows.len(),
            100,
            "1,000 rows of 40 bytes stop at 100 by memory"
        );
        assert_eq!(r.rows.iter().map(row_memory).sum::<usize>(), 100 * per_row);
        let whole = t
            .query(
                "SELECT * FROM data",
                Limits {
                    max_result_bytes: 1_000 * per_row,
                    ..Limits::default()
                },
            )
            .unwrap();
        assert!(!whole.truncated);
        assert_eq!(whole.rows.len(), 1_000);
    }

    #[test]
    fn rows_stream_one_at_a_time_and_the_visitor_can_stop_them() {
        let t = table(CSV);
        let mut seen = Vec::new();
        let mut names = Vec::new();
        let streamed = t
            .for_each_row(
                "SELECT id FROM data ORDER BY id",
                Limits::default(),
                |c| names = c.to_vec(),
                |row| {
                    seen.push(row[0].clone());
                    if seen.len() == 2 {
                        std::ops::ControlFlow::Break(())
                    } else {
                        std::ops::ControlFlow::Continue(())
                    }
                },
            )
            .unwrap();
        assert_eq!(streamed, Streamed::Stopped);
        assert_eq!(names, ["id"]);
        assert_eq!(seen, [Value::from(1), Value::from(2)]);
    }

    #[test]
    fn a_sort_past_the_heap_limit_fails_cleanly_instead_of_spilling_to_disk() {
        // The allocator and its budget are process-wide: nextest runs this test in its own
        // process.
        assert!(split_memory());
        assert_eq!(set_memory_cap(48 << 20).unwrap(), MemoryCap::Sandbox);
        let t = table(CSV);
        let limits = Limits {
            time: Duration::from_secs(120),
            ..Limits::default()
        };
        // About 200 MB of rows to sort for the GROUP BY: with temporary files this would spill
        // to disk and succeed; kept in memory (`temp_store = MEMORY`) it stops at the heap limit.
        let err = t
            .query(
                "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r LIMIT 100000) \
                 SELECT count(*) FROM (SELECT printf('%.*c', 2000, 'x') || x AS s FROM r \
                 GROUP BY s)",
                limits,
            )
            .unwrap_err();
        assert!(
            matches!(&err, QueryError::Invalid(m) if m.contains("more memory")),
            "{err:?}"
        );
        // The table still answers.
        assert_eq!(
            t.query("SELECT count(*) FROM data", limits).unwrap().rows[0][0],
            Value::from(3)
        );
    }
}
