//! What `kubeadm init` leaves for the kubelet and the control plane, reproduced with real
//! certificates (`openssl`): the cluster CA, the API server's serving certificate with
//! kubeadm's SANs, the kubelet's client certificate (`CN=system:node:<name>`,
//! `O=system:nodes`) in `/var/lib/kubelet/pki/kubelet-client-current.pem` with `kubelet.conf`
//! pointing at it (the shape after kubeadm's kubelet-finalize phase), `admin.conf` and
//! `super-admin.conf` with embedded admin credentials, and the static pod manifests, the
//! kube-apiserver one with the flags the kubelet double starts the API server stand-in with.
//!
//! Paths written into files are under `KUBEADM_FAKE_ROOT` (`/` on a real node), so a host
//! test's kubelet and API server find them.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use nodeimg_common::fsutil::atomic_write_mode;
use nodeimg_common::Cmd;
use serde_json::json;
use serde_yaml::Value;

use super::{fail, write, Fail};

const DEFAULT_SERVICE_SUBNET: &str = "10.96.0.0/12";
const DEFAULT_DNS_DOMAIN: &str = "cluster.local";
const DEFAULT_CLUSTER_NAME: &str = "kubernetes";
const DEFAULT_BIND_PORT: u16 = 6443;

fn s<'a>(v: Option<&'a Value>, path: &[&str]) -> Option<&'a str> {
    let mut cur = v?;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str().filter(|x| !x.is_empty())
}

/// A path on the simulated host.
fn host(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// The node name kubeadm uses: `nodeRegistration.name`, else the host name, lower-cased.
pub(super) fn node_name(doc: Option<&Value>) -> String {
    s(doc, &["nodeRegistration", "name"])
        .map(str::to_owned)
        .unwrap_or_else(hostname)
}

pub(super) fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_lowercase()
}

/// The settings of an init that end up in certificates, kubeconfigs and manifests.
#[derive(Debug, Clone)]
pub(super) struct Init {
    pub node_name: String,
    pub cluster_name: String,
    pub advertise: IpAddr,
    pub bind_port: u16,
    pub control_plane_endpoint: Option<String>,
    pub service_subnet: String,
    pub dns_domain: String,
    pub cert_sans: Vec<String>,
    pub apiserver_extra_args: Vec<(String, String)>,
    pub kubernetes_version: String,
}

impl Init {
    pub fn from_docs(init: Option<&Value>, cluster: Option<&Value>) -> Result<Init, Fail> {
        let advertise = match s(init, &["localAPIEndpoint", "advertiseAddress"]) {
            Some(a) => a
                .parse()
                .map_err(|_| fail(format!("invalid advertise address \"{a}\"")))?,
            None => default_route_address()?,
        };
        let bind_port = match init
            .and_then(|i| i.get("localAPIEndpoint"))
            .and_then(|l| l.get("bindPort"))
        {
            Some(p) => p
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(|| fail(format!("invalid bindPort {p:?}")))?,
            None => DEFAULT_BIND_PORT,
        };
        let apiserver = cluster.and_then(|c| c.get("apiServer"));
        // v1beta4: a list of {name, value}; v1beta3: a map.
        let apiserver_extra_args = match apiserver.and_then(|a| a.get("extraArgs")) {
            Some(Value::Sequence(seq)) => seq
                .iter()
                .map(|a| {
                    (
                        s(Some(a), &["name"]).unwrap_or_default().to_owned(),
                        s(Some(a), &["value"]).unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
            Some(Value::Mapping(m)) => m
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().unwrap_or_default().to_owned(),
                        v.as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
            _ => Vec::new(),
        };
        Ok(Init {
            node_name: node_name(init),
            cluster_name: s(cluster, &["clusterName"])
                .unwrap_or(DEFAULT_CLUSTER_NAME)
                .to_owned(),
            advertise,
            bind_port,
            control_plane_endpoint: s(cluster, &["controlPlaneEndpoint"]).map(str::to_owned),
            service_subnet: s(cluster, &["networking", "serviceSubnet"])
                .unwrap_or(DEFAULT_SERVICE_SUBNET)
                .to_owned(),
            dns_domain: s(cluster, &["networking", "dnsDomain"])
                .unwrap_or(DEFAULT_DNS_DOMAIN)
                .to_owned(),
            cert_sans: apiserver
                .and_then(|a| a.get("certSANs"))
                .and_then(Value::as_sequence)
                .map(|v| {
                    v.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            apiserver_extra_args,
            kubernetes_version: s(cluster, &["kubernetesVersion"])
                .unwrap_or("v1.34.3")
                .to_owned(),
        })
    }

    /// `https://` + controlPlaneEndpoint (port 6443 when it has none), else the local endpoint:
    /// where kubeadm points the kubeconfigs of an init node.
    pub fn server(&self) -> String {
        match &self.control_plane_endpoint {
            Some(ep) if split_host_port(ep).1.is_some() => format!("https://{ep}"),
            Some(ep) => format!("https://{ep}:{DEFAULT_BIND_PORT}"),
            None => format!(
                "https://{}",
                join_host_port(&self.advertise.to_string(), self.bind_port)
            ),
        }
    }

    /// kubeadm's `GetAPIServerAltNames`.
    pub fn apiserver_sans(&self) -> Result<Vec<String>, Fail> {
        let mut dns = vec![
            self.node_name.clone(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
            format!("kubernetes.default.svc.{}", self.dns_domain),
        ];
        let mut ips = vec![service_ip(&self.service_subnet)?, self.advertise];
        let mut add = |h: &str| match h.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(h.to_owned()),
        };
        if let Some(ep) = &self.control_plane_endpoint {
            add(split_host_port(ep).0);
        }
        for san in &self.cert_sans {
            add(san);
        }
        let mut out: Vec<String> = dns.into_iter().map(|d| format!("DNS:{d}")).collect();
        out.extend(ips.into_iter().map(|i| format!("IP:{i}")));
        // Like kubeadm: each name once, in first-seen order (a certSANs entry may repeat the
        // node name or the advertise address, which are not adjacent).
        let mut seen = std::collections::HashSet::new();
        out.retain(|san| seen.insert(san.clone()));
        Ok(out)
    }
}

fn split_host_port(ep: &str) -> (&str, Option<&str>) {
    if let Some(rest) = ep.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            return (h, p.strip_prefix(':'));
        }
    }
    match ep.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (ep, None),
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The first address of the (first) service subnet: the `kubernetes` Service's cluster IP.
fn service_ip(subnets: &str) -> Result<IpAddr, Fail> {
    let first = subnets.split(',').next().unwrap_or_default().trim();
    let bad = || fail(format!("couldn't parse the service subnet \"{first}\""));
    let (net, bits) = first.split_once('/').ok_or_else(bad)?;
    let bits: u32 = bits.parse().map_err(|_| bad())?;
    match net.parse::<IpAddr>().map_err(|_| bad())? {
        IpAddr::V4(v4) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            Ok(IpAddr::V4(std::net::Ipv4Addr::from(
                (u32::from(v4) & mask) + 1,
            )))
        }
        IpAddr::V6(v6) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            Ok(IpAddr::V6(std::net::Ipv6Addr::from(
                (u128::from(v6) & mask) + 1,
            )))
        }
        _ => Err(bad()),
    }
}

/// A destination routed by the host's default route, IPv4 first (kubeadm reads the same
/// tables to choose its address); none without a default route.
fn default_route_probe() -> Option<&'static str> {
    let v4 = fs::read_to_string("/proc/net/route").unwrap_or_default();
    let v6 = fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    if v4
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1) == Some("00000000"))
    {
        return Some("1.1.1.1");
    }
    // The kernel's own `unreachable` default on `lo` is not a route out.
    v6.lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 9 && f[0] == "0".repeat(32) && f[1] == "00" && f[9] != "lo"
        })
        .then_some("2606:4700::1111")
}

/// kubeadm's choice when no advertise address is configured: the address of the interface
/// that carries the default route (`ip route get` only consults the routing table). Without a
/// default route kubeadm warns and uses 0.0.0.0 (`ChooseAPIServerBindAddress`).
fn default_route_address() -> Result<IpAddr, Fail> {
    let Some(probe) = default_route_probe() else {
        eprintln!("W0101 00:00:00.000000       1 common.go:192] WARNING: could not obtain a bind address for the API Server: no default routes found in \"/proc/net/route\" or \"/proc/net/ipv6_route\"; using: 0.0.0.0");
        return Ok(IpAddr::from([0, 0, 0, 0]));
    };
    let out = Cmd::new("ip")
        .args(["-o", "route", "get", probe])
        .stdout_string()
        .map_err(|e| fail(format!("choosing the advertise address: {e}")))?;
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "src" {
            if let Some(ip) = words.next().and_then(|a| a.parse().ok()) {
                return Ok(ip);
            }
        }
    }
    Err(fail(format!(
        "choosing the advertise address: no source address in `ip route get`: {}",
        out.trim()
    )))
}

/// A key pair and a certificate signed by the cluster CA; returns (certificate PEM, key PEM).
fn sign(root: &Path, subject: &str, ext: &str) -> Result<(String, String), Fail> {
    let pki = host(root, "/etc/kubernetes/pki");
    let tmp = tempfile::tempdir().map_err(|e| fail(format!("a temporary directory: {e}")))?;
    let (key, csr, crt, extfile) = (
        tmp.path().join("key.pem"),
        tmp.path().join("req.csr"),
        tmp.path().join("cert.pem"),
        tmp.path().join("ext.cnf"),
    );
    fs::write(&extfile, ext).map_err(|e| fail(format!("writing {}: {e}", extfile.display())))?;
    let openssl = |args: Cmd| {
        args.run()
            .map_err(|e| fail(format!("[certs] signing {subject}: {e}")))
    };
    openssl(
        Cmd::new("openssl")
            .args([
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-subj", subject, "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    )?;
    openssl(
        Cmd::new("openssl")
            .args(["x509", "-req", "-days", "365", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(pki.join("ca.crt"))
            .arg("-CAkey")
            .arg(pki.join("ca.key"))
            .arg("-CAserial")
            .arg(tmp.path().join("ca.srl"))
            .arg("-CAcreateserial")
            .arg("-extfile")
            .arg(&extfile)
            .arg("-out")
            .arg(&crt),
    )?;
    let read =
        |p: &Path| fs::read_to_string(p).map_err(|e| fail(format!("reading {}: {e}", p.display())));
    Ok((read(&crt)?, read(&key)?))
}

fn write_secret(path: &Path, content: &str) -> Result<(), Fail> {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d).map_err(|e| fail(format!("creating {}: {e}", d.display())))?;
    }
    atomic_write_mode(path, content, 0o600).map_err(|e| fail(format!("{e:#}")))
}

const SERVER_EXT: &str = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n";
const CLIENT_EXT: &str = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A kubeconfig as kubeadm writes it (`kind: Config`, one cluster, user and context).
fn kubeconfig(
    cluster: &str,
    ctx: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    creds: serde_json::Value,
) -> String {
    let doc = json!({
        "apiVersion": "v1",
        "clusters": [{"cluster": {"certificate-authority-data": b64(ca_pem), "server": server}, "name": cluster}],
        "contexts": [{"context": {"cluster": cluster, "user": user}, "name": ctx}],
        "current-context": ctx,
        "kind": "Config",
        "preferences": {},
        "users": [{"name": user, "user": creds}],
    });
    serde_yaml::to_string(&doc).expect("a JSON value serializes")
}

fn read_ca(root: &Path) -> Result<String, Fail> {
    let p = host(root, "/etc/kubernetes/pki/ca.crt");
    fs::read_to_string(&p).map_err(|e| fail(format!("reading {}: {e}", p.display())))
}

/// `[certs]`: the API server's serving certificate (the CA exists already).
pub(super) fn write_certs(root: &Path, init: &Init) -> Result<(), Fail> {
    println!("[certs] Generating \"apiserver\" certificate and key");
    let sans = init.apiserver_sans()?;
    println!(
        "[certs] apiserver serving cert is signed for {}",
        sans.join(" ")
    );
    let (crt, key) = sign(
        root,
        "/CN=kube-apiserver",
        &format!("{SERVER_EXT}subjectAltName={}\n", sans.join(",")),
    )?;
    write(root, "/etc/kubernetes/pki/apiserver.crt", &crt)?;
    write_secret(&host(root, "/etc/kubernetes/pki/apiserver.key"), &key)?;
    let ca_key = host(root, "/etc/kubernetes/pki/ca.key");
    let _ = fs::set_permissions(&ca_key, std::os::unix::fs::PermissionsExt::from_mode(0o600));
    Ok(())
}

/// `[kubeconfig]` and `[kubelet-finalize]`: admin.conf, super-admin.conf (1.29+) and the
/// kubelet's credentials.
pub(super) fn write_kubeconfigs(root: &Path, init: &Init, super_admin: bool) -> Result<(), Fail> {
    let ca = read_ca(root)?;
    let server = init.server();
    let cluster = &init.cluster_name;
    let mut admins = vec![("admin.conf", "kubernetes-admin", "kubeadm:cluster-admins")];
    if super_admin {
        admins.push((
            "super-admin.conf",
            "kubernetes-super-admin",
            "system:masters",
        ));
    }
    for (file, user, group) in admins {
        println!("[kubeconfig] Writing \"{file}\" kubeconfig file");
        let (crt, key) = sign(root, &format!("/O={group}/CN={user}"), CLIENT_EXT)?;
        let creds = json!({"client-certificate-data": b64(&crt), "client-key-data": b64(&key)});
        write_secret(
            &host(root, &format!("/etc/kubernetes/{file}")),
            &kubeconfig(
                cluster,
                &format!("{user}@{cluster}"),
                &server,
                &ca,
                user,
                creds,
            ),
        )?;
    }
    let node = &init.node_name;
    println!("[kubeconfig] Writing \"kubelet.conf\" kubeconfig file");
    let (crt, key) = sign(
        root,
        &format!("/O=system:nodes/CN=system:node:{node}"),
        CLIENT_EXT,
    )?;
    let pem = host(root, "/var/lib/kubelet/pki/kubelet-client-current.pem");
    write_secret(&pem, &format!("{crt}{key}"))?;
    let p = pem.display().to_string();
    let creds = json!({"client-certificate": p, "client-key": p});
    write_secret(
        &host(root, "/etc/kubernetes/kubelet.conf"),
        &kubeconfig(
            cluster,
            &format!("system:node:{node}@{cluster}"),
            &server,
            &ca,
            &format!("system:node:{node}"),
            creds,
        ),
    )
}

/// A joining node's kubelet.conf: the discovered endpoint and CA. The kubelet's client
/// certificate comes from the TLS bootstrap, which needs the control plane's CSR signer; the
/// double has none, so `kubelet-client-current.pem` stays empty and the kubelet double reports
/// that it cannot load its credentials.
pub(super) fn write_join_kubeconfig(root: &Path, endpoint: &str) -> Result<(), Fail> {
    let ca = read_ca(root)?;
    let pem = host(root, "/var/lib/kubelet/pki/kubelet-client-current.pem");
    write_secret(&pem, "")?;
    let p = pem.display().to_string();
    // The names the kubelet gives the kubeconfig it writes after the TLS bootstrap.
    write_secret(
        &host(root, "/etc/kubernetes/kubelet.conf"),
        &kubeconfig(
            "default-cluster",
            "default-context",
            &format!("https://{endpoint}"),
            &ca,
            "default-auth",
            json!({"client-certificate": p, "client-key": p}),
        ),
    )
}

fn static_pod(
    name: &str,
    image: &str,
    command: Vec<String>,
    annotations: serde_json::Value,
) -> String {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "annotations": annotations,
            "labels": {"component": name, "tier": "control-plane"},
            "name": name,
            "namespace": "kube-system",
        },
        "spec": {
            "containers": [{"command": command, "image": image, "name": name}],
            "hostNetwork": true,
            "priorityClassName": "system-node-critical",
        },
    });
    serde_yaml::to_string(&doc).expect("a JSON value serializes")
}

/// `[control-plane]` and `[etcd]`: the static pod manifests. The kube-apiserver one carries
/// the flags kubeadm sets whose files exist here (plus `apiServer.extraArgs`, which override);
/// the others name their component only (nothing in the tests runs them).
pub(super) fn write_manifests(root: &Path, init: &Init) -> Result<(), Fail> {
    let pki = |f: &str| {
        host(root, &format!("/etc/kubernetes/pki/{f}"))
            .display()
            .to_string()
    };
    let mut flags: Vec<(String, String)> = vec![
        ("advertise-address".into(), init.advertise.to_string()),
        ("allow-privileged".into(), "true".into()),
        ("authorization-mode".into(), "Node,RBAC".into()),
        ("client-ca-file".into(), pki("ca.crt")),
        ("enable-admission-plugins".into(), "NodeRestriction".into()),
        ("enable-bootstrap-token-auth".into(), "true".into()),
        ("etcd-servers".into(), "https://127.0.0.1:2379".into()),
        ("secure-port".into(), init.bind_port.to_string()),
        (
            "service-cluster-ip-range".into(),
            init.service_subnet.clone(),
        ),
        ("tls-cert-file".into(), pki("apiserver.crt")),
        ("tls-private-key-file".into(), pki("apiserver.key")),
    ];
    for (k, v) in &init.apiserver_extra_args {
        match flags.iter_mut().find(|(f, _)| f == k) {
            Some(slot) => slot.1 = v.clone(),
            None => flags.push((k.clone(), v.clone())),
        }
    }
    flags.sort();
    let mut command = vec!["kube-apiserver".to_owned()];
    command.extend(flags.into_iter().map(|(k, v)| format!("--{k}={v}")));
    let version = &init.kubernetes_version;
    write(
        root,
        "/etc/kubernetes/manifests/kube-apiserver.yaml",
        &static_pod(
            "kube-apiserver",
            &format!("registry.k8s.io/kube-apiserver:{version}"),
            command,
            json!({"kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint":
                join_host_port(&init.advertise.to_string(), init.bind_port)}),
        ),
    )?;
    for m in ["kube-controller-manager", "kube-scheduler", "etcd"] {
        let image = if m == "etcd" {
            "registry.k8s.io/etcd:3.6.5-0".to_owned()
        } else {
            format!("registry.k8s.io/{m}:{version}")
        };
        write(
            root,
            &format!("/etc/kubernetes/manifests/{m}.yaml"),
            &static_pod(m, &image, vec![m.to_owned()], json!({})),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ip_and_endpoints() {
        assert_eq!(service_ip("10.96.0.0/12").unwrap().to_string(), "10.96.0.1");
        assert_eq!(
            service_ip("10.100.7.0/24,fd00::/108").unwrap().to_string(),
            "10.100.7.1"
        );
        assert_eq!(
            service_ip("fd00:10:96::/108").unwrap().to_string(),
            "fd00:10:96::1"
        );
        assert!(service_ip("10.96.0.0").is_err());
        assert_eq!(
            split_host_port("k8s.example:6443"),
            ("k8s.example", Some("6443"))
        );
        assert_eq!(split_host_port("k8s.example"), ("k8s.example", None));
        assert_eq!(split_host_port("[fd00::1]:6443"), ("fd00::1", Some("6443")));
        assert_eq!(join_host_port("fd00::1", 6443), "[fd00::1]:6443");
    }

    #[test]
    fn sans_and_server_as_kubeadm_computes_them() {
        let init: Value = serde_yaml::from_str(
            "localAPIEndpoint: {advertiseAddress: 10.0.2.15}\nnodeRegistration: {name: cp-0}\n",
        )
        .unwrap();
        let cluster: Value = serde_yaml::from_str(
            "controlPlaneEndpoint: k8s.example:6443\napiServer:\n  certSANs: [10.1.2.3, lb.example, cp-0, 10.0.2.15]\n  extraArgs:\n  - {name: bind-address, value: 127.0.0.1}\n",
        )
        .unwrap();
        let i = Init::from_docs(Some(&init), Some(&cluster)).unwrap();
        assert_eq!(i.server(), "https://k8s.example:6443");
        assert_eq!(
            i.apiserver_sans().unwrap(),
            [
                "DNS:cp-0",
                "DNS:kubernetes",
                "DNS:kubernetes.default",
                "DNS:kubernetes.default.svc",
                "DNS:kubernetes.default.svc.cluster.local",
                "DNS:k8s.example",
                "DNS:lb.example",
                "IP:10.96.0.1",
                "IP:10.0.2.15",
                "IP:10.1.2.3",
            ]
        );
        assert_eq!(
            i.apiserver_extra_args,
            [("bind-address".into(), "127.0.0.1".into())]
        );
        let no_ep = Init::from_docs(Some(&init), None).unwrap();
        assert_eq!(no_ep.server(), "https://10.0.2.15:6443");
    }
}
