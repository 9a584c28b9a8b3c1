//! spillway honours `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` as curl
//! does (ureq reads them): shown through a real forward proxy on
//! 127.0.0.1 (Debian's tinyproxy, which `.ci/run` installs) in front of
//! the real Zipkin.

use crate::common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proxy {
    port: u16,
    log: std::path::PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Proxy {
    fn start() -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::common::free_port();
        let log = dir.path().join("proxy.log");
        let conf = dir.path().join("tinyproxy.conf");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 30\nLogFile \"{}\"\nLogLevel Info\nMaxClients 20\n",
                log.display()
            ),
        )
        .unwrap();
        let child = Command::new("tinyproxy")
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy (Debian's tinyproxy, installed by .ci/run)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tinyproxy did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Proxy {
            port,
            log,
            child,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn replay(spool: &Path, env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_spillway"));
    cmd.env_remove("SPILLWAY_SPOOL")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .arg("--spool")
        .arg(spool)
        .args([
            "replay",
            "--endpoint",
            &format!("{}/api/v2/spans", common::zipkin_url()),
        ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn spool_of(dir: &Path, service: &str) {
    let t = spillway::SpillwayTracer::new(spillway::Config {
        service_name: service.to_owned(),
        ..common::spool_config(&common::refused_url(), dir)
    })
    .unwrap();
    common::record(&t, 40, "GET /proxied");
    assert!(t.try_flush().is_err());
}

#[test]
fn replay_goes_through_http_proxy_and_no_proxy_bypasses_it() {
    let proxy = Proxy::start();
    let root = tempfile::tempdir().unwrap();
    let via = format!("http://127.0.0.1:{}", proxy.port);

    let service = format!("proxied-{:08x}", fastrand::u32(..));
    let spool = root.path().join("a");
    spool_of(&spool, &service);
    let out = replay(&spool, &[("HTTP_PROXY", via.clone())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(common::zipkin_ids(&service, 40).len(), 40);
    // ureq tunnels through the proxy (CONNECT), for http targets too.
    let target = common::zipkin_url().trim_start_matches("http://").to_owned();
    let tunnel = format!("CONNECT {target}");
    let seen = proxy.log();
    assert!(seen.contains(&tunnel), "the request went through the proxy: {seen}");

    let before = proxy.log().len();
    let service = format!("bypassed-{:08x}", fastrand::u32(..));
    let spool = root.path().join("b");
    spool_of(&spool, &service);
    let out = replay(&spool, &[("HTTP_PROXY", via), ("NO_PROXY", "127.0.0.1".into())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(common::zipkin_ids(&service, 40).len(), 40);
    assert!(!proxy.log()[before..].contains(&tunnel), "NO_PROXY bypassed the proxy");
}
