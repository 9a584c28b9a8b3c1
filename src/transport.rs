//! Sending one encoded batch to the collector, and saying what happened.
//!
//! The transport owns the HTTP client (ureq), the timeouts, gzip, the
//! content type and the extra headers, and classifies each outcome ([`SendError::class`]) so the
//! exporter can decide: delivered (2xx), [`Class::Retry`] later (connect
//! failure, DNS failure, timeout, reset, 408, 429, 5xx; any `Retry-After`
//! kept), [`Class::Misconfigured`] (401, 403, 404, 405, 407, 410, 415: the
//! endpoint, the credentials or the encoding are wrong, not the spans, so
//! they are kept and retried later like an outage), [`Class::TooLarge`]
//! (413: split and try the halves), or [`Class::Rejected`] (400 and any
//! other 4xx: split to find the spans refused for good).
//!
//! Every request is bounded in time by the smaller of the configured
//! timeout and what the caller has left (its flush deadline), covering the
//! connection, the request and the whole response body, so a collector
//! that trickles its answer cannot hold a flush.
//!
//! It knows nothing of spans, batches or the spool: bytes in, verdict out.
//! Its requests are never traced (ureq is not instrumented and nothing here
//! calls a tracer), so exporting can never feed itself. Redirects are not
//! followed: a POST that moved is a configuration error to surface.

use crate::config::{Config, ConfigError};
use std::io::{Read, Write};
use std::time::Duration;

/// What the exporter should do with a batch that was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Class {
    /// Keep it and try again later.
    Retry,
    /// The collector refuses every request whatever it holds: the endpoint,
    /// the credentials or the encoding are wrong. Keep the spans and try
    /// again later; fixing the configuration lets the backlog flow.
    Misconfigured,
    /// The body was too large (413): split the batch and retry the halves.
    TooLarge,
    /// The collector refused these spans (400 or another 4xx): split the
    /// batch to find the refused ones, which are kept for good elsewhere.
    Rejected,
}

/// Why a batch was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No connection could be made (refused, DNS failure, no route).
    #[error("unreachable ({0})")]
    Unreachable(String),
    /// A timeout elapsed (connect or whole request).
    #[error("timed out ({0})")]
    Timeout(String),
    /// The connection broke or the answer was not HTTP.
    #[error("failed mid-request ({0})")]
    Broken(String),
    /// The TLS handshake failed: an unknown CA, a name that does not match,
    /// a missing or refused client certificate.
    #[error("TLS: {0}")]
    Tls(String),
    /// The collector answered with a non-2xx status.
    #[error("answered HTTP {status}{}{}", reason(*status), if body.is_empty() { String::new() } else { format!(": {body}") })]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The `Retry-After` the collector asked for, if any.
        retry_after: Option<Duration>,
        /// The start of the response body, for the operator.
        body: String,
    },
}

impl SendError {
    /// What to do about it.
    pub fn class(&self) -> Class {
        match self {
            SendError::Status { status, .. } => match *status {
                413 => Class::TooLarge,
                408 | 429 => Class::Retry,
                401 | 403 | 404 | 405 | 407 | 410 | 415 => Class::Misconfigured,
                400..=499 => Class::Rejected,
                _ => Class::Retry,
            },
            SendError::Tls(_) => Class::Misconfigured,
            _ => Class::Retry,
        }
    }

    /// What an operator should check when the collector refuses every
    /// request ([`Class::Misconfigured`]).
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SendError::Status { status, .. } => match *status {
                401 | 403 | 407 => Some("check the credentials (headers)"),
                404 | 405 | 410 => Some("check the endpoint"),
                415 => Some("check the encoding (gzip)"),
                _ => None,
            },
            SendError::Tls(_) => Some(
                "check tls.ca_file (the CA that signed the collector's certificate), tls.server_name, and tls.cert_file and tls.key_file if it asks for a client certificate",
            ),
            _ => None,
        }
    }

    /// Whether the collector or the link is overloaded (429, 503, a
    /// timeout): the replay pace halves (see `export::pace`).
    pub fn is_congestion(&self) -> bool {
        matches!(
            self,
            SendError::Timeout(_) | SendError::Status { status: 429 | 503, .. }
        )
    }

    /// The `Retry-After` the collector asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SendError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// ` Not Found` for 404: the reason phrase operators know, where it is one.
fn reason(status: u16) -> String {
    ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map_or_else(String::new, |r| format!(" {r}"))
}

/// Sends encoded Zipkin spans somewhere. Implemented by [`HttpTransport`];
/// tests and the fuzzer substitute their own.
pub trait Transport: Send {
    /// POSTs one encoded body of spans (a JSON array or a proto3
    /// `ListOfSpans`), taking at most `timeout` (the
    /// caller's remaining time; the configured timeout still applies).
    fn send(&mut self, body: &[u8], timeout: Duration) -> Result<(), SendError>;
    /// Where it sends, for messages.
    fn endpoint(&self) -> &str;
    /// Another transport to the same collector with the same settings
    /// (and its own connection), so requests can go side by side; `None`
    /// (the default) keeps them one at a time.
    fn try_clone(&self) -> Option<Box<dyn Transport>> {
        None
    }
}

/// The ureq-backed transport.
pub struct HttpTransport {
    agent: ureq::Agent,
    /// Where requests go (the endpoint, with `tls.server_name` as host).
    target: String,
    /// The endpoint as configured, for messages, its secrets redacted
    /// (`config::redact_url`).
    endpoint: String,
    /// `application/json` or `application/x-protobuf`, per `encoding`.
    content_type: &'static str,
    gzip: Option<flate2::Compression>,
    headers: Vec<(String, String)>,
    gz_buf: Vec<u8>,
    timeout: Duration,
}

/// How much of an error response body is kept for the message.
const ERROR_BODY_BYTES: usize = 200;
/// How much of a response body is read (and dropped) so the connection
/// can be reused.
const DRAIN_BODY_BYTES: u64 = 64 << 10;

/// Reads a PEM file named by the config field `field`.
fn pem(field: &str, path: &std::path::Path) -> Result<Vec<u8>, ConfigError> {
    crate::config::read_file(path, crate::config::MAX_OPTION_FILE_BYTES)
        .map_err(|e| ConfigError::new(field, path.display(), format!("cannot be read ({e})")))
}

/// The TLS settings of `config` for ureq: the platform's trust store, or
/// exactly the CAs of `tls.ca_file`; the client certificate of
/// `tls.cert_file` and `tls.key_file`. Verification is never skipped.
fn tls_config(config: &Config) -> Result<ureq::tls::TlsConfig, ConfigError> {
    use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
    let mut tls = TlsConfig::builder().root_certs(RootCerts::PlatformVerifier);
    if let Some(path) = &config.tls.ca_file {
        let bytes = pem("tls.ca_file", path)?;
        let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&bytes)
            .filter_map(|item| match item {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(ConfigError::new(
                "tls.ca_file",
                path.display(),
                "holds no PEM certificate",
            ));
        }
        tls = tls.root_certs(RootCerts::new_with_certs(&certs));
    }
    if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
        let bytes = pem("tls.cert_file", cert)?;
        let chain: Vec<Certificate<'static>> = ureq::tls::parse_pem(&bytes)
            .filter_map(|item| match item {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if chain.is_empty() {
            return Err(ConfigError::new(
                "tls.cert_file",
                cert.display(),
                "holds no PEM certificate",
            ));
        }
        let key_bytes = pem("tls.key_file", key)?;
        let key_pem = PrivateKey::from_pem(&key_bytes)
            .map_err(|_| ConfigError::new("tls.key_file", key.display(), "holds no PEM private key"))?;
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key_pem)));
    }
    Ok(tls.build())
}

/// Sends to `tls.server_name` instead of the endpoint's host (so the
/// certificate is checked against that name, and it goes as SNI), while
/// connecting to the endpoint's host: ureq's resolver, asked for the
/// server name, resolves the real host instead.
#[derive(Debug)]
struct ConnectTo {
    name: String,
    host: String,
    inner: ureq::unversioned::resolver::DefaultResolver,
}

impl ureq::unversioned::resolver::Resolver for ConnectTo {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        if uri.host() != Some(self.name.as_str()) {
            return self.inner.resolve(uri, config, timeout);
        }
        let port = uri.port_u16().map_or_else(String::new, |p| format!(":{p}"));
        let real: ureq::http::Uri = format!("https://{}{port}/", self.host)
            .parse()
            .map_err(|_| ureq::Error::HostNotFound)?;
        self.inner.resolve(&real, config, timeout)
    }
}

impl HttpTransport {
    /// A transport for `config`'s endpoint, timeouts, gzip, headers and TLS.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let agent_config = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout()))
            .timeout_connect(Some(config.connect_timeout()))
            .http_status_as_error(false)
            .max_redirects(0)
            // One kept-alive connection for each request side by side.
            .max_idle_connections_per_host(config.max_requests_in_flight.max(1))
            .tls_config(tls_config(config)?)
            .user_agent(concat!("spillway/", env!("CARGO_PKG_VERSION")))
            .build();
        let mut endpoint = config.endpoint.clone();
        let agent = match &config.tls.server_name {
            Some(name) => {
                let mut url = url::Url::parse(&config.endpoint)
                    .map_err(|e| ConfigError::new("endpoint", &config.endpoint, e.to_string()))?;
                let host = url.host_str().unwrap_or_default().to_owned();
                url.set_host(Some(name))
                    .map_err(|e| ConfigError::new("tls.server_name", name, e.to_string()))?;
                endpoint = url.to_string();
                let resolver = ConnectTo {
                    name: name.clone(),
                    host,
                    inner: ureq::unversioned::resolver::DefaultResolver::default(),
                };
                ureq::Agent::with_parts(
                    agent_config,
                    ureq::unversioned::transport::DefaultConnector::default(),
                    resolver,
                )
            }
            None => agent_config.into(),
        };
        Ok(HttpTransport {
            agent,
            endpoint: crate::config::redact_url(&config.endpoint),
            target: endpoint,
            content_type: config.encoding.content_type(),
            gzip: config.gzip.then(|| flate2::Compression::new(config.gzip_level)),
            headers: config
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                .collect(),
            gz_buf: Vec::new(),
            timeout: config.timeout(),
        })
    }

    /// A response body with every header value sent (a token the
    /// collector may echo back) blotted out, before any of it is shown.
    fn redact(&self, mut body: Vec<u8>) -> Vec<u8> {
        // The whole value, and each long word of it (the token of
        // `Bearer <token>`, echoed alone).
        let secrets = self
            .headers
            .iter()
            .flat_map(|(_, v)| std::iter::once(v.as_str()).chain(v.split_whitespace().filter(|w| w.len() >= 8)));
        for secret in secrets {
            let secret = secret.as_bytes();
            if secret.len() < 4 {
                continue;
            }
            let mut out = Vec::with_capacity(body.len());
            let mut rest = &body[..];
            while let Some(at) = memchr::memmem::find(rest, secret) {
                out.extend_from_slice(&rest[..at]);
                out.extend_from_slice(b"<redacted>");
                rest = &rest[at + secret.len()..];
            }
            out.extend_from_slice(rest);
            body = out;
        }
        body
    }

    fn compress(&mut self, body: &[u8], level: flate2::Compression) -> std::io::Result<()> {
        let mut buf = std::mem::take(&mut self.gz_buf);
        buf.clear();
        let mut enc = flate2::write::GzEncoder::new(buf, level);
        enc.write_all(body)?;
        self.gz_buf = enc.finish()?;
        Ok(())
    }
}

impl Clone for HttpTransport {
    /// The same collector and settings, sharing the agent's connection
    /// pool; its own gzip buffer.
    fn clone(&self) -> Self {
        HttpTransport {
            agent: self.agent.clone(),
            target: self.target.clone(),
            endpoint: self.endpoint.clone(),
            content_type: self.content_type,
            gzip: self.gzip,
            headers: self.headers.clone(),
            gz_buf: Vec::new(),
            timeout: self.timeout,
        }
    }
}

impl Transport for HttpTransport {
    fn try_clone(&self) -> Option<Box<dyn Transport>> {
        Some(Box::new(self.clone()))
    }

    fn send(&mut self, body: &[u8], timeout: Duration) -> Result<(), SendError> {
        if timeout.is_zero() {
            return Err(SendError::Timeout("no time left in this flush".into()));
        }
        let mut req = self
            .agent
            .post(&self.target)
            .config()
            .timeout_global(Some(timeout.min(self.timeout)))
            .build()
            .header("Content-Type", self.content_type);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let result = match self.gzip {
            Some(level) => {
                self.compress(body, level)
                    .map_err(|e| SendError::Broken(format!("gzip: {e}")))?;
                req.header("Content-Encoding", "gzip").send(&self.gz_buf[..])
            }
            None => req.send(body),
        };
        let response = result.map_err(|e| classify(e, &self.endpoint))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let mut body = Vec::new();
        // Read (a bounded part of) the body so the connection can be reused;
        // a failure here does not change the verdict the status gave.
        let _ = response
            .into_body()
            .into_reader()
            .take(DRAIN_BODY_BYTES)
            .read_to_end(&mut body);
        if (200..300).contains(&status) {
            return Ok(());
        }
        Err(SendError::Status {
            status,
            retry_after,
            body: printable(&self.redact(body), ERROR_BODY_BYTES),
        })
    }

    fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// The start of a response body, fit for an operator's terminal: at most
/// `max` bytes, valid UTF-8, every control character escaped (a collector
/// cannot move the cursor or retitle the window through an error message).
pub fn printable(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(max)]);
    let mut out = String::with_capacity(text.len());
    for c in text.trim().chars() {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    if body.len() > max {
        out.push_str("...");
    }
    out
}

/// Whether an error is the TLS layer's (rustls reports through I/O errors
/// during the handshake, and ureq through its own variants).
fn is_tls(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) | ureq::Error::TlsRequired => true,
        ureq::Error::Io(io) => {
            let text = io.to_string().to_ascii_lowercase();
            io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
                || ["certificate", "handshake", "tls", "alert"]
                    .iter()
                    .any(|w| text.contains(w))
        }
        _ => false,
    }
}

fn classify(e: ureq::Error, endpoint: &str) -> SendError {
    use std::io::ErrorKind;
    if is_tls(&e) {
        let host = url::Url::parse(endpoint)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        let reason = match &e {
            ureq::Error::Io(io) => io.to_string(),
            other => other.to_string(),
        };
        return SendError::Tls(format!("{reason} for {host}"));
    }
    let https = endpoint.starts_with("https://");
    match e {
        // Over TLS 1.3 a collector refuses a missing client certificate
        // after the handshake, so the client sees its request cut off.
        ureq::Error::Io(io) if https && matches!(io.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
            SendError::Broken(format!(
                "{io}; over TLS this is also how a collector refuses a client certificate it wants: check tls.cert_file and tls.key_file"
            ))
        }
        ureq::Error::Timeout(t) => SendError::Timeout(t.to_string()),
        ureq::Error::HostNotFound => SendError::Unreachable("host not found".into()),
        ureq::Error::ConnectionFailed => SendError::Unreachable("connection failed".into()),
        ureq::Error::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused => SendError::Unreachable("connection refused".into()),
            ErrorKind::TimedOut | ErrorKind::WouldBlock => SendError::Timeout(io.to_string()),
            ErrorKind::NotFound
            | ErrorKind::AddrNotAvailable
            | ErrorKind::NetworkUnreachable
            | ErrorKind::HostUnreachable => SendError::Unreachable(io.to_string()),
            _ => SendError::Broken(io.to_string()),
        },
        other => SendError::Broken(other.to_string()),
    }
}

/// `Retry-After` as delta-seconds or an HTTP date; capped at one hour so a
/// confused collector cannot park the exporter for days.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    const CAP: Duration = Duration::from_secs(3600);
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(CAP));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(CAP),
    )
}

#[cfg(test)]
mod tests;
