//! Logging setup shared by the `nodeimg` and `nodeboot` binaries: `tracing` to stderr, level
//! from an environment variable holding an `EnvFilter` (e.g. `debug`, `nodeboot::sources=trace`).

/// Install the stderr subscriber. `env_var` names the filter variable (`NODEIMG_LOG`,
/// `NODEBOOT_LOG`), `default` applies when it is unset or invalid. Colours only on a terminal:
/// the journal and CI logs get plain text.
pub fn init(env_var: &str, default: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env(env_var)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
