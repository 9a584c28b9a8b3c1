//! Toxiproxy in front of a real receiver, for link faults: a server of the
//! test's own on 127.0.0.1 (from `SPILLWAY_TOXIPROXY_BIN`, which
//! `scripts/test.sh` sets), stopped when dropped, driven by its HTTP API.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A Toxiproxy server of the test's own.
pub struct Toxiproxy {
    api: String,
    child: Child,
}

impl Toxiproxy {
    pub fn start() -> Toxiproxy {
        let bin = std::env::var_os("SPILLWAY_TOXIPROXY_BIN")
            .unwrap_or_else(|| panic!("SPILLWAY_TOXIPROXY_BIN is not set: run the suite with scripts/test.sh"));
        let port = super::free_port();
        let child = Command::new(bin)
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start toxiproxy");
        let t = Toxiproxy {
            api: format!("http://127.0.0.1:{port}"),
            child,
        };
        super::wait_for("Toxiproxy to answer", Duration::from_secs(20), || {
            ureq::get(&format!("{}/version", t.api)).call().ok()
        });
        t
    }

    /// A proxy to `upstream` (`host:port`) on a free port of 127.0.0.1;
    /// returns the address it listens on.
    pub fn proxy(&self, name: &str, upstream: &str) -> String {
        let body = serde_json::json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream});
        let answer = ureq::post(&format!("{}/proxies", self.api))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .expect("create proxy")
            .into_body()
            .read_to_string()
            .expect("proxy answer");
        let answer: serde_json::Value = serde_json::from_str(&answer).expect("proxy JSON");
        answer["listen"].as_str().expect("listen address").to_owned()
    }

    /// Adds a toxic (`type` as Toxiproxy names it, `stream` "upstream" or
    /// "downstream", the share of connections it applies to, its
    /// attributes) to proxy `name`.
    pub fn toxic(&self, name: &str, kind: &str, stream: &str, toxicity: f64, attributes: serde_json::Value) {
        let body = serde_json::json!({"type": kind, "stream": stream, "toxicity": toxicity, "attributes": attributes});
        ureq::post(&format!("{}/proxies/{name}/toxics", self.api))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .expect("add toxic");
    }
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
