//! Test support: a fresh, empty PostgreSQL database per test.
//!
//! `DATABASE_URL` (set by `scripts/test.sh`, which starts a throwaway cluster when none is given)
//! names a server the tests may create databases on.

use std::str::FromStr;

/// Create an empty database and return its URL. Panics with a clear message when
/// `DATABASE_URL` is not set: the PostgreSQL half of the suite must run, never silently skip.
pub async fn fresh_postgres_url() -> String {
    let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!("DATABASE_URL is not set: run the suite with scripts/test.sh, which starts PostgreSQL")
    });
    let config = tokio_postgres::Config::from_str(&base).expect("DATABASE_URL is a valid URL");
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("DATABASE_URL is reachable");
    let driver = tokio::spawn(connection);
    let name = format!("tenantry_test_{}", uuid::Uuid::new_v4().simple());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("can create a test database");
    drop(client);
    let _ = driver.await;
    with_database(&base, &name)
}

/// `base` with its database name replaced by `name`.
pub fn with_database(base: &str, name: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base, None),
    };
    let authority_end = head
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| head[start..].find('/').map(|j| start + j))
        .unwrap_or(head.len());
    let mut url = format!("{}/{}", &head[..authority_end], name);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced_in_any_url_shape() {
        assert_eq!(
            with_database("postgres://u@h:5/postgres", "t"),
            "postgres://u@h:5/t"
        );
        assert_eq!(with_database("postgres://u@h:5", "t"), "postgres://u@h:5/t");
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "t"),
            "postgresql://u:p@h/t?sslmode=disable"
        );
    }
}
