//! `tenantry-verify BUNDLE.tar.gz [--key PEM]... [--tenant ID] [--from TIME] [--to TIME]
//! [--known-checkpoint FILE]`: one line per check, exit 0 when all pass, 1 when any fails, 2 on a
//! usage error. `tenantry-verify replay BUNDLE --at TIME [options]` verifies, then prints the
//! tenant's state at TIME rebuilt from the bundle's events (JSON).

use std::process::ExitCode;

const USAGE: &str =
    "usage: tenantry-verify BUNDLE.tar.gz [--key PUBLIC_KEY.pem]... [--tenant TENANT_ID] \
[--from TIME] [--to TIME] [--known-checkpoint CHECKPOINT_FILE]
       tenantry-verify replay BUNDLE.tar.gz --at TIME [the same options]
  TIME is YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or YYYY-MM-DDTHH:MM:SS.ffffffZ (UTC)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("replay") {
        return replay(args[1..].to_vec());
    }
    match parse(args) {
        Err(e) => {
            eprintln!("tenantry-verify: {e}\n{USAGE}");
            ExitCode::from(2)
        }
        Ok(None) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Some((path, opts))) => {
            let report = match std::fs::File::open(&path) {
                Ok(f) => verifier::verify(f, &opts),
                Err(e) => {
                    eprintln!("tenantry-verify: cannot open {path}: {e}");
                    return ExitCode::from(2);
                }
            };
            print!("{report}");
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// `replay BUNDLE --at TIME [verify options]`: verify, then print the tenant's state at TIME as
/// JSON. Exit 0 with the state, 1 when the bundle fails a check or cannot be replayed, 2 on a
/// usage error.
fn replay(mut args: Vec<String>) -> ExitCode {
    let at = match args.iter().position(|a| a == "--at") {
        Some(i) if i + 1 < args.len() => {
            let raw = args.remove(i + 1);
            args.remove(i);
            match time(&raw) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("tenantry-verify replay: {e}\n{USAGE}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => {
            eprintln!("tenantry-verify replay: --at TIME is required\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (path, opts) = match parse(args) {
        Ok(Some(p)) => p,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tenantry-verify replay: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let open = || std::fs::File::open(&path);
    let report = match open() {
        Ok(f) => verifier::verify(f, &opts),
        Err(e) => {
            eprintln!("tenantry-verify: cannot open {path}: {e}");
            return ExitCode::from(2);
        }
    };
    if !report.passed() {
        eprint!("{report}");
        eprintln!("tenantry-verify replay: the bundle did not verify; nothing replayed");
        return ExitCode::from(1);
    }
    match open()
        .map_err(|e| e.to_string())
        .and_then(|f| verifier::replay(f, at))
    {
        Ok(state) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&state).expect("a state serializes")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tenantry-verify replay: {e}");
            ExitCode::from(1)
        }
    }
}

fn parse(args: Vec<String>) -> Result<Option<(String, verifier::Options)>, String> {
    let mut opts = verifier::Options::default();
    let mut bundle = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| format!("{flag} needs a value"));
        match a.as_str() {
            "-h" | "--help" => return Ok(None),
            "--key" => {
                let p = value("--key")?;
                let pem = std::fs::read(&p).map_err(|e| format!("cannot read key {p}: {e}"))?;
                opts.keys.push(
                    verifier::parse_public_key_pem(&pem).map_err(|e| format!("key {p}: {e}"))?,
                );
            }
            "--tenant" => opts.tenant = Some(value("--tenant")?),
            "--from" => opts.from = Some(time(&value("--from")?)?),
            "--to" => opts.to = Some(time(&value("--to")?)?),
            "--known-checkpoint" => {
                let p = value("--known-checkpoint")?;
                opts.known_checkpoint =
                    Some(std::fs::read(&p).map_err(|e| format!("cannot read {p}: {e}"))?);
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s}")),
            _ if bundle.is_some() => return Err("more than one bundle given".into()),
            _ => bundle = Some(a),
        }
    }
    if let (Some(f), Some(t)) = (opts.from, opts.to)
        && f > t
    {
        return Err("--from is after --to".into());
    }
    Ok(Some((bundle.ok_or("no bundle given")?, opts)))
}

fn time(s: &str) -> Result<i64, String> {
    verifier::loose_timestamp(s).ok_or_else(|| format!("{s:?} is not a time"))
}
