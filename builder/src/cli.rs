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

/// The binary's entry point: tracing, run, map errors to an exit status.
pub fn main(args: Vec<OsString>) -> ExitCode {
    // Warnings and errors only by default, so the human progress lines stay readable.
    nodeimg_common::logging::init("NODEIMG_LOG", "warn");
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
