//! GRUB for both firmware types without `grub-install` (which needs real block devices):
//! `grub-mkimage` builds self-contained cores with an embedded early config, and the BIOS core
//! is embedded into the BIOS boot partition by patching bytes as `grub-bios-setup` would
//! (reference boot-pipeline.md §9.4, §10).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use nodeimg_common::Cmd;

use super::plan::{PartitionPlan, LABEL_BOOT, SECTOR};

/// Modules both cores carry, so `/boot/grub` needs no module directory.
const MODULES: &[&str] = &[
    "true",
    "part_gpt",
    "part_msdos",
    "ext2",
    "fat",
    "normal",
    "configfile",
    "search",
    "search_label",
    "search_fs_uuid",
    "linux",
    "echo",
    "test",
    "ls",
    "cat",
    "serial",
    "terminal",
    "gzio",
    "zstd",
    "all_video",
    "reboot",
    "halt",
    "sleep",
    "loadenv",
];
const EFI_MODULES: &[&str] = &["efi_gop", "efi_uga"];
const BIOS_MODULES: &[&str] = &["biosdisk"];

/// Where Debian installs GRUB's per-platform module directories.
pub const DEFAULT_MODULES_DIR: &str = "/usr/lib/grub";

/// The early config both cores run: find the `/boot` filesystem by label; GRUB's `normal`
/// module then loads `$prefix/grub.cfg`, i.e. `($root)/grub/grub.cfg` from the deploy stage.
pub fn early_config() -> String {
    format!("search --no-floppy --label --set=root {LABEL_BOOT}\nset prefix=($root)/grub\n")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Efi,
    Bios,
}

impl Target {
    fn format(self) -> &'static str {
        match self {
            Target::Efi => "x86_64-efi",
            Target::Bios => "i386-pc",
        }
    }
    fn package(self) -> &'static str {
        match self {
            Target::Efi => "grub-efi-amd64-bin",
            Target::Bios => "grub-pc-bin",
        }
    }
}

/// The platform's module directory under `modules_dir`, checked to exist.
pub fn platform_dir(modules_dir: &Path, target: Target) -> Result<PathBuf> {
    let dir = modules_dir.join(target.format());
    if !dir.join("moddep.lst").is_file() {
        bail!(
            "GRUB modules for {} not found in {} (install the Debian package `{}`)",
            target.format(),
            dir.display(),
            target.package()
        );
    }
    Ok(dir)
}

/// Run `grub-mkimage` for `target` into `out`. The output depends only on the module
/// directory's content, the module list and the early config (checked by the disk
/// reproducibility test).
pub fn mkimage(modules_dir: &Path, target: Target, work: &Path, out: &Path) -> Result<()> {
    let dir = platform_dir(modules_dir, target)?;
    let cfg = work.join(format!("early-{}.cfg", target.format()));
    std::fs::write(&cfg, early_config()).with_context(|| format!("writing {}", cfg.display()))?;
    let extra = match target {
        Target::Efi => EFI_MODULES,
        Target::Bios => BIOS_MODULES,
    };
    Cmd::new("grub-mkimage")
        .arg("-d")
        .arg(&dir)
        .args(["-O", target.format(), "-p", "/grub", "-c"])
        .arg(&cfg)
        .arg("-o")
        .arg(out)
        .args(extra)
        .args(MODULES)
        .env("LC_ALL", "C")
        .run()
        .with_context(|| format!("building the GRUB {} image", target.format()))
}

/// Offsets inside boot.img and diskboot (the first sector of core.img) that the embedding
/// patches.
const BOOT_KERNEL_SECTOR: usize = 0x5c;
const BOOT_DRIVE_CHECK: usize = 0x66;
const BPB_START: usize = 0x03;
const BPB_END: usize = 0x5a;
const MBR_TABLE_START: usize = 0x1b8;
const MBR_TABLE_END: usize = 0x1fe;
const BLOCKLIST: usize = 0x1f4;
const CORE_LOAD_SEGMENT: u16 = 0x0820;

/// Embed GRUB for BIOS: `boot_img` (512 bytes) becomes sector 0, keeping the BPB area and the
/// protective MBR's disk signature and partition table from the image's current sector 0;
/// `core_img` goes to the start of `bios_part`, its blocklist pointing at its own sectors.
pub fn embed_bios(
    image: &File,
    boot_img: &[u8],
    core_img: &[u8],
    bios_part: &PartitionPlan,
) -> Result<()> {
    ensure!(
        boot_img.len() == SECTOR as usize,
        "boot.img is {} bytes, expected 512",
        boot_img.len()
    );
    let mut core = core_img.to_vec();
    core.resize(core.len().div_ceil(SECTOR as usize) * SECTOR as usize, 0);
    let n = (core.len() / SECTOR as usize) as u64;
    ensure!(
        n >= 2 && n <= bios_part.sectors,
        "GRUB core.img is {n} sectors; the BIOS boot partition has {}",
        bios_part.sectors
    );

    let mut current = [0u8; SECTOR as usize];
    image
        .read_exact_at(&mut current, 0)
        .context("reading sector 0 of the disk image")?;
    ensure!(
        current[0x1c2] == 0xee && current[0x1fe..] == [0x55, 0xaa],
        "sector 0 of the disk image is not a protective MBR"
    );
    let mut mbr = [0u8; SECTOR as usize];
    mbr.copy_from_slice(boot_img);
    mbr[BPB_START..BPB_END].copy_from_slice(&current[BPB_START..BPB_END]);
    mbr[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8]
        .copy_from_slice(&bios_part.start_lba.to_le_bytes());
    // boot.img jumps over its "force DL = 0x80 for bogus BIOS drive numbers" workaround;
    // grub-bios-setup turns that jump into NOPs for hard disks.
    ensure!(
        mbr[BOOT_DRIVE_CHECK..BOOT_DRIVE_CHECK + 2] == [0xeb, 0x05],
        "unexpected boot.img: no drive-check jump at 0x66"
    );
    mbr[BOOT_DRIVE_CHECK..BOOT_DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    mbr[MBR_TABLE_START..MBR_TABLE_END].copy_from_slice(&current[MBR_TABLE_START..MBR_TABLE_END]);

    let count = u16::from_le_bytes([core[BLOCKLIST + 8], core[BLOCKLIST + 9]]);
    let segment = u16::from_le_bytes([core[BLOCKLIST + 10], core[BLOCKLIST + 11]]);
    ensure!(
        u64::from(count) == n - 1 && segment == CORE_LOAD_SEGMENT,
        "unexpected core.img blocklist: {count} sectors at segment {segment:#x} \
         (expected {} at {CORE_LOAD_SEGMENT:#x})",
        n - 1
    );
    core[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&(bios_part.start_lba + 1).to_le_bytes());

    image
        .write_all_at(&core, bios_part.offset())
        .context("writing GRUB core.img into the BIOS boot partition")?;
    image
        .write_all_at(&mbr, 0)
        .context("writing GRUB boot.img into sector 0")?;
    Ok(())
}
