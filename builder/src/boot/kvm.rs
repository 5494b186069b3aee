//! Whether KVM really works here. `/dev/kvm` existing, or even opening, proves nothing: on
//! `kvm-pvm` hosts firmware boots may die with "KVM internal error", and Linux hangs silently
//! right after its real-mode setup code (reference boot-pipeline §14). Measured on this build
//! machine: SeaBIOS, GRUB and even a hand-written switch to 64-bit long mode all run under
//! KVM, yet the Debian kernel prints `Probing EDD ... ok` and then nothing. So only a Linux
//! kernel proves KVM: the probe boots one directly (no disk, no initramfs) and waits a few
//! seconds for its `Linux version` banner on the serial port. Without a kernel to probe with,
//! the answer is TCG. The result is cached per process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use regex::Regex;

use super::qemu::{Accel, DirectKernel, Firmware, Machine, Vm, VmConfig};

/// Under working KVM the banner appears well within a second.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// `NODEIMG_ACCEL=tcg|kvm` overrides the probe.
pub const ACCEL_ENV: &str = "NODEIMG_ACCEL";
/// A Linux kernel (bzImage) to probe with; default: the host's `/boot/vmlinuz-$(uname -r)`.
pub const PROBE_KERNEL_ENV: &str = "NODEIMG_KVM_PROBE_KERNEL";

/// KVM when the environment forces it or the cached probe succeeded, else TCG.
pub fn best_accel() -> Accel {
    match std::env::var(ACCEL_ENV).ok().as_deref() {
        Some("tcg") => return Accel::Tcg,
        Some("kvm") => return Accel::Kvm,
        _ => {}
    }
    static CACHED: OnceLock<Accel> = OnceLock::new();
    *CACHED.get_or_init(|| {
        let accel = if probe(probe_kernel().as_deref()) {
            Accel::Kvm
        } else {
            Accel::Tcg
        };
        tracing::info!(%accel, "accelerator chosen by probe");
        accel
    })
}

/// The kernel the cached probe uses, if any.
pub fn probe_kernel() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os(PROBE_KERNEL_ENV) {
        return Some(PathBuf::from(k));
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    [
        PathBuf::from(format!("/boot/vmlinuz-{}", release.trim())),
        PathBuf::from("/boot/vmlinuz"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// Boot `kernel` directly under KVM; true only if its banner reached the serial port in time.
/// Not cached: callers that have the image's own kernel (the deploy stage's boot tree) can
/// probe with it.
pub fn probe(kernel: Option<&Path>) -> bool {
    if !Path::new("/dev/kvm").exists() {
        tracing::info!("no /dev/kvm: using TCG");
        return false;
    }
    let Some(kernel) = kernel else {
        tracing::info!("no Linux kernel to probe KVM with ({PROBE_KERNEL_ENV}): using TCG");
        return false;
    };
    match run_probe(kernel, Accel::Kvm) {
        Ok(()) => true,
        Err(e) => {
            tracing::info!("KVM probe failed, using TCG: {e:#}");
            false
        }
    }
}

fn run_probe(kernel: &Path, accel: Accel) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("empty.img");
    // The runner always attaches a boot disk; a blank one is never booted from here.
    std::fs::write(&disk, vec![0u8; 1 << 20])?;
    let mut cfg = VmConfig::new(&disk);
    cfg.firmware = Firmware::Bios;
    cfg.machine = Machine::Pc;
    cfg.memory_mib = 256;
    cfg.cpus = 1;
    cfg.direct_kernel = Some(DirectKernel {
        kernel: kernel.to_owned(),
        initrd: None,
        append: "console=ttyS0,115200 earlyprintk=serial,ttyS0,115200 panic=-1".into(),
    });
    let mut vm = Vm::start_with(&cfg, accel)?;
    let timeout = match accel {
        Accel::Kvm => PROBE_TIMEOUT,
        // Only the tests run this under TCG, to prove the probe itself sees the banner.
        Accel::Tcg => PROBE_TIMEOUT * 12,
    };
    vm.wait_for(&Regex::new(r"Linux version \d")?, timeout)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// With `NODEIMG_KVM_PROBE_KERNEL` set (ci sets it to the image's kernel), the probe's
    /// banner detection is checked under TCG, and the KVM probe must answer within seconds.
    #[test]
    fn probe_sees_banner_under_tcg_and_is_cheap() {
        let Some(kernel) = std::env::var_os(PROBE_KERNEL_ENV).map(PathBuf::from) else {
            eprintln!("{PROBE_KERNEL_ENV} not set: only the no-kernel path is checked");
            let started = Instant::now();
            if probe_kernel().is_none() {
                assert!(!probe(None));
            }
            assert!(started.elapsed() < Duration::from_secs(1));
            return;
        };
        run_probe(&kernel, Accel::Tcg).expect("the kernel prints its banner under TCG");
        let started = Instant::now();
        let kvm = probe(Some(&kernel));
        let took = started.elapsed();
        eprintln!("KVM probe: usable={kvm} in {took:?}");
        assert!(took < PROBE_TIMEOUT + Duration::from_secs(5), "{took:?}");
    }
}
