//! Child processes of a test binary: a test marked `#[ignore]` run on its
//! own in a fresh process (so it can be killed with `kill -9`, or have the
//! filesystem cut from under it), told what to do through one environment
//! variable, reporting on stdout in lines that start with `@@`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The command that runs the ignored test `test` of this binary alone (its
/// full name, `module::test`) in a fresh process, under `wrapper` (a program
/// and its arguments that take the binary to run, say `fiu-run -x`) if any.
pub fn command(wrapper: &[&str], test: &str) -> Command {
    let exe = std::env::current_exe().unwrap();
    let mut command = match wrapper {
        [] => Command::new(exe),
        [program, args @ ..] => {
            let mut c = Command::new(program);
            c.args(args).arg(exe);
            c
        }
    };
    command.args(["--exact", test, "--ignored", "--nocapture", "--test-threads", "1"]);
    command
}

/// Runs the ignored test `test` of this binary alone (its full name), with
/// `env` set to `value`; its stdout is piped, its stderr dropped.
pub fn spawn(test: &str, env: &str, value: &str) -> Child {
    command(&[], test)
        .env(env, value)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The arguments a parent passed in `env` (tab-separated), if this process
/// is its child.
pub fn args(env: &str) -> Option<Vec<String>> {
    let value = std::env::var(env).ok()?;
    Some(value.split('\t').map(str::to_owned).collect())
}

/// Reports `line` to the parent, at once.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "@@{line}");
    let _ = out.flush();
}

/// A child whose report lines are collected on a thread, so that none is
/// lost when it is killed.
pub struct Reporter {
    /// The process.
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Reporter {
    /// Starts the ignored test `test` (its full name) with `args` in `env`.
    pub fn start(test: &str, env: &str, args: &[&str]) -> Reporter {
        let mut child = spawn(test, env, &args.join("\t"));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may print its own text before ours on a line.
                if let Some((_, ours)) = line.split_once("@@") {
                    let _ = tx.send(ours.to_owned());
                }
            }
        });
        Reporter { child, lines: rx }
    }

    /// Waits for the first report line (the child is at work), then a
    /// random while of up to `max_ms`.
    pub fn let_it_work(&self, max_ms: u64) -> Vec<String> {
        let first = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the child reported within 30 s");
        let until = Instant::now() + Duration::from_millis(fastrand::u64(0..=max_ms));
        let mut got = vec![first];
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => got.push(l),
                Err(_) => break,
            }
        }
        got
    }

    /// Every line it printed, once it has gone.
    pub fn rest(&self) -> Vec<String> {
        self.lines.iter().collect()
    }
}
