//! A small HTTP/1.1 client for one request per connection (`Connection: close`), over TCP or TLS
//! (rustls with the webpki roots, already in the workspace for PostgreSQL): what the Stripe
//! adapter needs and nothing more (ADR 024).

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Io(String),
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("bad url {0}")]
    Url(String),
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

struct Url<'a> {
    tls: bool,
    host: &'a str,
    port: u16,
    path: &'a str,
}

fn parse_url(url: &str) -> Result<Url<'_>, HttpError> {
    let bad = || HttpError::Url(url.to_owned());
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(bad());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| bad())?),
        None => (authority, if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok(Url {
        tls,
        host,
        port,
        path,
    })
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// `POST url` with `body` and `headers`; the whole exchange within `timeout`.
pub async fn post(
    url: &str,
    headers: &[(&str, String)],
    content_type: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Response, HttpError> {
    tokio::time::timeout(timeout, exchange(url, headers, content_type, body))
        .await
        .map_err(|_| HttpError::Timeout)?
}

async fn exchange(
    url: &str,
    headers: &[(&str, String)],
    content_type: &str,
    body: &[u8],
) -> Result<Response, HttpError> {
    let u = parse_url(url)?;
    let tcp = TcpStream::connect((u.host, u.port))
        .await
        .map_err(|e| HttpError::Io(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nUser-Agent: tenantry\r\n",
        u.path,
        u.host,
        body.len()
    );
    for (k, v) in headers {
        if v.contains(['\r', '\n']) {
            return Err(HttpError::Url(format!("header {k} has a line break")));
        }
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    if u.tls {
        let name = rustls::pki_types::ServerName::try_from(u.host.to_owned())
            .map_err(|_| HttpError::Url(url.to_owned()))?;
        let stream = tokio_rustls::TlsConnector::from(tls_config())
            .connect(name, tcp)
            .await
            .map_err(|e| HttpError::Io(e.to_string()))?;
        roundtrip(stream, head.as_bytes(), body).await
    } else {
        roundtrip(tcp, head.as_bytes(), body).await
    }
}

async fn roundtrip<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    head: &[u8],
    body: &[u8],
) -> Result<Response, HttpError> {
    let io = |e: std::io::Error| HttpError::Io(e.to_string());
    s.write_all(head).await.map_err(io)?;
    s.write_all(body).await.map_err(io)?;
    s.flush().await.map_err(io)?;
    let mut buf = Vec::new();
    // A server may close without TLS close_notify; what was read is what we have.
    match s.read_to_end(&mut buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => {}
        Err(e) => return Err(io(e)),
    }
    parse_response(&buf)
}

/// Parse a whole HTTP/1.1 response (Content-Length, chunked, or read to the end).
pub fn parse_response(buf: &[u8]) -> Result<Response, HttpError> {
    let bad = |w: &str| HttpError::Malformed(w.to_owned());
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &buf[end + 4..];
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut out = Vec::new();
        let mut r = rest;
        loop {
            let i = r
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or_else(|| bad("chunk size"))?;
            let size_text = std::str::from_utf8(&r[..i]).map_err(|_| bad("chunk size"))?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("chunk size"))?;
            r = &r[i + 2..];
            if size == 0 {
                break;
            }
            if r.len() < size + 2 {
                return Err(bad("truncated chunk"));
            }
            out.extend_from_slice(&r[..size]);
            r = &r[size + 2..];
        }
        out
    } else if let Some(n) = get("content-length") {
        let n: usize = n.parse().map_err(|_| bad("content-length"))?;
        if rest.len() < n {
            return Err(bad("truncated body"));
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// `application/x-www-form-urlencoded` of `pairs`.
pub fn form(pairs: &[(&str, String)]) -> String {
    fn enc(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(char::from(b))
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_with_length_or_chunks_and_forms_encode() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hi"[..]));
        let r = parse_response(
            b"HTTP/1.1 402 Payment Required\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (402, &b"abcde"[..]));
        assert_eq!(
            form(&[("metadata[invoice]", "TEN-1 x".into())]),
            "metadata%5Binvoice%5D=TEN-1+x"
        );
        assert!(parse_url("ftp://x").is_err());
        let u = parse_url("https://api.stripe.com/v1/payment_intents").unwrap();
        assert_eq!(
            (u.tls, u.host, u.port, u.path),
            (true, "api.stripe.com", 443, "/v1/payment_intents")
        );
    }
}
