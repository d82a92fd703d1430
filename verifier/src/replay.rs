//! `tenantry-verify replay BUNDLE --at TIME`: the tenant's state at a moment, rebuilt from the
//! bundle's events alone (issue 12, item 8) with the pure `domain` crate's fold — the one piece of
//! Tenantry's code the verifier uses, and only for this; it trusts nothing else of the server. The
//! caller verifies the bundle first: this reads the events as proven.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::io::Read;

/// The members of an `events.jsonl` line the replay needs (the line was checked strictly when the
/// bundle was verified).
#[derive(Deserialize)]
struct Line<'a> {
    sequence: u64,
    recorded_at: String,
    stream: String,
    event_type: String,
    schema_version: u16,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    payload_text: Option<String>,
}

#[derive(Deserialize)]
struct Manifest {
    tenant: String,
    range: Range,
}

#[derive(Deserialize)]
struct Range {
    from: String,
    to: String,
    first_sequence: u64,
}

/// The state of the bundle's tenant after every event recorded at or before `at_micros`.
pub fn replay<R: Read>(bundle: R, at_micros: i64) -> Result<domain::replay::TenantState, String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bundle));
    let (mut manifest, mut events) = (None, None);
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        let mut bytes = Vec::new();
        match path.to_str() {
            Some("manifest.json") => {
                entry.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
                manifest = Some(bytes);
            }
            Some("events.jsonl") => {
                entry.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
                events = Some(bytes);
            }
            _ => {}
        }
    }
    let manifest: Manifest = serde_json::from_slice(&manifest.ok_or("no manifest.json")?)
        .map_err(|e| format!("manifest.json: {e}"))?;
    let events = events.ok_or("no events.jsonl")?;
    if manifest.range.first_sequence != 0 {
        return Err(format!(
            "the bundle starts at the tenant's event {}, not its first: a replay needs the whole \
             history (bundle from the tenant's beginning)",
            manifest.range.first_sequence
        ));
    }
    let to = crate::loose_timestamp(&manifest.range.to).ok_or("range.to is not a time")?;
    crate::loose_timestamp(&manifest.range.from).ok_or("range.from is not a time")?;
    if at_micros >= to {
        return Err(format!(
            "--at is not before the bundle's range end {}: later events are not in the bundle",
            manifest.range.to
        ));
    }
    let mut fold = domain::replay::Replay::new();
    for raw in events.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let line: Line<'_> =
            serde_json::from_slice(raw).map_err(|e| format!("events.jsonl: {e}"))?;
        let recorded = crate::loose_timestamp(&line.recorded_at)
            .ok_or_else(|| format!("event {}: recorded_at is not a time", line.sequence))?;
        if recorded > at_micros {
            break;
        }
        let payload: &[u8] = match (&line.payload, &line.payload_text) {
            (Some(p), _) => p.get().as_bytes(),
            (None, Some(t)) => t.as_bytes(),
            (None, None) => {
                return Err(format!(
                    "event {}'s payload was erased: its state cannot be replayed",
                    line.sequence
                ));
            }
        };
        fold.apply(
            line.sequence,
            &line.stream,
            &line.event_type,
            line.schema_version,
            payload,
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(fold.state(&manifest.tenant, at_micros))
}
