//! **Not part of the stable API.** What spillway's own command line,
//! benchmarks and fuzz targets reach beyond the public API: internals that
//! may change in any release, without notice in the changelog. Do not
//! depend on them.

/// The span model the tracer records and the spool stores.
pub mod span {
    pub use crate::span::{Event, Events, Kind, Span, Status, Value};
}

/// The Zipkin v2 encoder, JSON and proto3.
pub mod zipkin {
    pub use crate::zipkin::{Encoder, duration_micros, hex, kind_name};
}

/// The packed buffer of ended spans, and spans drained from it inline.
pub mod ended {
    pub use crate::span::packed::Run;
    pub use crate::tracer::ended::Ended;
}

/// The flush pipeline, for tools that drive replay themselves.
pub mod export {
    pub use crate::export::{Exporter, Replayed, UNSETTLED};

    /// The books every outcome is recorded in.
    pub mod books {
        pub use crate::export::books::Books;
    }

    /// The spool's own thread.
    pub mod disk {
        pub use crate::export::disk::Disk;
    }
}

/// The requests `spillway generate` records.
pub mod workload {
    pub use crate::workload::request;
}

pub use crate::tracer::{MAX_INTERNED_LEN, MAX_INTERNED_NAMES, MAX_NAMES_PER_SHARD, SHARDS};

/// The spool's files read without sled, for the operator commands, the
/// fuzz targets and the damage tests.
pub mod spool {
    /// The check of a spool's files before sled opens them.
    pub mod check {
        pub use crate::spool::check::{Check, Finding};
    }

    /// The spool directory: locks, trust, what was set aside.
    pub mod dir {
        pub use crate::spool::dir::{Lock, ReadLock, check_trust, set_asides};
    }

    /// The ledger of durable commits.
    pub mod ledger {
        pub use crate::spool::ledger::FILE;
    }

    /// A record's bytes.
    pub mod record {
        pub use crate::spool::record::{
            FLAG_DEFLATE, FLAG_LZ4, Mended, Meta, Record, UNKNOWN_SERVICE, VERSION, decode, encode, frame, header,
            mend, payload, seal, service,
        };
    }

    /// Records found in the raw files.
    pub mod scan {
        pub use crate::spool::scan::{At, Scan, SoundRecord};
    }

    /// The state frames.
    pub mod state {
        pub use crate::spool::state::unquarantine;
    }

    /// What a spool holds, read without sled.
    pub mod view {
        pub use crate::spool::view::View;
    }
}
