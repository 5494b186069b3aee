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
pub enum Command {}

/// Parse `args` (argv including the program name) and run the command.
pub fn run(args: Vec<OsString>) -> Result<()> {
    let cli = Cli::try_parse_from(args)?;
    match cli.command {}
}

/// The binary's entry point: tracing, run, map errors to an exit status.
pub fn main(args: Vec<OsString>) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
