//! What a spool holds, read from its raw files ([`super::scan`]) without
//! sled and without writing a byte: the read-only commands' view, and what
//! salvage recovers.
//!
//! The newest state frame says which records are still held (each tree's
//! watermark); the frame of the commit the ledger confirms says how many
//! there must be, so a record whose bytes are gone is counted, not missed.
//! Spools written before state frames fall back to their framed watermark
//! and the ledger's lower bound of spans.

use super::ledger;
use super::record::Tree;
use super::scan::{QuarantinedFrame, Scan, SoundRecord, Unreadable};
use super::state::State;
use std::io;
use std::path::Path;

/// Records the confirmed commit counted that are not in the files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Missing {
    /// Records.
    pub records: u64,
    /// Their spans.
    pub spans: u64,
}

/// A spool's contents as its raw files hold them (see the module docs).
#[derive(Debug)]
pub struct View {
    /// What the scan found.
    pub scan: Scan,
    /// The ledger, if it could be read.
    pub ledger: Option<ledger::State>,
    /// The ledger has bytes of which no slot is sound: damage.
    pub ledger_unsound: bool,
    /// The newest state frame: its watermarks decide what is held.
    pub state: Option<State>,
    /// The frame of the commit the ledger records as durable, if found.
    pub confirmed: Option<State>,
    /// The queue, oldest first.
    pub queue: Vec<SoundRecord>,
    /// The dead letters, oldest first.
    pub dead: Vec<SoundRecord>,
    /// The quarantined records, oldest first.
    pub quarantined: Vec<QuarantinedFrame>,
    /// Distinct records below their watermark (settled, or sled's stale
    /// copies).
    pub settled: u64,
    /// Extra copies of held records (sled's page versions).
    pub copies: u64,
    /// What the confirmed commit counted that the files no longer hold.
    pub missing: Missing,
    /// Candidates for held records that fail their checks, with no sound
    /// copy anywhere: damaged records.
    pub unreadable: Vec<Unreadable>,
}

impl View {
    /// Reads the spool in `dir` (only reads).
    pub fn read(dir: &Path) -> io::Result<View> {
        let scan = Scan::dir(dir)?;
        Ok(View::of(scan, ledger::Ledger::inspect(dir)))
    }

    /// Interprets a scan, given the ledger.
    pub fn of(mut scan: Scan, reading: ledger::Reading) -> View {
        let ledger = reading.state;
        let state = scan.newest_state();
        let confirmed = ledger.and_then(|l| scan.states.get(&l.round).map(|(s, _)| *s));
        let queue_below = match state {
            Some(s) => s.queue_below,
            None => scan.watermark.max(ledger.map(|l| l.watermark)).unwrap_or(0),
        };
        let (dead_below, quarantine_below) = state.map_or((0, 0), |s| (s.dead_below, s.quarantine_below));
        // One copy per (tree, sequence), the best: a sound one before a
        // mended one, then the most spans. Version 1 records carry no
        // sequence, so each distinct one is kept.
        let mut chosen: Vec<SoundRecord> = Vec::new();
        let mut copies = 0u64;
        let mut last: Option<(u8, u64)> = None;
        for (&(tree, seq, _), found) in &scan.records {
            match chosen.last_mut() {
                Some(best) if found.version >= 2 && last == Some((tree, seq)) => {
                    copies += u64::from(found.copies);
                    if better(found, best) {
                        *best = *found;
                    }
                }
                _ => {
                    copies += u64::from(found.copies.saturating_sub(1));
                    chosen.push(*found);
                }
            }
            last = Some((tree, seq));
        }
        let (mut queue, mut dead) = (Vec::new(), Vec::new());
        let mut settled = 0u64;
        for found in chosen {
            let (below, list) = if found.meta.tree == Tree::Dead {
                (dead_below, &mut dead)
            } else {
                (queue_below, &mut queue)
            };
            if found.version >= 2 && found.meta.seq < below {
                settled += 1;
            } else {
                list.push(found);
            }
        }
        let quarantined: Vec<QuarantinedFrame> = scan
            .quarantined
            .values()
            .filter(|q| q.frame.key >= quarantine_below)
            .copied()
            .collect();
        let missing = missing(&scan, confirmed, ledger, state, spans_of(&queue));
        let unreadable = unreadable(&mut scan, queue_below, dead_below);
        View {
            scan,
            ledger,
            ledger_unsound: reading.unsound,
            state,
            confirmed,
            queue,
            dead,
            quarantined,
            settled,
            copies,
            missing,
            unreadable,
        }
    }

    /// Spans in the queue (as the records' headers declare).
    pub fn queue_spans(&self) -> u64 {
        spans_of(&self.queue)
    }

    /// Spans in the dead letters.
    pub fn dead_spans(&self) -> u64 {
        spans_of(&self.dead)
    }

    /// Whether the files are missing anything they should hold.
    pub fn is_damaged(&self) -> bool {
        self.missing != Missing::default() || !self.unreadable.is_empty() || !self.scan.unreadable_files.is_empty()
    }
}

/// What the confirmed commit counted that `scan` no longer holds; with no
/// confirmed frame and no state frames at all, what the ledger's lower
/// bound of spans says is missing from the `queue_spans` found.
fn missing(
    scan: &Scan,
    confirmed: Option<State>,
    ledger: Option<ledger::State>,
    state: Option<State>,
    queue_spans: u64,
) -> Missing {
    match (confirmed, ledger) {
        (Some(c), _) => {
            let held: Vec<&SoundRecord> = scan
                .records
                .values()
                .filter(|f| f.meta.tree == Tree::Queue && f.meta.seq >= c.queue_below && f.meta.seq < c.next_seq)
                .collect();
            let mut seqs: Vec<u64> = held.iter().map(|f| f.meta.seq).collect();
            seqs.dedup();
            let spans: u64 = dedup_spans(&held);
            Missing {
                records: c.queue_records.saturating_sub(seqs.len() as u64),
                spans: c.queue_spans.saturating_sub(spans),
            }
        }
        (None, Some(l)) if state.is_none() => Missing {
            records: 0,
            spans: l.spans_at_least.saturating_sub(queue_spans),
        },
        _ => Missing::default(),
    }
}

/// The scan's unreadable candidates still held (at or above their tree's
/// watermark) with no sound copy anywhere (a mended copy lost spans: it
/// stays named here).
fn unreadable(scan: &mut Scan, queue_below: u64, dead_below: u64) -> Vec<Unreadable> {
    let sound: std::collections::BTreeSet<(u8, u64)> = (scan.records.iter())
        .filter(|(_, found)| !found.mended)
        .map(|(&(tree, seq, _), _)| (tree, seq))
        .collect();
    std::mem::take(&mut scan.unreadable)
        .into_iter()
        .filter(|u| match u.seq {
            Some((tree, seq)) => {
                let below = if tree == Tree::Dead { dead_below } else { queue_below };
                seq >= below && !sound.contains(&(tree as u8, seq))
            }
            None => false,
        })
        .collect()
}

/// Whether `a` is a better copy of a record than `b`: sound rather than
/// mended, then holding more spans.
fn better(a: &SoundRecord, b: &SoundRecord) -> bool {
    (!a.mended, a.spans) > (!b.mended, b.spans)
}

/// The spans `records` declare.
fn spans_of(records: &[SoundRecord]) -> u64 {
    records.iter().map(|f| u64::from(f.spans)).sum()
}

/// Spans of records counted once per sequence, from its best copy.
fn dedup_spans(found: &[&SoundRecord]) -> u64 {
    let mut best = std::collections::BTreeMap::new();
    for f in found {
        let spans = best.entry(f.meta.seq).or_insert(0);
        *spans = (*spans).max(f.spans);
    }
    best.values().map(|&n| u64::from(n)).sum()
}
