//! Where and how the commands that send (`replay`, `generate`) reach the
//! collector: the library's configuration, from the same sources in the
//! same order, plus what an operator needs on a command line.
//!
//! Precedence, lowest first: the defaults, `--config FILE` (the library's
//! JSON config, the bext plugin section), the OpenTelemetry variables
//! (`OTEL_SERVICE_NAME`, `OTEL_EXPORTER_ZIPKIN_ENDPOINT`,
//! `OTEL_EXPORTER_ZIPKIN_TIMEOUT`), then flags. A bad value is refused,
//! naming the flag, the variable or the field, with exit code 2; a header
//! value or a credential is never printed.

use spillway::Config;
use spillway::config::Secret;
use std::path::PathBuf;

/// A usage or configuration error: rendered by `main`, exit code 2.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

impl From<spillway::ConfigError> for Usage {
    fn from(e: spillway::ConfigError) -> Self {
        Usage(e.to_string())
    }
}

/// The collector options of a command that sends.
#[derive(clap::Args, Debug, Default)]
pub struct Collector {
    /// Zipkin v2 collector URL (else OTEL_EXPORTER_ZIPKIN_ENDPOINT, else the
    /// --config file's).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// A request header, `Name: value` as curl takes it; repeatable. For a
    /// token, prefer --header-file: argv is visible to other users.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// A file of request headers, one `Name: value` per line (blank lines and
    /// lines starting with `#` skipped); it must not be readable by others.
    #[arg(long, value_name = "FILE")]
    pub header_file: Option<PathBuf>,
    /// A PEM bundle of the CAs to trust for an https endpoint (instead of
    /// the platform's trust store).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate for mutual TLS (with --key).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The PEM private key of --cert.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The library's JSON configuration (the bext plugin section): its
    /// endpoint, headers, TLS, timeouts and limits.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Request timeout in milliseconds (else OTEL_EXPORTER_ZIPKIN_TIMEOUT).
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// The request body's format: Zipkin v2 JSON, or Zipkin's proto3
    /// ListOfSpans (fewer bytes; Zipkin and the OpenTelemetry Collector
    /// take both). Else the --config file's, else json.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub encoding: Option<Encoding>,
}

/// `--encoding`'s values, as the config spells them.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Encoding {
    Json,
    Proto3,
}

impl Collector {
    /// The configuration these options, the environment and `base` make,
    /// validated.
    pub fn config(&self, base: Config) -> Result<Config, Usage> {
        let mut config = match &self.config {
            Some(path) => {
                let text = read_option_file("--config", path)?;
                let mut c: Config = serde_json::from_str::<serde_json::Value>(&text)
                    .map_err(|e| {
                        Usage(format!(
                            "--config {}: not JSON (line {}, column {})",
                            path.display(),
                            e.line(),
                            e.column()
                        ))
                    })
                    .and_then(|v| {
                        Config::from_value(v).map_err(|e| Usage(format!("--config {}: {e}", path.display())))
                    })?;
                // What the command sets for itself (its spool, its limits)
                // stays the command's.
                c.spool_dir = base.spool_dir.clone();
                c.max_spool_bytes = base.max_spool_bytes;
                c
            }
            None => base,
        };
        config = config.with_env(&spillway::config::ProcessEnv)?;
        if let Some(e) = &self.endpoint {
            config.endpoint = e.clone();
        }
        if let Some(encoding) = self.encoding {
            config.encoding = match encoding {
                Encoding::Json => spillway::Encoding::Json,
                Encoding::Proto3 => spillway::Encoding::Proto3,
            };
        }
        if let Some(t) = self.timeout_ms {
            config.timeout_ms = t;
            config.connect_timeout_ms = config.connect_timeout_ms.min(t.max(1));
        }
        for h in &self.headers {
            let (name, value) = header(h).ok_or_else(|| {
                Usage(format!(
                    "--header: expected `Name: value`, got a line without `:` ({} bytes)",
                    h.len()
                ))
            })?;
            config.headers.insert(name, value);
        }
        if let Some(path) = &self.header_file {
            for (name, value) in header_file(path)? {
                config.headers.insert(name, value);
            }
        }
        if self.ca_file.is_some() {
            config.tls.ca_file = self.ca_file.clone();
        }
        if self.cert.is_some() || self.key.is_some() {
            config.tls.cert_file = self.cert.clone();
            config.tls.key_file = self.key.clone();
        }
        config.validate()?;
        Ok(config)
    }
}

/// The text of a file an option names, bounded and never blocking (see
/// `spillway::config::read_file`).
fn read_option_file(option: &str, path: &std::path::Path) -> Result<String, Usage> {
    let bytes = spillway::config::read_file(path, spillway::config::MAX_OPTION_FILE_BYTES)
        .map_err(|e| Usage(format!("{option} {}: cannot be read ({e})", path.display())))?;
    String::from_utf8(bytes).map_err(|_| Usage(format!("{option} {}: not UTF-8 text", path.display())))
}

/// `Name: value`, curl's syntax.
fn header(line: &str) -> Option<(String, Secret)> {
    let (name, value) = line.split_once(':')?;
    Some((
        name.trim().to_owned(),
        Secret::from(value.trim_start().trim_end_matches(['\r', '\n'])),
    ))
}

/// The headers of a header file, refusing one others can read.
fn header_file(path: &std::path::Path) -> Result<Vec<(String, Secret)>, Usage> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| Usage(format!("--header-file {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o044 != 0 {
        return Err(Usage(format!(
            "--header-file {}: its mode is {mode:04o}, readable by group or others; `chmod 600` it first",
            path.display()
        )));
    }
    let text = read_option_file("--header-file", path)?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let h = header(line).ok_or_else(|| {
            Usage(format!(
                "--header-file {} line {}: expected `Name: value`",
                path.display(),
                n + 1
            ))
        })?;
        out.push(h);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_as_curl_takes_them() {
        let (n, v) = header("Authorization: Bearer abc").unwrap();
        assert_eq!((n.as_str(), v.expose()), ("Authorization", "Bearer abc"));
        let (n, v) = header("X-Key:v:w").unwrap();
        assert_eq!((n.as_str(), v.expose()), ("X-Key", "v:w"));
        assert!(header("no colon").is_none());
    }
}
