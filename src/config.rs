//! Configuration: what an operator can set, where it comes from, and the
//! checks that refuse a bad value before anything runs.
//!
//! A [`Config`] is read from JSON (the bext `[plugins.<name>]` section, which
//! bext hands over as JSON), from the OpenTelemetry environment variables
//! (`OTEL_SERVICE_NAME`, `OTEL_EXPORTER_ZIPKIN_ENDPOINT`,
//! `OTEL_EXPORTER_ZIPKIN_TIMEOUT` in milliseconds), or built in code with
//! struct-update syntax over [`Config::default`]. Unknown JSON fields are
//! refused, so a typo never silently falls back to a default.
//!
//! Invariant: a `Config` that passed [`Config::validate`] has an `http` or
//! `https` endpoint with a host, non-zero timeouts and limits within the
//! bounds documented on each field. Every error names the field and the
//! value that was refused, except where the value may be a secret: header
//! values ([`Secret`]) are never printed, in errors or in `Debug`, and a
//! JSON error says where (line, column), never quoting the config.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A refused configuration value: which field, what value, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config field `{field}` = {value}: {reason}")]
pub struct ConfigError {
    /// The field (or environment variable) that was refused.
    pub field: String,
    /// The refused value, rendered for a human.
    pub value: String,
    /// Why it was refused.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &str, value: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.to_owned(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// A value that must not be printed (a header value: a bearer token, a
/// key). `Debug` and errors show its length only; serde reads and writes
/// it as the plain string.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for sending.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(v: &str) -> Self {
        Secret(v.to_owned())
    }
}

impl From<String> for Secret {
    fn from(v: String) -> Self {
        Secret(v)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"<redacted, {} bytes>\"", self.0.len())
    }
}

/// TLS for an `https` endpoint, named after the OpenTelemetry Collector's
/// client settings. Without `ca_file`, the platform's trust store is used
/// (a CA installed in the OS works as it does for curl). There is no way
/// to skip verification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// A PEM bundle of CA certificates: trust exactly these.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate (chain) for mutual TLS; with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// The name to verify the server's certificate against (and send as
    /// SNI), when it is not the endpoint's host (an endpoint given by IP).
    pub server_name: Option<String>,
}

/// How request bodies are written; both are what Zipkin's
/// `POST /api/v2/spans` and the OpenTelemetry Collector's zipkin receiver
/// take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Zipkin v2 JSON, `Content-Type: application/json`.
    #[default]
    Json,
    /// Zipkin's protocol buffers (`zipkin.proto3.ListOfSpans`),
    /// `Content-Type: application/x-protobuf`.
    Proto3,
}

impl Encoding {
    /// The request's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Proto3 => "application/x-protobuf",
        }
    }
}

/// Everything spillway can be told. Durations are in milliseconds.
///
/// ```
/// use spillway::Config;
/// let cfg = Config::from_json(r#"{"service_name": "shop", "sample_ratio": 0.5}"#).unwrap();
/// assert_eq!(cfg.service_name, "shop");
/// assert!(Config::from_json(r#"{"endpoint": "ftp://x"}"#).unwrap_err().to_string().contains("endpoint"));
/// // In code: name what you set, take the rest from the defaults.
/// let cfg = Config { service_name: "shop".into(), ..Config::default() };
/// assert!(cfg.validate().is_ok());
/// ```
///
/// Minor releases add fields (each with a default that keeps the old
/// behaviour), so build a `Config` from JSON or with `..Config::default()`
/// as above, never by listing every field. The struct is deliberately not
/// `#[non_exhaustive]`: that would forbid the `..Config::default()` form
/// outside this crate, the way bext sites and tests build it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `localEndpoint.serviceName` of every span (Zipkin lower-cases it).
    pub service_name: String,
    /// The Zipkin v2 collector URL, `http://` or `https://`.
    pub endpoint: String,
    /// Whole-request timeout, 1 ms to 10 minutes.
    pub timeout_ms: u64,
    /// Connect timeout, 1 ms up to `timeout_ms`.
    pub connect_timeout_ms: u64,
    /// Compress request bodies with gzip (`Content-Encoding: gzip`).
    pub gzip: bool,
    /// gzip level, 0 to 9; 1 is fast and already shrinks JSON ~20x.
    pub gzip_level: u32,
    /// The request body's format: `"json"` (Zipkin v2 JSON, the default)
    /// or `"proto3"` (Zipkin's `ListOfSpans`, fewer bytes on a thin link).
    /// The spool does not depend on it: records are encoded at send time.
    pub encoding: Encoding,
    /// Extra request headers, for example `Authorization` for a collector
    /// that authenticates. Their values are never printed.
    pub headers: BTreeMap<String, Secret>,
    /// TLS settings for an `https` endpoint.
    pub tls: Tls,
    /// Fraction of new traces recorded, 0.0 to 1.0 (decided on the trace id).
    pub sample_ratio: f64,
    /// Adopt a valid parent handle this tracer did not create as a remote
    /// parent (same trace id, `parentId` = its span id) instead of rooting.
    pub adopt_remote_parent: bool,
    /// Spans per request, 1 to 100,000.
    pub max_batch_spans: usize,
    /// Uncompressed body bytes per request, 1 KiB to 64 MiB (Zipkin refuses
    /// bodies over 10 MiB by default).
    pub max_request_bytes: usize,
    /// Requests sent side by side at most, 1 to 64, each on its own
    /// connection: the window starts at one and follows the collector
    /// (one more while it takes everything, half on 429, 503 or a timeout).
    pub max_requests_in_flight: usize,
    /// Ended spans held in memory between flushes, 1 to 100,000,000.
    pub max_queue_spans: usize,
    /// Spans started and not yet ended, 64 to 1,073,741,824: a bound on the
    /// memory of spans a host starts and never ends. Past it (rounded up to
    /// a multiple of 64, one share per shard) `start_span` returns `INVALID`,
    /// counted as `refused_live_full`.
    pub max_live_spans: usize,
    /// Spans kept in memory for a later retry after a failed export
    /// (until the durable spool takes over), 0 to 100,000,000.
    pub max_retry_spans: usize,
    /// Attributes kept per span, 1 to 65,536 (OpenTelemetry's default: 128).
    pub max_attributes_per_span: u32,
    /// Events kept per span, 0 to 65,536 (OpenTelemetry's default: 128).
    pub max_events_per_span: u32,
    /// Where the durable spool lives; without one, failed batches are kept
    /// in memory only (`max_retry_spans`) and lost when the process exits.
    pub spool_dir: Option<PathBuf>,
    /// Cap on the spool's records, 1 MiB to 1 TiB; past it the oldest go first.
    pub max_spool_bytes: u64,
    /// Optional age cap on spooled records, 1 ms to 365 days: older records
    /// are dropped (counted as `spool_expired`) before replay. Zipkin's
    /// query API looks back a day by default.
    pub max_spool_age_ms: Option<u64>,
    /// The most spans one flush replays from the backlog, 1 to 10,000,000:
    /// a ceiling an operator may set. The pace itself follows the collector
    /// (from 1,024 spans a flush, doubling while the collector takes
    /// everything until it first shows congestion, then growing by 1,024 a
    /// flush; halving on 429, 503 and timeouts), and fresh spans always go
    /// first.
    pub replay_budget_spans: usize,
    /// Time replay may take per flush, 1 ms to 10 minutes (checked between
    /// records; a request in flight is bounded by `timeout_ms`).
    pub replay_budget_ms: u64,
    /// Optional cap on the bytes replay puts on the wire a second (request
    /// bodies, retries included), 1 KiB/s to 10 GiB/s, for metered links:
    /// the backlog drains no faster. Fresh spans are not held back by it.
    pub replay_max_bytes_per_s: Option<u64>,
    /// The most a flush takes, 1 ms to 10 minutes, whatever the collector
    /// and the disk do: every request gets at most what is left, and what
    /// is not done by then is left, counted, for the spool's thread or the
    /// next flush. Also the budget of `shutdown`.
    pub flush_timeout_ms: u64,
    /// First wait after the collector failed most requests (the circuit
    /// opened); doubles per such flush (full jitter). A request that fails
    /// alone is retried within the flush instead.
    pub backoff_initial_ms: u64,
    /// Longest retry delay, a collector's `Retry-After` included.
    pub backoff_max_ms: u64,
}

/// The longest `service_name`: every span carries it.
pub const MAX_SERVICE_NAME_BYTES: usize = 1024;

/// The default collector endpoint, a Zipkin server on this machine.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:9411/api/v2/spans";

impl Default for Config {
    fn default() -> Self {
        Config {
            service_name: "bext".to_owned(),
            endpoint: DEFAULT_ENDPOINT.to_owned(),
            timeout_ms: 10_000,
            connect_timeout_ms: 2_000,
            gzip: true,
            gzip_level: 1,
            encoding: Encoding::Json,
            headers: BTreeMap::new(),
            tls: Tls::default(),
            sample_ratio: 1.0,
            adopt_remote_parent: false,
            max_batch_spans: 512,
            max_request_bytes: 4 << 20,
            max_requests_in_flight: 4,
            max_queue_spans: 65_536,
            max_live_spans: 262_144,
            max_retry_spans: 65_536,
            max_attributes_per_span: 128,
            max_events_per_span: 128,
            spool_dir: None,
            max_spool_bytes: 512 << 20,
            max_spool_age_ms: None,
            replay_budget_ms: 2_000,
            replay_max_bytes_per_s: None,
            flush_timeout_ms: 5_000,
            replay_budget_spans: 10_000_000,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 300_000,
        }
    }
}

/// Reads a file an option or field names (a config, a header file, a PEM
/// file): opened without blocking, so a FIFO or a device cannot hold the
/// caller; refused unless it is a regular file; at most `max` bytes.
pub fn read_file(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(bytes)
}

/// The most an option file may hold: far above any real config, header
/// file or PEM bundle.
pub const MAX_OPTION_FILE_BYTES: u64 = 4 << 20;

/// A source of environment variables, so tests need not mutate the process's.
pub trait Env {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

impl Config {
    /// Parses the JSON plugin section and validates it.
    pub fn from_json(json: &str) -> Result<Config, ConfigError> {
        let mut de = serde_json::Deserializer::from_str(json);
        let cfg: Config =
            serde_path_to_error::deserialize(&mut de).map_err(|e| json_error(e.inner(), &e.path().to_string()))?;
        de.end().map_err(|e| json_error(&e, "."))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Like [`Config::from_json`], from an already parsed JSON value.
    pub fn from_value(value: serde_json::Value) -> Result<Config, ConfigError> {
        let text = value.to_string();
        Self::from_json(&text)
    }

    /// Defaults overlaid with the OpenTelemetry environment variables.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::default().with_env(&ProcessEnv)
    }

    /// Overlays `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_ZIPKIN_ENDPOINT` and
    /// `OTEL_EXPORTER_ZIPKIN_TIMEOUT` (milliseconds) on this config, then
    /// validates. An unset or empty variable leaves the field as it is.
    pub fn with_env(mut self, env: &dyn Env) -> Result<Config, ConfigError> {
        let get = |name: &str| env.var(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("OTEL_SERVICE_NAME") {
            self.service_name = v;
        }
        if let Some(v) = get("OTEL_EXPORTER_ZIPKIN_ENDPOINT") {
            self.endpoint = v;
        }
        if let Some(v) = get("OTEL_EXPORTER_ZIPKIN_TIMEOUT") {
            self.timeout_ms = v
                .trim()
                .parse()
                .map_err(|_| ConfigError::new("OTEL_EXPORTER_ZIPKIN_TIMEOUT", &v, "expected whole milliseconds"))?;
            self.connect_timeout_ms = self.connect_timeout_ms.min(self.timeout_ms);
        }
        self.validate()?;
        Ok(self)
    }

    /// Checks every field; the error names the first one refused.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_endpoint(&self.endpoint)?;
        validate_service_name(&self.service_name)?;
        range("timeout_ms", self.timeout_ms, 1, 600_000)?;
        range("connect_timeout_ms", self.connect_timeout_ms, 1, self.timeout_ms)?;
        range("gzip_level", self.gzip_level.into(), 0, 9)?;
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::new(
                "sample_ratio",
                self.sample_ratio,
                "must be between 0.0 and 1.0",
            ));
        }
        range("max_batch_spans", self.max_batch_spans as u64, 1, 100_000)?;
        range("max_request_bytes", self.max_request_bytes as u64, 1024, 64 << 20)?;
        range("max_requests_in_flight", self.max_requests_in_flight as u64, 1, 64)?;
        range("max_queue_spans", self.max_queue_spans as u64, 1, 100_000_000)?;
        range("max_live_spans", self.max_live_spans as u64, 64, 1 << 30)?;
        range("max_retry_spans", self.max_retry_spans as u64, 0, 100_000_000)?;
        range(
            "max_attributes_per_span",
            self.max_attributes_per_span.into(),
            1,
            65_536,
        )?;
        range("max_events_per_span", self.max_events_per_span.into(), 0, 65_536)?;
        range("max_spool_bytes", self.max_spool_bytes, 1 << 20, 1 << 40)?;
        range("replay_budget_spans", self.replay_budget_spans as u64, 1, 10_000_000)?;
        range("replay_budget_ms", self.replay_budget_ms, 1, 600_000)?;
        range("flush_timeout_ms", self.flush_timeout_ms, 1, 600_000)?;
        if let Some(per_s) = self.replay_max_bytes_per_s {
            range("replay_max_bytes_per_s", per_s, 1 << 10, 10 << 30)?;
        }
        if let Some(age) = self.max_spool_age_ms {
            range("max_spool_age_ms", age, 1, 365 * 86_400_000)?;
        }
        range("backoff_initial_ms", self.backoff_initial_ms, 0, 3_600_000)?;
        range(
            "backoff_max_ms",
            self.backoff_max_ms,
            self.backoff_initial_ms,
            86_400_000,
        )?;
        if self.spool_dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err(ConfigError::new("spool_dir", "\"\"", "must not be empty"));
        }
        validate_headers(&self.headers)?;
        validate_tls(&self.tls)?;
        Ok(())
    }

    /// The whole-request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The most one flush (or a shutdown) takes.
    pub fn flush_timeout(&self) -> Duration {
        Duration::from_millis(self.flush_timeout_ms)
    }
}

fn range(field: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            field,
            value,
            format!("must be between {min} and {max}"),
        ))
    }
}

/// Query parameters whose values are taken for secrets (matched as a part
/// of the lowercased name).
const SECRET_PARAMS: [&str; 9] = [
    "token",
    "key",
    "secret",
    "password",
    "passwd",
    "auth",
    "sig",
    "credential",
    "session",
];

/// `endpoint` fit for a message: credentials in the URL and the values of
/// query parameters that look like secrets (`api_key`, `token`, `sig`, ...)
/// replaced by `***`. Text that is not a URL is returned as it is.
pub(crate) fn redact_url(endpoint: &str) -> String {
    let Ok(mut url) = url::Url::parse(endpoint) else {
        return endpoint.to_owned();
    };
    if !url.username().is_empty() {
        let _ = url.set_username("***");
    }
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let lower = k.to_ascii_lowercase();
                let secret = SECRET_PARAMS.iter().any(|s| lower.contains(s));
                (k.into_owned(), if secret { "***".to_owned() } else { v.into_owned() })
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// A service name: not blank, at most [`MAX_SERVICE_NAME_BYTES`], no
/// control characters.
fn validate_service_name(name: &str) -> Result<(), ConfigError> {
    if name.trim().is_empty() {
        return Err(ConfigError::new("service_name", "\"\"", "must not be empty"));
    }
    if name.len() > MAX_SERVICE_NAME_BYTES {
        return Err(ConfigError::new(
            "service_name",
            format!("({} bytes)", name.len()),
            format!("must be at most {MAX_SERVICE_NAME_BYTES} bytes"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ConfigError::new(
            "service_name",
            name.escape_default(),
            "must not hold control characters",
        ));
    }
    Ok(())
}

/// Each header a valid HTTP name and value; a value is never echoed.
fn validate_headers(headers: &BTreeMap<String, Secret>) -> Result<(), ConfigError> {
    for (name, value) in headers {
        let field = format!("headers.{name}");
        ureq::http::HeaderName::try_from(name.as_str())
            .map_err(|_| ConfigError::new(&field, format!("{name:?}"), "not a valid HTTP header name"))?;
        let bad = value.0.bytes().position(|b| (b < 0x20 && b != b'\t') || b == 0x7f);
        if let Some(at) = bad.or_else(|| ureq::http::HeaderValue::try_from(value.0.as_str()).err().map(|_| 0)) {
            return Err(ConfigError::new(
                &field,
                format!("<redacted, {} bytes>", value.0.len()),
                format!("not a valid HTTP header value (a control character at byte {at})"),
            ));
        }
    }
    Ok(())
}

/// A client certificate and its key together; a server name not blank.
fn validate_tls(tls: &Tls) -> Result<(), ConfigError> {
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        let (field, missing) = if tls.cert_file.is_some() {
            ("tls.key_file", "tls.cert_file is set")
        } else {
            ("tls.cert_file", "tls.key_file is set")
        };
        return Err(ConfigError::new(field, "none", format!("must be set when {missing}")));
    }
    if tls.server_name.as_ref().is_some_and(|n| n.trim().is_empty()) {
        return Err(ConfigError::new("tls.server_name", "\"\"", "must not be empty"));
    }
    Ok(())
}

fn validate_endpoint(endpoint: &str) -> Result<(), ConfigError> {
    let shown = redact_url(endpoint);
    let bad = |reason: &str| ConfigError::new("endpoint", format!("{shown:?}"), reason);
    let url = url::Url::parse(endpoint).map_err(|e| bad(&format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("credentials in the URL would be logged; use `headers`"));
    }
    Ok(())
}

/// Turns serde's message into a field-naming error that quotes nothing of
/// the config (it may hold a token): `path` is where the error is (as
/// serde_path_to_error gives it, `.` at the top), and serde_json names an
/// unknown field in backticks; string values it quotes are replaced, and
/// the place is given as line and column.
fn json_error(e: &serde_json::Error, path: &str) -> ConfigError {
    let msg = e.to_string();
    let named = msg.split('`').nth(1).filter(|f| !f.is_empty() && msg.contains("field"));
    let path = Some(path).filter(|p| *p != "." && !p.is_empty());
    let field = path.or(named).unwrap_or("<config>").to_owned();
    // Drop what serde appends itself (" at line L column C") and any
    // quoted value.
    let text = msg.split(" at line ").next().unwrap_or_default();
    let mut reason = String::new();
    for (i, part) in text.split('"').enumerate() {
        reason.push_str(if i % 2 == 1 { "<value>" } else { part });
    }
    ConfigError {
        field,
        value: format!("(line {}, column {})", e.line(), e.column()),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_defaults_to_json_and_reads_proto3() {
        assert_eq!(Config::default().encoding, Encoding::Json);
        let cfg = Config::from_json(r#"{"encoding": "proto3"}"#).unwrap();
        assert_eq!(cfg.encoding, Encoding::Proto3);
        assert_eq!(cfg.encoding.content_type(), "application/x-protobuf");
        let text = serde_json::to_string(&cfg).unwrap();
        assert!(text.contains(r#""encoding":"proto3""#), "{text}");
    }

    #[test]
    fn secrets_in_the_endpoint_are_never_shown() {
        assert_eq!(
            redact_url("https://user:pw@z:9411/api/v2/spans?api_key=s3cr3t&region=eu&Sig=abc"),
            "https://***:***@z:9411/api/v2/spans?api_key=***&region=eu&Sig=***"
        );
        assert_eq!(redact_url("http://z:9411/api/v2/spans"), "http://z:9411/api/v2/spans");
        let err = Config {
            endpoint: "http://user:hunter2@127.0.0.1:9411/api/v2/spans".into(),
            ..Config::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("credentials") && !err.contains("hunter2"), "{err}");
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn each_bad_value_names_its_field() {
        let cases = [
            (r#"{"endpoint": "not a url"}"#, "endpoint"),
            (r#"{"endpoint": "ftp://host/x"}"#, "endpoint"),
            (r#"{"endpoint": "http://u:p@host/x"}"#, "endpoint"),
            (r#"{"timeout_ms": 0}"#, "timeout_ms"),
            (
                r#"{"timeout_ms": 100, "connect_timeout_ms": 200}"#,
                "connect_timeout_ms",
            ),
            (r#"{"sample_ratio": 1.5}"#, "sample_ratio"),
            (r#"{"sample_ratio": -0.1}"#, "sample_ratio"),
            (r#"{"max_batch_spans": 0}"#, "max_batch_spans"),
            (r#"{"max_request_bytes": 10}"#, "max_request_bytes"),
            (r#"{"max_queue_spans": 0}"#, "max_queue_spans"),
            (r#"{"max_live_spans": 63}"#, "max_live_spans"),
            (r#"{"gzip_level": 11}"#, "gzip_level"),
            (r#"{"encoding": "xml"}"#, "encoding"),
            (r#"{"encoding": 3}"#, "encoding"),
            (r#"{"service_name": " "}"#, "service_name"),
            (r#"{"service_name": "shop\u001b[2J"}"#, "service_name"),
            (r#"{"service_name": "shop\nforged line"}"#, "service_name"),
            (r#"{"headers": {"bad name": "x"}}"#, "headers.bad name"),
            (r#"{"headers": {"x-token": "a\nb"}}"#, "headers.x-token"),
            (r#"{"max_batch_spanz": 3}"#, "max_batch_spanz"),
            (r#"{"timeout_ms": "fast"}"#, "timeout_ms"),
            (r#"{"tls": {"ca_file": 3}}"#, "tls.ca_file"),
            (r#"{"tls": {"ca_fil": "x"}}"#, "tls.ca_fil"),
            (r#"{"headers": {"x-token": 5}}"#, "headers.x-token"),
            (r#"{"gzip": "yes"}"#, "gzip"),
            // Found by the fuzzer: serde's message had an empty field name.
            (
                include_str!("../fuzz/corpus/config/regression-empty-field.json"),
                "<config>",
            ),
        ];
        for (json, field) in cases {
            let err = Config::from_json(json).unwrap_err();
            assert_eq!(err.field, field, "{json} -> {err}");
            assert!(err.to_string().contains(field), "{err}");
            assert!(!err.to_string().chars().any(char::is_control), "{err:?}");
        }
        let long = Config {
            service_name: "s".repeat(MAX_SERVICE_NAME_BYTES + 1),
            ..Config::default()
        };
        let err = long.validate().unwrap_err();
        assert_eq!(err.field, "service_name");
        assert!(err.to_string().len() < 200, "the name is not repeated back: {err}");
    }

    #[test]
    fn env_overlays_otel_variables() {
        let env = |name: &str| match name {
            "OTEL_SERVICE_NAME" => Some("checkout".to_owned()),
            "OTEL_EXPORTER_ZIPKIN_ENDPOINT" => Some("https://zipkin.example:9411/api/v2/spans".to_owned()),
            "OTEL_EXPORTER_ZIPKIN_TIMEOUT" => Some("1500".to_owned()),
            _ => None,
        };
        let cfg = Config::default().with_env(&env).unwrap();
        assert_eq!(cfg.service_name, "checkout");
        assert_eq!(cfg.endpoint, "https://zipkin.example:9411/api/v2/spans");
        assert_eq!(cfg.timeout_ms, 1500);
        assert_eq!(cfg.connect_timeout_ms, 1500);
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let env = |name: &str| (name == "OTEL_EXPORTER_ZIPKIN_TIMEOUT").then(|| "10s".to_owned());
        let err = Config::default().with_env(&env).unwrap_err();
        assert_eq!(err.field, "OTEL_EXPORTER_ZIPKIN_TIMEOUT");
        let env = |name: &str| (name == "OTEL_EXPORTER_ZIPKIN_ENDPOINT").then(|| "localhost:9411".to_owned());
        assert_eq!(Config::default().with_env(&env).unwrap_err().field, "endpoint");
    }
}
