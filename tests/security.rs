//! Spans are user data: what spillway stores is private whatever the
//! umask, a planted spool directory is refused before anything is written
//! through it, `export -o` never follows a link, and no secret (a header
//! value) reaches any output of any failure.
//!
//! Runs as root (as a site's spillway often does): the planted-directory
//! tests hand a directory to `nobody` and plant links to a victim file in
//! the test's own temporary directory.

use crate::common;

use common::{Answer, FaultServer};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MARKER: &str = "SECRET-MARKER-8d1f";

fn spillway(dir: &Path, args: &[&str]) -> Output {
    // Under umask 022, as a shell's default.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 022; exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_spillway"))
        .arg("--spool")
        .arg(dir)
        .args(args)
        .env_remove("SPILLWAY_SPOOL")
        .env_remove("OTEL_EXPORTER_ZIPKIN_ENDPOINT");
    cmd.output().expect("spillway runs")
}

fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every entry under `dir`, with its mode.
fn modes(dir: &Path) -> Vec<(PathBuf, u32, bool)> {
    let mut out = vec![(dir.to_path_buf(), std::fs::metadata(dir).unwrap().mode() & 0o7777, true)];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            out.push((e.path(), m.mode() & 0o7777, m.is_dir()));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

fn assert_private(dir: &Path, what: &str) {
    for (path, mode, is_dir) in modes(dir) {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{what}: {} is {mode:04o}", path.display());
    }
}

#[test]
fn everything_spillway_writes_is_private_under_umask_022() {
    let root = tempfile::tempdir().unwrap();
    let spool = root.path().join("spool");
    let dead = common::refused_url();
    let out = spillway(&spool, &["generate", "--json", "--spans", "4000", "--endpoint", &dead]);
    let s: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", all_output(&out)));
    assert_eq!(s["spooled"], 4000, "{s}");
    assert_private(&spool, "generate");

    let exported = root.path().join("spans.json");
    let out = spillway(&spool, &["export", "-o", exported.to_str().unwrap()]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(std::fs::metadata(&exported).unwrap().mode() & 0o777, 0o600, "export -o");

    let target = root.path().join("salvaged");
    let out = spillway(&target, &["salvage", spool.to_str().unwrap()]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert_private(&target, "salvage's output");

    // Damage the spool: its set-aside files stay private too.
    let db = spool.join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[40] ^= 0xff;
    std::fs::write(&db, bytes).unwrap();
    let out = spillway(&spool, &["salvage"]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(spillway::unstable::spool::dir::set_asides(&spool).len(), 1);
    assert_private(&spool, "set aside");
}

#[test]
fn a_spool_left_readable_by_an_older_version_is_tightened_on_open() {
    let root = tempfile::tempdir().unwrap();
    let spool = root.path().join("spool");
    drop(spillway::spool::Spool::open(&spool, u64::MAX).unwrap());
    for (path, _, is_dir) in modes(&spool) {
        let loose = if is_dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(loose)).unwrap();
    }
    drop(spillway::spool::Spool::open(&spool, u64::MAX).unwrap());
    assert_private(&spool, "reopened");
}

/// A victim file, root's and private, that planted links point at.
fn victim(root: &Path) -> (PathBuf, Vec<u8>) {
    let path = root.join("victim");
    let content = b"root's secret, untouched".to_vec();
    std::fs::write(&path, &content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (path, content)
}

#[test]
fn a_planted_spool_directory_is_refused_naming_it_and_the_victim_is_untouched() {
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let (victim, content) = victim(root.path());
    let dead = common::refused_url();

    // Another user's directory with links where the spool's files go.
    let planted = root.path().join("planted");
    std::fs::create_dir(&planted).unwrap();
    std::os::unix::fs::symlink(&victim, planted.join("db")).unwrap();
    std::os::unix::fs::symlink(&victim, planted.join(spillway::unstable::spool::ledger::FILE)).unwrap();
    std::os::unix::fs::lchown(planted.join("db"), Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    let out = spillway(&planted, &["generate", "--spans", "100", "--endpoint", &dead]);
    let text = all_output(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&planted.display().to_string()) && text.contains("owned by uid 65534"),
        "{text}"
    );

    // Ours, but writable by everyone.
    let open = root.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = spillway(&open, &["generate", "--spans", "100", "--endpoint", &dead]);
    assert!(
        all_output(&out).contains("writable by group or others"),
        "{}",
        all_output(&out)
    );

    // Ours and private, with a link planted where sled's log goes.
    let linked = root.path().join("linked");
    std::fs::create_dir(&linked).unwrap();
    std::fs::set_permissions(&linked, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&victim, linked.join("db")).unwrap();
    for args in [
        vec!["generate", "--spans", "100", "--endpoint", &dead],
        vec!["replay", "--endpoint", &dead],
        vec!["inspect"],
        vec!["salvage"],
    ] {
        let out = spillway(&linked, &args);
        let text = all_output(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        assert!(
            text.contains(&linked.join("db").display().to_string()) && text.contains("symbolic link"),
            "{args:?}: {text}"
        );
    }
    assert_eq!(std::fs::read(&victim).unwrap(), content, "the victim is untouched");
    assert_eq!(std::fs::metadata(&victim).unwrap().mode() & 0o777, 0o600);

    // The spool path itself may be a link to a directory that passes.
    let real = root.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let via = root.path().join("via");
    std::os::unix::fs::symlink(&real, &via).unwrap();
    let out = spillway(&via, &["generate", "--spans", "100", "--endpoint", &dead]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "kept in the spool, not refused: {}",
        all_output(&out)
    );
    assert!(real.join("db").is_file());
}

#[test]
fn a_set_aside_link_is_refused_and_purge_deletes_nothing_it_points_at() {
    let root = tempfile::tempdir().unwrap();
    // Directories elsewhere that a planted `set-aside` link points at.
    let elsewhere = root.path().join("elsewhere");
    std::fs::create_dir_all(elsewhere.join("keep-me")).unwrap();
    std::fs::write(elsewhere.join("keep-me/data"), b"not the spool's").unwrap();
    let (spool, dead) = spooled(root.path());
    std::os::unix::fs::symlink(&elsewhere, spool.join("set-aside")).unwrap();
    let link = spool.join("set-aside").display().to_string();
    for args in [
        vec!["purge", "--set-aside", "--yes"],
        vec!["generate", "--spans", "100", "--endpoint", &dead],
        vec!["inspect"],
    ] {
        let out = spillway(&spool, &args);
        let text = all_output(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {text}");
        assert!(
            text.contains(&link) && text.contains("symbolic link"),
            "{args:?}: {text}"
        );
    }
    assert_eq!(
        std::fs::read(elsewhere.join("keep-me/data")).unwrap(),
        b"not the spool's",
        "what the link points at is untouched"
    );
}

/// A spool under `root` holding 100 spans `generate` could not deliver,
/// and the dead endpoint it tried.
fn spooled(root: &Path) -> (PathBuf, String) {
    let spool = root.join("spool");
    let dead = common::refused_url();
    let out = spillway(&spool, &["generate", "--spans", "100", "--endpoint", &dead]);
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    (spool, dead)
}

/// A control character in text meant for a terminal: anything below a
/// space but the newline that ends a line, DEL, and the C1 codes.
fn raw_control(text: &str) -> Option<char> {
    text.chars().find(|&c| c != '\n' && c.is_control())
}

#[test]
fn no_control_character_from_a_file_reaches_the_terminal() {
    let root = tempfile::tempdir().unwrap();
    let spool = root.path().join("spool");
    // A service name that clears the screen, writes the clipboard (OSC 52)
    // and forges a line, as a crafted or foreign spool could hold.
    let evil = "shop\u{1b}[2J\u{1b}]52;c;ZXZpbA==\u{7}\nok   999 records, all sound\u{9b}31m";
    {
        let mut s = spillway::spool::Spool::open(&spool, u64::MAX).unwrap();
        let spans: Vec<_> = (0..3u64)
            .map(|i| spillway::unstable::span::Span::new([1; 16], (i + 1).to_be_bytes(), "GET /"))
            .collect();
        s.append(evil, &spans, 1).unwrap();
        s.commit().unwrap();
    }
    let aside = spool.join("set-aside").join("x\u{1b}[31mred\rok");
    std::fs::create_dir_all(&aside).unwrap();
    std::fs::set_permissions(spool.join("set-aside"), std::fs::Permissions::from_mode(0o700)).unwrap();
    for args in [vec!["inspect"], vec!["verify"], vec!["purge", "--set-aside"]] {
        let out = spillway(&spool, &args);
        let text = all_output(&out);
        assert!(
            raw_control(&text).is_none(),
            "{args:?} printed a raw control character: {text:?}"
        );
        if args[0] == "inspect" {
            assert!(out.status.success(), "{text}");
            // Escaping is for what came from the files: the report's own
            // lines stay lines.
            for line in ["queue ", "oldest ", "newest "] {
                assert!(
                    text.lines().any(|l| l.starts_with(line)),
                    "{line:?} starts a line: {text}"
                );
            }
            assert!(text.contains("shop\\u{1b}[2J"), "the name is shown, escaped: {text}");
        }
    }
}

#[test]
fn a_ledger_claiming_more_than_any_spool_holds_is_damage_not_a_count() {
    let root = tempfile::tempdir().unwrap();
    let (spool, dead) = spooled(root.path());
    // Both slots: format 2, CRC sound, 2^63 spans owed.
    let mut slot = Vec::new();
    slot.extend_from_slice(b"SPL2");
    slot.extend_from_slice(&9u32.to_le_bytes());
    for v in [1u64 << 63, 0, 1, 1] {
        slot.extend_from_slice(&v.to_le_bytes());
    }
    let crc = crc32fast::hash(&slot);
    slot.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(
        spool.join(spillway::unstable::spool::ledger::FILE),
        [&slot[..], &slot[..]].concat(),
    )
    .unwrap();
    let out = spillway(&spool, &["inspect"]);
    let text = all_output(&out);
    assert!(text.contains("ledger") && text.contains("damaged"), "{text}");
    let out = spillway(&spool, &["generate", "--spans", "10", "--json", "--endpoint", &dead]);
    let text = all_output(&out);
    assert!(!text.contains("9223372036854775"), "{text}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["dropped"].as_u64().unwrap() <= 110, "{report}");
}

#[test]
fn a_sparse_file_in_the_spool_costs_what_it_holds_not_what_it_claims() {
    let root = tempfile::tempdir().unwrap();
    let (spool, _) = spooled(root.path());
    // 2 TiB claimed, nothing used: read whole, it would take hours (and
    // as one buffer, abort); planted as a blob and as a snapshot.
    std::fs::create_dir_all(spool.join("blobs")).unwrap();
    for name in ["blobs/99999999", "snap.ffffffffffffff"] {
        let f = std::fs::File::create(spool.join(name)).unwrap();
        f.set_len(2 << 40).unwrap();
    }
    for args in [vec!["inspect"], vec!["verify"]] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_spillway"));
        cmd.arg("--spool").arg(&spool).args(&args);
        // An upper bound far above a real run, far below reading 2 TiB.
        let out = common::output_within(
            cmd,
            std::time::Duration::from_secs(300),
            &format!("{args:?} over sparse files"),
        );
        let text = all_output(&out);
        assert!(
            !text.contains("panicked") && out.status.code().is_some(),
            "{args:?}: {text}"
        );
        assert!(text.contains("sparse"), "{args:?} names the sparse file: {text}");
    }
}

#[test]
fn a_spool_under_a_directory_others_can_swap_it_in_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dead = common::refused_url();
    // World-writable, not sticky: anyone could rename the spool away and
    // put their own in its place.
    let open = root.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = spillway(&open.join("spool"), &["generate", "--spans", "10", "--endpoint", &dead]);
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&open.display().to_string()) && text.contains("not sticky"),
        "{text}"
    );
    assert!(!open.join("spool").join("db").exists(), "nothing written");
    // Owned by another user: the same.
    let theirs = root.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let out = spillway(
        &theirs.join("spool"),
        &["generate", "--spans", "10", "--endpoint", &dead],
    );
    let text = all_output(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("owned by uid 65534"), "{text}");
    // Sticky, as /tmp is: fine.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let out = spillway(&open.join("spool"), &["generate", "--spans", "10", "--endpoint", &dead]);
    assert_eq!(out.status.code(), Some(1), "kept, not refused: {}", all_output(&out));
    assert!(open.join("spool").join("db").exists());
}

#[test]
fn export_refuses_an_existing_file_and_never_follows_a_link() {
    let root = tempfile::tempdir().unwrap();
    let (victim, content) = victim(root.path());
    let spool = root.path().join("spool");
    let out = spillway(
        &spool,
        &["generate", "--spans", "200", "--endpoint", &common::refused_url()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    let link = root.path().join("out.json");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let out = spillway(&spool, &["export", "-o", link.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));
    assert!(all_output(&out).contains("--force"));
    let out = spillway(&spool, &["export", "--force", "-o", link.to_str().unwrap()]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        content,
        "the link's target is untouched"
    );
    let m = std::fs::symlink_metadata(&link).unwrap();
    assert!(
        m.is_file() && m.mode() & 0o777 == 0o600,
        "the link was replaced by the export"
    );
    let spans: serde_json::Value = serde_json::from_slice(&std::fs::read(&link).unwrap()).unwrap();
    assert_eq!(spans.as_array().unwrap().len(), 200);
}

/// Every byte of every file under `dir`, to look for the marker in.
fn bytes_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.extend(std::fs::read(e.path()).unwrap_or_default());
            }
        }
    }
    out
}

#[test]
fn no_secret_reaches_any_output_of_any_failure() {
    let root = tempfile::tempdir().unwrap();
    let auth = format!("Bearer {MARKER}");
    let header_file = root.path().join("headers");
    std::fs::write(&header_file, format!("Authorization: {auth}\n")).unwrap();
    std::fs::set_permissions(&header_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut seen = String::new();
    let mut check = |what: &str, text: String| {
        assert!(!text.contains(MARKER), "{what} printed the secret: {text}");
        seen.push_str(&text);
    };

    // Bad configuration: a header value with a newline, and JSON that
    // does not parse around it.
    let bad = spillway::Config::from_json(&format!(r#"{{"headers": {{"Authorization": "{auth}\n"}}}}"#)).unwrap_err();
    check("a bad header's error", bad.to_string());
    let bad = spillway::Config::from_json(&format!(
        r#"{{"headers": {{"Authorization": "{auth}"}}, "timeout_ms": "x"}}"#
    ))
    .unwrap_err();
    check("a JSON error", bad.to_string());
    let config = spillway::Config::from_json(&format!(r#"{{"headers": {{"Authorization": "{auth}"}}}}"#)).unwrap();
    check("Config's Debug", format!("{config:?}"));
    assert!(format!("{config:?}").contains(&format!("<redacted, {} bytes>", auth.len())));

    // Every failure class of a real send, from the library and the CLI.
    let echo = format!("denied for {auth} \u{1b}]0;owned\u{7}");
    let echo: &'static str = Box::leak(echo.into_boxed_str());
    let servers = [
        ("refused connection", None),
        (
            "401",
            Some(FaultServer::start(vec![Answer::Status(401, vec![], "who are you"); 50])),
        ),
        (
            "500 echoing headers",
            Some(FaultServer::start(vec![Answer::Status(500, vec![], echo); 50])),
        ),
    ];
    for (what, server) in &servers {
        let url = server.as_ref().map_or_else(common::refused_url, |s| s.url.clone());
        let spool = root.path().join(format!("spool-{}", what.replace(' ', "-")));
        let t = spillway::SpillwayTracer::new(spillway::Config {
            headers: config.headers.clone(),
            ..common::spool_config(&url, &spool)
        })
        .unwrap();
        common::record(&t, 50, "GET /secret");
        let err = t.try_flush().unwrap_err();
        check(what, err.to_string());
        check(what, format!("{err:?}"));
        check(what, format!("{:?}", t.stats()));
        drop(t);
        let hf = header_file.to_str().unwrap();
        for args in [
            vec!["replay", "--json", "--endpoint", &url, "--header-file", hf],
            vec!["replay", "--endpoint", &url, "--header-file", hf],
            vec![
                "generate",
                "--json",
                "--spans",
                "20",
                "--endpoint",
                &url,
                "--header-file",
                hf,
            ],
        ] {
            let out = spillway(&spool, &args);
            check(&format!("{what}: {args:?}"), all_output(&out));
            assert!(
                !all_output(&out).contains('\u{1b}'),
                "{what}: a terminal escape reached the output"
            );
        }
        if let Some(s) = server {
            let sent = s.requests();
            assert!(
                sent.iter().all(|r| r.header("authorization") == Some(auth.as_str())),
                "{what}: the header was sent"
            );
        }
        assert!(
            !String::from_utf8_lossy(&bytes_under(&spool)).contains(MARKER),
            "{what}: the spool holds the secret"
        );
    }
    // TLS failure: an https endpoint that does not speak TLS.
    let plain = FaultServer::start(vec![]);
    let https = plain.url.replace("http://", "https://");
    let out = spillway(
        &root.path().join("spool-tls"),
        &[
            "generate",
            "--spans",
            "20",
            "--endpoint",
            &https,
            "--header-file",
            header_file.to_str().unwrap(),
        ],
    );
    check("TLS failure", all_output(&out));
    assert!(
        seen.contains("redacted") || seen.contains("bytes"),
        "the checks saw the outputs"
    );
}

#[test]
fn a_header_file_others_can_read_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let file = root.path().join("headers");
    std::fs::write(&file, format!("Authorization: Bearer {MARKER}\n")).unwrap();
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = spillway(
            &root.path().join("spool"),
            &[
                "generate",
                "--spans",
                "10",
                "--endpoint",
                &common::refused_url(),
                "--header-file",
                file.to_str().unwrap(),
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{mode:o}: {}", all_output(&out));
        assert!(all_output(&out).contains("chmod 600"), "{mode:o}");
        assert!(!all_output(&out).contains(MARKER));
    }
}

#[test]
fn an_option_file_that_is_a_fifo_or_a_device_is_refused_without_waiting() {
    let root = tempfile::tempdir().unwrap();
    let fifo = root.path().join("fifo");
    let made = Command::new("mkfifo").arg("-m").arg("600").arg(&fifo).status().unwrap();
    assert!(made.success());
    let dead = common::refused_url();
    let https = "https://127.0.0.1:1/api/v2/spans".to_owned();
    for path in [fifo.to_str().unwrap(), "/dev/zero"] {
        for (option, endpoint) in [
            ("--config", &dead),
            ("--header-file", &dead),
            ("--ca-file", &https),
            ("--cert", &https),
        ] {
            let mut args = vec![
                "--spool",
                "spool",
                "generate",
                "--spans",
                "10",
                "--endpoint",
                endpoint,
                option,
                path,
            ];
            if option == "--cert" {
                args.extend(["--key", path]);
            }
            // Run with a bound: a refusal takes milliseconds; a minute
            // means it waited on the FIFO (or read the device forever).
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_spillway"));
            cmd.current_dir(root.path()).args(&args);
            let out = common::output_within(cmd, std::time::Duration::from_secs(60), &format!("{option} {path}"));
            let text = all_output(&out);
            assert_eq!(out.status.code(), Some(2), "{option} {path}: {text}");
            // (A device is also readable by all: the header file's mode
            // check may refuse it first.)
            let why = text.contains("not a regular file") || (option == "--header-file" && text.contains("chmod 600"));
            assert!(text.contains(path) && why, "{option} {path}: {text}");
        }
    }
}
