//! `spillway completions SHELL` and `spillway man`: shell completions
//! (clap_complete) and man pages (clap_mangen), made from the very
//! definition of the command line, so they never drift from `--help`.

use crate::{Cli, Outcome, say};
use clap::CommandFactory;
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `spillway completions`.
#[derive(clap::Args)]
#[command(after_help = "Install, for example:\n  \
    bash: spillway completions bash > ~/.local/share/bash-completion/completions/spillway\n  \
    zsh:  spillway completions zsh > \"${fpath[1]}/_spillway\"\n  \
    fish: spillway completions fish > ~/.config/fish/completions/spillway.fish")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Arguments of `spillway man`.
#[derive(clap::Args)]
pub struct ManArgs {
    /// Write spillway.1 and a page per subcommand (spillway-replay.1, ...)
    /// into this directory instead of printing spillway.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> Outcome {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "spillway", &mut out);
    std::io::Write::write_all(&mut std::io::stdout(), &out)?;
    Ok(ExitCode::SUCCESS)
}

pub fn man(args: ManArgs) -> Outcome {
    let cmd = Cli::command();
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .map_err(|e| format!("writing man pages into {}: {e}", dir.display()))?;
            say!("man pages written to {}", dir.display());
        }
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut out)?;
            std::io::Write::write_all(&mut std::io::stdout(), &out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
