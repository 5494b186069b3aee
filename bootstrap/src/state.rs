//! Per-phase state markers under /var/lib/nodeboot: resume after a crash, no-op when done.
//!
//! A marker is a file named after its phase (`config-loaded`, `material-ready`, `kubeadm-done`,
//! `published`, `done`) holding a small JSON record, written atomically only after the phase
//! succeeded. The unit's `ConditionPathExists=!/var/lib/nodeboot/done` relies on the name of the
//! last one. The only secret ever stored here is the first control plane's generated material,
//! kept in a 0600 file between `material-ready` and `published` so a crash in between does not
//! lose it (kubeadm already put that token into the cluster); it is deleted once published.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nodeimg_common::fsutil::{atomic_write, atomic_write_mode};
use nodeimg_common::Secret;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::{BootstrapToken, CertificateKey};

/// Phases of a first boot, in order. `Published` exists only for role `init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    ConfigLoaded,
    MaterialReady,
    KubeadmDone,
    Published,
    Done,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::ConfigLoaded,
        Phase::MaterialReady,
        Phase::KubeadmDone,
        Phase::Published,
        Phase::Done,
    ];

    /// The marker's file name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::ConfigLoaded => "config-loaded",
            Phase::MaterialReady => "material-ready",
            Phase::KubeadmDone => "kubeadm-done",
            Phase::Published => "published",
            Phase::Done => "done",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a marker records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Marker {
    #[serde(with = "time::serde::rfc3339")]
    pub completed_at: OffsetDateTime,
    /// `kubeadm-done`: the kubeadm release that ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeadm_version: Option<String>,
    /// `kubeadm-done`: when kubeadm started (token and certificate-key lifetimes count from it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub started_at: Option<OffsetDateTime>,
    /// Free text for people reading `nodeboot status` (role, source, store key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Marker {
    pub fn at(completed_at: OffsetDateTime) -> Self {
        Marker {
            completed_at,
            kubeadm_version: None,
            started_at: None,
            detail: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// The material the first control plane generated, persisted until it is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMaterial {
    pub token: BootstrapToken,
    pub certificate_key: CertificateKey,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PendingWire {
    token: Secret,
    certificate_key: Secret,
}

const PENDING_FILE: &str = "pending-join-material.json";

/// The state directory (default `/var/lib/nodeboot`).
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn marker_path(&self, phase: Phase) -> PathBuf {
        self.root.join(phase.name())
    }

    /// The marker of `phase`, if the phase completed.
    pub fn marker(&self, phase: Phase) -> Result<Option<Marker>> {
        let path = self.marker_path(phase);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).with_context(|| {
                format!(
                    "reading state marker {} (delete it to redo the phase)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading state marker {}", path.display())),
        }
    }

    pub fn is_done(&self, phase: Phase) -> Result<bool> {
        Ok(self.marker(phase)?.is_some())
    }

    /// Record that `phase` completed.
    pub fn mark(&self, phase: Phase, marker: &Marker) -> Result<()> {
        let json = serde_json::to_string_pretty(marker).context("encoding a state marker")?;
        atomic_write(self.marker_path(phase), json + "\n")
            .with_context(|| format!("recording phase `{phase}` in {}", self.root.display()))
    }

    /// Every phase with its marker, in order.
    pub fn status(&self) -> Result<Vec<(Phase, Option<Marker>)>> {
        Phase::ALL
            .iter()
            .map(|p| Ok((*p, self.marker(*p)?)))
            .collect()
    }

    fn pending_path(&self) -> PathBuf {
        self.root.join(PENDING_FILE)
    }

    /// Keep generated material (0600) until it is published.
    pub fn save_pending(&self, m: &PendingMaterial) -> Result<()> {
        let wire = PendingWire {
            token: Secret::new(m.token.expose()),
            certificate_key: Secret::new(m.certificate_key.expose()),
        };
        let json = Secret::new(serde_json::to_string(&wire).context("encoding pending material")?);
        atomic_write_mode(self.pending_path(), json.expose(), 0o600).with_context(|| {
            format!(
                "saving generated join material under {}",
                self.root.display()
            )
        })
    }

    pub fn load_pending(&self) -> Result<Option<PendingMaterial>> {
        let path = self.pending_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Secret::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let bad = || format!("{} is corrupt (value not shown)", path.display());
        let wire: PendingWire =
            serde_json::from_str(text.expose()).map_err(|_| anyhow::anyhow!(bad()))?;
        Ok(Some(PendingMaterial {
            token: wire
                .token
                .expose()
                .parse()
                .map_err(|_| anyhow::anyhow!(bad()))?,
            certificate_key: wire
                .certificate_key
                .expose()
                .parse()
                .map_err(|_| anyhow::anyhow!(bad()))?,
        }))
    }

    pub fn remove_pending(&self) -> Result<()> {
        let path = self.pending_path();
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use time::macros::datetime;

    #[test]
    fn markers_round_trip_and_order() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        assert!(s.marker(Phase::KubeadmDone).unwrap().is_none());
        let mut m = Marker::at(datetime!(2026-01-01 00:00 UTC));
        m.kubeadm_version = Some("v1.31.2".into());
        s.mark(Phase::KubeadmDone, &m).unwrap();
        assert_eq!(s.marker(Phase::KubeadmDone).unwrap(), Some(m));
        let text = std::fs::read_to_string(d.path().join("kubeadm-done")).unwrap();
        assert!(
            text.contains("\"completed-at\": \"2026-01-01T00:00:00Z\""),
            "{text}"
        );
        let st = s.status().unwrap();
        assert_eq!(st.iter().filter(|(_, m)| m.is_some()).count(), 1);
    }

    #[test]
    fn pending_material_is_private_and_removable() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::new(d.path());
        let p = PendingMaterial {
            token: BootstrapToken::generate().unwrap(),
            certificate_key: CertificateKey::generate().unwrap(),
        };
        s.save_pending(&p).unwrap();
        let meta = std::fs::metadata(d.path().join(PENDING_FILE)).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(s.load_pending().unwrap(), Some(p));
        s.remove_pending().unwrap();
        assert_eq!(s.load_pending().unwrap(), None);
    }
}
