//! Renders the kubeadm config file for `init` (Init + Cluster + Kubelet configuration) and `join`
//! (Join configuration) in the API version the installed kubeadm reads (reference §1.1, §1.2):
//! - v1beta4 (kubeadm ≥ 1.31): `extraArgs`/`kubeletExtraArgs` are lists of `{name, value}`;
//!   timeouts live in `timeouts` of Init/JoinConfiguration;
//! - v1beta3 (1.22–1.30): those are maps; the control-plane health timeout is
//!   `ClusterConfiguration.apiServer.timeoutForControlPlane`, the discovery timeout
//!   `discovery.timeout`.
//!
//! The output contains the token and certificate key: it goes only to the 0600 file.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::Result;
use serde_yaml::{Mapping, Value};

use super::KubeadmVersion;
use crate::config::{BootstrapToken, CertificateKey, DurationSpec, NodeConfig, Role, TaintEffect};
use crate::join::JoinMaterial;

/// The kubeadm config API version to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    V1Beta3,
    V1Beta4,
}

impl ApiVersion {
    /// v1beta4 from 1.31 on, v1beta3 for 1.22–1.30; anything else is refused.
    pub fn for_kubeadm(v: &KubeadmVersion) -> Result<Self> {
        match (v.major, v.minor) {
            (1, m) if m >= 31 => Ok(ApiVersion::V1Beta4),
            (1, 22..=30) => Ok(ApiVersion::V1Beta3),
            _ => anyhow::bail!(
                "kubeadm {v} is not supported: nodeboot writes kubeadm.k8s.io/v1beta3 (kubeadm 1.22–1.30) or v1beta4 (1.31 and later)"
            ),
        }
    }

    pub fn group_version(self) -> &'static str {
        match self {
            ApiVersion::V1Beta3 => "kubeadm.k8s.io/v1beta3",
            ApiVersion::V1Beta4 => "kubeadm.k8s.io/v1beta4",
        }
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.group_version())
    }
}

/// What the first control plane generated before `kubeadm init`.
#[derive(Debug, Clone, Copy)]
pub struct InitSecrets<'a> {
    pub token: &'a BootstrapToken,
    pub token_ttl: DurationSpec,
    pub certificate_key: &'a CertificateKey,
}

/// Builds a YAML mapping in insertion order.
#[derive(Default)]
struct Map(Mapping);

impl Map {
    fn new() -> Self {
        Map(Mapping::new())
    }
    fn set(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.insert(Value::String(key.to_owned()), value.into());
        self
    }
    fn set_opt(self, key: &str, value: Option<impl Into<Value>>) -> Self {
        match value {
            Some(v) => self.set(key, v),
            None => self,
        }
    }
    fn done(self) -> Value {
        Value::Mapping(self.0)
    }
}

fn s(v: impl fmt::Display) -> Value {
    Value::String(v.to_string())
}

/// `extraArgs`-style arguments in the shape of `api`.
fn args_value(api: ApiVersion, args: &BTreeMap<String, String>) -> Value {
    match api {
        ApiVersion::V1Beta3 => Value::Mapping(args.iter().map(|(k, v)| (s(k), s(v))).collect()),
        ApiVersion::V1Beta4 => Value::Sequence(
            args.iter()
                .map(|(k, v)| Map::new().set("name", s(k)).set("value", s(v)).done())
                .collect(),
        ),
    }
}

fn node_registration(cfg: &NodeConfig, api: ApiVersion) -> Value {
    let node = &cfg.node;
    let mut kubelet: BTreeMap<String, String> = node
        .kubelet_extra_args
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
        .collect();
    if !node.labels.is_empty() {
        let labels: Vec<String> = node
            .labels
            .iter()
            .map(|(k, v)| format!("{}={}", k.get_ref(), v))
            .collect();
        kubelet.insert("node-labels".to_owned(), labels.join(","));
    }
    // `taints` has no omitempty in kubeadm: absent means "kubeadm's default", `[]` means none.
    let taints = node.taints.as_ref().map(|ts| {
        Value::Sequence(
            ts.iter()
                .map(|t| {
                    Map::new()
                        .set("key", s(&t.key))
                        .set_opt("value", t.value.as_ref().map(s))
                        .set(
                            "effect",
                            match t.effect {
                                TaintEffect::NoSchedule => "NoSchedule",
                                TaintEffect::PreferNoSchedule => "PreferNoSchedule",
                                TaintEffect::NoExecute => "NoExecute",
                            },
                        )
                        .done()
                })
                .collect(),
        )
    });
    Map::new()
        .set_opt("name", node.name.as_ref().map(s))
        .set("criSocket", s(&node.cri_socket))
        .set_opt("taints", taints)
        .set_opt(
            "kubeletExtraArgs",
            (!kubelet.is_empty()).then(|| args_value(api, &kubelet)),
        )
        .done()
}

fn local_api_endpoint(cfg: &NodeConfig) -> Option<Value> {
    cfg.node.advertise_address.map(|ip| {
        Map::new()
            .set("advertiseAddress", s(ip))
            .set("bindPort", 6443)
            .done()
    })
}

fn to_yaml(docs: &[Value]) -> Result<String> {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(d)?);
    }
    Ok(out)
}

/// The config for `kubeadm init` on the first control plane.
pub fn render_init(cfg: &NodeConfig, api: ApiVersion, secrets: InitSecrets<'_>) -> Result<String> {
    anyhow::ensure!(
        cfg.role == Role::Init,
        "render_init called for role {}",
        cfg.role
    );
    let cp_health = cfg.timeouts.control_plane_health.go_string();
    let token = Map::new()
        .set("token", s(secrets.token.expose()))
        .set("ttl", s(secrets.token_ttl.go_string()))
        .set("description", "nodeboot: first control plane")
        .set(
            "usages",
            Value::Sequence(vec![s("signing"), s("authentication")]),
        )
        .set(
            "groups",
            Value::Sequence(vec![s("system:bootstrappers:kubeadm:default-node-token")]),
        )
        .done();
    let mut init = Map::new()
        .set("apiVersion", api.group_version())
        .set("kind", "InitConfiguration")
        .set("bootstrapTokens", Value::Sequence(vec![token]))
        .set("certificateKey", s(secrets.certificate_key.expose()))
        .set("nodeRegistration", node_registration(cfg, api))
        .set_opt("localAPIEndpoint", local_api_endpoint(cfg));
    if api == ApiVersion::V1Beta4 {
        init = init.set(
            "timeouts",
            Map::new()
                .set("controlPlaneComponentHealthCheck", s(&cp_health))
                .done(),
        );
    }
    let c = &cfg.cluster;
    let mut networking = Map::new()
        .set("dnsDomain", s(&c.dns_domain))
        .set("serviceSubnet", s(&c.service_subnet));
    if let Some(pods) = &c.pod_subnet {
        networking = networking.set("podSubnet", s(pods));
    }
    let mut cluster = Map::new()
        .set("apiVersion", api.group_version())
        .set("kind", "ClusterConfiguration")
        .set("clusterName", s(&c.name))
        .set("kubernetesVersion", s(&c.kubernetes_version))
        .set("controlPlaneEndpoint", s(&c.control_plane_endpoint))
        .set("networking", networking.done());
    if api == ApiVersion::V1Beta3 {
        cluster = cluster.set(
            "apiServer",
            Map::new()
                .set("timeoutForControlPlane", s(&cp_health))
                .done(),
        );
    }
    // The runtime is configured with systemd cgroups; say so explicitly rather than rely on
    // kubeadm's default.
    let kubelet = Map::new()
        .set("apiVersion", "kubelet.config.k8s.io/v1beta1")
        .set("kind", "KubeletConfiguration")
        .set("cgroupDriver", "systemd")
        .done();
    to_yaml(&[init.done(), cluster.done(), kubelet])
}

/// The config for `kubeadm join` (worker or control plane, from the role).
pub fn render_join(cfg: &NodeConfig, api: ApiVersion, material: &JoinMaterial) -> Result<String> {
    anyhow::ensure!(
        cfg.role.is_join(),
        "render_join called for role {}",
        cfg.role
    );
    let discovery_timeout = cfg.timeouts.discovery.go_string();
    let bootstrap = Map::new()
        .set("apiServerEndpoint", s(&material.api_server_endpoint))
        .set("token", s(material.token.expose()))
        .set(
            "caCertHashes",
            Value::Sequence(material.ca_cert_hashes.iter().map(s).collect()),
        )
        .done();
    let mut discovery = Map::new().set("bootstrapToken", bootstrap);
    if api == ApiVersion::V1Beta3 {
        discovery = discovery.set("timeout", s(&discovery_timeout));
    }
    let mut join = Map::new()
        .set("apiVersion", api.group_version())
        .set("kind", "JoinConfiguration")
        .set("discovery", discovery.done())
        .set("nodeRegistration", node_registration(cfg, api));
    if cfg.role == Role::JoinControlPlane {
        let key = material.certificate_key.as_ref().ok_or_else(|| {
            anyhow::anyhow!("a control-plane join needs a certificate key in the join material")
        })?;
        join = join.set(
            "controlPlane",
            Map::new()
                .set_opt("localAPIEndpoint", local_api_endpoint(cfg))
                .set("certificateKey", s(key.expose()))
                .done(),
        );
    }
    if api == ApiVersion::V1Beta4 {
        let mut timeouts = Map::new().set("discovery", s(&discovery_timeout));
        if cfg.role == Role::JoinControlPlane {
            timeouts = timeouts.set(
                "controlPlaneComponentHealthCheck",
                s(cfg.timeouts.control_plane_health.go_string()),
            );
        }
        join = join.set("timeouts", timeouts.done());
    }
    to_yaml(&[join.done()])
}
