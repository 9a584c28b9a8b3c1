//! Test helpers: spans made the way bext makes them, the real Zipkin's
//! address, and an HTTP server on 127.0.0.1 that answers as a script says,
//! for faults that must be injected on purpose.
#![allow(dead_code)]

pub mod child;
pub mod fs;
pub mod otelcol;
pub mod proto3;
pub mod toxiproxy;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The real Zipkin server the suite runs against. `scripts/test.sh` starts
/// one and sets the variable; without it the test fails, it does not skip.
pub fn zipkin_url() -> String {
    std::env::var("SPILLWAY_ZIPKIN_URL").unwrap_or_else(|_| {
        panic!("SPILLWAY_ZIPKIN_URL is not set: run the suite with scripts/test.sh (it starts a real Zipkin)")
    })
}

/// GETs `url` from the real Zipkin and parses the JSON answer.
pub fn get_json(url: &str) -> serde_json::Value {
    let body = ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .into_body()
        .read_to_string()
        .unwrap_or_else(|e| panic!("GET {url} body: {e}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
}

/// sled over the spool in `dir`, closed a moment ago in this process, as a
/// damaging disk or a foreign tool would open it. sled lets go of its lock
/// only once its I/O threads are done, so a lock error is waited out.
pub fn open_sled(dir: &std::path::Path) -> sled::Db {
    wait_for(
        "sled to let go of its lock",
        Duration::from_secs(60),
        || match sled::open(dir) {
            Ok(db) => Some(db),
            Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") => {
                None
            }
            Err(e) => panic!("opening {}: {e}", dir.display()),
        },
    )
}

/// One paced load at a time in the whole suite: each load measures the
/// product on this machine, not how several loads share its cores. A load
/// test holds the guard until its checks end.
pub fn one_load() -> std::sync::MutexGuard<'static, ()> {
    static ONE_LOAD: Mutex<()> = Mutex::new(());
    ONE_LOAD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Polls `f` until it returns `Some`, at most `limit` (Zipkin stores
/// asynchronously after its 202). Fails the test with `what` on timeout.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (traceId, id) pairs.
pub type Ids = std::collections::BTreeSet<(String, String)>;

/// The (traceId, id) pairs of Zipkin JSON spans.
pub fn ids_of(spans: &[serde_json::Value]) -> Ids {
    spans
        .iter()
        .map(|s| {
            (
                s["traceId"].as_str().unwrap_or_default().to_owned(),
                s["id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// What the real Zipkin holds for `service` (within the last hour).
pub fn zipkin_now(service: &str) -> Ids {
    let url = format!(
        "{}/api/v2/traces?serviceName={service}&limit=1000000&lookback=3600000",
        zipkin_url()
    );
    let traces = get_json(&url);
    let spans: Vec<serde_json::Value> = traces
        .as_array()
        .map(|ts| {
            ts.iter()
                .flat_map(|t| t.as_array().cloned().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    ids_of(&spans)
}

/// What Zipkin holds for `service`, once it holds at least `at_least`
/// (it stores asynchronously after its 202).
pub fn zipkin_ids(service: &str, at_least: usize) -> Ids {
    wait_for(
        &format!("Zipkin to hold {at_least} spans of {service}"),
        Duration::from_secs(30),
        || {
            let ids = zipkin_now(service);
            (ids.len() >= at_least).then_some(ids)
        },
    )
}

/// A validator for a request body (`ListOfSpans`) of the official Zipkin
/// v2 spec, vendored in `tests/vendor/zipkin-api/zipkin2-api.yaml`.
pub fn validator() -> &'static jsonschema::Validator {
    static V: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vendor/zipkin-api/zipkin2-api.yaml");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let doc: serde_json::Value = serde_yaml::from_str(&text).expect("spec parses");
        let schema = serde_json::json!({
            "$ref": "#/definitions/ListOfSpans",
            "definitions": doc["definitions"].clone(),
        });
        jsonschema::draft4::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("spec schema builds")
    })
}

/// How the fault server answers one request.
#[derive(Clone, Debug)]
pub enum Answer {
    /// An HTTP status with extra headers and a body.
    Status(u16, Vec<(&'static str, String)>, &'static str),
    /// Decide from the decoded request body.
    By(fn(&str) -> u16),
    /// Read the request, then say nothing until the server is dropped.
    Hang,
    /// Close the connection without answering.
    Reset,
    /// Answer bytes that are not HTTP.
    Garbage,
}

/// HTTP attempts a failing request gets in one flush: the first and its
/// retries. A collector that fails this many in a row has also opened the
/// circuit (the exporter then stops sending and backs off), so a script of
/// this many failures is the shortest that makes a flush keep its spans.
pub const ATTEMPTS: usize = 4;

/// `n` answers of `status`.
pub fn failures(status: u16, n: usize) -> Vec<Answer> {
    vec![Answer::Status(status, vec![], ""); n]
}

/// A request the fault server received.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    /// The body, gunzipped when it was sent with `Content-Encoding: gzip`.
    pub json: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn spans(&self) -> Vec<serde_json::Value> {
        serde_json::from_str::<Vec<serde_json::Value>>(&self.json)
            .unwrap_or_else(|e| panic!("server received invalid JSON ({e}): {}", self.json))
    }
}

/// An HTTP/1.1 server on 127.0.0.1 that answers from a script
/// (then 202 once the script is used up) and records what it received.
pub struct FaultServer {
    pub url: String,
    /// Spans received, counted without decoding when the server is a sink.
    pub spans_received: Arc<std::sync::atomic::AtomicU64>,
    /// Request body bytes a sink received, answered or not.
    pub bytes_received: Arc<std::sync::atomic::AtomicU64>,
    script: Arc<Mutex<VecDeque<Answer>>>,
    pub received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    port: u16,
    thread: Option<JoinHandle<()>>,
    policy: Arc<Mutex<Option<Policy>>>,
    admission: Arc<Mutex<Option<Admission>>>,
    sink_requests: Arc<std::sync::atomic::AtomicU64>,
}

/// A collector's admission control: a token bucket that admits `rate`
/// spans a second (at most a second's worth at once); a request it cannot
/// admit whole is answered 429 with `Retry-After: 1`.
#[derive(Debug)]
pub struct Admission {
    rate: f64,
    tokens: f64,
    at: Instant,
    /// Requests answered 429.
    pub refused: u64,
}

impl Admission {
    fn admit(&mut self, spans: usize) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.at = now;
        // A request larger than the bucket is admitted once it is full.
        let need = (spans as f64).min(self.rate);
        if self.tokens >= need {
            self.tokens -= spans as f64;
            true
        } else {
            self.refused += 1;
            false
        }
    }
}

/// How a failing sink answers request `n`: a status, or `None` for 202. A
/// 429 carries `Retry-After: 10`, longer than a flush's deadline: the
/// tracer stops and backs off for its whole `backoff_max_ms` (when that
/// is shorter), with no jitter.
pub type Policy = fn(u64) -> Option<u16>;

/// What a sink counts with, and how it answers.
struct Sink<'a> {
    spans: &'a std::sync::atomic::AtomicU64,
    bytes: &'a std::sync::atomic::AtomicU64,
    requests: &'a std::sync::atomic::AtomicU64,
    policy: &'a Mutex<Option<Policy>>,
    admission: &'a Mutex<Option<Admission>>,
}

impl FaultServer {
    pub fn start(script: Vec<Answer>) -> FaultServer {
        Self::start_with(script, true)
    }

    /// A server that answers 202 to everything and keeps no bodies: a fast
    /// loopback receiver for benchmarks. It counts `"traceId"` occurrences.
    pub fn sink() -> FaultServer {
        Self::start_with(vec![], false)
    }

    /// A sink that answers request `n` (from 0, over all connections) with
    /// the status `fail(n)` gives, counting the spans of those it takes
    /// (`None`: 202).
    pub fn failing_sink(fail: Policy) -> FaultServer {
        let s = Self::start_with(vec![], false);
        *s.policy.lock().unwrap() = Some(fail);
        s
    }

    /// A sink that admits `rate` spans a second (see [`Admission`]).
    pub fn admitting(rate: u64) -> FaultServer {
        let s = Self::start_with(vec![], false);
        *s.admission.lock().unwrap() = Some(Admission {
            rate: rate as f64,
            tokens: rate as f64,
            at: Instant::now(),
            refused: 0,
        });
        s
    }

    /// Requests an admitting sink answered 429.
    pub fn refused_requests(&self) -> u64 {
        self.admission.lock().unwrap().as_ref().map_or(0, |a| a.refused)
    }

    /// Requests a sink received, answered or not.
    pub fn sink_requests(&self) -> u64 {
        self.sink_requests.load(Ordering::Relaxed)
    }

    fn start_with(script: Vec<Answer>, keep: bool) -> FaultServer {
        let policy: Arc<Mutex<Option<Policy>>> = Arc::new(Mutex::new(None));
        let admission: Arc<Mutex<Option<Admission>>> = Arc::new(Mutex::new(None));
        let sink_requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let spans_received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let bytes_received = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let thread = {
            let bytes = bytes_received.clone();
            let (script, received, stop) = (script.clone(), received.clone(), stop.clone());
            let counted = spans_received.clone();
            let (policy, numbered) = (policy.clone(), sink_requests.clone());
            let admission = admission.clone();
            std::thread::spawn(move || {
                // One thread per connection: ureq keeps connections alive,
                // and a hanging answer must not block the next client.
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (script, received, stop) = (script.clone(), received.clone(), stop.clone());
                    let (counted, bytes) = (counted.clone(), bytes.clone());
                    let (policy, numbered) = (policy.clone(), numbered.clone());
                    let admission = admission.clone();
                    std::thread::spawn(move || {
                        let sink = if keep {
                            None
                        } else {
                            Some(Sink {
                                spans: &counted,
                                bytes: &bytes,
                                requests: &numbered,
                                policy: &policy,
                                admission: &admission,
                            })
                        };
                        serve(conn, &script, &received, &stop, sink)
                    });
                }
            })
        };
        FaultServer {
            url: format!("http://127.0.0.1:{port}/api/v2/spans"),
            spans_received,
            bytes_received,
            script,
            received,
            stop,
            port,
            thread: Some(thread),
            policy,
            admission,
            sink_requests,
        }
    }

    /// Appends answers to the script.
    pub fn then(&self, answers: Vec<Answer>) {
        self.script.lock().unwrap().extend(answers);
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Distinct `traceId:id` pairs received, over all requests.
    pub fn trace_span_ids(&self) -> std::collections::BTreeSet<String> {
        self.requests()
            .iter()
            .flat_map(|r| r.spans())
            .map(|s| {
                format!(
                    "{}:{}",
                    s["traceId"].as_str().unwrap_or_default(),
                    s["id"].as_str().unwrap_or_default()
                )
            })
            .collect()
    }

    /// Distinct span ids received, over all requests.
    pub fn span_ids(&self) -> std::collections::BTreeSet<String> {
        self.requests()
            .iter()
            .flat_map(|r| r.spans())
            .map(|s| s["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    conn: TcpStream,
    script: &Mutex<VecDeque<Answer>>,
    received: &Mutex<Vec<Received>>,
    stop: &AtomicBool,
    sink: Option<Sink<'_>>,
) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().expect("clone stream"));
    let mut conn = conn;
    loop {
        // One request per loop; keep-alive connections are reused by ureq.
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Some(sink) = &sink {
            // A sink expects plain JSON (gzip off) and counts span objects
            // by their traceId keys, in the requests it takes.
            let n = sink.requests.fetch_add(1, Ordering::Relaxed);
            sink.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            let policy = *sink.policy.lock().unwrap();
            let spans = body.windows(9).filter(|w| w == b"\"traceId\"").count();
            let admitted = sink.admission.lock().unwrap().as_mut().is_none_or(|a| a.admit(spans));
            let answer = match admitted {
                false => "HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\nretry-after: 1\r\n\r\n".to_owned(),
                true => match policy.and_then(|fail| fail(n)) {
                    Some(429) => {
                        "HTTP/1.1 429 Too Many Requests\r\ncontent-length: 0\r\nretry-after: 10\r\n\r\n".to_owned()
                    }
                    Some(status) => format!("HTTP/1.1 {status} Failed\r\ncontent-length: 0\r\n\r\n"),
                    None => {
                        sink.spans.fetch_add(spans as u64, Ordering::Relaxed);
                        "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n".to_owned()
                    }
                },
            };
            if conn.write_all(answer.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        let gz = headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-encoding") && v == "gzip");
        let json = if gz {
            let mut s = String::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_string(&mut s)
                .expect("gzip body");
            s
        } else {
            String::from_utf8(body).expect("utf-8 body")
        };
        let answer = script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::Status(202, vec![], ""));
        received.lock().unwrap().push(Received {
            headers,
            json: json.clone(),
        });
        let (status, extra, text) = match answer {
            Answer::Status(s, h, b) => (s, h, b),
            Answer::By(f) => (f(&json), vec![], ""),
            Answer::Hang => {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
            Answer::Reset => return,
            Answer::Garbage => {
                let _ = conn.write_all(b"\x00\x01not http at all\r\n\r\n");
                return;
            }
        };
        let mut head = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\n", text.len());
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if conn
            .write_all(head.as_bytes())
            .and_then(|_| conn.write_all(text.as_bytes()))
            .is_err()
        {
            return;
        }
    }
}

/// A port on 127.0.0.1 that nothing listens on (now).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A collector URL on 127.0.0.1 where nothing listens: connections are refused.
pub fn refused_url() -> String {
    format!("http://127.0.0.1:{}/api/v2/spans", free_port())
}

/// The variables the `spillway` command reads, which no test inherits.
const CLI_ENV: [&str; 4] = [
    "SPILLWAY_SPOOL",
    "OTEL_SERVICE_NAME",
    "OTEL_EXPORTER_ZIPKIN_ENDPOINT",
    "OTEL_EXPORTER_ZIPKIN_TIMEOUT",
];

/// Runs the `spillway` command on the spool in `dir` with exactly `env` of
/// the variables it reads set.
pub fn spillway_with(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let Some(bin) = option_env!("CARGO_BIN_EXE_spillway") else {
        panic!("the spillway binary is built for integration tests only")
    };
    let mut cmd = std::process::Command::new(bin);
    for var in CLI_ENV {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied())
        .arg("--spool")
        .arg(dir)
        .args(args)
        .output()
        .expect("spillway runs")
}

/// Runs the `spillway` command on the spool in `dir`, none of the
/// variables it reads set.
pub fn spillway(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    spillway_with(dir, &[], args)
}

/// The start of a bext request as the end-to-end tests record it: a
/// server span `GET /users/:id`, then, 120 µs later, a database call
/// (`SELECT users`, a client span naming its peer) that fails 2 ms later
/// with an exception event and an error status, and ends. Returns the
/// server span, still open, and the database span.
pub fn failing_query(
    tracer: &spillway::SpillwayTracer,
    clock: &spillway::ManualClock,
) -> (bext_plugin_api::tracer::SpanHandle, bext_plugin_api::tracer::SpanHandle) {
    use bext_plugin_api::tracer::{AttrValue, SpanEvent, SpanKind, SpanStart, SpanStatus, TracerPlugin};
    let server = tracer.start_span(SpanStart {
        name: "GET /users/:id",
        kind: SpanKind::Server,
        attributes: vec![
            ("http.request.method".into(), "GET".into()),
            ("http.route".into(), "/users/:id".into()),
            ("url.path".into(), "/users/42".into()),
        ],
        ..Default::default()
    });
    clock.advance(120_000);
    let db = tracer.start_span(SpanStart {
        name: "SELECT users",
        kind: SpanKind::Client,
        parent: Some(server),
        attributes: vec![
            ("db.system".into(), "postgresql".into()),
            ("peer.service".into(), "postgres".into()),
            ("server.address".into(), "db.internal".into()),
            ("server.port".into(), AttrValue::I64(5432)),
        ],
        ..Default::default()
    });
    clock.advance(2_000_000);
    tracer.add_event(
        db,
        SpanEvent {
            name: "exception",
            attributes: vec![
                ("exception.type".into(), "QueryTimeout".into()),
                (
                    "exception.message".into(),
                    "canceling statement due to statement timeout".into(),
                ),
            ],
            time_unix_nanos: None,
        },
    );
    tracer.set_status(
        db,
        SpanStatus::Error {
            description: "statement timeout".into(),
        },
    );
    tracer.end_span(db, None);
    (server, db)
}

/// Records `n` root spans named `name`.
pub fn record(t: &spillway::SpillwayTracer, n: usize, name: &str) {
    use bext_plugin_api::tracer::{SpanStart, TracerPlugin};
    for _ in 0..n {
        let h = t.start_span(SpanStart {
            name,
            ..Default::default()
        });
        t.end_span(h, None);
    }
}

/// Fills the spool in `dir` with `n` spans named `name` that a dead
/// collector left: all of them durable when this returns.
pub fn spool_backlog(dir: &std::path::Path, n: usize, name: &str) {
    use bext_plugin_api::tracer::TracerPlugin;
    let t = spillway::SpillwayTracer::new(spool_config(&refused_url(), dir)).expect("a tracer");
    // In steps below the ended-span queue's bound, each flush spilling it.
    for step in (0..n).step_by(8_192) {
        record(&t, (n - step).min(8_192), name);
        let _ = t.flush();
    }
    t.shutdown().expect("the backlog is durable");
    assert_eq!(t.stats().spooled, n as u64, "{:?}", t.stats());
}

/// A config that sends to `url`, spills to `dir`, and retries without
/// backoff (tests that are about backoff set their own).
pub fn spool_config(url: &str, dir: &std::path::Path) -> spillway::Config {
    spillway::Config {
        endpoint: url.to_owned(),
        spool_dir: Some(dir.to_path_buf()),
        timeout_ms: 1_000,
        connect_timeout_ms: 500,
        backoff_initial_ms: 0,
        backoff_max_ms: 0,
        ..spillway::Config::default()
    }
}

/// Runs `cmd` to its end with its output captured, killing it and failing
/// the test if it is still running after `bound`: an upper bound far above
/// a real run, so only a hang trips it.
pub fn output_within(mut cmd: std::process::Command, bound: Duration, what: &str) -> std::process::Output {
    use std::process::Stdio;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let deadline = Instant::now() + bound;
    while child.try_wait().expect("the child can be waited for").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}: still running after {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("the output is read")
}
