//! How the store reaches PostgreSQL: the connection URL with libpq's `sslmode` (which
//! tokio-postgres only partly understands), TLS through rustls, and URLs that never show their
//! password when printed.

use crate::error::{Result, StoreError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::str::FromStr;
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, all of it: what the connection requires and what it checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS when the server offers it, unverified; plain TCP otherwise (libpq's default).
    Prefer,
    /// TLS or no connection; the certificate is not checked (libpq's meaning of `require`).
    Require,
    /// TLS, and the server's certificate chains to a trusted root; the name is not checked.
    VerifyCa,
    /// TLS, a trusted chain, and a certificate issued for the host connected to.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(StoreError::Backend(format!(
                    "invalid PostgreSQL URL: sslmode {other:?} is not one of disable, prefer, \
                     require, verify-ca, verify-full"
                )));
            }
        })
    }
}

/// A parsed connection: tokio-postgres's config (its `sslmode` reduced to what it knows) and
/// the TLS connector that carries the checks of the full mode.
#[derive(Clone)]
pub(crate) struct Connect {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) tls: MakeRustlsConnect,
    pub(crate) mode: SslMode,
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tokio-postgres's own Debug redacts the password.
        f.debug_struct("Connect")
            .field("config", &self.config)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Parse a `postgres://` URL (or a `key=value` string): `sslmode` and `sslrootcert` are taken
/// out and handled here, the rest goes to tokio-postgres. Errors never repeat the URL.
pub(crate) fn parse(url: &str) -> Result<Connect> {
    let (rest, mode, root_cert) = take_ssl_params(url)?;
    let mut config = tokio_postgres::Config::from_str(&rest)
        .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL URL: {e}")))?;
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    let tls = connector(mode, root_cert.as_deref())?;
    Ok(Connect { config, tls, mode })
}

/// The URL without its `sslmode` and `sslrootcert` parameters, and their values.
fn take_ssl_params(url: &str) -> Result<(String, SslMode, Option<String>)> {
    let mut mode = None;
    let mut root_cert = None;
    let mut take = |key: &str, value: &str| -> Result<bool> {
        match key {
            "sslmode" => mode = Some(value.parse::<SslMode>()?),
            "sslrootcert" => root_cert = Some(percent_decode(value)),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((head, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(k, v)? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    head.to_owned()
                } else {
                    format!("{head}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for pair in url.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(k, v)? {
                kept.push(pair);
            }
        }
        kept.join(" ")
    };
    Ok((rest, mode.unwrap_or(SslMode::Prefer), root_cert))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn connector(mode: SslMode, root_cert: Option<&str>) -> Result<MakeRustlsConnect> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(StoreError::backend)?;
    let config = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let mut roots = RootCertStore::empty();
            match root_cert {
                Some(path) => {
                    let certs = CertificateDer::pem_file_iter(path)
                        .map_err(|e| StoreError::Backend(format!("sslrootcert {path}: {e}")))?
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(|e| StoreError::Backend(format!("sslrootcert {path}: {e}")))?;
                    let (added, _) = roots.add_parsable_certificates(certs);
                    if added == 0 {
                        return Err(StoreError::Backend(format!(
                            "sslrootcert {path} holds no usable certificate"
                        )));
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(StoreError::backend)?;
            if mode == SslMode::VerifyFull {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                    .with_no_client_auth()
            }
        }
    };
    Ok(MakeRustlsConnect::new(config))
}

/// `prefer` and `require`: encryption without authentication, as libpq does. The handshake's
/// signatures are still checked, against whatever certificate the server sent.
#[derive(Debug)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: a trusted chain, whatever name the certificate carries.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The URL with its password replaced by `***` (in the authority or as a `password`
/// parameter), fit for logs and `Debug`.
pub(crate) fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    // URL form: the user-info runs from `://` to the last `@` (a password may hold `/`, `?` or
    // `:` unencoded, which tokio-postgres accepts; a host never holds `@`).
    if let Some(start) = out.find("://").map(|i| i + 3)
        && let Some(at) = out[start..].rfind('@').map(|j| start + j)
        && let Some(colon) = out[start..at].find(':').map(|j| start + j)
    {
        out.replace_range(colon + 1..at, "***");
    }
    // `password=…` as a query parameter or a key = value pair (spaces around `=`, a quoted value
    // with spaces and backslash escapes).
    let bytes = out.as_bytes();
    let lower = out.to_ascii_lowercase();
    let mut result = String::with_capacity(out.len());
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = lower[from..].find("password").map(|i| from + i) {
        from = found + "password".len();
        let starts_key = found == 0 || matches!(bytes[found - 1], b'?' | b'&' | b' ' | b'\t');
        let mut i = from;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        if !starts_key || i >= bytes.len() || bytes[i] != b'=' {
            continue;
        }
        i += 1;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let value_start = i;
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
        } else {
            while i < bytes.len() && !matches!(bytes[i], b'&' | b' ') {
                i += 1;
            }
        }
        result.push_str(&out[copied..value_start]);
        result.push_str("***");
        copied = i;
        from = i;
    }
    result.push_str(&out[copied..]);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction_in_any_accepted_spelling() {
        for (url, secret) in [
            ("host=db user=app password='my secret' dbname=t", "secret"),
            ("host=db password = spaced dbname=t", "spaced"),
            ("postgres://app:pa/ss@db/t", "pa/ss"),
            ("postgres://app:pa?ss@db/t", "pa?ss"),
            ("postgres://app:p:a@ss@db/t", "a@ss"),
            ("postgresql:///t?host=db&user=app&password=p%20q", "p%20q"),
            ("host=db PASSWORD=Upper dbname=t", "Upper"),
            ("host=db password='it\\'s' dbname=t", "it"),
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains(secret), "{url:?} -> {shown:?}");
            assert!(shown.contains("***"), "{url:?} -> {shown:?}");
            assert!(shown.contains("db"), "the rest stays readable: {shown:?}");
        }
    }

    #[test]
    fn passwords_never_survive_redaction() {
        for (url, expected) in [
            (
                "postgres://app:s3cret@db:5432/tenantry?sslmode=require",
                "postgres://app:***@db:5432/tenantry?sslmode=require",
            ),
            ("postgres://app@db/t", "postgres://app@db/t"),
            (
                "postgresql://db/t?user=app&password=s3cret&sslmode=disable",
                "postgresql://db/t?user=app&password=***&sslmode=disable",
            ),
            (
                "host=db user=app password=s3cret dbname=t",
                "host=db user=app password=*** dbname=t",
            ),
        ] {
            assert_eq!(redact_url(url), expected);
            assert!(!redact_url(url).contains("s3cret"));
        }
        let location = crate::Location::Postgres("postgres://app:s3cret@db/t".into());
        assert!(!format!("{location:?}").contains("s3cret"));
        assert!(!location.redacted().contains("s3cret"));
    }

    #[test]
    fn every_libpq_sslmode_is_understood_and_taken_out_of_the_url() {
        for (mode, expected) in [
            ("disable", SslMode::Disable),
            ("prefer", SslMode::Prefer),
            ("require", SslMode::Require),
            ("verify-ca", SslMode::VerifyCa),
            ("verify-full", SslMode::VerifyFull),
        ] {
            let url = format!("postgres://u@h/db?application_name=x&sslmode={mode}");
            let (rest, parsed, root) = take_ssl_params(&url).expect("valid");
            assert_eq!(parsed, expected);
            assert_eq!(rest, "postgres://u@h/db?application_name=x");
            assert_eq!(root, None);
            parse(&url).expect("tokio-postgres accepts what is left");
        }
        let (_, mode, _) = take_ssl_params("postgres://u@h/db").expect("valid");
        assert_eq!(mode, SslMode::Prefer, "libpq's default");
        let (rest, _, root) =
            take_ssl_params("host=h sslmode=verify-full sslrootcert=/etc/ca.pem dbname=d")
                .expect("valid");
        assert_eq!(rest, "host=h dbname=d");
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let err = take_ssl_params("postgres://u:pw@h/db?sslmode=sometimes").expect_err("refused");
        assert!(err.to_string().contains("sometimes") && !err.to_string().contains("pw"));
    }

    #[test]
    fn a_missing_root_certificate_file_is_a_clear_error() {
        let err = parse("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .expect_err("refused");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
