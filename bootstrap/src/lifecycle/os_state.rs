//! The OS change state machine of a node, persisted in `<state-dir>/os-state.json`.
//!
//! ```text
//!            upgrade                 reboot into `to`          health pass
//! idle/confirmed/failed ──> pending ──────────────> booted-unconfirmed ──> confirmed
//!                             │  reboot into `from`        │ health fail (first time for
//!                             │  (GRUB fell back)          │ this version)
//!                             └────────> rolled-back <─────┘
//!                                          │ verify restored: pass → confirmed
//!                                          │                  fail → failed (no action)
//! booted-unconfirmed ── health fail again for a version that was already rolled back once
//!                       → failed (no automatic action)
//! ```
//!
//! Every transition is a pure function of the current document and what the caller observed
//! (booted commit, boot id, check result, time), so each path is unit-tested without a node.
//! The loop guards: a version with a recorded automatic rollback is never upgraded to again
//! unless the operator asks explicitly; a second health failure of one version, or a failure
//! of the deployment restored by a rollback, leads to `failed`, which triggers nothing.
//!
//! A marker file next to the state ([`CHANGE_MARKER`]) exists exactly while a change is in
//! flight; `nodeboot-health.service` runs only then (`ConditionPathExists=`).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nodeimg_common::digest::Sha256Hex;
use nodeimg_common::fsutil::atomic_write;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// File name of the state document in the state directory.
pub const STATE_FILE: &str = "os-state.json";
/// File name of the marker that exists while an OS change awaits confirmation.
pub const CHANGE_MARKER: &str = "os-change-pending";
/// Schema version of [`OsStateFile`].
pub const SCHEMA_VERSION: u32 = 1;
/// Automatic rollbacks allowed per version; the next failure of that version only records.
pub const AUTOMATIC_ROLLBACKS_PER_VERSION: u32 = 1;

/// An OSTree commit checksum (SHA-256, 64 hex characters).
pub type Commit = Sha256Hex;

/// One OS change: from the deployment that was booted to the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Change {
    pub from: Commit,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    pub to: Commit,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_version: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
}

/// Where the node is in its OS lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "state",
    deny_unknown_fields,
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum OsState {
    /// No change in flight. `confirmed` is the last commit known good (unknown on a fresh node).
    Idle { confirmed: Option<Commit> },
    /// `change.to` is deployed as the default; the node has not booted it yet. `boot-id` is
    /// the boot during which it was deployed.
    Pending {
        change: Change,
        boot_id: String,
        reboot_requested: bool,
    },
    /// Booted into `change.to`; the health gate has until `deadline` to confirm it.
    BootedUnconfirmed {
        change: Change,
        #[serde(with = "time::serde::rfc3339")]
        booted_at: OffsetDateTime,
        #[serde(with = "time::serde::rfc3339")]
        deadline: OffsetDateTime,
    },
    /// `commit` passed the health gate.
    Confirmed {
        commit: Commit,
        version: Option<String>,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// `change` was undone: `change.from` is the default again, `change.to` was left. Awaits
    /// the health gate's verification of `change.from` (after the reboot into it, or at once
    /// when GRUB already booted it).
    RolledBack {
        change: Change,
        reason: String,
        automatic: bool,
        /// The boot during which the rollback was written.
        boot_id: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
    /// Nothing more happens automatically; a person decides (`nodeboot rollback`/`upgrade`).
    Failed {
        commit: Commit,
        version: Option<String>,
        reason: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

impl OsState {
    pub fn name(&self) -> &'static str {
        match self {
            OsState::Idle { .. } => "idle",
            OsState::Pending { .. } => "pending",
            OsState::BootedUnconfirmed { .. } => "booted-unconfirmed",
            OsState::Confirmed { .. } => "confirmed",
            OsState::RolledBack { .. } => "rolled-back",
            OsState::Failed { .. } => "failed",
        }
    }

    /// Whether a change awaits the health gate (the marker file exists exactly then).
    pub fn in_flight(&self) -> bool {
        matches!(
            self,
            OsState::Pending { .. }
                | OsState::BootedUnconfirmed { .. }
                | OsState::RolledBack { .. }
        )
    }
}

/// What the node remembers about a version that failed its health gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FailureRecord {
    pub commit: Commit,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Health gate failures (including boots that never reached the gate).
    pub failures: u32,
    pub automatic_rollbacks: u32,
    pub last_reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl FailureRecord {
    /// Same commit, or the same non-empty version (a rebuilt commit of a bad version is
    /// still that version).
    fn matches(&self, commit: &Commit, version: Option<&str>) -> bool {
        &self.commit == commit || (version.is_some() && self.version.as_deref() == version)
    }
}

/// The whole document in `os-state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OsStateFile {
    pub version: u32,
    pub state: OsState,
    #[serde(default)]
    pub failures: Vec<FailureRecord>,
}

impl Default for OsStateFile {
    fn default() -> Self {
        OsStateFile {
            version: SCHEMA_VERSION,
            state: OsState::Idle { confirmed: None },
            failures: Vec::new(),
        }
    }
}

/// Why a requested action was refused. The CLI maps these to messages and exit codes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("an upgrade to {to} is already deployed and waits for a reboot; reboot, or discard it with `nodeboot rollback`")]
    PendingReboot { to: Commit },
    #[error("the change to {to} is not confirmed yet (the health gate runs until {deadline}); wait for it or run `nodeboot health`")]
    Unconfirmed { to: Commit, deadline: String },
    #[error("a rollback to {restored} waits for {}; reboot or run `nodeboot health`", if *.reboot_needed { "a reboot" } else { "the health gate" })]
    RollbackInFlight {
        restored: Commit,
        reboot_needed: bool,
    },
    #[error("{} failed its health gate before ({reason}); it is not deployed again unless asked explicitly (`--allow-failed-version`)", describe(.commit, .version.as_deref()))]
    KnownBad {
        commit: Commit,
        version: Option<String>,
        reason: String,
    },
    #[error("there is no other deployment to roll back to")]
    NoRollbackTarget,
}

fn describe(commit: &Commit, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("version {v} ({})", commit.short(12)),
        None => format!("commit {commit}"),
    }
}

/// A commit to upgrade to, as resolved after the pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub commit: Commit,
    pub version: Option<String>,
}

/// The booted deployment, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    pub commit: Commit,
    pub version: Option<String>,
    /// `/proc/sys/kernel/random/boot_id`: tells a reboot from the same boot.
    pub boot_id: String,
}

/// Result of [`OsStateFile::begin_upgrade`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpgradeDecision {
    /// The target is what is booted: nothing to deploy.
    AlreadyBooted,
    /// Deploy, then save the returned document.
    Deploy(Box<OsStateFile>),
}

/// What the health gate must do on this boot ([`OsStateFile::on_boot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDecision {
    /// No change in flight: checks may run for information, nothing is recorded.
    NothingInFlight,
    /// Still the boot in which the change was written: wait for the reboot.
    AwaitReboot,
    /// Run the checks and feed the result to [`OsStateFile::on_health`]; save this first.
    RunGate(OsStateFile),
    /// The node booted the old deployment although the new one is the default (GRUB's boot
    /// counter ran out, or someone chose the old entry): make the booted deployment the
    /// default, disarm the counter, save this, then run the gate to verify it.
    FellBack(OsStateFile),
    /// The new deployment no longer exists (upgrade interrupted, or discarded by hand).
    Abandoned(OsStateFile),
    /// Something unexpected is booted; recorded as failed, nothing else happens.
    Unexpected(OsStateFile),
}

/// What the executor does after a health result ([`OsStateFile::on_health`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateAction {
    /// Disarm the boot counter, then save.
    Confirm,
    /// Reorder so the previous deployment is the default, disarm the counter, save, reboot.
    RollBackAndReboot,
    /// Disarm the boot counter (no fallback either), save, change nothing else.
    GiveUp,
}

/// What a manual rollback does ([`OsStateFile::manual_rollback`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManualRollback {
    /// The upgrade was not booted yet: remove the pending deployment; no reboot needed.
    DiscardPending(OsStateFile),
    /// Make `restore` the default deployment; takes effect on the next boot.
    Reorder(OsStateFile),
}

impl OsStateFile {
    fn with_state(&self, state: OsState) -> OsStateFile {
        OsStateFile {
            version: SCHEMA_VERSION,
            state,
            failures: self.failures.clone(),
        }
    }

    /// The failure record of `commit`/`version`, if any.
    pub fn failure_of(&self, commit: &Commit, version: Option<&str>) -> Option<&FailureRecord> {
        self.failures.iter().find(|r| r.matches(commit, version))
    }

    /// Refuse while a change is in flight; checked before pulling anything.
    pub fn check_can_upgrade(&self, boot_id: &str) -> Result<(), Refusal> {
        match &self.state {
            OsState::Pending { change, .. } => Err(Refusal::PendingReboot {
                to: change.to.clone(),
            }),
            OsState::BootedUnconfirmed {
                change, deadline, ..
            } => Err(Refusal::Unconfirmed {
                to: change.to.clone(),
                deadline: rfc3339(*deadline),
            }),
            OsState::RolledBack {
                change,
                boot_id: at_boot,
                ..
            } => Err(Refusal::RollbackInFlight {
                restored: change.from.clone(),
                reboot_needed: at_boot == boot_id,
            }),
            OsState::Idle { .. } | OsState::Confirmed { .. } | OsState::Failed { .. } => Ok(()),
        }
    }

    /// Decide an upgrade of the booted node to `target` (already pulled).
    pub fn begin_upgrade(
        &self,
        booted: &Booted,
        target: &Target,
        allow_failed_version: bool,
        reboot_requested: bool,
        now: OffsetDateTime,
    ) -> Result<UpgradeDecision, Refusal> {
        self.check_can_upgrade(&booted.boot_id)?;
        if target.commit == booted.commit {
            return Ok(UpgradeDecision::AlreadyBooted);
        }
        if let Some(rec) = self.failure_of(&target.commit, target.version.as_deref()) {
            if rec.automatic_rollbacks >= AUTOMATIC_ROLLBACKS_PER_VERSION && !allow_failed_version {
                return Err(Refusal::KnownBad {
                    commit: target.commit.clone(),
                    version: target.version.clone(),
                    reason: rec.last_reason.clone(),
                });
            }
        }
        let change = Change {
            from: booted.commit.clone(),
            from_version: booted.version.clone(),
            to: target.commit.clone(),
            to_version: target.version.clone(),
            started_at: now,
        };
        Ok(UpgradeDecision::Deploy(Box::new(self.with_state(
            OsState::Pending {
                change,
                boot_id: booted.boot_id.clone(),
                reboot_requested,
            },
        ))))
    }

    /// At boot (or when `nodeboot health` runs): what the gate has to do. `to_deployed` says
    /// whether the change's target still has a deployment.
    pub fn on_boot(
        &self,
        booted: &Booted,
        to_deployed: bool,
        now: OffsetDateTime,
        gate_timeout: time::Duration,
    ) -> BootDecision {
        match &self.state {
            OsState::Idle { .. } | OsState::Confirmed { .. } | OsState::Failed { .. } => {
                BootDecision::NothingInFlight
            }
            OsState::Pending {
                change, boot_id, ..
            } if *boot_id == booted.boot_id => {
                if booted.commit == change.from {
                    BootDecision::AwaitReboot
                } else {
                    self.unexpected(change, booted, now)
                }
            }
            OsState::Pending { change, .. } | OsState::BootedUnconfirmed { change, .. }
                if booted.commit == change.from =>
            {
                if !to_deployed {
                    return BootDecision::Abandoned(self.with_state(OsState::Idle {
                        confirmed: Some(change.from.clone()),
                    }));
                }
                let reason = format!(
                    "the node booted the previous deployment {} instead of {}: the new deployment did not reach a confirmed health gate (GRUB boot counter exhausted, or the old entry was chosen)",
                    describe(&change.from, change.from_version.as_deref()),
                    describe(&change.to, change.to_version.as_deref()),
                );
                let mut doc = self.record_failure(change, &reason, true, now);
                doc.state = OsState::RolledBack {
                    change: change.clone(),
                    reason,
                    automatic: true,
                    boot_id: booted.boot_id.clone(),
                    at: now,
                };
                BootDecision::FellBack(doc)
            }
            OsState::Pending { change, .. } if booted.commit == change.to => {
                BootDecision::RunGate(self.with_state(OsState::BootedUnconfirmed {
                    change: change.clone(),
                    booted_at: now,
                    deadline: now + gate_timeout,
                }))
            }
            // Interrupted gate (crash or reboot during the checks): go on with the deadline
            // it had, so a node cannot extend its window by rebooting.
            OsState::BootedUnconfirmed { change, .. } if booted.commit == change.to => {
                BootDecision::RunGate(self.clone())
            }
            OsState::Pending { change, .. } | OsState::BootedUnconfirmed { change, .. } => {
                self.unexpected(change, booted, now)
            }
            OsState::RolledBack { change, .. } if booted.commit == change.from => {
                BootDecision::RunGate(self.clone())
            }
            OsState::RolledBack {
                change, boot_id, ..
            } => {
                if *boot_id == booted.boot_id {
                    BootDecision::AwaitReboot
                } else {
                    self.unexpected(change, booted, now)
                }
            }
        }
    }

    fn unexpected(&self, change: &Change, booted: &Booted, now: OffsetDateTime) -> BootDecision {
        BootDecision::Unexpected(self.with_state(OsState::Failed {
            commit: booted.commit.clone(),
            version: booted.version.clone(),
            reason: format!(
                "booted {} during the change from {} to {}; not touching the deployments",
                describe(&booted.commit, booted.version.as_deref()),
                change.from.short(12),
                change.to.short(12)
            ),
            at: now,
        }))
    }

    /// The health gate's result for the state returned by [`BootDecision::RunGate`] (or
    /// [`BootDecision::FellBack`]). `Err(reason)` names the check that failed last.
    pub fn on_health(
        &self,
        result: std::result::Result<(), String>,
        now: OffsetDateTime,
        boot_id: &str,
    ) -> Result<(OsStateFile, GateAction), InvalidTransition> {
        match (&self.state, result) {
            (OsState::BootedUnconfirmed { change, .. }, Ok(())) => Ok((
                self.with_state(OsState::Confirmed {
                    commit: change.to.clone(),
                    version: change.to_version.clone(),
                    at: now,
                }),
                GateAction::Confirm,
            )),
            (OsState::BootedUnconfirmed { change, .. }, Err(reason)) => {
                let earlier = self
                    .failure_of(&change.to, change.to_version.as_deref())
                    .map_or(0, |r| r.automatic_rollbacks);
                if earlier < AUTOMATIC_ROLLBACKS_PER_VERSION {
                    let mut doc = self.record_failure(change, &reason, true, now);
                    doc.state = OsState::RolledBack {
                        change: change.clone(),
                        reason,
                        automatic: true,
                        boot_id: boot_id.to_owned(),
                        at: now,
                    };
                    Ok((doc, GateAction::RollBackAndReboot))
                } else {
                    let mut doc = self.record_failure(change, &reason, false, now);
                    doc.state = OsState::Failed {
                        commit: change.to.clone(),
                        version: change.to_version.clone(),
                        reason: format!(
                            "{reason}; {} was rolled back automatically before, so there is no further automatic action",
                            describe(&change.to, change.to_version.as_deref())
                        ),
                        at: now,
                    };
                    Ok((doc, GateAction::GiveUp))
                }
            }
            (OsState::RolledBack { change, .. }, Ok(())) => Ok((
                self.with_state(OsState::Confirmed {
                    commit: change.from.clone(),
                    version: change.from_version.clone(),
                    at: now,
                }),
                GateAction::Confirm,
            )),
            (OsState::RolledBack { change, .. }, Err(reason)) => Ok((
                self.with_state(OsState::Failed {
                    commit: change.from.clone(),
                    version: change.from_version.clone(),
                    reason: format!(
                        "{reason}; this is the deployment restored by a rollback, so it is not rolled back again"
                    ),
                    at: now,
                }),
                GateAction::GiveUp,
            )),
            (other, _) => Err(InvalidTransition {
                state: other.name(),
                event: "health result",
            }),
        }
    }

    /// An operator's `nodeboot rollback`. `restore` is the deployment that becomes the
    /// default (the rollback deployment, or the booted one when an upgrade is pending).
    pub fn manual_rollback(
        &self,
        booted: &Booted,
        restore: Option<&Target>,
        now: OffsetDateTime,
    ) -> Result<ManualRollback, Refusal> {
        if let OsState::RolledBack {
            change, boot_id, ..
        } = &self.state
        {
            if *boot_id == booted.boot_id && booted.commit != change.from {
                return Err(Refusal::RollbackInFlight {
                    restored: change.from.clone(),
                    reboot_needed: true,
                });
            }
        }
        if let OsState::Pending { change, .. } = &self.state {
            if booted.commit == change.from {
                return Ok(ManualRollback::DiscardPending(self.with_state(
                    OsState::Idle {
                        confirmed: Some(change.from.clone()),
                    },
                )));
            }
        }
        let restore = restore.ok_or(Refusal::NoRollbackTarget)?;
        if restore.commit == booted.commit {
            return Err(Refusal::NoRollbackTarget);
        }
        let change = Change {
            from: restore.commit.clone(),
            from_version: restore.version.clone(),
            to: booted.commit.clone(),
            to_version: booted.version.clone(),
            started_at: now,
        };
        Ok(ManualRollback::Reorder(self.with_state(
            OsState::RolledBack {
                change,
                reason: "manual rollback (`nodeboot rollback`)".to_owned(),
                automatic: false,
                boot_id: booted.boot_id.clone(),
                at: now,
            },
        )))
    }

    fn record_failure(
        &self,
        change: &Change,
        reason: &str,
        rolled_back: bool,
        now: OffsetDateTime,
    ) -> OsStateFile {
        let mut doc = self.clone();
        let add = u32::from(rolled_back);
        match doc
            .failures
            .iter_mut()
            .find(|r| r.matches(&change.to, change.to_version.as_deref()))
        {
            Some(r) => {
                r.failures += 1;
                r.automatic_rollbacks += add;
                r.last_reason = reason.to_owned();
                r.at = now;
            }
            None => doc.failures.push(FailureRecord {
                commit: change.to.clone(),
                version: change.to_version.clone(),
                failures: 1,
                automatic_rollbacks: add,
                last_reason: reason.to_owned(),
                at: now,
            }),
        }
        doc
    }
}

/// A transition asked of a state that does not have it (a bug in the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no `{event}` transition from state `{state}`")]
pub struct InvalidTransition {
    pub state: &'static str,
    pub event: &'static str,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Reads and writes the state document and keeps the marker in step with it.
#[derive(Debug, Clone)]
pub struct OsStateStore {
    dir: PathBuf,
}

impl OsStateStore {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        OsStateStore {
            dir: state_dir.into(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn marker_path(&self) -> PathBuf {
        self.dir.join(CHANGE_MARKER)
    }

    /// The document; a node that never changed its OS has none yet and is `idle`.
    pub fn load(&self) -> Result<OsStateFile> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(OsStateFile::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        parse(&text, &path)
    }

    /// Save atomically. The marker is created before a document that is in flight is written
    /// and removed after one that is not, so a crash in between leaves a marker too many (the
    /// gate then finds nothing to do and removes it), never one too few.
    pub fn save(&self, doc: &OsStateFile) -> Result<()> {
        let path = self.path();
        let marker = self.marker_path();
        let mut text = serde_json::to_string_pretty(doc).context("serialising the OS state")?;
        text.push('\n');
        if doc.state.in_flight() {
            atomic_write(&marker, format!("{}\n", doc.state.name()))
                .with_context(|| format!("writing {}", marker.display()))?;
        }
        atomic_write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        if !doc.state.in_flight() {
            self.remove_marker()?;
        }
        Ok(())
    }

    fn remove_marker(&self) -> Result<()> {
        let marker = self.marker_path();
        match std::fs::remove_file(&marker) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", marker.display())),
        }
    }
}

/// Parse a state document; errors name the file, line, column and field.
pub fn parse(text: &str, path: &Path) -> Result<OsStateFile> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let doc: OsStateFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        // serde_json appends the position; it is already in front.
        let message = message.split(" at line ").next().unwrap_or_default();
        anyhow::anyhow!(
            "{}:{}:{}: field `{field}`: {message}",
            path.display(),
            inner.line(),
            inner.column()
        )
    })?;
    anyhow::ensure!(
        doc.version == SCHEMA_VERSION,
        "{}: field `version`: unsupported OS state version {} (this nodeboot reads version {SCHEMA_VERSION})",
        path.display(),
        doc.version
    );
    Ok(doc)
}

impl fmt::Display for OsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OsState::Idle { confirmed: None } => write!(f, "idle"),
            OsState::Idle { confirmed: Some(c) } => {
                write!(f, "idle (last confirmed {})", c.short(12))
            }
            OsState::Pending {
                change,
                reboot_requested,
                ..
            } => write!(
                f,
                "pending: {} deployed, waits for {}",
                describe(&change.to, change.to_version.as_deref()),
                if *reboot_requested {
                    "the requested reboot"
                } else {
                    "a reboot"
                }
            ),
            OsState::BootedUnconfirmed {
                change, deadline, ..
            } => write!(
                f,
                "booted-unconfirmed: {} until {}",
                describe(&change.to, change.to_version.as_deref()),
                rfc3339(*deadline)
            ),
            OsState::Confirmed {
                commit,
                version,
                at,
                ..
            } => write!(
                f,
                "confirmed: {} at {}",
                describe(commit, version.as_deref()),
                rfc3339(*at)
            ),
            OsState::RolledBack {
                change,
                reason,
                automatic,
                ..
            } => write!(
                f,
                "rolled-back ({}): {} -> {}: {reason}",
                if *automatic { "automatic" } else { "manual" },
                describe(&change.to, change.to_version.as_deref()),
                describe(&change.from, change.from_version.as_deref())
            ),
            OsState::Failed {
                commit,
                version,
                reason,
                ..
            } => write!(
                f,
                "failed: {}: {reason}",
                describe(commit, version.as_deref())
            ),
        }
    }
}

#[cfg(test)]
mod tests;
