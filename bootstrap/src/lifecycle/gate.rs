//! The lifecycle flows: each reads the state, asks [`os_state`] for the decision, then acts on
//! the deployments, the boot counter and the state in a crash-safe order.
//!
//! Ordering rules (why the steps come in the order they do):
//! - upgrade: state `pending` is saved *before* the deploy (a crash after the deploy still
//!   leaves the marker, so the gate runs on the next boot); the counter is armed *after* the
//!   deploy (armed earlier, it would count down the old default entry);
//! - every gate outcome disarms the counter *first*: a crash before the reorder then boots
//!   the new default again and the gate, resuming, decides again; a counter left armed after
//!   a reorder could send GRUB to entry 1, which is then the bad deployment;
//! - a rollback reorders before saving `rolled-back`: a crash in between leaves the state
//!   saying unconfirmed while the old deployment boots, which the gate reads as a fallback.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use nodeimg_common::Cmd;
use serde::Serialize;

use super::bootcount;
use super::health::{self, GateReport, HealthConfig};
use super::os_state::{
    self, BootDecision, Booted, GateAction, ManualRollback, OsState, OsStateStore, UpgradeDecision,
};
use super::ostree_ops::{self, DeploymentInfo, FetchRequest, Status, SysrootSpec};
use crate::firstboot::Clock;

/// This node: where things are and how to reboot it.
#[derive(Debug, Clone)]
pub struct Node {
    pub sysroot: SysrootSpec,
    /// `/var/lib/nodeboot`.
    pub state_dir: PathBuf,
    /// `/boot/grub/grubenv`.
    pub grubenv: PathBuf,
    /// Tries a new deployment gets before GRUB falls back.
    pub boot_tries: u32,
    /// The current boot's id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Program and arguments that reboot the node (`systemctl reboot`).
    pub reboot: Vec<OsString>,
    pub clock: Arc<dyn Clock>,
}

impl Node {
    fn store(&self) -> OsStateStore {
        OsStateStore::new(&self.state_dir)
    }

    fn do_reboot(&self) -> Result<()> {
        let (program, args) = self
            .reboot
            .split_first()
            .context("no reboot command configured")?;
        tracing::warn!(command = ?self.reboot, "rebooting");
        Cmd::new(program)
            .args(args)
            .run()
            .with_context(|| format!("rebooting with `{}`", program.to_string_lossy()))
    }

    fn disarm(&self) -> Result<()> {
        bootcount::disarm(&self.grubenv)
            .with_context(|| format!("disarming the boot counter in {}", self.grubenv.display()))
    }

    fn booted(&self, status: &Status) -> Result<Booted> {
        let b = status.booted().with_context(|| {
            format!(
                "{} has no booted deployment: not an OSTree-booted node",
                self.sysroot.path.display()
            )
        })?;
        Ok(Booted {
            commit: b.checksum.clone(),
            version: b.version.clone(),
            boot_id: self.boot_id.clone(),
        })
    }
}

/// What `upgrade` asked for.
#[derive(Debug, Clone, Default)]
pub struct UpgradeOptions {
    pub fetch: FetchRequest,
    pub allow_failed_version: bool,
    pub reboot: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(
    tag = "result",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum UpgradeOutcome {
    /// The requested commit is the booted one.
    AlreadyBooted {
        commit: String,
        version: Option<String>,
    },
    Deployed {
        from: String,
        to: DeploymentInfo,
        /// Whether the GRUB boot counter guards the first boots of `to`.
        boot_counting: bool,
        rebooting: bool,
    },
}

/// Pull and deploy a new OS version as the next boot's default (see the module docs).
pub fn upgrade(node: &Node, opts: &UpgradeOptions) -> Result<UpgradeOutcome> {
    let store = node.store();
    let doc = store.load()?;
    // Refuse before pulling anything.
    doc.check_can_upgrade(&node.boot_id)?;
    let status = ostree_ops::status(&node.sysroot)?;
    let booted = node.booted(&status)?;
    let fetched = ostree_ops::fetch(&node.sysroot, &opts.fetch)?;
    let now = node.clock.now();
    let next = match doc.begin_upgrade(
        &booted,
        &fetched.target,
        opts.allow_failed_version,
        opts.reboot,
        now,
    )? {
        UpgradeDecision::AlreadyBooted => {
            return Ok(UpgradeOutcome::AlreadyBooted {
                commit: booted.commit.to_string(),
                version: booted.version,
            })
        }
        UpgradeDecision::Deploy(next) => *next,
    };
    store.save(&next)?;
    let deployed = match ostree_ops::deploy(&node.sysroot, &fetched) {
        Ok(d) => d,
        Err(e) => {
            // Nothing was deployed: the change is not in flight.
            store
                .save(&doc)
                .context("restoring the OS state after a failed deploy")?;
            return Err(e);
        }
    };
    let boot_counting = bootcount::available(&node.grubenv);
    if boot_counting {
        bootcount::arm(&node.grubenv, node.boot_tries).with_context(|| {
            format!(
                "{} is deployed but the boot counter in {} could not be armed",
                fetched.target.commit,
                node.grubenv.display()
            )
        })?;
    } else {
        tracing::warn!(grubenv = %node.grubenv.display(), "no GRUB directory: the new deployment boots without a boot counter");
    }
    if opts.reboot {
        node.do_reboot()?;
    }
    Ok(UpgradeOutcome::Deployed {
        from: booted.commit.to_string(),
        to: deployed,
        boot_counting,
        rebooting: opts.reboot,
    })
}

#[derive(Debug, Clone, Serialize)]
#[serde(
    tag = "result",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum RollbackOutcome {
    /// The deployed but not yet booted upgrade was removed; the booted OS stays.
    DiscardedPending { removed: Vec<DeploymentInfo> },
    /// `restored` is the default from the next boot on.
    Reordered {
        restored: DeploymentInfo,
        rebooting: bool,
    },
}

/// An operator's rollback: discard a pending upgrade, or make the previous deployment the
/// default (no pull).
pub fn rollback(node: &Node, reboot: bool) -> Result<RollbackOutcome> {
    let store = node.store();
    let doc = store.load()?;
    let status = ostree_ops::status(&node.sysroot)?;
    let booted = node.booted(&status)?;
    let restore = status.rollback_target().map(DeploymentInfo::target);
    match doc.manual_rollback(&booted, restore.as_ref(), node.clock.now())? {
        ManualRollback::DiscardPending(next) => {
            node.disarm()?;
            let removed = ostree_ops::discard_pending(&node.sysroot)?;
            store.save(&next)?;
            Ok(RollbackOutcome::DiscardedPending { removed })
        }
        ManualRollback::Reorder(next) => {
            node.disarm()?;
            let after = ostree_ops::rollback(&node.sysroot)?;
            store.save(&next)?;
            let restored = after
                .default_deployment()
                .cloned()
                .context("no deployments after the rollback")?;
            if reboot {
                node.do_reboot()?;
            }
            Ok(RollbackOutcome::Reordered {
                restored,
                rebooting: reboot,
            })
        }
    }
}

/// What the health gate did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct HealthOutcome {
    /// The OS state before and after.
    pub before: &'static str,
    pub after: OsState,
    /// One line for people.
    pub summary: String,
    /// The checks, when they ran.
    pub report: Option<GateReport>,
    pub rebooting: bool,
}

impl HealthOutcome {
    /// Whether the node ends up healthy (for the exit status).
    pub fn healthy(&self) -> bool {
        self.report.as_ref().is_none_or(|r| r.passed)
            && !matches!(
                self.after,
                OsState::Failed { .. } | OsState::RolledBack { .. }
            )
    }
}

/// The health gate: run at every boot while a change is in flight, or by hand.
pub fn health(node: &Node, cfg: &HealthConfig) -> Result<HealthOutcome> {
    let store = node.store();
    let doc = store.load()?;
    let before = doc.state.name();
    let status = ostree_ops::status(&node.sysroot)?;
    let booted = node.booted(&status)?;
    let now = node.clock.now();
    let gate_timeout = time::Duration::try_from(cfg.deadline).context("health deadline")?;
    let to_deployed = match &doc.state {
        OsState::Pending { change, .. } | OsState::BootedUnconfirmed { change, .. } => {
            status.has_commit(&change.to)
        }
        _ => true,
    };
    let outcome = |after: OsState, summary: String, report, rebooting| HealthOutcome {
        before,
        after,
        summary,
        report,
        rebooting,
    };
    let gate_doc = match doc.on_boot(&booted, to_deployed, now, gate_timeout) {
        BootDecision::NothingInFlight => {
            // A stale marker (crash between state and marker writes) goes away here.
            if store.marker_path().exists() {
                store.save(&doc)?;
            }
            let report = health::run_gate(cfg, now + gate_timeout, node.clock.as_ref());
            let summary = format!(
                "no OS change in flight; checks {}",
                if report.passed { "pass" } else { "fail" }
            );
            return Ok(outcome(doc.state, summary, Some(report), false));
        }
        BootDecision::AwaitReboot => {
            let summary = format!("{}; nothing to check before the reboot", doc.state);
            return Ok(outcome(doc.state, summary, None, false));
        }
        BootDecision::Abandoned(next) | BootDecision::Unexpected(next) => {
            node.disarm()?;
            store.save(&next)?;
            let summary = next.state.to_string();
            return Ok(outcome(next.state, summary, None, false));
        }
        BootDecision::FellBack(next) => {
            node.disarm()?;
            if let OsState::RolledBack { change, .. } = &next.state {
                ostree_ops::make_default(&node.sysroot, &change.from)?;
            }
            store.save(&next)?;
            tracing::warn!(state = %next.state, "the new deployment did not boot; rolled back");
            next
        }
        BootDecision::RunGate(next) => {
            store.save(&next)?;
            next
        }
    };
    let deadline = match &gate_doc.state {
        OsState::BootedUnconfirmed { deadline, .. } => *deadline,
        _ => now + gate_timeout,
    };
    let report = health::run_gate(cfg, deadline, node.clock.as_ref());
    let result = match &report.reason {
        None => Ok(()),
        Some(r) => Err(r.clone()),
    };
    let (next, action) = gate_doc
        .on_health(result, node.clock.now(), &node.boot_id)
        .context("applying the health result")?;
    node.disarm()?;
    let mut rebooting = false;
    match action {
        GateAction::Confirm | GateAction::GiveUp => store.save(&next)?,
        GateAction::RollBackAndReboot => {
            if let OsState::RolledBack { change, .. } = &next.state {
                ostree_ops::make_default(&node.sysroot, &change.from)?;
            }
            store.save(&next)?;
            node.do_reboot()?;
            rebooting = true;
        }
    }
    let summary = next.state.to_string();
    Ok(outcome(next.state, summary, Some(report), rebooting))
}

/// The lifecycle part of `nodeboot status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct OsStatus {
    pub deployments: Vec<DeploymentInfo>,
    pub state: os_state::OsStateFile,
    /// Tries left while the boot counter is armed.
    pub boot_counter: Option<u32>,
}

/// Deployments, OS state and boot counter.
pub fn os_status(node: &Node) -> Result<OsStatus> {
    let state = node.store().load()?;
    let status = ostree_ops::status(&node.sysroot)?;
    Ok(OsStatus {
        deployments: status.deployments,
        state,
        boot_counter: bootcount::armed(&node.grubenv)?,
    })
}
