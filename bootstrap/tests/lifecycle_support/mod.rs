//! Fixtures of the lifecycle tests: a real OSTree build repository and a staged sysroot made
//! with the `ostree` CLI (the way the builder's deploy stage lays them out), a static HTTP
//! server for an archive repository, a clock that advances instead of sleeping, and a
//! stand-in for `systemctl is-active`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nodeboot::firstboot::Clock;
use nodeboot::lifecycle::ostree_ops::{self, BootedSelector, SysrootSpec};
use nodeimg_common::Cmd;
use time::OffsetDateTime;

pub const OSNAME: &str = "debian";
pub const BRANCH: &str = "debian/test/x86_64";
pub const REMOTE: &str = "nodeimg";
pub const KVER: &str = "6.1.0-test-amd64";

fn ostree(args: &[&str]) -> String {
    Cmd::new("ostree")
        .args(args)
        .stdout_string()
        .unwrap_or_else(|e| panic!("ostree {args:?}: {e}"))
}

/// A build repository (archive mode, what `nodeimg build --repo` publishes) and a staged
/// sysroot with its first commit deployed, following `nodeimg:debian/test/x86_64`.
#[derive(Debug)]
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    pub sysroot: PathBuf,
    pub v1: String,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let sysroot = dir.path().join("sysroot");
        ostree(&[
            "init",
            "--mode=archive",
            &format!("--repo={}", repo.display()),
        ]);
        let mut fx = Fixture {
            dir,
            repo,
            sysroot,
            v1: String::new(),
        };
        fx.v1 = fx.publish("1", "kernel-a");
        let s = fx.sysroot.display().to_string();
        std::fs::create_dir(&fx.sysroot).unwrap();
        ostree(&["admin", "init-fs", "--modern", &s]);
        ostree(&["admin", "os-init", &format!("--sysroot={s}"), OSNAME]);
        let srepo = format!("--repo={s}/ostree/repo");
        // Never run the build host's bootloader tooling (reference §6).
        ostree(&[&srepo, "config", "set", "sysroot.bootloader", "none"]);
        ostree(&[
            &srepo,
            "remote",
            "add",
            "--no-gpg-verify",
            REMOTE,
            &format!("file://{}", fx.repo.display()),
        ]);
        ostree(&[&srepo, "pull", REMOTE, BRANCH]);
        ostree(&[
            "admin",
            "deploy",
            &format!("--sysroot={s}"),
            &format!("--os={OSNAME}"),
            "--karg=root=LABEL=root",
            "--karg=rw",
            "--karg=console=ttyS0,115200",
            &format!("{REMOTE}:{BRANCH}"),
        ]);
        fx
    }

    /// Commit a new version on the branch (parent = the previous head). `kernel` is the
    /// kernel image's content: equal contents share one boot directory, as a userspace-only
    /// update does.
    pub fn publish(&self, version: &str, kernel: &str) -> String {
        let tree = self.dir.path().join(format!("tree-{version}"));
        let modules = tree.join("usr/lib/modules").join(KVER);
        std::fs::create_dir_all(&modules).unwrap();
        std::fs::write(modules.join("vmlinuz"), kernel).unwrap();
        std::fs::write(
            modules.join("initramfs.img"),
            format!("initramfs of {kernel}"),
        )
        .unwrap();
        std::fs::create_dir_all(tree.join("usr/etc")).unwrap();
        std::fs::write(tree.join("usr/etc/hostname"), "node\n").unwrap();
        // libostree names the boot entry after it.
        std::fs::write(
            tree.join("usr/etc/os-release"),
            format!("NAME=\"nodeimg test\"\nID=debian\nVERSION_ID={version}\n"),
        )
        .unwrap();
        std::fs::write(
            tree.join("usr/etc/nodeimg-release"),
            format!("VERSION={version}\n"),
        )
        .unwrap();
        std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
        std::fs::write(tree.join("usr/bin/nodeimg-version"), version).unwrap();
        ostree(&[
            &format!("--repo={}", self.repo.display()),
            "commit",
            &format!("--branch={BRANCH}"),
            &format!("--tree=dir={}", tree.display()),
            &format!("--add-metadata-string=version={version}"),
            &format!("--subject=v{version}"),
        ])
    }

    pub fn sysroot_repo(&self) -> String {
        format!("--repo={}/ostree/repo", self.sysroot.display())
    }

    /// The `options` of the BLS entry GRUB shows at `position` (0 = default): entries sorted
    /// by `version`, highest first (reference §7).
    pub fn entry_options(&self, position: usize) -> String {
        let dir = self.sysroot.join("boot/loader/entries");
        let mut entries: Vec<(u64, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
                let field = |k: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(&format!("{k} ")))
                        .unwrap()
                        .to_owned()
                };
                (field("version").parse().unwrap(), field("options"))
            })
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.0));
        entries[position].1.clone()
    }

    /// What booting menu entry `position` would run, resolved as the initramfs does.
    pub fn boot_entry(&self, position: usize) -> BootedSelector {
        ostree_ops::deployment_for_karg(&self.sysroot, &self.entry_options(position)).unwrap()
    }

    pub fn spec(&self, booted: BootedSelector) -> SysrootSpec {
        SysrootSpec {
            path: self.sysroot.clone(),
            booted,
        }
    }

    /// `checksum.serial` of a selector, for the CLI's `--booted-deployment`.
    pub fn selector_arg(sel: &BootedSelector) -> String {
        match sel {
            BootedSelector::Deployment { checksum, serial } => format!("{checksum}.{serial}"),
            BootedSelector::Running => panic!("not a staged selector"),
        }
    }

    /// Checksums of the deployments in order, from the `ostree` CLI (the oracle).
    pub fn cli_order(&self) -> Vec<String> {
        let out = ostree(&[
            "admin",
            "status",
            &format!("--sysroot={}", self.sysroot.display()),
        ]);
        out.lines()
            .filter_map(|l| {
                let l = l.trim_start_matches(['*', ' ']);
                let (os, rest) = l.split_once(' ')?;
                (os == OSNAME).then(|| rest.split('.').next().unwrap().to_owned())
            })
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // libostree makes deployment roots immutable; the temp dir cannot go otherwise.
        let deploy = self
            .sysroot
            .join("ostree/deploy")
            .join(OSNAME)
            .join("deploy");
        if let Ok(entries) = std::fs::read_dir(&deploy) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    let _ = Cmd::new("chattr").arg("-i").arg(e.path()).run();
                }
            }
        }
    }
}

/// Serves a directory over HTTP on 127.0.0.1 (what `nodeimg` users put behind any static web
/// server) and records the request paths.
pub struct StaticServer {
    pub url: String,
    pub requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StaticServer {
    pub fn start(root: &Path) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}/", server.server_addr().to_ip().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (srv, reqs, stop2, root) = (
            server.clone(),
            requests.clone(),
            stop.clone(),
            root.to_path_buf(),
        );
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok(Some(req)) = srv.recv_timeout(Duration::from_millis(50)) else {
                    continue;
                };
                let path = req.url().split('?').next().unwrap_or("").to_owned();
                reqs.lock().unwrap().push(path.clone());
                let file = root.join(path.trim_start_matches('/'));
                let _ = if !path.contains("..") && file.is_file() {
                    req.respond(tiny_http::Response::from_file(
                        std::fs::File::open(&file).unwrap(),
                    ))
                } else {
                    req.respond(tiny_http::Response::empty(404))
                };
            }
        });
        StaticServer {
            url,
            requests,
            stop,
            server,
            thread: Some(thread),
        }
    }
}

impl std::fmt::Debug for StaticServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticServer")
            .field("url", &self.url)
            .finish()
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Time that passes only when the code under test sleeps.
#[derive(Debug)]
pub struct TestClock(Mutex<OffsetDateTime>);

impl TestClock {
    pub fn new() -> Arc<Self> {
        Arc::new(TestClock(Mutex::new(
            OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap(),
        )))
    }
}

impl Clock for TestClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap()
    }
    fn sleep(&self, d: Duration) {
        *self.0.lock().unwrap() += d;
    }
}

/// A stand-in for `systemctl is-active UNIT...` (systemd is not PID 1 on the build host):
/// prints each unit's state, read from `<dir>/<unit>` (default `active`), and exits 0 only
/// when all are active, 3 otherwise, as systemctl does.
pub fn systemctl_double(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("systemctl");
    let script = format!(
        "#!/bin/sh\n\
         # Stands in for `systemctl is-active` in nodeboot's lifecycle tests.\n\
         [ \"$1\" = is-active ] || {{ echo \"unsupported: $*\" >&2; exit 1; }}\n\
         shift\n\
         rc=0\n\
         for u in \"$@\"; do\n\
         \x20 s=active\n\
         \x20 [ -f '{dir}/'\"$u\" ] && s=$(cat '{dir}/'\"$u\")\n\
         \x20 echo \"$s\"\n\
         \x20 [ \"$s\" = active ] || rc=3\n\
         done\n\
         exit $rc\n",
        dir = dir.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The kubelet double (`nodeimg-tests` binary `kubelet-double`), built on first use.
pub fn kubelet_double() -> PathBuf {
    nodeimg_tests::bins::built("kubelet-double")
}

/// A running kubelet double; killed on drop.
#[derive(Debug)]
pub struct Kubelet {
    pub child: std::process::Child,
    pub healthz: String,
}

impl Kubelet {
    /// Start it on an ephemeral port with `fault_file` as its fault switch; extra args are
    /// real kubelet flags it must accept.
    pub fn start(fault_file: &Path, args: &[&str]) -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(kubelet_double())
            .args(args)
            .env("KUBELET_DOUBLE_LISTEN", "127.0.0.1:0")
            .env("KUBELET_DOUBLE_FAULT_FILE", fault_file)
            .env_remove("KUBELET_DOUBLE_FAULT")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let healthz = line
            .trim()
            .strip_prefix("kubelet-double: serving ")
            .unwrap_or_else(|| panic!("unexpected first line `{line}`"))
            .to_owned();
        Kubelet { child, healthz }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
