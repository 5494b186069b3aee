//! `nodeimg build` from a small `kind = "tar"` rootfs to a commit, checked with the real
//! `ostree` CLI: layout, metadata, reproducibility, cache hits and the parent chain.

mod build_support;

use std::fs;

use build_support::{ostree, skip_reason, Fixture, KVER, REF};
use nodeimg_builder::build::build;
use nodeimg_builder::manifest::Manifest;

#[test]
fn builds_commits_reuses_and_chains() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let fx = Fixture::new();
    let recipe = fx.write_recipe(262144, "");
    let opts = fx.options(&recipe, "repo", "cache");

    // First build: everything runs.
    let first = build(&opts).unwrap();
    let c1 = first.manifest.commit.checksum.clone();
    let repo = &opts.repo;
    assert_eq!(ostree(repo, &["rev-parse", REF]), c1);
    assert!(!first.manifest.commit.reused);
    assert_eq!(first.manifest.commit.parent, None);
    assert!(fs::read_to_string(repo.join("config"))
        .unwrap()
        .contains("mode=archive-z2"));

    // Metadata as `ostree admin status` and tooling read it.
    let meta =
        |key: &str, rev: &str| ostree(repo, &["show", &format!("--print-metadata-key={key}"), rev]);
    assert_eq!(meta("version", &c1), "'1.0.0'");
    assert_eq!(meta("nodeimg.image", &c1), "'fixture-node'");
    assert_eq!(meta("nodeimg.kubernetes-version", &c1), "'1.34.3'");
    assert_eq!(
        meta("nodeimg.recipe-digest", &c1),
        format!("'{}'", first.manifest.recipe.digest)
    );
    assert_eq!(meta("ostree.linux", &c1), format!("'{KVER}'"));
    let packages = meta("nodeimg.packages", &c1);
    assert!(
        packages.contains("('openssh-server', '1:9.2p1-2+deb12u10', 'amd64')"),
        "{packages}"
    );
    let show = ostree(repo, &["show", &c1]);
    assert!(
        show.contains("Date:  2023-11-14 22:13:20 +0000")
            || std::env::var_os("SOURCE_DATE_EPOCH").is_some(),
        "{show}"
    );

    // Layout: /usr/etc, empty /var, kernel next to the initramfs, nothing in /boot.
    let cat = |path: &str| ostree(repo, &["cat", &c1, path]);
    assert!(cat("/usr/etc/sysctl.d/90-nodeimg.conf").contains("vm.max_map_count = 262144"));
    assert_eq!(
        cat(&format!("/usr/lib/modules/{KVER}/vmlinuz")),
        "fake kernel for tests"
    );
    assert_eq!(
        ostree(repo, &["ls", &c1, "/var"]).lines().count(),
        1,
        "/var must be empty"
    );
    assert_eq!(
        ostree(repo, &["ls", &c1, "/boot"]).lines().count(),
        1,
        "/boot must be empty"
    );
    let root = ostree(repo, &["ls", &c1, "/"]);
    for line in [
        "/home -> var/home",
        "/ostree -> sysroot/ostree",
        "/root -> var/roothome",
    ] {
        assert!(root.contains(line), "{line} missing in\n{root}");
    }
    assert!(
        !root.contains(" /etc\n") && !root.lines().any(|l| l.ends_with(" /etc")),
        "{root}"
    );
    let tmpfiles = cat("/usr/lib/tmpfiles.d/nodeimg.conf");
    assert!(
        tmpfiles
            .contains("C /var/lib/fixture/state - - - - /usr/share/factory/var/lib/fixture/state"),
        "{tmpfiles}"
    );
    assert!(
        tmpfiles.contains("d /var/home/ops 0700 ops ops -"),
        "{tmpfiles}"
    );
    assert!(!tmpfiles.contains("/var/cache/apt"), "{tmpfiles}");
    // Ownership and modes survive: root-owned kubelet 0755, shadow root:shadow 0640.
    let ls = ostree(
        repo,
        &[
            "ls",
            &c1,
            "/usr/bin/kubelet",
            "/usr/etc/shadow",
            "/usr/bin/nodeboot",
        ],
    );
    assert!(
        ls.contains("-00755 0 0") && ls.contains("/usr/bin/kubelet"),
        "{ls}"
    );
    assert!(
        ls.contains("-00640 0 42") && ls.contains("/usr/etc/shadow"),
        "{ls}"
    );
    assert!(cat("/usr/etc/passwd").contains("ops:x:1000:1000::/home/ops:/bin/bash"));
    let wants = ostree(
        repo,
        &["ls", &c1, "/usr/etc/systemd/system/multi-user.target.wants"],
    );
    for unit in ["kubelet.service", "containerd.service", "nodeboot.service"] {
        assert!(wants.contains(unit), "{unit} not enabled:\n{wants}");
    }
    assert!(
        ostree(repo, &["ls", &c1, "/usr/etc/systemd/system/swap.target"]).contains("-> /dev/null")
    );
    let version: serde_json::Value =
        serde_json::from_str(&cat("/usr/lib/nodeimg/version")).unwrap();
    assert_eq!(
        version["recipe-digest"],
        first.manifest.recipe.digest.to_string()
    );

    // Output directory: manifest and SBOM.
    let manifest: Manifest =
        serde_json::from_str(&fs::read_to_string(first.output_dir.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest.commit.checksum, c1);
    assert_eq!(manifest.packages.len(), 3);
    assert_eq!(manifest.artifacts[0].name, "kubelet");
    let stage_names: Vec<&str> = manifest.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        stage_names,
        [
            "resolve",
            "fetch",
            "rootfs",
            "customize",
            "ostreeify",
            "commit",
            "publish"
        ]
    );
    let sbom: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(first.output_dir.join("sbom.spdx.json")).unwrap())
            .unwrap();
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");

    // Second build, same input: a cache hit, no new commit.
    let second = build(&opts).unwrap();
    assert_eq!(second.manifest.commit.checksum, c1);
    assert!(second.manifest.commit.reused);
    assert_eq!(ostree(repo, &["rev-parse", REF]), c1);
    assert_eq!(ostree(repo, &["log", REF]).matches("commit ").count(), 1);
    let stage_names: Vec<&str> = second
        .manifest
        .stages
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(stage_names, ["resolve", "fetch", "commit"]);

    // The same input in a fresh repository with a fresh cache gives the same checksum.
    let again = build(&fx.options(&recipe, "repo2", "cache2")).unwrap();
    assert_eq!(again.manifest.commit.checksum, c1);

    // One sysctl changed: rootfs from the cache, a new commit on top of the first.
    let recipe = fx.write_recipe(524288, "");
    let third = build(&fx.options(&recipe, "repo", "cache")).unwrap();
    let c3 = third.manifest.commit.checksum.clone();
    assert_ne!(c3, c1);
    assert_eq!(third.manifest.commit.parent.as_deref(), Some(c1.as_str()));
    assert_eq!(ostree(repo, &["rev-parse", &format!("{REF}^")]), c1);
    let rootfs = third
        .manifest
        .stages
        .iter()
        .find(|s| s.name == "rootfs")
        .unwrap();
    assert!(rootfs.cached, "the rootfs must come from the cache");
    assert!(
        ostree(repo, &["cat", &c3, "/usr/etc/sysctl.d/90-nodeimg.conf"])
            .contains("vm.max_map_count = 524288")
    );

    // Back to the first sysctl: the first tree is committed again on top of the third,
    // without customize or ostreeify.
    let recipe = fx.write_recipe(262144, "");
    let fourth = build(&fx.options(&recipe, "repo", "cache")).unwrap();
    let c4 = fourth.manifest.commit.checksum.clone();
    assert_eq!(fourth.manifest.commit.parent.as_deref(), Some(c3.as_str()));
    assert_eq!(ostree(repo, &["diff", &c1, &c4]), "");
    let stage_names: Vec<&str> = fourth
        .manifest
        .stages
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(stage_names, ["resolve", "fetch", "commit", "publish"]);

    // inspect reads it back.
    let info = nodeimg_builder::commit::inspect(repo, Some(REF)).unwrap();
    assert_eq!(info.checksum, c4);
    assert_eq!(info.parent.as_deref(), Some(c3.as_str()));
    assert_eq!(info.version.as_deref(), Some("1.0.0"));
    assert_eq!(info.package_count, 3);
    assert!(info.content_size > 0 && info.file_count > 10);
}

#[test]
fn failed_build_leaves_ref_and_cache_clean() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let fx = Fixture::new();
    let recipe = fx.write_recipe(1, "");
    let opts = fx.options(&recipe, "repo", "cache");
    let c1 = build(&opts).unwrap().manifest.commit.checksum;

    // A user in a group the image does not have: customize fails after the copy.
    let text = fs::read_to_string(&recipe)
        .unwrap()
        .replace("groups = [\"sudo\"]", "groups = [\"docker\"]");
    fs::write(&recipe, text).unwrap();
    let err = format!("{:#}", build(&opts).unwrap_err());
    assert!(err.contains("group `docker` does not exist"), "{err}");
    assert_eq!(
        ostree(&opts.repo, &["rev-parse", REF]),
        c1,
        "the ref must not move"
    );
    let tmp = opts.cache_dir.as_ref().unwrap().join("tmp");
    assert_eq!(
        fs::read_dir(&tmp).unwrap().count(),
        0,
        "work trees must be removed"
    );
    let leftovers: Vec<_> = fs::read_dir(fx.path().join("images"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        leftovers,
        ["fixture-node-1.0.0"],
        "no partial output directory"
    );
}
