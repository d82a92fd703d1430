//! Invites (single and CSV, SPEC §6) and sign-in by an emailed code (issue 10, part A). The
//! secrets sent (an invite's link token, a sign-in code) are never stored: each is an HMAC of
//! the message's id under the platform secret, recomputed by the outbox when it delivers and by
//! these use cases when one is presented (ADR 030).

use crate::identity::{Admitted, seats_for};
use crate::{App, Ctx, Error};
use domain::identity::TokenKind;
use domain::tenant::{self, InviteOutcome, NewInvite, OnConflict, TenantCommand, TenantError};
use domain::{Email, PersonName, TenantId, TenantRole, UserId};
use serde::Serialize;
use std::collections::HashMap;
use uuid::Uuid;

/// The most rows one CSV request may carry.
pub const MAX_ROWS: usize = 10_000;
/// The longest row read (a longer one refuses the file: no invite row comes near it).
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// The largest CSV body read (bigger is 413).
pub const MAX_CSV_BYTES: usize = 50 * 1024 * 1024;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn invite_mac(app: &App, tenant: TenantId, invite: Uuid) -> String {
    let mac = crate::tokens::hmac_sha256(
        app.platform_secret(),
        [
            b"invite\0".as_slice(),
            tenant.as_uuid().as_bytes(),
            invite.as_bytes(),
        ],
    );
    hex(&mac[..16])
}

/// The link token of an invite: `inv_`, the tenant, the invite and a MAC, all hex.
pub fn invite_token(app: &App, tenant: TenantId, invite: Uuid) -> String {
    format!(
        "inv_{}{}{}",
        tenant.as_uuid().simple(),
        invite.simple(),
        invite_mac(app, tenant, invite)
    )
}

/// The tenant and invite of a link token, if its MAC is right.
fn parse_invite_token(app: &App, token: &str) -> Option<(TenantId, Uuid)> {
    let body = token.strip_prefix("inv_")?;
    if body.len() != 96 || !body.is_ascii() {
        return None;
    }
    let tenant = TenantId::from_uuid(Uuid::try_parse(&body[..32]).ok()?);
    let invite = Uuid::try_parse(&body[32..64]).ok()?;
    let expected = invite_mac(app, tenant, invite);
    crate::tokens::constant_time_eq(expected.as_bytes(), &body.as_bytes()[64..])
        .then_some((tenant, invite))
}

/// The eight-digit code of a sign-in request.
pub fn sign_in_code(app: &App, tenant: TenantId, request: Uuid) -> String {
    let mac = crate::tokens::hmac_sha256(
        app.platform_secret(),
        [
            b"sign-in\0".as_slice(),
            tenant.as_uuid().as_bytes(),
            request.as_bytes(),
        ],
    );
    let n = u64::from_be_bytes(mac[..8].try_into().expect("8 bytes")) % 100_000_000;
    format!("{n:08}")
}

/// One row's answer in an import report.
#[derive(Clone, Debug, Serialize)]
pub struct RowReport {
    /// The row's line in the file (1-based; the header is line 1 when there is one).
    pub line: u64,
    /// The email as written (lower-cased when valid).
    pub email: String,
    /// `created`, `skipped_existing_member`, `updated_pending_invite`, `conflict_role`,
    /// `invalid`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What an import did (or, under `dry_run`, would do).
#[derive(Clone, Debug, Serialize)]
pub struct ImportReport {
    pub dry_run: bool,
    pub rows: Vec<RowReport>,
    pub position: u64,
}

/// Why a CSV file as a whole cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvRefused {
    #[error("the file has no rows")]
    Empty,
    #[error("the file has more than {MAX_ROWS} rows")]
    TooManyRows,
    #[error("the header names unknown columns (expected email, role and optionally name): {0}")]
    BadHeader(String),
    #[error("line {line}: {reason}")]
    Unreadable { line: u64, reason: String },
}

/// A row as read from the file, before validation.
#[derive(Debug)]
struct RawRow {
    line: u64,
    fields: Vec<Result<String, ()>>,
}

/// Where a record boundary scan stands (a small copy of the CSV reader's quoting rules: a quote
/// opens a quoted field only at a field's start, `""` inside one is a quote).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scan {
    FieldStart,
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: its end, or the first half of `""`.
    QuoteInQuoted,
}

/// The rows of a CSV file of invites read as its body arrives (`push` each chunk, then
/// `finish`): only the rows are kept, never the file. The bytes up to the last record boundary
/// seen (a newline outside quotes) are parsed at once by the `csv` reader, one record at a time;
/// the incomplete tail waits for the next chunk. A byte-order mark is skipped, CRLF and quoted
/// fields are RFC 4180's, a first row with a cell `email` is a header (and may reorder the
/// columns), a field that is not UTF-8 makes its row invalid, lines are counted from the bytes.
/// The first refusal of the file is kept and the rest of the body only counted.
#[derive(Debug)]
pub struct CsvRows {
    pending: Vec<u8>,
    /// How much of `pending` the boundary scan has seen, and its state there.
    scanned: usize,
    scan: Scan,
    /// The last record boundary in `pending` (the index after its CR or LF).
    boundary: usize,
    /// Nothing parsed yet (a byte-order mark may lead).
    at_start: bool,
    /// Newlines before `pending`.
    lines_before: u64,
    header_checked: bool,
    columns: [usize; 3],
    rows: Vec<RawRow>,
    refused: Option<CsvRefused>,
}

impl Default for CsvRows {
    fn default() -> Self {
        CsvRows {
            pending: Vec::new(),
            scanned: 0,
            scan: Scan::FieldStart,
            boundary: 0,
            at_start: true,
            lines_before: 0,
            header_checked: false,
            columns: [0, 1, 2],
            rows: Vec::new(),
            refused: None,
        }
    }
}

/// The rows of a whole file (or why it is refused), as `import_rows` takes them.
#[derive(Debug)]
pub struct ParsedCsv {
    rows: Vec<RawRow>,
    /// email, role, name column indexes.
    columns: [usize; 3],
}

impl CsvRows {
    pub fn new() -> Self {
        Self::default()
    }

    /// Read the next bytes of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.refused.is_some() {
            return;
        }
        self.pending.extend_from_slice(chunk);
        for (i, &b) in self.pending[self.scanned..].iter().enumerate() {
            self.scan = match (self.scan, b) {
                (Scan::FieldStart, b'"') => Scan::Quoted,
                (Scan::Quoted, b'"') => Scan::QuoteInQuoted,
                (Scan::Quoted, _) => Scan::Quoted,
                (Scan::QuoteInQuoted, b'"') => Scan::Quoted,
                (_, b',') => Scan::FieldStart,
                (_, b'\n' | b'\r') => {
                    self.boundary = self.scanned + i + 1;
                    Scan::FieldStart
                }
                _ => Scan::Unquoted,
            };
        }
        self.scanned = self.pending.len();
        // No row of `email,role[,name]` is this long: a file that makes one is refused at
        // once, and the rest of its body is not kept.
        if self.pending.len() - self.boundary > MAX_RECORD_BYTES {
            self.refused = Some(CsvRefused::Unreadable {
                line: self.lines_before
                    + self.pending[..self.boundary]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count() as u64
                    + 1,
                reason: format!("a row longer than {MAX_RECORD_BYTES} bytes"),
            });
            self.pending = Vec::new();
            return;
        }
        // Parse whole records once enough has gathered (a chunk each time would parse tiny
        // slices when the body arrives in small chunks).
        if self.boundary >= 64 * 1024 {
            self.parse_upto(self.boundary);
        }
    }

    /// The rows of the whole file, or why it is refused.
    pub fn finish(mut self) -> Result<ParsedCsv, CsvRefused> {
        if self.refused.is_none() {
            self.parse_upto(self.pending.len());
        }
        if let Some(refused) = self.refused {
            return Err(refused);
        }
        if self.rows.is_empty() {
            return Err(CsvRefused::Empty);
        }
        Ok(ParsedCsv {
            rows: self.rows,
            columns: self.columns,
        })
    }

    /// Parse `pending[..end]` (whole records) and drop it.
    fn parse_upto(&mut self, end: usize) {
        let mut pending = std::mem::take(&mut self.pending);
        let mut bytes = &pending[..end];
        if self.at_start {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            self.at_start = false;
        }
        let newlines = bytes.iter().filter(|b| **b == b'\n').count() as u64;
        if let Err(e) = self.read_records(bytes) {
            self.refused = Some(e);
        }
        self.lines_before += newlines;
        pending.drain(..end);
        self.pending = pending;
        self.scanned -= end;
        self.boundary = self.boundary.saturating_sub(end);
    }

    /// The records of `bytes`, which start at a record boundary and end at one.
    fn read_records(&mut self, bytes: &[u8]) -> Result<(), CsvRefused> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(bytes);
        let mut record = csv::ByteRecord::new();
        let (mut counted, mut lines_seen) = (0usize, self.lines_before);
        loop {
            match reader.read_byte_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line()) + self.lines_before;
                    return Err(CsvRefused::Unreadable {
                        line,
                        reason: e.to_string(),
                    });
                }
            }
            // The reader's own line numbers skip blank lines; count them from the bytes instead.
            let mut start = record.position().map_or(0, |p| p.byte() as usize);
            while bytes.get(start).is_some_and(|b| matches!(b, b'\r' | b'\n')) {
                start += 1;
            }
            lines_seen += bytes[counted..start.min(bytes.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count() as u64;
            counted = start.min(bytes.len());
            let line = lines_seen + 1;
            if record.iter().all(|f| f.iter().all(u8::is_ascii_whitespace)) {
                continue;
            }
            if !self.header_checked {
                self.header_checked = true;
                let is_header = record.iter().any(|f| {
                    std::str::from_utf8(f).is_ok_and(|c| c.trim().eq_ignore_ascii_case("email"))
                });
                if is_header {
                    let mut found = [usize::MAX; 3];
                    for (i, name) in record.iter().enumerate() {
                        let name = String::from_utf8_lossy(name).trim().to_ascii_lowercase();
                        match name.as_str() {
                            "email" => found[0] = i,
                            "role" => found[1] = i,
                            "name" => found[2] = i,
                            _ => return Err(CsvRefused::BadHeader(name)),
                        }
                    }
                    if found[1] == usize::MAX {
                        return Err(CsvRefused::BadHeader("no role column".into()));
                    }
                    self.columns = found;
                    continue;
                }
            }
            if self.rows.len() == MAX_ROWS {
                return Err(CsvRefused::TooManyRows);
            }
            self.rows.push(RawRow {
                line,
                fields: record
                    .iter()
                    .map(|f| std::str::from_utf8(f).map(str::to_owned).map_err(|_| ()))
                    .collect(),
            });
        }
        Ok(())
    }
}

/// The rows of a whole CSV file in memory.
fn read_rows(bytes: &[u8]) -> Result<ParsedCsv, CsvRefused> {
    let mut rows = CsvRows::new();
    rows.push(bytes);
    rows.finish()
}

/// Options of an import.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImportOptions {
    pub dry_run: bool,
    pub on_conflict: OnConflict,
}

fn invalid(line: u64, email: &str, field: &str, reason: impl Into<String>) -> RowReport {
    RowReport {
        line,
        email: email.to_owned(),
        outcome: "invalid",
        field: Some(field.to_owned()),
        reason: Some(reason.into()),
    }
}

/// Import a CSV file of invites: every row validated, one outcome per row, the valid ones
/// invited in one append (or, under `dry_run`, decided against the tenant's state and not
/// written).
pub async fn import_csv(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    by: TenantRole,
    bytes: &[u8],
    options: ImportOptions,
) -> Result<ImportReport, Error> {
    import_rows(app, ctx, tenant, by, read_rows(bytes), options).await
}

/// Import the rows of a CSV file read as it arrived ([`CsvRows`]); a refused file is a 422 on
/// `file`.
pub async fn import_rows(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    by: TenantRole,
    parsed: Result<ParsedCsv, CsvRefused>,
    options: ImportOptions,
) -> Result<ImportReport, Error> {
    let ParsedCsv { rows: raw, columns } =
        parsed.map_err(|e| Error::field("file", e.to_string()))?;
    let mut reports: Vec<Option<RowReport>> = Vec::with_capacity(raw.len());
    let mut wanted: Vec<(usize, NewInvite)> = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for (i, row) in raw.iter().enumerate() {
        let cell = |c: usize| row.fields.get(c).cloned();
        let shown = match cell(columns[0]) {
            Some(Ok(e)) => e.trim().to_owned(),
            _ => String::new(),
        };
        let report = (|| {
            let extra = row.fields.len() > 3 || (columns[2] == usize::MAX && row.fields.len() > 2);
            if row.fields.len() < 2 || extra {
                return Err(invalid(
                    row.line,
                    &shown,
                    "row",
                    format!(
                        "expected email,role[,name]; found {} fields",
                        row.fields.len()
                    ),
                ));
            }
            let text = |field: &str, c: usize| match cell(c) {
                Some(Ok(v)) => Ok(Some(v)),
                Some(Err(())) => Err(invalid(row.line, &shown, field, "is not valid UTF-8")),
                None => Ok(None),
            };
            let email_raw = text("email", columns[0])?.unwrap_or_default();
            let email = Email::parse(&email_raw)
                .map_err(|e| invalid(row.line, &shown, "email", e.to_string()))?;
            let role: TenantRole = text("role", columns[1])?
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
                .parse()
                .map_err(|e: String| invalid(row.line, email.as_str(), "role", e))?;
            if role == TenantRole::Owner && by != TenantRole::Owner {
                return Err(invalid(
                    row.line,
                    email.as_str(),
                    "role",
                    "only an owner can invite an owner",
                ));
            }
            let name = match text("name", columns[2])? {
                Some(n) if !n.trim().is_empty() => Some(
                    PersonName::parse(&n)
                        .map_err(|e| invalid(row.line, email.as_str(), "name", e.to_string()))?,
                ),
                _ => None,
            };
            if let Some(first) = seen.get(email.as_str()) {
                return Err(invalid(
                    row.line,
                    email.as_str(),
                    "email",
                    format!("duplicate of line {first}"),
                ));
            }
            seen.insert(email.as_str().to_owned(), row.line);
            Ok(NewInvite {
                invite_id: ctx.new_id(&format!("invite:{}", row.line)),
                email,
                role,
                name,
            })
        })();
        match report {
            Ok(invite) => {
                wanted.push((i, invite));
                reports.push(None);
            }
            Err(r) => reports.push(Some(r)),
        }
    }
    let invites: Vec<NewInvite> = wanted.iter().map(|(_, inv)| inv.clone()).collect();
    let (outcomes, position) = invite_many(app, ctx, tenant, by, invites, options).await?;
    for ((i, inv), outcome) in wanted.into_iter().zip(outcomes) {
        reports[i] = Some(RowReport {
            line: raw[i].line,
            email: inv.email.as_str().to_owned(),
            outcome: outcome.as_str(),
            field: None,
            reason: None,
        });
    }
    Ok(ImportReport {
        dry_run: options.dry_run,
        rows: reports.into_iter().map(|r| r.expect("every row")).collect(),
        position,
    })
}

/// Decide invites; under `dry_run` against the current state without writing.
async fn invite_many(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    by: TenantRole,
    invites: Vec<NewInvite>,
    options: ImportOptions,
) -> Result<(Vec<InviteOutcome>, u64), Error> {
    let seats = seats_for(app, tenant, ctx.now).await?;
    let stream = tenant::stream_id(tenant);
    if options.dry_run || invites.is_empty() {
        let (state, _) = app.tenants.load(tenant, &stream).await?;
        if state.name.is_none() {
            return Err(TenantError::NotFound.into());
        }
        let (outcomes, _) = state
            .plan_invites(
                &invites,
                by,
                &ctx.meta.actor,
                options.on_conflict,
                seats,
                ctx.now,
            )
            .map_err(Error::from)?;
        return Ok((outcomes, 0));
    }
    let command = TenantCommand::CreateInvites {
        invites: invites.clone(),
        by,
        actor: ctx.meta.actor.clone(),
        on_conflict: options.on_conflict,
        seats,
    };
    let (done, state) = app
        .tenants
        .execute_with_state(tenant, &stream, &command, &ctx.meta, ctx.now)
        .await?;
    // The report of the decision that was written: a row whose email has an event was created
    // or updated; one without is a member or a pending invite of another role.
    let mut changed: HashMap<&str, InviteOutcome> = HashMap::new();
    for e in &done.events {
        match e {
            tenant::TenantEvent::InviteCreated(c) => {
                changed.insert(c.email.as_str(), InviteOutcome::Created);
            }
            tenant::TenantEvent::InviteUpdated(u) => {
                if let Some(i) = state.invites.get(&u.invite_id) {
                    changed.insert(i.email.as_str(), InviteOutcome::UpdatedPendingInvite);
                }
            }
            _ => {}
        }
    }
    let outcomes = invites
        .iter()
        .map(|inv| match changed.get(inv.email.as_str()) {
            Some(o) => *o,
            None if state.member_by_email(&inv.email).is_some() => {
                InviteOutcome::SkippedExistingMember
            }
            None => InviteOutcome::ConflictRole,
        })
        .collect();
    let position = app.settled(&done.appended).await;
    Ok((outcomes, position))
}

/// One invite.
#[derive(Debug)]
pub struct Invited {
    pub invite_id: Uuid,
    pub outcome: InviteOutcome,
    pub position: u64,
}

/// One person to invite.
#[derive(Debug, Clone)]
pub struct OneInvite {
    pub email: Email,
    pub role: TenantRole,
    pub name: Option<PersonName>,
    pub on_conflict: OnConflict,
}

/// Invite one person. A pending invite for the email is sent again (with the new role when
/// `on_conflict` is `update_role`); a member is not invited.
pub async fn invite(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    by: TenantRole,
    one: OneInvite,
) -> Result<Invited, Error> {
    let OneInvite {
        email,
        role,
        name,
        on_conflict,
    } = one;
    if role == TenantRole::Owner && by != TenantRole::Owner {
        return Err(TenantError::OnlyOwnersAddOwners.into());
    }
    let invite_id = ctx.new_id("invite");
    let options = ImportOptions {
        dry_run: false,
        on_conflict,
    };
    let new = NewInvite {
        invite_id,
        email: email.clone(),
        role,
        name,
    };
    let (outcomes, position) = invite_many(app, ctx, tenant, by, vec![new], options).await?;
    let outcome = outcomes[0];
    let invite_id = match outcome {
        InviteOutcome::Created => invite_id,
        _ => {
            let (state, _) = app.tenants.load(tenant, &tenant::stream_id(tenant)).await?;
            state
                .invite_by_email(&email)
                .map_or(Uuid::nil(), |(id, _)| id)
        }
    };
    match outcome {
        InviteOutcome::SkippedExistingMember => {
            Err(TenantError::EmailTaken(email.to_string()).into())
        }
        InviteOutcome::ConflictRole => Err(Error::Conflict {
            slug: "invite-conflict",
            detail: format!(
                "{email} has a pending invite with another role; send on_conflict=update_role to change it"
            ),
        }),
        _ => Ok(Invited {
            invite_id,
            outcome,
            position,
        }),
    }
}

/// Accept an invite by its link token: the member is made and their first token issued.
pub async fn accept(
    app: &App,
    ctx: &Ctx,
    token: &str,
    name: PersonName,
) -> Result<Admitted, Error> {
    let (tenant, invite_id) =
        parse_invite_token(app, token).ok_or_else(|| Error::from(TenantError::UnknownInvite))?;
    let user_id = UserId::from_uuid(ctx.new_id("member"));
    let minted = crate::identity::mint_for(app, ctx);
    let mut meta = ctx.meta.clone();
    meta.actor = format!("user:{user_id}");
    let done = app
        .tenants
        .execute(
            tenant,
            &tenant::stream_id(tenant),
            &TenantCommand::AcceptInvite {
                invite_id,
                user_id,
                name,
                token: minted.issued.clone(),
            },
            &meta,
            ctx.now,
        )
        .await
        .map_err(|e| match Error::from(e) {
            // An invite of a tenant that does not exist is an unknown invite.
            Error::Tenant(TenantError::NotFound) => TenantError::UnknownInvite.into(),
            other => other,
        })?;
    let position = app.settled(&done.appended).await;
    Ok(Admitted {
        tenant_id: tenant,
        user_id,
        token: minted.secret,
        expires_at: minted.issued.expires_at,
        position,
    })
}

/// How long `POST /v1/sign-in` takes at least, from its start: both answers wait for it, so what
/// is left of scheduling noise between them is under the floor's own jitter (ADR 037).
pub const SIGN_IN_FLOOR: std::time::Duration = std::time::Duration::from_millis(2);

/// `POST /v1/sign-in` as the service answers it: the request is taken and its work (the member
/// looked up, the code requested, durably) runs after the answer, so a known email and an
/// unknown one are answered after the same work, and no earlier than [`SIGN_IN_FLOOR`] after
/// `started` (no timing oracle of who is a member; ADR 037). A failure is logged; the person
/// asks again, as they would for a lost message.
pub async fn request_sign_in_detached(
    app: &std::sync::Arc<App>,
    ctx: Ctx,
    tenant: TenantId,
    email: Email,
    started: std::time::Instant,
) {
    tokio::time::sleep_until((started + SIGN_IN_FLOOR).into()).await;
    let app = std::sync::Arc::clone(app);
    tokio::spawn(async move {
        // Let the answer leave first: on a single-threaded worker the task would otherwise run
        // before the answer is written, for members only.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        if let Err(e) = request_sign_in(&app, &ctx, tenant, &email).await {
            tracing::warn!(error = %e, %tenant, "a sign-in code was not requested");
        }
    });
}

/// Ask for a sign-in code. Unknown tenants and emails, and requests over the hourly bound, are
/// answered the same as a code sent: the caller learns nothing about who is a member. Waits
/// until the code request is written.
pub async fn request_sign_in(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    email: &Email,
) -> Result<(), Error> {
    let Some(member) = app.identity.member_by_email(tenant, email.as_str()) else {
        return Ok(());
    };
    let command = TenantCommand::RequestSignInCode {
        user_id: member.user_id,
        request_id: ctx.new_id("sign-in"),
    };
    match app
        .tenants
        .execute(
            tenant,
            &tenant::stream_id(tenant),
            &command,
            &ctx.meta,
            ctx.now,
        )
        .await
    {
        Ok(done) => {
            app.settled(&done.appended).await;
            Ok(())
        }
        Err(e) => match Error::from(e) {
            Error::Tenant(TenantError::SignInRefused) => Ok(()),
            other => Err(other),
        },
    }
}

/// Present a sign-in code: right, in time, the first time and within the attempts, it issues a
/// fresh token (`sign_in`). Every other case is the same `SignInRefused`.
pub async fn verify_sign_in(
    app: &App,
    ctx: &Ctx,
    tenant: TenantId,
    email: &Email,
    code: &str,
) -> Result<Admitted, Error> {
    let refused = || Error::from(TenantError::SignInRefused);
    let member = app
        .identity
        .member_by_email(tenant, email.as_str())
        .ok_or_else(refused)?;
    let stream = tenant::stream_id(tenant);
    let (state, _) = app.tenants.load(tenant, &stream).await?;
    let request = state
        .open_sign_in(member.user_id, ctx.now)
        .ok_or_else(refused)?;
    let expected = sign_in_code(app, tenant, request);
    let matched = crate::tokens::constant_time_eq(expected.as_bytes(), code.trim().as_bytes());
    let minted = crate::identity::mint_for(app, ctx);
    let mut meta = ctx.meta.clone();
    meta.actor = format!("user:{}", member.user_id);
    let done = app
        .tenants
        .execute(
            tenant,
            &stream,
            &TenantCommand::AttemptSignIn {
                user_id: member.user_id,
                request_id: request,
                code_matched: matched,
                token: minted.issued.clone(),
            },
            &meta,
            ctx.now,
        )
        .await?;
    let position = app.settled(&done.appended).await;
    if !matched {
        return Err(refused());
    }
    debug_assert!(
        done.events.iter().any(
            |e| matches!(e, tenant::TenantEvent::TokenIssued(t) if t.kind == TokenKind::SignIn)
        )
    );
    Ok(Admitted {
        tenant_id: tenant,
        user_id: member.user_id,
        token: minted.secret,
        expires_at: minted.issued.expires_at,
        position,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rows = Vec<(u64, Vec<Result<String, ()>>)>;

    fn outcome(bytes: &[u8]) -> Result<Rows, CsvRefused> {
        read_rows(bytes).map(|p| p.rows.into_iter().map(|r| (r.line, r.fields)).collect())
    }

    /// The same file in chunks of every size reads as it does whole.
    fn in_chunks(bytes: &[u8], size: usize) -> Result<Rows, CsvRefused> {
        let mut rows = CsvRows::new();
        for chunk in bytes.chunks(size) {
            rows.push(chunk);
        }
        rows.finish()
            .map(|p| p.rows.into_iter().map(|r| (r.line, r.fields)).collect())
    }

    #[test]
    fn a_file_read_in_chunks_reads_as_the_whole_file() {
        let files: [&[u8]; 8] = [
            b"\xEF\xBB\xBFemail,role,name\r\na@example.com,viewer,\"Doe,\r\nJane\"\r\n\r\nb@example.com,admin\r\n",
            b"a@example.com,viewer,\"Say \"\"hi\"\"\nthere\"\n\n\n  \nb@example.com,admin",
            b"role,email\nviewer,a@example.com\nviewer,\"unterminated\n",
            b"a\"b@example.com,viewer\n\"x\ny\",viewer\nc@example.com,viewer\n",
            b"a@example.com,vi\xFFewer\rb@example.com,viewer\r",
            b"\xEF\xBB\xBF",
            b"email,role,phone\n",
            b"\n\n\xEF\xBB\xBFa@example.com,viewer\n",
        ];
        for file in files {
            let whole = outcome(file);
            for size in [1, 2, 3, 5, 7, 64, 4096] {
                assert_eq!(in_chunks(file, size), whole, "{size}: {file:?}");
            }
        }
        // Large enough to be parsed while it arrives (records cross the 64 KiB mark).
        let many: String = (0..9_000)
            .map(|i| format!("u{i}@example.com,viewer,\"Name\n{i}\"\r\n"))
            .collect();
        let whole = outcome(many.as_bytes()).unwrap();
        assert_eq!(whole.len(), 9_000);
        assert_eq!(whole[8_999].0, 2 * 8_999 + 1, "lines counted across chunks");
        for size in [1_000, 65_537] {
            assert_eq!(in_chunks(many.as_bytes(), size).unwrap(), whole);
        }
    }

    #[test]
    fn a_row_longer_than_any_invite_refuses_the_file_without_keeping_it() {
        let mut rows = CsvRows::new();
        rows.push(b"a@example.com,viewer\n");
        for _ in 0..40 {
            rows.push(&[b'a'; 64 * 1024]);
        }
        assert!(rows.pending.is_empty(), "nothing kept after the refusal");
        assert_eq!(
            rows.finish().unwrap_err(),
            CsvRefused::Unreadable {
                line: 2,
                reason: format!("a row longer than {MAX_RECORD_BYTES} bytes"),
            }
        );
    }

    #[test]
    fn ugly_csv_reads_as_rows_or_a_clear_refusal() {
        assert_eq!(outcome(b""), Err(CsvRefused::Empty));
        assert_eq!(
            outcome(b"\xEF\xBB\xBFemail,role\r\n"),
            Err(CsvRefused::Empty)
        );
        let rows =
            outcome(b"\xEF\xBB\xBFemail,role,name\r\na@example.com,viewer,\"Doe, Jane\"\r\n")
                .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, 2);
        assert_eq!(rows[0].1[2], Ok("Doe, Jane".to_owned()));
        let rows = outcome(b"a@example.com,viewer\nb@example.com,admin\n").unwrap();
        assert_eq!(rows.len(), 2);
        let rows = outcome(b"a@example.com,vi\xFFewer\n").unwrap();
        assert_eq!(rows[0].1[1], Err(()));
        assert!(matches!(
            outcome(b"email,role,phone\n"),
            Err(CsvRefused::BadHeader(_))
        ));
        let many: String = (0..=MAX_ROWS)
            .map(|i| format!("u{i}@example.com,viewer\n"))
            .collect();
        assert_eq!(outcome(many.as_bytes()), Err(CsvRefused::TooManyRows));
    }
}
