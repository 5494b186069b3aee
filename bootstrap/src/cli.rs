//! Command line of `nodeboot`. `run(args)` is the testable entry point.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;

use crate::config::{self, ConfigError, NodeConfig, Role, MAX_USER_DATA_BYTES};
use crate::firstboot::{self, Failure, FailureKind, Host, Outcome, SystemClock};
use crate::join::JoinMaterial;
use crate::kubeadm::{self, ApiVersion, InitSecrets, KubeadmVersion};
use crate::sources::{SourceKind, SourceOptions};
use crate::state::{Phase, StateDir};

/// First-boot and OS lifecycle agent of nodeimg Kubernetes nodes.
///
/// On first boot `nodeboot run` reads the node config (user-data), fetches or creates the
/// cluster's join material in a secret store and runs `kubeadm init` or `kubeadm join`.
/// Exit codes: 0 ok, 1 local I/O, 2 bad config or user-data, 3 secret store, 4 kubeadm failed,
/// 5 partial kubeadm state (run `kubeadm reset -f`), 6 two nodes initialised the same cluster.
#[derive(Debug, Parser)]
#[command(name = "nodeboot", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// First boot: user-data → join material → kubeadm init/join.
    ///
    /// Each phase leaves a marker in the state directory; a second run resumes at the first
    /// unfinished phase and a finished node exits 0 without doing anything.
    Run(RunArgs),
    /// Show the first-boot phases and when each completed.
    Status(StatusArgs),
    /// Check a node config file against the schema (for people and CI); exit 2 when invalid.
    Validate(FileArgs),
    /// Print the kubeadm config `run` would write for a node config, secrets redacted.
    Render(RenderArgs),
    /// Pull a new OS version and deploy it as the next boot's default (docs/lifecycle.md).
    Upgrade(crate::lifecycle::command::UpgradeArgs),
    /// Make the previous OS deployment the default again, or discard a pending upgrade.
    Rollback(crate::lifecycle::command::RollbackArgs),
    /// Health gate after an OS change: confirm the new deployment or roll it back.
    Health(crate::lifecycle::command::HealthArgs),
    /// Install a nodeimg raw disk image onto a disk over the network (the PXE installer).
    Install(crate::install::command::InstallArgs),
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Where to read user-data from; `auto` tries kernel command line, NoCloud/config-drive,
    /// the platform's metadata service, then /etc/nodeboot/config.toml.
    #[arg(long, value_enum, default_value_t = SourceKind::Auto)]
    pub source: SourceKind,
    /// Read the node config from this file instead of a user-data source.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of the phase markers.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/nodeboot")]
    pub state_dir: PathBuf,
    /// Load and check the config and print the plan and the kubeadm config (redacted); change
    /// nothing, contact no secret store, run no kubeadm action.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub host: HostArgs,
}

/// Host paths, for tests and unusual layouts.
#[derive(Debug, clap::Args)]
pub struct HostArgs {
    /// kubeadm binary.
    #[arg(long, hide = true, env = "NODEBOOT_KUBEADM", default_value = "kubeadm")]
    pub kubeadm: PathBuf,
    /// KEY=VALUE added to kubeadm's environment (repeatable).
    #[arg(long = "kubeadm-env", hide = true, value_name = "KEY=VALUE")]
    pub kubeadm_env: Vec<String>,
    /// kubeadm's output directory.
    #[arg(long, hide = true, default_value = "/etc/kubernetes")]
    pub kubernetes_dir: PathBuf,
    /// tmpfs directory for the kubeadm config.
    #[arg(long, hide = true, default_value = "/run/nodeboot")]
    pub run_dir: PathBuf,
    /// Directory of the Cluster API sentinel `bootstrap-success.complete`.
    #[arg(long, hide = true, default_value = "/run/cluster-api")]
    pub cluster_api_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_name = "DIR", default_value = "/var/lib/nodeboot")]
    pub state_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct FileArgs {
    /// Node config (TOML, schema version 1; see docs/user-data.md).
    pub file: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// Node config (TOML, schema version 1).
    pub file: PathBuf,
    /// Render for this kubeadm release (chooses v1beta3 or v1beta4); default: the config's
    /// `cluster.kubernetes-version`.
    #[arg(long, value_name = "VERSION")]
    pub kubeadm_version: Option<String>,
}

/// Parse `args` and run, printing results to stdout.
pub fn run(args: Vec<OsString>) -> Result<()> {
    run_with(args, &mut std::io::stdout().lock())
}

/// [`run`] with the output stream injectable (tests).
pub fn run_with(args: Vec<OsString>, out: &mut dyn Write) -> Result<()> {
    let cli = Cli::try_parse_from(args)?;
    match cli.command {
        Command::Run(a) => cmd_run(a, out),
        Command::Status(a) => cmd_status(a, out),
        Command::Upgrade(a) => crate::lifecycle::command::upgrade(a, out),
        Command::Rollback(a) => crate::lifecycle::command::rollback(a, out),
        Command::Health(a) => crate::lifecycle::command::health(a, out),
        Command::Validate(a) => {
            let (cfg, _) = load_file(&a.file)?;
            writeln!(
                out,
                "{}: ok (role {}, cluster {} at {}, Kubernetes {})",
                a.file.display(),
                cfg.role,
                cfg.cluster.name,
                cfg.cluster.control_plane_endpoint,
                cfg.cluster.kubernetes_version
            )?;
            Ok(())
        }
        Command::Install(a) => crate::install::command::run(a, out),
        Command::Render(a) => {
            let (cfg, _) = load_file(&a.file)?;
            let version = match &a.kubeadm_version {
                Some(v) => v.parse::<KubeadmVersion>()?,
                None => cfg.cluster.kubernetes_version.as_str().parse()?,
            };
            let api = ApiVersion::for_kubeadm(&version)?;
            out.write_all(render_redacted(&cfg, api)?.as_bytes())?;
            Ok(())
        }
    }
}

/// Read a config file, refusing oversize input without reading all of it.
fn load_file(path: &Path) -> Result<(NodeConfig, String)> {
    let origin = path.display().to_string();
    let file = std::fs::File::open(path).with_context(|| format!("opening {origin}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_USER_DATA_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {origin}"))?;
    parse_bytes(&bytes, &origin)
}

fn parse_bytes(bytes: &[u8], origin: &str) -> Result<(NodeConfig, String)> {
    if bytes.len() > MAX_USER_DATA_BYTES {
        return Err(ConfigError {
            origin: origin.to_owned(),
            line_col: None,
            field: None,
            message: format!(
                "node config is larger than the limit of {MAX_USER_DATA_BYTES} bytes; user-data must be a node config, not a payload"
            ),
        }
        .into());
    }
    let text = std::str::from_utf8(bytes).map_err(|e| ConfigError {
        origin: origin.to_owned(),
        line_col: None,
        field: None,
        message: format!("not UTF-8 text ({e}); a node config is TOML"),
    })?;
    let cfg = config::parse_node_config(text, origin)?;
    Ok((cfg, origin.to_owned()))
}

fn cmd_run(a: RunArgs, out: &mut dyn Write) -> Result<()> {
    let host = Host {
        state_dir: a.state_dir.clone(),
        run_dir: a.host.run_dir.clone(),
        kubernetes_dir: a.host.kubernetes_dir.clone(),
        cluster_api_dir: a.host.cluster_api_dir.clone(),
        kubeadm: a.host.kubeadm.clone(),
        kubeadm_env: a
            .host
            .kubeadm_env
            .iter()
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.into(), v.into()))
                    .with_context(|| format!("--kubeadm-env `{kv}` is not KEY=VALUE"))
            })
            .collect::<Result<_>>()?,
        clock: Arc::new(SystemClock),
    };
    // A finished node needs neither user-data nor the network.
    if let Some(at) = firstboot::finished_at(&host)? {
        writeln!(
            out,
            "nodeboot: this node completed its first boot at {at}; nothing to do"
        )?;
        return Ok(());
    }
    let (cfg, origin) = match &a.config {
        Some(path) => load_file(path)?,
        None => {
            let opts = SourceOptions {
                kind: a.source,
                ..SourceOptions::default()
            };
            let ud = crate::sources::fetch_user_data(&opts).map_err(|e| {
                Failure::new(
                    FailureKind::Config,
                    format!("no user-data: {e:#}"),
                    "provide user-data through the platform, a NoCloud volume, `nodeboot.config=` on the kernel command line, or /etc/nodeboot/config.toml",
                )
            })?;
            parse_bytes(&ud.bytes, &format!("user-data from {}", ud.source))?
        }
    };
    tracing::info!(role = %cfg.role, %origin, "node config loaded");
    if a.dry_run {
        return dry_run(&cfg, &host, out);
    }
    let store = match &cfg.secrets {
        Some(s) if cfg.inline_join().is_none() => {
            Some(crate::secrets::open(&s.store).map_err(|e| {
                Failure::new(
                    FailureKind::SecretStore,
                    format!("opening the secret store: {e:#}"),
                    "check `[secrets.store]` and the credential files it names",
                )
            })?)
        }
        _ => None,
    };
    match firstboot::run(&cfg, &origin, &host, store.as_deref())? {
        Outcome::AlreadyDone { at } => writeln!(
            out,
            "nodeboot: this node completed its first boot at {at}; nothing to do"
        )?,
        Outcome::Completed { role, resumed_from } => writeln!(
            out,
            "nodeboot: first boot complete (role {role}{})",
            if resumed_from == Phase::ConfigLoaded {
                String::new()
            } else {
                format!(", resumed at phase {resumed_from}")
            }
        )?,
    }
    Ok(())
}

fn dry_run(cfg: &NodeConfig, host: &Host, out: &mut dyn Write) -> Result<()> {
    let state = host.state();
    writeln!(out, "# nodeboot dry run: role {}", cfg.role)?;
    for phase in firstboot::phases(cfg.role, cfg.secrets.is_some()) {
        let status = match state.marker(phase)? {
            Some(m) => format!("done at {}", m.completed_at),
            None => "pending".to_owned(),
        };
        writeln!(out, "# phase {phase}: {status}")?;
    }
    let version = kubeadm::Kubeadm::new(&host.kubeadm)
        .version()
        .or_else(|_| cfg.cluster.kubernetes_version.as_str().parse())?;
    let api = ApiVersion::for_kubeadm(&version)?;
    writeln!(
        out,
        "# kubeadm {version}: {api}, written to {}",
        host.kubeadm_config_path().display()
    )?;
    out.write_all(render_redacted(cfg, api)?.as_bytes())?;
    Ok(())
}

/// The kubeadm config for `cfg` with throwaway secrets, each replaced by a placeholder.
pub fn render_redacted(cfg: &NodeConfig, api: ApiVersion) -> Result<String> {
    let token = crate::config::BootstrapToken::generate()?;
    let key = crate::config::CertificateKey::generate()?;
    let text = if cfg.role == Role::Init {
        let ttl = cfg
            .secrets
            .as_ref()
            .map(|s| s.token_ttl)
            .unwrap_or(config::DurationSpec::from_secs(24 * 3600));
        kubeadm::render_init(
            cfg,
            api,
            InitSecrets {
                token: &token,
                token_ttl: ttl,
                certificate_key: &key,
            },
        )?
    } else {
        let inline = cfg.inline_join();
        let material = JoinMaterial {
            token: inline
                .and_then(|j| j.token.as_ref().map(|t| t.get_ref().clone()))
                .unwrap_or_else(|| token.clone()),
            token_expires_at: time::OffsetDateTime::UNIX_EPOCH,
            ca_cert_hashes: match inline {
                Some(j) => j.ca_cert_hashes.clone(),
                None => vec![format!("sha256:{}", "0".repeat(64)).parse().expect("valid")],
            },
            certificate_key: Some(
                inline
                    .and_then(|j| j.certificate_key.as_ref().map(|k| k.get_ref().clone()))
                    .unwrap_or_else(|| key.clone()),
            ),
            certificate_key_expires_at: None,
            api_server_endpoint: cfg.cluster.control_plane_endpoint.clone(),
        };
        let text = kubeadm::render_join(cfg, api, &material)?;
        let placeholder_hash = format!("sha256:{}", "0".repeat(64));
        let text = text.replace(&placeholder_hash, "sha256:<published by the init node>");
        let text = text.replace(
            material.token.expose(),
            if inline.is_some() {
                "<inline token, redacted>"
            } else {
                "<token from the secret store>"
            },
        );
        match &material.certificate_key {
            Some(k) => text.replace(k.expose(), "<redacted certificate key>"),
            None => text,
        }
    };
    Ok(text
        .replace(token.expose(), "<generated at first boot>")
        .replace(key.expose(), "<generated at first boot>"))
}

fn cmd_status(a: StatusArgs, out: &mut dyn Write) -> Result<()> {
    let state = StateDir::new(&a.state_dir);
    let phases = state.status()?;
    let done = phases.iter().any(|(p, m)| *p == Phase::Done && m.is_some());
    if a.json {
        let list: Vec<serde_json::Value> = phases
            .iter()
            .map(|(p, m)| {
                let mut v = serde_json::json!({ "phase": p.name(), "done": m.is_some() });
                if let Some(m) = m {
                    let extra = serde_json::to_value(m).unwrap_or_default();
                    if let (Some(obj), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                        obj.extend(e.clone());
                    }
                }
                v
            })
            .collect();
        serde_json::to_writer_pretty(
            &mut *out,
            &serde_json::json!({
                "state-dir": a.state_dir,
                "complete": done,
                "phases": list,
                "os": crate::lifecycle::command::status_json(&a.state_dir),
            }),
        )?;
        writeln!(out)?;
    } else {
        writeln!(out, "{:<16} {:<27} DETAIL", "PHASE", "COMPLETED")?;
        for (p, m) in &phases {
            let (at, detail) = match m {
                Some(m) => (
                    m.completed_at
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                    [m.kubeadm_version.clone(), m.detail.clone()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                None => ("-".to_owned(), String::new()),
            };
            writeln!(out, "{:<16} {:<27} {}", p.name(), at, detail)?;
        }
        crate::lifecycle::command::write_status(&a.state_dir, out)?;
    }
    Ok(())
}

/// Exit code for an error returned by [`run`].
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(f) = e.downcast_ref::<Failure>() {
        f.kind.exit_code()
    } else if e.downcast_ref::<ConfigError>().is_some() {
        FailureKind::Config.exit_code()
    } else {
        1
    }
}

pub fn main(args: Vec<OsString>) -> ExitCode {
    nodeimg_common::logging::init("NODEBOOT_LOG", "info");
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(c) = e.downcast_ref::<clap::Error>() {
                let _ = c.print();
                return ExitCode::from(c.exit_code() as u8);
            }
            let code = exit_code(&e);
            match e.downcast_ref::<Failure>() {
                Some(f) => eprintln!("nodeboot: error: {}\nnodeboot: hint: {}", f.cause, f.hint),
                None => eprintln!("nodeboot: error: {e:#}"),
            }
            ExitCode::from(code)
        }
    }
}
