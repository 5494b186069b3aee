//! Loading recipes: the shipped recipes, the kept v1 examples, `extends`/`include` merging,
//! relative paths and the digest.

use std::fs;
use std::path::{Path, PathBuf};

use nodeimg_builder::recipe::schema::{ArchiveKind, BaseKind, SysctlValue};
use nodeimg_builder::recipe::{self, command, Recipe};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/recipes")
        .join(rel)
}

fn load(p: &Path) -> recipe::Loaded {
    recipe::load(p).unwrap_or_else(|e| panic!("{} should load: {e:#}", p.display()))
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    out.sort();
    out
}

#[test]
fn every_shipped_recipe_loads() {
    let files = toml_files(&repo().join("recipes"));
    assert!(
        files.len() >= 3,
        "expected the default recipe and two variants: {files:?}"
    );
    for f in files {
        let l = load(&f);
        assert_eq!(l.recipe.version, 1);
        assert_eq!(l.files.last().unwrap().file_name(), f.file_name());
    }
}

#[test]
fn default_recipe_is_a_kubernetes_node() {
    let l = load(&repo().join("recipes/k8s-node.toml"));
    let r = &l.recipe;
    assert_eq!(r.image.name.as_str(), "k8s-node");
    assert_eq!(r.image.ref_name(), "nodeimg/k8s-node/x86_64");
    assert_eq!(r.base.suite, "bookworm");
    assert_eq!(r.kubernetes.version.major, 1);
    assert_eq!(r.kubernetes.version.minor, 34);
    for pkg in [
        "systemd",
        "containerd",
        "runc",
        "linux-image-amd64",
        "ostree-boot",
        "dracut",
    ] {
        assert!(r.base.packages.iter().any(|p| p == pkg), "missing {pkg}");
    }
    let names: Vec<&str> = r.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(
        names,
        ["kubelet", "kubeadm", "kubectl", "crictl", "cni-plugins"]
    );
    let k8s = format!("/v{}/", r.kubernetes.version);
    for a in &r.artifacts[..3] {
        assert!(a.url.as_str().starts_with("https://dl.k8s.io/release/"));
        assert!(a.url.as_str().contains(&k8s), "{}", a.url);
        assert!(a.unpack.is_none());
    }
    assert_eq!(r.artifacts[3].unpack, Some(ArchiveKind::TarGz));
    assert!(r.os.kernel_modules.iter().any(|m| m == "br_netfilter"));
    assert_eq!(
        r.os.sysctls.get("net.ipv4.ip_forward"),
        Some(&SysctlValue::Int(1))
    );
    assert!(r.os.kernel_args.iter().any(|a| a == "console=ttyS0,115200"));
}

#[test]
fn variants_extend_the_default_recipe() {
    let node = load(&repo().join("recipes/k8s-node.toml")).recipe;
    let cp = load(&repo().join("recipes/k8s-control-plane.toml"));
    let worker = load(&repo().join("recipes/k8s-worker.toml"));

    let merged_from: Vec<String> = cp
        .files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        merged_from,
        ["k8s-node.toml", "inotify.toml", "k8s-control-plane.toml"]
    );

    let cp = cp.recipe;
    assert_eq!(cp.image.name.as_str(), "k8s-control-plane");
    // Inherited unchanged: version, Kubernetes, artifacts.
    assert_eq!(cp.image.version, node.image.version);
    assert_eq!(cp.kubernetes, node.kubernetes);
    assert_eq!(cp.artifacts, node.artifacts);
    // extra-packages appended after the parent's list.
    assert_eq!(
        &cp.base.packages[..node.base.packages.len()],
        &node.base.packages[..]
    );
    assert_eq!(
        cp.base.packages.last().map(String::as_str),
        Some("etcd-client")
    );
    assert!(cp.base.extra_packages.is_empty());
    // The fragment's sysctls are added to the parent's.
    for (k, v) in &node.os.sysctls {
        assert_eq!(cp.os.sysctls.get(k), Some(v));
    }
    assert_eq!(
        cp.os.sysctls.get("fs.inotify.max_user_watches"),
        Some(&SysctlValue::Int(524288))
    );
    assert_eq!(cp.disk.size.map(|s| s.bytes()), Some(16 << 30));

    let worker = worker.recipe;
    assert_eq!(worker.image.name.as_str(), "k8s-worker");
    assert_eq!(worker.base.packages, node.base.packages);
    assert_eq!(worker.disk, node.disk);
}

#[test]
fn merge_order_and_rules() {
    let l = load(&testdata("layered/variant.toml"));
    let names: Vec<String> = l
        .files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "base.toml",
            "fragment-1.toml",
            "fragment-2.toml",
            "variant.toml"
        ]
    );
    let r = l.recipe;
    // Scalars: the last layer wins; unset ones are inherited.
    assert_eq!(r.image.name.as_str(), "layered-variant");
    assert_eq!(r.image.version.to_string(), "1.0.0");
    // Tables merge per key: base < fragment-1 < fragment-2 < variant.
    assert_eq!(
        r.os.sysctls.get("vm.swappiness"),
        Some(&SysctlValue::Int(40))
    );
    assert_eq!(
        r.os.sysctls.get("net.ipv4.ip_forward"),
        Some(&SysctlValue::Int(1))
    );
    assert_eq!(
        r.os.sysctls.get("kernel.pid_max"),
        Some(&SysctlValue::Int(4194304))
    );
    // Plain arrays replace.
    assert_eq!(r.os.kernel_args, ["console=ttyS0,115200"]);
    // extra-packages accumulate in merge order, without duplicates, after `packages`.
    assert_eq!(
        r.base.packages,
        ["systemd", "containerd", "curl", "jq", "strace", "tcpdump"]
    );
    // [[artifact]] merges by name: "a" replaced in place, "c" appended.
    let arts: Vec<(&str, &str)> = r
        .artifacts
        .iter()
        .map(|a| (a.name.as_str(), a.url.as_str()))
        .collect();
    assert_eq!(
        arts,
        [
            ("a", "https://example.com/a-v2"),
            ("b", "https://example.com/b"),
            ("c", "https://example.com/c"),
        ]
    );
    // [[os.user]] merges by name.
    let users: Vec<&str> = r.os.users.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(users, ["core", "ops"]);
}

#[test]
fn relative_paths_resolve_against_the_file_that_names_them() {
    let l = load(&testdata("layered/sub/deep.toml"));
    let root = fs::canonicalize(testdata("layered")).unwrap();
    let sources: Vec<PathBuf> = l
        .recipe
        .os
        .files
        .iter()
        .map(|f| fs::canonicalize(f.source.as_ref().unwrap()).unwrap())
        .collect();
    assert_eq!(
        sources,
        [root.join("files/issue"), root.join("sub/files/banner")]
    );
    for f in &l.recipe.os.files {
        assert!(f.source.as_ref().unwrap().is_absolute());
    }

    let every = load(&testdata("v1/everything.toml")).recipe;
    let v1 = testdata("v1");
    let nb = every.nodeboot.binary.unwrap();
    assert!(nb.is_absolute());
    assert_eq!(
        nb,
        v1.join("files/nodeboot"),
        "a path that does not exist yet"
    );
    assert_eq!(
        every.nodeboot.config.unwrap(),
        v1.join("files/node-config.toml")
    );
    assert_eq!(
        every.commit.sign_key.unwrap(),
        v1.parent().unwrap().join("keys/ed25519.secret")
    );
    let tar = load(&testdata("v1/tar-base.toml")).recipe;
    assert_eq!(tar.base.kind, BaseKind::Tar);
    assert_eq!(tar.base.path.unwrap(), v1.join("files/rootfs.tar"));
}

#[test]
fn kept_v1_examples_still_load() {
    let files = toml_files(&testdata("v1"));
    assert!(files.len() >= 3);
    for f in files {
        load(&f);
    }
}

/// Copy a recipe tree into a temporary directory so a test can change one file.
fn scratch_copy(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = d.path().join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
    d
}

const DIGEST_BASE: &str = r#"
version = 1
include = ["frag.toml"]
[image]
name = "d"
version = "1.0.0"
[base]
[kubernetes]
version = "1.34.3"
[os.sysctls]
"net.ipv4.ip_forward" = 1
[[os.file]]
path = "/etc/motd"
source = "motd"
"#;

#[test]
fn digest_changes_iff_the_input_changes() {
    let frag = "version = 1\n[os.sysctls]\n\"vm.swappiness\" = 10\n";
    let a = scratch_copy(&[
        ("r.toml", DIGEST_BASE),
        ("frag.toml", frag),
        ("motd", "hi\n"),
    ]);
    let digest = |d: &tempfile::TempDir| load(&d.path().join("r.toml")).digest;
    let first = digest(&a);
    assert_eq!(digest(&a), first, "stable across loads");

    // Same input in another directory, with comments and reordered keys: same digest.
    let reformatted = DIGEST_BASE.replace(
        "[os.sysctls]\n\"net.ipv4.ip_forward\" = 1\n",
        "# forwarding for pods\n[os.sysctls]\nnet.ipv4.ip_forward = 1\n",
    );
    let b = scratch_copy(&[
        ("r.toml", &reformatted),
        ("frag.toml", frag),
        ("motd", "hi\n"),
    ]);
    assert_eq!(digest(&b), first, "independent of location and formatting");

    // A sysctl changed in an included fragment.
    let c = scratch_copy(&[
        ("r.toml", DIGEST_BASE),
        ("frag.toml", &frag.replace("10", "11")),
        ("motd", "hi\n"),
    ]);
    assert_ne!(digest(&c), first, "sysctl value change");

    // Only the content of a referenced file changed.
    let d = scratch_copy(&[
        ("r.toml", DIGEST_BASE),
        ("frag.toml", frag),
        ("motd", "hello\n"),
    ]);
    assert_ne!(digest(&d), first, "file source content change");

    // The same setting moved from the fragment into the main file: the resolved recipe is
    // the same, so is the digest.
    let moved = DIGEST_BASE.replace(
        "\"net.ipv4.ip_forward\" = 1\n",
        "\"net.ipv4.ip_forward\" = 1\n\"vm.swappiness\" = 10\n",
    );
    let e = scratch_copy(&[
        ("r.toml", &moved),
        ("frag.toml", "version = 1\n"),
        ("motd", "hi\n"),
    ]);
    assert_eq!(digest(&e), first, "same resolved recipe");
}

#[test]
fn show_prints_a_recipe_that_loads_back_identically() {
    for f in ["recipes/k8s-control-plane.toml", "recipes/k8s-node.toml"] {
        let l = load(&repo().join(f));
        let text = command::show(&l).unwrap();
        assert!(text.contains(&format!("# digest: {}", l.digest)));
        let d = scratch_copy(&[("resolved.toml", &text)]);
        let again = load(&d.path().join("resolved.toml"));
        assert_eq!(again.recipe, l.recipe, "{f}");
        assert_eq!(again.digest, l.digest, "{f}");
    }
}

#[test]
fn everything_example_sets_every_section() {
    let r: Recipe = load(&testdata("v1/everything.toml")).recipe;
    assert_eq!(r.image.ref_name(), "acme/everything/x86_64");
    assert_eq!(r.artifacts[0].mode.0, 0o750);
    assert_eq!(
        r.artifacts[0].sha256.as_str(),
        "0e759f40bbc717c05227ae3994b77786f58f59ffa0137a34958c6b26fa5bcbbd"
    );
    assert_eq!(
        r.os.sysctls.get("net.bridge.bridge-nf-call-iptables"),
        Some(&SysctlValue::Bool(true))
    );
    assert_eq!(r.os.container_logs.max_size.bytes(), 50 << 20);
    assert_eq!(r.disk.esp_size.bytes(), 64 << 20);
    assert_eq!(r.os.files[1].mode.0, 0o600);
    assert!(r.commit.static_delta);
}
