//! `spawn_app()`: the real server on port 0 with an isolated store, and a small blocking HTTP
//! client that shows the whole exchange when an assertion fails.

#![allow(dead_code)]

use api::settings::Settings;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use store::{Location, Store};

pub enum Backend {
    Embedded,
    Postgres,
    /// An existing PostgreSQL database (a second server on the same data).
    PostgresAt(String),
}

pub struct TestApp {
    pub addr: String,
    pub location: Location,
    _dir: Option<tempfile::TempDir>,
}

pub fn fresh_postgres() -> String {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(store::testing::fresh_postgres_url())
}

pub fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {})
}

pub fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with_clock(backend, tweak, std::sync::Arc::new(app::SystemClock))
}

/// [`spawn_app_with`] on a clock of the test's (`app::ShiftedClock` moves time forward).
pub fn spawn_app_with_clock(
    backend: Backend,
    tweak: impl FnOnce(&mut Settings),
    clock: std::sync::Arc<dyn app::Clock>,
) -> TestApp {
    let (location, dir) = match backend {
        Backend::Embedded => {
            let dir = tempfile::tempdir().unwrap();
            (Location::Embedded(dir.path().to_path_buf()), Some(dir))
        }
        Backend::Postgres => (Location::Postgres(fresh_postgres()), None),
        Backend::PostgresAt(url) => (Location::Postgres(url), None),
    };
    let mut settings = Settings {
        listen: "127.0.0.1:0".into(),
        store: location.clone(),
        read_wait_ms: 3_000,
        // Tests sign up many tenants from 127.0.0.1; the limit has tests of its own.
        signup_per_minute: 0,
        // No nightly billing run in the middle of a test that crosses 02:00 UTC.
        billing_nightly_at: None,
        ..Settings::default()
    };
    tweak(&mut settings);
    let (tx, rx) = std::sync::mpsc::channel();
    let loc = location.clone();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let store = Store::open(&loc).await.expect("open the test store");
            let running = api::server::start_with_clock(settings, store, clock)
                .await
                .expect("start the server");
            tx.send(running.addrs[0].to_string()).unwrap();
            let _ = running.server.await;
        })
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the server starts");
    TestApp {
        addr,
        location,
        _dir: dir,
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub exchange: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}):\n{}", self.exchange))
    }

    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected status:\n{}", self.exchange);
        if self.body.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Assert a problem document of this status and `type` slug.
    #[track_caller]
    pub fn problem(&self, status: u16, slug: &str) -> Value {
        assert_eq!(self.status, status, "unexpected status:\n{}", self.exchange);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "not a problem document:\n{}",
            self.exchange
        );
        let p = self.json();
        assert_eq!(
            p["type"],
            format!("https://tenantry.dev/problems/{slug}"),
            "problem type:\n{}",
            self.exchange
        );
        assert_eq!(p["status"], status);
        p
    }
}

impl TestApp {
    pub fn raw(&self, request: &[u8]) -> Response {
        let mut conn = TcpStream::connect(&self.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        conn.write_all(request).unwrap();
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).unwrap();
        parse(request, &raw)
    }

    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.raw(&bytes)
    }

    pub fn get(&self, path: &str, token: &str) -> Response {
        self.send(
            "GET",
            path,
            &[("Authorization", &format!("Bearer {token}"))],
            None,
        )
    }

    pub fn post_json(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        self.send("POST", path, &headers, Some(body.to_string().as_bytes()))
    }

    /// Sign up a tenant; returns (tenant_id, owner token).
    pub fn signup(&self, tenant: &str, email: &str) -> (String, String) {
        let body = serde_json::json!({"tenant_name": tenant, "email": email, "name": "Owner"});
        let r = self.post_json("/v1/signup", None, &body).expect(201);
        (
            r["tenant_id"].as_str().unwrap().to_owned(),
            r["token"].as_str().unwrap().to_owned(),
        )
    }

    /// Add a member with `role`; returns their token.
    pub fn add_member(&self, owner: &str, email: &str, role: &str) -> String {
        let body = serde_json::json!({"email": email, "name": "Member", "role": role});
        let r = self
            .post_json("/v1/members", Some(owner), &body)
            .expect(201);
        r["token"].as_str().unwrap().to_owned()
    }

    /// The store's head position, from /readyz.
    pub fn head(&self) -> u64 {
        let r = self.send("GET", "/readyz", &[], None);
        r.json()["head_position"]
            .as_u64()
            .unwrap_or_else(|| panic!("no head position:\n{}", r.exchange))
    }

    /// `f` run on another handle of this app's store (as another process beside the server
    /// would), closed after it.
    pub fn with_store<T, F>(&self, f: impl FnOnce(Store) -> F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        let location = self.location.clone();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let store = Store::open(&location).await.unwrap();
                let out = f(store.clone()).await;
                store.close().await;
                out
            })
    }

    /// A platform token valid for a day, issued through the real command path on this app's
    /// store, from a second `Store` beside the running server: the command `tenantry operator
    /// token` (the `cli` crate) runs, with its actor.
    pub fn operator_token(&self, role: domain::PlatformRole) -> String {
        use domain::platform::{self, Platform, PlatformCommand};
        self.with_store(|store| async move {
            let executor = commands::Executor::<Platform>::new(
                store.clone(),
                commands::ExecutorConfig::new("platform/v1"),
            );
            let token = api::tokens::generate();
            let now = time::OffsetDateTime::now_utc();
            let command = PlatformCommand::IssueOperatorToken {
                operator_id: domain::UserId::from_uuid(uuid::Uuid::now_v7()),
                role,
                token: domain::identity::IssuedToken {
                    token_id: uuid::Uuid::now_v7(),
                    token_sha256: api::tokens::sha256_hex(token.as_bytes()),
                    expires_at: now + time::Duration::days(1),
                },
            };
            executor
                .execute(
                    domain::TenantId::PLATFORM,
                    platform::STREAM,
                    &command,
                    &store::Metadata::actor("cli:operator-token"),
                    now,
                )
                .await
                .unwrap();
            token
        })
    }
}

fn parse(request: &[u8], raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..end]).trim(), 16)
                .unwrap_or(0);
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[end + 2..end + 2 + size]);
            rest = &rest[end + 2 + size + 2..];
        }
        body = out;
    }
    let shown_req = String::from_utf8_lossy(&request[..request.len().min(2_000)]).to_string();
    let exchange = format!(
        "--- request\n{shown_req}\n--- response\n{head}\n\n{}",
        String::from_utf8_lossy(&body[..body.len().min(4_000)])
    );
    Response {
        status,
        headers,
        body,
        exchange,
    }
}
