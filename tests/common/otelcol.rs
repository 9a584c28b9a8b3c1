//! The real OpenTelemetry Collector (Zipkin receiver, file exporter) as a
//! second Zipkin receiver: `scripts/test.sh` builds it (`scripts/otelcol.sh`)
//! and starts a shared one (`SPILLWAY_OTELCOL_URL`, its output in
//! `SPILLWAY_OTELCOL_OUT`); tests that need their own (TLS) start one from
//! `SPILLWAY_OTELCOL_BIN`. Bound to 127.0.0.1, its own telemetry off.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared collector's Zipkin endpoint.
pub fn url() -> String {
    let base = std::env::var("SPILLWAY_OTELCOL_URL")
        .unwrap_or_else(|_| panic!("SPILLWAY_OTELCOL_URL is not set: run the suite with scripts/test.sh"));
    format!("{base}/api/v2/spans")
}

/// The shared collector's output file (OTLP JSON lines).
pub fn out() -> PathBuf {
    std::env::var_os("SPILLWAY_OTELCOL_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("SPILLWAY_OTELCOL_OUT is not set: run the suite with scripts/test.sh"))
}

/// TLS files for a collector of one's own.
pub struct Tls<'a> {
    pub cert_file: &'a Path,
    pub key_file: &'a Path,
    /// Ask for client certificates signed by this CA.
    pub client_ca_file: Option<&'a Path>,
}

/// A collector of the test's own, stopped when dropped.
pub struct Collector {
    pub port: u16,
    pub out: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Collector {
    pub fn start(tls: Option<Tls<'_>>) -> Collector {
        let bin = std::env::var_os("SPILLWAY_OTELCOL_BIN")
            .unwrap_or_else(|| panic!("SPILLWAY_OTELCOL_BIN is not set: run the suite with scripts/test.sh"));
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let out = dir.path().join("out.jsonl");
        let tls = tls.map_or_else(String::new, |t| {
            let mut s = format!(
                "    tls:\n      cert_file: {}\n      key_file: {}\n",
                t.cert_file.display(),
                t.key_file.display()
            );
            if let Some(ca) = t.client_ca_file {
                s.push_str(&format!("      client_ca_file: {}\n", ca.display()));
            }
            s
        });
        let conf = format!(
            "receivers:\n  zipkin:\n    endpoint: 127.0.0.1:{port}\n{tls}exporters:\n  file:\n    path: {}\n    flush_interval: 100ms\n\
             service:\n  telemetry:\n    metrics:\n      level: none\n    logs:\n      level: warn\n  pipelines:\n    traces:\n      receivers: [zipkin]\n      exporters: [file]\n",
            out.display()
        );
        let conf_path = dir.path().join("config.yaml");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(bin)
            .arg("--config")
            .arg(format!("file:{}", conf_path.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let c = Collector {
            port,
            out,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the collector did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A span as the collector wrote it (OTLP JSON), with its service.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub json: serde_json::Value,
}

impl Span {
    pub fn id(&self) -> (String, String) {
        (
            self.json["traceId"].as_str().unwrap_or_default().to_owned(),
            self.json["spanId"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

/// Every span in an output file so far, duplicates included, in order.
pub fn spans(out: &Path) -> Vec<Span> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let mut spans = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        for rs in v["resourceSpans"].as_array().into_iter().flatten() {
            let service = rs["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name")
                .and_then(|a| a["value"]["stringValue"].as_str())
                .unwrap_or_default()
                .to_owned();
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    spans.push(Span {
                        service: service.clone(),
                        json: s.clone(),
                    });
                }
            }
        }
    }
    spans
}

/// The spans of `service` in `out`, once there are at least `at_least`
/// (the exporter writes every 100 ms).
pub fn wait_spans(out: &Path, service: &str, at_least: usize) -> Vec<Span> {
    super::wait_for(
        &format!("the collector to write {at_least} spans of {service}"),
        Duration::from_secs(30),
        || {
            let got: Vec<Span> = spans(out).into_iter().filter(|s| s.service == service).collect();
            (got.len() >= at_least).then_some(got)
        },
    )
}

/// Distinct (traceId, spanId) of `spans`.
pub fn ids(spans: &[Span]) -> BTreeSet<(String, String)> {
    spans.iter().map(Span::id).collect()
}
