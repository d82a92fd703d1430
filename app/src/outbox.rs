//! The outbox (ADR 030): invites and sign-in codes owed are what the log says is owed — an
//! `invite.created`/`invite.updated`/`sign_in.code_requested` without its `message.delivered` —
//! as the identity read model keeps it. A worker hands each to a transport (a directory an
//! operator reads, one file per message; or an SMTP relay) and then appends
//! `message.delivered`. After a restart the read model resumes from the log, so nothing owed is
//! forgotten; a message is written under its own id, so a file delivery repeated after a crash
//! between the write and the event replaces the same file instead of making a second one.

use crate::App;
use domain::tenant::{self, MessageDelivered, MessageKind, TenantCommand};
use projections::OutboxMessage;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where messages go.
#[derive(Clone, Debug)]
pub enum Transport {
    /// One `<message id>-<expiry>.eml` file per message in this directory.
    Directory(PathBuf),
    /// An SMTP relay (`lettre`), with the sender's address.
    Smtp(Box<Smtp>),
    /// Nowhere yet: messages stay owed (and are delivered once a transport is configured).
    None,
}

/// An SMTP relay and the sender's address.
#[derive(Clone)]
pub struct Smtp {
    mailer: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl std::fmt::Debug for Smtp {
    // The URL may hold the relay's password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smtp")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// An SMTP transport from a lettre connection URL (`smtps://user:pass@host:465`,
    /// `smtp://host:587?tls=required`, `smtp://host:25` for a local relay) and a sender
    /// (`Tenantry <no-reply@example.com>`).
    pub fn smtp(url: &str, from: &str) -> Result<Transport, String> {
        let mailer = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url)
            .map_err(|e| format!("smtp_url: {e}"))?
            .timeout(Some(Duration::from_secs(30)))
            .build();
        let from = from.parse().map_err(|e| format!("smtp_from: {e}"))?;
        Ok(Transport::Smtp(Box::new(Smtp { mailer, from })))
    }

    fn name(&self) -> &'static str {
        match self {
            Transport::Directory(_) => "file",
            Transport::Smtp(_) => "smtp",
            Transport::None => "none",
        }
    }

    /// Hand one message to the transport.
    async fn deliver(&self, m: &OutboxMessage, r: &Rendered) -> Result<(), String> {
        match self {
            Transport::Directory(dir) => {
                let eml = to_eml(m, r);
                let (dir, m) = (dir.clone(), m.clone());
                tokio::task::spawn_blocking(move || deliver_file(&dir, &m, &eml))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
            Transport::Smtp(smtp) => {
                use lettre::AsyncTransport;
                let to = r.to.parse().map_err(|e| format!("recipient: {e}"))?;
                let message = lettre::Message::builder()
                    .from(smtp.from.clone())
                    .to(to)
                    .subject(r.subject.clone())
                    .message_id(Some(format!("<{}@tenantry.outbox>", message_name(m))))
                    .header(lettre::message::header::ContentType::TEXT_PLAIN)
                    // 7-bit when it can be (ASCII, lines under 998 bytes: the token stays on one
                    // line a reader can copy), else what lettre chooses.
                    .body(
                        lettre::message::Body::new_with_encoding(
                            r.body.clone(),
                            lettre::message::header::ContentTransferEncoding::SevenBit,
                        )
                        .unwrap_or_else(lettre::message::Body::new),
                    )
                    .map_err(|e| e.to_string())?;
                smtp.mailer
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Transport::None => Err("no transport".into()),
        }
    }
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub to: String,
    pub subject: String,
    pub body: String,
}

/// The text of a message owed, secrets included (derived, never stored).
pub fn render(app: &App, m: &OutboxMessage) -> Rendered {
    let tenant_name = app
        .identity
        .tenant(m.tenant)
        .map(|t| t.name)
        .unwrap_or_default();
    let base = app.config.public_url.trim_end_matches('/');
    match m.kind {
        MessageKind::Invite => {
            let token = crate::invites::invite_token(app, m.tenant, m.message_id);
            let role = m.role.map(|r| r.as_str()).unwrap_or("viewer");
            Rendered {
                to: m.email.clone(),
                subject: format!("You are invited to {tenant_name} on Tenantry"),
                body: format!(
                    "You are invited to join {tenant_name} as {role}.\r\n\r\n\
                     Accept before {expires} (UTC): POST {base}/v1/invites/accept with \
                     {{\"token\": \"{token}\", \"name\": \"Your Name\"}}\r\n\r\n\
                     Invite token: {token}\r\n",
                    expires = store::format_rfc3339_micros(m.expires_at),
                ),
            }
        }
        MessageKind::SignInCode => {
            let code = crate::invites::sign_in_code(app, m.tenant, m.message_id);
            Rendered {
                to: m.email.clone(),
                subject: format!("Your Tenantry sign-in code for {tenant_name}"),
                body: format!(
                    "Your sign-in code is {code}.\r\n\r\nIt works once, until {expires} (UTC).\r\n",
                    expires = store::format_rfc3339_micros(m.expires_at),
                ),
            }
        }
    }
}

/// An RFC 5322 message of `r`, with a Message-ID made of the message's id (a repeated delivery
/// is recognizably the same message).
pub fn to_eml(m: &OutboxMessage, r: &Rendered) -> String {
    format!(
        "Message-ID: <{id}@tenantry.outbox>\r\nTo: {to}\r\nFrom: Tenantry <no-reply@tenantry.invalid>\r\n\
         Subject: {subject}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}",
        id = message_name(m),
        to = r.to,
        subject = r.subject,
        body = r.body,
    )
}

/// A message's name: its id and its expiry (an invite sent again, with a new expiry, is a new
/// message; the same message delivered again has the same name).
fn message_name(m: &OutboxMessage) -> String {
    format!("{}-{}", m.message_id, m.expires_at.unix_timestamp_nanos())
}

fn deliver_file(dir: &std::path::Path, m: &OutboxMessage, eml: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = message_name(m);
    let path = dir.join(format!("{name}.eml"));
    let tmp = dir.join(format!(".{name}.eml.tmp"));
    std::fs::write(&tmp, eml)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)
}

/// What the worker remembers between passes: messages handed over whose delivery the read
/// model has not applied yet (`None`), and failed ones with the time of their next try.
pub type InFlight = Mutex<HashMap<(uuid::Uuid, i128), Option<std::time::Instant>>>;

/// A message handed to the transport, by its key, with the event that records it.
type Handed = ((uuid::Uuid, i128), MessageDelivered);

/// How long a failed delivery waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// The most deliveries one pass attempts.
const PER_PASS: usize = 1_000;

/// Deliver what is owed now, once each: returns how many were delivered. Messages are handed to
/// the transport one by one; their deliveries are recorded per tenant in one append.
pub async fn deliver_owed(app: &App, transport: &Transport, in_flight: &InFlight) -> usize {
    if matches!(transport, Transport::None) {
        return 0;
    }
    let now = app.clock.now();
    let owed_now = app.identity.outbox(usize::MAX);
    let mut attempted = 0;
    let mut handed: HashMap<domain::TenantId, Vec<Handed>> = HashMap::new();
    let failed = |key: (uuid::Uuid, i128), what: &str, e: String| {
        tracing::warn!(message = %key.0, error = %e, "{what}; tried again in 30 s");
        in_flight
            .lock()
            .expect("outbox lock")
            .insert(key, Some(std::time::Instant::now() + RETRY_AFTER));
    };
    for m in &owed_now {
        if attempted == PER_PASS {
            break;
        }
        let key = (m.message_id, m.expires_at.unix_timestamp_nanos());
        {
            let mut held = in_flight.lock().expect("outbox lock");
            match held.get(&key) {
                Some(None) => continue,
                Some(Some(retry_at)) if *retry_at > std::time::Instant::now() => continue,
                _ => {}
            }
            held.insert(key, None);
        }
        attempted += 1;
        // A code or invite past its time is not worth sending; it leaves the outbox recorded as
        // delivered nowhere (`expired`).
        let via = if m.expires_at <= now {
            "expired"
        } else {
            if let Err(e) = transport.deliver(m, &render(app, m)).await {
                failed(key, "outbox delivery failed", e);
                continue;
            }
            transport.name()
        };
        handed.entry(m.tenant).or_default().push((
            key,
            MessageDelivered {
                message_id: m.message_id,
                kind: m.kind,
                via: via.to_owned(),
                expires_at: Some(m.expires_at),
            },
        ));
    }
    let mut delivered = 0;
    for (tenant, batch) in handed {
        let command = TenantCommand::RecordDeliveries {
            deliveries: batch.iter().map(|(_, d)| d.clone()).collect(),
        };
        let ctx = app.ctx(store::Metadata {
            actor: "system:outbox".into(),
            ..store::Metadata::system()
        });
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
                delivered += batch.len();
            }
            Err(e) => {
                for (key, _) in batch {
                    failed(key, "delivery not recorded", e.to_string());
                }
            }
        }
    }
    // Forget what the read model no longer owes (its delivery was applied).
    let owed: HashSet<(uuid::Uuid, i128)> = app
        .identity
        .outbox(usize::MAX)
        .into_iter()
        .map(|m| (m.message_id, m.expires_at.unix_timestamp_nanos()))
        .collect();
    in_flight
        .lock()
        .expect("outbox lock")
        .retain(|key, _| owed.contains(key));
    delivered
}

/// Start the delivery worker of a served application: it looks at what is owed every
/// `every` and delivers it.
pub fn start(app: &Arc<App>, transport: Transport, every: Duration) {
    if matches!(transport, Transport::None) {
        tracing::warn!("no outbox transport configured: invites and sign-in codes wait in the log");
        return;
    }
    let weak = Arc::downgrade(app);
    tokio::spawn(async move {
        let in_flight = InFlight::default();
        loop {
            tokio::time::sleep(every).await;
            let Some(app) = weak.upgrade() else { return };
            deliver_owed(&app, &transport, &in_flight).await;
        }
    });
}
