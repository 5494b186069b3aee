//! Driving kubeadm: version detection, config rendering (v1beta3/v1beta4), init and join.
//!
//! Secrets reach kubeadm only through the config file (mode 0600, under /run, removed after the
//! run); never through argv. Everything kubeadm prints passes through [`redact`] before it is
//! logged or put into an error.

pub mod ca_hash;
pub mod render;

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use nodeimg_common::cmd::CmdError;
use nodeimg_common::fsutil::atomic_write_mode;
use nodeimg_common::Cmd;
use regex::Regex;

pub use ca_hash::ca_cert_hash;
pub use render::{render_init, render_join, ApiVersion, InitSecrets};

/// A kubeadm release as `kubeadm version -o short` prints it (`v1.31.2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeadmVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    text: String,
}

impl KubeadmVersion {
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for KubeadmVersion {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let v: crate::config::KubernetesVersion = s
            .trim()
            .parse()
            .map_err(|e: String| anyhow::anyhow!("kubeadm reported an unexpected version: {e}"))?;
        Ok(KubeadmVersion {
            major: v.major,
            minor: v.minor,
            patch: v.patch,
            text: v.as_str().to_owned(),
        })
    }
}

impl fmt::Display for KubeadmVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Replace anything shaped like a bootstrap token (keeping its public ID) or a 64-hex secret
/// (certificate key) in one line of kubeadm output.
pub fn redact(line: &str) -> String {
    static TOKEN: OnceLock<Regex> = OnceLock::new();
    static HEX64: OnceLock<Regex> = OnceLock::new();
    let token =
        TOKEN.get_or_init(|| Regex::new(r"\b([a-z0-9]{6})\.[a-z0-9]{16}\b").expect("static regex"));
    let hex = HEX64.get_or_init(|| Regex::new(r"\b[0-9a-fA-F]{64}\b").expect("static regex"));
    let line = token.replace_all(line, "$1.<redacted>");
    hex.replace_all(&line, "<redacted>").into_owned()
}

/// How to call kubeadm. The binary and its environment are injectable so tests run the double.
#[derive(Debug, Clone)]
pub struct Kubeadm {
    pub binary: PathBuf,
    pub env: Vec<(OsString, OsString)>,
    pub timeout: Duration,
}

/// What kubeadm action to run with a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Init,
    Join,
}

impl Kubeadm {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Kubeadm {
            binary: binary.into(),
            env: Vec::new(),
            timeout: Duration::from_secs(15 * 60),
        }
    }

    fn cmd(&self) -> Cmd {
        let mut c = Cmd::new(&self.binary).filter_stderr(redact);
        for (k, v) in &self.env {
            c = c.env(k, v);
        }
        c
    }

    /// `kubeadm version -o short`.
    pub fn version(&self) -> Result<KubeadmVersion> {
        let out = self
            .cmd()
            .args(["version", "-o", "short"])
            .timeout(Duration::from_secs(60))
            .stdout_string()
            .with_context(|| format!("asking {} for its version", self.binary.display()))?;
        out.parse()
    }

    /// The argv of an action: no secret ever appears here.
    pub fn action_args(action: Action, config: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = match action {
            Action::Init => vec!["init".into()],
            Action::Join => vec!["join".into()],
        };
        args.push("--config".into());
        args.push(config.as_os_str().to_owned());
        if action == Action::Init {
            // The certificate key in the config encrypts the uploaded certificates; the skip
            // flags keep kubeadm from printing the token and the key to its stdout.
            for flag in [
                "--upload-certs",
                "--skip-token-print",
                "--skip-certificate-key-print",
            ] {
                args.push(flag.into());
            }
        }
        args
    }

    /// Write `config` to `config_path` (0600), run the action, and remove the file whatever
    /// happened. Kubeadm's stdout is logged line by line after redaction.
    pub fn run(&self, action: Action, config_path: &Path, config: &str) -> Result<(), CmdError> {
        let io = |e: anyhow::Error| CmdError::Io {
            command: format!("writing {}", config_path.display()),
            source: std::io::Error::other(format!("{e:#}")),
        };
        atomic_write_mode(config_path, config, 0o600).map_err(io)?;
        let _remove = RemoveOnDrop(config_path.to_path_buf());
        let out = self
            .cmd()
            .args(Self::action_args(action, config_path))
            .forward_stderr()
            .timeout(self.timeout)
            .output();
        match &out {
            Ok(o) => log_stdout(&o.stdout),
            Err(CmdError::Failed { stdout, .. }) => log_stdout(stdout),
            Err(_) => {}
        }
        out.map(|_| ())
    }
}

fn log_stdout(stdout: &[u8]) {
    for line in String::from_utf8_lossy(stdout).lines() {
        tracing::info!(target: "kubeadm", "{}", redact(line));
    }
}

/// Removes the secret-bearing config file when the run ends, also on early returns and panics.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.0.display(), "could not remove the kubeadm config: {e}")
            }
        }
    }
}

/// What kubeadm leaves under `/etc/kubernetes`, to tell "never ran" from "finished" from
/// "half done" (reference §1.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// None of kubeadm's files exist.
    Clean,
    /// Every file a successful run leaves exists.
    Complete,
    /// Some files exist: a run stopped half-way; `kubeadm reset -f` is needed before retrying.
    Partial,
}

/// Inspect `kubernetes_dir` (normally `/etc/kubernetes`) for the traces of `action`.
pub fn host_state(kubernetes_dir: &Path, action: Action, control_plane: bool) -> HostState {
    let complete: Vec<&str> = match (action, control_plane) {
        (Action::Init, _) | (Action::Join, true) => vec![
            "admin.conf",
            "kubelet.conf",
            "pki/ca.crt",
            "manifests/kube-apiserver.yaml",
        ],
        (Action::Join, false) => vec!["kubelet.conf", "pki/ca.crt"],
    };
    let traces = [
        "admin.conf",
        "kubelet.conf",
        "bootstrap-kubelet.conf",
        "pki/ca.crt",
        "pki/ca.key",
        "manifests/kube-apiserver.yaml",
        "manifests/etcd.yaml",
    ];
    if complete.iter().all(|f| kubernetes_dir.join(f).exists()) {
        HostState::Complete
    } else if traces.iter().any(|f| kubernetes_dir.join(f).exists()) {
        HostState::Partial
    } else {
        HostState::Clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_tokens_and_keys() {
        let key = "0123456789abcdef".repeat(4);
        let line = format!("[bootstrap-token] Using token: abcdef.0123456789abcdef key {key}");
        let r = redact(&line);
        assert_eq!(
            r,
            "[bootstrap-token] Using token: abcdef.<redacted> key <redacted>"
        );
        assert_eq!(
            redact("[preflight] Running checks"),
            "[preflight] Running checks"
        );
    }

    #[test]
    fn init_argv_has_skip_flags_and_no_secret() {
        let args = Kubeadm::action_args(Action::Init, Path::new("/run/nodeboot/kubeadm.yaml"));
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "init",
                "--config",
                "/run/nodeboot/kubeadm.yaml",
                "--upload-certs",
                "--skip-token-print",
                "--skip-certificate-key-print"
            ]
        );
    }

    #[test]
    fn host_state_detection() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(host_state(d.path(), Action::Join, false), HostState::Clean);
        std::fs::write(d.path().join("bootstrap-kubelet.conf"), "x").unwrap();
        assert_eq!(
            host_state(d.path(), Action::Join, false),
            HostState::Partial
        );
        std::fs::create_dir_all(d.path().join("pki")).unwrap();
        std::fs::write(d.path().join("pki/ca.crt"), "x").unwrap();
        std::fs::write(d.path().join("kubelet.conf"), "x").unwrap();
        assert_eq!(
            host_state(d.path(), Action::Join, false),
            HostState::Complete
        );
        assert_eq!(host_state(d.path(), Action::Init, true), HostState::Partial);
    }
}
