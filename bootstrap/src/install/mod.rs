//! `nodeboot install`: the built-in network installer. Run from the installer initramfs
//! (see `builder/src/kickstart/installer.rs`), it streams the published raw image onto a
//! disk, grows the root partition, places the node config and reboots into the new system.
//!
//! Failure guarantee: until the very last step the disk carries no partition table. The
//! image is written without its first MiB (protective MBR, GRUB boot code, primary GPT) and
//! without the backup GPT; both are written only after the sha256 of the whole image
//! matched and the root file system was grown and configured. Any failure before that
//! zeroes those regions again, so a machine never boots a half-written system. See
//! docs/install.md.

pub mod command;
pub mod layout;
pub mod node_config;
pub mod request;
pub mod rootfs;
pub mod stream;
pub mod target;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nodeimg_common::digest::Sha256Hex;
use nodeimg_common::Cmd;

pub use request::InstallRequest;

use crate::sources::Net;
use layout::Plan;
use stream::{Progress, TAIL_HOLD};
use target::{Target, SECTOR};

/// The installer's surroundings, injectable for tests.
#[derive(Debug, Clone)]
pub struct Host {
    /// Kernel command line file, for `${mac}` from `BOOTIF=` in the config URL.
    pub cmdline_path: PathBuf,
    /// Root under which `/sys` is read (interfaces for `${mac}`, DMI, sector sizes).
    pub root: PathBuf,
    /// Run after a successful install; `None` (`--no-reboot`) returns instead.
    pub reboot: Option<Cmd>,
    /// Image request: connect and per-read timeout, retries before the first byte arrives.
    pub image_net: Net,
    /// Timeout and retries for the node config request.
    pub config_net: Net,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            cmdline_path: "/proc/cmdline".into(),
            root: "/".into(),
            reboot: Some(Cmd::new("systemctl").args(["reboot", "--force"])),
            image_net: Net::new(Duration::from_secs(60), 5, Duration::from_secs(1)),
            config_net: Net::new(Duration::from_secs(15), 5, Duration::from_secs(1)),
        }
    }
}

/// What an install did.
#[derive(Debug, Clone)]
pub struct Installed {
    pub image_len: u64,
    pub sha256: Sha256Hex,
    pub root_partition_len: u64,
    /// Path of the config inside the root file system, when one was placed.
    pub config_path: Option<String>,
    pub elapsed: Duration,
}

/// Install `req`. Progress goes to `console`. Returns after the reboot command was started,
/// or at once when `host.reboot` is `None`.
pub fn run(req: &InstallRequest, host: &Host, console: &mut dyn Write) -> Result<Installed> {
    let started = Instant::now();
    // Everything that can be checked without touching the disk comes first.
    let config = match &req.config_url {
        Some(template) => {
            let c = node_config::fetch(template, &host.cmdline_path, &host.root, host.config_net)
                .context("the node config (nothing was written to the disk)")?;
            say(
                console,
                &format!(
                    "node config from {} is valid (role {}, cluster {})",
                    c.url, c.config.role, c.config.cluster.name
                ),
            );
            Some(c)
        }
        None => None,
    };
    let target = Target::open(req.device.path(), &host.root)?;
    let found = target.signatures()?;
    if !found.is_empty() {
        let list: Vec<String> = found.iter().map(ToString::to_string).collect();
        if !req.wipe {
            bail!(
                "{} already holds {}; refusing to overwrite it (nothing was written). Set \
                 nodeboot.install.wipe=1 on the kernel command line (or pass --wipe) to replace it",
                req.device,
                list.join(", ")
            );
        }
        say(
            console,
            &format!("wiping {} (it held {})", req.device, list.join(", ")),
        );
    }
    let mut image = stream::open(&req.image_url, &host.image_net).with_context(|| {
        format!(
            "opening {} (nothing was written to the disk)",
            req.image_url
        )
    })?;
    say(
        console,
        &format!(
            "writing {}{} to {} ({} bytes)",
            req.image_url,
            if image.compressed { " (zstd)" } else { "" },
            req.device,
            target.size()
        ),
    );

    match write_image(req, &target, &mut image, config.as_ref(), console) {
        Ok((plan, sha256, image_len, config_path)) => {
            let installed = Installed {
                image_len,
                sha256,
                root_partition_len: plan.root_len,
                config_path,
                elapsed: started.elapsed(),
            };
            say(
                console,
                &format!(
                    "installed {} on {} in {:.1} s (root partition {} MiB)",
                    req.image_url,
                    req.device,
                    installed.elapsed.as_secs_f64(),
                    plan.root_len >> 20
                ),
            );
            if let Some(reboot) = &host.reboot {
                say(console, "rebooting");
                reboot
                    .run()
                    .context("rebooting after a successful install")?;
            }
            Ok(installed)
        }
        Err(e) => {
            // Whatever went wrong, the disk must not look bootable afterwards.
            let cleanup = unbootable(&target);
            match cleanup {
                Ok(()) => Err(e.context(format!(
                    "install onto {} failed; the disk was left without a partition table (not bootable)",
                    req.device
                ))),
                Err(c) => Err(e.context(format!(
                    "install onto {} failed, and clearing its partition table failed too ({c:#}); do not boot from it",
                    req.device
                ))),
            }
        }
    }
}

/// The part that writes. On error the caller clears the head and the backup GPT region.
fn write_image(
    req: &InstallRequest,
    target: &Target,
    image: &mut stream::ImageStream,
    config: Option<&node_config::FetchedConfig>,
    console: &mut dyn Write,
) -> Result<(Plan, Sha256Hex, u64, Option<String>)> {
    if !target.reads_zeros() {
        // An old table must not survive next to new data: clear both ends first.
        unbootable(target)?;
        target.zero(
            target.size().saturating_sub(TAIL_HOLD as u64),
            TAIL_HOLD as u64,
        )?;
        target.sync()?;
    }
    let streamed = {
        let mut progress = Progress::new(console, image.transfer_size);
        stream::stream_to(image, target, &mut progress)?
    };
    if streamed.sha256 != req.sha256 {
        bail!(
            "sha256 mismatch: the image from {} has sha256 {}, expected {}",
            req.image_url,
            streamed.sha256,
            req.sha256
        );
    }
    say(
        console,
        &format!(
            "sha256 {} verified ({} bytes)",
            streamed.sha256, streamed.len
        ),
    );
    let plan = layout::plan(&streamed, target.size())?;
    for (offset, data) in plan.data_runs() {
        target.write_data_at(offset, &data)?;
    }
    target.sync()?;

    let fs = rootfs::RootFs::new(target.path(), plan.root_offset);
    if plan.root_len > plan.root_len_in_image {
        fs.grow(plan.root_len)?;
        say(
            console,
            &format!(
                "root file system grown from {} MiB to {} MiB",
                plan.root_len_in_image >> 20,
                plan.root_len >> 20
            ),
        );
    }
    let config_path = match config {
        Some(c) => {
            let path = fs.place_config(c.text.as_bytes())?;
            say(console, &format!("node config written to {path}"));
            Some(path)
        }
        None => None,
    };
    target.sync()?;

    // Last: backup GPT, then the head. From here on the disk is complete.
    for (offset, data) in plan.backup_runs() {
        target.write_at(offset, &data)?;
    }
    target.sync()?;
    for (offset, data) in plan.head_runs() {
        target.write_at(offset, &data)?;
    }
    target.sync()?;
    Ok((plan, streamed.sha256, streamed.len, config_path))
}

/// Zero the protective MBR and primary GPT (first MiB) and the backup GPT (last 33
/// sectors): without them no firmware or tool finds a partition, so nothing boots.
fn unbootable(target: &Target) -> Result<()> {
    target.zero(0, stream::HEAD_HOLD as u64)?;
    target.zero(target.size().saturating_sub(33 * SECTOR), 33 * SECTOR)?;
    target.sync()
}

fn say(console: &mut dyn Write, msg: &str) {
    let _ = writeln!(console, "nodeboot install: {msg}");
    tracing::debug!("{msg}");
}
