//! Arbitrary bytes into the spool's record decoder: a typed error or a
//! batch, never a panic; allocation is bounded by the decoder's limit
//! (libFuzzer's -rss_limit_mb catches a breach); what decodes re-encodes
//! to a record that decodes to the same spans; and what `mend` keeps of
//! damaged bytes is a sound record of the spans it counts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spillway::unstable::spool::record;

fuzz_target!(|data: &[u8]| {
    check(data);
    // Also frame the input as a payload with a valid header and CRC, so the
    // fuzzer reaches bincode, the packed reader, inflate and LZ4 past the
    // checksum.
    if let Some((&flags, payload)) = data.split_first() {
        let mut framed = Vec::new();
        let declared = payload.len().min(64) as u32;
        // Every version: their payloads differ (v1 is bincode spans, v2
        // bincode with the service first, v3 the packed layout, v4 the
        // packed layout in blocks).
        for version in [1, 2, 3, record::VERSION] {
            framed.clear();
            let meta = record::Meta::default();
            record::frame(
                version,
                payload,
                if version == record::VERSION { 0 } else { flags & (record::FLAG_DEFLATE | record::FLAG_LZ4) },
                declared,
                meta,
                &mut framed,
            );
            check(&framed);
        }
    }
});

fn check(data: &[u8]) {
    let _ = record::header(data);
    if let Some(m) = record::mend(data) {
        let r = record::decode(&m.record).expect("a mended record is sound");
        assert_eq!(r.spans.len(), m.kept as usize);
    }
    if let Ok(r) = record::decode(data) {
        let mut again = Vec::new();
        record::encode(&r.service, &r.spans, r.meta, &mut again).expect("a decoded batch re-encodes");
        let back = record::decode(&again).expect("a re-encoded record decodes");
        assert_eq!((back.meta, &back.service), (r.meta, &r.service));
        assert_eq!(back.spans.len(), r.spans.len());
        // Compare through the encoding, so NaN attributes compare equal.
        let mut third = Vec::new();
        record::encode(&back.service, &back.spans, back.meta, &mut third).expect("re-encodes");
        assert_eq!(again, third);
    }
}
