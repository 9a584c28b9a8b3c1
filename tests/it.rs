//! The integration tests, one crate so that the library is linked into
//! them once. Each module is one fault class, in its own file
//! (`tests/<module>.rs`), and its tests are named `<module>::<test>`:
//! `bash scripts/test.sh --test it -- crash::` runs the crash tests alone.
//!
//! libtest runs two tests at a time here (one a core), from any module. A
//! paced load takes [`common::one_load`], so no two loads share the cores;
//! every other test holds on a busy machine. A child process (`kill -9`,
//! power cut, fault injection) is this binary again, running one ignored
//! test by its full name ([`common::child`]).

mod common;

mod backlog;
mod bounded_flush;
mod cli;
mod cli_conventions;
mod cli_docs;
mod crash;
mod damage_matrix;
mod disk_faults;
mod file_damage;
mod fleet;
mod full_disk;
mod home_shards;
mod model;
mod otelcol_e2e;
mod outage;
mod partial_failure;
mod power_cut;
mod proxy;
mod read_only;
mod salvage;
mod security;
mod span_ids;
mod spool_flush;
mod tls;
mod tracer_contract;
mod transport_faults;
mod zipkin_e2e;
mod zipkin_spec;
