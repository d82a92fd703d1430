//! The cache of loaded tables counts the SQLite memory a table really holds, measured by the
//! sandbox's allocator (ADR 034) as `tenantry` installs it, not an estimate from the CSV's size.
//! Its own process (nextest runs each test alone), so the allocator is installed before SQLite's
//! first use.

use dataplane::{ingest, sandbox};

fn csv(rows: usize) -> String {
    let mut s = String::from("id,city,amount\n");
    for i in 0..rows {
        s.push_str(&format!("{i},city-{},{}.5\n", i % 17, i * 3));
    }
    s
}

#[test]
fn a_loaded_table_counts_what_it_holds_and_the_cache_keeps_the_sandbox_within_budget() {
    assert!(
        sqlite_budget::install(),
        "installed before SQLite's first use"
    );
    let small = csv(20);
    let columns = ingest::ingest(small.as_bytes()).unwrap().columns;

    let before = sqlite_budget::sandbox_used();
    let table = sandbox::Table::load(small.as_bytes(), &columns).unwrap();
    let held = sqlite_budget::sandbox_used() - before;
    // What the table counts is what the sandbox holds for it; for a small table that is mostly
    // the connection itself, far more than three times its 400-byte CSV.
    assert_eq!(table.approx_bytes as u64, held);
    assert!(
        held > 16 * small.len() as u64,
        "{held} for {} bytes of CSV",
        small.len()
    );
    drop(table);
    assert_eq!(sqlite_budget::sandbox_used(), before);

    // Many small tables through a 4 MiB cache: the sandbox's real memory stays near the budget
    // (within one table), where the CSV-size estimate let it grow many times past it.
    let budget = 4 << 20;
    let cache = sandbox::Cache::new(budget);
    for i in 0..200 {
        cache
            .get_or_load(&format!("ds-{i}"), |_| {
                sandbox::Table::load(small.as_bytes(), &columns)
            })
            .unwrap();
        assert!(cache.loaded_bytes() <= budget);
        assert!(
            sqlite_budget::sandbox_used() <= (budget + held as usize + (64 << 10)) as u64,
            "sandbox holds {} for a budget of {budget}",
            sqlite_budget::sandbox_used()
        );
    }
}

fn files_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn a_cache_in_files_holds_no_memory_between_queries_and_keeps_to_its_disk_budget() {
    assert!(
        sqlite_budget::install(),
        "installed before SQLite's first use"
    );
    let parent = tempfile::tempdir().unwrap();
    // What a crashed process left, and what a live one (this one) holds.
    let abandoned = parent.path().join("tenantry-sandbox-4294967295-abc");
    let alive = parent
        .path()
        .join(format!("tenantry-sandbox-{}-live", std::process::id()));
    for d in [&abandoned, &alive] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("dataset-x.db"), b"left").unwrap();
    }
    let budget = 256 << 10;
    let cache = sandbox::Cache::in_dir(budget, parent.path()).unwrap();
    assert!(!abandoned.exists(), "a dead process's directory is removed");
    assert!(alive.exists(), "a live process's directory is kept");
    let dir = cache.dir().expect("tables in files").to_path_buf();
    assert!(dir.starts_with(parent.path()));

    let data = csv(5_000);
    let columns = ingest::ingest(data.as_bytes()).unwrap().columns;
    let before = sqlite_budget::sandbox_used();
    let table = cache
        .get_or_load("big", |d| {
            sandbox::Table::load_in(d, data.as_bytes(), &columns)
        })
        .unwrap();
    assert_eq!(
        sqlite_budget::sandbox_used(),
        before,
        "a loaded table in a file holds no SQLite memory"
    );
    assert_eq!(files_in(&dir).len(), 1);
    let on_disk = std::fs::metadata(&files_in(&dir)[0]).unwrap().len() as usize;
    assert_eq!(table.approx_bytes, on_disk, "the cache counts the file");

    let r = table
        .query(
            "SELECT city, sum(amount) AS total FROM data GROUP BY city ORDER BY total DESC",
            sandbox::Limits::default(),
        )
        .unwrap();
    assert_eq!(r.rows.len(), 17);
    assert_eq!(
        sqlite_budget::sandbox_used(),
        before,
        "the query's connection, page cache and sort are given back when it ends"
    );
    // Reading only: the sandbox's authorizer holds on a file as in memory.
    assert!(matches!(
        table.query("DELETE FROM data", sandbox::Limits::default()),
        Err(sandbox::QueryError::NotAllowed(_) | sandbox::QueryError::Invalid(_))
    ));
    assert_eq!(
        table
            .query("SELECT count(*) FROM data", sandbox::Limits::default())
            .unwrap()
            .rows[0][0],
        serde_json::Value::from(5_000)
    );

    // Queries of one dataset run side by side: a runaway query does not hold the table.
    let runaway = {
        let table = table.clone();
        std::thread::spawn(move || {
            table.query(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) \
                 SELECT count(*) FROM n",
                sandbox::Limits {
                    time: std::time::Duration::from_secs(3),
                    ..sandbox::Limits::default()
                },
            )
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    let quick = table
        .query("SELECT max(id) FROM data", sandbox::Limits::default())
        .unwrap();
    assert_eq!(quick.rows[0][0], serde_json::Value::from(4_999));
    assert!(
        !runaway.is_finished(),
        "the quick query ran while the runaway one still held its own connection"
    );
    assert!(matches!(
        runaway.join().unwrap(),
        Err(sandbox::QueryError::Timeout(_))
    ));
    drop(table);

    // Many tables through the budget: the files on disk are the cached tables, within budget.
    let small = csv(200);
    for i in 0..100 {
        cache
            .get_or_load(&format!("ds-{i}"), |d| {
                sandbox::Table::load_in(d, small.as_bytes(), &columns)
            })
            .unwrap();
        assert!(cache.loaded_bytes() <= budget);
        let files = files_in(&dir);
        assert_eq!(
            files.len(),
            cache.len(),
            "an evicted table's file is removed"
        );
        let disk: u64 = files
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum();
        assert_eq!(disk as usize, cache.loaded_bytes());
    }
    assert!(
        cache.get("big").is_none(),
        "the least recently used left first"
    );
    cache.forget("ds-99");
    assert_eq!(files_in(&dir).len(), cache.len());
    assert_eq!(sqlite_budget::sandbox_used(), before);
    drop(cache);
    assert!(!dir.exists(), "the cache's directory goes with it");
}
