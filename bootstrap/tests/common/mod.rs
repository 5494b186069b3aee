//! Helpers shared by nodeboot's integration tests: golden files, the kubeadm double, configs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nodeimg_common::Cmd;

/// Compare `actual` with the golden file `bootstrap/testdata/<rel>` (shared helper;
/// `UPDATE_GOLDEN=1` rewrites it).
pub fn golden(rel: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel);
    nodeimg_common::golden::assert_golden(path, actual);
}

/// The kubeadm double (`nodeimg-tests` binary `kubeadm-double`), built on first use so a stale
/// copy is never tested.
pub fn kubeadm_double() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut cmd = Cmd::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "nodeimg-tests",
                "--bin",
                "kubeadm-double",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd = cmd.arg("--release");
        }
        cmd.run().expect("building the kubeadm double");
        let p = profile_dir.join("kubeadm-double");
        assert!(p.exists(), "{} missing after build", p.display());
        p
    })
    .clone()
}

pub const TOKEN: &str = "abcdef.0123456789abcdef";
pub const CERT_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// A node config for `role`, with a file store in `store_dir`, extra TOML appended.
pub fn config_text(role: &str, store_dir: &Path, extra: &str) -> String {
    format!(
        r#"version = 1
role = "{role}"

[cluster]
name = "prod"
control-plane-endpoint = "k8s-api.example.internal:6443"
kubernetes-version = "v1.31.2"
pod-subnet = "10.244.0.0/16"

[node]
name = "node-1"

[secrets]
key = "clusters/prod/join"

[secrets.store]
kind = "file"
dir = "{}"
{extra}"#,
        store_dir.display()
    )
}
