//! Shared setup of the `build_*` integration tests: a tiny `kind = "tar"` rootfs made from
//! `tests/fixtures/mini-rootfs` plus a fake kernel and a placeholder initramfs, stand-ins for
//! the kubelet artifact and the nodeboot binary, and a recipe using them.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use nodeimg_builder::build::{BuildOptions, InitramfsCheck};
use nodeimg_common::digest::Sha256Hex;
use nodeimg_common::Cmd;

pub const KVER: &str = "6.1.0-test-amd64";
pub const REF: &str = "nodeimg/fixture-node/x86_64";

/// None when the tests can run; otherwise why not (printed by the caller).
pub fn skip_reason() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root: the build stages create files owned by other users");
    }
    None
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mini-rootfs")
}

fn header(kind: tar::EntryType, mode: u32, gid: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(gid);
    h.set_mtime(0);
    h.set_size(size);
    h
}

/// Write the fixture rootfs as a gzip tarball owned by root, with fixed mtimes (the tarball
/// is byte-identical on every run, so its cache key is stable).
pub fn write_rootfs_tar(dest: &Path) {
    let gz =
        flate2::write::GzEncoder::new(fs::File::create(dest).unwrap(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let dir = |b: &mut tar::Builder<_>, path: &str, mode: u32| {
        let mut h = header(tar::EntryType::Directory, mode, 0, 0);
        b.append_data(&mut h, path, std::io::empty()).unwrap();
    };
    for (d, mode) in [
        ("boot", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("media", 0o755),
        ("mnt", 0o755),
        ("opt", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("run", 0o755),
        ("srv", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("usr/lib", 0o755),
        ("usr/lib/modules", 0o755),
        (&format!("usr/lib/modules/{KVER}"), 0o755),
        ("usr/lib/systemd", 0o755),
        ("usr/lib/systemd/system", 0o755),
        ("usr/local", 0o755),
        ("usr/local/bin", 0o755),
        ("var", 0o755),
        ("var/cache", 0o755),
        ("var/cache/apt", 0o755),
        ("var/lib", 0o755),
        ("var/lib/dpkg", 0o755),
        ("var/lib/fixture", 0o755),
        ("var/log", 0o755),
        ("var/tmp", 0o1777),
    ] {
        dir(&mut b, d, mode);
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("var/run", "/run"),
    ] {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
        b.append_link(&mut h, link, target).unwrap();
    }
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            format!("boot/vmlinuz-{KVER}"),
            b"fake kernel for tests\n".to_vec(),
        ),
        (format!("boot/config-{KVER}"), b"CONFIG_FAKE=y\n".to_vec()),
        (
            format!("usr/lib/modules/{KVER}/initramfs.img"),
            b"placeholder initramfs\n".to_vec(),
        ),
        (
            "var/cache/apt/pkgcache.bin".to_owned(),
            b"apt cache\n".to_vec(),
        ),
    ];
    let root = fixture_dir();
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    files.sort();
    for (path, data) in files {
        let (mode, gid) = match path.as_str() {
            "etc/shadow" | "etc/gshadow" => (0o640, 42),
            p if p.starts_with("usr/bin/") => (0o755, 0),
            _ => (0o644, 0),
        };
        let mut h = header(tar::EntryType::Regular, mode, gid, data.len() as u64);
        b.append_data(&mut h, &path, &data[..]).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap();
}

/// A work directory with the tarball, the stand-ins and a recipe whose `[os]` table gets
/// `os_extra` appended.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        write_rootfs_tar(&dir.path().join("rootfs.tar.gz"));
        fs::write(
            dir.path().join("kubelet"),
            "#!/bin/sh\necho kubelet stand-in\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("nodeboot"),
            "#!/bin/sh\necho nodeboot stand-in\n",
        )
        .unwrap();
        Fixture { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write `node.toml` with the given sysctl value and extra `[os]` lines.
    pub fn write_recipe(&self, max_map_count: u32, os_extra: &str) -> PathBuf {
        let kubelet = self.path().join("kubelet");
        let sha = Sha256Hex::of_file(&kubelet).unwrap();
        let text = format!(
            r#"version = 1
[image]
name = "fixture-node"
version = "1.0.0"

[base]
kind = "tar"
path = "rootfs.tar.gz"

[kubernetes]
version = "1.34.3"

[[artifact]]
name = "kubelet"
url = "file://{kubelet}"
sha256 = "{sha}"
dest = "/usr/bin/kubelet"

[os]
hostname = "fixture"
{os_extra}

[os.sysctls]
"vm.max_map_count" = {max_map_count}

[[os.user]]
name = "ops"
groups = ["sudo"]
ssh-authorized-keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly ops@example"]

[os.units]
enable = ["containerd.service"]

[nodeboot]
binary = "nodeboot"
"#,
            kubelet = kubelet.display()
        );
        let p = self.path().join("node.toml");
        fs::write(&p, text).unwrap();
        p
    }

    /// Build options with everything under the fixture directory; `repo` and `cache` are
    /// names of subdirectories so tests can make independent builds.
    pub fn options(&self, recipe: &Path, repo: &str, cache: &str) -> BuildOptions {
        let mut o = BuildOptions::new(recipe);
        o.repo = self.path().join(repo);
        o.output = self.path().join("images");
        o.cache_dir = Some(self.path().join(cache));
        o.offline = true;
        o.initramfs_check = InitramfsCheck::ExistsOnly;
        // The commit tests need no disk images; build_images asks for them explicitly.
        o.formats = Some(Vec::new());
        o
    }
}

/// Run the real `ostree` CLI against `repo`.
pub fn ostree(repo: &Path, args: &[&str]) -> String {
    Cmd::new("ostree")
        .arg(format!("--repo={}", repo.display()))
        .args(args)
        .stdout_string()
        .unwrap()
}

/// A minimal static file server over `root` (what a fleet's HTTP server is).
pub fn serve(root: PathBuf) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let rel = req.url().trim_start_matches('/').to_owned();
            let path = root.join(&rel);
            let resp = if !rel.contains("..") && path.is_file() {
                tiny_http::Response::from_data(fs::read(&path).unwrap()).boxed()
            } else {
                tiny_http::Response::empty(404).boxed()
            };
            let _ = req.respond(resp);
        }
    });
    format!("http://127.0.0.1:{port}")
}
