//! The PII engine (SPEC §8): detectors that find personal data and secrets in text, and methods
//! that scrub what they find. Pure: no IO, no clock; the hash key comes in as an argument.
//!
//! Text is first folded (`normalize.rs`): full-width forms, Unicode spaces and dashes, zero-width
//! characters, curly quotes and other scripts' digits become the ASCII the detectors know, with
//! a map back to the original offsets, so every finding's byte range covers whole characters of
//! the text as given. Validation keeps false positives down: Luhn and issuer ranges for cards,
//! mod-97 and country lengths for IBANs, octet ranges for IPv4, the SSA's rules for SSNs,
//! libphonenumber's metadata for phone numbers (`phone.rs`, ADR 019), and token shapes and
//! entropy for secrets (`tokens.rs`).

mod normalize;
mod phone;
mod tokens;

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

/// A region of libphonenumber's metadata (ISO 3166 code): where a phone number written without
/// a country code is looked up first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region(usize);

impl FromStr for Region {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        phone::region(s).map(Region).ok_or_else(|| {
            format!("unknown region {s:?} (expected an ISO 3166 code such as DE or US)")
        })
    }
}

/// The engine's name and version, as export badges name it.
pub const ENGINE: &str = "tenantry-pii/2";

/// What a column's *name* says it holds, when that is personal data the text detectors cannot
/// see in its values: people's names, postal addresses, dates of birth (`None` otherwise). An
/// export that writes such a column without a column rule does not get PASS.
pub fn personal_column(name: &str) -> Option<&'static str> {
    // Words of the name: `CustomerLastName`, `customer_last_name`, `customer-last name` alike.
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if !c.is_alphanumeric() {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            previous_lower = false;
            continue;
        }
        if c.is_uppercase() && previous_lower && !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
        previous_lower = c.is_lowercase();
        word.extend(c.to_lowercase());
    }
    if !word.is_empty() {
        words.push(word);
    }
    let has = |w: &[&str]| words.iter().any(|x| w.contains(&x.as_str()));
    let joined = words.concat();
    // Names of things, not of people.
    let thing = [
        "file",
        "company",
        "product",
        "dataset",
        "table",
        "host",
        "domain",
        "column",
        "brand",
        "city",
        "country",
        "street",
        "region",
        "state",
        "file",
        "key",
        "event",
        "field",
        "app",
        "project",
        "team",
        "org",
        "organization",
        "organisation",
        "business",
        "shop",
        "store",
        "item",
        "service",
        "device",
        "server",
        "queue",
        "bucket",
        "type",
        "kind",
        "display",
    ];
    if has(&["birth", "dob", "birthday", "birthdate", "born"]) || joined.contains("dateofbirth") {
        return Some("date_of_birth");
    }
    let not_postal = [
        "email", "mail", "ip", "mac", "web", "url", "wallet", "memory", "bitcoin",
    ];
    if (has(&[
        "address", "addr", "street", "postcode", "postal", "zip", "zipcode",
    ]) || joined.contains("addressline"))
        && !has(&not_postal)
    {
        return Some("address");
    }
    if (has(&[
        "name",
        "names",
        "surname",
        "firstname",
        "lastname",
        "fullname",
        "forename",
        "givenname",
        "middlename",
        "maidenname",
        "nachname",
        "vorname",
        "nom",
        "prenom",
    ]) || joined.ends_with("lastname")
        || joined.ends_with("firstname"))
        && !has(&thing)
    {
        return Some("name");
    }
    None
}

/// How the engine reads text. The default looks national phone numbers up in a list of common
/// regions; a default region is tried first and makes its numbers' formats count most.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    pub default_region: Option<Region>,
}

/// Find every enabled detector's findings, without overlaps (higher priority, then longer, wins),
/// in text order.
pub fn scan(text: &str, enabled: &[Detector]) -> Vec<Finding> {
    scan_with(text, enabled, &Settings::default())
}

/// [`scan`] with explicit settings.
pub fn scan_with(text: &str, enabled: &[Detector], settings: &Settings) -> Vec<Finding> {
    let folded = normalize::Folded::new(text);
    let b: &[u8] = &folded.bytes;
    let mut found = Vec::new();
    let mut random = Vec::new();
    // The word-start list is reused between calls on a thread: one allocation less per line.
    thread_local! {
        static STARTS: std::cell::Cell<Vec<usize>> = const { std::cell::Cell::new(Vec::new()) };
    }
    let Layout {
        seen,
        starts,
        long_runs,
    } = Layout::of(b, STARTS.take());
    let digit = seen[usize::from(b'0')..=usize::from(b'9')]
        .iter()
        .any(|x| *x);
    let on = |d: Detector| enabled.contains(&d);
    if on(Detector::UrlCredentials) && seen[usize::from(b':')] {
        url_credentials(b, &mut found);
    }
    if on(Detector::SecretKey) {
        if seen[usize::from(b'=')] || seen[usize::from(b':')] {
            secrets(b, &mut found);
        }
        tokens::tokens(b, &starts, &long_runs, &mut found, &mut random);
    }
    if on(Detector::Jwt) && seen[usize::from(b'.')] {
        jwts(b, &mut found);
    }
    if on(Detector::BearerToken) {
        bearer_tokens(b, &mut found);
    }
    if on(Detector::Email) && seen[usize::from(b'@')] {
        emails(b, &mut found);
    }
    if on(Detector::Mac)
        && (seen[usize::from(b':')] || seen[usize::from(b'-')] || seen[usize::from(b'.')])
    {
        macs(b, &starts, &mut found);
    }
    if on(Detector::Ipv6) && seen[usize::from(b':')] {
        ipv6s(b, &mut found);
    }
    if on(Detector::Iban) && digit {
        ibans(b, &starts, &mut found);
    }
    if on(Detector::Ipv4) && digit && seen[usize::from(b'.')] {
        ipv4s(b, &starts, &mut found);
    }
    if (on(Detector::Card) || on(Detector::Ssn) || on(Detector::Phone)) && digit {
        numbers(b, &starts, &mut found, &on, settings);
    }
    let mut kept = resolve(found);
    // Random-looking tokens only where nothing else was found.
    if !random.is_empty() {
        // `kept` is sorted and free of overlaps: the last one starting before `e` ends is the
        // only one that can overlap it.
        random.retain(|e: &Finding| {
            let n = kept.partition_point(|k| k.start < e.end);
            n == 0 || kept[n - 1].end <= e.start
        });
        kept.extend(random);
        kept.sort_by_key(|f| f.start);
    }
    for f in &mut kept {
        (f.start, f.end) = folded.original(f.start, f.end);
    }
    // A huge text's list is not kept around.
    if starts.capacity() <= 1 << 16 {
        STARTS.set(starts);
    }
    kept
}

/// Scan and scrub in one go.
pub fn scrub(text: &str, enabled: &[Detector], method: Method, key: &[u8]) -> String {
    scrub_with(text, enabled, method, key, &Settings::default())
}

/// [`scrub`] with explicit settings.
pub fn scrub_with(
    text: &str,
    enabled: &[Detector],
    method: Method,
    key: &[u8],
    settings: &Settings,
) -> String {
    let findings = scan_with(text, enabled, settings);
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
    secret_name(key.as_bytes())
}

/// A key naming a secret, compared on its letters and digits only (`DB_PASSWORD`, `x-api-key`,
/// `clientSecret`, `AccountKey`).
fn secret_name(key: &[u8]) -> bool {
    let mut k = [0u8; 64];
    let mut n = 0;
    for c in key.iter().filter(|c| c.is_ascii_alphanumeric()) {
        if n == k.len() {
            return false;
        }
        k[n] = c.to_ascii_lowercase();
        n += 1;
    }
    let k = &k[..n];
    SECRET_KEYS.iter().any(|s| {
        let mut it = s.bytes().filter(u8::is_ascii_alphanumeric);
        k.iter().all(|c| it.next() == Some(*c)) && it.next().is_none()
    }) || [
        &b"password"[..],
        b"passwd",
        b"secret",
        b"apikey",
        b"token",
        b"privatekey",
        b"secretkey",
        b"accesskey",
        b"accountkey",
    ]
    .iter()
    .any(|suffix| k.ends_with(suffix))
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
    // Most texts have a few findings that do not overlap: then there is nothing to decide.
    found.sort_by_key(|f| (f.start, f.end));
    if found
        .windows(2)
        .all(|w| w[0].end <= w[1].start && w[0].start < w[0].end)
        && found.iter().all(|f| f.start < f.end)
    {
        return found;
    }
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

/// Byte classes, looked up rather than computed: these predicates run on every byte of every
/// pass.
const ALNUM: u8 = 1;
const WORD: u8 = 2;
/// A character of base64 or base64url.
const TOKEN: u8 = 4;
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphanumeric() || b >= 0x80 {
            t[c] |= ALNUM | WORD;
        }
        if b == b'_' {
            t[c] |= WORD;
        }
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+' | b'/') {
            t[c] |= TOKEN;
        }
        c += 1;
    }
    t
};

#[inline]
fn is_alnum(c: u8) -> bool {
    CLASS[usize::from(c)] & ALNUM != 0
}

#[inline]
fn is_word(c: u8) -> bool {
    CLASS[usize::from(c)] & WORD != 0
}

/// What one pass over the folded bytes learns for all detectors.
struct Layout {
    /// Which bytes occur at all: a detector whose every match needs a byte the text lacks is
    /// skipped (prose has no `@`, most lines no `:`, many no digit).
    seen: [bool; 256],
    /// Where words start (a letter, digit or folded non-ASCII character after a non-word byte):
    /// most detectors only ever match there, so they walk this list instead of every byte.
    starts: Vec<usize>,
    /// Runs of base64 characters 24 bytes or longer: the only places a random token can be.
    long_runs: Vec<(usize, usize)>,
}

impl Layout {
    fn of(b: &[u8], mut starts: Vec<usize>) -> Self {
        let mut seen = [false; 256];
        starts.clear();
        let mut long_runs = Vec::new();
        let mut prev_word = false;
        let mut run = 0;
        for (i, &c) in b.iter().enumerate() {
            seen[usize::from(c)] = true;
            let class = CLASS[usize::from(c)];
            if class & ALNUM != 0 && !prev_word {
                starts.push(i);
            }
            prev_word = class & WORD != 0;
            if class & TOKEN == 0 {
                if i - run >= 24 {
                    long_runs.push((run, i));
                }
                run = i + 1;
            }
        }
        if b.len() >= run + 24 {
            long_runs.push((run, b.len()));
        }
        Self {
            seen,
            starts,
            long_runs,
        }
    }
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
    while let Some(p) = find_with(finder!(b"://"), b, i) {
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

/// A substring searcher built once per call site: `memmem` looks for the needle's rarest byte
/// with SIMD, which matters when the needle starts with a common one (` -u `, `--user `).
macro_rules! finder {
    ($needle:expr) => {{
        static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
            std::sync::OnceLock::new();
        FINDER.get_or_init(|| memchr::memmem::Finder::new($needle))
    }};
}
use finder;

/// The next `needle` at or after `from`, with a searcher from [`finder!`].
fn find_with(f: &memchr::memmem::Finder<'_>, hay: &[u8], from: usize) -> Option<usize> {
    (from < hay.len())
        .then(|| f.find(&hay[from..]).map(|p| p + from))
        .flatten()
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
    "sessionid",
    "session_secret",
    "sharedaccesskey",
];

fn secrets(b: &[u8], found: &mut Vec<Finding>) {
    // Every match has a `=` or `:` after its key: go from one to the next and look back for the
    // key (letters, digits, `_`, `-`, starting with a letter at a word boundary), skipping a
    // closing quote and spaces.
    let mut done = 0;
    for k in memchr::memchr2_iter(b'=', b':', b) {
        if k < done {
            continue; // inside the value just found
        }
        let mut j = k;
        while j > 0 && k - j < 3 && matches!(b[j - 1], b'"' | b'\'' | b' ') {
            j -= 1;
        }
        let mut i = j;
        while i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'-') {
            i -= 1;
        }
        // The key runs from its first letter: a key that starts with `-` or `_` is one without them.
        while i < j && !b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        if i == j || !b[i].is_ascii_alphabetic() || !before_ok(b, i) {
            continue;
        }
        if secret_name(&b[i..j])
            && let Some((vs, ve)) = secret_value(b, j)
        {
            push(found, Detector::SecretKey, vs, ve);
            done = ve;
        }
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

/// The next `eyJ` (base64 of `{"`), found by its rarer `J`.
fn find_ey_j(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from + 2;
    while i < b.len() {
        let j = i + memchr::memchr(b'J', &b[i..])?;
        if b[j - 2] == b'e' && b[j - 1] == b'y' {
            return Some(j - 2);
        }
        i = j + 1;
    }
    None
}

fn jwts(b: &[u8], found: &mut Vec<Finding>) {
    let mut i = 0;
    while let Some(p) = find_ey_j(b, i) {
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
        let Some(p) = tokens::find_ci(b, i, b"bearer") else {
            return;
        };
        i = p;
        if i + 7 < b.len() && before_ok(b, i) && (b[i + 6] == b' ' || b[i + 6] == b'\t') {
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
    for at in memchr::memchr_iter(b'@', b) {
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
    let mut labels = 0;
    let mut tld: &[u8] = &[];
    for l in d.split(|c| *c == b'.') {
        if l.is_empty() || l.len() > 63 || l[0] == b'-' || l[l.len() - 1] == b'-' {
            return false;
        }
        labels += 1;
        tld = l;
    }
    labels >= 2 && tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic)
}

// ---------------------------------------------------------------------------------------------
// MAC addresses: 01:23:45:67:89:ab, 01-23-45-67-89-AB, 0123.4567.89ab.

fn macs(b: &[u8], starts: &[usize], found: &mut Vec<Finding>) {
    let hex = |c: u8| c.is_ascii_hexdigit();
    let mut done = 0;
    for &i in starts {
        // Every form has a separator at offset 2 (`01:23`, `01-23`) or 4 (`0123.4567`).
        if i < done
            || i + 14 > b.len()
            || !(matches!(b[i + 2], b':' | b'-') || b[i + 4] == b'.')
            || !hex(b[i])
        {
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
                done = i + 17;
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
            done = i + 14;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// IPv6 addresses, validated by the standard library's parser.

fn ipv6s(b: &[u8], found: &mut Vec<Finding>) {
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        // After a colon only when that colon ends a label (`addr:fe80::1`), not inside an address.
        let after_colon = i > 0
            && b[i - 1] == b':'
            && (i < 2 || b[i - 2].is_ascii_hexdigit() || b[i - 2] == b':');
        // An address starts with a hex digit, or with `::`; a lone colon is a label's.
        let colon_start = c == b':' && b.get(i + 1) == Some(&b':');
        if !(c.is_ascii_hexdigit() || colon_start) || !before_ok(b, i) || after_colon {
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
            let candidate = std::str::from_utf8(&b[i..end]).unwrap_or("");
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

fn ipv4s(b: &[u8], starts: &[usize], found: &mut Vec<Finding>) {
    let mut done = 0;
    for &i in starts {
        if i < done || !b[i].is_ascii_digit() || (i > 0 && b[i - 1] == b'.') {
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
            done = j;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// IBANs: country, check digits, BBAN of the country's length (the SWIFT registry, partial
// members included); mod-97 must be 1. Lower case and grouped forms count.

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
    (b"AL", 28),
    (b"AZ", 28),
    (b"BY", 28),
    (b"CR", 22),
    (b"DO", 28),
    (b"EG", 29),
    (b"GE", 22),
    (b"GT", 28),
    (b"IQ", 23),
    (b"JO", 30),
    (b"LC", 32),
    (b"LY", 25),
    (b"MD", 24),
    (b"PS", 29),
    (b"SC", 31),
    (b"ST", 25),
    (b"SV", 28),
    (b"TL", 23),
    (b"VA", 22),
    (b"VG", 24),
    (b"XK", 20),
    (b"BI", 27),
    (b"DJ", 27),
    (b"SD", 18),
    (b"RU", 33),
    (b"SO", 23),
    (b"NI", 28),
    (b"MN", 20),
    (b"FK", 18),
    (b"OM", 23),
    (b"YE", 30),
    (b"HN", 28),
];

fn ibans(b: &[u8], starts: &[usize], found: &mut Vec<Finding>) {
    let mut done = 0;
    for &i in starts {
        if i < done || i + 15 > b.len() {
            continue;
        }
        let alpha = |c: u8| c.is_ascii_alphabetic();
        // The check digits first: most positions fail there.
        let starts = b[i + 2].is_ascii_digit()
            && b[i + 3].is_ascii_digit()
            && alpha(b[i])
            && alpha(b[i + 1])
            && before_ok(b, i);
        if !starts {
            continue;
        }
        let cc = [b[i].to_ascii_uppercase(), b[i + 1].to_ascii_uppercase()];
        let Some(&(_, len)) = IBAN_LENGTHS.iter().find(|(c, _)| **c == cc) else {
            continue;
        };
        // Collect `len` characters in one case, in lower or upper case, allowing single spaces
        // or dashes between groups (after the first four characters).
        let lower = b[i].is_ascii_lowercase();
        let mut chars = [0u8; 34];
        let mut n = 0;
        let mut j = i;
        while j < b.len() && n < len {
            let c = b[j];
            if c.is_ascii_digit() || (alpha(c) && c.is_ascii_lowercase() == lower) {
                chars[n] = c.to_ascii_uppercase();
                n += 1;
                j += 1;
            } else if (c == b' ' || c == b'-')
                && n >= 4
                && j + 1 < b.len()
                && b[j + 1].is_ascii_alphanumeric()
            {
                j += 1;
            } else {
                break;
            }
        }
        if n == len && after_ok(b, j) && mod97(&chars[..n]) == 1 {
            push(found, Detector::Iban, i, j);
            done = j;
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
// Numbers: payment cards, SSNs and phone numbers share their first step, a run of digit groups
// with separators (space, `-`, `.`, `/`, ` - `, ` / `), an optional leading `+` and at most one
// parenthesised group.

const MAX_DIGITS: usize = 24;
const MAX_GROUPS: usize = 12;
const SEP_SPACE: u8 = 1;
const SEP_DASH: u8 = 2;
const SEP_DOT: u8 = 4;
const SEP_SLASH: u8 = 8;

struct Run {
    start: usize,
    end: usize,
    digits: [u8; MAX_DIGITS],
    n: usize,
    groups: [u8; MAX_GROUPS],
    g: usize,
    /// Which separators occur (`SEP_*`), and whether two kinds are mixed.
    seps: u8,
    plus: bool,
    /// The group that was written in parentheses.
    paren: Option<usize>,
    overflow: bool,
}

impl Run {
    fn digits(&self) -> &[u8] {
        &self.digits[..self.n]
    }
    fn groups(&self) -> &[u8] {
        &self.groups[..self.g]
    }
    fn value(&self, group: usize) -> u32 {
        let from: usize = self.groups[..group].iter().map(|x| usize::from(*x)).sum();
        self.digits[from..from + usize::from(self.groups[group])]
            .iter()
            .fold(0u32, |a, d| {
                a.saturating_mul(10).saturating_add(u32::from(d - b'0'))
            })
    }
    fn one_sep(&self) -> bool {
        self.seps.count_ones() <= 1
    }
}

fn numbers(
    b: &[u8],
    starts: &[usize],
    found: &mut Vec<Finding>,
    on: &dyn Fn(Detector) -> bool,
    settings: &Settings,
) {
    // A run starts at a digit, or at the `+` or `(` just before one, not after a word, a
    // decimal point, a dash, a slash, `#`, `,` or `$`.
    let allowed = |i: usize| {
        i == 0
            || !(is_word(b[i - 1])
                || matches!(b[i - 1], b'.' | b'-' | b'/' | b'+' | b'#' | b',' | b'$'))
    };
    let mut done = 0;
    for &d in starts {
        if d < done || !b[d].is_ascii_digit() {
            continue;
        }
        let i = if d > 0 && matches!(b[d - 1], b'+' | b'(') && allowed(d - 1) {
            d - 1
        } else if allowed(d) {
            d
        } else {
            continue;
        };
        if i < done {
            continue;
        }
        let mut run = read_run(b, i);
        if run.n == 0 {
            // `(` that opens no group (`(4111 1111 …)`): the run starts at the digit.
            if !allowed(d) {
                continue;
            }
            run = read_run(b, d);
        }
        let i = run.start;
        let j = run.end;
        let next = if j < b.len() { b[j] } else { b' ' };
        let followed_by_digit = j + 1 < b.len() && b[j + 1].is_ascii_digit();
        let continues = is_word(next)
            || (matches!(next, b'.' | b':' | b',' | b'/') && followed_by_digit)
            || (next == b'-' && j + 1 < b.len() && is_word(b[j + 1]))
            || next == b'@';
        if !continues && !run.overflow {
            // The tail of an alphanumeric code (an IBAN with a typo, a part number) is not a
            // phone or card number: look at the tokens before it.
            let not_phone = |d: Detector| d != Detector::Phone && d != Detector::Card && on(d);
            let kind = if code_tail(b, i) {
                classify(b, &run, &not_phone, settings)
            } else {
                classify(b, &run, on, settings)
            };
            if let Some(d) = kind {
                push(found, d, run.start, run.end);
            }
        }
        done = j.max(i + 1);
    }
}

fn read_run(b: &[u8], i: usize) -> Run {
    let mut run = Run {
        start: i,
        end: i,
        digits: [0; MAX_DIGITS],
        n: 0,
        groups: [0; MAX_GROUPS],
        g: 0,
        seps: 0,
        plus: false,
        paren: None,
        overflow: false,
    };
    let mut j = i;
    if b[j] == b'+' {
        run.plus = true;
        j += 1;
    }
    loop {
        // One group: digits, or `(digits)`.
        let open = j < b.len() && b[j] == b'(';
        // Parentheses hold an area code or a trunk prefix: the first or second group, once.
        if open && (run.paren.is_some() || run.g > 1) {
            break;
        }
        let s = j + usize::from(open);
        let mut k = s;
        while k < b.len() && b[k].is_ascii_digit() {
            k += 1;
        }
        if k == s || (open && !(k < b.len() && b[k] == b')' && k - s <= 5)) {
            break;
        }
        for &d in &b[s..k] {
            if run.n == MAX_DIGITS {
                run.overflow = true;
            } else {
                run.digits[run.n] = d;
                run.n += 1;
            }
        }
        if run.g == MAX_GROUPS {
            run.overflow = true;
        } else {
            if open {
                run.paren = Some(run.g);
            }
            run.groups[run.g] = (k - s).min(255) as u8;
            run.g += 1;
        }
        j = k + usize::from(open);
        run.end = j;
        // A separator, then the next group; or a parenthesis right after digits (`+1(555)`), or
        // digits right after a parenthesis (`(555)123-4567`).
        let (sep, width) = match (b.get(j), b.get(j + 1), b.get(j + 2)) {
            (Some(b' '), Some(b'-' | b'/'), Some(b' ')) => (
                if b[j + 1] == b'-' {
                    SEP_DASH
                } else {
                    SEP_SLASH
                },
                3,
            ),
            // `089/ 1234567`, `030 /1234567`.
            (Some(b'/'), Some(b' '), _) => (SEP_SLASH, 2),
            (Some(b' '), Some(b'/'), Some(d)) if d.is_ascii_digit() => (SEP_SLASH, 2),
            (Some(b' '), _, _) => (SEP_SPACE, 1),
            (Some(b'-'), _, _) => (SEP_DASH, 1),
            (Some(b'.'), _, _) => (SEP_DOT, 1),
            (Some(b'/'), _, _) => (SEP_SLASH, 1),
            (Some(b'('), _, _) if !open => (0, 0),
            (Some(d), _, _) if open && d.is_ascii_digit() => (0, 0),
            _ => break,
        };
        let after = j + width;
        let next_ok = after < b.len()
            && (b[after].is_ascii_digit()
                || (b[after] == b'('
                    && run.paren.is_none()
                    && after + 1 < b.len()
                    && b[after + 1].is_ascii_digit()));
        if !next_ok {
            break;
        }
        run.seps |= sep;
        j = after;
    }
    run
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

fn classify(
    b: &[u8],
    run: &Run,
    on: &dyn Fn(Detector) -> bool,
    settings: &Settings,
) -> Option<Detector> {
    let groups = run.groups();
    let digits = run.digits();
    let plain = !run.plus && run.paren.is_none();
    let g = groups.len();

    if plain && run.seps == SEP_DOT && g == 4 {
        return None; // a dotted quad: an IPv4 address (its own detector) or a version
    }
    // Dates: 2024-01-15, 15.01.2024, 1/2/2024.
    let small = |x: u8| (1..=2).contains(&x);
    if plain
        && g == 3
        && run.one_sep()
        && run.seps & SEP_SPACE == 0
        && ((groups[0] == 4 && small(groups[1]) && small(groups[2]))
            || (small(groups[0]) && small(groups[1]) && (groups[2] == 4 || groups[2] == 2)))
    {
        return None;
    }
    if on(Detector::Ssn)
        && plain
        && groups == [3, 2, 4]
        && run.one_sep()
        && (run.seps == SEP_DASH || run.seps == SEP_SPACE)
        && ssn_valid(digits)
    {
        return Some(Detector::Ssn);
    }
    if on(Detector::Card)
        && plain
        && (12..=19).contains(&digits.len())
        && run.one_sep()
        && run.seps & (SEP_DOT | SEP_SLASH) == 0
        && card_groups(groups)
        && luhn(digits)
        && card_issuer(digits)
    {
        return Some(Detector::Card);
    }
    if on(Detector::Phone) && phone_like(b, run, settings) {
        return Some(Detector::Phone);
    }
    None
}

fn ssn_valid(d: &[u8]) -> bool {
    let d: Vec<u8> = d.iter().map(|c| c - b'0').collect();
    let area = u32::from(d[0]) * 100 + u32::from(d[1]) * 10 + u32::from(d[2]);
    let group = d[3] * 10 + d[4];
    let serial = d[5..].iter().fold(0u32, |a, x| a * 10 + u32::from(*x));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// How cards are written: one block, groups of four (the last one shorter), or the 4-6-5 and
/// 4-6-4 of American Express and Diners.
fn card_groups(groups: &[u8]) -> bool {
    groups.len() == 1
        || groups == [4, 6, 5]
        || groups == [4, 6, 4]
        || (groups.len() >= 3
            && groups[..groups.len() - 1].iter().all(|g| *g == 4)
            && (1..=4).contains(groups.last().unwrap_or(&0)))
}

fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x - b'0');
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

/// Issuer identification numbers and the lengths each brand issues.
fn card_issuer(d: &[u8]) -> bool {
    let prefix = |n: usize| {
        d[..n]
            .iter()
            .fold(0u32, |a, x| a * 10 + u32::from(x - b'0'))
    };
    let len = d.len();
    let long = (16..=19).contains(&len);
    let maestro = (12..=19).contains(&len);
    match d[0] {
        b'4' => matches!(len, 13 | 16 | 19), // Visa, Visa Electron
        b'2' => {
            ((2221..=2720).contains(&prefix(4)) && len == 16) // Mastercard 2-series
            || ((2200..=2204).contains(&prefix(4)) && long)
        } // Mir
        b'3' => {
            (matches!(prefix(2), 34 | 37) && len == 15)                               // Amex
                || ((3528..=3589).contains(&prefix(4)) && long)                       // JCB
                || (((300..=305).contains(&prefix(3)) || prefix(4) == 3095 || matches!(prefix(2), 36 | 38 | 39))
                    && (14..=19).contains(&len))                                      // Diners
                || (matches!(prefix(3), 353 | 356) && len == 16) // RuPay
        }
        b'5' => {
            ((51..=55).contains(&prefix(2)) && len == 16)                  // Mastercard
            || ((matches!(prefix(2), 50 | 56..=58)) && maestro)
        } // Maestro, Verve
        b'6' => maestro, // Discover, UnionPay (62), RuPay (60, 65), Maestro (6x), InstaPayment
        b'8' => matches!(prefix(2), 81 | 82) && long, // UnionPay 81, RuPay 82
        b'9' => prefix(4) == 9792 && len == 16, // Troy
        _ => false,
    }
}

/// Words before a number that say what it is. A negative word wins over a positive one: in
/// `order number 123 456 789` the number is an order's.
const PHONE_WORDS: &[&[u8]] = &[
    b"tlf",
    b"tfn",
    b"puh",
    b"simu",
    b"numer",
    b"celular",
    b"gsm",
    b"tel",
    b"phone",
    b"fon",
    b"mobil",
    b"movil",
    b"cell",
    b"call",
    b"fax",
    b"whatsapp",
    b"sms",
    b"number",
    b"nummer",
    b"numero",
    b"contact",
    b"reach",
    b"ring",
    b"dial",
    b"hotline",
    b"text me",
    b"kontakt",
    b"mob",
    b"handy",
];
const OTHER_WORDS: &[&[u8]] = &[
    b"order",
    b"invoice",
    b"ticket",
    b"ref",
    b"id",
    b"isbn",
    b"issn",
    b"zip",
    b"postal",
    b"postcode",
    b"plz",
    b"account",
    b"acct",
    b"tracking",
    b"serial",
    b"sku",
    b"version",
    b"build",
    b"release",
    b"no.",
    b"nr",
    b"case",
    b"po ",
    b"batch",
    b"lot",
    b"amount",
    b"total",
    b"price",
    b"qty",
    b"quantity",
    b"iban",
    b"bic",
    b"card",
    b"ssn",
    b"part",
    b"model",
    b"page",
    b"year",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    Phone,
    Other,
    None,
}

/// The words just before a number: a positive word within 32 bytes, a negative one within 14.
fn context(b: &[u8], start: usize) -> Context {
    // Bit n: some word of the list starts with the letter `a` + n.
    const fn initials(words: &[&[u8]]) -> u32 {
        let mut bits = 0u32;
        let mut k = 0;
        while k < words.len() {
            bits |= 1 << (words[k][0] - b'a');
            k += 1;
        }
        bits
    }
    const PHONE_INITIALS: u32 = initials(PHONE_WORDS);
    const OTHER_INITIALS: u32 = initials(OTHER_WORDS);
    let from = start.saturating_sub(32);
    let mut window = [0u8; 32];
    let w = &mut window[..start - from];
    for (k, c) in b[from..start].iter().enumerate() {
        w[k] = c.to_ascii_lowercase();
    }
    let mut phone = false;
    // Only word starts whose letter begins some word of a list are compared, byte by byte: this
    // runs for many candidates.
    for p in 0..w.len() {
        if !w[p].is_ascii_lowercase() || (p > 0 && w[p - 1].is_ascii_alphabetic()) {
            continue;
        }
        let bit = 1u32 << (w[p] - b'a');
        let rest = &w[p..];
        if rest.len() <= 14
            && OTHER_INITIALS & bit != 0
            && OTHER_WORDS.iter().any(|word| starts(rest, word))
        {
            return Context::Other;
        }
        phone |= PHONE_INITIALS & bit != 0 && PHONE_WORDS.iter().any(|word| starts(rest, word));
    }
    if phone { Context::Phone } else { Context::None }
}

/// `hay.starts_with(prefix)` without a call to `memcmp` (the words are a few bytes long).
fn starts(hay: &[u8], prefix: &[u8]) -> bool {
    hay.len() >= prefix.len() && hay.iter().zip(prefix).all(|(a, b)| a == b)
}

fn phone_like(b: &[u8], run: &Run, settings: &Settings) -> bool {
    let groups = run.groups();
    let g = groups.len();
    let mut digits = [0u8; MAX_DIGITS];
    let mut n = 0;
    // `+44 (0)20 …`: the parenthesised trunk prefix is not dialled from abroad.
    let mut from = 0;
    for (k, &len) in groups.iter().enumerate() {
        let part = &run.digits()[from..from + usize::from(len)];
        from += usize::from(len);
        if run.paren == Some(k) && k > 0 && part == b"0" {
            continue;
        }
        digits[n..n + part.len()].copy_from_slice(part);
        n += part.len();
    }
    let digits = &digits[..n];
    let default = settings.default_region.map(|r| r.0);

    // Written with a country code: `+49 30 1234567`, `0049 30 1234567`, `011 44 20 …`.
    let idd = if run.plus {
        Some(0)
    } else if digits.starts_with(b"00") && digits.get(2).is_some_and(|d| *d != b'0') {
        Some(2)
    } else if digits.starts_with(b"011") && groups[0] == 3 && g >= 2 {
        Some(3)
    } else {
        None
    };
    if let Some(cut) = idd {
        let d = &digits[cut..];
        if !(7..=15).contains(&d.len()) || run.seps & SEP_SLASH != 0 && !run.plus {
            return false;
        }
        return match phone::international(d) {
            phone::Fit::Valid => true,
            phone::Fit::Possible => g >= 2 && (run.plus || context(b, run.start) == Context::Phone),
            phone::Fit::No => false,
        };
    }

    let n = digits.len();
    if !(7..=13).contains(&n) {
        return false;
    }
    let leading_zero = digits[0] == b'0';
    // Two numbers of the same length joined by a dash, the second larger: a range (2019-2023,
    // 10115-10117), not a phone number.
    let year = |k: usize| groups[k] == 4 && (1800..=2199).contains(&run.value(k));
    if g == 2
        && groups[0] == groups[1]
        && run.seps & (SEP_DASH | SEP_SLASH) != 0
        && (run.value(1) > run.value(0) || (year(0) && year(1)))
        && !leading_zero
    {
        return context(b, run.start) == Context::Phone;
    }
    // Slashes separate dates, fractions and references; in a phone number only the area code
    // (`030/1234567`).
    if run.seps & SEP_SLASH != 0 && !(g == 2 && leading_zero) {
        return false;
    }
    // A dotted number of fewer than three groups is a decimal or a version.
    if run.seps & SEP_DOT != 0 && g < 3 {
        return false;
    }
    // 1 000 000, 45.458.336: thousands separators (a number never starts with 0). Three digits
    // first (`612 345 678`) is how Spain or Poland write phone numbers: that is left to validation.
    if !leading_zero
        && run.paren.is_none()
        && g >= 2
        && (groups[0] <= 2 || g == 2)
        && groups[1..].iter().all(|x| *x == 3)
        && run.seps & (SEP_SPACE | SEP_DOT) != 0
        && run.one_sep()
    {
        return context(b, run.start) == Context::Phone;
    }
    if groups == [3, 2, 4] && run.seps == SEP_DASH {
        return false; // the SSN shape
    }
    if groups == [5, 4] && run.seps == SEP_DASH && !leading_zero {
        return context(b, run.start) == Context::Phone; // a ZIP+4 code
    }
    // The North American shape: (NXX) NXX-XXXX, NXX-NXX-XXXX, 1 NXX NXX XXXX.
    let nanp_at = |k: usize| {
        groups[k..] == [3, 3, 4]
            && (b'2'..=b'9').contains(&digits[n - 10])
            && (b'2'..=b'9').contains(&digits[n - 7])
            && run.paren.is_none_or(|p| p == k)
    };
    if (g == 3 && nanp_at(0)) || (g == 4 && groups[0] == 1 && digits[0] == b'1' && nanp_at(1)) {
        return true;
    }
    let fit = phone::national(digits, groups, default);
    if fit == phone::Fit::No {
        return false;
    }
    let ctx = context(b, run.start);
    if ctx == Context::Other {
        return false;
    }
    // An area code in parentheses, `(030) 1234567`, `(11) 91234-5678`: the shape says phone.
    if run.paren == Some(0) && g >= 2 && fit >= phone::Fit::Possible {
        return true;
    }
    if g == 1 {
        // A bare run of digits is an id, an amount or a phone number: only a trunk prefix and a
        // valid number, or a word before it, make it a phone number.
        return (leading_zero && (10..=11).contains(&n) && fit == phone::Fit::Valid)
            || (ctx == Context::Phone && fit >= phone::Fit::Possible);
    }
    fit == phone::Fit::Valid || (ctx == Context::Phone && fit >= phone::Fit::Possible)
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
    fn everyday_text_in_many_formats_is_found() {
        use Detector::*;
        let key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n-----END OPENSSH PRIVATE KEY-----";
        let cases = [
            (
                "Call me on +44 7700 900123 after 5pm",
                Phone,
                "+44 7700 900123",
            ),
            ("Mein Handy: 0171 2345678", Phone, "0171 2345678"),
            ("Tél. 01 42 68 53 00", Phone, "01 42 68 53 00"),
            ("My number is (415) 555-2671.", Phone, "(415) 555-2671"),
            ("телефон +7 (495) 123-45-67", Phone, "+7 (495) 123-45-67"),
            ("電話：03-1234-5678", Phone, "03-1234-5678"),
            ("WhatsApp +55 11 98765-4321!", Phone, "+55 11 98765-4321"),
            (
                "móvil 612\u{a0}345\u{a0}678",
                Phone,
                "612\u{a0}345\u{a0}678",
            ),
            (
                "＋４９ ３０ １２３４５６７８",
                Phone,
                "＋４９ ３０ １２３４５６７８",
            ),
            (
                "IBAN: de89 3704 0044 0532 0130 00.",
                Iban,
                "de89 3704 0044 0532 0130 00",
            ),
            (
                "iban GB82WEST12345698765432",
                Iban,
                "GB82WEST12345698765432",
            ),
            (
                "card 4111\u{a0}1111\u{a0}1111\u{a0}1111",
                Card,
                "4111\u{a0}1111\u{a0}1111\u{a0}1111",
            ),
            ("Maestro 6759 6498 2643 8453", Card, "6759 6498 2643 8453"),
            ("«ada@example.com»", Email, "ada@example.com"),
            ("mail:\u{200b}ada@example.com", Email, "ada@example.com"),
            (
                "key AKIAIOSFODNN7EXAMPLE leaked",
                SecretKey,
                "AKIAIOSFODNN7EXAMPLE",
            ),
            (
                "token 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 here",
                SecretKey,
                "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",
            ),
            (
                "Authorization: Basic dXNlcjpwYXNzd29yZA==",
                SecretKey,
                "dXNlcjpwYXNzd29yZA==",
            ),
            (
                "slack xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
                SecretKey,
                "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
            ),
            (
                "stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc",
                SecretKey,
                "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            ),
            ("x-api-key: 9f8e7d6c5b4a", SecretKey, "9f8e7d6c5b4a"),
            (key, SecretKey, key),
        ];
        for (text, detector, value) in cases {
            assert_eq!(found(text), vec![(detector, value)], "{text}");
        }
    }

    #[test]
    fn ordinary_numbers_are_not_phone_numbers() {
        for text in [
            "we grew from 2019-2023 and 2019 – 2023",
            "ship to San Francisco, CA 94105-1234",
            "release v2.3.14 on 2024-03-05 at 10:30",
            "order 123456789 and invoice 2024/000123",
            "call 911 or 112",
            "2,500,000 users, 1 250 000 sessions, 45.458.336 events",
            "ISBN 978-3-16-148410-0",
            "postcode 75008 Paris, 10115 Berlin",
            "between 10:00-12:00 on 1.5.2023",
            "pages 1200-1350",
            "the ratio was 3.14159265",
            "build 20240305.1",
            "ts 1700000000123",
        ] {
            assert_eq!(found(text), vec![], "{text}");
        }
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
            "aB3dE5gH7jK9mN1pQ3sT5vX7zA ada@example.com ".repeat(20_000),
            "-----BEGIN RSA PRIVATE KEY-----".repeat(30_000),
            " -u a:b hooks.slack.com/services/".repeat(30_000),
            "+1 (555) 123-4567 (0)".repeat(40_000),
            "４１１１\u{a0}\u{200b}«»".repeat(100_000),
            "authorization: basic ".repeat(40_000),
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

#[cfg(test)]
mod personal_columns {
    use super::personal_column;

    #[test]
    fn people_s_names_addresses_and_birth_dates_are_known_by_their_column_names() {
        for (name, kind) in [
            ("name", "name"),
            ("Customer Name", "name"),
            ("last_name", "name"),
            ("FirstName", "name"),
            ("surname", "name"),
            ("contact_full_name", "name"),
            ("home_address", "address"),
            ("Street", "address"),
            ("zip", "address"),
            ("postal-code", "address"),
            ("AddressLine1", "address"),
            ("dob", "date_of_birth"),
            ("date_of_birth", "date_of_birth"),
            ("birthday", "date_of_birth"),
        ] {
            assert_eq!(personal_column(name), Some(kind), "{name}");
        }
        for name in [
            "id",
            "amount",
            "file_name",
            "company_name",
            "product name",
            "hostname",
            "email_address",
            "ip_address",
            "city",
            "note",
            "dataset",
            "username_count",
        ] {
            assert_eq!(personal_column(name), None, "{name}");
        }
    }
}
