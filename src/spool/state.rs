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
//! Layout (92 bytes, little endian): `b"SPST"`, version 1, three zero
//! bytes, then `round`, `next_seq`, `queue_below`, `dead_below`,
//! `quarantine_below`, `queue_records`, `queue_spans`, `dead_records`,
//! `dead_spans`, `quarantined` (u64 each), then a CRC32 of the 88 bytes
//! before it.

/// The frame's first bytes.
pub const MAGIC: [u8; 4] = *b"SPST";
/// Its length.
pub const LEN: usize = 92;
const VERSION: u8 = 1;

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
}

impl State {
    fn fields(&self) -> [u64; 10] {
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

    /// The frame at the start of `bytes`, if a sound one is there.
    pub fn decode(bytes: &[u8]) -> Option<State> {
        let b = bytes.get(..LEN)?;
        if b[0..4] != MAGIC || b[4] != VERSION || b[5..8] != [0, 0, 0] {
            return None;
        }
        let crc = u32::from_le_bytes(b[LEN - 4..].try_into().ok()?);
        if crc32fast::hash(&b[..LEN - 4]) != crc {
            return None;
        }
        let f = |i: usize| u64::from_le_bytes(b[8 + i * 8..16 + i * 8].try_into().unwrap_or_default());
        Some(State {
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
        })
    }
}

/// A quarantined record as stored: `b"SPQR"`, its own key in the
/// quarantine (a fresh sequence number, so the quarantine too leaves
/// oldest first), the key it had in the queue, the length of its bytes
/// (u32 LE), a CRC32 of the 24 bytes before it and of the bytes, then the
/// bytes as they were found.
pub const QUARANTINE_MAGIC: [u8; 4] = *b"SPQR";
/// The quarantine frame's header length.
pub const QUARANTINE_HEADER: usize = 28;

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
pub fn quarantine_frame(key: u64, queue_key: u64, raw: &[u8]) -> Vec<u8> {
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
