//! TLS to a collector that operators would run: the real OpenTelemetry
//! Collector's Zipkin receiver over TLS, with certificates made here
//! (rcgen). A collector whose CA is trusted (`tls.ca_file`, `--ca-file`)
//! gets the spans; one whose CA is unknown, or that wants a client
//! certificate it is not given, is a configuration fault: the spans stay
//! in the spool, the error says `TLS` and what to check, and `replay` exits
//! 1 at once. `tls.server_name` checks the certificate against another
//! name than the endpoint's host.

use crate::common;

use common::otelcol::{Collector, Tls, wait_spans};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A CA, a server certificate it signed for `names`, and a client
/// certificate it signed; all as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path, names: &[&str]) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "spillway test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(names.iter().map(|s| s.to_string()).collect());
    let (client_cert, client_key) = leaf(vec!["spillway-client".to_owned()]);
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    }
}

fn tracer(url: &str, spool: &Path, tls: spillway::Tls, service: &str) -> spillway::SpillwayTracer {
    spillway::SpillwayTracer::new(spillway::Config {
        service_name: service.to_owned(),
        tls,
        ..common::spool_config(url, spool)
    })
    .unwrap()
}

fn service(tag: &str) -> String {
    format!("tls-{tag}-{:08x}", fastrand::u32(..))
}

#[test]
fn a_collector_whose_ca_is_trusted_gets_the_spans_one_whose_is_not_keeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), &["localhost", "127.0.0.1"]);
    let c = Collector::start(Some(Tls {
        cert_file: &pki.server_cert,
        key_file: &pki.server_key,
        client_ca_file: None,
    }));
    let url = format!("https://127.0.0.1:{}/api/v2/spans", c.port);

    let svc = service("trusted");
    let trusted = spillway::Tls {
        ca_file: Some(pki.ca.clone()),
        ..spillway::Tls::default()
    };
    let t = tracer(&url, &dir.path().join("a"), trusted, &svc);
    common::record(&t, 50, "GET /tls");
    t.try_flush().unwrap();
    assert_eq!(wait_spans(&c.out, &svc, 50).len(), 50);

    // The platform's trust store does not know this CA.
    let svc = service("unknown");
    let spool = dir.path().join("b");
    let t = tracer(&url, &spool, spillway::Tls::default(), &svc);
    common::record(&t, 50, "GET /tls");
    let err = t.try_flush().unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("TLS: ") && msg.contains("for 127.0.0.1") && msg.contains("tls.ca_file"),
        "{msg}"
    );
    assert!(err.misconfigured(), "{msg}");
    let s = t.stats();
    assert_eq!(
        (s.spooled, s.dropped.total(), s.dead_lettered),
        (50, 0, 0),
        "kept, not dead-lettered: {s:?}"
    );
    drop(t);

    // The CLI: refused at once, exit 1; with --ca-file, delivered.
    let began = Instant::now();
    let out = spillway(&spool, &["replay", "--endpoint", &url]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(began.elapsed() < Duration::from_secs(5), "at once, not retried");
    let out = spillway(
        &spool,
        &["replay", "--endpoint", &url, "--ca-file", pki.ca.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(wait_spans(&c.out, &svc, 50).len(), 50);
}

#[test]
fn a_collector_that_wants_a_client_certificate_gets_one_or_the_spans_wait() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), &["localhost", "127.0.0.1"]);
    let c = Collector::start(Some(Tls {
        cert_file: &pki.server_cert,
        key_file: &pki.server_key,
        client_ca_file: Some(&pki.ca),
    }));
    let url = format!("https://127.0.0.1:{}/api/v2/spans", c.port);
    let svc = service("mtls");
    let spool = dir.path().join("spool");
    let no_cert = spillway::Tls {
        ca_file: Some(pki.ca.clone()),
        ..spillway::Tls::default()
    };
    let t = tracer(&url, &spool, no_cert, &svc);
    common::record(&t, 30, "GET /mtls");
    let err = t.try_flush().unwrap_err();
    // TLS 1.3 refuses after the handshake: a TLS alert, or the request
    // cut off; either way the error points at the client certificate.
    let msg = err.to_string();
    assert!(msg.contains("tls.cert_file"), "{msg}");
    assert_eq!(t.stats().spooled, 30, "kept: {msg}");
    drop(t);
    let out = spillway(
        &spool,
        &["replay", "--endpoint", &url, "--ca-file", pki.ca.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let out = spillway(
        &spool,
        &[
            "replay",
            "--endpoint",
            &url,
            "--ca-file",
            pki.ca.to_str().unwrap(),
            "--cert",
            pki.client_cert.to_str().unwrap(),
            "--key",
            pki.client_key.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(wait_spans(&c.out, &svc, 30).len(), 30);
}

#[test]
fn server_name_checks_the_certificate_against_another_name_than_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), &["collector.test"]);
    let c = Collector::start(Some(Tls {
        cert_file: &pki.server_cert,
        key_file: &pki.server_key,
        client_ca_file: None,
    }));
    let url = format!("https://127.0.0.1:{}/api/v2/spans", c.port);
    let svc = service("sni");
    let mut tls = spillway::Tls {
        ca_file: Some(pki.ca.clone()),
        ..spillway::Tls::default()
    };
    let t = tracer(&url, &dir.path().join("a"), tls.clone(), &svc);
    common::record(&t, 10, "GET /sni");
    let err = t.try_flush().unwrap_err();
    assert!(err.to_string().contains("TLS"), "the name does not match: {err}");
    drop(t);
    tls.server_name = Some("collector.test".into());
    let t = tracer(&url, &dir.path().join("b"), tls, &svc);
    common::record(&t, 10, "GET /sni");
    t.try_flush().unwrap();
    assert!(wait_spans(&c.out, &svc, 10).len() >= 10);
}

use common::spillway;
