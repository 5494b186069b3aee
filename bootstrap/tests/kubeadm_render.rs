//! kubeadm config rendering: golden files for init / worker join / control-plane join in both
//! API versions, each also checked by the kubeadm double's strict `config validate`; version
//! selection; the CA hash against the openssl pipeline.

mod common;

use std::path::Path;

use common::{config_text, golden, kubeadm_double, CERT_KEY, TOKEN};
use nodeboot::config::parse_node_config;
use nodeboot::join::JoinMaterial;
use nodeboot::kubeadm::{
    ca_cert_hash, render_init, render_join, ApiVersion, InitSecrets, KubeadmVersion,
};
use nodeimg_common::Cmd;
use time::macros::datetime;

const NODE_EXTRA: &str = r#"advertise-address = "10.0.0.10"
labels = { "node.kubernetes.io/pool" = "system", "example.com/rack" = "r12" }
kubelet-extra-args = { node-ip = "10.0.0.10", max-pods = "200" }
"#;

fn cfg(role: &str, taints: &str) -> nodeboot::config::NodeConfig {
    let text = config_text(role, Path::new("/var/lib/store"), "").replace(
        "[node]\nname = \"node-1\"\n",
        &format!("[node]\nname = \"node-1\"\n{NODE_EXTRA}{taints}"),
    );
    parse_node_config(&text, "test.toml").unwrap()
}

fn material() -> JoinMaterial {
    JoinMaterial {
        token: TOKEN.parse().unwrap(),
        token_expires_at: datetime!(2030-01-02 03:04:05 UTC),
        ca_cert_hashes: vec![format!("sha256:{}", "ab".repeat(32)).parse().unwrap()],
        certificate_key: Some(CERT_KEY.parse().unwrap()),
        certificate_key_expires_at: Some(datetime!(2030-01-01 05:04:05 UTC)),
        api_server_endpoint: "k8s-api.example.internal:6443".parse().unwrap(),
    }
}

/// `kubeadm config validate` of the double: strict fields and validation rules.
fn double_validates(yaml: &str, kubeadm_version: &str) {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("kubeadm.yaml");
    std::fs::write(&f, yaml).unwrap();
    let out = Cmd::new(kubeadm_double())
        .args(["config", "validate", "--config"])
        .arg(&f)
        .env("KUBEADM_DOUBLE_VERSION", kubeadm_version)
        .stdout_string()
        .unwrap_or_else(|e| panic!("double rejected the rendered config: {e}\n{yaml}"));
    assert_eq!(out, "ok");
}

#[test]
fn init_configs_match_golden_and_validate() {
    let token = TOKEN.parse().unwrap();
    let key = CERT_KEY.parse().unwrap();
    for (api, name, version) in [
        (ApiVersion::V1Beta4, "v1beta4", "v1.31.2"),
        (ApiVersion::V1Beta3, "v1beta3", "v1.30.4"),
    ] {
        let c = cfg("init", "taints = []\n");
        let ttl = c.secrets.as_ref().unwrap().token_ttl;
        let yaml = render_init(
            &c,
            api,
            InitSecrets {
                token: &token,
                token_ttl: ttl,
                certificate_key: &key,
            },
        )
        .unwrap();
        golden(&format!("kubeadm/init-{name}.yaml"), &yaml);
        double_validates(&yaml, version);
    }
}

#[test]
fn join_configs_match_golden_and_validate() {
    let m = material();
    for (api, name, version) in [
        (ApiVersion::V1Beta4, "v1beta4", "v1.31.2"),
        (ApiVersion::V1Beta3, "v1beta3", "v1.30.4"),
    ] {
        let worker = render_join(&cfg("join-worker", ""), api, &m).unwrap();
        golden(&format!("kubeadm/join-worker-{name}.yaml"), &worker);
        double_validates(&worker, version);
        let taint =
            "taints = [{ key = \"dedicated\", value = \"infra\", effect = \"NoSchedule\" }]\n";
        let cp = render_join(&cfg("join-control-plane", taint), api, &m).unwrap();
        golden(&format!("kubeadm/join-control-plane-{name}.yaml"), &cp);
        double_validates(&cp, version);
    }
}

#[test]
fn version_shapes_differ_where_kubeadm_says() {
    let m = material();
    let v4 = render_join(&cfg("join-worker", ""), ApiVersion::V1Beta4, &m).unwrap();
    let v3 = render_join(&cfg("join-worker", ""), ApiVersion::V1Beta3, &m).unwrap();
    assert!(
        v4.contains("kubeletExtraArgs:\n  - name: max-pods\n    value: '200'"),
        "{v4}"
    );
    assert!(
        v3.contains("kubeletExtraArgs:\n    max-pods: '200'"),
        "{v3}"
    );
    assert!(
        v4.contains("timeouts:\n  discovery: 5m0s") && !v4.contains("  timeout: 5m0s"),
        "{v4}"
    );
    assert!(
        v3.contains("\n  timeout: 5m0s") && !v3.contains("timeouts:"),
        "{v3}"
    );
    // Absent taints stay absent (kubeadm's default), `[]` is written out.
    assert!(!v4.contains("taints"), "{v4}");
    // The v1beta4 shape is wrong for a v1beta3 reader and vice versa: the double refuses it.
    let mixed = v4.replace("kubeadm.k8s.io/v1beta4", "kubeadm.k8s.io/v1beta3");
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("k.yaml");
    std::fs::write(&f, mixed).unwrap();
    let e = Cmd::new(kubeadm_double())
        .args(["config", "validate", "--config"])
        .arg(&f)
        .run()
        .unwrap_err();
    assert!(e.to_string().contains("map[string]string"), "{e}");
    // A worker join carries no control-plane block; the certificate key never appears.
    assert!(
        !v4.contains("controlPlane") && !v4.contains(CERT_KEY),
        "{v4}"
    );
}

#[test]
fn api_version_follows_kubeadm_release() {
    let pick = |v: &str| ApiVersion::for_kubeadm(&v.parse::<KubeadmVersion>().unwrap());
    assert_eq!(pick("v1.31.0").unwrap(), ApiVersion::V1Beta4);
    assert_eq!(pick("v1.36.1").unwrap(), ApiVersion::V1Beta4);
    assert_eq!(pick("v1.30.14").unwrap(), ApiVersion::V1Beta3);
    assert_eq!(pick("v1.22.0").unwrap(), ApiVersion::V1Beta3);
    assert!(pick("v1.21.9")
        .unwrap_err()
        .to_string()
        .contains("not supported"));
    assert!(pick("v2.0.0").is_err());
    assert!("garbage".parse::<KubeadmVersion>().is_err());
}

fn openssl_pin(crt: &Path) -> String {
    let pubkey = Cmd::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(crt)
        .output()
        .unwrap();
    let der = Cmd::new("openssl")
        .args(["pkey", "-pubin", "-outform", "der"])
        .stdin(pubkey.stdout)
        .output()
        .unwrap();
    let sum = Cmd::new("sha256sum")
        .stdin(der.stdout)
        .stdout_string()
        .unwrap();
    format!("sha256:{}", sum.split_whitespace().next().unwrap())
}

#[test]
fn ca_hash_matches_openssl_for_rsa_and_ecdsa() {
    let d = tempfile::tempdir().unwrap();
    for (name, newkey) in [
        ("rsa", vec!["-newkey", "rsa:2048"]),
        (
            "ec",
            vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
    ] {
        let crt = d.path().join(format!("{name}.crt"));
        Cmd::new("openssl")
            .args([
                "req",
                "-x509",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=kubernetes",
            ])
            .args(newkey)
            .arg("-keyout")
            .arg(d.path().join(format!("{name}.key")))
            .arg("-out")
            .arg(&crt)
            .run()
            .unwrap();
        let ours = ca_cert_hash(&crt).unwrap();
        assert_eq!(ours.as_str(), openssl_pin(&crt), "{name}");
    }
    let bad = d.path().join("bad.crt");
    std::fs::write(&bad, "not a certificate").unwrap();
    assert!(format!("{:#}", ca_cert_hash(&bad).unwrap_err()).contains("CERTIFICATE"));
}
