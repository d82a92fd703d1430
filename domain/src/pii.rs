//! The PII engine (SPEC §8): detectors that find personal data and secrets in text, and methods
//! that scrub what they find. Pure: no IO, no clock; the hash key comes in as an argument.
//!
//! Detectors work on bytes and only match ASCII patterns, so every finding's byte range falls on
//! UTF-8 character boundaries. Validation keeps false positives down: Luhn and issuer prefixes for
//! cards, mod-97 and country lengths for IBANs, octet ranges for IPv4, the SSA's rules for SSNs.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

macro_rules! detectors {
    ($($variant:ident = $name:literal),* $(,)?) => {
        /// What a detector looks for. Order is priority when two findings overlap.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum Detector {
            $(#[serde(rename = $name)] $variant),*
        }

        impl Detector {
            pub const ALL: &'static [Detector] = &[$(Detector::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Detector::$variant => $name),*
                }
            }
        }

        impl FromStr for Detector {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name => Ok(Detector::$variant),)*
                    other => Err(format!("unknown detector {other:?} (expected one of: {})", [$($name),*].join(", "))),
                }
            }
        }
    };
}

detectors!(
    UrlCredentials = "url_credentials",
    SecretKey = "secret",
    Jwt = "jwt",
    BearerToken = "bearer_token",
    Email = "email",
    Card = "card",
    Iban = "iban",
    Ssn = "ssn",
    Mac = "mac",
    Ipv6 = "ipv6",
    Ipv4 = "ipv4",
    Phone = "phone",
);

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One piece of personal data or secret: which detector, and where (byte offsets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub detector: Detector,
    pub start: usize,
    pub end: usize,
}

/// How a finding is scrubbed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Delete it.
    Remove,
    /// `[email]`, `[card]`, …
    Replace,
    /// The same length of `*` (keeps layout).
    Mask,
    /// `[email:3f1a9c2b7d4e]`: a keyed hash, stable within a tenant, useless across tenants.
    Hash,
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "remove" => Ok(Method::Remove),
            "replace" => Ok(Method::Replace),
            "mask" => Ok(Method::Mask),
            "hash" => Ok(Method::Hash),
            other => Err(format!(
                "unknown method {other:?} (expected remove, replace, mask or hash)"
            )),
        }
    }
}

/// Find every enabled detector's findings, without overlaps (higher priority, then longer, wins),
/// in text order.
pub fn scan(text: &str, enabled: &[Detector]) -> Vec<Finding> {
    let b = text.as_bytes();
    let mut found = Vec::new();
    let on = |d: Detector| enabled.contains(&d);
    if on(Detector::UrlCredentials) {
        url_credentials(b, &mut found);
    }
    if on(Detector::SecretKey) {
        secrets(b, &mut found);
    }
    if on(Detector::Jwt) {
        jwts(b, &mut found);
    }
    if on(Detector::BearerToken) {
        bearer_tokens(b, &mut found);
    }
    if on(Detector::Email) {
        emails(b, &mut found);
    }
    if on(Detector::Mac) {
        macs(b, &mut found);
    }
    if on(Detector::Ipv6) {
        ipv6s(text, &mut found);
    }
    if on(Detector::Iban) {
        ibans(b, &mut found);
    }
    if on(Detector::Ipv4) {
        ipv4s(b, &mut found);
    }
    if on(Detector::Card) || on(Detector::Ssn) || on(Detector::Phone) {
        numbers(b, &mut found, &on);
    }
    resolve(found)
}

/// Scan and scrub in one go.
pub fn scrub(text: &str, enabled: &[Detector], method: Method, key: &[u8]) -> String {
    let findings = scan(text, enabled);
    apply(text, &findings, method, key)
}

/// Replace each finding in `text` by `method`.
pub fn apply(text: &str, findings: &[Finding], method: Method, key: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in findings {
        out.push_str(&text[at..f.start]);
        let value = &text[f.start..f.end];
        match method {
            Method::Remove => {}
            Method::Replace => {
                out.push('[');
                out.push_str(f.detector.as_str());
                out.push(']');
            }
            Method::Mask => out.extend(std::iter::repeat_n('*', value.chars().count())),
            Method::Hash => {
                out.push('[');
                out.push_str(f.detector.as_str());
                out.push(':');
                out.push_str(&keyed_hash(key, value));
                out.push(']');
            }
        }
        at = f.end;
    }
    out.push_str(&text[at..]);
    out
}

/// The first 12 hex digits of SHA-256(len(key) ‖ key ‖ value).
pub fn keyed_hash(key: &[u8], value: &str) -> String {
    let mut h = Sha256::new();
    h.update((key.len() as u64).to_be_bytes());
    h.update(key);
    h.update(value.as_bytes());
    h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// JSON keys whose values are secrets whatever they look like.
pub fn is_secret_key(key: &str) -> bool {
    let k: String = key
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    SECRET_KEYS.iter().any(|s| {
        let s: String = s.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
        k == s
    }) || k.ends_with("password")
        || k.ends_with("secret")
        || k.ends_with("apikey")
        || k.ends_with("token")
}

/// Scrub a JSON value in place: strings are scanned; the value of a key that names a secret is
/// scrubbed whole (as a `secret` finding).
pub fn scrub_json(value: &mut serde_json::Value, enabled: &[Detector], method: Method, key: &[u8]) {
    match value {
        serde_json::Value::String(s) => *s = scrub(s, enabled, method, key),
        serde_json::Value::Array(items) => {
            for v in items {
                scrub_json(v, enabled, method, key);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if enabled.contains(&Detector::SecretKey) && is_secret_key(k) && !v.is_null() {
                    let text = match &*v {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let whole = [Finding {
                        detector: Detector::SecretKey,
                        start: 0,
                        end: text.len(),
                    }];
                    *v = serde_json::Value::String(apply(&text, &whole, method, key));
                } else {
                    scrub_json(v, enabled, method, key);
                }
            }
        }
        _ => {}
    }
}

fn resolve(mut found: Vec<Finding>) -> Vec<Finding> {
    // Priority first, then the longer finding, then the earlier one.
    found.sort_by(|a, b| {
        a.detector
            .cmp(&b.detector)
            .then((b.end - b.start).cmp(&(a.end - a.start)))
            .then(a.start.cmp(&b.start))
    });
    // Kept findings never overlap, so among those starting before `f.end` the last one has the
    // greatest end: checking it alone decides the overlap (n log n, not n²).
    let mut kept: std::collections::BTreeMap<usize, Finding> = std::collections::BTreeMap::new();
    for f in found {
        let overlaps = kept
            .range(..f.end)
            .next_back()
            .is_some_and(|(_, k)| k.end > f.start);
        if f.start < f.end && !overlaps {
            kept.insert(f.start, f);
        }
    }
    kept.into_values().collect()
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c >= 0x80
}

fn is_word(c: u8) -> bool {
    is_alnum(c) || c == b'_'
}

fn before_ok(b: &[u8], i: usize) -> bool {
    i == 0 || !is_word(b[i - 1])
}

fn after_ok(b: &[u8], j: usize) -> bool {
    j >= b.len() || !is_word(b[j])
}

fn push(found: &mut Vec<Finding>, detector: Detector, start: usize, end: usize) {
    found.push(Finding {
        detector,
        start,
        end,
    });
}

// ---------------------------------------------------------------------------------------------
// URLs with credentials: scheme://user:password@host — the `user:password` part.

fn url_credentials(b: &[u8], found: &mut Vec<Finding>) {
    let mut i = 0;
    while let Some(p) = find(b, i, b"://") {
        let start = p + 3;
        let mut j = start;
        let mut colon = false;
        while j < b.len()
            && !matches!(
                b[j],
                b'@' | b'/' | b'?' | b'#' | b' ' | b'\t' | b'\n' | b'"' | b'\'' | b'<' | b'>'
            )
        {
            colon |= b[j] == b':';
            j += 1;
        }
        // The scheme must be a word, and the userinfo must hold a password.
        let scheme_ok = p > 0 && b[p - 1].is_ascii_alphanumeric();
        if scheme_ok
            && j < b.len()
            && b[j] == b'@'
            && colon
            && j > start + 1
            && j + 1 < b.len()
            && is_alnum(b[j + 1])
        {
            push(found, Detector::UrlCredentials, start, j);
        }
        i = start;
    }
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || from >= hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

// ---------------------------------------------------------------------------------------------
// Secrets by key name: password=…, "api_key": "…", secret: … — the value.

const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "pass",
    "passphrase",
    "secret",
    "client_secret",
    "api_key",
    "apikey",
    "api-key",
    "access_key",
    "access_token",
    "auth_token",
    "refresh_token",
    "token",
    "private_key",
    "secret_key",
    "aws_secret_access_key",
    "session_key",
    "credentials",
];

fn secrets(b: &[u8], found: &mut Vec<Finding>) {
    let lower: Vec<u8> = b.iter().map(|c| c.to_ascii_lowercase()).collect();
    let mut i = 0;
    while i < lower.len() {
        let c = lower[i];
        if !(c.is_ascii_alphabetic()) || !before_ok(b, i) {
            i += 1;
            continue;
        }
        // The key: a run of letters, digits, '_' and '-'.
        let mut j = i;
        while j < lower.len()
            && (lower[j].is_ascii_alphanumeric() || lower[j] == b'_' || lower[j] == b'-')
        {
            j += 1;
        }
        let key = &lower[i..j];
        let matches = SECRET_KEYS.iter().any(|k| k.as_bytes() == key)
            || key.ends_with(b"_password")
            || key.ends_with(b"_secret")
            || key.ends_with(b"_token")
            || key.ends_with(b"_api_key");
        if matches && let Some((vs, ve)) = secret_value(b, j) {
            push(found, Detector::SecretKey, vs, ve);
            i = ve;
            continue;
        }
        i = j.max(i + 1);
    }
}

/// After a key ending at `j`: optional closing quote, spaces, `=` or `:`, spaces, optional
/// quote, then the value.
fn secret_value(b: &[u8], mut j: usize) -> Option<(usize, usize)> {
    if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
        j += 1;
    }
    while j < b.len() && b[j] == b' ' {
        j += 1;
    }
    if j >= b.len() || !(b[j] == b'=' || b[j] == b':') {
        return None;
    }
    j += 1;
    if j < b.len() && b[j] == b'=' {
        return None; // `==` is a comparison, not an assignment
    }
    while j < b.len() && b[j] == b' ' {
        j += 1;
    }
    let quote = if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
        j += 1;
        Some(b[j - 1])
    } else {
        None
    };
    let start = j;
    // Values are bounded, so a hostile line of keys cannot make the scan quadratic.
    while j < b.len() && j - start < 4_096 {
        let c = b[j];
        let stop = match quote {
            Some(q) => c == q || c == b'\n',
            None => matches!(
                c,
                b' ' | b'\t'
                    | b'\n'
                    | b'\r'
                    | b'&'
                    | b','
                    | b';'
                    | b'"'
                    | b'\''
                    | b')'
                    | b'}'
                    | b']'
            ),
        };
        if stop {
            break;
        }
        j += 1;
    }
    // Trailing sentence punctuation is not part of an unquoted value.
    let mut end = j;
    if quote.is_none() {
        while end > start && matches!(b[end - 1], b'.' | b'!' | b'?') {
            end -= 1;
        }
    }
    let value = &b[start..end];
    // Placeholders, masks and references are not secrets: (hidden), <redacted>, ****, ${VAR}.
    let closer = |open: u8| match open {
        b'(' => Some(b')'),
        b'<' => Some(b'>'),
        b'[' => Some(b']'),
        b'{' => Some(b'}'),
        _ => None,
    };
    let wrapped = value
        .first()
        .and_then(|c| closer(*c))
        .is_some_and(|close| value.last() == Some(&close) || b.get(end) == Some(&close));
    let reference =
        value.starts_with(b"${") || value.starts_with(b"$(") || value.starts_with(b"%(");
    let placeholder = wrapped || reference || value.iter().all(|c| !c.is_ascii_alphanumeric());
    (value.len() >= 3 && !placeholder).then_some((start, end))
}

// ---------------------------------------------------------------------------------------------
// JWTs: three base64url segments, the first two JSON objects (`eyJ…`).

fn is_b64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

fn jwts(b: &[u8], found: &mut Vec<Finding>) {
    let mut i = 0;
    while let Some(p) = find(b, i, b"eyJ") {
        i = p + 3;
        if !before_ok(b, p) {
            // Inside a longer token: skip the rest of it rather than re-scanning it.
            while i < b.len() && is_b64url(b[i]) {
                i += 1;
            }
            continue;
        }
        let mut j = p;
        let mut segments = [0usize; 3];
        let mut ok = true;
        for (k, seg) in segments.iter_mut().enumerate() {
            let s = j;
            while j < b.len() && is_b64url(b[j]) {
                j += 1;
            }
            *seg = j - s;
            if k < 2 {
                if j < b.len() && b[j] == b'.' {
                    j += 1;
                } else {
                    ok = false;
                    break;
                }
            }
        }
        let payload_is_json = ok && b[p + segments[0] + 1..].starts_with(b"eyJ");
        if ok
            && payload_is_json
            && segments[0] >= 10
            && segments[1] >= 10
            && segments[2] >= 16
            && after_ok(b, j)
        {
            push(found, Detector::Jwt, p, j);
        }
        // Whatever was decided, this run of segments has been scanned.
        i = j.max(p + 3);
    }
}

// ---------------------------------------------------------------------------------------------
// Bearer tokens: `Bearer <token>` — the token.

fn bearer_tokens(b: &[u8], found: &mut Vec<Finding>) {
    let mut i = 0;
    while i + 7 < b.len() {
        if b[i..i + 6].eq_ignore_ascii_case(b"bearer")
            && before_ok(b, i)
            && (b[i + 6] == b' ' || b[i + 6] == b'\t')
        {
            let mut j = i + 6;
            while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                j += 1;
            }
            let start = j;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b"-._~+/=".contains(&b[j])) {
                j += 1;
            }
            let mut end = j;
            while end > start && b[end - 1] == b'.' {
                end -= 1;
            }
            let token = &b[start..end];
            let has_digit = token.iter().any(u8::is_ascii_digit);
            if token.len() >= 16 && has_digit {
                push(found, Detector::BearerToken, start, end);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Email addresses.

fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"._%+-'".contains(&c)
}

fn emails(b: &[u8], found: &mut Vec<Finding>) {
    for (at, _) in b.iter().enumerate().filter(|(_, c)| **c == b'@') {
        let mut l = at;
        while l > 0 && is_local(b[l - 1]) {
            l -= 1;
        }
        while l < at && (b[l] == b'.' || b[l] == b'\'') {
            l += 1;
        }
        let mut r = at + 1;
        while r < b.len() && (b[r].is_ascii_alphanumeric() || b[r] == b'.' || b[r] == b'-') {
            r += 1;
        }
        while r > at + 1 && (b[r - 1] == b'.' || b[r - 1] == b'-') {
            r -= 1;
        }
        let local = &b[l..at];
        let domain = &b[at + 1..r];
        if local.is_empty()
            || local.len() > 64
            || local.ends_with(b".")
            || local.windows(2).any(|w| w == b"..")
        {
            continue;
        }
        if l > 0 && (b[l - 1] == b'@' || b[l - 1] >= 0x80) {
            continue;
        }
        if !valid_domain(domain) || (r < b.len() && (b[r] == b'@' || b[r] >= 0x80)) {
            continue;
        }
        // user@host:path is an SSH or SCP remote, not a mailbox.
        if r + 1 < b.len() && b[r] == b':' && !b[r + 1].is_ascii_whitespace() {
            continue;
        }
        push(found, Detector::Email, l, r);
    }
}

fn valid_domain(d: &[u8]) -> bool {
    if d.len() < 4 || d.len() > 253 {
        return false;
    }
    let labels: Vec<&[u8]> = d.split(|c| *c == b'.').collect();
    if labels.len() < 2 {
        return false;
    }
    let tld = labels[labels.len() - 1];
    labels
        .iter()
        .all(|l| !l.is_empty() && l.len() <= 63 && l[0] != b'-' && l[l.len() - 1] != b'-')
        && tld.len() >= 2
        && tld.iter().all(u8::is_ascii_alphabetic)
}

// ---------------------------------------------------------------------------------------------
// MAC addresses: 01:23:45:67:89:ab, 01-23-45-67-89-AB, 0123.4567.89ab.

fn macs(b: &[u8], found: &mut Vec<Finding>) {
    let hex = |c: u8| c.is_ascii_hexdigit();
    let mut i = 0;
    while i + 14 <= b.len() {
        if !before_ok(b, i) || !hex(b[i]) {
            i += 1;
            continue;
        }
        if i + 17 <= b.len() {
            let s = b[i + 2];
            if (s == b':' || s == b'-')
                && (0..6).all(|g| hex(b[i + g * 3]) && hex(b[i + g * 3 + 1]))
                && (0..5).all(|g| b[i + g * 3 + 2] == s)
                && after_ok(b, i + 17)
                && !(i + 17 < b.len() && (b[i + 17] == s && i + 18 < b.len() && hex(b[i + 18])))
            {
                push(found, Detector::Mac, i, i + 17);
                i += 17;
                continue;
            }
        }
        if (0..3).all(|g| (0..4).all(|k| hex(b[i + g * 5 + k])))
            && b[i + 4] == b'.'
            && b[i + 9] == b'.'
            && after_ok(b, i + 14)
            && !(i + 15 < b.len() && b[i + 14] == b'.' && b[i + 15].is_ascii_hexdigit())
            && b[i..i + 14].iter().any(|c| c.is_ascii_alphabetic())
        {
            push(found, Detector::Mac, i, i + 14);
            i += 14;
            continue;
        }
        i += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// IPv6 addresses, validated by the standard library's parser.

fn ipv6s(text: &str, found: &mut Vec<Finding>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if !(c.is_ascii_hexdigit() || c == b':') || !before_ok(b, i) || (i > 0 && b[i - 1] == b':')
        {
            i += 1;
            continue;
        }
        let mut j = i;
        let mut colons = 0;
        while j < b.len() && (b[j].is_ascii_hexdigit() || b[j] == b':' || b[j] == b'.') {
            colons += usize::from(b[j] == b':');
            j += 1;
        }
        let mut end = j;
        while end > i
            && (b[end - 1] == b'.' || (b[end - 1] == b':' && !(end >= 2 && b[end - 2] == b':')))
        {
            end -= 1;
        }
        if colons >= 2 && after_ok(b, j) && j - i >= 3 {
            let candidate = &text[i..end];
            let has_hex_letter_or_double = candidate.contains("::")
                || candidate.split(':').filter(|g| !g.is_empty()).count() == 8;
            if has_hex_letter_or_double && candidate.parse::<std::net::Ipv6Addr>().is_ok() {
                push(found, Detector::Ipv6, i, end);
            }
        }
        i = j.max(i + 1);
    }
}

// ---------------------------------------------------------------------------------------------
// IPv4 addresses: four decimal octets 0–255 without leading zeros; a port or prefix may follow.

fn ipv4s(b: &[u8], found: &mut Vec<Finding>) {
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() || (i > 0 && (is_word(b[i - 1]) || b[i - 1] == b'.')) {
            i += 1;
            continue;
        }
        let mut j = i;
        let mut octets = 0;
        let mut ok = true;
        loop {
            let s = j;
            while j < b.len() && b[j].is_ascii_digit() && j - s < 4 {
                j += 1;
            }
            let octet = &b[s..j];
            let value = octet.iter().fold(0u32, |a, c| a * 10 + u32::from(c - b'0'));
            if octet.is_empty()
                || octet.len() > 3
                || value > 255
                || (octet.len() > 1 && octet[0] == b'0')
            {
                ok = false;
                break;
            }
            octets += 1;
            if octets == 4 || j >= b.len() || b[j] != b'.' {
                break;
            }
            j += 1;
        }
        let clean_end = j >= b.len()
            || !(is_word(b[j]) || (b[j] == b'.' && j + 1 < b.len() && b[j + 1].is_ascii_digit()));
        if ok && octets == 4 && clean_end {
            push(found, Detector::Ipv4, i, j);
            i = j;
        } else {
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// IBANs: country, check digits, BBAN of the country's length; mod-97 must be 1.

const IBAN_LENGTHS: &[(&[u8; 2], usize)] = &[
    (b"AD", 24),
    (b"AE", 23),
    (b"AT", 20),
    (b"BA", 20),
    (b"BE", 16),
    (b"BG", 22),
    (b"BH", 22),
    (b"BR", 29),
    (b"CH", 21),
    (b"CY", 28),
    (b"CZ", 24),
    (b"DE", 22),
    (b"DK", 18),
    (b"EE", 20),
    (b"ES", 24),
    (b"FI", 18),
    (b"FO", 18),
    (b"FR", 27),
    (b"GB", 22),
    (b"GI", 23),
    (b"GL", 18),
    (b"GR", 27),
    (b"HR", 21),
    (b"HU", 28),
    (b"IE", 22),
    (b"IL", 23),
    (b"IS", 26),
    (b"IT", 27),
    (b"KW", 30),
    (b"KZ", 20),
    (b"LB", 28),
    (b"LI", 21),
    (b"LT", 20),
    (b"LU", 20),
    (b"LV", 21),
    (b"MC", 27),
    (b"ME", 22),
    (b"MK", 19),
    (b"MT", 31),
    (b"MU", 30),
    (b"NL", 18),
    (b"NO", 15),
    (b"PK", 24),
    (b"PL", 28),
    (b"PT", 25),
    (b"QA", 29),
    (b"RO", 24),
    (b"RS", 22),
    (b"SA", 24),
    (b"SE", 24),
    (b"SI", 19),
    (b"SK", 24),
    (b"SM", 27),
    (b"TN", 24),
    (b"TR", 26),
    (b"UA", 29),
];

fn ibans(b: &[u8], found: &mut Vec<Finding>) {
    let mut i = 0;
    while i + 15 <= b.len() {
        let upper = |c: u8| c.is_ascii_uppercase();
        let starts = upper(b[i])
            && upper(b[i + 1])
            && b[i + 2].is_ascii_digit()
            && b[i + 3].is_ascii_digit()
            && before_ok(b, i);
        if !starts {
            i += 1;
            continue;
        }
        let Some(&(_, len)) = IBAN_LENGTHS.iter().find(|(cc, _)| cc[..] == b[i..i + 2]) else {
            i += 1;
            continue;
        };
        // Collect `len` characters, allowing single spaces between groups of four.
        let mut chars = Vec::with_capacity(len);
        let mut j = i;
        while j < b.len() && chars.len() < len {
            let c = b[j];
            if c.is_ascii_digit() || upper(c) {
                chars.push(c);
                j += 1;
            } else if c == b' '
                && chars.len() % 4 == 0
                && j + 1 < b.len()
                && b[j + 1].is_ascii_alphanumeric()
            {
                j += 1;
            } else {
                break;
            }
        }
        if chars.len() == len && after_ok(b, j) && mod97(&chars) == 1 {
            push(found, Detector::Iban, i, j);
            i = j;
        } else {
            i += 1;
        }
    }
}

fn mod97(iban: &[u8]) -> u32 {
    let rotated = iban[4..].iter().chain(&iban[..4]);
    let mut rem = 0u32;
    for &c in rotated {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem
}

// ---------------------------------------------------------------------------------------------
// Numbers: payment cards, SSNs, IPv4 addresses and phone numbers share their first step, a run
// of digits and separators.

fn numbers(b: &[u8], found: &mut Vec<Finding>, on: &dyn Fn(Detector) -> bool) {
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let starts = c.is_ascii_digit()
            || ((c == b'+' || c == b'(') && i + 1 < b.len() && b[i + 1].is_ascii_digit());
        if !starts
            || !(i == 0
                || !(is_word(b[i - 1])
                    || b[i - 1] == b'.'
                    || b[i - 1] == b'-'
                    || b[i - 1] == b'/'
                    || b[i - 1] == b'+'))
        {
            i += 1;
            continue;
        }
        // The run: digits, with single separators (space, '-', '.', '/') and parentheses.
        let mut j = i;
        let mut open = false;
        while j < b.len() {
            let d = b[j];
            let after_sep = j == i || matches!(b[j - 1], b' ' | b'-' | b'.' | b'+');
            if d.is_ascii_digit() || (d == b'+' && j == i) {
                j += 1;
            } else if d == b'('
                && !open
                && after_sep
                && j + 1 < b.len()
                && b[j + 1].is_ascii_digit()
            {
                open = true;
                j += 1;
            } else if d == b')' && open && b[j - 1].is_ascii_digit() {
                open = false;
                j += 1;
            } else if matches!(d, b' ' | b'-' | b'.' | b'/')
                && j + 1 < b.len()
                && (b[j + 1].is_ascii_digit() || b[j + 1] == b'(')
                && j > i
                && b[j - 1] != b' '
            {
                j += 1;
            } else {
                break;
            }
        }
        let run = &b[i..j];
        let next = if j < b.len() { b[j] } else { b' ' };
        let followed_by_digit = j + 1 < b.len() && b[j + 1].is_ascii_digit();
        let continues = is_word(next)
            || (matches!(next, b'.' | b':' | b',') && followed_by_digit)
            || (next == b'-' && j + 1 < b.len() && is_word(b[j + 1]));
        let ends_cleanly = !continues;
        if ends_cleanly {
            // The tail of an alphanumeric code (an IBAN with a typo, a part number) is not a
            // phone number: look at the token before a single space.
            let code_tail = code_tail(b, i);
            let not_phone = |d: Detector| d != Detector::Phone && on(d);
            let kind = if code_tail {
                classify(run, &not_phone)
            } else {
                classify(run, on)
            };
            if let Some(d) = kind {
                push(found, d, i, j);
            }
        }
        i = j.max(i + 1);
    }
}

/// Whether the digits at `i` continue an alphanumeric code: one of the (up to two) tokens just
/// before, each followed by a single space, mixes letters and digits (`BE46 0232 …`,
/// `NL15 AQFV 6517 …`, part `X7 123 456`).
fn code_tail(b: &[u8], i: usize) -> bool {
    let mut end = i;
    for _ in 0..2 {
        if end < 2 || b[end - 1] != b' ' {
            return false;
        }
        let mut k = end - 1;
        while k > 0 && b[k - 1].is_ascii_alphanumeric() {
            k -= 1;
        }
        let token = &b[k..end - 1];
        if token.is_empty() {
            return false;
        }
        if token.iter().any(u8::is_ascii_digit) && token.iter().any(u8::is_ascii_alphabetic) {
            return true;
        }
        end = k;
    }
    false
}

fn classify(run: &[u8], on: &dyn Fn(Detector) -> bool) -> Option<Detector> {
    let digits: Vec<u8> = run
        .iter()
        .filter(|c| c.is_ascii_digit())
        .map(|c| c - b'0')
        .collect();
    let seps: Vec<u8> = run
        .iter()
        .copied()
        .filter(|c| matches!(c, b' ' | b'-' | b'.' | b'/'))
        .collect();
    let groups: Vec<usize> = run
        .split(|c| matches!(c, b' ' | b'-' | b'.' | b'/' | b'(' | b')'))
        .filter(|g| !g.is_empty())
        .map(|g| g.iter().filter(|c| c.is_ascii_digit()).count())
        .collect();
    let parens = run.contains(&b'(');
    let plus = run[0] == b'+';
    let same_sep = seps.windows(2).all(|w| w[0] == w[1]);

    if !plus && !parens && seps.len() == 3 && seps.iter().all(|s| *s == b'.') && groups.len() == 4 {
        return None; // a dotted quad: an IPv4 address (its own detector) or a version
    }
    if seps.contains(&b'/')
        || (seps.contains(&b'.') && !plus && !parens && groups.len() <= 3 && digits.len() < 9)
    {
        return None; // dates, fractions, versions, prices
    }
    if on(Detector::Ssn)
        && !plus
        && !parens
        && groups == [3, 2, 4]
        && same_sep
        && (seps[0] == b'-' || seps[0] == b' ')
        && ssn_valid(&digits)
    {
        return Some(Detector::Ssn);
    }
    if on(Detector::Card)
        && !plus
        && !parens
        && (13..=19).contains(&digits.len())
        && same_sep
        && card_groups(&groups)
        && luhn(&digits)
        && card_issuer(&digits)
    {
        return Some(Detector::Card);
    }
    if on(Detector::Phone) && phone_like(run, &digits, &groups, plus, parens, &seps) {
        return Some(Detector::Phone);
    }
    None
}

fn ssn_valid(d: &[u8]) -> bool {
    let area = u32::from(d[0]) * 100 + u32::from(d[1]) * 10 + u32::from(d[2]);
    let group = d[3] * 10 + d[4];
    let serial = d[5..].iter().fold(0u32, |a, x| a * 10 + u32::from(*x));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

fn card_groups(groups: &[usize]) -> bool {
    groups.len() == 1
        || groups.iter().all(|g| *g == 4)
        || groups == [4, 6, 5]
        || groups == [4, 6, 4]
        || (groups.len() == 5 && groups[..4].iter().all(|g| *g == 4))
}

fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn card_issuer(d: &[u8]) -> bool {
    let prefix = |n: usize| d[..n].iter().fold(0u32, |a, x| a * 10 + u32::from(*x));
    let len = d.len();
    match d[0] {
        4 => matches!(len, 13 | 16 | 19),                     // Visa
        5 => (51..=55).contains(&prefix(2)) && len == 16,     // Mastercard
        2 => (2221..=2720).contains(&prefix(4)) && len == 16, // Mastercard 2-series
        3 => {
            (matches!(prefix(2), 34 | 37) && len == 15)                               // Amex
                || ((3528..=3589).contains(&prefix(4)) && (16..=19).contains(&len))  // JCB
                || (((300..=305).contains(&prefix(3)) || matches!(prefix(2), 36 | 38 | 39)) && (14..=19).contains(&len)) // Diners
        }
        6 => {
            (prefix(4) == 6011
                || prefix(2) == 65
                || (644..=649).contains(&prefix(3))
                || prefix(2) == 62)
                && (16..=19).contains(&len)
        }
        _ => false,
    }
}

fn phone_like(
    run: &[u8],
    digits: &[u8],
    groups: &[usize],
    plus: bool,
    parens: bool,
    seps: &[u8],
) -> bool {
    let n = digits.len();
    if plus {
        // E.164: a country code and at most 15 digits in all.
        return (8..=15).contains(&n) && groups.iter().all(|g| *g <= 12) && digits[0] != 0;
    }
    if !(7..=13).contains(&n) {
        return false;
    }
    if seps.is_empty() && !parens {
        return false; // a bare run of digits is an id, an order number, an amount
    }
    if parens {
        // (555) 123-4567, (030) 1234567, (0)20 7946 0958
        let open = run.iter().position(|c| *c == b'(').unwrap_or(0);
        let close = run.iter().position(|c| *c == b')');
        let Some(close) = close else { return false };
        let inside = close.saturating_sub(open + 1);
        if !(1..=5).contains(&inside) || run.iter().filter(|c| **c == b'(').count() != 1 {
            return false;
        }
    }
    let same_sep =
        seps.windows(2).all(|w| w[0] == w[1]) || seps.iter().all(|s| *s == b' ' || *s == b'-');
    if !same_sep {
        return false;
    }
    // A dotted phone number has at least three groups (555.123.4567); fewer is a decimal.
    if seps.contains(&b'.') && groups.len() < 3 {
        return false;
    }
    // 1 000 000 and 45 458 336: a number with thousands separators.
    if !parens && groups.len() >= 2 && groups[0] <= 2 && groups[1..].iter().all(|g| *g == 3) {
        return false;
    }
    // Dates (2024-01-15, 15.01.2024) and the SSN shape (123-45-6789) are not phone numbers.
    if groups.starts_with(&[4, 2, 2]) || groups.starts_with(&[2, 2, 4]) || groups == [3, 2, 4] {
        return false;
    }
    if groups.len() > 6 || groups.iter().any(|g| *g > 8) {
        return false;
    }
    // A single-digit group only as a trunk or country prefix, or a UK-style (0) group.
    let singles = groups.iter().filter(|g| **g == 1).count();
    if singles > 1 || (singles == 1 && groups[0] != 1) {
        return false;
    }
    // The last group carries the subscriber number.
    *groups.last().unwrap_or(&0) >= 2 && (groups.len() >= 2 || parens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(Detector, &str)> {
        scan(text, Detector::ALL)
            .into_iter()
            .map(|f| (f.detector, &text[f.start..f.end]))
            .collect()
    }

    #[test]
    fn each_detector_finds_its_kind() {
        use Detector::*;
        let cases = [
            ("mail ada@example.com now", Email, "ada@example.com"),
            ("card 4111 1111 1111 1111.", Card, "4111 1111 1111 1111"),
            (
                "iban DE89 3704 0044 0532 0130 00 ok",
                Iban,
                "DE89 3704 0044 0532 0130 00",
            ),
            ("from 192.168.1.20, then", Ipv4, "192.168.1.20"),
            ("listen 10.0.0.1:8080", Ipv4, "10.0.0.1"),
            ("route 172.16.0.0/12", Ipv4, "172.16.0.0"),
            ("tel: 0049 30 1234567", Phone, "0049 30 1234567"),
            ("Tel.: +43 1 234 56 78", Phone, "+43 1 234 56 78"),
            ("amex 3782 822463 10005", Card, "3782 822463 10005"),
            (
                "v6 2001:db8::8a2e:370:7334 here",
                Ipv6,
                "2001:db8::8a2e:370:7334",
            ),
            ("ssn 123-45-6789", Ssn, "123-45-6789"),
            ("call +1 (555) 123-4567", Phone, "+1 (555) 123-4567"),
            ("call 020 7946 0958", Phone, "020 7946 0958"),
            ("mac 00:1A:2B:3C:4D:5E", Mac, "00:1A:2B:3C:4D:5E"),
            (
                "Authorization: Bearer abcDEF123456ghiJKL789",
                BearerToken,
                "abcDEF123456ghiJKL789",
            ),
            ("password=hunter22 next", SecretKey, "hunter22"),
            (
                "\"api_key\": \"sk_live_abc123\"",
                SecretKey,
                "sk_live_abc123",
            ),
            (
                "postgres://admin:s3cret@db.internal/app",
                UrlCredentials,
                "admin:s3cret",
            ),
        ];
        for (text, detector, value) in cases {
            assert_eq!(found(text), vec![(detector, value)], "{text}");
        }
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(found(&format!("token {jwt} end")), vec![(Jwt, jwt)]);
    }

    #[test]
    fn look_alikes_are_not_findings() {
        for text in [
            "order 4111111111111112 shipped", // fails Luhn
            "id 1234567890123456",            // no issuer, fails Luhn
            "version 1.2.3 and v10.4.1.2",
            "at 2024-01-15 10:30:45Z",
            "uuid 550e8400-e29b-41d4-a716-446655440000",
            "sha 3f786850e387550fdab836ed7e6dc881de23001b",
            "ip 300.1.2.3 is not valid",
            "ssn 000-12-3456 and 666-12-3456",
            "iban DE89 3704 0044 0532 0130 01", // bad checksum
            "reset your password tomorrow",
            "std::vec::Vec and 16:9",
            "total 1234567 units",
            "https://example.com/a?x=b@c",
        ] {
            assert_eq!(found(text), vec![], "{text}");
        }
    }

    #[test]
    fn hostile_lines_are_scanned_in_linear_time() {
        let started = std::time::Instant::now();
        for line in [
            "eyJ-".repeat(250_000),
            "a@bb.cc ".repeat(120_000),
            "pass=${".repeat(140_000),
            "1 2 3 4 ".repeat(120_000),
            "ab:".repeat(300_000),
        ] {
            let _ = scan(&line, Detector::ALL);
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn methods_scrub_as_named() {
        let text = "mail ada@example.com or bob@example.org";
        assert_eq!(
            scrub(text, &[Detector::Email], Method::Replace, b"k"),
            "mail [email] or [email]"
        );
        assert_eq!(
            scrub(text, &[Detector::Email], Method::Remove, b"k"),
            "mail  or "
        );
        assert_eq!(
            scrub(
                "x é@é ada@example.com",
                &[Detector::Email],
                Method::Mask,
                b"k"
            ),
            "x é@é ***************"
        );
        let a = scrub(text, &[Detector::Email], Method::Hash, b"tenant-a");
        let b = scrub(text, &[Detector::Email], Method::Hash, b"tenant-b");
        assert_ne!(a, b, "hashes are keyed per tenant");
        assert_eq!(
            a,
            scrub(text, &[Detector::Email], Method::Hash, b"tenant-a"),
            "and stable"
        );
        assert!(a.starts_with("mail [email:"));
    }

    #[test]
    fn json_keys_that_name_secrets_scrub_their_values() {
        let mut v = serde_json::json!({
            "user": {"email": "ada@example.com", "password": "hunter2", "db_password": 12345},
            "notes": ["call +44 20 7946 0958"],
            "clientSecret": "x",
        });
        scrub_json(&mut v, Detector::ALL, Method::Replace, b"k");
        assert_eq!(
            v,
            serde_json::json!({
                "user": {"email": "[email]", "password": "[secret]", "db_password": "[secret]"},
                "notes": ["call [phone]"],
                "clientSecret": "[secret]",
            })
        );
    }
}
