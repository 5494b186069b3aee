//! Node config schema v1 (user-data), shared with `nodeimg` for build-time validation.
//!
//! A config is TOML, `version = 1`. Every table rejects unknown keys, every value with a format
//! is a validating newtype ([`types`]), and cross-field rules are checked after parsing; every
//! error names the origin (file or source), line:column and the field path.
//! The fields are documented for users in `docs/user-data.md` (a test keeps the two in step).

pub mod credentials;
pub mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::secrets::StoreConfig;
pub use credentials::{BootstrapToken, CaCertHash, CertificateKey};
pub use types::{
    CriSocket, DurationSpec, Endpoint, FlagName, KubernetesVersion, LabelKey, LabelValue, NodeName,
    SecretKey, Subnets,
};

/// User-data larger than this is refused before parsing: a node config is a few hundred bytes,
/// and a huge payload is a mistake or an attack, never something to buffer and parse.
pub const MAX_USER_DATA_BYTES: usize = 64 * 1024;

/// Why a config was refused: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}{}: {}{message}", loc(.line_col), fld(.field))]
pub struct ConfigError {
    /// File name or source description, e.g. `/etc/nodeboot/config.toml` or `user-data from ec2`.
    pub origin: String,
    /// 1-based line and column of the offending text, when known.
    pub line_col: Option<(usize, usize)>,
    /// Dotted field path, e.g. `join.token`, when known.
    pub field: Option<String>,
    pub message: String,
}

fn loc(lc: &Option<(usize, usize)>) -> String {
    lc.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default()
}

fn fld(f: &Option<String>) -> String {
    f.as_ref()
        .map(|f| format!("field `{f}`: "))
        .unwrap_or_default()
}

/// The role of this node in its cluster. Stated explicitly: nodes never guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The first control-plane node: `kubeadm init`, then publish the join material.
    Init,
    /// An additional control-plane node: `kubeadm join` with the certificate key.
    JoinControlPlane,
    /// A worker: `kubeadm join`.
    JoinWorker,
}

impl Role {
    pub fn is_join(self) -> bool {
        !matches!(self, Role::Init)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Init => "init",
            Role::JoinControlPlane => "join-control-plane",
            Role::JoinWorker => "join-worker",
        })
    }
}

/// A validated node config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeConfig {
    /// Schema version; only `1` exists.
    pub version: Spanned<u32>,
    pub role: Role,
    pub cluster: ClusterSettings,
    #[serde(default)]
    pub node: NodeSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SecretsSettings>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Spanned<InlineJoin>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterSettings {
    /// kubeadm `clusterName`, default `kubernetes`.
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// The API server address every node uses (a load balancer for HA clusters).
    pub control_plane_endpoint: Endpoint,
    /// Always set: kubeadm otherwise looks up `stable-1` on the internet.
    pub kubernetes_version: KubernetesVersion,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_subnet: Option<Subnets>,
    #[serde(default = "default_service_subnet")]
    pub service_subnet: Subnets,
    #[serde(default = "default_dns_domain")]
    pub dns_domain: String,
}

fn default_cluster_name() -> String {
    "kubernetes".to_owned()
}

fn default_service_subnet() -> Subnets {
    "10.96.0.0/12".parse().expect("valid default")
}

fn default_dns_domain() -> String {
    "cluster.local".to_owned()
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeSettings {
    /// Node name; absent → kubeadm uses the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<NodeName>,
    /// IP the API server advertises on this node (init and control-plane joins); absent →
    /// kubeadm picks the address of the default route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_address: Option<IpAddr>,
    /// Labels the kubelet sets on its node (`--node-labels`).
    #[serde(default)]
    pub labels: BTreeMap<Spanned<LabelKey>, LabelValue>,
    /// Absent: kubeadm's default (control-plane taint on control-plane nodes, none on workers);
    /// `[]`: no taints at all; a list: exactly these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taints: Option<Vec<Taint>>,
    /// Extra kubelet flags, without leading dashes.
    #[serde(default)]
    pub kubelet_extra_args: BTreeMap<FlagName, String>,
    #[serde(default)]
    pub cri_socket: CriSocket,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Taint {
    pub key: LabelKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<LabelValue>,
    pub effect: TaintEffect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SecretsSettings {
    /// Name of the join material in the store, e.g. `clusters/prod/join`.
    pub key: SecretKey,
    /// Lifetime of the bootstrap token the first control plane creates (kubeadm default 24h).
    #[serde(default = "default_token_ttl")]
    pub token_ttl: DurationSpec,
    /// The store itself (`kind = "vault" | "aws" | "file"` and its settings).
    pub store: StoreConfig,
}

fn default_token_ttl() -> DurationSpec {
    DurationSpec::from_secs(24 * 3600)
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Timeouts {
    /// How long a joining node waits for the first control plane to publish the material.
    #[serde(default = "default_wait")]
    pub wait_for_join_material: DurationSpec,
    /// Upper bound for one `kubeadm init`/`join` run; it is killed after that.
    #[serde(default = "default_kubeadm")]
    pub kubeadm: DurationSpec,
    /// kubeadm's wait for the control-plane components to become healthy.
    #[serde(default = "default_cp_health")]
    pub control_plane_health: DurationSpec,
    /// kubeadm's token-based discovery timeout on joining nodes.
    #[serde(default = "default_discovery")]
    pub discovery: DurationSpec,
}

fn default_wait() -> DurationSpec {
    DurationSpec::from_secs(30 * 60)
}
fn default_kubeadm() -> DurationSpec {
    DurationSpec::from_secs(15 * 60)
}
fn default_cp_health() -> DurationSpec {
    DurationSpec::from_secs(4 * 60)
}
fn default_discovery() -> DurationSpec {
    DurationSpec::from_secs(5 * 60)
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            wait_for_join_material: default_wait(),
            kubeadm: default_kubeadm(),
            control_plane_health: default_cp_health(),
            discovery: default_discovery(),
        }
    }
}

/// Join material written into the user-data itself. Refused unless `insecure-inline = true`:
/// user-data is readable by anything that can query the metadata service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InlineJoin {
    #[serde(default)]
    pub insecure_inline: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Spanned<BootstrapToken>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ca_cert_hashes: Vec<CaCertHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_key: Option<Spanned<CertificateKey>>,
}

impl NodeConfig {
    /// The inline material, when the config carries it and allows it.
    pub fn inline_join(&self) -> Option<&InlineJoin> {
        self.join
            .as_ref()
            .map(|j| j.get_ref())
            .filter(|j| j.insecure_inline && j.token.is_some())
    }
}

/// Parse and validate a node config. `origin` names where the text came from, for messages.
pub fn parse_node_config(text: &str, origin: &str) -> Result<NodeConfig, ConfigError> {
    let err = |span: Option<Range<usize>>, field: Option<&str>, message: String| ConfigError {
        origin: origin.to_owned(),
        line_col: span.map(|s| line_col(text, s.start)),
        field: field.map(str::to_owned),
        message,
    };
    if text.len() > MAX_USER_DATA_BYTES {
        return Err(err(
            None,
            None,
            format!(
                "node config is {} bytes, more than the limit of {} bytes; user-data must be a node config, not a payload",
                text.len(),
                MAX_USER_DATA_BYTES
            ),
        ));
    }
    let de = toml::Deserializer::parse(text)
        .map_err(|e| err(e.span(), None, first_line(e.message())))?;
    let cfg: NodeConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        // `Spanned` wrappers show up as private path segments: drop them.
        let path = e
            .path()
            .to_string()
            .split('.')
            .filter(|seg| !seg.starts_with("$__serde_spanned"))
            .collect::<Vec<_>>()
            .join(".");
        let inner = e.into_inner();
        let field = (path != "." && !path.is_empty()).then_some(path);
        err(inner.span(), field.as_deref(), first_line(inner.message()))
    })?;
    validate(&cfg, text, origin)?;
    Ok(cfg)
}

fn first_line(msg: &str) -> String {
    msg.trim().lines().next().unwrap_or_default().to_owned()
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Cross-field rules that no single type can check.
fn validate(cfg: &NodeConfig, text: &str, origin: &str) -> Result<(), ConfigError> {
    let err = |span: Range<usize>, field: &str, message: String| ConfigError {
        origin: origin.to_owned(),
        line_col: Some(line_col(text, span.start)),
        field: Some(field.to_owned()),
        message,
    };
    if *cfg.version.get_ref() != 1 {
        return Err(err(
            cfg.version.span(),
            "version",
            format!(
                "unsupported schema version {}; this nodeboot reads version 1",
                cfg.version.get_ref()
            ),
        ));
    }
    for key in cfg.node.labels.keys() {
        if !key.get_ref().kubelet_may_set() {
            return Err(err(key.span(), &format!("node.labels.{}", key.get_ref()), format!(
                "the kubelet refuses to set label `{}` on its own node (kubernetes.io/k8s.io namespaces are reserved except node.kubernetes.io/ and kubelet.kubernetes.io/); apply it with kubectl after the node joined",
                key.get_ref()
            )));
        }
    }
    if !cfg.node.labels.is_empty()
        && cfg
            .node
            .kubelet_extra_args
            .keys()
            .any(|k| k.as_str() == "node-labels")
    {
        let span = cfg
            .node
            .labels
            .keys()
            .next()
            .map(|k| k.span())
            .unwrap_or(0..0);
        return Err(err(span, "node.labels", "set labels either in `node.labels` or in `node.kubelet-extra-args.node-labels`, not both".to_owned()));
    }
    match (&cfg.join, cfg.role) {
        (Some(j), Role::Init) => {
            return Err(err(j.span(), "join", "the `[join]` table is for joining nodes; role `init` generates its own join material".to_owned()));
        }
        (Some(j), _) => validate_inline(j, cfg, &err)?,
        (None, _) => {}
    }
    if cfg.role.is_join() && cfg.secrets.is_none() && cfg.inline_join().is_none() {
        return Err(ConfigError {
            origin: origin.to_owned(),
            line_col: None,
            field: Some("secrets".to_owned()),
            message: format!(
                "role `{}` needs a `[secrets]` table naming where the first control plane published the join material",
                cfg.role
            ),
        });
    }
    Ok(())
}

fn validate_inline(
    j: &Spanned<InlineJoin>,
    cfg: &NodeConfig,
    err: &dyn Fn(Range<usize>, &str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let inner = j.get_ref();
    if !inner.insecure_inline {
        let (span, field) = if let Some(t) = &inner.token {
            (t.span(), "join.token")
        } else if let Some(k) = &inner.certificate_key {
            (k.span(), "join.certificate-key")
        } else {
            (j.span(), "join.ca-cert-hashes")
        };
        return Err(err(span, field, "inline join material is refused: user-data can be read by anything that reaches the metadata service. Publish it to the secret store named in `[secrets]`, or set `join.insecure-inline = true` to accept the risk (labs only)".to_owned()));
    }
    if inner.token.is_none() {
        return Err(err(
            j.span(),
            "join.token",
            "`join.insecure-inline = true` needs `join.token`".to_owned(),
        ));
    }
    if inner.ca_cert_hashes.is_empty() {
        return Err(err(j.span(), "join.ca-cert-hashes", "inline join material needs at least one CA certificate hash; nodeboot never joins without verifying the cluster CA".to_owned()));
    }
    if cfg.role == Role::JoinControlPlane && inner.certificate_key.is_none() {
        return Err(err(j.span(), "join.certificate-key", "role `join-control-plane` needs `join.certificate-key` to download the control-plane certificates".to_owned()));
    }
    if cfg.secrets.is_some() {
        return Err(err(
            j.span(),
            "join",
            "give the join material either inline (`[join]`) or through `[secrets]`, not both"
                .to_owned(),
        ));
    }
    Ok(())
}
