//! Stage `disk`: GPT layout, filesystems and bootloaders written into a raw disk image.
//!
//! Input: the deploy stage's two trees, `boot_tree` (contents of the ext4 `/boot` partition)
//! and `root_tree` (the sysroot with an empty `boot/`). Output: a sparse raw image with
//! BIOS boot + ESP + `/boot` + root partitions ([`plan`]), GRUB for BIOS and/or UEFI
//! ([`grub`]), bit-identical for identical input and seed. No loop devices, no mounts.
//!
//! The image is written through [`AtomicFile`]: after a failure nothing is left at `out`.

pub mod content;
pub mod esp;
pub mod ext4;
pub mod gpt_table;
pub mod grub;
pub mod plan;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nodeimg_common::digest::Sha256Hex;
use nodeimg_common::fsutil::AtomicFile;
use serde::Serialize;
use uuid::Uuid;

use crate::export::sparse;
use crate::progress;
use crate::recipe::schema::{Disk, Firmware};
pub use plan::{DiskPlan, PartitionPlan, PartitionRole, PlanError, PlanRequest};

/// Everything the disk stage needs.
#[derive(Debug, Clone)]
pub struct DiskInput {
    /// Becomes the root filesystem (label `root`).
    pub root_tree: PathBuf,
    /// Becomes the `/boot` filesystem (label `boot`).
    pub boot_tree: PathBuf,
    /// Total size in bytes (multiple of 1 MiB); `None`: fitted ([`plan::fitted_root_size`]).
    pub size: Option<u64>,
    pub boot_size: u64,
    pub esp_size: u64,
    /// Which GRUB cores to install. The partition layout is the same either way.
    pub firmware: Vec<Firmware>,
    /// Disk GUID, partition GUIDs and filesystem UUIDs derive from it (the commit checksum).
    pub seed: Sha256Hex,
    /// GRUB's module directory root (holding `i386-pc/`, `x86_64-efi/`); default
    /// `/usr/lib/grub`.
    pub grub_modules_dir: Option<PathBuf>,
    /// Timestamp for every file and filesystem superblock.
    pub source_date_epoch: i64,
}

impl DiskInput {
    /// The input for a recipe's `[disk]` table; `epoch` is the commit's timestamp
    /// ([`crate::commit::commit_timestamp`]), so files and superblocks carry the commit's time.
    pub fn from_recipe(
        disk: &Disk,
        root_tree: &Path,
        boot_tree: &Path,
        seed: Sha256Hex,
        epoch: i64,
    ) -> Self {
        DiskInput {
            root_tree: root_tree.to_owned(),
            boot_tree: boot_tree.to_owned(),
            size: disk.size.map(|s| s.bytes()),
            boot_size: disk.boot_size.bytes(),
            esp_size: disk.esp_size.bytes(),
            firmware: disk.firmware.clone(),
            seed,
            grub_modules_dir: None,
            source_date_epoch: epoch,
        }
    }
}

/// What was built.
#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    pub path: PathBuf,
    /// Virtual size in bytes.
    pub size: u64,
    /// Bytes actually allocated on the host filesystem (the image is sparse).
    pub allocated: u64,
    pub disk_guid: Uuid,
    pub partitions: Vec<PartitionReport>,
    /// What the trees need (see [`content::TreeUsage::fs_bytes`]).
    pub root_content_bytes: u64,
    pub boot_content_bytes: u64,
    pub firmware: Vec<Firmware>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub number: u32,
    pub name: String,
    pub type_guid: Uuid,
    pub partition_guid: Uuid,
    pub start_lba: u64,
    pub sectors: u64,
    pub label: Option<String>,
    pub fs_uuid: Option<Uuid>,
}

impl PartitionReport {
    fn from_plan(p: &PartitionPlan) -> Self {
        PartitionReport {
            number: p.number(),
            name: p.role.gpt_name().to_owned(),
            type_guid: p.role.type_guid(),
            partition_guid: p.partition_guid,
            start_lba: p.start_lba,
            sectors: p.sectors,
            label: p.role.label().map(str::to_owned),
            // FAT has a 32-bit volume id, not a UUID: report what blkid shows for ext4 only.
            fs_uuid: if p.role.filesystem() == Some(plan::FsKind::Ext4) {
                p.fs_uuid
            } else {
                None
            },
        }
    }
}

/// Measure the trees and plan the disk without writing anything.
pub fn plan(input: &DiskInput) -> Result<(DiskPlan, content::TreeUsage, content::TreeUsage)> {
    for (what, dir) in [
        ("root tree", &input.root_tree),
        ("boot tree", &input.boot_tree),
    ] {
        if !dir.is_dir() {
            bail!("the {what} {} is not a directory", dir.display());
        }
    }
    let root = content::measure(&input.root_tree)?;
    let boot = content::measure(&input.boot_tree)?;
    let plan = DiskPlan::new(&PlanRequest {
        size: input.size,
        boot_size: input.boot_size,
        esp_size: input.esp_size,
        root_content: root.fs_bytes(),
        boot_content: boot.fs_bytes(),
        seed: input.seed.clone(),
    })
    .with_context(|| {
        format!(
            "planning the disk for {} and {}",
            input.root_tree.display(),
            input.boot_tree.display()
        )
    })?;
    Ok((plan, root, boot))
}

/// Build the raw disk image at `out`.
pub fn build(input: &DiskInput, out: &Path) -> Result<DiskReport> {
    let step = progress::step(format!("disk image {}", out.display()));
    if input.firmware.is_empty() {
        bail!("no firmware selected: the disk needs at least one of bios, uefi");
    }
    let (plan, root_usage, boot_usage) = plan(input)?;
    step.note(format!(
        "{} MiB: root {} MiB, /boot {} MiB, ESP {} MiB",
        plan.size / plan::MIB,
        plan.partition(PartitionRole::Root).size() / plan::MIB,
        plan.partition(PartitionRole::Boot).size() / plan::MIB,
        plan.partition(PartitionRole::Esp).size() / plan::MIB
    ));

    let out_dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("creating directory {}", out_dir.display()))?;
    // Scratch files (GRUB cores, the ESP image) live next to the output, on the same
    // filesystem, and vanish with this handle whatever happens.
    let work = tempfile::Builder::new()
        .prefix(".nodeimg-disk.")
        .tempdir_in(out_dir)
        .with_context(|| format!("creating a work directory in {}", out_dir.display()))?;
    let modules_dir = input
        .grub_modules_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(grub::DEFAULT_MODULES_DIR));
    let bios = input.firmware.contains(&Firmware::Bios);
    let uefi = input.firmware.contains(&Firmware::Uefi);

    let mut esp_files = Vec::new();
    if uefi {
        let efi = work.path().join("BOOTX64.EFI");
        grub::mkimage(&modules_dir, grub::Target::Efi, work.path(), &efi)?;
        esp_files.push(esp::EspFile {
            source: efi,
            dest: "EFI/BOOT/BOOTX64.EFI".to_owned(),
        });
    }
    let core_img = work.path().join("core.img");
    if bios {
        grub::mkimage(&modules_dir, grub::Target::Bios, work.path(), &core_img)?;
    }
    let esp_img = work.path().join("esp.fat");
    esp::make(
        &esp_img,
        plan.partition(PartitionRole::Esp),
        &esp_files,
        input.source_date_epoch,
    )?;

    let mut image = AtomicFile::create(out)?;
    image
        .file()
        .set_len(plan.size)
        .with_context(|| format!("sizing {}", image.temp_path().display()))?;
    let tmp_path = image.temp_path().to_owned();
    ext4::make(
        &tmp_path,
        plan.partition(PartitionRole::Boot),
        &input.boot_tree,
        input.source_date_epoch,
    )?;
    ext4::make(
        &tmp_path,
        plan.partition(PartitionRole::Root),
        &input.root_tree,
        input.source_date_epoch,
    )?;
    let esp_part = plan.partition(PartitionRole::Esp);
    sparse::copy_into(&esp_img, image.file(), esp_part.offset())
        .context("copying the ESP into the disk image")?;
    let len = image
        .file()
        .metadata()
        .context("inspecting the disk image")?
        .len();
    if len != plan.size {
        bail!(
            "the disk image grew to {len} bytes while writing filesystems (planned {})",
            plan.size
        );
    }
    // The partition table goes in last: mke2fs and the copies above only touch their own
    // partitions, and the BIOS embedding below must read the final protective MBR.
    gpt_table::write(image.file(), &plan)?;
    if bios {
        let boot_img_path = grub::platform_dir(&modules_dir, grub::Target::Bios)?.join("boot.img");
        let boot_img = std::fs::read(&boot_img_path)
            .with_context(|| format!("reading {}", boot_img_path.display()))?;
        let core =
            std::fs::read(&core_img).with_context(|| format!("reading {}", core_img.display()))?;
        grub::embed_bios(
            image.file(),
            &boot_img,
            &core,
            plan.partition(PartitionRole::BiosBoot),
        )?;
    }
    let allocated = {
        use std::os::unix::fs::MetadataExt;
        image
            .file()
            .metadata()
            .context("inspecting the disk image")?
            .blocks()
            * 512
    };
    image.commit()?;
    step.done_with(&format!("{} MiB allocated", allocated / plan::MIB));

    Ok(DiskReport {
        path: out.to_owned(),
        size: plan.size,
        allocated,
        disk_guid: plan.disk_guid,
        partitions: plan
            .partitions
            .iter()
            .map(PartitionReport::from_plan)
            .collect(),
        root_content_bytes: root_usage.fs_bytes(),
        boot_content_bytes: boot_usage.fs_bytes(),
        firmware: input.firmware.clone(),
    })
}
