//! Sending a run of spans: request sizing, encoding, and what to do with a
//! refusal, each request bounded by the flush's deadline.
//!
//! Spans go out in order, in requests of at most `max_batch_spans` spans
//! and `max_request_bytes` bytes of JSON (a span alone over the byte limit
//! is dropped as oversize). Each answer is classified by the transport
//! ([`Class`]):
//!
//! - 2xx: delivered.
//! - [`Class::Retry`] or [`Class::Misconfigured`]: sending stops; the rest
//!   is the caller's to keep.
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
//! is not the collector's fault.

use super::books::Books;
use crate::span::Span;
use crate::transport::{Class, SendError, Transport};
use crate::zipkin::Encoder;
use std::ops::Range;
use std::time::Instant;

/// Why sending stopped before the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The collector failed a request in a way that calls for a later retry
    /// ([`Class::Retry`] or [`Class::Misconfigured`]).
    Failed(SendError),
    /// The flush's deadline came.
    Deadline,
}

/// What sending a run of spans did.
#[derive(Debug, Default)]
pub struct Sent {
    /// Spans from the front that are settled: delivered, refused or oversize.
    pub settled: usize,
    /// Of those, delivered.
    pub delivered: usize,
    /// Of those, dropped as larger than a request.
    pub oversize: usize,
    /// Of those, the ranges the collector refused for good.
    pub refused: Vec<Range<usize>>,
    /// The collector's last refusal, for the report.
    pub last_refusal: Option<SendError>,
    /// Why sending stopped before the end, if it did.
    pub stopped: Option<Stop>,
}

impl Sent {
    /// Spans refused for good.
    pub fn refused_spans(&self) -> usize {
        self.refused.iter().map(|r| r.len()).sum()
    }

    /// Copies of the refused spans of `spans`, in order.
    pub fn refused_of(&self, spans: &[Span]) -> Vec<Span> {
        self.refused
            .iter()
            .flat_map(|r| spans[r.clone()].iter().cloned())
            .collect()
    }
}

/// Levels of splitting after which a chunk whose every request was
/// refused (400) is refused whole: the collector refuses everything, and
/// finding out span by span would cost a request per span.
const GIVE_UP_DEPTH: usize = 2;

/// Counts, in `sent`, what was settled before `end`: the ranges delivered
/// and refused there, and moves `sent.settled` to `end`.
fn settle_before(end: usize, delivered: &[Range<usize>], refused: &[Range<usize>], sent: &mut Sent) {
    sent.delivered += delivered
        .iter()
        .filter(|r| r.end <= end)
        .map(|r| r.len())
        .sum::<usize>();
    let mut kept: Vec<Range<usize>> = refused.iter().filter(|r| r.end <= end).cloned().collect();
    kept.sort_by_key(|r| r.start);
    sent.refused.extend(kept);
    sent.settled = end;
}

/// How one request ended.
enum Answer {
    Delivered,
    Refused(SendError),
    TooLarge(SendError),
    Stopped(Stop),
}

/// Encodes and sends; see the module docs.
pub struct Sender {
    transport: Box<dyn Transport>,
    encoder: Encoder,
    body: Vec<u8>,
    max_batch_spans: usize,
    max_request_bytes: usize,
    /// The last chunk was refused whole (every answer a refusal): a chunk
    /// refused at its first request is then refused at once.
    refusing_all: bool,
}

impl Sender {
    /// A sender through `transport` with the request limits given.
    pub fn new(transport: Box<dyn Transport>, service: &str, max_batch_spans: usize, max_request_bytes: usize) -> Self {
        Sender {
            transport,
            encoder: Encoder::new(service),
            body: Vec::new(),
            max_batch_spans,
            max_request_bytes,
            refusing_all: false,
        }
    }

    /// Where the transport sends.
    pub fn endpoint(&self) -> &str {
        self.transport.endpoint()
    }

    /// Sends `spans` as `service`'s, in order, until they are all settled,
    /// sending stops, or `deadline` comes. Requests are counted in `books`;
    /// the caller records the spans' outcomes.
    pub fn send(&mut self, spans: &[Span], service: &str, deadline: Instant, books: &Books) -> Sent {
        self.encoder.set_service(service);
        let mut sent = Sent::default();
        let mut i = 0;
        while i < spans.len() {
            let end = self.encode_chunk(spans, i);
            if end == i {
                sent.oversize += 1;
                i += 1;
                sent.settled = i;
                continue;
            }
            let answer = self.post(deadline, books);
            if let Err(stop) = self.settle(spans, i..end, answer, deadline, books, &mut sent) {
                sent.stopped = Some(stop);
                return sent;
            }
            i = end;
            sent.settled = i;
        }
        sent
    }

    /// Settles `chunk` given the answer to its request, splitting it as the
    /// module docs say, level by level (so a level's answers are all in
    /// before the next is split). `Err` stops sending: `sent.settled` then
    /// says how far from the front everything is settled, and only what
    /// lies before that counts (a span delivered past it is sent again
    /// later: a duplicate, never a loss or a double count).
    fn settle(
        &mut self,
        spans: &[Span],
        chunk: Range<usize>,
        answer: Answer,
        deadline: Instant,
        books: &Books,
        sent: &mut Sent,
    ) -> Result<(), Stop> {
        let mut level = match answer {
            Answer::Delivered => {
                self.refusing_all = false;
                sent.delivered += chunk.len();
                return Ok(());
            }
            Answer::Stopped(stop) => return Err(stop),
            Answer::Refused(e) if self.refusing_all => {
                // The chunk before was refused whole: so is this one.
                sent.last_refusal = Some(e);
                settle_before(chunk.end, &[], std::slice::from_ref(&chunk), sent);
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
        let (mut delivered, mut refused) = (Vec::new(), Vec::new());
        // Whether every answer so far refused its spans (400s only).
        let mut only_refusals = matches!(level.first(), Some((_, true)));
        let mut depth = 0;
        while !level.is_empty() {
            if depth >= GIVE_UP_DEPTH && only_refusals {
                refused.extend(level.drain(..).map(|(r, _)| r));
                self.refusing_all = true;
                break;
            }
            let mut next = Vec::new();
            for (i, (range, _)) in level.iter().enumerate() {
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
                        Answer::Stopped(stop) => {
                            // Everything from the first range not settled on.
                            let open = next
                                .iter()
                                .map(|(r, _): &(Range<usize>, bool)| r.start)
                                .chain(level[i..].iter().map(|(r, _)| r.start))
                                .chain(std::iter::once(half.start))
                                .min()
                                .unwrap_or(chunk.start);
                            settle_before(open, &delivered, &refused, sent);
                            return Err(stop);
                        }
                    }
                }
            }
            level = next;
            depth += 1;
        }
        settle_before(chunk.end, &delivered, &refused, sent);
        Ok(())
    }

    /// Encodes `spans[range]` and sends it.
    fn send_range(&mut self, spans: &[Span], range: Range<usize>, deadline: Instant, books: &Books) -> Answer {
        self.body.clear();
        self.encoder.encode_batch(&spans[range], &mut self.body);
        self.post(deadline, books)
    }

    /// Sends the encoded body, within what `deadline` leaves.
    fn post(&mut self, deadline: Instant, books: &Books) -> Answer {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Answer::Stopped(Stop::Deadline);
        }
        let result = self.transport.send(&self.body, left);
        books.request(result.is_err());
        match result {
            Ok(()) => Answer::Delivered,
            Err(e) => match e.class() {
                Class::Retry if Instant::now() >= deadline && matches!(e, SendError::Timeout(_)) => {
                    Answer::Stopped(Stop::Deadline)
                }
                Class::Retry | Class::Misconfigured => Answer::Stopped(Stop::Failed(e)),
                Class::TooLarge => Answer::TooLarge(e),
                Class::Rejected => Answer::Refused(e),
            },
        }
    }

    /// Encodes spans from `start` into the body while they fit; returns
    /// the end of the chunk (`start` if the first span alone is too large).
    fn encode_chunk(&mut self, spans: &[Span], start: usize) -> usize {
        self.body.clear();
        self.body.push(b'[');
        let mut end = start;
        while end < spans.len() && end - start < self.max_batch_spans {
            let mark = self.body.len();
            if end > start {
                self.body.push(b',');
            }
            self.encoder.encode_span(&spans[end], &mut self.body);
            if self.body.len() + 1 > self.max_request_bytes {
                self.body.truncate(mark);
                break;
            }
            end += 1;
        }
        self.body.push(b']');
        end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Answers 400 to any request holding a span named "bad", 202 otherwise;
    /// counts requests.
    struct Picky(Arc<Mutex<usize>>, bool);

    impl Transport for Picky {
        fn send(&mut self, json: &[u8], _: Duration) -> Result<(), SendError> {
            *self.0.lock().unwrap() += 1;
            let text = std::str::from_utf8(json).unwrap();
            if self.1 || text.contains("\"bad") {
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
                let name = if bad.contains(&i) { "bad" } else { "good" };
                Span::new([1; 16], (i as u64 + 1).to_be_bytes(), name)
            })
            .collect()
    }

    fn run(n: usize, bad: &[usize], refuse_all: bool, batch: usize) -> (Sent, usize) {
        let requests = Arc::new(Mutex::new(0));
        let mut s = Sender::new(Box::new(Picky(requests.clone(), refuse_all)), "svc", batch, 1 << 20);
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
    fn one_bad_span_costs_about_two_log_n_requests_and_only_it_is_refused() {
        let (sent, requests) = run(512, &[300], false, 512);
        assert_eq!(sent.refused, vec![300..301]);
        assert_eq!((sent.delivered, sent.settled, sent.stopped), (511, 512, None));
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
        let (sent, _) = run(512, &bad, false, 512);
        let refused: Vec<usize> = sent.refused.iter().flat_map(|r| r.clone()).collect();
        assert_eq!(refused, bad);
        assert_eq!(sent.delivered, 512 - bad.len());
    }

    #[test]
    fn a_deadline_already_past_sends_nothing() {
        let requests = Arc::new(Mutex::new(0));
        let mut s = Sender::new(Box::new(Picky(requests.clone(), false)), "svc", 10, 1 << 20);
        let sent = s.send(&spans(5, &[]), "svc", Instant::now(), &Books::default());
        assert_eq!((sent.settled, sent.stopped), (0, Some(Stop::Deadline)));
        assert_eq!(*requests.lock().unwrap(), 0);
    }
}
