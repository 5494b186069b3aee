//! End to end (run by `ci/e2e-cluster`, ignored by `cargo test`): cluster bootstrap across two
//! VMs of the v1 e2e image (`tests/recipes/e2e-v1.toml`), one after the other (2 cores).
//!
//! - VM1, role `init`: nodeboot runs `kubeadm init` (the kubeadm double) and publishes the join
//!   material to the Vault KV v2 stand-in (`nodeimg_tests::fakes::vault`), which this test runs
//!   on 127.0.0.1; the guest reaches it at 10.0.2.100:8200 through a qemu `guestfwd`. The Vault
//!   token reaches the guest on the NoCloud seed as a file, never in the user-data.
//! - VM2, role `join-worker`: nodeboot waits for the material in Vault and runs `kubeadm join`.
//!   The double "discovers" VM1's cluster CA (handed over on VM2's seed, as cluster-info would)
//!   and refuses to join unless its pin is in `caCertHashes`.
//!
//! Asserted from the serial consoles: both first boots completed; VM1's kubeadm init config and
//! VM2's join config (the double's journal, printed by the image's test hook with every
//! bootstrap token and certificate key replaced by its SHA-256) carry exactly the material that
//! landed in Vault; the published CA pin is the pin of VM1's CA; and neither serial log
//! contains the token, its secret half, the certificate key or the Vault token.
//!
//! Inputs: `NODEIMG_E2E_IMAGES` (the build output directory holding `k8s-node-e2e-1.0.0/`),
//! `NODEIMG_E2E_WORKDIR` (default `/var/tmp/nodeimg-e2e-cluster`).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use nodeimg_builder::boot::UserNet;
use nodeimg_tests::fakes::vault::FakeVault;
use nodeimg_tests::kubeadm_double::ca_pin;
use support::*;

const BOOT: Duration = Duration::from_secs(900);
const SECRET_KEY: &str = "e2e/cluster/join";
const ENDPOINT: &str = "10.0.2.15:6443";

const HOOK_INIT: &str =
    "e2e_status\ne2e_print_ca\ne2e_kubeadm_journal\nsystemctl --no-block poweroff\n";
const HOOK_JOIN: &str = "e2e_status\ne2e_kubeadm_journal\nsystemctl --no-block poweroff\n";

fn user_data(role: &str, name: &str) -> String {
    format!(
        r#"# nodeimg e2e cluster test ({role})
version = 1
role = "{role}"

[cluster]
name = "e2e"
control-plane-endpoint = "{ENDPOINT}"
kubernetes-version = "v1.34.3"

[node]
name = "{name}"

[secrets]
key = "{SECRET_KEY}"

[secrets.store]
kind = "vault"
address = "http://{GUEST_SERVICE_ADDR}:{GUEST_VAULT_PORT}"

[secrets.store.auth]
method = "token"
token-file = "/run/nodeimg-e2e/vault-token"

[timeouts]
wait-for-join-material = "3m"
"#
    )
}

/// The join material nodeboot published (the `value` field of the KV v2 secret).
#[derive(Debug)]
struct Material {
    token: String,
    ca_cert_hashes: Vec<String>,
    certificate_key: String,
    endpoint: String,
}

fn published(vault: &FakeVault) -> Material {
    let data = vault
        .latest("secret", SECRET_KEY)
        .expect("VM1 published the join material to Vault");
    let value: serde_json::Value =
        serde_json::from_str(data["value"].as_str().expect("field `value`")).unwrap();
    let s = |k: &str| {
        value[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k}"))
            .to_owned()
    };
    Material {
        token: s("token"),
        ca_cert_hashes: value["ca-cert-hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect(),
        certificate_key: s("certificate-key"),
        endpoint: s("api-server-endpoint"),
    }
}

/// The kubeadm double's journal entries of one boot whose argv starts with `action`.
fn journal(b: &BootLog, action: &str) -> Vec<serde_json::Value> {
    b.values("E2E-KUBEADM-JOURNAL")
        .into_iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("journal line is not JSON ({e}): {l}"))
        })
        .filter(|j| j["argv"][0] == action)
        .collect()
}

/// The kubeadm documents of a journal entry, by kind.
fn config_doc(entry: &serde_json::Value, kind: &str) -> serde_yaml::Value {
    let text = entry["config"].as_str().expect("the call had a --config");
    serde_yaml::Deserializer::from_str(text)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in {text}"))
}

fn yaml_str<'a>(v: &'a serde_yaml::Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{} missing in {v:?}", path.join(".")))
}

#[test]
#[ignore = "boots two VMs for ~5 minutes; run by ci/e2e-cluster"]
fn init_publishes_to_vault_and_a_worker_joins_with_it() {
    let images = PathBuf::from(std::env::var("NODEIMG_E2E_IMAGES").expect("NODEIMG_E2E_IMAGES"));
    let v1 = Build::load(&images.join("k8s-node-e2e-1.0.0")).unwrap();
    let work = PathBuf::from(env_or(
        "NODEIMG_E2E_WORKDIR",
        "/var/tmp/nodeimg-e2e-cluster",
    ));
    let vault = FakeVault::start();
    let vault_token = vault.add_token();
    let vault_port: u16 = vault.url().rsplit(':').next().unwrap().parse().unwrap();
    let net = UserNet {
        hostfwd: vec![],
        guestfwd: vec![(GUEST_SERVICE_ADDR.to_owned(), GUEST_VAULT_PORT, vault_port)],
    };

    // --- VM1: init ---
    let mut cp = Node::new(
        &v1.qcow2().unwrap(),
        &work.join("cp-0"),
        &user_data("init", "e2e-cp-0"),
        net.clone(),
    )
    .unwrap();
    cp.seed_files
        .push(("vault-token".into(), vault_token.clone().into_bytes()));
    let b1 = cp.boot("init", HOOK_INIT, &[], BOOT).unwrap();
    let st = b1.status();
    assert_eq!(
        st["complete"],
        true,
        "VM1 completed first boot: {st}\n{}",
        b1.tail(60)
    );
    let m = published(&vault);
    assert_eq!(
        vault.versions("secret", SECRET_KEY),
        1,
        "published once (create-only)"
    );
    assert_eq!(m.endpoint, ENDPOINT);

    let ca_pem: String = b1
        .values("E2E-CA")
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        ca_pem.starts_with("-----BEGIN CERTIFICATE-----"),
        "{ca_pem}"
    );
    let ca_file = work.join("cluster-ca.crt");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    assert_eq!(
        m.ca_cert_hashes,
        [ca_pin(&ca_file).unwrap()],
        "the published pin is VM1's CA's"
    );

    let init = journal(&b1, "init");
    assert_eq!(init.len(), 1, "one kubeadm init on VM1");
    let ic = config_doc(&init[0], "InitConfiguration");
    let tokens = &ic["bootstrapTokens"];
    assert_eq!(
        tokens[0]["token"].as_str(),
        Some(redacted(&m.token).as_str()),
        "VM1's kubeadm used the token it published"
    );
    assert_eq!(
        yaml_str(&ic, &["certificateKey"]),
        redacted(&m.certificate_key),
        "VM1's kubeadm used the certificate key it published"
    );
    assert_eq!(init[0]["config_mode"], "600");

    // --- VM2: join-worker ---
    let mut worker = Node::new(
        &v1.qcow2().unwrap(),
        &work.join("worker-0"),
        &user_data("join-worker", "e2e-worker-0"),
        net,
    )
    .unwrap();
    worker.seed_files = vec![
        ("vault-token".into(), vault_token.clone().into_bytes()),
        ("cluster-ca.crt".into(), ca_pem.clone().into_bytes()),
        (
            "kubeadm-double.env".into(),
            b"KUBEADM_DOUBLE_CLUSTER_CA=/run/nodeimg-e2e/cluster-ca.crt\n".to_vec(),
        ),
    ];
    let b2 = worker.boot("join", HOOK_JOIN, &[], BOOT).unwrap();
    let st = b2.status();
    assert_eq!(st["complete"], true, "VM2 joined: {st}\n{}", b2.tail(60));
    let join = journal(&b2, "join");
    assert_eq!(join.len(), 1, "one kubeadm join on VM2");
    assert_eq!(
        join[0]["env"]["KUBEADM_DOUBLE_CLUSTER_CA"], "/run/nodeimg-e2e/cluster-ca.crt",
        "the double checked the CA pin against VM1's CA"
    );
    let jc = config_doc(&join[0], "JoinConfiguration");
    let bt = &jc["discovery"]["bootstrapToken"];
    assert_eq!(yaml_str(bt, &["token"]), redacted(&m.token));
    assert_eq!(yaml_str(bt, &["apiServerEndpoint"]), m.endpoint);
    let pins: Vec<&str> = bt["caCertHashes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        pins, m.ca_cert_hashes,
        "VM2 pins exactly what VM1 published"
    );
    assert!(
        jc.get("controlPlane").is_none(),
        "a worker joins without a control plane"
    );
    assert_eq!(yaml_str(&jc, &["nodeRegistration", "name"]), "e2e-worker-0");

    // Vault saw one create from VM1 and reads from VM2, all with a token.
    let reqs = vault.requests();
    assert!(reqs.iter().all(|r| r.had_token), "{reqs:?}");
    assert!(
        reqs.iter()
            .any(|r| r.method != "GET" && r.path.contains(SECRET_KEY) && r.status == 200),
        "{reqs:?}"
    );

    // --- no secret on either console ---
    let (_, secret_half) = m.token.split_once('.').unwrap();
    let secrets = [
        ("bootstrap token", m.token.as_str()),
        ("token secret", secret_half),
        ("certificate key", m.certificate_key.as_str()),
        ("Vault token", vault_token.as_str()),
    ];
    for b in [&b1, &b2] {
        assert_no_secret(&format!("serial log of boot {}", b.name), &b.text, &secrets).unwrap();
    }
    eprintln!(
        "E2E-BENCH cluster: init boot {:.1}s, join boot {:.1}s; Vault requests {}",
        b1.seconds,
        b2.seconds,
        reqs.len()
    );
}

/// The hook's redaction, run with the real `sh` on a journal line shaped like the double's.
#[test]
fn hook_redacts_tokens_and_certificate_keys_in_the_kubeadm_journal() {
    let d = tempfile::tempdir().unwrap();
    let token = "a1b2c3.0123456789abcdef";
    let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let pin = "sha256:abababababababababababababababababababababababababababababababab";
    let config = format!(
        "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nbootstrapTokens:\n- token: {token}\ncertificateKey: {key}\n---\nkind: JoinConfiguration\ndiscovery:\n  bootstrapToken:\n    token: {token}\n    caCertHashes:\n    - {pin}\n"
    );
    let line = serde_json::json!({"argv": ["init", "--config", "/run/x"], "config": config});
    // A key YAML would read as a number comes quoted.
    let quoted_key = "0011223344556677889900112233445566778899001122334455667788990011";
    let quoted = serde_json::json!({"argv": ["join"], "config": format!("controlPlane:\n  certificateKey: '{quoted_key}'\n")});
    let j = d.path().join("journal.jsonl");
    std::fs::write(&j, format!("{line}\n{quoted}\n")).unwrap();
    let hook = repo_root().join("tests/recipes/e2e-hook/hook.sh");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"E2E_HOOK_SOURCE_ONLY=1; . "$1"; e2e_kubeadm_journal "$2""#)
        .arg("sh")
        .arg(&hook)
        .arg(&j)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_no_secret(
        "hook output",
        &text,
        &[("token", token), ("key", key), ("quoted key", quoted_key)],
    )
    .unwrap();
    let printed = nodeimg_builder::boot::serial::report_values(&text, "E2E-KUBEADM-JOURNAL");
    assert_eq!(printed.len(), 2, "{text}");
    assert!(printed[1].contains(&redacted(quoted_key)), "{}", printed[1]);
    let v: serde_json::Value = serde_json::from_str(printed[0]).unwrap();
    let cfg = v["config"].as_str().unwrap();
    assert!(
        cfg.contains(&format!("- token: {}\n", redacted(token))),
        "{cfg}"
    );
    assert!(
        cfg.contains(&format!("certificateKey: {}\n", redacted(key))),
        "{cfg}"
    );
    assert!(cfg.contains(pin), "CA pins are public and stay: {cfg}");
    assert_eq!(v["argv"][0], "init");
}
