//! The state frame: what the spool held at a commit, written into sled with
//! every commit (under `meta/state`), CRC-framed so that it can be found in
//! sled's raw files without sled.
//!
//! Every tree leaves oldest first (replay, dead-letter replay, the cap and
//! the age cap take the oldest; purge takes all), and every record, dead
//! letter and quarantined record takes a fresh sequence number, so each
//! tree holds exactly its records at or above its watermark (`*_below`).
//! A reader of the raw files (inspect, verify, export, salvage) thus needs
//! only the newest frame to tell records still held from sled's stale
//! copies of records long gone, and the frame's counts to tell whether any
//! record is missing. `round` numbers the commits; the ledger records the
//! last one made durable, whose frame marks how far sled's log must be
//! intact (see `check`).
//!
//! The frame also carries the last replay rate measured (spans per second
//! while replay was sending, and when), so a tool reading a spool at rest
//! can say when its backlog would be gone.
//!
//! Layout, version 2 (108 bytes, little endian): `b"SPST"`, version 2,
//! three zero bytes, then `round`, `next_seq`, `queue_below`, `dead_below`,
//! `quarantine_below`, `queue_records`, `queue_spans`, `dead_records`,
//! `dead_spans`, `quarantined`, `replay_spans_per_s`, `replay_measured_unix_ms`
//! (u64 each; the last two 0 when nothing was measured), then a CRC32 of
//! the bytes before it. Version 1 (read) is the same without the replay
//! rate: 92 bytes.

/// The frame's first bytes.
pub(crate) const MAGIC: [u8; 4] = *b"SPST";
/// The length of the frames written (version 2).
pub(crate) const LEN: usize = 108;
/// The length of version 1 frames.
const LEN_V1: usize = 92;
const VERSION: u8 = 2;

/// What the spool held at a commit (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct State {
    /// The commit's number.
    pub round: u64,
    /// The next sequence number to be given.
    pub next_seq: u64,
    /// The lowest key still queued (or `next_seq`).
    pub queue_below: u64,
    /// The lowest dead-letter key still held (or `next_seq`).
    pub dead_below: u64,
    /// The lowest quarantine key still held (or `next_seq`).
    pub quarantine_below: u64,
    /// Records in the queue.
    pub queue_records: u64,
    /// Spans in the queue.
    pub queue_spans: u64,
    /// Dead-letter records.
    pub dead_records: u64,
    /// Dead-letter spans.
    pub dead_spans: u64,
    /// Quarantined records.
    pub quarantined: u64,
    /// The last replay rate measured, if any.
    pub replay: Option<ReplayRate>,
}

/// A replay rate as measured: spans per second while replay was sending
/// (waits between flushes not counted), and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct ReplayRate {
    /// Spans per second.
    pub spans_per_s: u64,
    /// When it was measured (Unix ms).
    pub measured_unix_ms: u64,
}

impl State {
    fn fields(&self) -> [u64; 12] {
        let replay = self.replay.unwrap_or_default();
        [
            self.round,
            self.next_seq,
            self.queue_below,
            self.dead_below,
            self.quarantine_below,
            self.queue_records,
            self.queue_spans,
            self.dead_records,
            self.dead_spans,
            self.quarantined,
            replay.spans_per_s,
            replay.measured_unix_ms,
        ]
    }

    /// The frame's bytes.
    pub fn encode(&self) -> [u8; LEN] {
        let mut out = [0u8; LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        for (i, v) in self.fields().iter().enumerate() {
            out[8 + i * 8..16 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&out[..LEN - 4]);
        out[LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// The frame at the start of `bytes`, if a sound one is there, with
    /// its length (either version).
    pub fn decode_framed(bytes: &[u8]) -> Option<(State, usize)> {
        if bytes.get(0..4)? != MAGIC || bytes.get(5..8)? != [0, 0, 0] {
            return None;
        }
        let len = match bytes[4] {
            1 => LEN_V1,
            VERSION => LEN,
            _ => return None,
        };
        let b = bytes.get(..len)?;
        let crc = u32::from_le_bytes(b[len - 4..].try_into().ok()?);
        if crc32fast::hash(&b[..len - 4]) != crc {
            return None;
        }
        let f = |i: usize| u64::from_le_bytes(b[8 + i * 8..16 + i * 8].try_into().unwrap_or_default());
        let replay = (len == LEN && f(10) > 0).then(|| ReplayRate {
            spans_per_s: f(10),
            measured_unix_ms: f(11),
        });
        let state = State {
            round: f(0),
            next_seq: f(1),
            queue_below: f(2),
            dead_below: f(3),
            quarantine_below: f(4),
            queue_records: f(5),
            queue_spans: f(6),
            dead_records: f(7),
            dead_spans: f(8),
            quarantined: f(9),
            replay,
        };
        Some((state, len))
    }

    /// The frame at the start of `bytes`, if a sound one is there.
    pub fn decode(bytes: &[u8]) -> Option<State> {
        State::decode_framed(bytes).map(|(s, _)| s)
    }
}

/// A quarantined record as stored: `b"SPQR"`, its own key in the
/// quarantine (a fresh sequence number, so the quarantine too leaves
/// oldest first), the key it had in the queue, the length of its bytes
/// (u32 LE), a CRC32 of the 24 bytes before it and of the bytes, then the
/// bytes as they were found.
pub(crate) const QUARANTINE_MAGIC: [u8; 4] = *b"SPQR";
/// The quarantine frame's header length.
pub(crate) const QUARANTINE_HEADER: usize = 28;

/// A quarantine frame's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quarantined {
    /// Its key in the quarantine.
    pub key: u64,
    /// The key it had in the queue.
    pub queue_key: u64,
    /// The length of the bytes it keeps.
    pub len: usize,
}

fn quarantine_crc(head: &[u8], raw: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&head[..24]);
    h.update(raw);
    h.finalize()
}

/// Frames `raw`, found in the queue under `queue_key`, for the quarantine
/// under `key`.
pub(crate) fn quarantine_frame(key: u64, queue_key: u64, raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(QUARANTINE_HEADER + raw.len());
    out.extend_from_slice(&QUARANTINE_MAGIC);
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&queue_key.to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    let crc = quarantine_crc(&out, raw);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(raw);
    out
}

/// A quarantine frame's header, if `bytes` starts with a sound one whose
/// bytes follow whole.
pub fn unquarantine(bytes: &[u8]) -> Option<(Quarantined, &[u8])> {
    if bytes.get(0..4)? != QUARANTINE_MAGIC {
        return None;
    }
    let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
    let len = u32::from_le_bytes(bytes.get(20..24)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes.get(24..28)?.try_into().ok()?);
    let raw = bytes.get(QUARANTINE_HEADER..QUARANTINE_HEADER + len)?;
    let q = Quarantined {
        key: u64_at(4)?,
        queue_key: u64_at(12)?,
        len,
    };
    (quarantine_crc(bytes, raw) == crc).then_some((q, raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_flipped_bit_is_refused() {
        let s = State {
            round: 9,
            next_seq: 100,
            queue_below: 40,
            queue_records: 3,
            queue_spans: 70,
            ..State::default()
        };
        let mut bytes = s.encode();
        assert_eq!(State::decode(&bytes), Some(s));
        bytes[20] ^= 1;
        assert_eq!(State::decode(&bytes), None);
        let measured = State {
            replay: Some(ReplayRate {
                spans_per_s: 41_000,
                measured_unix_ms: 1_700_000_000_000,
            }),
            ..s
        };
        assert_eq!(State::decode_framed(&measured.encode()), Some((measured, LEN)));
        // A version 1 frame (written before the replay rate) still reads.
        let mut v1 = [0u8; LEN_V1];
        v1[..LEN_V1 - 4].copy_from_slice(&s.encode()[..LEN_V1 - 4]);
        v1[4] = 1;
        let crc = crc32fast::hash(&v1[..LEN_V1 - 4]);
        v1[LEN_V1 - 4..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(State::decode_framed(&v1), Some((s, LEN_V1)));
        let q = quarantine_frame(12, 7, b"bad record");
        let want = Quarantined {
            key: 12,
            queue_key: 7,
            len: 10,
        };
        assert_eq!(unquarantine(&q), Some((want, &b"bad record"[..])));
        let mut q = q;
        q[30] ^= 1;
        assert_eq!(unquarantine(&q), None);
    }
}
