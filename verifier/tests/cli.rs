//! The real `tenantry-verify` binary on a real bundle, and OpenSSL on its manifest signature.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tenantry-verify"))
        .args(args)
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    (out.status.code().unwrap_or(-1), so, se)
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tenantry-verify-test-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_fixture(dir: &Path) {
    std::fs::write(dir.join("bundle.tar.gz"), build(&Params::default())).unwrap();
    std::fs::write(dir.join("export.pem"), pem_of(&export_key())).unwrap();
    std::fs::write(dir.join("log.pem"), pem_of(&log_signing_key())).unwrap();
    std::fs::write(dir.join("other.pem"), pem_of(&other_key())).unwrap();
}

#[test]
fn a_good_bundle_prints_one_pass_line_per_check_and_exits_0() {
    let d = tmp("good");
    write_fixture(&d);
    let p = |f: &str| d.join(f).to_str().unwrap().to_string();
    let (code, out, err) = run(&[
        &p("bundle.tar.gz"),
        "--key",
        &p("export.pem"),
        "--key",
        &p("log.pem"),
        "--tenant",
        TENANT,
        "--from",
        "2026-01-04",
        "--to",
        "2026-01-31",
    ]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.lines().all(|l| l.starts_with("PASS ")), "{out}");
    assert!(
        out.contains("PASS range-proof\n") && out.contains("PASS requested-range\n"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_wrong_key_exits_1_and_usage_errors_exit_2() {
    let d = tmp("bad");
    write_fixture(&d);
    let p = |f: &str| d.join(f).to_str().unwrap().to_string();
    let (code, out, _) = run(&[&p("bundle.tar.gz"), "--key", &p("other.pem")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL manifest-signature: "), "{out}");
    for args in [
        vec![],
        vec!["--nope".to_string()],
        vec![p("bundle.tar.gz"), "--from".into(), "yesterday".into()],
        vec![p("bundle.tar.gz"), "--key".into()],
    ] {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = run(&a);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains("usage:"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn openssl_verifies_the_manifest_signature_with_the_pem_key() {
    let Ok(which) = Command::new("which").arg("openssl").output() else {
        return;
    };
    if !which.status.success() {
        eprintln!("openssl is not on PATH: skipped");
        return;
    }
    let d = tmp("openssl");
    let u = Unpacked::of(&build(&Params::default()));
    for (path, bytes) in &u.entries {
        let f = d.join(path);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, bytes).unwrap();
    }
    let openssl = |key: &str| {
        Command::new("openssl")
            .args([
                "pkeyutl",
                "-verify",
                "-pubin",
                "-inkey",
                key,
                "-rawin",
                "-in",
                "manifest.json",
                "-sigfile",
                "manifest.json.sig",
            ])
            .current_dir(&d)
            .output()
            .unwrap()
    };
    let ok = openssl("keys/export.pem");
    assert!(
        ok.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("Signature Verified Successfully"));
    let bad = openssl("keys/log.pem");
    assert!(
        !bad.status.success(),
        "the log key must not verify the manifest"
    );
    let _ = std::fs::remove_dir_all(&d);
}
