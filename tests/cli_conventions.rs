//! The commands that send follow the OpenTelemetry conventions the library
//! does: `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_ZIPKIN_ENDPOINT` and
//! `OTEL_EXPORTER_ZIPKIN_TIMEOUT` (flags win); a bad value, from a variable
//! or a flag, is a usage error (exit 2) naming the variable or flag and the
//! value. Against the real Zipkin (started by scripts/test.sh).

use crate::common;

use common::{wait_for, zipkin_url};
use std::process::Output;
use std::time::Duration;

use common::spillway_with as spillway;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn generate_sends_where_and_as_the_variables_say() {
    let dir = tempfile::tempdir().unwrap();
    let service = format!("conv-generate-{:08x}", fastrand::u32(..));
    let endpoint = format!("{}/api/v2/spans", zipkin_url());
    let out = spillway(
        dir.path(),
        &[
            ("OTEL_SERVICE_NAME", &service),
            ("OTEL_EXPORTER_ZIPKIN_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_ZIPKIN_TIMEOUT", "5000"),
        ],
        &["generate", "--spans", "40", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["delivered"], 40, "{report}");
    let url = format!("{}/api/v2/services", zipkin_url());
    wait_for("Zipkin to list the service", Duration::from_secs(20), || {
        let services = common::get_json(&url);
        services
            .as_array()?
            .iter()
            .any(|s| s == &serde_json::Value::from(service.as_str()))
            .then_some(())
    });
}

#[test]
fn bad_values_from_variables_or_flags_are_usage_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let ep = format!("{}/api/v2/spans", zipkin_url());
    // (variables, arguments, what the error must name)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: &[Case] = &[
        (
            &[("OTEL_EXPORTER_ZIPKIN_TIMEOUT", "10s")],
            &["generate", "--spans", "2"],
            "OTEL_EXPORTER_ZIPKIN_TIMEOUT",
        ),
        (
            &[("OTEL_EXPORTER_ZIPKIN_TIMEOUT", "10s")],
            &["replay", "--endpoint", &ep],
            "OTEL_EXPORTER_ZIPKIN_TIMEOUT",
        ),
        (
            &[("OTEL_EXPORTER_ZIPKIN_ENDPOINT", "notaurl")],
            &["generate", "--spans", "2"],
            "notaurl",
        ),
        (&[], &["generate", "--spans", "2", "--endpoint", "notaurl"], "notaurl"),
        (&[], &["replay", "--endpoint", "notaurl"], "notaurl"),
        (
            &[],
            &["generate", "--spans", "2", "--endpoint", &ep, "--timeout-ms", "0"],
            "timeout",
        ),
        (&[], &["replay", "--endpoint", &ep, "--timeout-ms", "0"], "timeout"),
        (
            &[],
            &["generate", "--spans", "2", "--endpoint", &ep, "--service", ""],
            "service",
        ),
        (
            &[],
            &["generate", "--endpoint", &ep, "--duration", "18446744073709551615s"],
            "18446744073709551615s",
        ),
        (
            &[],
            &["generate", "--endpoint", &ep, "--duration", "3381903080180084463m"],
            "3381903080180084463m",
        ),
        (&[], &["generate", "--endpoint", &ep, "--error-ratio", "1.5"], "1.5"),
        (&[], &["generate", "--endpoint", &ep, "--error-ratio", "NaN"], "NaN"),
        (
            &[],
            &["generate", "--endpoint", &ep, "--encoding", "thrift"],
            "--encoding",
        ),
        (&[], &["replay", "--endpoint", &ep, "--encoding", "xml"], "--encoding"),
    ];
    for (env, args, named) in cases {
        let out = spillway(dir.path(), env, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{env:?} {args:?}: {err}");
        assert!(err.contains(named), "{env:?} {args:?} does not name {named:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!dir.path().join("db").exists(), "a refused command opened no spool");
}

#[test]
fn a_flag_wins_over_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let ep = format!("{}/api/v2/spans", zipkin_url());
    let out = spillway(
        dir.path(),
        &[("OTEL_EXPORTER_ZIPKIN_ENDPOINT", "http://127.0.0.1:1/api/v2/spans")],
        &["generate", "--spans", "10", "--json", "--endpoint", &ep],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["delivered"], 10, "{report}");
}
