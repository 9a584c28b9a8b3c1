//! The `spillway` command line: the operator's tool over the exporter.
//!
//! Subcommands are thin: each parses its arguments, drives the library, and
//! renders the outcome once, here, to stdout/stderr and an exit code
//! (0 success, 1 the operation failed or found problems, 2 usage error).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod generate;

/// Durable Zipkin exporter for bext: tools for the spool and a workload generator.
#[derive(Parser)]
#[command(
    version,
    about,
    after_help = "Exit codes: 0 success, 1 the operation failed or found problems, 2 usage error."
)]
struct Cli {
    /// The spool directory.
    #[arg(long, global = true, env = "SPILLWAY_SPOOL", default_value = "./spillway-spool")]
    spool: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive the real tracer as bext would and export to a collector.
    Generate(generate::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args, &cli.spool),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spillway: {e}");
            ExitCode::FAILURE
        }
    }
}
