//! Sending one encoded batch to the collector, and saying what happened.
//!
//! The transport owns the HTTP client (ureq), the timeouts, gzip and the
//! extra headers, and classifies each outcome ([`SendError::class`]) so the
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
            _ => None,
        }
    }

    /// The delay the collector asked for with `Retry-After`.
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

/// Sends encoded Zipkin JSON somewhere. Implemented by [`HttpTransport`];
/// tests and the fuzzer substitute their own.
pub trait Transport: Send {
    /// POSTs one JSON array of spans, taking at most `timeout` (the
    /// caller's remaining time; the configured timeout still applies).
    fn send(&mut self, json: &[u8], timeout: Duration) -> Result<(), SendError>;
    /// Where it sends, for messages.
    fn endpoint(&self) -> &str;
}

/// The ureq-backed transport.
pub struct HttpTransport {
    agent: ureq::Agent,
    endpoint: String,
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

impl HttpTransport {
    /// A transport for `config`'s endpoint, timeouts, gzip and headers.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout()))
            .timeout_connect(Some(config.connect_timeout()))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("spillway/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(HttpTransport {
            agent,
            endpoint: config.endpoint.clone(),
            gzip: config.gzip.then(|| flate2::Compression::new(config.gzip_level)),
            headers: config.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            gz_buf: Vec::new(),
            timeout: config.timeout(),
        })
    }

    fn compress(&mut self, json: &[u8], level: flate2::Compression) -> std::io::Result<()> {
        let mut buf = std::mem::take(&mut self.gz_buf);
        buf.clear();
        let mut enc = flate2::write::GzEncoder::new(buf, level);
        enc.write_all(json)?;
        self.gz_buf = enc.finish()?;
        Ok(())
    }
}

impl Transport for HttpTransport {
    fn send(&mut self, json: &[u8], timeout: Duration) -> Result<(), SendError> {
        if timeout.is_zero() {
            return Err(SendError::Timeout("no time left in this flush".into()));
        }
        let mut req = self
            .agent
            .post(&self.endpoint)
            .config()
            .timeout_global(Some(timeout.min(self.timeout)))
            .build()
            .header("Content-Type", "application/json");
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let result = match self.gzip {
            Some(level) => {
                self.compress(json, level)
                    .map_err(|e| SendError::Broken(format!("gzip: {e}")))?;
                req.header("Content-Encoding", "gzip").send(&self.gz_buf[..])
            }
            None => req.send(json),
        };
        let response = result.map_err(classify)?;
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
            body: printable(&body, ERROR_BODY_BYTES),
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

fn classify(e: ureq::Error) -> SendError {
    use std::io::ErrorKind;
    match e {
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
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let status = |status| SendError::Status {
            status,
            retry_after: None,
            body: String::new(),
        };
        assert_eq!(status(500).class(), Class::Retry);
        assert_eq!(status(503).class(), Class::Retry);
        assert_eq!(status(408).class(), Class::Retry);
        assert_eq!(status(429).class(), Class::Retry);
        assert_eq!(status(413).class(), Class::TooLarge);
        assert_eq!(status(400).class(), Class::Rejected);
        assert_eq!(status(422).class(), Class::Rejected);
        for s in [401, 403, 404, 405, 407, 410, 415] {
            assert_eq!(status(s).class(), Class::Misconfigured, "{s}");
            assert!(status(s).hint().is_some());
        }
        assert_eq!(status(404).to_string(), "answered HTTP 404 Not Found");
        assert_eq!(SendError::Unreachable("x".into()).class(), Class::Retry);
    }

    #[test]
    fn bodies_are_cut_and_their_control_characters_escaped() {
        assert_eq!(printable(b" oops\n", 200), "oops");
        assert_eq!(printable(b"\x1b]0;owned\x07 x", 200), "\\u{1b}]0;owned\\u{7} x");
        assert_eq!(printable(&[b'a'; 300], 200).len(), 203);
        assert_eq!(printable(b"\xff\xfe", 200), "\u{fffd}\u{fffd}");
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("999999"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
