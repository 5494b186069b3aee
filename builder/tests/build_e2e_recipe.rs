//! `tests/recipes/e2e.toml` resolves as ci/e2e uses it: laid out with a copy of
//! `recipes/k8s-node.toml` and a generated `target/e2e/artifacts.toml` in a scratch tree, its
//! artifacts are the file:// stand-ins (replacing the upstream entries by name, in place),
//! the URL/version rule accepts them, and the report unit, the kubeadm-double drop-in and the
//! user-data the boot test seeds are valid.

use std::fs;
use std::path::{Path, PathBuf};

use nodeimg_builder::recipe;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// A scratch tree shaped like the repository, with the fragment ci/e2e writes.
fn layout(fragment: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    copy_dir(&repo_root().join("recipes"), &d.path().join("recipes"));
    copy_dir(
        &repo_root().join("tests/recipes"),
        &d.path().join("tests/recipes"),
    );
    fs::create_dir_all(d.path().join("target/e2e")).unwrap();
    fs::write(d.path().join("target/e2e/artifacts.toml"), fragment).unwrap();
    let recipe = d.path().join("tests/recipes/e2e.toml");
    (d, recipe)
}

/// What ci/e2e writes (a keyed entry replaces the parent's whole entry, so each one is
/// complete).
fn fragment(names: &[&str]) -> String {
    let mut s = String::from("version = 1\n");
    for n in names {
        let tail = match *n {
            "crictl" => "dest = \"/usr/bin\"\nunpack = \"tar.gz\"\n".to_owned(),
            "cni-plugins" => "dest = \"/usr/lib/cni\"\nunpack = \"tar.gz\"\n".to_owned(),
            _ => format!("dest = \"/usr/bin/{n}\"\nmode = \"0755\"\n"),
        };
        s.push_str(&format!(
            "\n[[artifact]]\nname = \"{n}\"\nurl = \"file:///work/target/e2e/artifacts/{n}\"\nsha256 = \"{}\"\n{tail}",
            "ab".repeat(32)
        ));
    }
    s
}

#[test]
fn e2e_recipe_takes_the_stand_ins() {
    let all = ["kubelet", "kubeadm", "kubectl", "crictl", "cni-plugins"];
    let (_d, path) = layout(&fragment(&all));
    let loaded = recipe::load(&path).unwrap();
    let r = &loaded.recipe;
    assert_eq!(r.image.name.as_str(), "k8s-node-e2e");
    // Same order as the parent (replaced in place), every URL the stand-in's.
    let names: Vec<&str> = r.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, all);
    for a in &r.artifacts {
        assert!(a.url.as_str().starts_with("file:///"), "{}", a.url);
        assert_eq!(a.sha256.as_str(), "ab".repeat(32));
    }
    let cni = r
        .artifacts
        .iter()
        .find(|a| a.name.as_str() == "cni-plugins")
        .unwrap();
    assert_eq!(cni.dest.as_str(), "/usr/lib/cni");
    assert!(cni.unpack.is_some());
    assert_eq!(
        r.os.kernel_args,
        ["console=ttyS0,115200", "systemd.show_status=1"]
    );
    assert!(r
        .os
        .units
        .enable
        .contains(&"nodeimg-e2e-report.service".to_owned()));
    assert!(r.os.units.enable.contains(&"containerd.service".to_owned()));
    let paths: Vec<&str> = r.os.files.iter().map(|f| f.path.as_str()).collect();
    for p in [
        "/usr/libexec/nodeimg-e2e-report",
        "/usr/lib/systemd/system/nodeimg-e2e-report.service",
        "/usr/lib/systemd/system/nodeboot.service.d/50-kubeadm-double.conf",
    ] {
        assert!(paths.contains(&p), "{p} missing: {paths:?}");
    }
    // The packages and everything else come from the parent.
    assert!(r.base.packages.iter().any(|p| *p == "containerd"));
    assert!(r.nodeboot.enabled);
}

#[test]
fn without_the_fragment_the_error_says_where_it_is_named() {
    let (d, path) = layout("");
    fs::remove_file(d.path().join("target/e2e/artifacts.toml")).unwrap();
    let err = format!("{:#}", recipe::load(&path).unwrap_err());
    assert!(
        err.contains("e2e.toml:") && err.contains("artifacts.toml"),
        "{err}"
    );
}

#[test]
fn e2e_user_data_is_a_valid_nodeboot_config_without_secrets() {
    let p = repo_root().join("tests/recipes/e2e/user-data.toml");
    let text = fs::read_to_string(&p).unwrap();
    nodeimg_builder::kickstart::validate_user_data(&text, &p).unwrap();
}
