//! End to end (run by `ci/e2e-pxe`, ignored by `cargo test`): a bare-metal network install in
//! qemu, from what `nodeimg build --format raw,pxe` made of `tests/recipes/e2e-pxe.toml`.
//!
//! Per firmware (SeaBIOS, OVMF), on an empty 4 GiB disk:
//! 1. PXE: qemu's user-mode DHCP names `boot.ipxe` and its TFTP server serves the build's
//!    `pxe/` directory; the NIC's iPXE ROM runs the script, which loads `pxe/vmlinuz` and
//!    `pxe/installer.img` over HTTP from this test's server (127.0.0.1, reached by the guest
//!    at 10.0.2.100:8080 through a qemu guestfwd, the `--http-base` of the build);
//! 2. the installer fetches and validates the node config named by `nodeboot.config=`
//!    (`--config-url`), streams the raw image, verifies its sha256, grows the root, places the
//!    config and reboots (qemu runs with `-no-reboot`: the reboot ends the VM);
//! 3. the disk boots on its own (no NIC at all, so nothing else can boot it): GRUB, the
//!    deployment of the built commit, nodeboot's first boot with the placed config (`file`
//!    source; its node label reaches the kubelet flags), no failed unit.
//!
//! Then once, on a fresh disk: the image is served with one byte flipped half way through:
//! the installer must print one `nodeboot install: FAILED:` line naming the sha256 mismatch,
//! and the disk must be left without a partition table although the image was written.
//!
//! Every step is asserted from the serial console and the server's request log; timings go
//! to stderr as `E2E-TIMING` lines.
//!
//! Inputs from the environment:
//! - `NODEIMG_E2E_OUTPUT` (required): the build's output directory (`manifest.json`, `pxe/`);
//! - `NODEIMG_E2E_NODE_CONFIG` (default `tests/recipes/e2e-pxe/node.toml`): the config
//!   served at the `--config-url`;
//! - `NODEIMG_E2E_WORKDIR` (default `/var/tmp/nodeimg-e2e-pxe/vm`): disks and serial logs;
//! - `NODEIMG_E2E_FIRMWARE` (default `bios,uefi`), `NODEIMG_E2E_ACCEL` (`tcg` default, `kvm`);
//! - `NODEIMG_E2E_PXE_NEGATIVE=0` skips the corrupted-stream install (~3 min under TCG).

#[path = "support/pxe_http.rs"]
mod pxe_http;

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nodeimg_builder::boot::serial::report_values;
use nodeimg_builder::boot::{AccelChoice, Firmware, NetBoot, UserNet, Vm, VmConfig};
use nodeimg_builder::manifest::Manifest;
use nodeimg_common::digest::Sha256Hex;
use nodeimg_common::Cmd;
use pxe_http::{Fault, PxeHttp};
use regex::Regex;

/// Where the guest reaches this test's HTTP server (the build's `--http-base`).
const GUEST_HTTP_ADDR: &str = "10.0.2.100";
const GUEST_HTTP_PORT: u16 = 8080;
/// URL path of the node config (the build's `--config-url`).
const CONFIG_PATH: &str = "/nodes/pxe-node-1.toml";
const DISK_SIZE: &str = "4G";
/// Ample for TCG on a loaded 2-core host (an install takes ~2 min there).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(1200);
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The build under test.
struct Build {
    dir: PathBuf,
    commit: String,
    raw_name: String,
    raw_sha256: String,
    raw_len: u64,
}

impl Build {
    fn load(dir: &Path) -> Result<Build> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let m: Manifest =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let raw = m
            .outputs
            .iter()
            .find(|o| o.format == "raw")
            .with_context(|| format!("{} has no raw output", dir.display()))?;
        for f in ["pxe/boot.ipxe", "pxe/vmlinuz", "pxe/installer.img"] {
            if !dir.join(f).is_file() {
                bail!("{} has no {f}", dir.display());
            }
        }
        Ok(Build {
            dir: dir.to_path_buf(),
            commit: m.commit.checksum.clone(),
            raw_name: raw.name.clone(),
            raw_sha256: raw.sha256.to_string(),
            raw_len: raw.size,
        })
    }

    fn guest_url(path: &str) -> String {
        format!("http://{GUEST_HTTP_ADDR}:{GUEST_HTTP_PORT}{path}")
    }
}

/// A named host instant in a VM run.
struct Marks {
    start: Instant,
    marks: Vec<(&'static str, Instant, String)>,
}

impl Marks {
    fn new() -> Marks {
        Marks {
            start: Instant::now(),
            marks: Vec::new(),
        }
    }

    /// Wait for `re` on the console, record when, return the matching line.
    fn wait(&mut self, vm: &mut Vm, name: &'static str, re: &str, deadline: Instant) -> String {
        let re = Regex::new(re).expect("a valid marker regex");
        let left = deadline.saturating_duration_since(Instant::now());
        let hit = vm
            .wait_for(&re, left)
            .unwrap_or_else(|e| panic!("waiting for {name}: {e:#}"));
        self.marks.push((name, Instant::now(), hit.line.clone()));
        hit.line
    }

    fn at(&self, name: &str) -> Instant {
        self.marks
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, t, _)| *t)
            .unwrap_or_else(|| panic!("no mark {name}"))
    }

    fn secs(&self, from: Option<&str>, to: &str) -> f64 {
        let a = from.map_or(self.start, |f| self.at(f));
        self.at(to).duration_since(a).as_secs_f64()
    }
}

fn accel() -> AccelChoice {
    match env_or("NODEIMG_E2E_ACCEL", "tcg").as_str() {
        "kvm" => AccelChoice::Kvm,
        "auto" => AccelChoice::Auto,
        _ => AccelChoice::Tcg,
    }
}

/// A fresh empty disk `dir/empty.qcow2` and the path of the overlay that takes the VM's
/// writes (removed if left from an earlier run).
fn fresh_disk(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let empty = dir.join("empty.qcow2");
    Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&empty)
        .arg(DISK_SIZE)
        .run()
        .context("creating the empty target disk")?;
    Ok((empty, dir.join("disk.qcow2")))
}

fn net(server: &PxeHttp) -> UserNet {
    UserNet {
        hostfwd: vec![],
        guestfwd: vec![(GUEST_HTTP_ADDR.to_owned(), GUEST_HTTP_PORT, server.port())],
    }
}

/// The VM that PXE-boots the installer onto `disk` (through `overlay`).
fn installer_vm(
    b: &Build,
    fw: Firmware,
    server: &PxeHttp,
    disk: &Path,
    overlay: &Path,
    log: PathBuf,
) -> Result<Vm> {
    let mut cfg = VmConfig::new(disk);
    cfg.firmware = fw;
    cfg.accel = accel();
    cfg.overlay = Some(overlay.to_path_buf());
    cfg.serial_log = Some(log);
    cfg.network = Some(net(server));
    cfg.net_boot = Some(NetBoot {
        tftp_root: b.dir.join("pxe"),
        bootfile: "boot.ipxe".to_owned(),
    });
    Vm::start(&cfg)
}

fn one<'a>(text: &'a str, prefix: &str) -> &'a str {
    match report_values(text, prefix).as_slice() {
        [v] => v,
        other => panic!(
            "expected one `{prefix}:` line, found {}:\n{}",
            other.len(),
            nodeimg_builder::boot::serial::tail(text, 60)
        ),
    }
}

/// Install with the built PXE material, then boot the disk: the whole path of one machine.
fn install_and_boot(b: &Build, fw: Firmware, server: &PxeHttp, work: &Path, config_sha: &str) {
    let dir = work.join(format!("install-{fw}"));
    let (disk, overlay) = fresh_disk(&dir).unwrap();
    server.clear();

    // --- PXE + install ---
    let mut vm = installer_vm(
        b,
        fw,
        server,
        &disk,
        &overlay,
        dir.join("install.serial.log"),
    )
    .unwrap();
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    let mut m = Marks::new();
    // The kernel prints its command line: what boot.ipxe gave the installer.
    let cmdline = m.wait(
        &mut vm,
        "kernel",
        r"Command line: .*nodeboot\.install\.",
        deadline,
    );
    m.wait(
        &mut vm,
        "install-start",
        r"nodeboot install: writing ",
        deadline,
    );
    let verified = m.wait(
        &mut vm,
        "verified",
        r"nodeboot install: sha256 [0-9a-f]{64} verified",
        deadline,
    );
    m.wait(
        &mut vm,
        "config",
        r"nodeboot install: node config written to /ostree/deploy/",
        deadline,
    );
    let installed = m.wait(
        &mut vm,
        "installed",
        r"nodeboot install: installed ",
        deadline,
    );
    m.wait(
        &mut vm,
        "rebooting",
        r"nodeboot install: rebooting",
        deadline,
    );
    let status = vm
        .wait_exit(deadline.saturating_duration_since(Instant::now()))
        .unwrap();
    let install_exit = Instant::now();
    let install_log = vm.serial_text().unwrap();
    drop(vm);

    for (name, at, line) in &m.marks {
        eprintln!(
            "E2E-TIMING firmware={fw} step={name} t={:.1}s  {line}",
            at.duration_since(m.start).as_secs_f64()
        );
    }
    eprintln!(
        "E2E-TIMING firmware={fw} pxe_to_kernel={:.1}s installer_boot={:.1}s install={:.1}s \
         (reboot: qemu exited {status} at {:.1}s)",
        m.secs(None, "kernel"),
        m.secs(Some("kernel"), "install-start"),
        m.secs(Some("install-start"), "rebooting"),
        install_exit.duration_since(m.start).as_secs_f64()
    );

    // iPXE ran the generated script: the kernel line is the script's, and iPXE (by its
    // User-Agent) fetched exactly the kernel and initramfs the script names.
    assert!(
        cmdline.contains(&format!(
            "nodeboot.install.image-url={}",
            Build::guest_url(&format!("/{}", b.raw_name))
        )) && cmdline.contains(&format!("nodeboot.install.sha256={}", b.raw_sha256))
            && cmdline.contains(&format!(
                "nodeboot.config={}",
                Build::guest_url(CONFIG_PATH)
            ))
            && cmdline.contains("nodeboot.install.device=/dev/vda"),
        "installer kernel command line: {cmdline}"
    );
    let reqs = server.requests();
    let by = |path: &str| -> Vec<&pxe_http::Request> {
        reqs.iter().filter(|r| r.path == path).collect::<Vec<_>>()
    };
    for (path, file) in [
        ("/pxe/vmlinuz", "pxe/vmlinuz"),
        ("/pxe/installer.img", "pxe/installer.img"),
    ] {
        let len = std::fs::metadata(b.dir.join(file)).unwrap().len();
        let r = by(path);
        assert!(
            r.iter()
                .any(|r| r.status == 200 && r.sent == len && r.user_agent.starts_with("iPXE/")),
            "iPXE must have fetched {path} ({len} bytes): {reqs:#?}"
        );
    }
    assert!(
        by(CONFIG_PATH).iter().any(|r| r.status == 200),
        "the installer fetched the node config: {reqs:#?}"
    );
    let image = by(&format!("/{}", b.raw_name));
    assert!(
        image.len() == 1 && image[0].status == 200 && image[0].sent == b.raw_len,
        "the installer streamed the raw image once, whole: {reqs:#?}"
    );
    assert!(
        !image[0].user_agent.starts_with("iPXE"),
        "the image is the installer's download, not iPXE's"
    );
    assert!(
        verified.contains(&format!("sha256 {} verified", b.raw_sha256)),
        "{verified}"
    );
    assert!(installed.contains("on /dev/vda"), "{installed}");
    assert!(
        !install_log.contains("nodeboot install: FAILED"),
        "{}",
        nodeimg_builder::boot::serial::tail(&install_log, 40)
    );

    // --- the installed disk boots on its own ---
    let mut cfg = VmConfig::new(&disk);
    cfg.firmware = fw;
    cfg.accel = accel();
    cfg.overlay = Some(overlay.clone());
    cfg.serial_log = Some(dir.join("boot.serial.log"));
    let mut vm = Vm::start(&cfg).unwrap();
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut m = Marks::new();
    m.wait(&mut vm, "grub", r"Booting `.*\(ostree:0\)'", deadline);
    m.wait(
        &mut vm,
        "multi-user",
        r"E2E-MARKER: reached multi-user\.target",
        deadline,
    );
    m.wait(&mut vm, "done", r"E2E-DONE$", deadline);
    vm.wait_exit(deadline.saturating_duration_since(Instant::now()))
        .unwrap();
    let text = vm.serial_text().unwrap();
    eprintln!(
        "E2E-TIMING firmware={fw} disk_boot: grub={:.1}s multi_user={:.1}s report_done={:.1}s poweroff={:.1}s",
        m.secs(None, "grub"),
        m.secs(None, "multi-user"),
        m.secs(None, "done"),
        vm.elapsed().as_secs_f64()
    );
    for line in text.lines().filter(|l| l.contains("E2E-")) {
        eprintln!("  {line}");
    }
    assert_eq!(
        one(&text, "E2E-BOOTED"),
        b.commit,
        "the built commit booted"
    );
    assert_eq!(one(&text, "E2E-FAILED-COUNT"), "0", "no unit failed");
    assert_eq!(one(&text, "E2E-NODEBOOT"), "success 0");
    assert_eq!(one(&text, "E2E-NODEBOOT-DONE"), "yes");
    assert!(
        report_values(&text, "E2E-CIDATA").is_empty(),
        "no seed volume: the config can only come from the install"
    );
    let cmd = one(&text, "E2E-CMDLINE");
    assert!(
        cmd.contains(" ostree=/ostree/boot.") && !cmd.contains("nodeboot."),
        "the installed system's own command line, without installer arguments: {cmd}"
    );
    // The placed config, byte for byte, 0600 root, and nodeboot's first boot used it.
    assert_eq!(
        one(&text, "E2E-PXE-CONFIG"),
        format!("{config_sha} 600 root:root")
    );
    let source = one(&text, "E2E-PXE-USERDATA");
    assert!(
        source.contains("user-data found") && source.contains(r#"source="file""#),
        "nodeboot took its user-data from /etc/nodeboot/config.toml: {source}"
    );
    assert!(
        one(&text, "E2E-PXE-KUBELET-FLAGS")
            .contains("--node-labels=example.com/installed-by=nodeimg-pxe-e2e"),
        "the served config's label reached kubeadm's kubelet flags"
    );
    // The root partition was grown to the 4 GiB disk (the image's is ~1.8 GiB).
    let root: Vec<&str> = one(&text, "E2E-PXE-ROOT").split_whitespace().collect();
    let (part, disk_len): (u64, u64) = (root[1].parse().unwrap(), root[2].parse().unwrap());
    assert_eq!(disk_len, 4 << 30, "{root:?}");
    assert!(part > 3 << 30, "root partition grown to the disk: {root:?}");
    let fs_mib: u64 = one(&text, "E2E-PXE-ROOTFS-MIB").parse().unwrap();
    assert!(
        fs_mib > 3 << 10,
        "root file system grown with it: {fs_mib} MiB"
    );
}

/// A corrupted image stream: one clear error, and a disk nothing can boot.
fn corrupted_stream_leaves_disk_unbootable(b: &Build, server: &PxeHttp, work: &Path) {
    let fw = Firmware::Bios;
    let dir = work.join("corrupt");
    let (disk, overlay) = fresh_disk(&dir).unwrap();
    let image_path = format!("/{}", b.raw_name);
    server.clear();
    server.set_fault(Fault::FlipByte {
        path: image_path.clone(),
        offset: b.raw_len / 2,
    });
    let mut vm = installer_vm(b, fw, server, &disk, &overlay, dir.join("serial.log")).unwrap();
    let deadline = Instant::now() + INSTALL_TIMEOUT;
    let mut m = Marks::new();
    m.wait(
        &mut vm,
        "install-start",
        r"nodeboot install: writing ",
        deadline,
    );
    let failed = m.wait(&mut vm, "failed", r"nodeboot install: FAILED: ", deadline);
    server.set_fault(Fault::None);
    eprintln!(
        "E2E-TIMING corrupt-stream install_start={:.1}s failed={:.1}s  {failed}",
        m.secs(None, "install-start"),
        m.secs(None, "failed")
    );
    assert!(
        failed.contains("sha256 mismatch")
            && failed.contains(&format!("expected {}", b.raw_sha256))
            && failed.contains("left without a partition table"),
        "{failed}"
    );
    let reqs = server.requests();
    assert!(
        reqs.iter()
            .any(|r| r.path == image_path && r.status == 200 && r.sent == b.raw_len),
        "the whole (corrupted) image was served: {reqs:#?}"
    );
    // The installer is in the initramfs' emergency mode now; stop qemu gracefully (SIGTERM),
    // so it writes the qcow2 overlay's metadata out: SIGKILL could lose written clusters and
    // make the disk look emptier than the guest left it.
    let pid = vm.pid().expect("qemu is running").to_string();
    Cmd::new("kill").args(["-TERM", &pid]).run().unwrap();
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    let text = vm.serial_text().unwrap();
    drop(vm);
    assert!(
        !text.contains("nodeboot install: installed") && !text.contains("verified ("),
        "{}",
        nodeimg_builder::boot::serial::tail(&text, 40)
    );

    let raw = dir.join("disk.raw");
    Cmd::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(&overlay)
        .arg(&raw)
        .run()
        .unwrap();
    assert_unbootable(&raw);
    // The image did reach the disk (the mismatch is only known at the end of the stream),
    // so the cleared tables are what makes it unbootable, not an empty disk.
    let used = Cmd::new("du")
        .args(["-B1", "--"])
        .arg(&raw)
        .stdout_string()
        .unwrap();
    let used: u64 = used.split_whitespace().next().unwrap().parse().unwrap();
    assert!(
        used > 256 << 20,
        "only {used} bytes of data on the disk after the failed install"
    );
    eprintln!("E2E-CORRUPT: {used} bytes of image data on the disk, no partition table");
}

/// No protective MBR, no primary or backup GPT, and the tools agree.
fn assert_unbootable(disk: &Path) {
    let mut f = std::fs::File::open(disk).unwrap();
    let len = f.metadata().unwrap().len();
    let mut head = vec![0u8; 1 << 20];
    f.read_exact(&mut head).unwrap();
    assert!(head.iter().all(|&b| b == 0), "the first MiB must be zero");
    let mut tail = vec![0u8; 33 * 512];
    f.seek(SeekFrom::Start(len - tail.len() as u64)).unwrap();
    f.read_exact(&mut tail).unwrap();
    assert!(tail.iter().all(|&b| b == 0), "the backup GPT must be zero");
    // sgdisk says it creates a new table in memory when it finds none on the disk.
    let out = std::process::Command::new("sgdisk")
        .arg("-p")
        .arg(disk)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Creating new GPT entries in memory"),
        "sgdisk -p finds a table:\n{text}"
    );
    let blkid = std::process::Command::new("blkid")
        .arg("-p")
        .arg(disk)
        .output()
        .unwrap();
    assert_eq!(
        blkid.status.code(),
        Some(2),
        "blkid -p must find nothing: {}",
        String::from_utf8_lossy(&blkid.stdout)
    );
}

#[test]
#[ignore = "PXE-installs and boots a real image in qemu for minutes; run by ci/e2e-pxe"]
fn pxe_install_then_boot_from_disk_and_corrupt_image_leaves_disk_unbootable() {
    let out = PathBuf::from(std::env::var("NODEIMG_E2E_OUTPUT").expect("NODEIMG_E2E_OUTPUT"));
    let b = Build::load(&out).unwrap();
    let config = PathBuf::from(env_or(
        "NODEIMG_E2E_NODE_CONFIG",
        &repo_root()
            .join("tests/recipes/e2e-pxe/node.toml")
            .display()
            .to_string(),
    ));
    let config = if config.is_absolute() {
        config
    } else {
        repo_root().join(config)
    };
    let config_sha = Sha256Hex::of_file(&config).unwrap().to_string();
    let work = PathBuf::from(env_or("NODEIMG_E2E_WORKDIR", "/var/tmp/nodeimg-e2e-pxe/vm"));
    std::fs::create_dir_all(&work).unwrap();
    let firmwares: Vec<Firmware> = env_or("NODEIMG_E2E_FIRMWARE", "bios,uefi")
        .split(',')
        .map(|f| match f.trim() {
            "bios" => Firmware::Bios,
            "uefi" => Firmware::Uefi,
            other => panic!("NODEIMG_E2E_FIRMWARE: unknown firmware {other}"),
        })
        .collect();

    // The build's boot script names this server's URLs and the raw image with its digest.
    let script = std::fs::read_to_string(b.dir.join("pxe/boot.ipxe")).unwrap();
    for want in [
        format!("set base {}", Build::guest_url("")),
        format!("nodeboot.install.sha256={}", b.raw_sha256),
        format!("nodeboot.config={}", Build::guest_url(CONFIG_PATH)),
    ] {
        assert!(
            script.contains(&want),
            "boot.ipxe lacks `{want}`:\n{script}"
        );
    }

    let server = PxeHttp::start(vec![
        ("/".to_owned(), b.dir.clone()),
        (CONFIG_PATH.to_owned(), config),
    ]);
    for fw in firmwares {
        install_and_boot(&b, fw, &server, &work, &config_sha);
    }
    if env_or("NODEIMG_E2E_PXE_NEGATIVE", "1") != "0" {
        corrupted_stream_leaves_disk_unbootable(&b, &server, &work);
    }
}
