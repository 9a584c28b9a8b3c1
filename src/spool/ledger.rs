//! The ledger: a small file beside sled's that says what sled must hold, so
//! that data sled loses without an error is noticed and counted.
//!
//! sled 0.34 treats a damaged entry in its log as the end of the log: it
//! opens without an error and everything written after that point is gone
//! from its view (one flipped bit hid 1,700 of 2,000 spans in a test). The
//! ledger is written outside sled, to `spillway.ledger` in the spool
//! directory, and records a [`State`]:
//!
//! - `spans_at_least`: a lower bound of the spans in the queue. Additions
//!   raise it only after sled has synced them; removals lower it before
//!   sled syncs them. So whenever a crash happens, sled holds at least this
//!   many spans, unless sled lost some.
//! - `watermark` and `next_seq`: queue records with a sequence in
//!   `watermark..next_seq` may be owed; anything below was settled.
//! - `round`: the last commit made durable (see the spool's state frame):
//!   everything in sled's log up to that commit's state frame was synced,
//!   so recovery must not lose anything before it.
//!
//! Format 2 (written): two slots of 44 bytes, written alternately,
//! each `b"SPL2"`, a generation (u32 LE), `spans_at_least`, `watermark`,
//! `next_seq`, `round` (u64 LE each) and a CRC32 of the rest; the slot with
//! the highest generation whose CRC holds wins, so a torn write leaves the
//! other standing. Every write is followed by `fdatasync`. Format 1 (read)
//! is the same without `round`, in 36-byte slots headed `b"SPLG"`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The ledger's file name inside the spool directory.
pub const FILE: &str = "spillway.ledger";
const MAGIC: [u8; 4] = *b"SPL2";
const MAGIC_V1: [u8; 4] = *b"SPLG";
/// Slot layout: magic 4, generation 4, spans_at_least 8, watermark 8,
/// next_seq 8, round 8, CRC32 of the preceding 40 bytes 4: 44 bytes.
const SLOT: usize = 44;
/// Format 1's slot: no round, 36 bytes.
const SLOT_V1: usize = 36;

/// What sled must hold (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct State {
    /// A lower bound of the spans in the queue.
    pub spans_at_least: u64,
    /// Queue records below this sequence are settled.
    pub watermark: u64,
    /// No queue record has this sequence or a higher one.
    pub next_seq: u64,
    /// The last commit that was durable (0: none recorded, or format 1).
    pub round: u64,
}

/// The open ledger file.
#[derive(Debug)]
pub(crate) struct Ledger {
    file: File,
    generation: u32,
    last: Option<State>,
}

/// What a ledger file holds, read once ([`Ledger::inspect`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    /// The last state written, if a sound slot holds one.
    pub state: Option<State>,
    /// The file has bytes of which no slot is sound (each fails its CRC or
    /// claims what no spool can hold): damage.
    pub unsound: bool,
}

impl Ledger {
    /// Opens (or creates) the ledger in `dir`; returns it with the last
    /// state written, if a sound one is there.
    pub(crate) fn open(dir: &Path) -> io::Result<(Ledger, Option<State>)> {
        let file = super::dir::open_private(&dir.join(FILE))?;
        let mut buf = [0u8; 2 * SLOT];
        let mut n = 0;
        while n < buf.len() {
            match file.read_at(&mut buf[n..], n as u64)? {
                0 => break,
                read => n += read,
            }
        }
        let (generation, state) = best(&buf[..n]).map_or((0, None), |(g, s)| (g, Some(s)));
        Ok((
            Ledger {
                file,
                generation,
                last: state,
            },
            state,
        ))
    }

    /// The last state written in `dir`'s ledger, without creating one.
    pub(crate) fn read(dir: &Path) -> Option<State> {
        Self::inspect(dir).state
    }

    /// Reads `dir`'s ledger once, without creating one: its last sound
    /// state, and whether it is damaged.
    pub(crate) fn inspect(dir: &Path) -> Reading {
        let mut bytes = Vec::new();
        let read = std::fs::File::open(dir.join(FILE))
            .and_then(|file| std::io::Read::read_to_end(&mut std::io::Read::take(file, 2 * SLOT as u64), &mut bytes));
        if read.is_err() {
            return Reading::default();
        }
        let state = best(&bytes).map(|(_, s)| s);
        Reading {
            state,
            unsound: state.is_none() && bytes.iter().any(|&b| b != 0),
        }
    }

    /// Records `state`, durably, unless it is what was last recorded.
    pub(crate) fn write(&mut self, state: State) -> io::Result<()> {
        if self.last == Some(state) {
            return Ok(());
        }
        let generation = self.generation.wrapping_add(1);
        let slot = slot(generation, &state);
        self.file.write_all_at(&slot, u64::from(generation % 2) * SLOT as u64)?;
        self.file.sync_data()?;
        self.generation = generation;
        self.last = Some(state);
        Ok(())
    }
}

/// The sound slot with the highest generation in a ledger's bytes, of
/// either format (a format 1 file rewritten in format 2 holds both).
fn best(bytes: &[u8]) -> Option<(u32, State)> {
    let v2 = (0..2).filter_map(|i| parse(bytes.get(i * SLOT..(i + 1) * SLOT)?, SLOT));
    let v1 = (0..2).filter_map(|i| parse(bytes.get(i * SLOT_V1..(i + 1) * SLOT_V1)?, SLOT_V1));
    v2.chain(v1).max_by_key(|(generation, _)| *generation)
}

/// A format-2 slot holding `state`, its CRC computed.
fn slot(generation: u32, state: &State) -> [u8; SLOT] {
    let mut slot = [0u8; SLOT];
    slot[0..4].copy_from_slice(&MAGIC);
    slot[4..8].copy_from_slice(&generation.to_le_bytes());
    slot[8..16].copy_from_slice(&state.spans_at_least.to_le_bytes());
    slot[16..24].copy_from_slice(&state.watermark.to_le_bytes());
    slot[24..32].copy_from_slice(&state.next_seq.to_le_bytes());
    slot[32..40].copy_from_slice(&state.round.to_le_bytes());
    let crc = crc32fast::hash(&slot[..40]);
    slot[40..44].copy_from_slice(&crc.to_le_bytes());
    slot
}

/// More spans than any spool can hold (the cap is at most 1 TiB, and no
/// record packs more than a few dozen spans a byte): a slot claiming more
/// is crafted or damaged however sound its CRC.
const MAX_SPANS: u64 = 1 << 48;
/// More records than any spool will ever number (a million a second for
/// two thousand years).
const MAX_SEQ: u64 = 1 << 56;

/// One slot of `len` bytes (format 2 at [`SLOT`], 1 at [`SLOT_V1`]); a
/// slot whose CRC holds but whose values cannot be is no slot.
fn parse(slot: &[u8], len: usize) -> Option<(u32, State)> {
    let u64_at = |at: usize| u64::from_le_bytes(slot[at..at + 8].try_into().unwrap_or_default());
    let (magic, body) = if len == SLOT { (MAGIC, 40) } else { (MAGIC_V1, 32) };
    let crc = u32::from_le_bytes(slot[body..body + 4].try_into().ok()?);
    if slot[0..4] != magic || crc32fast::hash(&slot[..body]) != crc {
        return None;
    }
    let generation = u32::from_le_bytes(slot[4..8].try_into().ok()?);
    let state = State {
        spans_at_least: u64_at(8),
        watermark: u64_at(16),
        next_seq: u64_at(24),
        round: if len == SLOT { u64_at(32) } else { 0 },
    };
    let plausible = state.spans_at_least <= MAX_SPANS
        && state.next_seq <= MAX_SEQ
        && state.watermark <= state.next_seq
        && state.round <= MAX_SEQ;
    plausible.then_some((generation, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sound_crc_over_impossible_counts_is_no_slot() {
        let sane = State {
            spans_at_least: 100,
            watermark: 1,
            next_seq: 5,
            round: 3,
        };
        for bad in [
            State {
                spans_at_least: 1 << 63,
                ..sane
            },
            State {
                next_seq: u64::MAX,
                ..sane
            },
            State { watermark: 6, ..sane },
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (mut ledger, _) = Ledger::open(dir.path()).unwrap();
            // Generation 1: the second slot.
            ledger.write(sane).unwrap();
            // Crafted into the first: a newer generation, its CRC computed.
            let slot = slot(7, &bad);
            let path = dir.path().join(FILE);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[..SLOT].copy_from_slice(&slot);
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(Ledger::read(dir.path()), Some(sane), "{bad:?} is not believed");
            assert!(!Ledger::inspect(dir.path()).unsound, "the other slot stands");
            // With no sound slot left, the ledger is damage.
            bytes[SLOT..].copy_from_slice(&slot);
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(Ledger::read(dir.path()), None);
            assert!(Ledger::inspect(dir.path()).unsound);
        }
    }

    #[test]
    fn the_latest_sound_slot_wins_and_a_torn_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (mut l, none) = Ledger::open(dir.path()).unwrap();
        assert_eq!(none, None);
        let a = State {
            spans_at_least: 5,
            watermark: 1,
            next_seq: 9,
            round: 3,
        };
        let b = State { spans_at_least: 7, ..a };
        l.write(a).unwrap();
        l.write(b).unwrap();
        drop(l);
        assert_eq!(Ledger::open(dir.path()).unwrap().1, Some(b));
        // Tear the newer slot: the older one is read.
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(Ledger::open(dir.path()).unwrap().1, Some(a));
    }

    #[test]
    fn a_format_1_ledger_is_read_and_then_rewritten_in_format_2() {
        let dir = tempfile::tempdir().unwrap();
        let mut v1 = [0u8; SLOT_V1];
        v1[0..4].copy_from_slice(&MAGIC_V1);
        v1[4..8].copy_from_slice(&7u32.to_le_bytes());
        v1[8..16].copy_from_slice(&40u64.to_le_bytes());
        v1[16..24].copy_from_slice(&2u64.to_le_bytes());
        v1[24..32].copy_from_slice(&9u64.to_le_bytes());
        let crc = crc32fast::hash(&v1[..32]);
        v1[32..36].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(dir.path().join(FILE), v1).unwrap();
        let old = State {
            spans_at_least: 40,
            watermark: 2,
            next_seq: 9,
            round: 0,
        };
        let (mut l, found) = Ledger::open(dir.path()).unwrap();
        assert_eq!(found, Some(old));
        let new = State { round: 1, ..old };
        l.write(new).unwrap();
        assert_eq!(Ledger::read(dir.path()), Some(new));
    }
}
