//! The health gate's Node-Ready check against the control plane the doubles reproduce, on the
//! host, as real processes with real TLS: the kubeadm double's `init` writes the PKI,
//! kubelet.conf and the kube-apiserver static pod manifest; the kubelet double runs that
//! manifest's API server stand-in and posts its Node status with kubelet.conf's credentials;
//! nodeboot's checks (`nodeboot::lifecycle::health::check_once`) then ask the API server with
//! the same kubeconfig. Everything listens on 127.0.0.1 only.

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nodeboot::lifecycle::health::{
    check_once, node_name_from_cert, CheckOutcome, CheckResult, HealthConfig, KubeConfig,
};
use nodeimg_common::Cmd;

const NODE: &str = "node-a";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An init node: the kubeadm double's output under a fake root, and its kubelet double (which
/// runs the API server stand-in); the kubelet's process group is killed on drop.
struct InitNode {
    dir: tempfile::TempDir,
    port: u16,
    kubelet: std::process::Child,
    healthz: String,
}

impl InitNode {
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn path(&self, abs: &str) -> PathBuf {
        self.root().join(abs.trim_start_matches('/'))
    }

    fn fault(&self, fault: Option<&str>) {
        let f = self.dir.path().join("fault");
        match fault {
            Some(x) => std::fs::write(f, format!("{x}\n")).unwrap(),
            None => {
                let _ = std::fs::remove_file(f);
            }
        }
    }

    fn start() -> InitNode {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let port = free_port();
        let config = dir.path().join("kubeadm.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\n\
                 localAPIEndpoint:\n  advertiseAddress: 127.0.0.1\n  bindPort: {port}\n\
                 nodeRegistration:\n  name: {NODE}\n---\n\
                 apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\n\
                 kubernetesVersion: v1.34.3\ncontrolPlaneEndpoint: 127.0.0.1:{port}\n\
                 apiServer:\n  extraArgs:\n  - name: bind-address\n    value: 127.0.0.1\n"
            ),
        )
        .unwrap();
        Cmd::new(env!("CARGO_BIN_EXE_kubeadm-double"))
            .arg("init")
            .arg("--config")
            .arg(&config)
            .env("KUBEADM_FAKE_ROOT", &root)
            .env("KUBEADM_DOUBLE_VERSION", "v1.34.3")
            .env_remove("KUBEADM_DOUBLE_FAIL")
            .env_remove("KUBEADM_DOUBLE_JOURNAL")
            .run()
            .expect("kubeadm double init");

        // The static pod's "image": the API server stand-in, under the command's name.
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink(
            env!("CARGO_BIN_EXE_apiserver-double"),
            bin.join("kube-apiserver"),
        )
        .unwrap();
        // Post the status every second instead of every 10 (a KubeletConfiguration field).
        let kubelet_config = root.join("var/lib/kubelet/config.yaml");
        let mut kc = std::fs::read_to_string(&kubelet_config).unwrap();
        kc.push_str("nodeStatusUpdateFrequency: 1s\n");
        std::fs::write(&kubelet_config, kc).unwrap();
        // The flags kubeadm's kubelet drop-in passes, with kubeadm-flags.env.
        let env_file =
            std::fs::read_to_string(root.join("var/lib/kubelet/kubeadm-flags.env")).unwrap();
        let kubeadm_args = env_file
            .trim()
            .strip_prefix("KUBELET_KUBEADM_ARGS=\"")
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or_else(|| panic!("kubeadm-flags.env: {env_file}"))
            .to_owned();
        let mut kubelet = std::process::Command::new(env!("CARGO_BIN_EXE_kubelet-double"))
            .arg(format!(
                "--kubeconfig={}",
                root.join("etc/kubernetes/kubelet.conf").display()
            ))
            .arg(format!(
                "--config={}",
                root.join("var/lib/kubelet/config.yaml").display()
            ))
            .args(kubeadm_args.split_whitespace())
            .env("KUBELET_DOUBLE_LISTEN", "127.0.0.1:0")
            .env("KUBELET_DOUBLE_FAULT_FILE", dir.path().join("fault"))
            .env("KUBELET_DOUBLE_STATIC_POD_BIN_DIR", &bin)
            .env_remove("KUBELET_DOUBLE_FAULT")
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(kubelet.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let healthz = line
            .trim()
            .strip_prefix("kubelet-double: serving ")
            .unwrap_or_else(|| panic!("unexpected first line `{line}`"))
            .to_owned();
        InitNode {
            dir,
            port,
            kubelet,
            healthz,
        }
    }

    fn health(&self, kubeconfig: &Path, node_name: Option<&str>) -> HealthConfig {
        HealthConfig {
            units: vec![],
            kubelet_healthz: self.healthz.clone(),
            kubeconfig: kubeconfig.to_path_buf(),
            node_name: node_name.map(str::to_owned),
            ..HealthConfig::default()
        }
    }

    /// `check_once` with the kubelet's own kubeconfig until `done` holds for the node-ready
    /// outcome (the API server starts and the kubelet posts within seconds).
    fn until(&self, cfg: &HealthConfig, done: impl Fn(&CheckResult) -> bool) -> Vec<CheckOutcome> {
        let end = Instant::now() + Duration::from_secs(40);
        loop {
            let checks = check_once(cfg);
            let ready = checks.iter().find(|c| c.check == "node-ready");
            if ready.is_some_and(|c| done(&c.result)) {
                return checks;
            }
            assert!(
                Instant::now() < end,
                "gave up waiting; last checks: {checks:#?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for InitNode {
    fn drop(&mut self) {
        // The kubelet double and the API server it started.
        let pgid = nix::unistd::Pid::from_raw(self.kubelet.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.kubelet.wait();
    }
}

fn result<'a>(checks: &'a [CheckOutcome], name: &str) -> &'a CheckResult {
    &checks
        .iter()
        .find(|c| c.check == name)
        .unwrap_or_else(|| panic!("no {name} in {checks:#?}"))
        .result
}

fn failure(checks: &[CheckOutcome], name: &str) -> String {
    match result(checks, name) {
        CheckResult::Fail { reason } => reason.clone(),
        other => panic!("{name}: expected a failure, got {other:?}"),
    }
}

/// GET the Node with a kubeconfig's credentials: (status code, body).
fn get_node(kubeconfig: &Path, name: &str) -> (u16, serde_json::Value) {
    let kc = KubeConfig::load(kubeconfig).unwrap();
    let mut pem = kc.client_cert.unwrap();
    pem.push(b'\n');
    pem.extend(kc.client_key.unwrap());
    let client = reqwest::blocking::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&kc.ca.unwrap()).unwrap())
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .no_proxy()
        .build()
        .unwrap();
    let r = client
        .get(format!("{}/api/v1/nodes/{name}", kc.server))
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap())
}

#[test]
fn the_init_node_becomes_ready_and_the_gate_sees_not_ready_with_its_reason() {
    let n = InitNode::start();
    let kubelet_conf = n.path("/etc/kubernetes/kubelet.conf");
    let kc = KubeConfig::load(&kubelet_conf).unwrap();
    assert_eq!(kc.server, format!("https://127.0.0.1:{}", n.port));
    assert_eq!(node_name_from_cert(&kc.client_cert.unwrap()).unwrap(), NODE);

    let cfg = n.health(&kubelet_conf, None);
    let checks = n.until(&cfg, |r| matches!(r, CheckResult::Pass { .. }));
    assert!(matches!(
        result(&checks, "units"),
        CheckResult::Skipped { .. }
    ));
    assert!(matches!(
        result(&checks, "kubelet-healthz"),
        CheckResult::Pass { .. }
    ));
    assert_eq!(
        result(&checks, "node-ready"),
        &CheckResult::Pass {
            detail: "Ready (KubeletReady)".into()
        }
    );

    // Healthy kubelet, broken pod network: only the Node's condition shows it.
    n.fault(Some("network-not-ready"));
    let checks = n.until(&cfg, |r| matches!(r, CheckResult::Fail { .. }));
    assert!(matches!(
        result(&checks, "kubelet-healthz"),
        CheckResult::Pass { .. }
    ));
    let reason = failure(&checks, "node-ready");
    assert!(
        reason.contains("Ready is False (KubeletNotReady: container runtime network not ready"),
        "{reason}"
    );
    assert!(reason.contains(&format!("node {NODE}")), "{reason}");

    // The v3 fault: /healthz fails first, and the Node the kubelet posted is NotReady.
    n.fault(Some("unhealthy"));
    let admin = n.path("/etc/kubernetes/admin.conf");
    let end = Instant::now() + Duration::from_secs(30);
    let node = loop {
        let (code, node) = get_node(&admin, NODE);
        assert_eq!(code, 200, "{node}");
        if node["status"]["conditions"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("unhealthy"))
        {
            break node;
        }
        assert!(
            Instant::now() < end,
            "the kubelet did not post NotReady: {node}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(node["status"]["conditions"][0]["status"], "False");
    assert_eq!(node["metadata"]["labels"]["kubernetes.io/hostname"], NODE);
    let checks = check_once(&cfg);
    assert!(
        failure(&checks, "kubelet-healthz").contains("500 Internal Server Error"),
        "{checks:#?}"
    );
    assert_eq!(checks.len(), 2, "the attempt stops at the first failure");

    n.fault(None);
    n.until(&cfg, |r| matches!(r, CheckResult::Pass { .. }));
}

fn openssl(args: &[&str]) {
    Cmd::new("openssl")
        .args(args)
        .run()
        .unwrap_or_else(|e| panic!("openssl {args:?}: {e}"));
}

/// A client certificate `subject` signed by `ca` (cert, key): returns the PEM file (cert+key).
fn client_cert(dir: &Path, name: &str, subject: &str, ca: (&Path, &Path)) -> PathBuf {
    let (key, csr, crt, ext) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.csr")),
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.ext")),
    );
    std::fs::write(&ext, "extendedKeyUsage=clientAuth\n").unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        subject,
        "-keyout",
        &s(&key),
        "-out",
        &s(&csr),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-days",
        "1",
        "-in",
        &s(&csr),
        "-CA",
        &s(ca.0),
        "-CAkey",
        &s(ca.1),
        "-CAcreateserial",
        "-CAserial",
        &s(&dir.join(format!("{name}.srl"))),
        "-extfile",
        &s(&ext),
        "-out",
        &s(&crt),
    ]);
    let pem = dir.join(format!("{name}.pem"));
    let mut both = std::fs::read(&crt).unwrap();
    both.extend(std::fs::read(&key).unwrap());
    std::fs::write(&pem, both).unwrap();
    pem
}

/// kubelet.conf with another client certificate (or none).
fn kubeconfig_with(n: &InitNode, name: &str, pem: Option<&Path>) -> PathBuf {
    let text = std::fs::read_to_string(n.path("/etc/kubernetes/kubelet.conf")).unwrap();
    let current = n.path("/var/lib/kubelet/pki/kubelet-client-current.pem");
    let text = match pem {
        Some(p) => text.replace(current.to_str().unwrap(), p.to_str().unwrap()),
        None => text
            .lines()
            .filter(|l| !l.contains("client-certificate:") && !l.contains("client-key:"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .replace("  user:\n", "  user: {}\n"),
    };
    let out = n.dir.path().join(format!("{name}.conf"));
    std::fs::write(&out, text).unwrap();
    out
}

#[test]
fn only_the_nodes_own_credentials_or_an_admin_may_read_it() {
    let n = InitNode::start();
    let own = n.health(&n.path("/etc/kubernetes/kubelet.conf"), None);
    n.until(&own, |r| matches!(r, CheckResult::Pass { .. }));
    let pki = n.path("/etc/kubernetes/pki");
    let certs = n.dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();

    // Another node's valid credentials: its own Node is unknown, node-a is forbidden.
    let b = client_cert(
        &certs,
        "node-b",
        "/O=system:nodes/CN=system:node:node-b",
        (&pki.join("ca.crt"), &pki.join("ca.key")),
    );
    let b_conf = kubeconfig_with(&n, "node-b", Some(&b));
    let reason = failure(&check_once(&n.health(&b_conf, None)), "node-ready");
    assert!(reason.contains("404 Not Found"), "{reason}");
    assert!(reason.contains(r#"nodes \"node-b\" not found"#), "{reason}");
    let reason = failure(&check_once(&n.health(&b_conf, Some(NODE))), "node-ready");
    assert!(reason.contains("403 Forbidden"), "{reason}");
    assert!(
        reason.contains("node 'node-b' cannot read 'node-a', only its own Node object"),
        "{reason}"
    );

    // A certificate from another CA: refused in the TLS handshake.
    let other = n.dir.path().join("other-ca");
    std::fs::create_dir(&other).unwrap();
    let (oca, okey) = (other.join("ca.crt"), other.join("ca.key"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=kubernetes",
        "-keyout",
        okey.to_str().unwrap(),
        "-out",
        oca.to_str().unwrap(),
    ]);
    let forged = client_cert(
        &certs,
        "forged",
        "/O=system:nodes/CN=system:node:node-a",
        (&oca, &okey),
    );
    let forged_conf = kubeconfig_with(&n, "forged", Some(&forged));
    let reason = failure(&check_once(&n.health(&forged_conf, None)), "node-ready");
    assert!(
        reason.contains(&format!(
            "GET https://127.0.0.1:{}/api/v1/nodes/node-a",
            n.port
        )),
        "{reason}"
    );
    assert!(!reason.contains("200 OK"), "{reason}");
    assert!(reason.contains("received fatal alert"), "{reason}");

    // No client certificate: anonymous, forbidden.
    let anon = kubeconfig_with(&n, "anonymous", None);
    let reason = failure(&check_once(&n.health(&anon, Some(NODE))), "node-ready");
    assert!(reason.contains("403 Forbidden"), "{reason}");
    assert!(
        reason.contains(r#"User \"system:anonymous\" cannot get resource \"nodes\""#),
        "{reason}"
    );

    // admin.conf (kubeadm:cluster-admins) reads any node.
    let admin = n.health(&n.path("/etc/kubernetes/admin.conf"), Some(NODE));
    assert!(matches!(
        result(&check_once(&admin), "node-ready"),
        CheckResult::Pass { .. }
    ));
}
