//! The qemu harness for end-to-end tests (enable the `qemu` feature).
//!
//! There is one runner, `nodeimg_builder::boot` (also behind `nodeimg boot`); this module
//! re-exports it under the names tests use.

pub use nodeimg_builder::boot::kvm::{best_accel, probe as probe_kvm, ACCEL_ENV, PROBE_KERNEL_ENV};
pub use nodeimg_builder::boot::seed::{
    from_dir as seed_from_dir, from_user_data as seed_from_user_data,
};
pub use nodeimg_builder::boot::serial::{clean as clean_serial, report_values};
pub use nodeimg_builder::boot::test_disk::boot_sector_disk;
pub use nodeimg_builder::boot::{
    boot_to_marker, Accel, AccelChoice, BootReport, DirectKernel, DiskFormat, ExtraDisk, Firmware,
    Machine, MarkerHit, UserNet, Vm, VmConfig,
};
