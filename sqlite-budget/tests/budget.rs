//! The split in a real process: SQLite's memory asked for inside a `SandboxScope` stops at the
//! budget, memory asked for outside it does not. The allocator is process-wide and can only be
//! installed before SQLite's first use: nextest runs each test in a process of its own.

use rusqlite::Connection;
use sqlite_budget::{SandboxScope, install, sandbox_used, set_budget};

/// About 64 MB of rows, kept in memory.
const FILL: &str = "CREATE TABLE t AS WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 \
                    FROM r LIMIT 64000) SELECT x, randomblob(1000) AS b FROM r";

fn memory_db() -> Connection {
    let conn = Connection::open_in_memory().unwrap();
    conn.pragma_update(None, "temp_store", "MEMORY").unwrap();
    conn
}

#[test]
fn sandbox_memory_stops_at_its_budget_and_other_memory_does_not() {
    assert!(install(), "installed before SQLite's first use");
    set_budget(16 << 20);

    let refused = {
        let _scope = SandboxScope::enter();
        let conn = memory_db();
        conn.execute_batch(FILL).unwrap_err()
    };
    assert_eq!(
        refused.sqlite_error_code(),
        Some(rusqlite::ErrorCode::OutOfMemory),
        "{refused}"
    );
    // Everything the refused statement took was given back with its connection.
    assert_eq!(sandbox_used(), 0);

    // The same work outside the sandbox (the event store's connections) is not refused, and
    // does not count against the sandbox.
    let store_like = memory_db();
    store_like.execute_batch(FILL).unwrap();
    let n: i64 = store_like
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 64_000);
    assert_eq!(sandbox_used(), 0);

    // While the sandbox holds memory, it is counted; a connection freed on another thread is
    // settled against the sandbox all the same.
    let held = {
        let _scope = SandboxScope::enter();
        let conn = memory_db();
        conn.execute_batch(
            "CREATE TABLE s AS WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r \
             LIMIT 4000) SELECT x, randomblob(1000) AS b FROM r",
        )
        .unwrap();
        conn
    };
    assert!(sandbox_used() > 4_000_000, "{}", sandbox_used());
    std::thread::spawn(move || drop(held)).join().unwrap();
    assert_eq!(sandbox_used(), 0);
}

#[test]
fn the_split_cannot_be_installed_after_sqlite_was_first_used() {
    let conn = Connection::open_in_memory().unwrap();
    assert!(!install());
    assert!(!sqlite_budget::installed());
    drop(conn);
}

#[test]
fn a_thread_sees_what_the_work_it_did_still_holds() {
    assert!(install(), "installed before SQLite's first use");
    set_budget(u64::MAX);
    let before = sqlite_budget::thread_net();
    let conn = {
        let _scope = SandboxScope::enter();
        let conn = memory_db();
        conn.execute_batch(
            "CREATE TABLE s AS WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r \
             LIMIT 2000) SELECT x, randomblob(1000) AS b FROM r",
        )
        .unwrap();
        conn
    };
    let held = sqlite_budget::thread_net() - before;
    // The rows (2 MB) and the connection itself, and no more than the sandbox holds in all.
    assert!(held > 2_000_000, "{held}");
    assert_eq!(held as u64, sandbox_used());
    // Memory taken outside the sandbox is not this count's.
    let other = memory_db();
    other.execute_batch(FILL).unwrap();
    assert_eq!(sqlite_budget::thread_net() - before, held);
    drop(conn);
    assert_eq!(sqlite_budget::thread_net(), before);
}

/// A connection without lookaside holds what it needs, not the pool SQLite sets aside at open:
/// an in-memory connection with one small table holds less than half as much.
#[test]
fn a_connection_without_lookaside_holds_less() {
    assert!(install(), "installed before SQLite's first use");
    set_budget(u64::MAX);
    let held = |lookaside: bool| {
        let _scope = SandboxScope::enter();
        let before = sqlite_budget::thread_net();
        let conn = Connection::open_in_memory().unwrap();
        if !lookaside {
            assert!(sqlite_budget::without_lookaside(&conn), "SQLite took it");
        }
        conn.execute_batch("CREATE TABLE t (a, b); INSERT INTO t VALUES (1, 'x');")
            .unwrap();
        let held = sqlite_budget::thread_net() - before;
        drop(conn);
        held
    };
    let (with, without) = (held(true), held(false));
    assert!(
        without * 2 < with && with - without > 40_000,
        "with lookaside {with} B, without {without} B"
    );
}
