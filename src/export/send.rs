//! Sending a run of spans: request sizing, encoding, retries, and what to
//! do with a refusal, each request bounded by the flush's deadline.
//!
//! Spans go out in requests of at most `max_batch_spans` spans and
//! `max_request_bytes` bytes of JSON (a span alone over the byte limit is
//! dropped as oversize), in order, or in up to `max_requests_in_flight`
//! contiguous parts side by side, each in order ([`Sender::send`]); replay's
//! records go side by side the same way, each its own part
//! ([`Sender::send_each`]). Each answer is classified by the transport
//! ([`Class`]):
//!
//! - 2xx: delivered.
//! - [`Class::Retry`] (5xx, 408, 429, reset, timeout): the request is sent
//!   again after a short wait with jitter ([`retry_wait`]: 2, 4, 8 ms,
//!   never sooner than the collector's `Retry-After`), up to [`RETRIES`]
//!   times, while the deadline leaves room. A request that still fails is
//!   *kept* (the caller spills it) and the requests after it go on: one bad
//!   backend behind a load balancer costs only its own requests. Sending
//!   stops (the rest kept too) only when the [`Circuit`] opens, that is the
//!   collector fails most requests, or when the collector's `Retry-After`
//!   does not fit in the deadline.
//! - [`Class::Misconfigured`]: sending stops; the rest is kept.
//! - [`Class::TooLarge`] (413) or [`Class::Rejected`] (400, other 4xx):
//!   the request is split in two and both halves sent, level by level,
//!   down to single spans, which are refused for good; only the spans the
//!   collector refuses are set aside. One bad span in `n` costs about
//!   `2 log2 n` requests. When every answer after two levels of splitting
//!   was a refusal (the collector refuses everything, say a v1 endpoint
//!   given v2 JSON), the chunk is refused whole (seven requests), and the
//!   chunks after it whose first request is refused too are refused at
//!   once, until the collector takes something again: never one request
//!   per span.
//!
//! A request starts only while the deadline leaves time, and takes at most
//! what is left; reaching the deadline stops sending like a failure, but
//! is not the collector's fault. Every span of the run ends in exactly one
//! of [`Sent`]'s sets: delivered, oversize, refused, or kept.

use super::books::Books;
use super::circuit::Circuit;
use crate::span::Span;
use crate::transport::{Class, SendError, Transport};
use crate::zipkin::Encoder;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why sending stopped before the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The collector fails most requests (the [`Circuit`] opened), refuses
    /// every request ([`Class::Misconfigured`]), or asked for a
    /// `Retry-After` past the deadline: the exporter backs off.
    Failed(SendError),
    /// The flush's deadline came.
    Deadline,
}

/// What sending a run of spans did: every span is in exactly one of
/// delivered, oversize, `refused` or `kept`.
#[derive(Debug, Default)]
pub(crate) struct Sent {
    /// Spans delivered.
    pub delivered: usize,
    /// Spans dropped as larger than a request.
    pub oversize: usize,
    /// The ranges the collector refused for good, in order.
    pub refused: Vec<Range<usize>>,
    /// The ranges not settled, in order, for the caller to keep: requests
    /// that still failed after their retries, and everything after the
    /// point where sending stopped.
    pub kept: Vec<Range<usize>>,
    /// The collector's last refusal, for the report.
    pub last_refusal: Option<SendError>,
    /// The last failure that kept spans (sending went on), for the report.
    pub last_failure: Option<SendError>,
    /// Why sending stopped before the end, if it did.
    pub stopped: Option<Stop>,
}

impl Sent {
    /// Adds what sending a later part, starting at `offset`, did.
    fn add(&mut self, part: Sent, offset: usize) {
        let shift = |r: Range<usize>| r.start + offset..r.end + offset;
        self.delivered += part.delivered;
        self.oversize += part.oversize;
        for (to, from) in [(&mut self.refused, part.refused), (&mut self.kept, part.kept)] {
            let mut from = from.into_iter().map(shift);
            // Ranges that meet at the part's edge are one range.
            if let Some(first) = from.next() {
                match to.last_mut() {
                    Some(last) if last.end == offset && first.start == offset => last.end = first.end,
                    _ => to.push(first),
                }
            }
            to.extend(from);
        }
        self.last_refusal = part.last_refusal.or(self.last_refusal.take());
        self.last_failure = part.last_failure.or(self.last_failure.take());
        self.stopped = self.stopped.take().or(part.stopped);
    }

    /// Spans refused for good.
    pub(crate) fn refused_spans(&self) -> usize {
        self.refused.iter().map(|r| r.len()).sum()
    }

    /// Spans kept (not settled).
    pub(crate) fn kept_spans(&self) -> usize {
        self.kept.iter().map(|r| r.len()).sum()
    }

    /// Copies of the refused spans of `spans`, in order.
    pub(crate) fn refused_of(&self, spans: &[Span]) -> Vec<Span> {
        Self::copies(&self.refused, spans)
    }

    /// Copies of the kept spans of `spans`, in order.
    pub(crate) fn kept_of(&self, spans: &[Span]) -> Vec<Span> {
        Self::copies(&self.kept, spans)
    }

    fn copies(ranges: &[Range<usize>], spans: &[Span]) -> Vec<Span> {
        ranges.iter().flat_map(|r| spans[r.clone()].iter().cloned()).collect()
    }
}

/// Retries of a request that failed in a way worth retrying.
pub(crate) const RETRIES: u32 = 3;

/// The wait before retry `attempt` (1, 2, ...) given `jitter` in `0..1`:
/// 2 ms doubling, drawn from its upper half. Short: the other requests of
/// the flush wait meanwhile, and a failure that is not the collector's
/// overload (a bad backend behind a load balancer, a reset) is usually
/// gone at the next attempt. A collector's `Retry-After` is honoured plus
/// up to a quarter more, drawn by the same jitter, so the clients it
/// refused at one moment do not all come back at the same instant.
pub(crate) fn retry_wait(attempt: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
    let jitter = jitter.clamp(0.0, 1.0);
    let cap = Duration::from_millis(2 << attempt.clamp(1, 8).saturating_sub(1));
    let spread = retry_after.map_or(Duration::ZERO, |after| after + after.mul_f64(jitter / 4.0));
    cap.mul_f64(0.5 + jitter / 2.0).max(spread)
}

/// Levels of splitting after which a chunk whose every request was
/// refused (400) is refused whole: the collector refuses everything, and
/// finding out span by span would cost a request per span.
const GIVE_UP_DEPTH: usize = 2;

/// The parts of `chunk` not covered by `done` (disjoint ranges inside it).
fn uncovered(chunk: Range<usize>, done: &mut [Range<usize>]) -> Vec<Range<usize>> {
    done.sort_by_key(|r| r.start);
    let mut left = Vec::new();
    let mut at = chunk.start;
    for r in done.iter() {
        if r.start > at {
            left.push(at..r.start);
        }
        at = at.max(r.end);
    }
    if at < chunk.end {
        left.push(at..chunk.end);
    }
    left
}

/// How one request ended.
enum Answer {
    Delivered,
    Refused(SendError),
    TooLarge(SendError),
    /// Still failing after its retries; sending goes on.
    Failed(SendError),
    Stopped(Stop),
}

/// Encodes and sends; see the module docs.
pub(crate) struct Sender {
    transport: Box<dyn Transport>,
    encoder: Encoder,
    body: Vec<u8>,
    max_batch_spans: usize,
    max_request_bytes: usize,
    /// The last chunk was refused whole (every answer a refusal): a chunk
    /// refused at its first request is then refused at once.
    refusing_all: bool,
    /// Whether the collector fails most requests: one for every lane.
    circuit: Arc<Mutex<Circuit>>,
    /// Senders to the same collector for requests side by side (see
    /// [`Sender::send`]), made as the window first needs them.
    lanes: Vec<Sender>,
    /// Requests this sender may have in flight now (AIMD, see
    /// [`Sender::send`]), and at most.
    in_flight: usize,
    max_in_flight: usize,
    /// Attempts, and those answered with congestion (429, 503, a timeout)
    /// or a `Retry-After`, since the last [`Sender::take_congested`].
    attempts: u32,
    congestion: u32,
    /// Whether an answer carried a `Retry-After` since the last
    /// [`Sender::take_congested`]: the collector asked for a wait.
    asked_to_wait: bool,
    /// Bytes of every request body put on the wire, retries included.
    bytes_sent: u64,
}

/// The share of a flush's attempts that must show congestion before the
/// pace halves: one in sixteen. A collector that fails the odd request
/// (one in a hundred) is not congested; one that sheds load is.
const CONGESTED_ONE_IN: u32 = 16;

impl Sender {
    /// A sender through `transport` with the request limits given.
    pub(crate) fn new(
        transport: Box<dyn Transport>,
        encoder: Encoder,
        max_batch_spans: usize,
        max_request_bytes: usize,
    ) -> Self {
        Sender {
            transport,
            encoder,
            body: Vec::new(),
            max_batch_spans,
            max_request_bytes,
            refusing_all: false,
            circuit: Arc::default(),
            lanes: Vec::new(),
            in_flight: 1,
            max_in_flight: 1,
            attempts: 0,
            congestion: 0,
            asked_to_wait: false,
            bytes_sent: 0,
        }
    }

    /// The same sender with up to `max` requests in flight side by side,
    /// where the transport can make more of itself ([`Transport::try_clone`]).
    pub(crate) fn with_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    fn circuit(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.circuit.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the collector fails most requests (the circuit is open).
    pub(crate) fn circuit_open(&self) -> bool {
        self.circuit().is_open()
    }

    /// Requests in flight side by side now (the window).
    pub(crate) fn window(&self) -> usize {
        self.in_flight
    }

    /// Two requests' worth of spans: what each part of a round carries at
    /// least, so that its lane has a request queued behind the one in flight.
    fn pair_spans(&self) -> usize {
        2 * self.max_batch_spans.max(1)
    }

    /// The spans one round of [`Sender::send`] carries now: two requests'
    /// worth for each request the window lets be in flight.
    pub(crate) fn round_spans(&self) -> usize {
        self.pair_spans() * self.in_flight
    }

    /// Whether the collector showed congestion since the last call (at
    /// least one attempt in [`CONGESTED_ONE_IN`] answered 429, 503, a
    /// timeout or a `Retry-After`); starts counting anew and forgets any
    /// `Retry-After` ([`Sender::asked_to_wait`]).
    pub(crate) fn take_congested(&mut self) -> bool {
        let (attempts, congestion) = (self.attempts, self.congestion);
        (self.attempts, self.congestion, self.asked_to_wait) = (0, 0, false);
        congestion > 0 && congestion * CONGESTED_ONE_IN >= attempts
    }

    /// Whether the collector answered with a `Retry-After` since the last
    /// [`Sender::take_congested`] (it sheds load and said when to come
    /// back).
    pub(crate) fn asked_to_wait(&self) -> bool {
        self.asked_to_wait
    }

    /// Bytes of request bodies sent so far, every attempt counted.
    pub(crate) fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Where the transport sends.
    pub(crate) fn endpoint(&self) -> &str {
        self.transport.endpoint()
    }

    /// Sends `spans` as `service`'s until each is settled or kept, sending
    /// stops, or `deadline` comes. Requests are counted in `books`; the
    /// caller records the spans' outcomes.
    ///
    /// The spans go in rounds of two requests' worth for each request the
    /// window lets be in flight: a round of `n` is cut into `n` contiguous
    /// parts sent side by side, each in order by its own lane (a clone of
    /// the transport, so its own connection) exactly as one sender would;
    /// the lanes share the circuit, so a failing collector stops them all.
    /// The window starts at one, grows by one after a round that met no
    /// congestion (429, 503, a timeout, a `Retry-After`) and used it all,
    /// up to `max_in_flight`, and halves after one that met congestion: it
    /// follows what the collector takes (AIMD).
    pub(crate) fn send(&mut self, spans: &[Span], service: &str, deadline: Instant, books: &Books) -> Sent {
        let mut sent = Sent::default();
        let mut at = 0;
        while at < spans.len() {
            let end = (at + self.round_spans()).min(spans.len());
            let round = self.send_round(&spans[at..end], service, deadline, books);
            sent.add(round, at);
            at = end;
            if sent.stopped.is_some() {
                let rest = Sent {
                    kept: std::iter::once(0..spans.len() - at).collect(),
                    ..Sent::default()
                };
                sent.add(rest, at);
                break;
            }
        }
        sent
    }

    /// One round of [`Sender::send`], then the window's update.
    fn send_round(&mut self, spans: &[Span], service: &str, deadline: Instant, books: &Books) -> Sent {
        let parts = self.in_flight.min(spans.len() / self.pair_spans()).max(1);
        let size = spans.len().div_ceil(parts).max(1);
        let each: Vec<(&[Span], &str)> = spans.chunks(size).map(|cut| (cut, service)).collect();
        let mut sent = Sent::default();
        for (part, at) in self
            .send_parts(&each, deadline, books)
            .into_iter()
            .zip((0..).step_by(size))
        {
            sent.add(part, at);
        }
        sent
    }

    /// Sends each of `parts` (spans, and whose they are) as [`Sender::send`]
    /// sends one, side by side: at most the window's worth (the caller asks
    /// [`Sender::window`]), each in order by its own lane. For replay,
    /// whose records are settled one by one. The window follows the
    /// collector as a round of [`Sender::send`] does.
    pub(crate) fn send_each(&mut self, parts: &[(&[Span], &str)], deadline: Instant, books: &Books) -> Vec<Sent> {
        match parts {
            [(spans, service)] => vec![self.send(spans, service, deadline, books)],
            _ => self.send_parts(parts, deadline, books),
        }
    }

    /// Sends `parts` side by side where the transport can make lanes
    /// enough, else one after another (once sending stops, the parts left
    /// are kept whole); then updates the window.
    fn send_parts(&mut self, parts: &[(&[Span], &str)], deadline: Instant, books: &Books) -> Vec<Sent> {
        let congestion = self.congestion;
        let each = if parts.len() > 1 && self.grow_lanes(parts.len() - 1) {
            self.send_side_by_side(parts, deadline, books)
        } else {
            let mut each = Vec::with_capacity(parts.len());
            let mut stopped = false;
            for (spans, service) in parts {
                each.push(if stopped {
                    Sent {
                        kept: std::iter::once(0..spans.len()).collect(),
                        ..Sent::default()
                    }
                } else {
                    self.send_in_order(spans, service, deadline, books)
                });
                stopped = each.last().is_some_and(|s| s.stopped.is_some());
            }
            each
        };
        if self.congestion > congestion {
            self.in_flight = (self.in_flight / 2).max(1);
        } else if parts.len() >= self.in_flight && each.iter().all(|s| s.stopped.is_none()) {
            self.in_flight = (self.in_flight + 1).min(self.max_in_flight);
        }
        each
    }

    /// Makes lanes until there are `n`; false when the transport cannot
    /// make more of itself.
    fn grow_lanes(&mut self, n: usize) -> bool {
        while self.lanes.len() < n {
            let Some(transport) = self.transport.try_clone() else {
                self.max_in_flight = self.lanes.len() + 1;
                self.in_flight = self.in_flight.min(self.max_in_flight);
                return false;
            };
            let mut lane = Sender::new(
                transport,
                self.encoder.clone(),
                self.max_batch_spans,
                self.max_request_bytes,
            );
            lane.circuit = Arc::clone(&self.circuit);
            self.lanes.push(lane);
        }
        true
    }

    /// Sends `parts` side by side: the first on this thread, the others on
    /// their lanes' scoped threads; what each did, in order. A lane that
    /// panicked keeps its part whole.
    fn send_side_by_side(&mut self, parts: &[(&[Span], &str)], deadline: Instant, books: &Books) -> Vec<Sent> {
        let mut lanes = std::mem::take(&mut self.lanes);
        let refusing_all = self.refusing_all;
        let each = std::thread::scope(|scope| {
            let handles: Vec<_> = parts[1..]
                .iter()
                .zip(lanes.iter_mut())
                .map(|(&(part, service), lane)| {
                    lane.refusing_all = refusing_all;
                    scope.spawn(move || lane.send_in_order(part, service, deadline, books))
                })
                .collect();
            let (first, service) = parts[0];
            let mut each = vec![self.send_in_order(first, service, deadline, books)];
            each.extend(handles.into_iter().zip(&parts[1..]).map(|(h, (part, _))| {
                h.join().unwrap_or_else(|_| Sent {
                    kept: std::iter::once(0..part.len()).collect(),
                    ..Sent::default()
                })
            }));
            each
        });
        for lane in &mut lanes {
            self.attempts = self.attempts.saturating_add(std::mem::take(&mut lane.attempts));
            self.congestion = self.congestion.saturating_add(std::mem::take(&mut lane.congestion));
            self.bytes_sent = self.bytes_sent.saturating_add(std::mem::take(&mut lane.bytes_sent));
            self.refusing_all |= lane.refusing_all;
            self.asked_to_wait |= std::mem::take(&mut lane.asked_to_wait);
        }
        self.lanes = lanes;
        each
    }

    /// Sends `spans` in order, one request at a time; see [`Sender::send`].
    fn send_in_order(&mut self, spans: &[Span], service: &str, deadline: Instant, books: &Books) -> Sent {
        self.encoder.set_service(service);
        let mut sent = Sent::default();
        let mut i = 0;
        while i < spans.len() {
            let end = self.encode_chunk(spans, i);
            if end == i {
                sent.oversize += 1;
                i += 1;
                continue;
            }
            let answer = self.post(deadline, books);
            if let Err(stop) = self.settle(spans, i..end, answer, deadline, books, &mut sent) {
                if end < spans.len() {
                    sent.kept.push(end..spans.len());
                }
                sent.stopped = Some(stop);
                return sent;
            }
            i = end;
        }
        sent
    }

    /// Settles `chunk` given the answer to its request, splitting it as the
    /// module docs say, level by level (so a level's answers are all in
    /// before the next is split). What a failure leaves unsettled in the
    /// chunk is kept. `Err` stops sending.
    fn settle(
        &mut self,
        spans: &[Span],
        chunk: Range<usize>,
        answer: Answer,
        deadline: Instant,
        books: &Books,
        sent: &mut Sent,
    ) -> Result<(), Stop> {
        let level = match answer {
            Answer::Delivered => {
                self.refusing_all = false;
                sent.delivered += chunk.len();
                return Ok(());
            }
            Answer::Failed(e) => {
                sent.last_failure = Some(e);
                sent.kept.push(chunk);
                return Ok(());
            }
            Answer::Stopped(stop) => {
                sent.kept.push(chunk);
                return Err(stop);
            }
            Answer::Refused(e) if self.refusing_all => {
                // The chunk before was refused whole: so is this one.
                sent.last_refusal = Some(e);
                sent.refused.push(chunk);
                return Ok(());
            }
            Answer::Refused(e) => {
                sent.last_refusal = Some(e);
                vec![(chunk.clone(), true)]
            }
            Answer::TooLarge(e) => {
                sent.last_refusal = Some(e);
                vec![(chunk.clone(), false)]
            }
        };
        self.bisect(spans, chunk, level, deadline, books, sent)
    }

    /// Splits a refused or too large `chunk` level by level, starting at
    /// `level` (each range with whether its answer was a refusal), until
    /// every part is delivered or refused alone; see [`Sender::settle`].
    fn bisect(
        &mut self,
        spans: &[Span],
        chunk: Range<usize>,
        mut level: Vec<(Range<usize>, bool)>,
        deadline: Instant,
        books: &Books,
        sent: &mut Sent,
    ) -> Result<(), Stop> {
        let (mut delivered, mut refused) = (Vec::new(), Vec::new());
        // Whether every answer so far refused its spans (400s only).
        let mut only_refusals = matches!(level.first(), Some((_, true)));
        let mut depth = 0;
        // How the chunk ended early, if it did.
        let mut ended: Option<Result<(), Stop>> = None;
        'levels: while !level.is_empty() {
            if depth >= GIVE_UP_DEPTH && only_refusals {
                refused.extend(level.drain(..).map(|(r, _)| r));
                self.refusing_all = true;
                break;
            }
            let mut next = Vec::new();
            for (range, _) in &level {
                if range.len() == 1 {
                    refused.push(range.clone());
                    continue;
                }
                let mid = range.start + range.len() / 2;
                for half in [range.start..mid, mid..range.end] {
                    match self.send_range(spans, half.clone(), deadline, books) {
                        Answer::Delivered => {
                            only_refusals = false;
                            self.refusing_all = false;
                            delivered.push(half);
                        }
                        Answer::Refused(e) => {
                            sent.last_refusal = Some(e);
                            next.push((half, true));
                        }
                        Answer::TooLarge(e) => {
                            only_refusals = false;
                            sent.last_refusal = Some(e);
                            next.push((half, false));
                        }
                        Answer::Failed(e) => {
                            sent.last_failure = Some(e);
                            ended = Some(Ok(()));
                            break 'levels;
                        }
                        Answer::Stopped(stop) => {
                            ended = Some(Err(stop));
                            break 'levels;
                        }
                    }
                }
            }
            level = next;
            depth += 1;
        }
        sent.delivered += delivered.iter().map(|r: &Range<usize>| r.len()).sum::<usize>();
        if ended.is_some() {
            let mut done: Vec<Range<usize>> = delivered.iter().chain(&refused).cloned().collect();
            sent.kept.extend(uncovered(chunk, &mut done));
        }
        refused.sort_by_key(|r| r.start);
        sent.refused.extend(refused);
        ended.unwrap_or(Ok(()))
    }

    /// Encodes `spans[range]` and sends it.
    fn send_range(&mut self, spans: &[Span], range: Range<usize>, deadline: Instant, books: &Books) -> Answer {
        self.body.clear();
        self.encoder.encode_batch(&spans[range], &mut self.body);
        self.post(deadline, books)
    }

    /// Sends the encoded body, within what `deadline` leaves, retrying as
    /// the module docs say.
    fn post(&mut self, deadline: Instant, books: &Books) -> Answer {
        let mut attempt = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Answer::Stopped(Stop::Deadline);
            }
            let result = self.transport.send(&self.body, left);
            self.bytes_sent = self.bytes_sent.saturating_add(self.body.len() as u64);
            books.request(result.is_err());
            self.attempts = self.attempts.saturating_add(1);
            let e = match result {
                Ok(()) => {
                    self.circuit().record(true);
                    return Answer::Delivered;
                }
                Err(e) => e,
            };
            if e.is_congestion() || e.retry_after().is_some() {
                self.congestion = self.congestion.saturating_add(1);
            }
            self.asked_to_wait |= e.retry_after().is_some();
            match e.class() {
                Class::TooLarge => return Answer::TooLarge(e),
                Class::Rejected => return Answer::Refused(e),
                Class::Misconfigured => {
                    self.circuit().record(false);
                    return Answer::Stopped(Stop::Failed(e));
                }
                Class::Retry => self.circuit().record(false),
            }
            if Instant::now() >= deadline && matches!(e, SendError::Timeout(_)) {
                return Answer::Stopped(Stop::Deadline);
            }
            if self.circuit().is_open() {
                return Answer::Stopped(Stop::Failed(e));
            }
            attempt += 1;
            let wait = retry_wait(attempt, fastrand::f64(), e.retry_after());
            if Instant::now() + wait >= deadline {
                // The collector's own wait does not fit: stop and back off.
                if e.retry_after().is_some() {
                    return Answer::Stopped(Stop::Failed(e));
                }
                return Answer::Failed(e);
            }
            if attempt > RETRIES {
                return Answer::Failed(e);
            }
            std::thread::sleep(wait);
        }
    }

    /// Encodes spans from `start` into the body while they fit; returns
    /// the end of the chunk (`start` if the first span alone is too large).
    fn encode_chunk(&mut self, spans: &[Span], start: usize) -> usize {
        self.body.clear();
        self.encoder.open(&mut self.body);
        let closing = self.encoder.closing().len();
        let mut end = start;
        while end < spans.len() && end - start < self.max_batch_spans {
            let mark = self.body.len();
            self.encoder.encode_next(end == start, &spans[end], &mut self.body);
            if self.body.len() + closing > self.max_request_bytes {
                self.body.truncate(mark);
                break;
            }
            end += 1;
        }
        self.encoder.close(&mut self.body);
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Encoding;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Answers 400 to any request holding a span named "bad-span" (in
    /// either encoding), 202 otherwise; counts requests.
    #[derive(Clone)]
    struct Picky(Arc<Mutex<usize>>, bool);

    impl Transport for Picky {
        fn try_clone(&self) -> Option<Box<dyn Transport>> {
            Some(Box::new(self.clone()))
        }
        fn send(&mut self, body: &[u8], _: Duration) -> Result<(), SendError> {
            *self.0.lock().unwrap() += 1;
            if self.1 || body.windows(8).any(|w| w == b"bad-span") {
                return Err(SendError::Status {
                    status: 400,
                    retry_after: None,
                    body: String::new(),
                });
            }
            Ok(())
        }
        fn endpoint(&self) -> &str {
            "test"
        }
    }

    fn spans(n: usize, bad: &[usize]) -> Vec<Span> {
        (0..n)
            .map(|i| {
                let name = if bad.contains(&i) { "bad-span" } else { "good" };
                Span::new([1; 16], (i as u64 + 1).to_be_bytes(), name)
            })
            .collect()
    }

    fn run(n: usize, bad: &[usize], refuse_all: bool, batch: usize) -> (Sent, usize) {
        run_in(Encoding::Json, n, bad, refuse_all, batch)
    }

    fn run_in(encoding: Encoding, n: usize, bad: &[usize], refuse_all: bool, batch: usize) -> (Sent, usize) {
        let requests = Arc::new(Mutex::new(0));
        let mut s = Sender::new(
            Box::new(Picky(requests.clone(), refuse_all)),
            Encoder::with_encoding(encoding, "svc"),
            batch,
            1 << 20,
        );
        let sent = s.send(
            &spans(n, bad),
            "svc",
            Instant::now() + Duration::from_secs(60),
            &Books::default(),
        );
        let r = *requests.lock().unwrap();
        (sent, r)
    }

    #[test]
    fn parts_sent_side_by_side_settle_every_span_once_and_refusals_map_back() {
        let requests = Arc::new(Mutex::new(0));
        let mut s = Sender::new(Box::new(Picky(requests, false)), Encoder::new("svc"), 64, 1 << 20).with_in_flight(4);
        let bad = [5, 1_500, 3_000, 4_095];
        let all = spans(4_096, &bad);
        let deadline = Instant::now() + Duration::from_secs(60);
        assert_eq!(s.window(), 1, "the window starts at one");
        for send in 0..3 {
            let sent = s.send(&all, "svc", deadline, &Books::default());
            assert_eq!((sent.delivered, sent.kept_spans(), sent.stopped), (4_092, 0, None));
            let refused: Vec<usize> = sent.refused.iter().flat_map(|r| r.clone()).collect();
            assert_eq!(refused, bad, "send {send}");
            // One more a round (1,024 spans at most): 4 in the first send.
            assert_eq!((s.window(), s.lanes.len()), (4, 3));
        }
    }

    #[test]
    fn parts_sent_each_on_its_own_keep_their_service_and_their_own_outcome() {
        let t = Bodies::default();
        let mut s = Sender::new(Box::new(t.clone()), Encoder::new("svc"), 64, 1 << 20).with_in_flight(4);
        let (a, b, c) = (spans(100, &[]), spans(100, &[7, 70]), spans(30, &[]));
        let parts: Vec<(&[Span], &str)> = vec![(&a, "alpha"), (&b, "beta"), (&c, "gamma")];
        let deadline = Instant::now() + Duration::from_secs(60);
        let each = s.send_each(&parts, deadline, &Books::default());
        let outcome: Vec<_> = each
            .iter()
            .map(|s| (s.delivered, s.refused.clone(), s.kept_spans()))
            .collect();
        assert_eq!(
            outcome,
            vec![(100, vec![], 0), (98, vec![7..8, 70..71], 0), (30, vec![], 0)],
            "each part's ranges are its own"
        );
        assert_eq!(s.window(), 2, "a window used whole grows by one");
        let bodies: Vec<String> =
            t.0.lock()
                .unwrap()
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect();
        for (service, spans) in [("alpha", 100), ("beta", 98), ("gamma", 30)] {
            let named = format!(r#""serviceName":"{service}""#);
            let delivered: usize = bodies
                .iter()
                .filter(|b| !b.contains("bad-span"))
                .map(|b| b.matches(&named).count())
                .sum();
            assert_eq!(delivered, spans, "{service}'s spans went as {service}'s");
        }
    }

    /// Answers 202 after 2 ms, counting requests in flight at once; once
    /// `armed`, the next request waits (up to 10 s) for a second to
    /// arrive. With `congest` raised, the next request is answered 503
    /// (congestion).
    #[derive(Clone, Default)]
    struct Overlap {
        now: Arc<std::sync::atomic::AtomicUsize>,
        most: Arc<std::sync::atomic::AtomicUsize>,
        armed: Arc<std::sync::atomic::AtomicBool>,
        congest: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Transport for Overlap {
        fn send(&mut self, _: &[u8], _: Duration) -> Result<(), SendError> {
            use std::sync::atomic::Ordering::SeqCst;
            if self.congest.swap(false, SeqCst) {
                return Err(SendError::Status {
                    status: 503,
                    retry_after: None,
                    body: String::new(),
                });
            }
            let now = self.now.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(now, SeqCst);
            if self.armed.swap(false, SeqCst) {
                let until = Instant::now() + Duration::from_secs(10);
                while self.most.load(SeqCst) < 2 && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            std::thread::sleep(Duration::from_millis(2));
            self.now.fetch_sub(1, SeqCst);
            Ok(())
        }
        fn endpoint(&self) -> &str {
            "test"
        }
        fn try_clone(&self) -> Option<Box<dyn Transport>> {
            Some(Box::new(self.clone()))
        }
    }

    #[test]
    fn requests_go_side_by_side_and_congestion_halves_the_window() {
        use std::sync::atomic::Ordering::SeqCst;
        let t = Overlap::default();
        let mut s = Sender::new(Box::new(t.clone()), Encoder::new("svc"), 64, 1 << 20).with_in_flight(4);
        let all = spans(1_024, &[]);
        let deadline = Instant::now() + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(s.send(&all, "svc", deadline, &Books::default()).delivered, 1_024);
        }
        assert_eq!(s.window(), 4);
        t.armed.store(true, SeqCst);
        assert_eq!(s.send(&all, "svc", deadline, &Books::default()).delivered, 1_024);
        let most = t.most.load(SeqCst);
        assert!((2..=4).contains(&most), "{most} requests at once");
        // One round of the window: four parts of two requests.
        t.congest.store(true, SeqCst);
        assert_eq!(s.send(&all[..512], "svc", deadline, &Books::default()).delivered, 512);
        assert_eq!(s.window(), 2, "halved after a 503");
    }

    #[test]
    fn a_transport_that_cannot_clone_itself_sends_one_request_at_a_time() {
        let t = Flaky {
            n: 0,
            fail: |_| false,
            error: e500,
            delivered: Arc::default(),
        };
        let mut s = Sender::new(Box::new(t), Encoder::new("svc"), 64, 1 << 20).with_in_flight(4);
        let all = spans(1_024, &[]);
        let deadline = Instant::now() + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(s.send(&all, "svc", deadline, &Books::default()).delivered, 1_024);
        }
        assert_eq!((s.window(), s.lanes.len()), (1, 0));
    }

    #[test]
    fn one_bad_span_costs_about_two_log_n_requests_and_only_it_is_refused() {
        let (sent, requests) = run(512, &[300], false, 512);
        assert_eq!(sent.refused, vec![300..301]);
        assert_eq!((sent.delivered, sent.kept_spans(), sent.stopped), (511, 0, None));
        assert!(requests <= 2 * 9 + 1, "{requests} requests");
    }

    #[test]
    fn a_refusal_of_everything_costs_seven_requests_then_one_per_chunk() {
        let (sent, requests) = run(5_000, &[], true, 512);
        assert_eq!(sent.refused_spans(), 5_000);
        assert_eq!(sent.delivered, 0);
        assert_eq!(requests, 7 + 5_000usize.div_ceil(512) - 1, "{requests} requests");
    }

    #[test]
    fn scattered_bad_spans_are_each_found() {
        let bad = [0, 1, 17, 200, 511];
        for encoding in [Encoding::Json, Encoding::Proto3] {
            let (sent, _) = run_in(encoding, 512, &bad, false, 512);
            let refused: Vec<usize> = sent.refused.iter().flat_map(|r| r.clone()).collect();
            assert_eq!(refused, bad, "{encoding:?}");
            assert_eq!(sent.delivered, 512 - bad.len(), "{encoding:?}");
        }
    }

    /// Keeps every request body; answers 400 to those holding "bad-span".
    #[derive(Clone, Default)]
    struct Bodies(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Transport for Bodies {
        fn try_clone(&self) -> Option<Box<dyn Transport>> {
            Some(Box::new(self.clone()))
        }
        fn send(&mut self, body: &[u8], _: Duration) -> Result<(), SendError> {
            self.0.lock().unwrap().push(body.to_vec());
            if body.windows(8).any(|w| w == b"bad-span") {
                return Err(SendError::Status {
                    status: 400,
                    retry_after: None,
                    body: String::new(),
                });
            }
            Ok(())
        }
        fn endpoint(&self) -> &str {
            "test"
        }
    }

    #[test]
    fn requests_stay_within_max_request_bytes_in_either_encoding() {
        let spans = spans(1_000, &[]);
        for encoding in [Encoding::Json, Encoding::Proto3] {
            let bodies = Arc::new(Mutex::new(Vec::new()));
            let mut s = Sender::new(
                Box::new(Bodies(bodies.clone())),
                Encoder::with_encoding(encoding, "svc"),
                512,
                4096,
            );
            let sent = s.send(
                &spans,
                "svc",
                Instant::now() + Duration::from_secs(60),
                &Books::default(),
            );
            assert_eq!(sent.delivered, 1_000, "{encoding:?}");
            let bodies = bodies.lock().unwrap();
            assert!(bodies.iter().all(|b| b.len() <= 4096), "{encoding:?}");
            // Full requests: only the last may be less than nearly full.
            let sizes: Vec<usize> = bodies.iter().map(Vec::len).collect();
            assert!(
                sizes[..sizes.len() - 1].iter().all(|&n| n > 4096 - 200),
                "{encoding:?} {sizes:?}"
            );
            let mut whole = Vec::new();
            Encoder::with_encoding(encoding, "svc").encode_batch(&spans, &mut whole);
            if encoding == Encoding::Proto3 {
                // proto3 bodies concatenate: the requests are the batch, cut.
                assert_eq!(bodies.concat(), whole);
            }
        }
    }

    #[test]
    fn a_deadline_already_past_sends_nothing() {
        let requests = Arc::new(Mutex::new(0));
        let mut s = Sender::new(
            Box::new(Picky(requests.clone(), false)),
            Encoder::new("svc"),
            10,
            1 << 20,
        );
        let sent = s.send(&spans(5, &[]), "svc", Instant::now(), &Books::default());
        assert_eq!(
            (sent.kept.len(), sent.kept[0].clone(), sent.stopped),
            (1, 0..5, Some(Stop::Deadline))
        );
        assert_eq!(*requests.lock().unwrap(), 0);
    }

    /// Fails the requests whose number (from 0) `fail` picks, with `error`.
    struct Flaky {
        n: usize,
        fail: fn(usize) -> bool,
        error: fn() -> SendError,
        delivered: Arc<Mutex<Vec<u8>>>,
    }

    impl Transport for Flaky {
        fn send(&mut self, json: &[u8], _: Duration) -> Result<(), SendError> {
            self.n += 1;
            if (self.fail)(self.n - 1) {
                return Err((self.error)());
            }
            self.delivered.lock().unwrap().extend_from_slice(json);
            Ok(())
        }
        fn endpoint(&self) -> &str {
            "test"
        }
    }

    fn flaky(fail: fn(usize) -> bool, error: fn() -> SendError, n: usize, batch: usize) -> (Sent, usize) {
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let t = Flaky {
            n: 0,
            fail,
            error,
            delivered: delivered.clone(),
        };
        let mut s = Sender::new(Box::new(t), Encoder::new("svc"), batch, 1 << 20);
        let sent = s.send(
            &spans(n, &[]),
            "svc",
            Instant::now() + Duration::from_secs(60),
            &Books::default(),
        );
        let count = String::from_utf8(delivered.lock().unwrap().clone())
            .unwrap()
            .matches("\"traceId\"")
            .count();
        (sent, count)
    }

    fn e500() -> SendError {
        SendError::Status {
            status: 500,
            retry_after: None,
            body: String::new(),
        }
    }

    #[test]
    fn every_third_request_failing_is_retried_and_everything_is_delivered() {
        let (sent, on_server) = flaky(|n| n % 3 == 2, e500, 5_000, 100);
        assert_eq!((sent.delivered, sent.kept_spans(), sent.stopped), (5_000, 0, None));
        assert_eq!(on_server, 5_000, "each span once");
    }

    #[test]
    fn a_request_failing_past_its_retries_is_kept_and_the_others_go_on() {
        // Requests 2..=5 are one chunk's four attempts.
        let (sent, on_server) = flaky(|n| (2..=5).contains(&n), e500, 1_000, 100);
        assert_eq!((sent.kept.len(), sent.kept[0].clone()), (1, 200..300));
        assert_eq!((sent.delivered, sent.stopped), (900, None));
        assert_eq!(on_server, 900);
        assert!(sent.last_failure.is_some());
    }

    #[test]
    fn a_dead_collector_opens_the_circuit_and_stops_keeping_everything() {
        let (sent, _) = flaky(|_| true, || SendError::Unreachable("refused".into()), 1_000, 100);
        assert_eq!(sent.kept, vec![0..100, 100..1_000]);
        assert!(matches!(sent.stopped, Some(Stop::Failed(_))), "{:?}", sent.stopped);
    }

    #[test]
    fn a_retry_after_past_the_deadline_stops_sending() {
        let (sent, _) = flaky(
            |n| n == 0,
            || SendError::Status {
                status: 429,
                retry_after: Some(Duration::from_secs(3_600)),
                body: String::new(),
            },
            300,
            100,
        );
        assert_eq!(sent.kept, vec![0..100, 100..300]);
        assert!(matches!(sent.stopped, Some(Stop::Failed(_))));
    }

    #[test]
    fn a_failure_in_the_middle_of_a_bisection_keeps_only_what_is_unsettled() {
        // Request 0: the chunk is refused (400); the halves then fail with
        // 500 from request 2 on (past the circuit's opening).
        struct Mixed(usize);
        impl Transport for Mixed {
            fn send(&mut self, _: &[u8], _: Duration) -> Result<(), SendError> {
                self.0 += 1;
                match self.0 {
                    1 => Err(SendError::Status {
                        status: 400,
                        retry_after: None,
                        body: String::new(),
                    }),
                    2 => Ok(()),
                    _ => Err(e500()),
                }
            }
            fn endpoint(&self) -> &str {
                "test"
            }
        }
        let mut s = Sender::new(Box::new(Mixed(0)), Encoder::new("svc"), 100, 1 << 20);
        let sent = s.send(
            &spans(100, &[]),
            "svc",
            Instant::now() + Duration::from_secs(60),
            &Books::default(),
        );
        assert_eq!(sent.delivered, 50);
        assert_eq!((sent.kept.len(), sent.kept[0].clone()), (1, 50..100));
        assert_eq!(sent.delivered + sent.kept_spans() + sent.refused_spans(), 100);
    }

    #[test]
    fn retry_waits_double_from_two_ms_and_honour_retry_after() {
        assert_eq!(retry_wait(1, 1.0, None), Duration::from_millis(2));
        assert_eq!(retry_wait(2, 0.0, None), Duration::from_millis(2));
        assert_eq!(retry_wait(3, 1.0, None), Duration::from_millis(8));
        assert_eq!(retry_wait(1, 0.0, Some(Duration::from_secs(2))), Duration::from_secs(2));
        assert_eq!(
            retry_wait(1, 0.5, Some(Duration::from_secs(2))),
            Duration::from_millis(2_250)
        );
        assert_eq!(
            retry_wait(1, 1.0, Some(Duration::from_secs(2))),
            Duration::from_millis(2_500)
        );
    }
}
