//! Booting images in qemu: the runner behind `nodeimg boot` and the test harness
//! (`nodeimg_tests::qemu` re-exports it, so there is one implementation).

pub mod command;
pub mod kvm;
pub mod qemu;
pub mod seed;
pub mod serial;
pub mod test_disk;

use std::time::Duration;

use anyhow::Result;
use regex::Regex;

pub use qemu::{
    Accel, AccelChoice, DirectKernel, DiskFormat, ExtraDisk, Firmware, Machine, MarkerHit, NetBoot,
    UserNet, Vm, VmConfig,
};

/// What a boot to a marker measured.
#[derive(Debug, Clone)]
pub struct BootReport {
    pub firmware: Firmware,
    pub accel: Accel,
    /// Host wall clock from qemu start to the marker line.
    pub to_marker: Duration,
    pub marker_line: String,
}

/// Start `cfg` and wait for `marker`; the VM keeps running (drop it to stop it).
pub fn boot_to_marker(
    cfg: &VmConfig,
    marker: &Regex,
    timeout: Duration,
) -> Result<(Vm, BootReport)> {
    let mut vm = Vm::start(cfg)?;
    let hit = vm.wait_for(marker, timeout)?;
    let report = BootReport {
        firmware: vm.firmware(),
        accel: vm.accel(),
        to_marker: hit.after,
        marker_line: hit.line,
    };
    Ok((vm, report))
}

/// These boot real qemu (TCG) with a one-sector disk or OVMF's own shell: seconds each.
#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Instant;

    fn tiny_disk(dir: &Path, msg: &str) -> std::path::PathBuf {
        let p = dir.join("tiny.img");
        std::fs::write(&p, test_disk::boot_sector_disk(msg).unwrap()).unwrap();
        p
    }

    fn tcg(disk: &Path) -> VmConfig {
        let mut cfg = VmConfig::new(disk);
        cfg.accel = AccelChoice::Tcg;
        cfg.memory_mib = 128;
        cfg.cpus = 1;
        cfg
    }

    #[test]
    fn bios_boot_reaches_marker_keeps_image_pristine_and_dies_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let disk = tiny_disk(d.path(), "HELLO-FROM-SECTOR");
        let before = std::fs::read(&disk).unwrap();
        let serial = d.path().join("logs/serial.log");
        let mut cfg = tcg(&disk);
        cfg.serial_log = Some(serial.clone());
        let re = Regex::new("^HELLO-FROM-SECTOR$").unwrap();
        let (vm, report) = boot_to_marker(&cfg, &re, Duration::from_secs(60)).unwrap();
        assert_eq!(report.accel, Accel::Tcg);
        assert_eq!(report.marker_line, "HELLO-FROM-SECTOR");
        assert!(report.to_marker < Duration::from_secs(60));
        assert!(std::fs::read_to_string(&serial)
            .unwrap()
            .contains("HELLO-FROM-SECTOR\r\n"));
        let pid = vm.pid().unwrap();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(vm);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "qemu still running after drop"
        );
        assert_eq!(std::fs::read(&disk).unwrap(), before);
    }

    #[test]
    fn uefi_firmware_boots_ovmf() {
        let d = tempfile::tempdir().unwrap();
        let disk = tiny_disk(d.path(), "unused");
        let mut cfg = tcg(&disk);
        cfg.firmware = Firmware::Uefi;
        cfg.memory_mib = 256;
        // OVMF cannot boot an MBR sector; it reports the boot attempts on the serial console
        // and falls back to its shell, which proves the firmware and vars copy work.
        let re = Regex::new(r"BdsDxe: (failed to load|loading|starting)").unwrap();
        let (_vm, report) = boot_to_marker(&cfg, &re, Duration::from_secs(120)).unwrap();
        assert_eq!(report.firmware, Firmware::Uefi);
    }

    #[test]
    fn timeout_error_carries_console_tail() {
        let d = tempfile::tempdir().unwrap();
        let disk = tiny_disk(d.path(), "TAIL-LINE");
        let mut vm = Vm::start(&tcg(&disk)).unwrap();
        vm.wait_for(&Regex::new("TAIL-LINE").unwrap(), Duration::from_secs(60))
            .unwrap();
        let err = vm
            .wait_for(
                &Regex::new("NEVER-PRINTED").unwrap(),
                Duration::from_secs(1),
            )
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("timed out"), "{msg}");
        assert!(msg.contains("TAIL-LINE"), "{msg}");
    }

    #[test]
    fn early_qemu_exit_is_reported_with_stderr() {
        let d = tempfile::tempdir().unwrap();
        let disk = tiny_disk(d.path(), "x");
        let mut cfg = tcg(&disk);
        cfg.direct_kernel = Some(DirectKernel {
            kernel: d.path().join("no-such-kernel"),
            initrd: None,
            append: String::new(),
        });
        let started = Instant::now();
        let mut vm = Vm::start(&cfg).unwrap();
        let err = vm
            .wait_for(&Regex::new("x").unwrap(), Duration::from_secs(60))
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("qemu exited"), "{msg}");
        assert!(msg.contains("no-such-kernel"), "{msg}");
        assert!(started.elapsed() < Duration::from_secs(30));
    }

    #[test]
    fn host_forward_listens_on_loopback_only() {
        let d = tempfile::tempdir().unwrap();
        let disk = tiny_disk(d.path(), "NET-UP");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cfg = tcg(&disk);
        cfg.network = Some(UserNet {
            hostfwd: vec![(port, 22)],
            guestfwd: vec![],
        });
        let (_vm, _) = boot_to_marker(
            &cfg,
            &Regex::new("NET-UP").unwrap(),
            Duration::from_secs(60),
        )
        .unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .expect("qemu listens on the forwarded port");
    }
}
