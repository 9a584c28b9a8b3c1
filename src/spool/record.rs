//! The on-disk record format: one framed batch of spans.
//!
//! Version 4, the format written:
//!
//! ```text
//! offset size field
//!      0    4 magic            b"SPWL"
//!      4    1 format version   4
//!      5    1 flags            0 (each block names its own codec)
//!      6    1 tree             0: the queue, 1: dead letters
//!      7    1 reserved         0
//!      8    4 span count       u32 LE, the sum of the blocks'
//!     12    4 payload length   u32 LE
//!     16    4 CRC32            crc32fast (IEEE) of the header's other bytes
//!                              and the service name (the record's head)
//!     20    8 created          unix milliseconds, u64 LE
//!     28    8 sequence         the record's key in the spool, u64 LE
//!     36    n payload          service name (u32 LE length, UTF-8), then
//!                              blocks of at most 64 spans, back to back
//! ```
//!
//! A block:
//!
//! ```text
//!      0    4 stored length    u32 LE, the bytes after this 12-byte head
//!      4    2 span count       u16 LE, 1 to 64
//!      6    1 codec            0: plain, 3: a zstd frame after its plain
//!                              length (u32 LE)
//!      7    1 reserved         0
//!      8    4 CRC32            of the block's other bytes
//!     12    s stored bytes     the spans, each in the packed layout of
//!                              `span::packed` with names inline
//! ```
//!
//! Each block carries its own checksum and codec, so damage costs the
//! blocks it touches, not the record: [`mend`] keeps a damaged record's
//! head and its sound blocks (salvage and the read-only commands use it).
//!
//! Version 3 (read, no longer written) has the same header, its CRC over
//! every byte but its own; its flags allow bit 1 (LZ4, the whole payload
//! after its plain length), and its payload is the service name then the
//! spans, as one block's bytes. Version 2 (read) has version 3's header;
//! its flags also allow bit 0 (a raw deflate payload), and its payload is
//! bincode 2 (standard config, serde) of (service name: `String`, spans: `Vec<Span>`).
//! Version 1 (read) is the same up to offset 28, with bytes 6..8 zero, no
//! sequence, and a payload of `Vec<Span>` alone, plain or deflated.
//!
//! The service name travels with the spans so a spool carried to another
//! machine replays and exports under the right `localEndpoint`; the
//! sequence and tree travel with them so [`scan`](super::scan) can rebuild a queue from
//! raw files in order when sled cannot open them.
//!
//! zstd at its fast level -1 in version 4: compressed alone, a block of 64
//! of `generate`'s spans keeps too little history for LZ4, which then
//! leaves 25 % more bytes than over 512 spans at once; zstd's entropy
//! coding makes up for it, leaving 12 % fewer bytes than LZ4 over 512
//! spans, for about 25 % more time than LZ4 on the blocks (`cargo bench
//! --bench spool -- record_codec`; BENCHMARKS.md). Version 3's LZ4 over the whole
//! payload compressed 2x faster than deflate and decompressed 3x faster.
//! The packed layout rather than bincode: the spans are written and read
//! in one pass without serde (`record_512` in the same bench).
//!
//! Invariants: [`decode`] never panics and allocates at most
//! [`MAX_PAYLOAD`] for the plain payload and [`MAX_DECODED`] for the spans
//! whatever the input (the length is checked against the input and the
//! CRC first, the plain length before a payload is decompressed, and the
//! span decoders run with those limits); [`encode`] writes only what
//! decodes within them; a record this code writes decodes and re-encodes
//! to the same bytes; [`mend`] keeps only blocks whose CRC holds, whatever
//! the damage; every older format stays readable (golden records
//! are kept under `tests/golden/`).

use crate::span::Span;
use crate::span::packed::{self, Names, Reader};

/// The first four bytes of every record.
pub(crate) const MAGIC: [u8; 4] = *b"SPWL";
/// The format this code writes.
pub const VERSION: u8 = 4;
/// Header length in bytes of the version written.
pub(crate) const HEADER_LEN: usize = 36;
/// A version 4 block's codec: zstd (after its plain length, u32 LE).
pub(crate) const BLOCK_ZSTD: u8 = 3;
/// zstd's level for blocks: its first fast level. On blocks of 64 of
/// `generate`'s spans it leaves 29 % fewer bytes than LZ4 for about 25 %
/// more time (`record_codec_64`; BENCHMARKS.md).
const ZSTD_LEVEL: i32 = -1;
/// Spans in a block of version 4, at most.
pub(crate) const BLOCK_SPANS: usize = 64;
/// A block's head: stored length, span count, codec, reserved, CRC.
const BLOCK_HEAD: usize = 12;
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
    /// A block of a version 4 record is damaged or malformed.
    #[error("block at byte {at}: {why}")]
    Block {
        /// Its offset in the record.
        at: usize,
        /// What is wrong with it.
        why: String,
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

    /// The payload size a refusal as too large names (0 for other errors).
    pub(crate) fn size(&self) -> usize {
        match self {
            RecordError::TooLarge(n) | RecordError::Undecodable(n) => *n,
            _ => 0,
        }
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

/// Appends a plain payload: `service`, then `spans` packed (version 3's
/// payload, and version 4's once its blocks are unpacked).
pub fn payload(service: &str, spans: &[Span], out: &mut Vec<u8>) {
    packed::put_str(out, service);
    spans.iter().for_each(|span| packed::put_span::<true>(out, span));
}

/// Appends the record of `service`'s `spans` to `out`.
pub fn encode(service: &str, spans: &[Span], meta: Meta, out: &mut Vec<u8>) -> Result<(), RecordError> {
    let mut run = packed::Run::default();
    spans.iter().for_each(|span| run.push(span));
    seal(service, &run, 0, run.len(), meta, out)
}

/// Appends the record of `service`'s spans `from..to` of `run`, in blocks
/// of at most 64 spans, each compressed when that makes it smaller;
/// refused (and nothing appended) if it is too large to write or to read
/// back.
pub fn seal(
    service: &str,
    run: &packed::Run,
    from: usize,
    to: usize,
    meta: Meta,
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    let plain = 4 + service.len() + run.bytes(from, to).len();
    if plain > MAX_PAYLOAD {
        return Err(RecordError::TooLarge(plain));
    }
    let count = u32::try_from(to - from).map_err(|_| RecordError::TooLarge(plain))?;
    if plain > MAX_DECODED / DECODED_PER_BYTE {
        let mut whole = Vec::with_capacity(plain);
        packed::put_str(&mut whole, service);
        whole.extend_from_slice(run.bytes(from, to));
        if unpack(&whole, count).is_err() {
            return Err(RecordError::Undecodable(plain));
        }
    }
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    packed::put_str(out, service);
    let mut at = from;
    while at < to {
        let end = (at + BLOCK_SPANS).min(to);
        put_block(run.bytes(at, end), (end - at) as u16, out);
        at = end;
    }
    let payload = out.len() - start - HEADER_LEN;
    if payload > MAX_PAYLOAD {
        // Blocks that do not compress add their heads to the plain bytes.
        out.truncate(start);
        return Err(RecordError::TooLarge(payload));
    }
    head(&mut out[start..], VERSION, 0, count, payload, meta);
    Ok(())
}

/// Appends a version 4 block of `spans` spans whose packed bytes are
/// `plain`: zstd when that is smaller.
fn put_block(plain: &[u8], spans: u16, out: &mut Vec<u8>) {
    let at = out.len();
    let body = at + BLOCK_HEAD + 4;
    out.resize(body + zstd::zstd_safe::compress_bound(plain.len()), 0);
    let packed = ZSTD.with_borrow_mut(|z| {
        let c = z.0.get_or_insert_with(|| zstd::bulk::Compressor::new(ZSTD_LEVEL).ok());
        c.as_mut()?.compress_to_buffer(plain, &mut out[body..]).ok()
    });
    let codec = match packed {
        Some(n) if 4 + n < plain.len() => {
            out.truncate(body + n);
            out[body - 4..body].copy_from_slice(&(plain.len() as u32).to_le_bytes());
            BLOCK_ZSTD
        }
        _ => {
            out.truncate(at + BLOCK_HEAD);
            out.extend_from_slice(plain);
            0
        }
    };
    let block = &mut out[at..];
    let stored = (block.len() - BLOCK_HEAD) as u32;
    block[0..4].copy_from_slice(&stored.to_le_bytes());
    block[4..6].copy_from_slice(&spans.to_le_bytes());
    block[6] = codec;
    let crc = block_crc(block);
    block[8..12].copy_from_slice(&crc.to_le_bytes());
}

/// Each thread's zstd contexts, made on first use (a context is a few
/// hundred KiB; making one a block would cost more than the block).
#[derive(Default)]
struct Zstd(
    Option<Option<zstd::bulk::Compressor<'static>>>,
    Option<Option<zstd::bulk::Decompressor<'static>>>,
);

thread_local! {
    static ZSTD: std::cell::RefCell<Zstd> = std::cell::RefCell::default();
}

/// Decompresses a zstd `frame` into `plain`, which it must fill exactly.
fn unzstd(frame: &[u8], plain: &mut [u8]) -> Result<(), String> {
    let n = ZSTD.with_borrow_mut(|z| {
        let d = z.1.get_or_insert_with(|| zstd::bulk::Decompressor::new().ok());
        match d.as_mut() {
            Some(d) => d.decompress_to_buffer(frame, plain).map_err(|e| format!("zstd: {e}")),
            None => Err("zstd: no decompression context".to_owned()),
        }
    })?;
    match n == plain.len() {
        true => Ok(()),
        false => Err(format!("zstd: {n} of {} bytes", plain.len())),
    }
}

/// CRC32 of a block's bytes but its CRC field.
fn block_crc(block: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&block[0..8]);
    h.update(&block[BLOCK_HEAD..]);
    h.finalize()
}

/// A version 4 block found in a record.
pub(crate) struct Block {
    /// Its offset in the record, and where it ends.
    pub(crate) at: usize,
    pub(crate) end: usize,
    spans: u16,
    codec: u8,
}

/// The block at `at` of `record` (which ends at `end`), its head checked
/// and its CRC with it if `verify`.
fn block_at(record: &[u8], at: usize, end: usize, verify: bool) -> Result<Block, RecordError> {
    let bad = |why: String| RecordError::Block { at, why };
    let Some(head) = record.get(at..at + BLOCK_HEAD).filter(|_| at + BLOCK_HEAD <= end) else {
        return Err(bad(format!(
            "{} bytes, shorter than a block head",
            end.saturating_sub(at)
        )));
    };
    let stored = u32_at(head, 0) as usize;
    let spans = u16::from_le_bytes([head[4], head[5]]);
    let (codec, reserved) = (head[6], head[7]);
    if !(1..=BLOCK_SPANS as u16).contains(&spans) || !matches!(codec, 0 | BLOCK_ZSTD) || reserved != 0 {
        return Err(bad(format!(
            "not a block head: {spans} spans, codec {codec}, reserved {reserved}"
        )));
    }
    let block_end = at + BLOCK_HEAD + stored;
    if block_end > end {
        return Err(bad(format!("{stored} bytes stored, past the record's end")));
    }
    if verify {
        let (expected, actual) = (u32_at(head, 8), block_crc(&record[at..block_end]));
        if expected != actual {
            return Err(bad(format!("CRC mismatch: head {expected:08x}, bytes {actual:08x}")));
        }
    }
    Ok(Block {
        at,
        end: block_end,
        spans,
        codec,
    })
}

/// Where a version 4 record's head (header and service name) ends, if
/// its name length lies within `record`.
fn head_end(record: &[u8]) -> Option<usize> {
    let name = u32_at(record.get(..HEADER_LEN + 4)?, HEADER_LEN) as usize;
    Some(HEADER_LEN + 4 + name).filter(|&end| end <= record.len())
}

/// A version 4 record's blocks, each checked (CRC too if `verify`), which
/// must fill the payload exactly and hold the header's span count.
pub(crate) fn blocks(record: &[u8], h: &Header, verify: bool) -> Result<Vec<Block>, RecordError> {
    let mut at = head_end(record).ok_or_else(|| RecordError::Decode("service name runs past the payload".into()))?;
    let mut found = Vec::new();
    let mut spans = 0u64;
    while at < record.len() {
        let b = block_at(record, at, record.len(), verify)?;
        spans += u64::from(b.spans);
        at = b.end;
        found.push(b);
    }
    if spans != u64::from(h.spans) {
        return Err(RecordError::Count {
            declared: h.spans,
            actual: spans as usize,
        });
    }
    Ok(found)
}

/// A damaged version 4 record cut down to what is sound in it: its head
/// and the blocks whose CRC holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mended {
    /// A sound record of the blocks kept, under the same header.
    pub record: Vec<u8>,
    /// Spans in the blocks kept.
    pub kept: u32,
    /// Spans the header declares that the blocks kept do not hold.
    pub lost: u32,
}

/// What can be kept of `bytes`, a version 4 record damaged or cut short:
/// `None` unless its head (header and service name) is sound and at least
/// one block is. A damaged block's successors are found again by their
/// own heads and CRCs, so damage costs only the blocks it touches.
pub fn mend(bytes: &[u8]) -> Option<Mended> {
    let h = parse_header(bytes).ok()?;
    if h.version != 4 {
        return None;
    }
    let end = bytes.len().min(h.record_len());
    let head = head_end(&bytes[..end])?;
    if u32_at(bytes, 16) != checksum(&bytes[..head]) {
        return None;
    }
    let mut sound = Vec::new();
    let mut at = head;
    while at + BLOCK_HEAD <= end {
        match block_at(bytes, at, end, true) {
            Ok(b) => {
                at = b.end;
                sound.push(b);
            }
            Err(_) => at += 1,
        }
    }
    // A CRC that holds over bytes that do not decode comes from a faulty
    // writer, not from damage: only then are the blocks tried one by one.
    let whole = |blocks: &[Block]| {
        let mut record = bytes[..head].to_vec();
        let mut kept = 0u32;
        for b in blocks {
            record.extend_from_slice(&bytes[b.at..b.end]);
            kept += u32::from(b.spans);
        }
        let payload = record.len() - HEADER_LEN;
        head_fields(&mut record, kept, payload);
        (kept > 0 && decode(&record).is_ok()).then(|| Mended {
            record,
            kept,
            lost: h.spans.saturating_sub(kept),
        })
    };
    whole(&sound).or_else(|| {
        sound.retain(|b| decodes(bytes, head, b));
        whole(&sound)
    })
}

/// Frames an already-encoded `payload` with a valid header and CRC, as
/// [`encode`] would: for tests and the fuzzer, which must reach the payload
/// decoders past the checksum. `version` must be 1 to 4 and `flags` a
/// valid combination for it.
pub fn frame(version: u8, payload: &[u8], flags: u8, spans: u32, meta: Meta, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN][..header_len(version)]);
    out.extend_from_slice(payload);
    head(&mut out[start..], version, flags, spans, payload.len(), meta);
}

/// Writes the header of `record` (its payload in place) and its CRC.
fn head(record: &mut [u8], version: u8, flags: u8, spans: u32, payload: usize, meta: Meta) {
    record[0..4].copy_from_slice(&MAGIC);
    record[4] = version;
    record[5] = flags;
    if version >= 2 {
        record[6] = meta.tree as u8;
        record[28..36].copy_from_slice(&meta.seq.to_le_bytes());
    }
    record[20..28].copy_from_slice(&meta.created_unix_ms.to_le_bytes());
    head_fields(record, spans, payload);
}

/// Sets a header's span count and payload length, and its CRC anew.
fn head_fields(record: &mut [u8], spans: u32, payload: usize) {
    record[8..12].copy_from_slice(&spans.to_le_bytes());
    record[12..16].copy_from_slice(&(payload as u32).to_le_bytes());
    reseal(record);
}

/// Writes a header's CRC anew, after a field changed.
fn reseal(record: &mut [u8]) {
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
    reseal(record);
}

/// The header's CRC: of everything in the record but the CRC field itself,
/// up to version 3; of the head alone (header and service name) from
/// version 4, whose blocks carry their own.
fn checksum(record: &[u8]) -> u32 {
    let end = match record[4] {
        4.. => head_end(record).unwrap_or(record.len()),
        _ => record.len(),
    };
    let mut h = crc32fast::Hasher::new();
    h.update(&record[0..16]);
    h.update(&record[20..end]);
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
        (1..=4, 0, 0) => Tree::Queue,
        (2..=4, 1, 0) => Tree::Dead,
        (1..=4, _, _) => return Err(RecordError::UnknownFlags(bytes[5])),
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
    let h = check_head(bytes)?;
    if h.version >= 4 {
        blocks(bytes, &h, true)?;
    }
    Ok(h)
}

/// Checks a record's header and its CRC (for version 4, of the head only).
fn check_head(bytes: &[u8]) -> Result<Header, RecordError> {
    let h = header(bytes)?;
    let expected = u32_at(bytes, 16);
    let actual = checksum(bytes);
    if expected != actual {
        return Err(RecordError::Crc { expected, actual });
    }
    Ok(h)
}

/// The service name of a whole record whose head is checked (a version 4
/// record's blocks are not read), inflating no more of a deflated payload
/// than it takes (an LZ4 block decompresses whole; [`UNKNOWN_SERVICE`] for
/// version 1).
pub fn service(bytes: &[u8]) -> Result<String, RecordError> {
    let h = check_head(bytes)?;
    if h.version == 1 {
        return Ok(UNKNOWN_SERVICE.to_owned());
    }
    let payload = &bytes[header_len(h.version)..];
    if h.version >= 4 {
        let name = &bytes[HEADER_LEN..head_end(bytes).unwrap_or(HEADER_LEN)];
        let mut r = Reader::new(name, Names::Inline, name.len());
        return r.string().ok_or_else(|| RecordError::Decode("no service name".into()));
    }
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

/// Whether block `b` of `record` (whose head ends at `head`) decodes to
/// the spans it counts: a CRC that holds over bytes that do not decode
/// comes from a faulty writer, not from damage.
fn decodes(record: &[u8], head: usize, b: &Block) -> bool {
    let Ok(plain) = unblock(record, head, std::slice::from_ref(b)) else {
        return false;
    };
    unpack(&plain, u32::from(b.spans)).is_ok()
}

/// A version 4 record's plain payload: the service name, then its
/// `blocks`' spans, within [`MAX_PAYLOAD`] (checked before each block is
/// decompressed).
fn unblock(record: &[u8], head: usize, blocks: &[Block]) -> Result<Vec<u8>, RecordError> {
    let mut plain = record[HEADER_LEN..head].to_vec();
    for b in blocks {
        let stored = &record[b.at + BLOCK_HEAD..b.end];
        if b.codec == 0 {
            plain.extend_from_slice(stored);
        } else {
            let Some((len, frame)) = stored.split_first_chunk::<4>() else {
                return Err(RecordError::Block {
                    at: b.at,
                    why: "zstd: no plain length".into(),
                });
            };
            let len = u32::from_le_bytes(*len) as usize;
            if plain.len() + len > MAX_PAYLOAD {
                return Err(RecordError::TooLarge(plain.len() + len));
            }
            let from = plain.len();
            plain.resize(from + len, 0);
            unzstd(frame, &mut plain[from..]).map_err(|why| RecordError::Block { at: b.at, why })?;
        }
    }
    Ok(plain)
}

/// Decodes a record, checking everything.
pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
    let h = check_head(bytes)?;
    let payload = if h.version >= 4 {
        let head = head_end(bytes).unwrap_or(HEADER_LEN);
        std::borrow::Cow::Owned(unblock(bytes, head, &blocks(bytes, &h, true)?)?)
    } else {
        plain(bytes[5], &bytes[header_len(h.version)..], MAX_PAYLOAD + 1)?
    };
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
