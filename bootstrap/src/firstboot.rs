//! The first-boot phase runner: config → join material → kubeadm → publish → done, with a state
//! marker after each phase so a crash or reboot resumes at the first unfinished phase and a
//! finished node does nothing.
//!
//! Role `init`: generate token + certificate key (kept 0600 in the state dir until published) →
//! `kubeadm init` → hash `pki/ca.crt` → publish create-only to the secret store with expiry
//! times. Roles `join-*`: wait (bounded exponential backoff) for the material → refuse expired
//! material → `kubeadm join`. Every host-specific thing (paths, kubeadm binary and environment,
//! clock, sleep) is in [`Host`] so tests run the whole flow against a kubeadm double.
//!
//! Failures carry an exit code class ([`FailureKind`]), a one-line cause and a hint.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nodeimg_common::fsutil::atomic_write;
use time::OffsetDateTime;

use crate::config::{BootstrapToken, CertificateKey, NodeConfig, Role};
use crate::join::{JoinError, JoinMaterial, CERTIFICATE_KEY_TTL};
use crate::kubeadm::{self, Action, ApiVersion, HostState, InitSecrets, Kubeadm};
use crate::secrets::{CreateOutcome, SecretStore, StoreError};
use crate::state::{Marker, PendingMaterial, Phase, StateDir};

/// Time and waiting, injectable so tests need not sleep.
pub trait Clock: fmt::Debug + Send + Sync {
    fn now(&self) -> OffsetDateTime;
    fn sleep(&self, d: Duration);
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// Where things live on this host.
#[derive(Debug, Clone)]
pub struct Host {
    /// State markers, default `/var/lib/nodeboot`.
    pub state_dir: PathBuf,
    /// Where the kubeadm config is written (tmpfs), default `/run/nodeboot`.
    pub run_dir: PathBuf,
    /// kubeadm's output directory, default `/etc/kubernetes`.
    pub kubernetes_dir: PathBuf,
    /// Cluster API sentinel directory, default `/run/cluster-api`.
    pub cluster_api_dir: PathBuf,
    /// kubeadm binary, default `kubeadm` (from PATH).
    pub kubeadm: PathBuf,
    /// Extra environment for kubeadm (tests point the double at its fake root this way).
    pub kubeadm_env: Vec<(OsString, OsString)>,
    pub clock: Arc<dyn Clock>,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            state_dir: "/var/lib/nodeboot".into(),
            run_dir: "/run/nodeboot".into(),
            kubernetes_dir: "/etc/kubernetes".into(),
            cluster_api_dir: "/run/cluster-api".into(),
            kubeadm: "kubeadm".into(),
            kubeadm_env: Vec::new(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl Host {
    pub fn state(&self) -> StateDir {
        StateDir::new(&self.state_dir)
    }

    pub fn kubeadm_config_path(&self) -> PathBuf {
        self.run_dir.join("kubeadm.yaml")
    }

    pub fn sentinel_path(&self) -> PathBuf {
        self.cluster_api_dir.join("bootstrap-success.complete")
    }
}

/// The class of a failure; it decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Local I/O (state directory, /run): exit 1.
    Host,
    /// Bad config or user-data: exit 2.
    Config,
    /// Secret store unreachable, denied, material missing, malformed or expired: exit 3.
    SecretStore,
    /// kubeadm failed without changing the host: exit 4 (fix the cause, run again).
    Kubeadm,
    /// kubeadm left partial state: exit 5 (`kubeadm reset -f` first).
    PartialState,
    /// Two nodes both ran `kubeadm init` for the same join-material key: exit 6.
    InitConflict,
}

impl FailureKind {
    pub fn exit_code(self) -> u8 {
        match self {
            FailureKind::Host => 1,
            FailureKind::Config => 2,
            FailureKind::SecretStore => 3,
            FailureKind::Kubeadm => 4,
            FailureKind::PartialState => 5,
            FailureKind::InitConflict => 6,
        }
    }
}

/// A first-boot failure: one line of cause, one line of hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{cause}")]
pub struct Failure {
    pub kind: FailureKind,
    pub cause: String,
    pub hint: String,
}

impl Failure {
    pub fn new(kind: FailureKind, cause: impl Into<String>, hint: impl Into<String>) -> Self {
        Failure {
            kind,
            cause: cause.into(),
            hint: hint.into(),
        }
    }

    fn host(e: anyhow::Error) -> Self {
        Failure::new(
            FailureKind::Host,
            format!("{e:#}"),
            "check that the state directory and /run are writable; `nodeboot run` resumes where it stopped",
        )
    }
}

/// What a successful run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The node had finished its first boot already; nothing was done.
    AlreadyDone { at: OffsetDateTime },
    /// This run completed the remaining phases.
    Completed { role: Role, resumed_from: Phase },
}

type R<T> = Result<T, Failure>;

fn host<T>(r: anyhow::Result<T>) -> R<T> {
    r.map_err(Failure::host)
}

/// `Some(at)` when the node finished its first boot.
pub fn finished_at(host_paths: &Host) -> R<Option<OffsetDateTime>> {
    Ok(host(host_paths.state().marker(Phase::Done))?.map(|m| m.completed_at))
}

/// Run (or resume) the first boot of `cfg`. `origin` names where the config came from;
/// `store` is the opened store of `cfg.secrets` (None when the config has none).
pub fn run(
    cfg: &NodeConfig,
    origin: &str,
    host_paths: &Host,
    store: Option<&dyn SecretStore>,
) -> R<Outcome> {
    let state = host_paths.state();
    if let Some(at) = finished_at(host_paths)? {
        return Ok(Outcome::AlreadyDone { at });
    }
    let resumed_from = first_unfinished(&state, cfg.role)?;
    if resumed_from != Phase::ConfigLoaded {
        tracing::info!(phase = %resumed_from, "resuming an interrupted first boot");
    }
    let now = || host_paths.clock.now();
    if !host(state.is_done(Phase::ConfigLoaded))? {
        host(state.mark(
            Phase::ConfigLoaded,
            &Marker::at(now()).detail(format!("role {} from {origin}", cfg.role)),
        ))?;
    }
    let runner = Runner {
        cfg,
        host: host_paths,
        state: &state,
        store,
    };
    match cfg.role {
        Role::Init => runner.init()?,
        Role::JoinWorker | Role::JoinControlPlane => runner.join()?,
    }
    host(atomic_write(host_paths.sentinel_path(), "success\n"))?;
    host(state.mark(
        Phase::Done,
        &Marker::at(now()).detail(format!("role {}", cfg.role)),
    ))?;
    tracing::info!(role = %cfg.role, "first boot complete");
    Ok(Outcome::Completed {
        role: cfg.role,
        resumed_from,
    })
}

/// The phases a role goes through.
pub fn phases(role: Role, publishes: bool) -> Vec<Phase> {
    Phase::ALL
        .into_iter()
        .filter(|p| *p != Phase::Published || (role == Role::Init && publishes))
        .collect()
}

fn first_unfinished(state: &StateDir, role: Role) -> R<Phase> {
    for p in phases(role, true) {
        if !host(state.is_done(p))? {
            return Ok(p);
        }
    }
    Ok(Phase::Done)
}

struct Runner<'a> {
    cfg: &'a NodeConfig,
    host: &'a Host,
    state: &'a StateDir,
    store: Option<&'a dyn SecretStore>,
}

impl Runner<'_> {
    fn now(&self) -> OffsetDateTime {
        self.host.clock.now()
    }

    fn control_plane(&self) -> bool {
        self.cfg.role != Role::JoinWorker
    }

    fn action(&self) -> Action {
        if self.cfg.role == Role::Init {
            Action::Init
        } else {
            Action::Join
        }
    }

    fn init(&self) -> R<()> {
        let kubeadm_done = host(self.state.marker(Phase::KubeadmDone))?;
        let published = host(self.state.is_done(Phase::Published))?;
        if kubeadm_done.is_some() && (published || self.cfg.secrets.is_none()) {
            return host(self.state.remove_pending());
        }
        let pending = match host(self.state.load_pending())? {
            Some(p) => p,
            None if kubeadm_done.is_some() => {
                return Err(Failure::new(
                    FailureKind::PartialState,
                    format!("kubeadm init finished but the generated join material is missing from {}", self.state.root().display()),
                    "publish new material by hand (`kubeadm token create`, `kubeadm init phase upload-certs --upload-certs`), or `kubeadm reset -f` and run nodeboot again",
                ));
            }
            None => {
                self.require_clean_host()?;
                let p = PendingMaterial {
                    token: BootstrapToken::generate().map_err(Failure::host)?,
                    certificate_key: CertificateKey::generate().map_err(Failure::host)?,
                };
                host(self.state.save_pending(&p))?;
                p
            }
        };
        if !host(self.state.is_done(Phase::MaterialReady))? {
            host(self.state.mark(
                Phase::MaterialReady,
                &Marker::at(self.now()).detail(format!("generated token {}", pending.token)),
            ))?;
        }
        let kubeadm_marker = match kubeadm_done {
            Some(m) => {
                tracing::info!("kubeadm init already ran; not running it again");
                m
            }
            None => {
                let ttl = self
                    .cfg
                    .secrets
                    .as_ref()
                    .map(|s| s.token_ttl)
                    .unwrap_or(crate::config::DurationSpec::from_secs(24 * 3600));
                self.run_kubeadm(|api| {
                    kubeadm::render_init(
                        self.cfg,
                        api,
                        InitSecrets {
                            token: &pending.token,
                            token_ttl: ttl,
                            certificate_key: &pending.certificate_key,
                        },
                    )
                })?
            }
        };
        if let (Some(settings), Some(store)) = (&self.cfg.secrets, self.store) {
            self.publish(&pending, &kubeadm_marker, settings, store)?;
        } else if self.cfg.secrets.is_some() {
            return Err(Failure::new(
                FailureKind::SecretStore,
                "the config names a secret store but none was opened",
                "this is a bug in the caller of firstboot::run",
            ));
        } else {
            tracing::warn!("no [secrets] table: the join material is not published anywhere; other nodes cannot join through nodeboot");
        }
        host(self.state.remove_pending())
    }

    fn publish(
        &self,
        pending: &PendingMaterial,
        kubeadm_marker: &Marker,
        settings: &crate::config::SecretsSettings,
        store: &dyn SecretStore,
    ) -> R<()> {
        let ca = self.host.kubernetes_dir.join("pki/ca.crt");
        let hash = kubeadm::ca_cert_hash(&ca).map_err(|e| {
            Failure::new(
                FailureKind::PartialState,
                format!("{e:#}"),
                "kubeadm init reported success but left no readable CA; inspect /etc/kubernetes/pki, then `kubeadm reset -f` and run again",
            )
        })?;
        let started = kubeadm_marker
            .started_at
            .unwrap_or(kubeadm_marker.completed_at);
        let ttl = time::Duration::try_from(settings.token_ttl.get()).unwrap_or(time::Duration::DAY);
        let material = JoinMaterial {
            token: pending.token.clone(),
            token_expires_at: started + ttl,
            ca_cert_hashes: vec![hash],
            certificate_key: Some(pending.certificate_key.clone()),
            certificate_key_expires_at: Some(started + CERTIFICATE_KEY_TTL),
            api_server_endpoint: self.cfg.cluster.control_plane_endpoint.clone(),
        };
        if material
            .check_usable(self.now(), true, "this node")
            .is_err()
        {
            tracing::warn!(%material, "publishing join material that has already expired: joining nodes will refuse it until it is refreshed");
        }
        let key = settings.key.as_str();
        let where_ = format!("`{key}` in {}", store.describe());
        let store_failure = |e: StoreError| {
            Failure::new(
                FailureKind::SecretStore,
                format!("publishing the join material to {where_}: {e}"),
                "check the store address and this node's credentials; `nodeboot run` resumes at publishing without re-running kubeadm",
            )
        };
        match store
            .create(key, &material.to_secret())
            .map_err(store_failure)?
        {
            CreateOutcome::Created => {
                tracing::info!(%material, "published join material to {where_}");
            }
            CreateOutcome::AlreadyExists => {
                let existing = store.get(key).map_err(store_failure)?;
                match JoinMaterial::parse(&existing, &where_) {
                    // Our own earlier publish, before a crash hid its marker.
                    Ok(m)
                        if m.token == material.token
                            && m.ca_cert_hashes == material.ca_cert_hashes =>
                    {
                        tracing::info!(
                            "join material at {where_} was already published by this node"
                        );
                    }
                    Ok(m) => {
                        return Err(Failure::new(
                            FailureKind::InitConflict,
                            format!(
                                "another node already published join material at {where_} (token {}, CA {}): two nodes ran `kubeadm init` for one cluster; this node's CA is {}",
                                m.token,
                                m.ca_cert_hashes.first().map(|h| h.as_str()).unwrap_or("?"),
                                material.ca_cert_hashes[0],
                            ),
                            "this node now runs a separate one-node cluster: `kubeadm reset -f` here and boot it with role join-control-plane, or delete the stale secret if the other cluster is the one to discard",
                        ));
                    }
                    Err(e) => {
                        return Err(Failure::new(
                            FailureKind::InitConflict,
                            format!("{where_} already holds a value that is not join material ({e}); nodeboot will not overwrite it"),
                            "choose another `secrets.key` or remove the stale value, then run `nodeboot run` again",
                        ));
                    }
                }
            }
        }
        host(self.state.mark(
            Phase::Published,
            &Marker::at(self.now()).detail(format!("{where_}, token {}", material.token)),
        ))
    }

    fn join(&self) -> R<()> {
        if host(self.state.is_done(Phase::KubeadmDone))? {
            return Ok(());
        }
        self.require_clean_host_or_complete()?;
        let (material, origin) = self.join_material()?;
        material
            .check_usable(self.now(), self.control_plane(), &origin)
            .map_err(|e| match e {
                JoinError::Expired { .. } => Failure::new(
                    FailureKind::SecretStore,
                    e.to_string(),
                    "the first control plane must publish fresh material: `kubeadm token create` (and for control-plane joins `kubeadm init phase upload-certs --upload-certs`), then update the secret",
                ),
                _ => Failure::new(FailureKind::SecretStore, e.to_string(), "republish complete join material (see docs/user-data.md)"),
            })?;
        tracing::info!(%material, "join material ready");
        host(self.state.mark(
            Phase::MaterialReady,
            &Marker::at(self.now()).detail(format!("{origin}, token {}", material.token)),
        ))?;
        self.run_kubeadm(|api| kubeadm::render_join(self.cfg, api, &material))?;
        Ok(())
    }

    /// The material from the insecure inline table or, waiting for it, from the store.
    fn join_material(&self) -> R<(JoinMaterial, String)> {
        if let Some(inline) = self.cfg.inline_join() {
            let token = inline
                .token
                .as_ref()
                .map(|t| t.get_ref().clone())
                .ok_or_else(|| {
                    Failure::new(
                        FailureKind::Config,
                        "inline join material without a token",
                        "set `join.token`",
                    )
                })?;
            // Inline material has no recorded expiry: kubeadm is the judge.
            let far = self.now() + time::Duration::days(365);
            let m = JoinMaterial {
                token,
                token_expires_at: far,
                ca_cert_hashes: inline.ca_cert_hashes.clone(),
                certificate_key: inline.certificate_key.as_ref().map(|k| k.get_ref().clone()),
                certificate_key_expires_at: inline.certificate_key.as_ref().map(|_| far),
                api_server_endpoint: self.cfg.cluster.control_plane_endpoint.clone(),
            };
            tracing::warn!("using inline join material from user-data (insecure-inline = true)");
            return Ok((m, "user-data (inline)".to_owned()));
        }
        let (Some(settings), Some(store)) = (&self.cfg.secrets, self.store) else {
            return Err(Failure::new(
                FailureKind::Config,
                "no secret store configured and no inline join material",
                "add a `[secrets]` table naming where the first control plane publishes",
            ));
        };
        let key = settings.key.as_str();
        let origin = format!("`{key}` in {}", store.describe());
        let wait = self.cfg.timeouts.wait_for_join_material;
        let deadline =
            self.now() + time::Duration::try_from(wait.get()).unwrap_or(time::Duration::HOUR);
        let mut delay = Duration::from_secs(1);
        loop {
            match store.get(key) {
                Ok(secret) => {
                    return JoinMaterial::parse(&secret, &origin)
                        .map(|m| (m, origin.clone()))
                        .map_err(|e| {
                            Failure::new(FailureKind::SecretStore, e.to_string(), "the value must be nodeboot join material version 1, as published by a node with role init (docs/user-data.md)")
                        });
                }
                Err(e @ StoreError::Denied { .. }) => {
                    return Err(Failure::new(
                        FailureKind::SecretStore,
                        format!("reading the join material: {e}"),
                        "grant this node read access to the key (policy / IAM), then run `nodeboot run` again",
                    ));
                }
                Err(e) => {
                    let now = self.now();
                    if now >= deadline {
                        let why = match e {
                            StoreError::NotFound { .. } => format!("join material did not appear at {origin} within {wait}"),
                            other => format!("reading the join material from {origin} kept failing for {wait}: {other}"),
                        };
                        return Err(Failure::new(
                            FailureKind::SecretStore,
                            why,
                            "check that the first control plane (role init) finished and can write to the store, or raise `timeouts.wait-for-join-material`",
                        ));
                    }
                    match &e {
                        StoreError::NotFound { .. } => {
                            tracing::info!("waiting for the join material at {origin}")
                        }
                        other => {
                            tracing::warn!("reading the join material failed, retrying: {other}")
                        }
                    }
                    let remaining = Duration::try_from(deadline - now).unwrap_or_default();
                    self.host.clock.sleep(delay.min(remaining));
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    fn require_clean_host(&self) -> R<()> {
        match kubeadm::host_state(
            &self.host.kubernetes_dir,
            self.action(),
            self.control_plane(),
        ) {
            HostState::Clean => Ok(()),
            _ => Err(self.partial_failure(
                "kubeadm files exist on this host but nodeboot has no record of running kubeadm"
                    .to_owned(),
            )),
        }
    }

    /// Before a join: a complete earlier join is recorded rather than redone.
    fn require_clean_host_or_complete(&self) -> R<()> {
        match kubeadm::host_state(
            &self.host.kubernetes_dir,
            Action::Join,
            self.control_plane(),
        ) {
            HostState::Clean => Ok(()),
            HostState::Complete => Ok(()),
            HostState::Partial => Err(self.partial_failure(
                "a previous kubeadm join stopped half-way on this host".to_owned(),
            )),
        }
    }

    fn partial_failure(&self, cause: String) -> Failure {
        Failure::new(
            FailureKind::PartialState,
            format!("{cause} ({})", self.host.kubernetes_dir.display()),
            "run `kubeadm reset -f` to clean up, then `nodeboot run` again",
        )
    }

    /// Run kubeadm with the config `render` produces, unless its complete output is already on
    /// the host (the marker was lost). Records `kubeadm-done`.
    fn run_kubeadm(&self, render: impl Fn(ApiVersion) -> anyhow::Result<String>) -> R<Marker> {
        let action = self.action();
        let kubeadm = Kubeadm {
            binary: self.host.kubeadm.clone(),
            env: self.host.kubeadm_env.clone(),
            timeout: self.cfg.timeouts.kubeadm.get(),
        };
        let kd = &self.host.kubernetes_dir;
        let kubeadm_failed = |cause: String| {
            Failure::new(FailureKind::Kubeadm, cause, "see `journalctl -u nodeboot` for kubeadm's output; fix the cause and run `nodeboot run` again")
        };
        let version = kubeadm
            .version()
            .map_err(|e| kubeadm_failed(format!("{e:#}")))?;
        let mut marker = Marker::at(self.now());
        marker.kubeadm_version = Some(version.to_string());
        if kubeadm::host_state(kd, action, self.control_plane()) == HostState::Complete {
            tracing::warn!("kubeadm's output is complete on this host but its marker is missing: recording it instead of running kubeadm again");
            host(self.state.mark(
                Phase::KubeadmDone,
                &marker.clone().detail("recovered from host state"),
            ))?;
            return Ok(marker);
        }
        let api =
            ApiVersion::for_kubeadm(&version).map_err(|e| kubeadm_failed(format!("{e:#}")))?;
        let text = render(api)
            .map_err(|e| kubeadm_failed(format!("rendering the kubeadm config: {e:#}")))?;
        let started = self.now();
        tracing::info!(%version, %api, ?action, "running kubeadm");
        if let Err(e) = kubeadm.run(action, &self.host.kubeadm_config_path(), &text) {
            let verb = if action == Action::Init {
                "init"
            } else {
                "join"
            };
            tracing::error!("{}", kubeadm::redact(&e.to_string()));
            let cause = format!("kubeadm {verb} failed: {}", one_line(&e));
            return Err(
                match kubeadm::host_state(kd, action, self.control_plane()) {
                    HostState::Clean => kubeadm_failed(cause),
                    _ => self.partial_failure(format!("{cause}; it left files behind")),
                },
            );
        }
        marker.completed_at = self.now();
        marker.started_at = Some(started);
        host(self.state.mark(Phase::KubeadmDone, &marker))?;
        Ok(marker)
    }
}

/// The line of a kubeadm failure worth a one-line cause: its last `error: …` line (kubeadm
/// prefixes every failure so since 1.34), else the last line it printed.
fn one_line(e: &nodeimg_common::cmd::CmdError) -> String {
    match e {
        nodeimg_common::cmd::CmdError::Failed {
            status,
            stderr_tail,
            ..
        } => {
            let lines: Vec<&str> = stderr_tail
                .lines()
                .filter(|l| !l.trim().is_empty())
                .collect();
            let line = lines
                .iter()
                .rev()
                .find(|l| l.starts_with("error"))
                .or(lines.last())
                .map(|l| l.trim_start_matches("error: ").trim())
                .unwrap_or("no output");
            format!("{} ({status})", kubeadm::redact(line))
        }
        other => kubeadm::redact(&other.to_string())
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}
