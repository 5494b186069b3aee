//! Helpers shared by nodeboot's integration tests: golden files, the kubeadm double, configs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Compare `actual` with the golden file `bootstrap/testdata/<rel>` (shared helper;
/// `UPDATE_GOLDEN=1` rewrites it).
pub fn golden(rel: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(rel);
    nodeimg_common::golden::assert_golden(path, actual);
}

/// The kubeadm double (`nodeimg-tests` binary `kubeadm-double`), built on first use.
pub fn kubeadm_double() -> PathBuf {
    nodeimg_tests::bins::built("kubeadm-double")
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
