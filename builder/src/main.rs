use std::process::ExitCode;

fn main() -> ExitCode {
    nodeimg_builder::cli::main(std::env::args_os().collect())
}
