//! `nodeimg recipe check` and `nodeimg recipe show`, run as the real binary.

use std::path::Path;
use std::process::{Command, Output};

fn nodeimg(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nodeimg"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("running nodeimg")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_prints_a_summary() {
    let out = nodeimg(&["recipe", "check", "recipes/k8s-node.toml"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("recipe recipes/k8s-node.toml is valid\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  ref         nodeimg/k8s-node/x86_64\n"),
        "{stdout}"
    );
    assert!(stdout.contains("  kubernetes  1.34.3\n"), "{stdout}");
    assert!(
        stdout.contains("  artifacts   kubelet, kubeadm, kubectl, crictl, cni-plugins\n"),
        "{stdout}"
    );
}

#[test]
fn check_json_matches_the_library() {
    let out = nodeimg(&["recipe", "check", "recipes/k8s-worker.toml", "--json"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let lib = nodeimg_builder::recipe::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../recipes/k8s-worker.toml"),
    )
    .unwrap();
    assert_eq!(v["name"], "k8s-worker");
    assert_eq!(v["ref"], "nodeimg/k8s-worker/x86_64");
    assert_eq!(v["digest"], lib.digest.as_str());
    assert_eq!(v["packages"], lib.recipe.base.packages.len());
    assert_eq!(v["files"].as_array().map(Vec::len), Some(3));
}

#[test]
fn check_fails_with_the_position() {
    let out = nodeimg(&[
        "recipe",
        "check",
        "builder/testdata/recipes/bad/bad-sha256.toml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(
        text(&out.stderr),
        "error: builder/testdata/recipes/bad/bad-sha256.toml:6:10: artifact[0].sha256: \
         `abc123` is not a sha256 digest (expected 64 hex characters)\n"
    );
}

#[test]
fn show_prints_the_merged_recipe() {
    let out = nodeimg(&["recipe", "show", "recipes/k8s-control-plane.toml"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let parsed: toml::Table = toml::from_str(&stdout).expect("valid TOML");
    assert_eq!(parsed["image"]["name"].as_str(), Some("k8s-control-plane"));
    let packages = parsed["base"]["packages"].as_array().unwrap();
    assert_eq!(
        packages.last().and_then(|p| p.as_str()),
        Some("etcd-client")
    );
    assert!(parsed["base"].get("extra-packages").is_none());
}
