//! The `nodeboot install` subcommand: the request from flags or from the kernel command line,
//! waiting for the disk to appear, and one clear line on the console when it fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::request::{ImageUrl, InstallRequest, TargetDevice};
use super::Host;

/// Install a nodeimg raw disk image over the network (normally run by the installer
/// initramfs; the request comes from `nodeboot.install.*` on the kernel command line).
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Target disk (e.g. /dev/sda); with --image-url and --sha256 instead of the kernel
    /// command line.
    #[arg(long, value_name = "DEVICE", requires_all = ["image_url", "sha256"])]
    pub device: Option<String>,
    /// Raw image URL (http, https or file; `.zst` or zstd content is decompressed).
    #[arg(long, value_name = "URL", requires_all = ["device", "sha256"])]
    pub image_url: Option<String>,
    /// sha256 of the uncompressed raw image.
    #[arg(long, value_name = "HEX", requires_all = ["device", "image_url"])]
    pub sha256: Option<String>,
    /// Node config URL placed into the installed system as /etc/nodeboot/config.toml.
    #[arg(long, value_name = "URL")]
    pub config_url: Option<String>,
    /// Overwrite a disk that already has a partition table or file system.
    #[arg(long)]
    pub wipe: bool,
    /// Do not reboot after a successful install.
    #[arg(long)]
    pub no_reboot: bool,
    /// Kernel command line to read the request (and `BOOTIF=`) from.
    #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
    pub cmdline: PathBuf,
    /// How long to wait for the target device to appear (udev may still be probing).
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub device_timeout: u64,
    /// Root for /sys lookups (tests).
    #[arg(long, hide = true, default_value = "/")]
    pub root: PathBuf,
}

/// Run `nodeboot install`; progress and the failure line go to stderr (the console).
pub fn run(args: InstallArgs, out: &mut dyn Write) -> Result<()> {
    let mut console = std::io::stderr();
    let result = install(&args, &mut console);
    if let Err(e) = &result {
        // One line first, for a screen or a serial log; details follow from `main`.
        let _ = writeln!(console, "nodeboot install: FAILED: {}", one_line(e));
    } else {
        writeln!(out, "nodeboot install: done")?;
    }
    result
}

fn install(args: &InstallArgs, console: &mut dyn Write) -> Result<()> {
    let req = request(args)?;
    wait_for(
        req.device.path(),
        Duration::from_secs(args.device_timeout),
        console,
    )?;
    let host = Host {
        cmdline_path: args.cmdline.clone(),
        root: args.root.clone(),
        reboot: if args.no_reboot {
            None
        } else {
            Host::default().reboot
        },
        ..Host::default()
    };
    super::run(&req, &host, console)?;
    Ok(())
}

fn request(args: &InstallArgs) -> Result<InstallRequest> {
    if let (Some(device), Some(url), Some(sha)) = (&args.device, &args.image_url, &args.sha256) {
        return Ok(InstallRequest {
            device: device.parse::<TargetDevice>().context("--device")?,
            image_url: url.parse::<ImageUrl>().context("--image-url")?,
            sha256: sha.parse().context("--sha256")?,
            config_url: args.config_url.clone(),
            wipe: args.wipe,
        });
    }
    let origin = args.cmdline.display().to_string();
    let line = std::fs::read_to_string(&args.cmdline)
        .with_context(|| format!("reading the kernel command line {origin}"))?;
    let Some(mut req) = InstallRequest::from_cmdline(&line, &origin)? else {
        bail!(
            "{origin} has no nodeboot.install.* parameters; pass --device, --image-url and --sha256"
        );
    };
    req.wipe |= args.wipe;
    if args.config_url.is_some() {
        req.config_url = args.config_url.clone();
    }
    Ok(req)
}

fn wait_for(path: &Path, timeout: Duration, console: &mut dyn Write) -> Result<()> {
    let started = Instant::now();
    let mut said = false;
    while !path.exists() {
        if started.elapsed() >= timeout {
            bail!(
                "target device {} did not appear within {} s",
                path.display(),
                timeout.as_secs()
            );
        }
        if !said {
            let _ = writeln!(console, "nodeboot install: waiting for {}", path.display());
            said = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

/// The error chain on one line (tool output with newlines is cut to its first line).
fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string().lines().next().unwrap_or("").to_owned())
        .collect::<Vec<_>>()
        .join(": ")
}
