//! The spool's unit tests (shared helpers are used by its other files' tests).
use super::*;
use crate::span::{Kind, Status, Value};

/// sled over the spool in `dir`, closed a moment ago in this process: sled
/// lets go of its lock only once its I/O threads are done, so the product's
/// opener is used, which waits for it.
pub(crate) fn reopen_sled(dir: &std::path::Path) -> sled::Db {
    super::open::open_sled(dir, std::time::Duration::from_secs(60)).unwrap()
}

pub(super) fn spans(n: usize, tag: &str) -> Vec<Span> {
    spans_of(n, tag, 100)
}

/// `n` spans, each with a random string attribute `chars` long.
fn spans_of(n: usize, tag: &str, chars: usize) -> Vec<Span> {
    (0..n)
        .map(|i| Span {
            trace_id: [1; 16],
            span_id: (i as u64 + 1).to_be_bytes(),
            parent_id: None,
            name: format!("{tag}-{i}").into(),
            kind: Kind::Server,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            status: Status::Ok,
            // Random, so records cannot compress below the split size.
            attributes: vec![(
                "k".into(),
                Value::String((0..chars).map(|_| fastrand::alphanumeric()).collect()),
            )],
            events: Default::default(),
            dropped_attributes: 0,
            dropped_events: 0,
        })
        .collect()
}

fn names(entries: &[StoredRecord]) -> Vec<String> {
    entries
        .iter()
        .flat_map(|e| e.spans.as_ref().unwrap().iter().map(|s| s.name.to_string()))
        .collect()
}

#[test]
fn fifo_across_reopen_and_records_stay_small() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        s.push("svc", &spans(2000, "a"), 1).unwrap();
        s.push("svc", &spans(3, "b"), 2).unwrap();
        assert_eq!(s.stats().spans, 2003);
    }
    let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
    assert_eq!(s.stats().spans, 2003);
    let all = s.oldest(Tree::Queue, usize::MAX).unwrap();
    assert!(all.len() > 2, "2000 spans of ~150 bytes must be split");
    assert!(all.iter().all(|e| e.bytes <= RECORD_TARGET + record::HEADER_LEN));
    let got = names(&all);
    assert_eq!(got.first().map(String::as_str), Some("a-0"));
    assert_eq!(got.last().map(String::as_str), Some("b-2"));
    assert_eq!(got.len(), 2003);
    for e in &all[..all.len() - 1] {
        s.dead_letter(e, &[], 0).unwrap();
    }
    s.push("svc", &spans(1, "c"), 3).unwrap();
    let rest = names(&s.oldest(Tree::Queue, 10).unwrap());
    assert_eq!(rest, ["b-0", "b-1", "b-2", "c-0"]);
}

#[test]
fn records_sled_loses_behind_the_spools_back_are_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
        for i in 0..3 {
            s.push("svc", &spans(10, &format!("r{i}")), 1).unwrap();
        }
        // Removals through the spool keep the ledger in step.
        let first = s.oldest(Tree::Queue, 1).unwrap();
        s.dead_letter(&first[0], &[], 0).unwrap();
    }
    let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
    assert_eq!(s.take_damage(), None, "acknowledged records are not a loss");
    drop(s);
    {
        // What sled does to a damaged log: a record vanishes, no error.
        let db = reopen_sled(dir.path());
        let queue = db.open_tree("queue").unwrap();
        queue.pop_max().unwrap().unwrap();
        db.flush().unwrap();
    }
    let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
    let damage = Damage {
        expected_spans: 20,
        found_spans: 10,
        lost_spans: 10,
        ..Damage::default()
    };
    assert_eq!(s.take_damage(), Some(damage));
    assert_eq!(s.take_damage(), None);
    drop(s);
    let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
    assert_eq!(s.take_damage(), None, "reported once, not at every start");
}

#[test]
fn prepared_records_decode_back_to_their_spans_also_after_the_append() {
    let batch = spans(3_000, "a");
    let prepared = prepare("svc", &batch, 1);
    assert!(prepared.records.len() > 1, "{} records", prepared.records.len());
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
    s.append_prepared(&prepared).unwrap();
    s.commit().unwrap();
    assert_eq!(s.stats().spans, 3_000);
    assert_eq!(prepared.spans(), (batch.clone(), 0));
    // A record damaged in memory costs its own spans, counted.
    let mut damaged = prepared;
    let first = damaged.records[0].1 as usize;
    let last = damaged.records[0].0.len() - 1;
    damaged.records[0].0[last] ^= 1;
    assert_eq!(damaged.spans(), (batch[first..].to_vec(), first as u64));
}

#[test]
fn a_span_too_large_for_any_record_is_left_out_and_counted_not_the_batch() {
    let mut batch = spans(50, "a");
    let mut huge = batch[0].clone();
    huge.name = "huge".into();
    huge.attributes = vec![("a".into(), Value::I64Array(vec![1; 2_100_000]))];
    batch.insert(20, huge);
    let prepared = prepare("svc", &batch, 1);
    assert_eq!(
        (
            prepared.oversize(),
            prepared.records.iter().map(|(_, n)| u64::from(*n)).sum::<u64>()
        ),
        (1, 50)
    );
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
    s.append_prepared(&prepared).unwrap();
    s.commit().unwrap();
    let all = names(&s.oldest(Tree::Queue, usize::MAX).unwrap());
    assert_eq!(all.len(), 50);
    assert!(!all.contains(&"huge".to_owned()));
    // Where the caller owns the spans, they are refused, not dropped.
    let err = s.push("svc", &batch, 2).unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");
    assert_eq!(s.stats().spans, 50);
}

#[test]
fn second_opener_is_told_the_directory_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Spool::open(dir.path(), u64::MAX).unwrap();
    let err = Spool::open(dir.path(), u64::MAX).err().expect("second open must fail");
    assert!(matches!(err, SpoolError::InUse { .. }), "{err:?}");
    assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
}

#[test]
fn cap_drops_oldest_and_reports_spans() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), 20_000).unwrap();
    let mut dropped = 0;
    for i in 0..10 {
        dropped += s.push("svc", &spans(50, &format!("r{i}")), i).unwrap();
    }
    let st = s.stats();
    assert!(st.bytes <= 20_000, "{st:?}");
    assert_eq!(st.spans + dropped, 500);
    let names = names(&s.oldest(Tree::Queue, usize::MAX).unwrap());
    assert_eq!(names.last().map(String::as_str), Some("r9-49"), "newest kept");
    assert!(!names.iter().any(|n| n.starts_with("r0-")), "oldest dropped");
}

#[test]
fn expire_drops_only_records_past_the_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
    s.push("svc", &spans(3, "old"), 1_000).unwrap();
    s.push("svc", &spans(4, "older-but-kept"), 2_600).unwrap();
    s.push("svc", &spans(5, "new"), 3_000).unwrap();
    assert_eq!(s.expire(3_500, 1_000).unwrap(), 3);
    assert_eq!(s.stats().spans, 9);
    assert_eq!(names(&s.oldest(Tree::Queue, 1).unwrap())[0], "older-but-kept-0");
    assert_eq!(s.expire(3_500, 1_000).unwrap(), 0);
}

#[test]
fn dead_letters_and_quarantine_leave_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
    s.push("svc", &spans(2, "x"), 1).unwrap();
    s.push("svc", &spans(2, "y"), 1).unwrap();
    let entries = s.oldest(Tree::Queue, 2).unwrap();
    let refused = &entries[0].spans.as_ref().unwrap()[..1];
    s.dead_letter(&entries[0], refused, 5).unwrap();
    s.quarantine(&entries[1]).unwrap();
    let st = s.stats();
    assert_eq!(
        (st.records, st.spans, st.dead_letter_spans, st.quarantined_records),
        (0, 0, 1, 1)
    );
    drop(s);
    let s = Spool::open(dir.path(), u64::MAX).unwrap();
    assert_eq!(s.stats().dead_letter_spans, 1);
    assert_eq!(s.stats().quarantined_records, 1);
    // Sequence numbers are never reused, even with the queue empty.
    let mut s = s;
    s.push("svc", &spans(1, "z"), 1).unwrap();
    assert!(s.oldest(Tree::Queue, 1).unwrap()[0].key >= 2);
}

mod disk_cap {
    use super::*;

    /// The cap bounds sled's size on disk, not just the record bytes: 400
    /// spans at a time, with incompressible strings of 100, 135 and 200
    /// characters (records of about 43, 57 and 85 KB before the split),
    /// pushed through a 32 MiB cap until 2 to 4 times the cap went through.
    /// sled frees space lazily and its log file never shrinks under this
    /// churn; below about 32 MiB that overshoots the cap (README.md).
    #[test]
    fn the_cap_bounds_the_size_on_disk() {
        let cap = 32u64 << 20;
        for chars in [100, 135, 200] {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Spool::open(dir.path(), cap).unwrap();
            let batch = spans_of(400, "x", chars);
            let (mut dropped, mut peak) = (0, 0);
            for i in 0..1500 {
                dropped += s.push("svc", &batch, i).unwrap();
                peak = peak.max(s.size_on_disk());
            }
            assert_eq!(s.stats().spans + dropped, 400 * 1500, "every span spooled or counted");
            assert!(dropped > 0);
            assert!(
                peak <= cap,
                "{chars} characters: peak {peak} bytes on disk over a cap of {cap}"
            );
            assert!(s.amplification() > 1.0, "measured: {}", s.amplification());
        }
    }
}

#[test]
fn a_round_of_removals_lowers_the_ledger_once_before_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), u64::MAX).unwrap();
    for tag in ["a", "b", "c", "d"] {
        s.append("svc", &spans(10, tag), 1).unwrap();
    }
    s.commit().unwrap();
    let all = s.oldest(Tree::Queue, usize::MAX).unwrap();
    let keys: Vec<u64> = all.iter().map(|e| e.key).collect();
    assert_eq!(all.len(), 4);
    let at = |s: &Spool| ledger::Ledger::read(&s.dir).unwrap();
    assert_eq!((at(&s).spans_at_least, at(&s).watermark), (40, keys[0]));

    // Not the oldest: the watermark stays, the spans go.
    s.lower_ledger_for(&[(keys[2], 10), (keys[1], 10)]).unwrap();
    assert_eq!((at(&s).spans_at_least, at(&s).watermark), (20, keys[0]));
    s.commit().unwrap();

    // The three oldest, in any order: past them both.
    s.lower_ledger_for(&[(keys[2], 10), (keys[0], 10), (keys[1], 10)])
        .unwrap();
    let lowered = std::fs::read(dir.path().join(ledger::FILE)).unwrap();
    assert_eq!((at(&s).spans_at_least, at(&s).watermark), (10, keys[3]));
    // Their removals write nothing more to the ledger.
    for e in &all[..3] {
        s.dead_letter(e, &[], 2).unwrap();
    }
    assert_eq!(std::fs::read(dir.path().join(ledger::FILE)).unwrap(), lowered);
    // The commit raises it to what is left; a removal outside the round
    // lowers it itself.
    s.commit().unwrap();
    assert_eq!((at(&s).spans_at_least, at(&s).watermark), (10, keys[3]));
    s.dead_letter(&all[3], &[], 2).unwrap();
    assert_eq!((at(&s).spans_at_least, at(&s).watermark), (0, s.next_seq));
}
