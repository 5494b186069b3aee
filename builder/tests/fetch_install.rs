//! `install_artifact`: plain files and tar/tar.gz archives placed into a root tree, and
//! archives that try to escape their destination refused before anything is written.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nodeimg_builder::fetch::{install_artifact, Fetched};
use nodeimg_builder::recipe::schema::{ArchiveKind, Artifact, Mode};
use nodeimg_common::digest::Sha256Hex;

/// A cache file plus the matching `Fetched` and `Artifact`.
struct Case {
    _dir: tempfile::TempDir,
    fetched: Fetched,
    artifact: Artifact,
}

fn case(bytes: &[u8], dest: &str, unpack: Option<ArchiveKind>, strip: u32, mode: u32) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let sha = Sha256Hex::of_bytes(bytes);
    let path = dir.path().join(sha.as_str());
    fs::write(&path, bytes).unwrap();
    Case {
        fetched: Fetched {
            name: "a".into(),
            sha256: sha.clone(),
            path,
            size: bytes.len() as u64,
            from_cache: true,
            source: "test".into(),
        },
        artifact: Artifact {
            name: "a".parse().unwrap(),
            url: "https://example.invalid/a".parse().unwrap(),
            sha256: sha,
            dest: dest.parse().unwrap(),
            mode: Mode(mode),
            unpack,
            strip_components: strip,
        },
        _dir: dir,
    }
}

impl Case {
    fn install(&self, root: &Path) -> anyhow::Result<()> {
        install_artifact(&self.fetched, &self.artifact, root)
    }
}

/// Raw tar entries: the `tar` crate's builder refuses `..` and absolute names, and these
/// tests need exactly those, so headers are filled in by hand.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
}

fn tar_bytes(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, data, link): (&str, &[u8], Option<&str>) = match e {
            E::Dir(n) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (n, &[], None)
            }
            E::File(n, d, m) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*m);
                (n, d, None)
            }
            E::Symlink(n, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                (n, &[], Some(t))
            }
            E::HardLink(n, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                (n, &[], Some(t))
            }
        };
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(t) = link {
            old.linkname[..t.len()].copy_from_slice(t.as_bytes());
        }
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Every path under `dir`, relative, sorted; directories end with `/`, symlinks show their
/// target.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                out.push(format!("{rel} -> {}", fs::read_link(&p).unwrap().display()));
            } else if m.is_dir() {
                out.push(format!("{rel}/"));
                walk(base, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn plain_file_gets_dest_and_mode() {
    let root = tempfile::tempdir().unwrap();
    let c = case(b"#!/bin/sh\n", "/usr/local/bin/kubelet", None, 0, 0o750);
    c.install(root.path()).unwrap();
    let p = root.path().join("usr/local/bin/kubelet");
    assert_eq!(fs::read(&p).unwrap(), b"#!/bin/sh\n");
    assert_eq!(mode_of(&p), 0o750);
    // Reinstalling replaces the file, leaving no temporary files next to it.
    c.install(root.path()).unwrap();
    assert_eq!(tree(&root.path().join("usr/local/bin")), ["kubelet"]);
}

#[test]
fn plain_file_follows_in_root_symlinks_but_not_out_of_root_ones() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir_all(r.join("usr/bin")).unwrap();
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).unwrap();
    case(b"x", "/bin/crictl", None, 0, 0o755)
        .install(r)
        .unwrap();
    assert_eq!(fs::read(r.join("usr/bin/crictl")).unwrap(), b"x");

    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), r.join("opt")).unwrap();
    let err = case(b"x", "/opt/cni/bin/bridge", None, 0, 0o755)
        .install(r)
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("outside the root"), "{msg}");
    assert!(tree(outside.path()).is_empty(), "nothing written outside");
}

#[test]
fn wrong_fetched_file_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut c = case(b"x", "/usr/bin/x", None, 0, 0o755);
    c.fetched.sha256 = Sha256Hex::of_bytes(b"y");
    assert!(c.install(root.path()).is_err());
    assert!(tree(root.path()).is_empty());
}

#[test]
fn tar_gz_unpacks_with_strip_components() {
    let tgz = gzip(&tar_bytes(&[
        E::Dir("./"),
        E::Dir("./cni-v1.6.0/"),
        E::Dir("./cni-v1.6.0/bin/"),
        E::File("./cni-v1.6.0/bin/bridge", b"bridge", 0o755),
        E::File("./cni-v1.6.0/bin/loopback", b"loop", 0o700),
        E::Symlink("./cni-v1.6.0/bin/lo", "loopback"),
        E::HardLink("./cni-v1.6.0/bin/bridge2", "./cni-v1.6.0/bin/bridge"),
        E::File("./cni-v1.6.0/LICENSE", b"Apache", 0o644),
    ]));
    let root = tempfile::tempdir().unwrap();
    let c = case(&tgz, "/opt/cni", Some(ArchiveKind::TarGz), 1, 0o755);
    c.install(root.path()).unwrap();
    let dest = root.path().join("opt/cni");
    assert_eq!(
        tree(&dest),
        [
            "LICENSE",
            "bin/",
            "bin/bridge",
            "bin/bridge2",
            "bin/lo -> loopback",
            "bin/loopback"
        ]
    );
    assert_eq!(fs::read(dest.join("bin/bridge")).unwrap(), b"bridge");
    assert_eq!(mode_of(&dest.join("bin/bridge")), 0o755);
    assert_eq!(mode_of(&dest.join("bin/loopback")), 0o700);
    assert_eq!(
        fs::metadata(dest.join("bin/bridge")).unwrap().ino(),
        fs::metadata(dest.join("bin/bridge2")).unwrap().ino(),
        "hard link preserved"
    );
    assert_eq!(
        fs::metadata(dest.join("LICENSE")).unwrap().mtime(),
        1_700_000_000
    );
}

#[test]
fn plain_tar_unpacks_and_merges_into_existing_dir() {
    let tar = tar_bytes(&[E::File("crictl", b"crictl", 0o755)]);
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("usr/local/bin");
    fs::create_dir_all(&bin).unwrap();
    fs::write(bin.join("already-there"), b"1").unwrap();
    case(&tar, "/usr/local/bin", Some(ArchiveKind::Tar), 0, 0o755)
        .install(root.path())
        .unwrap();
    assert_eq!(tree(&bin), ["already-there", "crictl"]);
}

#[test]
fn strip_components_drops_shallow_entries() {
    let tar = tar_bytes(&[
        E::File("README", b"top-level, stripped away", 0o644),
        E::File("kubernetes/node/bin/kubelet", b"kubelet", 0o755),
    ]);
    let root = tempfile::tempdir().unwrap();
    case(&tar, "/usr/bin", Some(ArchiveKind::Tar), 3, 0o755)
        .install(root.path())
        .unwrap();
    assert_eq!(tree(&root.path().join("usr/bin")), ["kubelet"]);
}

/// Archives that must be refused, with a phrase the error has to contain. None of them may
/// leave anything behind, inside or outside the root.
#[test]
fn escaping_archives_are_refused_before_writing() {
    let outside = tempfile::tempdir().unwrap();
    let out_abs = outside.path().display().to_string();
    let evil_abs = format!("{out_abs}/evil");
    let cases: Vec<(&str, Vec<u8>, u32, &str)> = vec![
        (
            "dot-dot",
            tar_bytes(&[
                E::File("ok", b"first entry is fine", 0o644),
                E::File("../../evil", b"x", 0o644),
            ]),
            0,
            "contains `..`",
        ),
        (
            "dot-dot after strip",
            tar_bytes(&[E::File("pkg/../../evil", b"x", 0o644)]),
            1,
            "contains `..`",
        ),
        (
            "absolute",
            tar_bytes(&[E::File(&evil_abs, b"x", 0o644)]),
            0,
            "absolute path",
        ),
        (
            "through own symlink",
            tar_bytes(&[
                E::Symlink("link", &out_abs),
                E::File("link/evil", b"x", 0o644),
            ]),
            0,
            "through the symlink `link`",
        ),
        (
            "directory over own symlink",
            tar_bytes(&[E::Symlink("link", &out_abs), E::Dir("link/")]),
            0,
            "replaces a symlink",
        ),
        (
            "hard link outside",
            tar_bytes(&[E::HardLink("passwd", "../../../etc/passwd")]),
            0,
            "contains `..`",
        ),
        (
            "hard link to something not in the archive",
            tar_bytes(&[E::HardLink("passwd", "etc/passwd")]),
            0,
            "not an earlier regular file",
        ),
    ];
    for (what, tar, strip, phrase) in cases {
        let root = tempfile::tempdir().unwrap();
        let c = case(&tar, "/opt/x", Some(ArchiveKind::Tar), strip, 0o755);
        let err = c.install(root.path()).expect_err(what);
        let msg = format!("{err:#}");
        assert!(msg.contains(phrase), "{what}: {msg}");
        assert!(msg.contains("refusing to unpack"), "{what}: {msg}");
        assert!(tree(root.path()).is_empty(), "{what}: root untouched");
        assert!(tree(outside.path()).is_empty(), "{what}: outside untouched");
    }
}

#[test]
fn existing_symlink_in_the_tree_is_not_written_through() {
    let outside = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let dest = root.path().join("opt/x");
    fs::create_dir_all(&dest).unwrap();
    // Inside the root, but pointing outside: a file in the archive under `lib/` must not
    // follow it.
    std::os::unix::fs::symlink(outside.path(), dest.join("lib")).unwrap();
    let tar = tar_bytes(&[E::File("lib/evil", b"x", 0o644)]);
    let err = case(&tar, "/opt/x", Some(ArchiveKind::Tar), 0, 0o755)
        .install(root.path())
        .unwrap_err();
    assert!(format!("{err:#}").contains("symlink"), "{err:#}");
    assert!(tree(outside.path()).is_empty());
}

#[test]
fn corrupt_gzip_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    let c = case(
        b"not gzip at all",
        "/opt/x",
        Some(ArchiveKind::TarGz),
        0,
        0o755,
    );
    let err = c.install(root.path()).unwrap_err();
    assert!(format!("{err:#}").contains("refusing to unpack"), "{err:#}");
    assert!(tree(root.path()).is_empty());
}
