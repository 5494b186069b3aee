//! A headless qemu VM for boot tests: per-run qcow2 overlay (the image stays pristine), serial
//! console to a file, optional NoCloud seed and extra disks, user-mode networking that only
//! reaches what is explicitly forwarded, killed when dropped.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nodeimg_common::Cmd;
use regex::Regex;

use super::serial;

const QEMU: &str = "qemu-system-x86_64";
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// How often the serial log is polled.
const POLL: Duration = Duration::from_millis(250);

/// What starts the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Firmware {
    /// SeaBIOS, qemu's default.
    Bios,
    /// OVMF from Debian's `ovmf` package; its variable store is copied per run.
    Uefi,
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        })
    }
}

/// Which accelerator to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    /// KVM if a real probe boot proved it works on this host (cached per process), else TCG.
    Auto,
    Tcg,
    Kvm,
}

/// The accelerator a VM actually runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    Q35,
    Pc,
}

/// Disk image formats qemu is told explicitly (never probed: probing raw images is unsafe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
    /// VHD (qemu calls it `vpc`).
    Vpc,
}

impl DiskFormat {
    pub fn as_qemu(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vpc => "vpc",
        }
    }

    /// From the file's magic: `QFI\xfb` at 0 is qcow2, a `conectix` footer is VHD, else raw.
    pub fn detect(path: &Path) -> Result<Self> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = f
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        let mut head = [0u8; 4];
        if len >= 4 {
            f.read_exact(&mut head)
                .with_context(|| format!("reading {}", path.display()))?;
            if &head == b"QFI\xfb" {
                return Ok(DiskFormat::Qcow2);
            }
        }
        if len >= 512 {
            let mut footer = [0u8; 8];
            f.seek(SeekFrom::Start(len - 512))
                .and_then(|_| f.read_exact(&mut footer))
                .with_context(|| format!("reading {}", path.display()))?;
            if &footer == b"conectix" {
                return Ok(DiskFormat::Vpc);
            }
        }
        Ok(DiskFormat::Raw)
    }
}

/// A further disk attached after the boot disk (and the seed).
#[derive(Debug, Clone)]
pub struct ExtraDisk {
    pub path: PathBuf,
    pub read_only: bool,
}

/// Direct kernel boot (skips firmware and boot loader; the fastest loop).
#[derive(Debug, Clone)]
pub struct DirectKernel {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub append: String,
}

/// User-mode networking. The guest is always isolated (`restrict=on`): it reaches nothing
/// but the forwards listed here, and those only on 127.0.0.1.
#[derive(Debug, Clone, Default)]
pub struct UserNet {
    /// (host port on 127.0.0.1, guest port), TCP.
    pub hostfwd: Vec<(u16, u16)>,
    /// (guest address `10.0.2.x`, guest port, host port on 127.0.0.1), TCP. Each guest
    /// connection gets its own `socat` to the host port (Debian package `socat`): a
    /// `tcp:` chardev target would connect once, at qemu start, and carry only the first
    /// guest connection.
    pub guestfwd: Vec<(String, u16, u16)>,
}

/// Network boot from qemu's user-mode networking: its DHCP server names `bootfile` and its
/// TFTP server serves `tftp_root` (read-only). The NIC's option ROM (iPXE, Debian package
/// `ipxe-qemu`, a dependency of `qemu-system-x86`) does the booting.
#[derive(Debug, Clone)]
pub struct NetBoot {
    pub tftp_root: PathBuf,
    /// Path under `tftp_root`, e.g. an iPXE script.
    pub bootfile: String,
}

/// Everything about one VM run.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The boot disk; never written (a qcow2 overlay takes the writes).
    pub disk: PathBuf,
    pub firmware: Firmware,
    pub accel: AccelChoice,
    pub machine: Machine,
    pub memory_mib: u32,
    pub cpus: u32,
    /// A NoCloud seed ISO, attached read-only as the second virtio disk.
    pub seed_iso: Option<PathBuf>,
    pub extra_disks: Vec<ExtraDisk>,
    pub network: Option<UserNet>,
    pub direct_kernel: Option<DirectKernel>,
    /// Where the serial console goes; default: `serial.log` in the run directory.
    pub serial_log: Option<PathBuf>,
    /// A persistent overlay (created over `disk` if missing), for tests that boot the same
    /// disk state several times; default: a fresh overlay per run.
    pub overlay: Option<PathBuf>,
    /// Boot from the network before the disk (needs `network`): the NIC gets `bootindex=1`.
    pub net_boot: Option<NetBoot>,
}

impl VmConfig {
    /// Defaults proven for the node image: q35, 2 GiB, 2 vCPUs, SeaBIOS, accelerator probed.
    pub fn new(disk: impl Into<PathBuf>) -> Self {
        VmConfig {
            disk: disk.into(),
            firmware: Firmware::Bios,
            accel: AccelChoice::Auto,
            machine: Machine::Q35,
            memory_mib: 2048,
            cpus: 2,
            seed_iso: None,
            extra_disks: Vec::new(),
            network: None,
            direct_kernel: None,
            serial_log: None,
            overlay: None,
            net_boot: None,
        }
    }
}

/// A line that matched, and when (host wall clock since qemu was started).
#[derive(Debug, Clone)]
pub struct MarkerHit {
    pub after: Duration,
    pub line: String,
}

/// A running VM. Dropping it kills qemu.
#[derive(Debug)]
pub struct Vm {
    child: Option<Child>,
    started: Instant,
    serial_log: PathBuf,
    stderr_log: PathBuf,
    accel: Accel,
    firmware: Firmware,
    exited: Option<ExitStatus>,
    // Last: removed after the child is gone.
    _run_dir: tempfile::TempDir,
}

impl Vm {
    pub fn start(cfg: &VmConfig) -> Result<Vm> {
        let accel = match cfg.accel {
            AccelChoice::Tcg => Accel::Tcg,
            AccelChoice::Kvm => Accel::Kvm,
            AccelChoice::Auto => super::kvm::best_accel(),
        };
        Self::start_with(cfg, accel)
    }

    pub(super) fn start_with(cfg: &VmConfig, accel: Accel) -> Result<Vm> {
        let run_dir = tempfile::Builder::new()
            .prefix("nodeimg-vm-")
            .tempdir()
            .context("creating a VM run directory")?;
        let disk = cfg
            .disk
            .canonicalize()
            .with_context(|| format!("boot disk {}", cfg.disk.display()))?;
        let overlay = match &cfg.overlay {
            Some(p) if p.exists() => p.clone(),
            Some(p) => {
                create_overlay(&disk, p)?;
                p.clone()
            }
            None => {
                let p = run_dir.path().join("disk.qcow2");
                create_overlay(&disk, &p)?;
                p
            }
        };
        let serial_log = cfg
            .serial_log
            .clone()
            .unwrap_or_else(|| run_dir.path().join("serial.log"));
        if let Some(parent) = serial_log.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        // A stale log from an earlier run must not satisfy this run's marker.
        match fs::remove_file(&serial_log) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", serial_log.display()))
            }
            _ => {}
        }
        let mut args: Vec<String> = vec![
            "-machine".into(),
            match cfg.machine {
                Machine::Q35 => "q35".into(),
                Machine::Pc => "pc".into(),
            },
        ];
        match accel {
            Accel::Kvm => args.extend(["-accel", "kvm", "-cpu", "host"].map(String::from)),
            Accel::Tcg => args.extend(["-accel", "tcg,thread=multi,tb-size=512"].map(String::from)),
        }
        args.extend([
            "-m".into(),
            cfg.memory_mib.to_string(),
            "-smp".into(),
            cfg.cpus.to_string(),
            "-nodefaults".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-monitor".into(),
            "none".into(),
            "-chardev".into(),
            format!("file,id=serial0,path={}", qemu_path(&serial_log)),
            "-serial".into(),
            "chardev:serial0".into(),
        ]);
        if cfg.firmware == Firmware::Uefi {
            let vars = run_dir.path().join("OVMF_VARS.fd");
            fs::copy(OVMF_VARS, &vars).with_context(|| {
                format!("copying {OVMF_VARS} (install the Debian package `ovmf`)")
            })?;
            if !Path::new(OVMF_CODE).is_file() {
                bail!("{OVMF_CODE} is missing (install the Debian package `ovmf`)");
            }
            args.extend([
                "-drive".into(),
                format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"),
                "-drive".into(),
                format!("if=pflash,format=raw,file={}", qemu_path(&vars)),
            ]);
        }
        args.extend([
            "-drive".into(),
            format!(
                "file={},if=virtio,format=qcow2,cache=unsafe",
                qemu_path(&overlay)
            ),
        ]);
        if let Some(seed) = &cfg.seed_iso {
            args.extend([
                "-drive".into(),
                format!("file={},if=virtio,format=raw,readonly=on", qemu_path(seed)),
            ]);
        }
        for extra in &cfg.extra_disks {
            let fmt = DiskFormat::detect(&extra.path)?;
            args.extend([
                "-drive".into(),
                format!(
                    "file={},if=virtio,format={}{}",
                    qemu_path(&extra.path),
                    fmt.as_qemu(),
                    if extra.read_only { ",readonly=on" } else { "" }
                ),
            ]);
        }
        if cfg.net_boot.is_some() && cfg.network.is_none() {
            bail!("network boot needs user-mode networking (VmConfig::network)");
        }
        if let Some(net) = &cfg.network {
            if !net.guestfwd.is_empty() {
                // qemu runs the forwarder through the shell only when a guest connects, where
                // a missing tool would just drop the connection: check it up front.
                Cmd::new("socat")
                    .arg("-V")
                    .run()
                    .context("guest forwards need socat")?;
            }
            let mut nic = String::from("virtio-net-pci,netdev=net0");
            if cfg.net_boot.is_some() {
                nic.push_str(",bootindex=1");
            }
            args.extend([
                "-netdev".into(),
                netdev_arg(net, cfg.net_boot.as_ref()),
                "-device".into(),
                nic,
            ]);
        }
        if let Some(dk) = &cfg.direct_kernel {
            args.extend(["-kernel".into(), dk.kernel.display().to_string()]);
            if let Some(initrd) = &dk.initrd {
                args.extend(["-initrd".into(), initrd.display().to_string()]);
            }
            args.extend(["-append".into(), dk.append.clone()]);
        }

        let stderr_log = run_dir.path().join("qemu.stderr");
        let stderr = File::create(&stderr_log)
            .with_context(|| format!("creating {}", stderr_log.display()))?;
        tracing::debug!(program = QEMU, ?args, "starting VM");
        // `Cmd` runs a program to completion; a VM must keep running while we watch its
        // console, so it is spawned directly, with the same missing-tool hint as `Cmd`.
        let child = Command::new(QEMU)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    anyhow::anyhow!(
                        "`{QEMU}` is not installed (install the Debian package `{}`)",
                        nodeimg_common::cmd::package_for(QEMU).unwrap_or("qemu-system-x86")
                    )
                } else {
                    anyhow::Error::new(e).context(format!("starting {QEMU}"))
                }
            })?;
        Ok(Vm {
            child: Some(child),
            started: Instant::now(),
            serial_log,
            stderr_log,
            accel,
            firmware: cfg.firmware,
            exited: None,
            _run_dir: run_dir,
        })
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    pub fn firmware(&self) -> Firmware {
        self.firmware
    }

    pub fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Time since qemu was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The serial console so far, escapes removed.
    pub fn serial_text(&self) -> Result<String> {
        serial::read_clean(&self.serial_log)
    }

    /// Wait until the serial log has a line matching `marker`. Fails when qemu exits first
    /// or `timeout` (counted from this call) passes; the error carries the console tail.
    pub fn wait_for(&mut self, marker: &Regex, timeout: Duration) -> Result<MarkerHit> {
        let deadline = Instant::now() + timeout;
        loop {
            // Check the exit before reading, so output written just before exiting is seen.
            let exited = self.poll_exit()?;
            let text = self.serial_text()?;
            if let Some(line) = text.lines().find(|l| marker.is_match(l)) {
                return Ok(MarkerHit {
                    after: self.started.elapsed(),
                    line: line.to_owned(),
                });
            }
            if let Some(status) = exited {
                bail!(
                    "qemu exited ({status}) after {:.1}s before the serial console matched `{marker}`{}",
                    self.started.elapsed().as_secs_f64(),
                    self.diagnostics(&text)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {:.0}s waiting for `{marker}` on the serial console ({} accel){}",
                    timeout.as_secs_f64(),
                    self.accel,
                    self.diagnostics(&text)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Wait for the guest to power off (qemu exits; `-no-reboot` turns a reboot into an exit).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let text = self.serial_text().unwrap_or_default();
                bail!(
                    "the VM did not power off within {:.0}s{}",
                    timeout.as_secs_f64(),
                    self.diagnostics(&text)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Kill qemu now (also done on drop).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.exited.is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    fn poll_exit(&mut self) -> Result<Option<ExitStatus>> {
        if let Some(s) = self.exited {
            return Ok(Some(s));
        }
        let Some(child) = self.child.as_mut() else {
            bail!("the VM was already killed");
        };
        let status = child
            .try_wait()
            .context("checking whether qemu is running")?;
        self.exited = status;
        Ok(status)
    }

    fn diagnostics(&self, serial_text: &str) -> String {
        let stderr = fs::read_to_string(&self.stderr_log).unwrap_or_default();
        let mut out = String::new();
        if !stderr.trim().is_empty() {
            out.push_str(&format!(
                "\nqemu stderr:\n{}",
                serial::tail(stderr.trim_end(), 15)
            ));
        }
        out.push_str(&format!(
            "\nserial console ({}), last lines:\n{}",
            self.serial_log.display(),
            serial::tail(serial_text, 25)
        ));
        out
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `-netdev user,...` value: isolated, the forwards, and the TFTP/DHCP boot file.
fn netdev_arg(net: &UserNet, boot: Option<&NetBoot>) -> String {
    let mut netdev = String::from("user,id=net0,restrict=on");
    for (host, guest) in &net.hostfwd {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    for (addr, gport, hport) in &net.guestfwd {
        netdev.push_str(&format!(
            ",guestfwd=tcp:{addr}:{gport}-cmd:socat - TCP:127.0.0.1:{hport}"
        ));
    }
    // slirp answers DHCP and TFTP itself, before `restrict=on` drops anything else.
    if let Some(b) = boot {
        netdev.push_str(&format!(
            ",tftp={},bootfile={}",
            qemu_path(&b.tftp_root),
            b.bootfile.replace(',', ",,")
        ));
    }
    netdev
}

/// `qemu-img create -f qcow2 -b BASE -F FMT OVERLAY`.
fn create_overlay(base: &Path, overlay: &Path) -> Result<()> {
    let fmt = DiskFormat::detect(base)?;
    Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(base)
        .args(["-F", fmt.as_qemu()])
        .arg(overlay)
        .run()
        .with_context(|| format!("creating a qcow2 overlay over {}", base.display()))?;
    Ok(())
}

/// qemu option values are comma-separated; a literal comma is written twice.
fn qemu_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_by_magic() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("a.raw");
        fs::write(&raw, vec![0u8; 4096]).unwrap();
        assert_eq!(DiskFormat::detect(&raw).unwrap(), DiskFormat::Raw);
        let q = d.path().join("a.qcow2");
        create_overlay(&raw, &q).unwrap();
        assert_eq!(DiskFormat::detect(&q).unwrap(), DiskFormat::Qcow2);
        let mut vhd = vec![0u8; 4096];
        vhd[4096 - 512..4096 - 504].copy_from_slice(b"conectix");
        let v = d.path().join("a.vhd");
        fs::write(&v, vhd).unwrap();
        assert_eq!(DiskFormat::detect(&v).unwrap(), DiskFormat::Vpc);
    }

    #[test]
    fn netdev_has_forwards_and_the_boot_file() {
        let net = UserNet {
            hostfwd: vec![(2222, 22)],
            guestfwd: vec![("10.0.2.100".into(), 8080, 41000)],
        };
        assert_eq!(
            netdev_arg(&net, None),
            "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,\
             guestfwd=tcp:10.0.2.100:8080-cmd:socat - TCP:127.0.0.1:41000"
        );
        let boot = NetBoot {
            tftp_root: PathBuf::from("/srv/a,b/pxe"),
            bootfile: "boot.ipxe".into(),
        };
        assert_eq!(
            netdev_arg(&UserNet::default(), Some(&boot)),
            "user,id=net0,restrict=on,tftp=/srv/a,,b/pxe,bootfile=boot.ipxe"
        );
    }

    #[test]
    fn commas_are_escaped() {
        assert_eq!(qemu_path(Path::new("/a,b/c")), "/a,,b/c");
    }
}
