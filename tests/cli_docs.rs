//! `spillway completions SHELL` and `spillway man`: the completions load
//! in a real bash and complete subcommands and flags; the man pages render
//! with groff without a warning, one per command.

use std::process::{Command, Output};

const COMMANDS: [&str; 9] = [
    "inspect",
    "verify",
    "replay",
    "export",
    "purge",
    "salvage",
    "generate",
    "completions",
    "man",
];

fn spillway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(args)
        .output()
        .expect("spillway runs")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// What bash's completion function offers for `words`, the last being
/// the word under the cursor.
fn bash_complete(script: &std::path::Path, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}' && COMP_WORDS=({line}) && COMP_CWORD={} && _spillway spillway '{}' '{}' && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display(),
            words.len() - 1,
            words[words.len() - 1],
            words[words.len() - 2],
        ))
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn bash_completions_load_and_complete_commands_and_flags() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("spillway.bash");
    std::fs::write(&script, stdout(&spillway(&["completions", "bash"]))).unwrap();
    assert_eq!(bash_complete(&script, &["spillway", "sal"]), ["salvage"]);
    assert_eq!(bash_complete(&script, &["spillway", "replay", "--dr"]), ["--dry-run"]);
    let all = bash_complete(&script, &["spillway", "''"]);
    for c in COMMANDS {
        assert!(all.iter().any(|w| w == c), "{c} is not offered: {all:?}");
    }
}

#[test]
fn completions_for_every_shell_clap_knows() {
    for (shell, marker) in [
        ("bash", "complete -F _spillway"),
        ("zsh", "#compdef spillway"),
        ("fish", "complete -c spillway"),
        ("elvish", "edit:completion:arg-completer[spillway]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let text = stdout(&spillway(&["completions", shell]));
        assert!(text.contains(marker), "{shell}: no {marker:?}");
        assert!(text.contains("salvage"), "{shell}: no subcommands");
    }
    let out = spillway(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("possible values"));
}

/// groff's warnings (all of them) for the man page at `path`.
fn groff_warnings(page: &[u8]) -> String {
    let mut child = Command::new("groff")
        .args(["-man", "-z", "-ww"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("groff runs");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), page).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn man_pages_render_cleanly_one_per_command() {
    let page = stdout(&spillway(&["man"]));
    assert!(page.contains(".TH spillway 1"), "{page}");
    assert_eq!(groff_warnings(page.as_bytes()), "");
    for c in COMMANDS {
        assert!(page.contains(c), "spillway.1 does not list {c}");
    }

    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    stdout(&spillway(&["man", "--dir", pages.to_str().unwrap()]));
    let mut written: Vec<String> = std::fs::read_dir(&pages)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    written.sort();
    let mut expected: Vec<String> = COMMANDS.iter().map(|c| format!("spillway-{c}.1")).collect();
    expected.push("spillway.1".to_owned());
    expected.sort();
    assert_eq!(written, expected);
    let replay = std::fs::read(pages.join("spillway-replay.1")).unwrap();
    assert_eq!(groff_warnings(&replay), "");
    assert!(
        String::from_utf8_lossy(&replay).contains("dry\\-run"),
        "replay's page has its flags"
    );
}
