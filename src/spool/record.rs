//! The on-disk record format: one framed batch of spans.
//!
//! Version 3, the format written:
//!
//! ```text
//! offset size field
//!      0    4 magic            b"SPWL"
//!      4    1 format version   3
//!      5    1 flags            bit 1: payload is an LZ4 block after its plain length
//!                              (u32 LE); other bits must be 0
//!      6    1 tree             0: the queue, 1: dead letters
//!      7    1 reserved         0
//!      8    4 span count       u32 LE
//!     12    4 payload length   u32 LE
//!     16    4 CRC32            crc32fast (IEEE) of every byte but these four
//!     20    8 created          unix milliseconds, u64 LE
//!     28    8 sequence         the record's key in the spool, u64 LE
//!     36    n payload          service name (u32 LE length, UTF-8), then the
//!                              spans, each in the packed layout of
//!                              `span::packed` with names inline; LZ4-compressed
//!                              when that makes it smaller
//! ```
//!
//! Version 2 (read, no longer written) has the same header; its flags also
//! allow bit 0 (a raw deflate payload), and its payload is bincode 2
//! (standard config, serde) of (service name: `String`, spans: `Vec<Span>`).
//! Version 1 (read) is the same up to offset 28, with bytes 6..8 zero, no
//! sequence, and a payload of `Vec<Span>` alone, plain or deflated.
//!
//! The service name travels with the spans so a spool carried to another
//! machine replays and exports under the right `localEndpoint`; the
//! sequence and tree travel with them so [`scan`](super::scan) can rebuild a queue from
//! raw files in order when sled cannot open them.
//!
//! LZ4 rather than deflate: on `generate`'s spans it compresses a payload
//! about 2x faster and decompresses it about 3x faster, for 10 % more
//! bytes (`cargo bench --bench spool -- record_codec`; BENCHMARKS.md). The
//! packed layout rather than bincode: the spans are written and read in
//! one pass without serde (`record_512` in the same bench).
//!
//! Invariants: [`decode`] never panics and allocates at most
//! [`MAX_PAYLOAD`] for the plain payload and [`MAX_DECODED`] for the spans
//! whatever the input (the length is checked against the input and the
//! CRC first, the plain length before a payload is decompressed, and the
//! span decoders run with those limits); [`encode`] writes only what
//! decodes within them; a record this code writes decodes and re-encodes
//! to the same bytes; every older format stays readable (golden records
//! are kept under `tests/golden/`).

use crate::span::Span;
use crate::span::packed::{self, Names, Reader};

/// The first four bytes of every record.
pub(crate) const MAGIC: [u8; 4] = *b"SPWL";
/// The format this code writes.
pub const VERSION: u8 = 3;
/// Header length in bytes of the version written.
pub(crate) const HEADER_LEN: usize = 36;
/// Header length of version 1.
pub(crate) const HEADER_LEN_V1: usize = 28;
/// The largest payload accepted, before or after inflating (and the
/// decoder's allocation bound).
pub(crate) const MAX_PAYLOAD: usize = 16 << 20;
/// The most a version 3 payload's spans may take in memory once decoded
/// (strings, lists and the spans themselves at their in-memory size; see
/// `span::packed`), and the decoder's allocation bound beyond the plain
/// payload.
pub(crate) const MAX_DECODED: usize = 4 * MAX_PAYLOAD;
/// No packed byte decodes to more than this many bytes in memory (an
/// attribute with an empty key and a boolean value: 6 bytes packed, one
/// `(String, Value)` decoded); `the_decoded_size_of_a_packed_byte_is_bounded`
/// keeps it true. Below [`MAX_DECODED`] / this, a payload decodes within
/// the bound without trying.
const DECODED_PER_BYTE: usize = 10;
/// Flag bit: the payload is raw deflate (read, no longer written).
pub const FLAG_DEFLATE: u8 = 1;
/// Flag bit: the payload is an LZ4 block, after its plain length (u32 LE).
pub const FLAG_LZ4: u8 = 2;
/// The service name of version 1 records, which did not carry one.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Shorter than a header.
    #[error("truncated: {0} bytes, shorter than a header")]
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
    /// The batch is too large to encode as one record.
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    /// The batch encodes within the limit, but decoding it would not (the
    /// decoder counts a number array's elements at their full width).
    #[error("payload of {0} bytes would exceed the {MAX_PAYLOAD}-byte limit when decoded")]
    Undecodable(usize),
}

impl RecordError {
    /// Whether the spans are too large for one record (an encode-side
    /// refusal; a single span refused so is dropped as oversize).
    pub fn is_too_large(&self) -> bool {
        matches!(self, RecordError::TooLarge(_) | RecordError::Undecodable(_))
    }
}

/// A tree of spool records: the queue or the dead letters. A record's
/// header names the tree it was written for. (The quarantine holds frames
/// around damaged bytes, not records: see [`Spool::quarantine`](super::Spool::quarantine).)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Tree {
    /// Waiting to be sent.
    #[default]
    Queue,
    /// Refused by the collector for good.
    Dead,
}

/// Where and when a record was written: the header fields beyond the
/// batch itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    /// Its key in the spool.
    pub seq: u64,
    /// The tree it was written for.
    pub tree: Tree,
    /// When its spans were first spilled, unix milliseconds.
    pub created_unix_ms: u64,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Header fields (`seq` is 0 for version 1, which did not keep it).
    pub meta: Meta,
    /// The service that recorded the spans ([`UNKNOWN_SERVICE`] for version 1).
    pub service: String,
    /// The spans.
    pub spans: Vec<Span>,
}

/// What a header says, readable without decoding the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: u8,
    /// Spans in the record.
    pub spans: u32,
    /// Payload bytes.
    pub payload_len: u32,
    /// Sequence, tree and creation time.
    pub meta: Meta,
}

impl Header {
    /// Header plus payload: the whole record's length.
    pub fn record_len(&self) -> usize {
        header_len(self.version) + self.payload_len as usize
    }
}

fn header_len(version: u8) -> usize {
    if version == 1 { HEADER_LEN_V1 } else { HEADER_LEN }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_PAYLOAD>()
}

/// Appends the plain payload of version 3: `service`, then `spans` packed.
pub fn payload(service: &str, spans: &[Span], out: &mut Vec<u8>) {
    packed::put_str(out, service);
    spans.iter().for_each(|span| packed::put_span::<true>(out, span));
}

/// Appends the record of `service`'s `spans` to `out`, compressing the
/// payload when that makes it smaller.
pub fn encode(service: &str, spans: &[Span], meta: Meta, out: &mut Vec<u8>) -> Result<(), RecordError> {
    let count = u32::try_from(spans.len()).map_err(|_| RecordError::TooLarge(spans.len()))?;
    let mut plain = Vec::with_capacity(256 * spans.len());
    payload(service, spans, &mut plain);
    seal(&plain, count, meta, out)
}

/// Appends the record of a version 3 `plain` payload (see [`payload`])
/// holding `count` spans, compressing it when that makes it smaller;
/// refused if it is too large to write or to read back.
pub fn seal(plain: &[u8], count: u32, meta: Meta, out: &mut Vec<u8>) -> Result<(), RecordError> {
    if plain.len() > MAX_PAYLOAD {
        return Err(RecordError::TooLarge(plain.len()));
    }
    if plain.len() > MAX_DECODED / DECODED_PER_BYTE && unpack(plain, count).is_err() {
        return Err(RecordError::Undecodable(plain.len()));
    }
    // Its plain length (at most MAX_PAYLOAD) goes first, as a u32.
    let compressed = lz4_flex::block::compress_prepend_size(plain);
    if compressed.len() < plain.len() {
        frame(VERSION, &compressed, FLAG_LZ4, count, meta, out);
    } else {
        frame(VERSION, plain, 0, count, meta, out);
    }
    Ok(())
}

/// Frames an already-encoded `payload` with a valid header and CRC, as
/// [`encode`] would: for tests and the fuzzer, which must reach the payload
/// decoders past the checksum. `version` must be 1 to 3 and `flags` a
/// valid combination for it.
pub fn frame(version: u8, payload: &[u8], flags: u8, spans: u32, meta: Meta, out: &mut Vec<u8>) {
    let start = out.len();
    let len = header_len(version);
    out.extend_from_slice(&[0; HEADER_LEN][..len]);
    out.extend_from_slice(payload);
    let record = &mut out[start..];
    record[0..4].copy_from_slice(&MAGIC);
    record[4] = version;
    record[5] = flags;
    if version >= 2 {
        record[6] = meta.tree as u8;
        record[28..36].copy_from_slice(&meta.seq.to_le_bytes());
    }
    record[8..12].copy_from_slice(&spans.to_le_bytes());
    record[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    record[20..28].copy_from_slice(&meta.created_unix_ms.to_le_bytes());
    let crc = checksum(record);
    record[16..20].copy_from_slice(&crc.to_le_bytes());
}

/// Gives a record of version 2 or later (framed by [`encode`]) the sequence `seq` and
/// its CRC anew: records are encoded before the spool numbers them.
pub(crate) fn set_seq(record: &mut [u8], seq: u64) {
    if record.len() < HEADER_LEN || record[4] < 2 {
        return;
    }
    record[28..36].copy_from_slice(&seq.to_le_bytes());
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

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Reads and checks the header at the start of `bytes` (magic, version,
/// flags), without requiring the payload to follow.
fn parse_header(bytes: &[u8]) -> Result<Header, RecordError> {
    if bytes.len() < HEADER_LEN_V1 {
        return Err(RecordError::Truncated(bytes.len()));
    }
    let mut magic = [0; 4];
    magic.copy_from_slice(&bytes[0..4]);
    if magic != MAGIC {
        return Err(RecordError::BadMagic(magic));
    }
    let version = bytes[4];
    let tree = match (version, bytes[6], bytes[7]) {
        (1..=3, 0, 0) => Tree::Queue,
        (2 | 3, 1, 0) => Tree::Dead,
        (1..=3, _, _) => return Err(RecordError::UnknownFlags(bytes[5])),
        _ => return Err(RecordError::UnknownVersion(version)),
    };
    if !matches!((version, bytes[5]), (_, 0) | (1 | 2, FLAG_DEFLATE) | (2 | 3, FLAG_LZ4)) {
        return Err(RecordError::UnknownFlags(bytes[5]));
    }
    if bytes.len() < header_len(version) {
        return Err(RecordError::Truncated(bytes.len()));
    }
    Ok(Header {
        version,
        spans: u32_at(bytes, 8),
        payload_len: u32_at(bytes, 12),
        meta: Meta {
            seq: if version >= 2 { u64_at(bytes, 28) } else { 0 },
            tree,
            created_unix_ms: u64_at(bytes, 20),
        },
    })
}

/// Reads and checks a header (magic, version, length) without the payload.
pub fn header(bytes: &[u8]) -> Result<Header, RecordError> {
    let h = parse_header(bytes)?;
    let present = bytes.len() - header_len(h.version);
    if h.payload_len as usize != present || present > MAX_PAYLOAD {
        return Err(RecordError::Length {
            declared: h.payload_len as usize,
            present,
        });
    }
    Ok(h)
}

/// Reads a header at the start of `bytes`, which may run on past the
/// record (a scan of raw files); the payload length is only checked
/// against [`MAX_PAYLOAD`].
pub(crate) fn peek_header(bytes: &[u8]) -> Result<Header, RecordError> {
    let h = parse_header(bytes)?;
    if h.payload_len as usize > MAX_PAYLOAD {
        return Err(RecordError::TooLarge(h.payload_len as usize));
    }
    Ok(h)
}

/// Checks a whole record's header and CRC without decoding its payload.
pub(crate) fn check(bytes: &[u8]) -> Result<Header, RecordError> {
    let h = header(bytes)?;
    let expected = u32_at(bytes, 16);
    let actual = checksum(bytes);
    if expected != actual {
        return Err(RecordError::Crc { expected, actual });
    }
    Ok(h)
}

/// The service name of a whole, checked record, inflating no more of a
/// deflated payload than it takes (an LZ4 block decompresses whole;
/// [`UNKNOWN_SERVICE`] for version 1).
pub fn service(bytes: &[u8]) -> Result<String, RecordError> {
    let h = check(bytes)?;
    if h.version == 1 {
        return Ok(UNKNOWN_SERVICE.to_owned());
    }
    let payload = &bytes[header_len(h.version)..];
    if h.version >= 3 {
        // A u32 length and the name, capped.
        let head = plain(bytes[5], payload, 4 + 4096)?;
        let mut r = Reader::new(&head, Names::Inline, 4096);
        return r.string().ok_or_else(|| RecordError::Decode("no service name".into()));
    }
    // A varint length (at most 9 bytes) and the name, capped.
    let head = plain(bytes[5], payload, 9 + 4096)?;
    let config = bincode::config::standard().with_limit::<4096>();
    let (name, _): (String, usize) =
        bincode::serde::decode_from_slice(&head, config).map_err(|e| RecordError::Decode(e.to_string()))?;
    Ok(name)
}

/// A payload's plain bytes by its codec (`flags`): at most `limit` of them
/// where the codec can stop early (deflate, none); an LZ4 block
/// decompresses whole, bounded by [`MAX_PAYLOAD`].
fn plain(flags: u8, payload: &[u8], limit: usize) -> Result<std::borrow::Cow<'_, [u8]>, RecordError> {
    use std::borrow::Cow;
    match flags {
        FLAG_DEFLATE => {
            let mut buf = Vec::new();
            let reader = flate2::read::DeflateDecoder::new(payload);
            std::io::Read::read_to_end(&mut std::io::Read::take(reader, limit as u64), &mut buf)
                .map_err(|e| RecordError::Decode(format!("inflate: {e}")))?;
            Ok(Cow::Owned(buf))
        }
        FLAG_LZ4 => unlz4(payload).map(Cow::Owned),
        _ => Ok(Cow::Borrowed(&payload[..payload.len().min(limit)])),
    }
}

/// An LZ4 payload's plain bytes: the declared length is checked against
/// [`MAX_PAYLOAD`] before anything is allocated, and the block must fill
/// it exactly.
fn unlz4(payload: &[u8]) -> Result<Vec<u8>, RecordError> {
    let Some((len, block)) = payload.split_first_chunk::<4>() else {
        return Err(RecordError::Decode("lz4: no plain length".into()));
    };
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_PAYLOAD {
        return Err(RecordError::TooLarge(len));
    }
    let mut plain = vec![0; len];
    match lz4_flex::block::decompress_into(block, &mut plain) {
        Ok(n) if n == len => Ok(plain),
        Ok(n) => Err(RecordError::Decode(format!("lz4: {n} of {len} bytes"))),
        Err(e) => Err(RecordError::Decode(format!("lz4: {e}"))),
    }
}

/// Decodes a record, checking everything.
pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
    let h = check(bytes)?;
    let payload = plain(bytes[5], &bytes[header_len(h.version)..], MAX_PAYLOAD + 1)?;
    if payload.len() > MAX_PAYLOAD {
        return Err(RecordError::TooLarge(payload.len()));
    }
    if h.version >= 3 {
        let (service, spans) = unpack(&payload, h.spans)?;
        return Ok(Record {
            meta: h.meta,
            service,
            spans,
        });
    }
    let decoded = if h.version == 1 {
        bincode::serde::decode_from_slice(&payload, config())
            .map(|(spans, used)| ((UNKNOWN_SERVICE.into(), spans), used))
    } else {
        bincode::serde::decode_from_slice(&payload, config())
    };
    let ((service, spans), used): ((String, Vec<Span>), usize) =
        decoded.map_err(|e| RecordError::Decode(e.to_string()))?;
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
        meta: h.meta,
        service,
        spans,
    })
}

/// A version 3 plain payload's service and its `count` spans, within
/// [`MAX_DECODED`].
fn unpack(payload: &[u8], count: u32) -> Result<(String, Vec<Span>), RecordError> {
    let mut r = Reader::new(payload, Names::Inline, MAX_DECODED);
    let service = r
        .string()
        .ok_or_else(|| RecordError::Decode("no service name".into()))?;
    let count = count as usize;
    if count.saturating_mul(std::mem::size_of::<Span>()) > MAX_DECODED {
        return Err(RecordError::Undecodable(payload.len()));
    }
    let mut spans = Vec::with_capacity(count);
    for i in 0..count {
        let span = r
            .span()
            .ok_or_else(|| RecordError::Decode(format!("span {i} of {count} does not decode")))?;
        spans.push(span);
    }
    match r.rest().len() {
        0 => Ok((service, spans)),
        n => Err(RecordError::Decode(format!("{n} trailing bytes"))),
    }
}

#[cfg(test)]
mod golden;
#[cfg(test)]
pub(super) mod tests;
