//! `nodeboot upgrade`, `rollback`, `health` and the OS section of `nodeboot status`: argument
//! parsing and output only; the flows are in [`super::gate`].

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::bootcount;
use super::gate::{self, HealthOutcome, Node, RollbackOutcome, UpgradeOptions, UpgradeOutcome};
use super::health::{self, HealthConfig};
use super::ostree_ops::{BootedSelector, DeploymentInfo, FetchRequest, Role, SysrootSpec};
use crate::firstboot::SystemClock;

/// Where the node keeps things; hidden options exist for tests and unusual layouts.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Directory of nodeboot's state (`os-state.json`).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/nodeboot")]
    pub state_dir: PathBuf,
    /// The OSTree sysroot.
    #[arg(long, hide = true, env = "NODEBOOT_SYSROOT", default_value = "/")]
    pub sysroot: PathBuf,
    /// Treat deployment `<checksum>.<serial>` as booted (staged sysroots); default: the
    /// running system's.
    #[arg(long, hide = true, env = "NODEBOOT_BOOTED_DEPLOYMENT")]
    pub booted_deployment: Option<String>,
    /// The GRUB environment block used for boot counting.
    #[arg(long, hide = true, env = "NODEBOOT_GRUBENV", default_value = bootcount::DEFAULT_GRUBENV)]
    pub grubenv: PathBuf,
    /// Where the current boot's id is read.
    #[arg(
        long,
        hide = true,
        env = "NODEBOOT_BOOT_ID_FILE",
        default_value = "/proc/sys/kernel/random/boot_id"
    )]
    pub boot_id_file: PathBuf,
    /// The command that reboots the node (split at spaces).
    #[arg(
        long,
        hide = true,
        env = "NODEBOOT_REBOOT_COMMAND",
        default_value = "systemctl reboot"
    )]
    pub reboot_command: String,
}

impl NodeArgs {
    fn node(&self) -> Result<Node> {
        let booted = match &self.booted_deployment {
            None => BootedSelector::Running,
            Some(s) => {
                let (checksum, serial) = s
                    .rsplit_once('.')
                    .with_context(|| format!("--booted-deployment `{s}` is not CHECKSUM.SERIAL"))?;
                BootedSelector::Deployment {
                    checksum: checksum.to_owned(),
                    serial: serial
                        .parse()
                        .with_context(|| format!("--booted-deployment `{s}`: bad serial"))?,
                }
            }
        };
        let boot_id = std::fs::read_to_string(&self.boot_id_file)
            .with_context(|| format!("reading the boot id from {}", self.boot_id_file.display()))?
            .trim()
            .to_owned();
        anyhow::ensure!(
            !boot_id.is_empty(),
            "{} is empty",
            self.boot_id_file.display()
        );
        Ok(Node {
            sysroot: SysrootSpec {
                path: self.sysroot.clone(),
                booted,
            },
            state_dir: self.state_dir.clone(),
            grubenv: self.grubenv.clone(),
            boot_tries: bootcount::DEFAULT_TRIES,
            boot_id,
            reboot: self
                .reboot_command
                .split_whitespace()
                .map(OsString::from)
                .collect(),
            clock: Arc::new(SystemClock),
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// Deploy the commit of the followed ref whose `version` metadata is this.
    #[arg(long, value_name = "V")]
    pub version: Option<String>,
    /// Follow this `REMOTE:REF` instead of the booted deployment's origin.
    #[arg(long = "ref", value_name = "R")]
    pub refspec: Option<String>,
    /// Pull from this URL instead of the remote's configured one (its signature settings
    /// still apply).
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
    /// Deploy a version that failed its health gate before.
    #[arg(long)]
    pub allow_failed_version: bool,
    /// Reboot into the new deployment right away.
    #[arg(long)]
    pub reboot: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// Reboot into the restored deployment right away.
    #[arg(long)]
    pub reboot: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub node: NodeArgs,
}

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Seconds a new deployment has to become healthy.
    #[arg(long, value_name = "SECS", default_value_t = health::DEFAULT_DEADLINE.as_secs())]
    pub deadline: u64,
    /// Seconds between attempts.
    #[arg(long, value_name = "SECS", default_value_t = health::DEFAULT_POLL_INTERVAL.as_secs())]
    pub interval: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long, hide = true, default_value = "systemctl")]
    pub systemctl: PathBuf,
    #[arg(long, hide = true, default_value = health::DEFAULT_KUBELET_HEALTHZ)]
    pub kubelet_healthz: String,
    #[arg(long, hide = true, default_value = health::DEFAULT_KUBELET_KUBECONFIG)]
    pub kubeconfig: PathBuf,
    /// The Node object's name; default: from the kubelet's client certificate.
    #[arg(long, hide = true)]
    pub node_name: Option<String>,
    #[command(flatten)]
    pub node: NodeArgs,
}

fn describe(d: &DeploymentInfo) -> String {
    format!(
        "{} {}.{}",
        d.version
            .as_deref()
            .map_or("(no version)".to_owned(), |v| format!("version {v}")),
        d.checksum.short(12),
        d.serial
    )
}

fn json_line(out: &mut dyn Write, v: &impl serde::Serialize) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, v)?;
    writeln!(out)?;
    Ok(())
}

pub fn upgrade(a: UpgradeArgs, out: &mut dyn Write) -> Result<()> {
    let node = a.node.node()?;
    let opts = UpgradeOptions {
        fetch: FetchRequest {
            refspec: a.refspec,
            version: a.version,
            url_override: a.remote,
        },
        allow_failed_version: a.allow_failed_version,
        reboot: a.reboot,
    };
    let outcome = gate::upgrade(&node, &opts)?;
    if a.json {
        return json_line(out, &outcome);
    }
    match outcome {
        UpgradeOutcome::AlreadyBooted { commit, version } => writeln!(
            out,
            "nodeboot: already running {} ({commit}); nothing to do",
            version.map_or("that commit".to_owned(), |v| format!("version {v}"))
        )?,
        UpgradeOutcome::Deployed {
            from,
            to,
            boot_counting,
            rebooting,
        } => {
            writeln!(
                out,
                "nodeboot: deployed {} as the next boot's default; {} stays as the rollback",
                describe(&to),
                &from[..12]
            )?;
            if !boot_counting {
                writeln!(out, "nodeboot: warning: no GRUB boot counter; a deployment that cannot boot needs a manual rollback")?;
            }
            writeln!(
                out,
                "nodeboot: {}",
                if rebooting {
                    "rebooting; the health gate confirms or rolls back after the boot"
                } else {
                    "reboot to activate it; the health gate confirms or rolls back after the boot"
                }
            )?;
        }
    }
    Ok(())
}

pub fn rollback(a: RollbackArgs, out: &mut dyn Write) -> Result<()> {
    let node = a.node.node()?;
    let outcome = gate::rollback(&node, a.reboot)?;
    if a.json {
        return json_line(out, &outcome);
    }
    match outcome {
        RollbackOutcome::DiscardedPending { removed } => {
            for d in &removed {
                writeln!(out, "nodeboot: discarded the pending {}", describe(d))?;
            }
            writeln!(out, "nodeboot: the booted OS stays; no reboot needed")?;
        }
        RollbackOutcome::Reordered {
            restored,
            rebooting,
        } => writeln!(
            out,
            "nodeboot: {} is the default again; {}",
            describe(&restored),
            if rebooting {
                "rebooting"
            } else {
                "reboot to activate it"
            }
        )?,
    }
    Ok(())
}

/// `nodeboot health`; fails (exit status non-zero) when the node ends up unhealthy.
pub fn health(a: HealthArgs, out: &mut dyn Write) -> Result<()> {
    let node = a.node.node()?;
    if a.interval == 0 {
        bail!("--interval must be at least 1 second");
    }
    let cfg = HealthConfig {
        deadline: Duration::from_secs(a.deadline),
        poll_interval: Duration::from_secs(a.interval),
        systemctl: a.systemctl,
        kubelet_healthz: a.kubelet_healthz,
        kubeconfig: a.kubeconfig,
        node_name: a.node_name,
        ..HealthConfig::default()
    };
    let outcome = gate::health(&node, &cfg)?;
    if a.json {
        json_line(out, &outcome)?;
    } else {
        write_health(&outcome, out)?;
    }
    if !outcome.healthy() {
        bail!("health gate: {}", outcome.summary);
    }
    Ok(())
}

fn write_health(o: &HealthOutcome, out: &mut dyn Write) -> Result<()> {
    if let Some(r) = &o.report {
        for c in &r.checks {
            let (mark, text) = match &c.result {
                health::CheckResult::Pass { detail } => ("ok", detail),
                health::CheckResult::Fail { reason } => ("FAIL", reason),
                health::CheckResult::Skipped { reason } => ("skip", reason),
            };
            writeln!(out, "{mark:<5} {:<16} {text}", c.check)?;
        }
        writeln!(out, "attempts: {}", r.attempts)?;
    }
    writeln!(out, "os state: {} -> {}", o.before, o.summary)?;
    if o.rebooting {
        writeln!(out, "rebooting into the restored deployment")?;
    }
    Ok(())
}

/// Node settings for `nodeboot status` (which has no lifecycle flags): the defaults, with the
/// same environment overrides as the lifecycle commands.
fn status_node(state_dir: &Path) -> Result<Node> {
    use clap::Parser;
    #[derive(Parser)]
    struct Only {
        #[command(flatten)]
        node: NodeArgs,
    }
    let mut node = Only::try_parse_from(["nodeboot-status"])
        .context("reading the NODEBOOT_* settings")?
        .node;
    node.state_dir = state_dir.to_path_buf();
    node.node()
}

/// The `os` object of `nodeboot status --json`; an error becomes `{"error": ...}` so the
/// first-boot part is still printed on hosts without OSTree.
pub fn status_json(state_dir: &Path) -> serde_json::Value {
    match status_node(state_dir).and_then(|n| gate::os_status(&n)) {
        Ok(s) => serde_json::to_value(s)
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() })),
        Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
    }
}

/// The OS section of `nodeboot status`.
pub fn write_status(state_dir: &Path, out: &mut dyn Write) -> Result<()> {
    writeln!(out)?;
    let status = match status_node(state_dir).and_then(|n| gate::os_status(&n)) {
        Ok(s) => s,
        Err(e) => {
            writeln!(out, "OS: unavailable: {e:#}")?;
            return Ok(());
        }
    };
    writeln!(out, "{:<9} {:<16} {:<14} ORIGIN", "OS", "VERSION", "COMMIT")?;
    for d in &status.deployments {
        let role = match d.role {
            Role::Booted => "booted",
            Role::Pending => "pending",
            Role::Rollback => "rollback",
            Role::Other => "-",
        };
        writeln!(
            out,
            "{role:<9} {:<16} {:<14} {}",
            d.version.as_deref().unwrap_or("-"),
            format!("{}.{}", d.checksum.short(12), d.serial),
            d.refspec.as_deref().unwrap_or("-")
        )?;
    }
    writeln!(out, "os state: {}", status.state.state)?;
    if let Some(n) = status.boot_counter {
        writeln!(out, "boot counter: armed, {n} tries left")?;
    }
    for f in &status.state.failures {
        writeln!(
            out,
            "failed version: {} ({}): {} failure(s), {} automatic rollback(s); last: {}",
            f.version.as_deref().unwrap_or("-"),
            f.commit.short(12),
            f.failures,
            f.automatic_rollbacks,
            f.last_reason
        )?;
    }
    Ok(())
}

/// `bootstrap/units/nodeboot-health.service`, rendered from the constants it depends on (the
/// marker's name, the gate's deadline); the shipped file is this text (golden-tested).
pub fn render_health_unit() -> String {
    let marker = Path::new("/var/lib/nodeboot").join(super::os_state::CHANGE_MARKER);
    // Room for the whole gate plus the rollback and the reboot request.
    let timeout_min = health::DEFAULT_DEADLINE.as_secs() / 60 + 5;
    format!(
        "[Unit]
Description=nodeboot: health gate after an OS change (confirm the new deployment or roll it back)
Documentation=https://github.com/nodeimg/nodeimg/blob/main/docs/lifecycle.md
# Only while an upgrade or a rollback awaits confirmation; nodeboot removes the marker when
# the change is confirmed or given up, so a settled node never runs this.
ConditionPathExists={marker}
# The gate checks containerd and the kubelet, so it starts after them. Wants=, not Requires=:
# a kubelet that fails to start is exactly what the gate has to see.
Wants=network-online.target
After=network-online.target containerd.service kubelet.service nodeboot.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/nodeboot health
TimeoutStartSec={timeout_min}min
# A failed gate rolls back and reboots by itself; restarting it would only repeat that.
Restart=no
StandardOutput=journal+console
StandardError=journal+console
SyslogIdentifier=nodeboot-health

[Install]
WantedBy=multi-user.target
",
        marker = marker.display()
    )
}
