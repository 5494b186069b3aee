//! The health gate's checks: is this node a working Kubernetes node?
//!
//! In order, each attempt stopping at the first failure:
//! 1. the systemd units (`containerd`, `kubelet`) are active (`systemctl is-active`);
//! 2. the kubelet's local health endpoint (`http://127.0.0.1:10248/healthz`) answers `ok`;
//! 3. when the node has joined (`/etc/kubernetes/kubelet.conf` exists), the API server reports
//!    the Node object `Ready`, asked with the kubelet's own credentials (the kubeconfig's CA
//!    and client certificate; the node name is the certificate's `system:node:<name>`).
//!
//! [`run_gate`] repeats the attempt every poll interval until one passes or the deadline
//! comes; a failure names the check that failed last.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use nodeimg_common::cmd::CmdError;
use nodeimg_common::Cmd;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::firstboot::Clock;

/// How long a new deployment has to become healthy.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_KUBELET_HEALTHZ: &str = "http://127.0.0.1:10248/healthz";
pub const DEFAULT_KUBELET_KUBECONFIG: &str = "/etc/kubernetes/kubelet.conf";
pub const DEFAULT_UNITS: [&str; 2] = ["containerd", "kubelet"];
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// What to check and where.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub deadline: Duration,
    pub poll_interval: Duration,
    pub systemctl: PathBuf,
    pub units: Vec<String>,
    pub kubelet_healthz: String,
    pub kubeconfig: PathBuf,
    /// Default: from the kubelet's client certificate, else the host name.
    pub node_name: Option<String>,
    /// `Ready=True` counts only with a heartbeat (`lastHeartbeatTime`, stamped by the kubelet
    /// with the node's own clock) at or after this time. Default: this boot's start, so the
    /// status the API server still holds from before the reboot (a Node turns Unknown only
    /// after the node monitor's grace period) cannot pass for the new OS. `None`: any age.
    pub heartbeat_since: Option<SystemTime>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            deadline: DEFAULT_DEADLINE,
            poll_interval: DEFAULT_POLL_INTERVAL,
            systemctl: PathBuf::from("systemctl"),
            units: DEFAULT_UNITS.iter().map(|u| (*u).to_owned()).collect(),
            kubelet_healthz: DEFAULT_KUBELET_HEALTHZ.to_owned(),
            kubeconfig: PathBuf::from(DEFAULT_KUBELET_KUBECONFIG),
            node_name: None,
            heartbeat_since: boot_time().ok(),
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum CheckResult {
    Pass { detail: String },
    Fail { reason: String },
    Skipped { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CheckOutcome {
    pub check: &'static str,
    #[serde(flatten)]
    pub result: CheckResult,
}

/// The gate's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct GateReport {
    pub passed: bool,
    pub attempts: u32,
    /// `check: reason` of the last failed check; none when passed.
    pub reason: Option<String>,
    /// The checks of the last attempt.
    pub checks: Vec<CheckOutcome>,
}

/// One attempt: every check in order, stopping at the first failure.
pub fn check_once(cfg: &HealthConfig) -> Vec<CheckOutcome> {
    let mut out = Vec::new();
    let steps: [(&'static str, &dyn Fn() -> CheckResult); 3] = [
        ("units", &|| check_units(cfg)),
        ("kubelet-healthz", &|| check_healthz(&cfg.kubelet_healthz)),
        ("node-ready", &|| check_node_ready(cfg)),
    ];
    for (check, step) in steps {
        let result = step();
        let failed = matches!(result, CheckResult::Fail { .. });
        out.push(CheckOutcome { check, result });
        if failed {
            break;
        }
    }
    out
}

fn failure_of(checks: &[CheckOutcome]) -> Option<String> {
    checks.iter().find_map(|c| match &c.result {
        CheckResult::Fail { reason } => Some(format!("{}: {reason}", c.check)),
        _ => None,
    })
}

/// Attempt until one attempt passes or `deadline`; at least one attempt. No attempt starts
/// after the deadline.
pub fn run_gate(cfg: &HealthConfig, deadline: OffsetDateTime, clock: &dyn Clock) -> GateReport {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let checks = check_once(cfg);
        let reason = failure_of(&checks);
        tracing::info!(
            attempt = attempts,
            failure = reason.as_deref().unwrap_or("none"),
            "health check"
        );
        if reason.is_none() || clock.now() + cfg.poll_interval > deadline {
            return GateReport {
                passed: reason.is_none(),
                attempts,
                reason,
                checks,
            };
        }
        clock.sleep(cfg.poll_interval);
    }
}

fn check_units(cfg: &HealthConfig) -> CheckResult {
    if cfg.units.is_empty() {
        return CheckResult::Skipped {
            reason: "no units configured".into(),
        };
    }
    let cmd = Cmd::new(&cfg.systemctl).arg("is-active").args(&cfg.units);
    let stdout = match cmd.output() {
        Ok(out) => out.stdout,
        // One line per unit either way; the exit status only says "not all active".
        Err(CmdError::Failed { stdout, .. }) => stdout,
        Err(e) => {
            return CheckResult::Fail {
                reason: e.to_string(),
            }
        }
    };
    let text = String::from_utf8_lossy(&stdout);
    let states: Vec<&str> = text.lines().map(str::trim).collect();
    for (i, unit) in cfg.units.iter().enumerate() {
        match states.get(i) {
            Some(&"active") => {}
            Some(state) => {
                return CheckResult::Fail {
                    reason: format!("unit {unit} is {state}"),
                }
            }
            None => {
                return CheckResult::Fail {
                    reason: format!("`{cmd}` printed no state for unit {unit}"),
                }
            }
        }
    }
    CheckResult::Pass {
        detail: format!("{} active", cfg.units.join(", ")),
    }
}

fn http_client() -> reqwest::blocking::ClientBuilder {
    // The gate talks to the local kubelet and the cluster's own endpoint: never via a proxy.
    reqwest::blocking::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .connect_timeout(HTTP_TIMEOUT)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
}

/// An answer's body as text, at most [`MAX_ANSWER`] bytes (a /healthz text or one Node
/// object); an unreadable or oversized body reads as empty, and the status decides.
fn bounded_text(resp: reqwest::blocking::Response) -> String {
    crate::sources::http::read_limited(resp, MAX_ANSWER)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Largest /healthz or Node answer read.
const MAX_ANSWER: usize = 1 << 20;

fn check_healthz(url: &str) -> CheckResult {
    let client = match http_client().build() {
        Ok(c) => c,
        Err(e) => {
            return CheckResult::Fail {
                reason: crate::sources::http::chain(&e),
            }
        }
    };
    match client.get(url).send() {
        Ok(resp) => {
            let status = resp.status();
            let body = bounded_text(resp);
            if status.is_success() && body.trim() == "ok" {
                CheckResult::Pass {
                    detail: format!("{url} ok"),
                }
            } else {
                let first = body
                    .lines()
                    .find(|l| l.starts_with("[-]"))
                    .or(body.lines().next());
                CheckResult::Fail {
                    reason: format!(
                        "{url} answered {status}: {}",
                        first.unwrap_or("(empty body)").trim()
                    ),
                }
            }
        }
        Err(e) => CheckResult::Fail {
            reason: format!("{url}: {}", crate::sources::http::chain(&e)),
        },
    }
}

fn check_node_ready(cfg: &HealthConfig) -> CheckResult {
    if !cfg.kubeconfig.exists() {
        return CheckResult::Skipped {
            reason: format!(
                "{} does not exist (node not joined)",
                cfg.kubeconfig.display()
            ),
        };
    }
    match node_ready(cfg) {
        Ok(detail) => CheckResult::Pass { detail },
        Err(e) => CheckResult::Fail {
            reason: format!("{e:#}"),
        },
    }
}

fn node_ready(cfg: &HealthConfig) -> Result<String> {
    let kc = KubeConfig::load(&cfg.kubeconfig)?;
    let name = match &cfg.node_name {
        Some(n) => n.clone(),
        None => match kc.client_cert.as_deref().map(node_name_from_cert) {
            Some(Ok(n)) => n,
            _ => hostname()?,
        },
    };
    let mut builder = http_client();
    if let Some(ca) = &kc.ca {
        let certs = reqwest::Certificate::from_pem_bundle(ca)
            .context("parsing the kubeconfig's certificate authority")?;
        // Only the cluster CA: the API server must not be trusted via a public CA.
        builder = builder.tls_certs_only(certs);
    }
    if let (Some(cert), Some(key)) = (&kc.client_cert, &kc.client_key) {
        let mut pem = cert.clone();
        pem.push(b'\n');
        pem.extend_from_slice(key);
        let identity = reqwest::Identity::from_pem(&pem)
            .context("loading the kubeconfig's client certificate and key")?;
        builder = builder.identity(identity);
    }
    let client = builder.build().map_err(|e| {
        anyhow::anyhow!(
            "building the HTTP client: {}",
            crate::sources::http::chain(&e)
        )
    })?;
    let url = format!("{}/api/v1/nodes/{name}", kc.server.trim_end_matches('/'));
    let resp = client
        .get(&url)
        .header("Accept", "application/json")
        .send()
        .map_err(|e| anyhow::anyhow!("GET {url}: {}", crate::sources::http::chain(&e)))?;
    let status = resp.status();
    let body = bounded_text(resp);
    if !status.is_success() {
        bail!("GET {url} answered {status}: {}", body.trim());
    }
    node_ready_condition(&body, cfg.heartbeat_since)
        .with_context(|| format!("node {name} (GET {url})"))
}

/// When this boot started (`btime` in `/proc/stat`).
pub fn boot_time() -> Result<SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let secs: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .context("/proc/stat has no btime line")?
        .trim()
        .parse()
        .context("/proc/stat: btime is not a number")?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Read the `Ready` condition of a Node object (JSON); with `heartbeat_since`, a `True` must
/// have been reported at or after that time.
pub fn node_ready_condition(json: &str, heartbeat_since: Option<SystemTime>) -> Result<String> {
    #[derive(Deserialize)]
    struct Node {
        status: Option<NodeStatus>,
    }
    #[derive(Deserialize)]
    struct NodeStatus {
        #[serde(default)]
        conditions: Vec<Condition>,
    }
    #[derive(Deserialize)]
    struct Condition {
        #[serde(rename = "type")]
        kind: String,
        status: String,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        message: Option<String>,
        #[serde(default, rename = "lastHeartbeatTime")]
        last_heartbeat: Option<String>,
    }
    let node: Node = serde_json::from_str(json).context("the answer is not a Node object")?;
    let ready = node
        .status
        .and_then(|s| s.conditions.into_iter().find(|c| c.kind == "Ready"))
        .context("the Node has no Ready condition yet")?;
    if ready.status == "True" {
        if let Some(since) = heartbeat_since {
            let stamp = ready
                .last_heartbeat
                .as_deref()
                .context("Ready is True but carries no lastHeartbeatTime")?;
            let at =
                time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339)
                    .with_context(|| {
                        format!("lastHeartbeatTime `{stamp}` is not an RFC 3339 time")
                    })?;
            // Kubernetes stamps whole seconds: compare at that precision.
            let since_secs = since
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()) as i64;
            if at.unix_timestamp() < since_secs {
                bail!(
                    "Ready is True, but its last heartbeat ({stamp}) is from before this boot: \
                     the kubelet has not reported since the node started"
                );
            }
        }
        Ok(format!(
            "Ready ({})",
            ready.reason.as_deref().unwrap_or("no reason")
        ))
    } else {
        bail!(
            "Ready is {} ({}: {})",
            ready.status,
            ready.reason.as_deref().unwrap_or("no reason"),
            ready.message.as_deref().unwrap_or("")
        )
    }
}

fn hostname() -> Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading /proc/sys/kernel/hostname")?;
    // The kubelet's default node name: the host name, lower-cased.
    Ok(h.trim().to_lowercase())
}

/// The node name in a kubelet client certificate (`CN=system:node:<name>`).
pub fn node_name_from_cert(pem: &[u8]) -> Result<String> {
    use der::Decode;
    let text = std::str::from_utf8(pem).context("the client certificate is not PEM text")?;
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    let start = text.find(begin).context("no PEM `CERTIFICATE` block")?;
    let stop = text[start..]
        .find(end)
        .map(|i| start + i + end.len())
        .context("unterminated PEM `CERTIFICATE` block")?;
    let (_, der_bytes) = pem_rfc7468::decode_vec(&text.as_bytes()[start..stop])
        .map_err(|e| anyhow::anyhow!("invalid PEM: {e}"))?;
    let cert = x509_cert::Certificate::from_der(&der_bytes)
        .map_err(|e| anyhow::anyhow!("invalid X.509 certificate: {e}"))?;
    cert.tbs_certificate
        .subject
        .0
        .iter()
        .find_map(|rdn| {
            rdn.to_string()
                .strip_prefix("CN=system:node:")
                .map(str::to_owned)
        })
        .context("the client certificate's subject has no `CN=system:node:<name>`")
}

/// The parts of a kubeconfig the gate uses, files already read. kubeconfig is a Kubernetes
/// format with many more fields, so unknown ones are ignored here.
#[derive(Clone, PartialEq, Eq)]
pub struct KubeConfig {
    pub server: String,
    pub ca: Option<Vec<u8>>,
    pub client_cert: Option<Vec<u8>>,
    /// PEM of the private key: never logged, never in an error (Debug redacts it).
    pub client_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for KubeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeConfig")
            .field("server", &self.server)
            .field("ca", &self.ca.as_ref().map(|c| String::from_utf8_lossy(c)))
            .field(
                "client_cert",
                &self
                    .client_cert
                    .as_ref()
                    .map(|c| String::from_utf8_lossy(c)),
            )
            .field(
                "client_key",
                &self.client_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct KubeConfigDoc {
    #[serde(default)]
    clusters: Vec<Named<ClusterDoc>>,
    #[serde(default)]
    users: Vec<Named<UserDoc>>,
    #[serde(default)]
    contexts: Vec<Named<ContextDoc>>,
    #[serde(default)]
    current_context: Option<String>,
}

#[derive(Deserialize)]
struct Named<T> {
    name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    item: T,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct ClusterDoc {
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct UserDoc {
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
}

#[derive(Deserialize)]
struct ContextDoc {
    cluster: String,
    user: String,
}

impl KubeConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parse kubeconfig YAML; relative file references are relative to its directory (as
    /// kubectl resolves them).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let origin = path.display();
        let doc: KubeConfigDoc = serde_yaml::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(":{}:{}", l.line(), l.column()))
                .unwrap_or_default();
            anyhow::anyhow!("{origin}{at}: {e}")
        })?;
        let ctx = match &doc.current_context {
            Some(name) => doc
                .contexts
                .iter()
                .find(|c| &c.name == name)
                .with_context(|| {
                    format!("{origin}: current-context `{name}` is not in contexts")
                })?,
            None => doc
                .contexts
                .first()
                .with_context(|| format!("{origin}: no current-context and no contexts"))?,
        };
        let cluster = doc
            .clusters
            .iter()
            .find(|c| c.name == ctx.item.cluster)
            .with_context(|| {
                format!(
                    "{origin}: cluster `{}` is not in clusters",
                    ctx.item.cluster
                )
            })?;
        let user = doc.users.iter().find(|u| u.name == ctx.item.user);
        let dir = path.parent().unwrap_or(Path::new("."));
        let material = |field: &str, data: &Option<String>, file: &Option<PathBuf>| {
            read_material(&origin.to_string(), dir, field, data, file)
        };
        let c = &cluster.item;
        let default_user = UserDoc::default();
        let u = user.map_or(&default_user, |u| &u.item);
        Ok(KubeConfig {
            server: c.server.clone(),
            ca: material(
                "certificate-authority",
                &c.certificate_authority_data,
                &c.certificate_authority,
            )?,
            client_cert: material(
                "client-certificate",
                &u.client_certificate_data,
                &u.client_certificate,
            )?,
            client_key: material("client-key", &u.client_key_data, &u.client_key)?,
        })
    }
}

/// `<field>-data` (base64) wins over `<field>` (a file), as in kubectl.
fn read_material(
    origin: &str,
    dir: &Path,
    field: &str,
    data: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Option<Vec<u8>>> {
    if let Some(b64) = data {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| anyhow::anyhow!("{origin}: field `{field}-data`: not base64 ({e})"))?;
        return Ok(Some(bytes));
    }
    match file {
        Some(f) => {
            let p = dir.join(f);
            std::fs::read(&p)
                .map(Some)
                .with_context(|| format!("{origin}: field `{field}`: reading {}", p.display()))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_condition() {
        let ok = r#"{"kind":"Node","status":{"conditions":[
            {"type":"MemoryPressure","status":"False"},
            {"type":"Ready","status":"True","reason":"KubeletReady"}]}}"#;
        assert_eq!(
            node_ready_condition(ok, None).unwrap(),
            "Ready (KubeletReady)"
        );
        let not = r#"{"status":{"conditions":[{"type":"Ready","status":"False","reason":"KubeletNotReady","message":"container runtime network not ready"}]}}"#;
        let err = node_ready_condition(not, None).unwrap_err().to_string();
        assert!(
            err.contains("Ready is False (KubeletNotReady: container runtime network not ready)"),
            "{err}"
        );
        assert!(node_ready_condition(r#"{"status":{}}"#, None).is_err());
        assert!(node_ready_condition("<html>", None).is_err());
    }

    #[test]
    fn ready_counts_only_with_a_heartbeat_from_this_boot() {
        let node = |beat: &str| {
            format!(
                r#"{{"status":{{"conditions":[{{"type":"Ready","status":"True","reason":"KubeletReady"{beat}}}]}}}}"#
            )
        };
        // 2026-11-25T02:00:00Z
        let boot = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_572_000);
        let fresh = node(r#","lastHeartbeatTime":"2026-11-25T02:00:10Z""#);
        assert_eq!(
            node_ready_condition(&fresh, Some(boot)).unwrap(),
            "Ready (KubeletReady)"
        );
        let stale = node(r#","lastHeartbeatTime":"2026-11-25T01:59:30Z""#);
        let err = node_ready_condition(&stale, Some(boot))
            .unwrap_err()
            .to_string();
        assert!(err.contains("from before this boot"), "{err}");
        assert!(node_ready_condition(&stale, None).is_ok());
        let err = node_ready_condition(&node(""), Some(boot))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no lastHeartbeatTime"), "{err}");
        let err = node_ready_condition(&node(r#","lastHeartbeatTime":"yesterday""#), Some(boot))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an RFC 3339 time"), "{err}");
        assert!(boot_time().unwrap() < SystemTime::now());
    }

    #[test]
    fn kubeconfig_files_and_data() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "CA").unwrap();
        std::fs::create_dir(dir.path().join("pki")).unwrap();
        std::fs::write(dir.path().join("pki/client.pem"), "CERT+KEY").unwrap();
        let path = dir.path().join("kubelet.conf");
        // The shape kubeadm writes: CA inline, client cert and key in one rotated file.
        let text = r#"apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: Q0FEQVRB
    server: https://k8s-api.example.internal:6443
  name: prod
- cluster:
    certificate-authority: ca.crt
    server: https://other:6443
  name: other
contexts:
- context:
    cluster: prod
    user: system:node:worker-1
  name: system:node:worker-1@prod
current-context: system:node:worker-1@prod
preferences: {}
users:
- name: system:node:worker-1
  user:
    client-certificate: pki/client.pem
    client-key: pki/client.pem
"#;
        let kc = KubeConfig::parse(text, &path).unwrap();
        assert_eq!(kc.server, "https://k8s-api.example.internal:6443");
        assert_eq!(kc.ca.as_deref(), Some(&b"CADATA"[..]));
        assert_eq!(kc.client_cert.as_deref(), Some(&b"CERT+KEY"[..]));
        assert_eq!(kc.client_key.as_deref(), Some(&b"CERT+KEY"[..]));

        let other = text.replace(
            "current-context: system:node:worker-1@prod",
            "current-context: o",
        ) + "- name: o-user\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n";
        let other = other.replace(
            "contexts:\n",
            "contexts:\n- context:\n    cluster: other\n    user: o-user\n  name: o\n",
        );
        let kc = KubeConfig::parse(&other, &path).unwrap();
        assert_eq!(kc.server, "https://other:6443");
        assert_eq!(kc.ca.as_deref(), Some(&b"CA"[..]));
        assert_eq!(kc.client_cert.as_deref(), Some(&b"CERT"[..]));
        assert_eq!(kc.client_key.as_deref(), Some(&b"KEY"[..]));
        let shown = format!("{kc:?}");
        assert!(
            shown.contains("\"CERT\"") && !shown.contains("\"KEY\""),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn kubeconfig_errors_name_the_file_and_field() {
        let p = Path::new("/etc/kubernetes/kubelet.conf");
        let err = KubeConfig::parse("clusters: [", p).unwrap_err().to_string();
        assert!(err.starts_with("/etc/kubernetes/kubelet.conf:"), "{err}");
        let text = "clusters:\n- name: c\n  cluster:\n    server: https://x\ncontexts:\n- name: x\n  context:\n    cluster: missing\n    user: u\n";
        let err = KubeConfig::parse(text, p).unwrap_err().to_string();
        assert!(
            err.contains("cluster `missing` is not in clusters"),
            "{err}"
        );
        let text = "clusters:\n- name: c\n  cluster:\n    server: https://x\n    certificate-authority-data: '%%'\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n";
        let err = KubeConfig::parse(text, p).unwrap_err().to_string();
        assert!(err.contains("field `certificate-authority-data`"), "{err}");
        let text = "clusters:\n- name: c\n  cluster:\n    server: https://x\n    certificate-authority: /nonexistent/ca.crt\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\n";
        let err = format!("{:#}", KubeConfig::parse(text, p).unwrap_err());
        assert!(
            err.contains("field `certificate-authority`: reading /nonexistent/ca.crt"),
            "{err}"
        );
    }
}
