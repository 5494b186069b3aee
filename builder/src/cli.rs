//! Command line of `nodeimg`. `run(args)` is the testable entry point.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

/// Builds immutable Kubernetes node OS images from a TOML recipe.
#[derive(Debug, Parser)]
#[command(name = "nodeimg", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Work with recipes: validate one, or print it resolved.
    Recipe {
        #[command(subcommand)]
        command: crate::recipe::command::RecipeCommand,
    },
    /// Boot a disk image in qemu and report the time to a serial console marker.
    Boot(crate::boot::command::BootArgs),
    /// Build an image from a recipe: OSTree commit, manifest.json and SBOM.
    Build(crate::build::command::BuildArgs),
    /// Show a commit of an OSTree repository: checksum, parent, version, metadata, size.
    Inspect(crate::build::command::InspectArgs),
}

/// Parse `args` (argv including the program name) and run the command.
pub fn run(args: Vec<OsString>) -> Result<()> {
    let cli = Cli::try_parse_from(args)?;
    match cli.command {
        Command::Recipe { command } => crate::recipe::command::run(command),
        Command::Boot(args) => crate::boot::command::run(&args),
        Command::Build(args) => crate::build::command::run_build(&args),
        Command::Inspect(args) => crate::build::command::run_inspect(&args),
    }
}

/// Logs go to stderr next to the progress lines; `NODEIMG_LOG` (an `EnvFilter`, e.g.
/// `debug` or `nodeimg_builder::fetch=trace`) raises the level. The default keeps the
/// human progress output readable: warnings and errors only.
fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("NODEIMG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The binary's entry point: tracing, run, map errors to an exit status.
pub fn main(args: Vec<OsString>) -> ExitCode {
    init_tracing();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `--help`, `--version` and usage errors: clap prints them itself, with its own
            // exit status (0 for help).
            if let Some(c) = e.downcast_ref::<clap::Error>() {
                let _ = c.print();
                return ExitCode::from(u8::try_from(c.exit_code()).unwrap_or(2));
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
