//! Command line of `nodeboot`. `run(args)` is the testable entry point.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

/// First-boot and OS lifecycle agent of nodeimg Kubernetes nodes.
#[derive(Debug, Parser)]
#[command(name = "nodeboot", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {}

pub fn run(args: Vec<OsString>) -> Result<()> {
    let cli = Cli::try_parse_from(args)?;
    match cli.command {}
}

pub fn main(args: Vec<OsString>) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
