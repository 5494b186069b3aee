//! The commit stage through the bare stage repository gives the very commit a direct
//! archive-mode commit gives (same checksum, same objects), and the second commit of a
//! changed tree only adds the changed objects to the archive repository.

mod build_support;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use build_support::{ostree, skip_reason};
use nodeimg_builder::commit::{self, CommitMetadata, CommitSource, CommitSpec};
use nodeimg_builder::compose::Package;

const REF: &str = "nodeimg/fast/x86_64";

fn metadata() -> CommitMetadata {
    CommitMetadata {
        version: "1.0.0".into(),
        image: "fast".into(),
        recipe_digest: "d".repeat(64),
        kubernetes_version: "1.34.3".into(),
        kernel_version: "6.1.0-test-amd64".into(),
        packages: vec![Package {
            name: "systemd".into(),
            version: "252.39-1~deb12u1".into(),
            arch: "amd64".into(),
        }],
    }
}

/// A tree with what a real rootfs has: owners other than root, odd modes, a setuid file,
/// symlinks, an xattr (file capability) and an empty directory.
fn make_tree(dir: &Path, sysctl: &str) {
    let w = |rel: &str, body: &str, mode: u32| {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, body).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    w("usr/bin/tool", "#!/bin/sh\necho tool\n", 0o755);
    w("usr/bin/su", "setuid stand-in\n", 0o4755);
    w("usr/etc/shadow", "root:*:19000:0:99999:7:::\n", 0o640);
    w("usr/etc/sysctl.d/90-nodeimg.conf", sysctl, 0o644);
    for i in 0..50 {
        w(
            &format!("usr/share/doc/pkg{i}/README"),
            &format!("package {i}\n").repeat(100),
            0o644,
        );
    }
    nix::unistd::chown(
        &dir.join("usr/etc/shadow"),
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(42)),
    )
    .unwrap();
    fs::create_dir_all(dir.join("usr/lib/empty")).unwrap();
    symlink("usr/bin", dir.join("bin")).unwrap();
    // A file capability, as iputils' ping has: an xattr the commit must carry.
    nodeimg_common::Cmd::new("setcap")
        .arg("cap_net_raw+ep")
        .arg(dir.join("usr/bin/tool"))
        .run()
        .unwrap();
}

fn spec<'a>(repo: &'a Path, meta: &'a CommitMetadata, stage: Option<&'a Path>) -> CommitSpec<'a> {
    CommitSpec {
        repo,
        ostree_ref: REF,
        subject: "fast 1.0.0".into(),
        metadata: meta,
        timestamp: 1_700_000_000,
        sign_key: None,
        gpg: None,
        stage_repo: stage,
    }
}

fn objects(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in fs::read_dir(repo.join("objects")).unwrap() {
        for f in fs::read_dir(d.unwrap().path()).unwrap() {
            out.push(f.unwrap().path().strip_prefix(repo).unwrap().to_owned());
        }
    }
    out.sort();
    out
}

#[test]
fn staged_commit_equals_direct_commit_and_adds_only_new_objects() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (direct, archive, stage) = (
        d.path().join("direct"),
        d.path().join("archive"),
        d.path().join("cache/repo"),
    );
    let meta = metadata();

    let tree1 = d.path().join("tree1");
    make_tree(&tree1, "vm.max_map_count = 1\n");
    let a1 = commit::commit(&spec(&direct, &meta, None), CommitSource::Tree(&tree1)).unwrap();
    let b1 = commit::commit(
        &spec(&archive, &meta, Some(&stage)),
        CommitSource::Tree(&tree1),
    )
    .unwrap();
    assert_eq!(a1, b1, "the staged commit must be the direct one");
    assert_eq!(objects(&direct), objects(&archive));
    assert_eq!(ostree(&archive, &["rev-parse", REF]), b1.checksum);
    assert_eq!(ostree(&stage, &["rev-parse", REF]), b1.checksum);
    assert!(fs::read_to_string(stage.join("config"))
        .unwrap()
        .contains("mode=bare\n"));
    ostree(&archive, &["fsck"]);
    let ls = ostree(
        &archive,
        &["ls", &b1.checksum, "/usr/bin/su", "/usr/etc/shadow"],
    );
    assert!(ls.contains("-04755 0 0"), "{ls}");
    assert!(ls.contains("-00640 0 42"), "{ls}");
    let xattrs = ostree(&archive, &["ls", "-X", &b1.checksum, "/usr/bin/tool"]);
    assert!(xattrs.contains("security.capability"), "{xattrs}");

    // One file changed: same checksum both ways, a parent chain, and the archive repo gains
    // only the new file, the dirtrees on its path and the commit.
    let tree2 = d.path().join("tree2");
    make_tree(&tree2, "vm.max_map_count = 2\n");
    let before = objects(&archive);
    let a2 = commit::commit(&spec(&direct, &meta, None), CommitSource::Tree(&tree2)).unwrap();
    let b2 = commit::commit(
        &spec(&archive, &meta, Some(&stage)),
        CommitSource::Tree(&tree2),
    )
    .unwrap();
    assert_eq!(a2, b2);
    assert_eq!(b2.parent.as_deref(), Some(b1.checksum.as_str()));
    let after = objects(&archive);
    let added: Vec<_> = after.iter().filter(|o| !before.contains(o)).collect();
    let kinds = |ext: &str| {
        added
            .iter()
            .filter(|o| o.extension().is_some_and(|e| e == ext))
            .count()
    };
    // /, /usr, /usr/etc, /usr/etc/sysctl.d: four new dirtrees; one new file.
    assert_eq!(
        (kinds("commit"), kinds("dirtree"), kinds("filez")),
        (1, 4, 1),
        "{added:?}"
    );
    assert_eq!(added.len(), 6, "{added:?}");
    ostree(&archive, &["fsck"]);

    // Re-committing an existing root: a stage repo that lacks it (here: pruned to the current
    // ref) falls back to writing the commit object straight into the archive repo.
    commit::prune_stage_repo(&stage).unwrap();
    let again = commit::commit(
        &spec(&archive, &meta, Some(&stage)),
        CommitSource::Existing {
            root_contents: &b1.root_contents,
            root_metadata: &b1.root_metadata,
        },
    )
    .unwrap();
    let direct_again = commit::commit(
        &spec(&direct, &meta, None),
        CommitSource::Existing {
            root_contents: &a1.root_contents,
            root_metadata: &a1.root_metadata,
        },
    )
    .unwrap();
    assert_eq!(again, direct_again);
    assert_eq!(again.parent.as_deref(), Some(b2.checksum.as_str()));
    assert_eq!(
        ostree(&archive, &["diff", &b1.checksum, &again.checksum]),
        ""
    );
    // The stage repo only holds the current tree of the ref (b2's: `again` went past it).
    assert_eq!(ostree(&stage, &["rev-parse", REF]), b2.checksum);
    let stage_commits = objects(&stage)
        .iter()
        .filter(|o| o.extension().is_some_and(|e| e == "commit"))
        .count();
    assert_eq!(stage_commits, 1);
}
