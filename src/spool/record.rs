//! The on-disk record format, version 1: one framed batch of spans.
//!
//! ```text
//! offset size field
//!      0    4 magic            b"SPWL"
//!      4    1 format version   1
//!      5    1 flags            bit 0: payload is raw deflate; other bits must be 0
//!      6    2 reserved         0
//!      8    4 span count       u32 LE
//!     12    4 payload length   u32 LE
//!     16    4 CRC32            crc32fast (IEEE) of bytes 0..16, 20..28 and the payload
//!     20    8 created          unix milliseconds, u64 LE
//!     28    n payload          bincode 2 (standard config, serde) of Vec<Span>,
//!                              deflated (level 1) when that makes it smaller
//! ```
//!
//! Invariants: [`decode`] never panics and never allocates more than
//! [`MAX_PAYLOAD`] whatever the input (the length is checked against the
//! input and the CRC before bincode runs, and bincode runs with a limit);
//! a record that decodes re-encodes to the same bytes; a later format must
//! keep reading version 1 (a golden record is kept under `tests/golden/`).

use crate::span::Span;

/// The first four bytes of every record.
pub const MAGIC: [u8; 4] = *b"SPWL";
/// The format this code writes.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 28;
/// The largest payload accepted, before or after inflating (and the
/// decoder's allocation bound).
pub const MAX_PAYLOAD: usize = 16 << 20;
/// Flag bit: the payload is raw deflate.
pub const FLAG_DEFLATE: u8 = 1;

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than a header.
    #[error("truncated: {0} bytes, a header needs {HEADER_LEN}")]
    Truncated(usize),
    /// Not a spillway record.
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// Written by a format this code does not know.
    #[error("unknown format version {0}")]
    UnknownVersion(u8),
    /// Flags this code does not know.
    #[error("unknown flags {0:#04x}")]
    UnknownFlags(u8),
    /// The header's payload length disagrees with the bytes present.
    #[error("payload length {declared} but {present} bytes present")]
    Length {
        /// What the header says.
        declared: usize,
        /// What is there.
        present: usize,
    },
    /// The payload does not match its checksum.
    #[error("CRC mismatch: header {expected:08x}, payload {actual:08x}")]
    Crc {
        /// The header's CRC.
        expected: u32,
        /// The payload's CRC.
        actual: u32,
    },
    /// The payload passed its CRC but is not a batch (a bug or a newer writer).
    #[error("payload does not decode: {0}")]
    Decode(String),
    /// The header's span count disagrees with the payload.
    #[error("header says {declared} spans, payload has {actual}")]
    Count {
        /// What the header says.
        declared: u32,
        /// What the payload holds.
        actual: usize,
    },
    /// The batch could not be encoded.
    #[error("batch does not encode: {0}")]
    Encode(String),
    /// The batch is too large to encode as one record.
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// When it was written, unix milliseconds.
    pub created_unix_ms: u64,
    /// The spans.
    pub spans: Vec<Span>,
}

/// What a header says, readable without decoding the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Spans in the record.
    pub spans: u32,
    /// Payload bytes.
    pub payload_len: u32,
    /// When it was written, unix milliseconds.
    pub created_unix_ms: u64,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_PAYLOAD>()
}

/// Appends the record for `spans` to `out`, deflating the payload when
/// that makes it smaller.
pub fn encode(spans: &[Span], created_unix_ms: u64, out: &mut Vec<u8>) -> Result<(), RecordError> {
    let plain = bincode::serde::encode_to_vec(spans, config()).map_err(|e| RecordError::Encode(e.to_string()))?;
    if plain.len() > MAX_PAYLOAD {
        return Err(RecordError::TooLarge(plain.len()));
    }
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    let mut flags = 0;
    let mut deflater = flate2::write::DeflateEncoder::new(std::mem::take(out), flate2::Compression::fast());
    let deflated = std::io::Write::write_all(&mut deflater, &plain).and_then(|()| deflater.finish());
    match deflated {
        Ok(buf) if buf.len() - start - HEADER_LEN < plain.len() => {
            *out = buf;
            flags = FLAG_DEFLATE;
        }
        Ok(mut buf) => {
            buf.truncate(start + HEADER_LEN);
            buf.extend_from_slice(&plain);
            *out = buf;
        }
        Err(e) => return Err(RecordError::Encode(e.to_string())),
    }
    let payload_len = out.len() - start - HEADER_LEN;
    if payload_len > MAX_PAYLOAD {
        out.truncate(start);
        return Err(RecordError::TooLarge(payload_len));
    }
    let payload = out.split_off(start + HEADER_LEN);
    out.truncate(start);
    frame(
        &payload,
        flags,
        u32::try_from(spans.len()).unwrap_or(u32::MAX),
        created_unix_ms,
        out,
    );
    Ok(())
}

/// Frames an already-encoded `payload` with a valid header and CRC, as
/// [`encode`] would: for tests and the fuzzer, which must reach the payload
/// decoders past the checksum. `flags` must be a valid combination.
pub fn frame(payload: &[u8], flags: u8, spans: u32, created_unix_ms: u64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    out.extend_from_slice(payload);
    let record = &mut out[start..];
    record[0..4].copy_from_slice(&MAGIC);
    record[4] = VERSION;
    record[5] = flags;
    record[8..12].copy_from_slice(&spans.to_le_bytes());
    record[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    record[20..28].copy_from_slice(&created_unix_ms.to_le_bytes());
    let crc = checksum(record);
    record[16..20].copy_from_slice(&crc.to_le_bytes());
}

/// CRC32 of everything in the record but the CRC field itself.
fn checksum(record: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&record[0..16]);
    h.update(&record[20..]);
    h.finalize()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

/// Reads and checks a header (magic, version, length) without the payload.
pub fn header(bytes: &[u8]) -> Result<Header, RecordError> {
    if bytes.len() < HEADER_LEN {
        return Err(RecordError::Truncated(bytes.len()));
    }
    let mut magic = [0; 4];
    magic.copy_from_slice(&bytes[0..4]);
    if magic != MAGIC {
        return Err(RecordError::BadMagic(magic));
    }
    if bytes[4] != VERSION {
        return Err(RecordError::UnknownVersion(bytes[4]));
    }
    if bytes[5] & !FLAG_DEFLATE != 0 || bytes[6..8] != [0, 0] {
        return Err(RecordError::UnknownFlags(bytes[5]));
    }
    let payload_len = u32_at(bytes, 12);
    let present = bytes.len() - HEADER_LEN;
    if payload_len as usize != present || present > MAX_PAYLOAD {
        return Err(RecordError::Length {
            declared: payload_len as usize,
            present,
        });
    }
    let mut created = [0; 8];
    created.copy_from_slice(&bytes[20..28]);
    Ok(Header {
        spans: u32_at(bytes, 8),
        payload_len,
        created_unix_ms: u64::from_le_bytes(created),
    })
}

/// Decodes a record, checking everything.
pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
    let h = header(bytes)?;
    let payload = &bytes[HEADER_LEN..];
    let expected = u32_at(bytes, 16);
    let actual = checksum(bytes);
    if expected != actual {
        return Err(RecordError::Crc { expected, actual });
    }
    let inflated;
    let payload = if bytes[5] & FLAG_DEFLATE != 0 {
        let mut buf = Vec::new();
        let reader = flate2::read::DeflateDecoder::new(payload);
        std::io::Read::read_to_end(&mut std::io::Read::take(reader, MAX_PAYLOAD as u64 + 1), &mut buf)
            .map_err(|e| RecordError::Decode(format!("inflate: {e}")))?;
        if buf.len() > MAX_PAYLOAD {
            return Err(RecordError::TooLarge(buf.len()));
        }
        inflated = buf;
        &inflated[..]
    } else {
        payload
    };
    let (spans, used): (Vec<Span>, usize) =
        bincode::serde::decode_from_slice(payload, config()).map_err(|e| RecordError::Decode(e.to_string()))?;
    if used != payload.len() {
        return Err(RecordError::Decode(format!("{} trailing bytes", payload.len() - used)));
    }
    if spans.len() != h.spans as usize {
        return Err(RecordError::Count {
            declared: h.spans,
            actual: spans.len(),
        });
    }
    Ok(Record {
        created_unix_ms: h.created_unix_ms,
        spans,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::span::{Event, Kind, Status, Value};

    pub(super) fn sample() -> Vec<Span> {
        vec![Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_id: Some([3; 8]),
            name: "GET /users/:id".into(),
            kind: Kind::Server,
            start_unix_nanos: 1_764_000_000_000_000_000,
            end_unix_nanos: 1_764_000_000_001_000_000,
            status: Status::Error("boom".into()),
            attributes: vec![
                ("nan".into(), Value::F64(f64::NAN)),
                ("inf".into(), Value::F64(f64::NEG_INFINITY)),
                ("arr".into(), Value::StrArray(vec!["a".into()])),
            ],
            events: smallvec::smallvec![Event {
                name: "exception".into(),
                time_unix_nanos: 5,
                attributes: vec![]
            }],
            dropped_attributes: 1,
            dropped_events: 2,
        }]
    }

    #[test]
    fn round_trips_and_keeps_nan_bits() {
        let mut out = Vec::new();
        encode(&sample(), 42, &mut out).unwrap();
        let r = decode(&out).unwrap();
        assert_eq!(r.created_unix_ms, 42);
        let Value::F64(nan) = r.spans[0].attributes[0].1 else {
            panic!()
        };
        assert!(nan.is_nan());
        let mut again = Vec::new();
        encode(&r.spans, 42, &mut again).unwrap();
        assert_eq!(out, again);
    }

    #[test]
    fn repetitive_batches_are_deflated_and_still_round_trip() {
        let many: Vec<Span> = (0..200).flat_map(|_| sample()).collect();
        let mut out = Vec::new();
        encode(&many, 7, &mut out).unwrap();
        assert_eq!(out[5], FLAG_DEFLATE);
        let plain = bincode::serde::encode_to_vec(&many, config()).unwrap();
        assert!(out.len() * 4 < plain.len(), "{} vs {}", out.len(), plain.len());
        assert_eq!(decode(&out).unwrap().spans.len(), 200);
    }

    #[test]
    fn a_deflate_bomb_is_refused_within_the_bound() {
        // Valid header and CRC around a payload that inflates past MAX_PAYLOAD.
        let zeros = vec![0u8; MAX_PAYLOAD + 4096];
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut enc, &zeros).unwrap();
        let bomb = enc.finish().unwrap();
        let mut rec = Vec::new();
        frame(&bomb, FLAG_DEFLATE, 0, 0, &mut rec);
        assert!(
            matches!(decode(&rec), Err(RecordError::TooLarge(_))),
            "{:?}",
            decode(&rec).err()
        );
    }

    #[test]
    fn a_huge_claimed_event_count_is_an_error_not_an_abort() {
        // Found by the spool_record fuzzer: the payload claims ~4 EiB of events.
        let data = include_bytes!("../../tests/golden/crash-smallvec-reserve.bin");
        let (&flags, payload) = data.split_first().unwrap();
        let mut framed = Vec::new();
        frame(
            payload,
            flags & FLAG_DEFLATE,
            payload.len().min(64) as u32,
            1,
            &mut framed,
        );
        assert!(decode(&framed).is_err());
    }

    #[test]
    fn every_single_bit_flip_and_truncation_is_detected() {
        let mut out = Vec::new();
        encode(&sample(), 42, &mut out).unwrap();
        for i in 0..out.len() {
            for bit in 0..8 {
                let mut bad = out.clone();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "flip at byte {i} bit {bit} went unnoticed");
            }
        }
        for len in 0..out.len() {
            assert!(decode(&out[..len]).is_err(), "truncation to {len} went unnoticed");
        }
    }
}

#[cfg(test)]
mod golden {
    use super::*;

    const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/record-v1.bin");

    /// Reads the committed version-1 record. `SPILLWAY_WRITE_GOLDEN=1`
    /// writes it (only ever for a new format version, never to "fix" this test).
    #[test]
    fn version_1_golden_record_still_decodes() {
        let sample = tests::sample();
        if std::env::var_os("SPILLWAY_WRITE_GOLDEN").is_some() {
            let mut out = Vec::new();
            encode(&sample, 1_764_000_000_000, &mut out).unwrap();
            std::fs::write(GOLDEN, &out).unwrap();
        }
        let bytes = std::fs::read(GOLDEN).expect("golden record is committed");
        let r = decode(&bytes).unwrap();
        assert_eq!(r.created_unix_ms, 1_764_000_000_000);
        assert_eq!(r.spans.len(), 1);
        let (got, want) = (&r.spans[0], &sample[0]);
        assert_eq!(
            (got.trace_id, got.span_id, got.parent_id),
            (want.trace_id, want.span_id, want.parent_id)
        );
        assert_eq!(
            (&got.name, got.kind, &got.status),
            (&want.name, want.kind, &want.status)
        );
        assert_eq!(
            (got.start_unix_nanos, got.end_unix_nanos),
            (want.start_unix_nanos, want.end_unix_nanos)
        );
        assert_eq!(got.events, want.events);
        assert_eq!((got.dropped_attributes, got.dropped_events), (1, 2));
        let crate::span::Value::F64(nan) = got.attributes[0].1 else {
            panic!("nan attribute")
        };
        assert!(nan.is_nan());
        assert_eq!(&got.attributes[1..], &want.attributes[1..]);
    }
}
