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
            .get_or_load(&format!("ds-{i}"), || {
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
