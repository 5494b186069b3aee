//! Writes a [`DiskPlan`] as a GPT (primary and backup) plus the protective MBR, with the
//! `gpt` crate. The crate places partitions wherever it is told and picks random partition
//! GUIDs, so the plan is validated first and every GUID comes from the plan.

use std::collections::BTreeMap;
use std::fs::File;

use anyhow::{Context, Result};
use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::partition::Partition;
use gpt::partition_types::{OperatingSystem, Type};

use super::plan::DiskPlan;

pub fn write(file: &mut File, plan: &DiskPlan) -> Result<()> {
    plan.validate()
        .context("refusing to write an invalid GPT plan")?;
    let len = file.metadata().context("inspecting the disk image")?.len();
    anyhow::ensure!(
        len == plan.size,
        "disk image is {len} bytes, the plan says {}",
        plan.size
    );

    // The protective partition covers LBA 1 to the end, capped at what 32 bits can say.
    let pmbr_sectors = u32::try_from(plan.total_sectors() - 1).unwrap_or(u32::MAX);
    ProtectiveMBR::with_lb_size(pmbr_sectors)
        .overwrite_lba0(file)
        .context("writing the protective MBR")?;

    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(&mut *file, Some(plan.disk_guid))
        .context("initialising the GPT")?;
    let parts: BTreeMap<u32, Partition> = plan
        .partitions
        .iter()
        .map(|p| {
            (
                p.number(),
                Partition {
                    part_type_guid: Type {
                        guid: p.role.type_guid(),
                        os: OperatingSystem::None,
                    },
                    part_guid: p.partition_guid,
                    first_lba: p.start_lba,
                    last_lba: p.end_lba(),
                    flags: 0,
                    name: p.role.gpt_name().to_owned(),
                },
            )
        })
        .collect();
    disk.update_partitions(parts)
        .context("setting the GPT partition entries")?;
    let header = disk.header();
    anyhow::ensure!(
        header.first_usable == plan.first_usable_lba()
            && header.last_usable == plan.last_usable_lba(),
        "GPT usable range {}..={} differs from the plan's {}..={}",
        header.first_usable,
        header.last_usable,
        plan.first_usable_lba(),
        plan.last_usable_lba()
    );
    disk.write().context("writing the GPT")?;
    Ok(())
}
