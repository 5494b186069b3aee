//! The GPT plan: which partitions the disk has, where they start, how big they are, and the
//! identifiers (disk GUID, partition GUIDs, filesystem UUIDs) derived from a seed so that the
//! same commit always gives the same disk, byte for byte.
//!
//! Layout (reference: crates-and-formats.md, "GPT layout used"), every start and size aligned to
//! 1 MiB:
//!
//! | # | GPT name   | type                              | size              |
//! |---|------------|-----------------------------------|-------------------|
//! | 1 | BIOS-BOOT  | BIOS boot                         | 1 MiB             |
//! | 2 | EFI-SYSTEM | EFI System (FAT32, label `ESP`)   | `esp_size`        |
//! | 3 | boot       | XBOOTLDR (ext4, label `boot`)     | `boot_size`       |
//! | 4 | root       | Linux root x86-64 (ext4, `root`)  | the rest          |
//!
//! The first MiB holds the protective MBR and the primary GPT, the last MiB the backup GPT.

use std::fmt;

use nodeimg_common::digest::Sha256Hex;
use uuid::Uuid;

pub const SECTOR: u64 = 512;
pub const MIB: u64 = 1 << 20;
/// Partition starts and sizes are multiples of this (in bytes).
pub const ALIGN: u64 = MIB;
/// Sectors one GPT copy takes besides its header: 128 entries of 128 bytes.
const GPT_ENTRY_SECTORS: u64 = 128 * 128 / SECTOR;

/// Smallest partitions the plan accepts. The ESP minimum is what FAT32 needs with 512-byte
/// clusters (65525 clusters plus FATs and reserved sectors); the ext4 minimums leave room for
/// the journal mke2fs creates.
pub const MIN_ESP: u64 = 33 * MIB;
pub const MIN_BOOT: u64 = 32 * MIB;
pub const MIN_ROOT: u64 = 64 * MIB;
pub const BIOS_BOOT_SIZE: u64 = MIB;

/// Filesystem labels the boot chain looks for (`root=LABEL=root`, fstab `LABEL=boot`, GRUB
/// `search --label boot`).
pub const LABEL_ESP: &str = "ESP";
pub const LABEL_BOOT: &str = "boot";
pub const LABEL_ROOT: &str = "root";

/// Namespace for the UUIDv5 identifiers of nodeimg disks (a fixed random value; changing it
/// changes every identifier of every image).
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1e_2b9c_4d37_4a0e_9c55_83d1_e2a4_7b10);

/// What a partition is for. Closed set: the layout is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartitionRole {
    BiosBoot,
    Esp,
    Boot,
    Root,
}

impl PartitionRole {
    pub const ALL: [PartitionRole; 4] = [
        PartitionRole::BiosBoot,
        PartitionRole::Esp,
        PartitionRole::Boot,
        PartitionRole::Root,
    ];

    /// The discoverable-partitions type GUID.
    pub fn type_guid(self) -> Uuid {
        match self {
            PartitionRole::BiosBoot => Uuid::from_u128(0x21686148_6449_6E6F_744E_656564454649),
            PartitionRole::Esp => Uuid::from_u128(0xC12A7328_F81F_11D2_BA4B_00A0C93EC93B),
            PartitionRole::Boot => Uuid::from_u128(0xBC13C2FF_59E6_4262_A352_B275FD6F7172),
            PartitionRole::Root => Uuid::from_u128(0x4F68BCE3_E8CD_4DB1_96E7_FBCAF984B709),
        }
    }

    /// The GPT partition name (informational; the boot chain uses filesystem labels and, for
    /// systemd-boot, the type GUID).
    pub fn gpt_name(self) -> &'static str {
        match self {
            PartitionRole::BiosBoot => "BIOS-BOOT",
            PartitionRole::Esp => "EFI-SYSTEM",
            PartitionRole::Boot => "boot",
            PartitionRole::Root => "root",
        }
    }

    pub fn number(self) -> u32 {
        match self {
            PartitionRole::BiosBoot => 1,
            PartitionRole::Esp => 2,
            PartitionRole::Boot => 3,
            PartitionRole::Root => 4,
        }
    }

    pub fn filesystem(self) -> Option<FsKind> {
        match self {
            PartitionRole::BiosBoot => None,
            PartitionRole::Esp => Some(FsKind::Vfat),
            PartitionRole::Boot | PartitionRole::Root => Some(FsKind::Ext4),
        }
    }

    pub fn label(self) -> Option<&'static str> {
        match self {
            PartitionRole::BiosBoot => None,
            PartitionRole::Esp => Some(LABEL_ESP),
            PartitionRole::Boot => Some(LABEL_BOOT),
            PartitionRole::Root => Some(LABEL_ROOT),
        }
    }

    fn min_size(self) -> u64 {
        match self {
            PartitionRole::BiosBoot => BIOS_BOOT_SIZE,
            PartitionRole::Esp => MIN_ESP,
            PartitionRole::Boot => MIN_BOOT,
            PartitionRole::Root => MIN_ROOT,
        }
    }
}

impl fmt::Display for PartitionRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PartitionRole::BiosBoot => "BIOS boot",
            PartitionRole::Esp => "EFI system",
            PartitionRole::Boot => "/boot",
            PartitionRole::Root => "root",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Ext4,
    Vfat,
}

/// One planned partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    pub role: PartitionRole,
    pub partition_guid: Uuid,
    /// First sector (512 bytes).
    pub start_lba: u64,
    pub sectors: u64,
    /// ext4: the filesystem UUID (also used as its directory hash seed). vfat: the low 32 bits
    /// of [`PartitionPlan::vfat_volume_id`] come from it.
    pub fs_uuid: Option<Uuid>,
}

impl PartitionPlan {
    pub fn number(&self) -> u32 {
        self.role.number()
    }
    pub fn offset(&self) -> u64 {
        self.start_lba * SECTOR
    }
    pub fn size(&self) -> u64 {
        self.sectors * SECTOR
    }
    pub fn end_lba(&self) -> u64 {
        self.start_lba + self.sectors - 1
    }
    /// The FAT volume id (what `blkid` shows as `UUID=XXXX-XXXX`).
    pub fn vfat_volume_id(&self) -> Option<u32> {
        match (self.role.filesystem(), self.fs_uuid) {
            (Some(FsKind::Vfat), Some(u)) => Some(u.as_u128() as u32),
            _ => None,
        }
    }
}

/// The whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    /// Total size in bytes (a multiple of 1 MiB).
    pub size: u64,
    pub disk_guid: Uuid,
    /// In partition-number order.
    pub partitions: Vec<PartitionPlan>,
}

/// What the plan is made from.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    /// Total disk size; `None` fits it to the content ([`fitted_root_size`]).
    pub size: Option<u64>,
    pub boot_size: u64,
    pub esp_size: u64,
    /// What the root filesystem holds ([`crate::disk::content::TreeUsage::fs_bytes`]).
    pub root_content: u64,
    /// What `/boot` holds.
    pub boot_content: u64,
    /// Identifiers are derived from this (the commit checksum).
    pub seed: Sha256Hex,
}

/// Why a plan was rejected. Callers (and tests) branch on the kind of problem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(
        "disk size {given} is too small: the content needs at least {needed} \
         (root filesystem content {root_content})"
    )]
    DiskTooSmall {
        needed: Bytes,
        given: Bytes,
        root_content: Bytes,
    },
    #[error("{role} partition size {given} is too small: it needs at least {needed}")]
    PartitionTooSmall {
        role: PartitionRole,
        needed: Bytes,
        given: Bytes,
    },
    #[error("{what} {value} is not a multiple of 1 MiB")]
    Misaligned { what: String, value: Bytes },
    #[error("partitions {a} and {b} overlap")]
    Overlap { a: u32, b: u32 },
    #[error(
        "partition {number} (sectors {start}..={end}) lies outside the usable sectors \
         {first_usable}..={last_usable}"
    )]
    OutsideUsable {
        number: u32,
        start: u64,
        end: u64,
        first_usable: u64,
        last_usable: u64,
    },
    #[error("partition {number} has the wrong type, number or order for the fixed layout")]
    Layout { number: u32 },
}

/// A byte count that prints itself in MiB (errors are read by people).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % MIB == 0 {
            write!(f, "{} MiB", self.0 / MIB)
        } else {
            write!(
                f,
                "{} bytes ({:.1} MiB)",
                self.0,
                self.0 as f64 / MIB as f64
            )
        }
    }
}

pub fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Smallest root filesystem that holds `content` bytes: ext4 metadata (inode tables ~1.6 %,
/// 5 % reserved blocks, bitmaps) is covered by 10 %, the journal and slack by 64 MiB.
pub fn min_root_size(content: u64) -> u64 {
    round_up(content + content / 10 + 64 * MIB, MIB).max(MIN_ROOT)
}

/// Root partition size when the disk size is not given:
///
/// `root = round_up_MiB(content × 1.1 + content + 256 MiB)`
///
/// - `content × 1.1`: the content itself plus ext4 metadata and reserved blocks;
/// - `+ content`: room for one more deployment. An upgrade pulls a new commit into the same
///   repository; in the worst case (every object changed) that is the whole content again;
/// - `+ 256 MiB`: headroom for the journal, `/var` and logs until the node's real disk is
///   grown.
///
/// Images are sparse, so the unused space costs no bytes in raw/qcow2 files.
pub fn fitted_root_size(content: u64) -> u64 {
    round_up(content + content / 10 + content + 256 * MIB, MIB).max(MIN_ROOT)
}

/// Smallest `/boot` that holds `content`: ext4 overhead as for root, journal ≤ 16 MiB at these
/// sizes.
pub fn min_boot_size(content: u64) -> u64 {
    round_up(content + content / 10 + 24 * MIB, MIB).max(MIN_BOOT)
}

/// Bytes before the first partition and after the last: 1 MiB each (GPT copies, alignment).
const RESERVED: u64 = 2 * MIB;

impl DiskPlan {
    pub fn new(req: &PlanRequest) -> Result<DiskPlan, PlanError> {
        for (what, v) in [
            ("ESP size", req.esp_size),
            ("/boot size", req.boot_size),
            ("disk size", req.size.unwrap_or(0)),
        ] {
            if v % ALIGN != 0 {
                return Err(PlanError::Misaligned {
                    what: what.to_owned(),
                    value: Bytes(v),
                });
            }
        }
        for (role, given) in [
            (PartitionRole::Esp, req.esp_size),
            (PartitionRole::Boot, req.boot_size),
        ] {
            if given < role.min_size() {
                return Err(PlanError::PartitionTooSmall {
                    role,
                    needed: Bytes(role.min_size()),
                    given: Bytes(given),
                });
            }
        }
        let boot_needed = min_boot_size(req.boot_content);
        if req.boot_size < boot_needed {
            return Err(PlanError::PartitionTooSmall {
                role: PartitionRole::Boot,
                needed: Bytes(boot_needed),
                given: Bytes(req.boot_size),
            });
        }
        let fixed = RESERVED + BIOS_BOOT_SIZE + req.esp_size + req.boot_size;
        let size = match req.size {
            Some(size) => {
                let needed = fixed + min_root_size(req.root_content);
                if size < needed {
                    return Err(PlanError::DiskTooSmall {
                        needed: Bytes(needed),
                        given: Bytes(size),
                        root_content: Bytes(req.root_content),
                    });
                }
                size
            }
            None => fixed + fitted_root_size(req.root_content),
        };
        let root_size = size - fixed;

        let ids = IdDeriver::new(&req.seed);
        let mut start = ALIGN / SECTOR;
        let mut partitions = Vec::new();
        for role in PartitionRole::ALL {
            let bytes = match role {
                PartitionRole::BiosBoot => BIOS_BOOT_SIZE,
                PartitionRole::Esp => req.esp_size,
                PartitionRole::Boot => req.boot_size,
                PartitionRole::Root => root_size,
            };
            partitions.push(PartitionPlan {
                role,
                partition_guid: ids.uuid(&format!("partition/{}", role.number())),
                start_lba: start,
                sectors: bytes / SECTOR,
                fs_uuid: role
                    .filesystem()
                    .map(|_| ids.uuid(&format!("filesystem/{}", role.number()))),
            });
            start += bytes / SECTOR;
        }
        let plan = DiskPlan {
            size,
            disk_guid: ids.uuid("disk"),
            partitions,
        };
        plan.validate()?;
        Ok(plan)
    }

    pub fn total_sectors(&self) -> u64 {
        self.size / SECTOR
    }

    /// First sector a partition may use: after the protective MBR, the primary header and its
    /// 128-entry array.
    pub fn first_usable_lba(&self) -> u64 {
        2 + GPT_ENTRY_SECTORS
    }

    /// Last sector a partition may use: before the backup array and backup header.
    pub fn last_usable_lba(&self) -> u64 {
        self.total_sectors() - 2 - GPT_ENTRY_SECTORS
    }

    pub fn partition(&self, role: PartitionRole) -> &PartitionPlan {
        self.partitions
            .iter()
            .find(|p| p.role == role)
            .expect("every role is planned")
    }

    /// Checks that hold for every plan written to disk: the fixed layout, 1 MiB alignment,
    /// minimum sizes, all partitions inside the usable sectors, no two overlapping.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.size % ALIGN != 0 {
            return Err(PlanError::Misaligned {
                what: "disk size".to_owned(),
                value: Bytes(self.size),
            });
        }
        if self.partitions.len() != PartitionRole::ALL.len() {
            return Err(PlanError::Layout {
                number: self.partitions.len() as u32,
            });
        }
        for (p, role) in self.partitions.iter().zip(PartitionRole::ALL) {
            if p.role != role {
                return Err(PlanError::Layout { number: p.number() });
            }
            if p.offset() % ALIGN != 0 || p.size() % ALIGN != 0 {
                return Err(PlanError::Misaligned {
                    what: format!("partition {} ({role})", p.number()),
                    value: Bytes(if p.offset() % ALIGN != 0 {
                        p.offset()
                    } else {
                        p.size()
                    }),
                });
            }
            if p.size() < role.min_size() {
                return Err(PlanError::PartitionTooSmall {
                    role,
                    needed: Bytes(role.min_size()),
                    given: Bytes(p.size()),
                });
            }
            if p.sectors == 0
                || p.start_lba < self.first_usable_lba()
                || p.end_lba() > self.last_usable_lba()
            {
                return Err(PlanError::OutsideUsable {
                    number: p.number(),
                    start: p.start_lba,
                    end: p.start_lba + p.sectors.saturating_sub(1),
                    first_usable: self.first_usable_lba(),
                    last_usable: self.last_usable_lba(),
                });
            }
        }
        for (i, a) in self.partitions.iter().enumerate() {
            for b in &self.partitions[i + 1..] {
                if a.start_lba <= b.end_lba() && b.start_lba <= a.end_lba() {
                    return Err(PlanError::Overlap {
                        a: a.number(),
                        b: b.number(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Derives stable identifiers: UUIDv5 in nodeimg's namespace over `seed/purpose`.
#[derive(Debug)]
pub struct IdDeriver {
    seed: String,
}

impl IdDeriver {
    pub fn new(seed: &Sha256Hex) -> Self {
        IdDeriver {
            seed: seed.as_str().to_owned(),
        }
    }

    pub fn uuid(&self, purpose: &str) -> Uuid {
        Uuid::new_v5(&ID_NAMESPACE, format!("{}/{purpose}", self.seed).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(c: char) -> Sha256Hex {
        c.to_string().repeat(64).parse().unwrap()
    }

    fn req(size: Option<u64>) -> PlanRequest {
        PlanRequest {
            size,
            boot_size: 384 * MIB,
            esp_size: 127 * MIB,
            root_content: 100 * MIB,
            boot_content: 40 * MIB,
            seed: seed('a'),
        }
    }

    #[test]
    fn reference_layout_offsets() {
        let plan = DiskPlan::new(&req(Some(2048 * MIB))).unwrap();
        let starts: Vec<(u64, u64)> = plan
            .partitions
            .iter()
            .map(|p| (p.start_lba, p.sectors))
            .collect();
        // The table in crates-and-formats.md: 2048 / 4096 / 264192 / 1050624.
        assert_eq!(
            starts,
            vec![
                (2048, 2048),
                (4096, 127 * 2048),
                (264192, 384 * 2048),
                (1050624, (2048 - 2 - 1 - 127 - 384) * 2048),
            ]
        );
        let root = plan.partition(PartitionRole::Root);
        assert_eq!(root.offset() + root.size(), plan.size - MIB);
        assert!(root.end_lba() <= plan.last_usable_lba());
        assert_eq!(plan.last_usable_lba(), 2048 * 2048 - 34);
        for p in &plan.partitions {
            assert_eq!(p.offset() % MIB, 0);
            assert_eq!(p.size() % MIB, 0);
        }
    }

    #[test]
    fn identifiers_are_deterministic_and_distinct() {
        let a = DiskPlan::new(&req(None)).unwrap();
        let b = DiskPlan::new(&req(None)).unwrap();
        assert_eq!(a, b);
        let mut other = req(None);
        other.seed = seed('b');
        let c = DiskPlan::new(&other).unwrap();
        assert_ne!(a.disk_guid, c.disk_guid);
        let mut ids: Vec<Uuid> = vec![a.disk_guid];
        for p in &a.partitions {
            ids.push(p.partition_guid);
            ids.extend(p.fs_uuid);
            assert_ne!(p.partition_guid, c.partition(p.role).partition_guid);
        }
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "every identifier differs");
        assert_eq!(a.partitions[0].fs_uuid, None);
        assert!(a.partition(PartitionRole::Esp).vfat_volume_id().is_some());
    }

    #[test]
    fn fitted_size_follows_formula() {
        let plan = DiskPlan::new(&req(None)).unwrap();
        // root = 100 + 10 + 100 + 256 MiB
        assert_eq!(plan.partition(PartitionRole::Root).size(), 466 * MIB);
        assert_eq!(plan.size, (2 + 1 + 127 + 384 + 466) * MIB);
        assert_eq!(fitted_root_size(1), MIN_ROOT.max(257 * MIB));
    }

    #[test]
    fn too_small_disk_names_needed_and_given() {
        let err = DiskPlan::new(&req(Some(600 * MIB))).unwrap_err();
        // needed = 2 + 1 + 127 + 384 + (100 + 10 + 64) MiB
        assert_eq!(
            err,
            PlanError::DiskTooSmall {
                needed: Bytes(688 * MIB),
                given: Bytes(600 * MIB),
                root_content: Bytes(100 * MIB),
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("688 MiB") && msg.contains("600 MiB"), "{msg}");
    }

    #[test]
    fn small_partitions_and_misalignment_are_rejected() {
        let mut r = req(None);
        r.esp_size = 16 * MIB;
        assert!(matches!(
            DiskPlan::new(&r),
            Err(PlanError::PartitionTooSmall {
                role: PartitionRole::Esp,
                ..
            })
        ));
        let mut r = req(None);
        r.boot_content = 400 * MIB;
        assert!(matches!(
            DiskPlan::new(&r),
            Err(PlanError::PartitionTooSmall {
                role: PartitionRole::Boot,
                ..
            })
        ));
        let mut r = req(Some(2048 * MIB + 4096));
        assert!(matches!(
            DiskPlan::new(&r),
            Err(PlanError::Misaligned { .. })
        ));
        r.size = None;
        r.esp_size = 100 * MIB + 512;
        assert!(matches!(
            DiskPlan::new(&r),
            Err(PlanError::Misaligned { .. })
        ));
    }

    #[test]
    fn validate_rejects_overlap_and_out_of_range() {
        let good = DiskPlan::new(&req(Some(1024 * MIB))).unwrap();

        let mut overlap = good.clone();
        overlap.partitions[2].start_lba -= 2048; // /boot now starts inside the ESP
        assert_eq!(overlap.validate(), Err(PlanError::Overlap { a: 2, b: 3 }));

        let mut past_end = good.clone();
        past_end.partitions[3].sectors += 2048; // root runs into the backup GPT
        assert!(matches!(
            past_end.validate(),
            Err(PlanError::OutsideUsable { number: 4, .. })
        ));

        let mut unaligned = good.clone();
        unaligned.partitions[1].start_lba += 1;
        assert!(matches!(
            unaligned.validate(),
            Err(PlanError::Misaligned { .. })
        ));

        let mut reordered = good;
        reordered.partitions.swap(0, 1);
        assert!(matches!(
            reordered.validate(),
            Err(PlanError::Layout { .. })
        ));
    }
}
