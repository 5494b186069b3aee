use std::process::ExitCode;

fn main() -> ExitCode {
    nodeboot::cli::main(std::env::args_os().collect())
}
