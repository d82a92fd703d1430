//! What the command-line tests share: the real `tenantry` run once and its JSON report read, and
//! the real `tenantry serve`, started on a data folder. Each test crate uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `tenantry ARGS`, run to its end.
pub fn tenantry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args(args)
        .output()
        .expect("run tenantry")
}

/// `tenantry ARGS`, which must succeed and print one JSON report.
#[track_caller]
pub fn ok_json(args: &[&str]) -> serde_json::Value {
    let out = tenantry(args);
    assert!(
        out.status.success(),
        "tenantry {args:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

/// Run a future to its end on a runtime of its own (the tests themselves are synchronous).
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// `tenantry serve` on `data` and a free port: the child and the address it listens on.
pub fn serve(data: &Path) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tenantry"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the server stopped before saying where it listens"
        );
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (child, addr)
}
