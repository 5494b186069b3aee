//! What to install, and where: from the kernel command line of the installer initramfs
//! (`nodeboot.install.*`, written by `nodeimg`'s PXE configs) or from command-line flags.
//!
//! Everything is validated while parsing so that a typo is reported before the disk is
//! touched: the URL scheme, the digest's form, the device path.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use nodeimg_common::digest::Sha256Hex;

use crate::sources::cmdline::{parse_params, CONFIG_PARAM};

/// Kernel parameter naming the target disk.
pub const DEVICE_PARAM: &str = "nodeboot.install.device";
/// Kernel parameter naming the raw image URL.
pub const IMAGE_URL_PARAM: &str = "nodeboot.install.image-url";
/// Kernel parameter with the sha256 of the raw (uncompressed) image.
pub const SHA256_PARAM: &str = "nodeboot.install.sha256";
/// Kernel parameter allowing to overwrite a disk that already has a partition table or file
/// system (`1`/`yes`/`true`).
pub const WIPE_PARAM: &str = "nodeboot.install.wipe";

/// Where the raw disk image comes from. Only schemes the installer can stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUrl(url::Url);

impl ImageUrl {
    pub fn url(&self) -> &url::Url {
        &self.0
    }

    /// A `.zst` name means zstd even before the first bytes arrive (the magic is checked too).
    pub fn names_zstd(&self) -> bool {
        self.0.path().ends_with(".zst")
    }
}

impl FromStr for ImageUrl {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let url = url::Url::parse(s).with_context(|| format!("`{s}` is not a URL"))?;
        match url.scheme() {
            "http" | "https" | "file" => Ok(ImageUrl(url)),
            other => bail!("`{s}`: unsupported scheme `{other}` (use http, https or file)"),
        }
    }
}

impl fmt::Display for ImageUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The target disk: an absolute path (a block device on a real machine, a regular file in
/// tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetDevice(PathBuf);

impl TargetDevice {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl FromStr for TargetDevice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let p = Path::new(s);
        if !p.is_absolute() {
            bail!("target device `{s}` is not an absolute path (e.g. /dev/sda, /dev/nvme0n1)");
        }
        Ok(TargetDevice(p.to_path_buf()))
    }
}

impl fmt::Display for TargetDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

/// One installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallRequest {
    pub device: TargetDevice,
    pub image_url: ImageUrl,
    /// sha256 of the uncompressed raw image (what `manifest.json` records for `*.raw`).
    pub sha256: Sha256Hex,
    /// Node config URL (`${mac}`, `${uuid}`, `${hostname}` substituted), placed into the
    /// installed system as `/etc/nodeboot/config.toml`.
    pub config_url: Option<String>,
    /// Overwrite a disk that already carries a partition table or file system.
    pub wipe: bool,
}

impl InstallRequest {
    /// The request on a kernel command line. `None` when it has no `nodeboot.install.*`
    /// parameter at all; an error when it has some but not all, or a bad value.
    pub fn from_cmdline(line: &str, origin: &str) -> Result<Option<InstallRequest>> {
        let params = parse_params(line);
        // The last occurrence wins, as for the kernel's own parameters.
        let last = |key: &str| {
            params
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone().unwrap_or_default())
        };
        let device = last(DEVICE_PARAM);
        let image = last(IMAGE_URL_PARAM);
        let sha = last(SHA256_PARAM);
        if device.is_none() && image.is_none() && sha.is_none() {
            return Ok(None);
        }
        let need = |v: Option<String>, key: &str| {
            v.filter(|v| !v.is_empty())
                .with_context(|| format!("{origin}: `{key}=` is missing or empty"))
        };
        let device = need(device, DEVICE_PARAM)?;
        let image = need(image, IMAGE_URL_PARAM)?;
        let sha = need(sha, SHA256_PARAM)?;
        let wipe = match last(WIPE_PARAM).as_deref() {
            None => false,
            Some(v) => parse_bool(v).with_context(|| format!("{origin}: `{WIPE_PARAM}={v}`"))?,
        };
        Ok(Some(InstallRequest {
            device: device
                .parse()
                .with_context(|| format!("{origin}: `{DEVICE_PARAM}`"))?,
            image_url: image
                .parse()
                .with_context(|| format!("{origin}: `{IMAGE_URL_PARAM}`"))?,
            sha256: sha
                .parse()
                .with_context(|| format!("{origin}: `{SHA256_PARAM}`"))?,
            config_url: last(CONFIG_PARAM).filter(|u| !u.is_empty()),
            wipe,
        }))
    }
}

fn parse_bool(v: &str) -> Result<bool> {
    match v {
        "" | "1" | "yes" | "true" | "on" => Ok(true),
        "0" | "no" | "false" | "off" => Ok(false),
        other => bail!("`{other}` is not a boolean (1/0, yes/no, true/false)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn full_request_from_cmdline() {
        let line = format!(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 nodeboot.install.device=/dev/vda \
             nodeboot.install.image-url=http://10.0.2.2:8080/k8s-node.raw.zst \
             nodeboot.install.sha256=sha256:{} nodeboot.install.wipe \
             nodeboot.config=http://10.0.2.2:8080/nodes/${{mac}}.toml",
            SHA.to_uppercase()
        );
        let r = InstallRequest::from_cmdline(&line, "/proc/cmdline")
            .unwrap()
            .unwrap();
        assert_eq!(r.device.path(), Path::new("/dev/vda"));
        assert!(r.image_url.names_zstd());
        assert_eq!(r.sha256.as_str(), SHA);
        assert!(r.wipe);
        assert_eq!(
            r.config_url.as_deref(),
            Some("http://10.0.2.2:8080/nodes/${mac}.toml")
        );
    }

    #[test]
    fn absent_and_partial_requests() {
        assert_eq!(
            InstallRequest::from_cmdline("root=LABEL=root rw", "c").unwrap(),
            None
        );
        let err = InstallRequest::from_cmdline("nodeboot.install.device=/dev/sda", "c")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nodeboot.install.image-url"), "{err}");
        let line = format!(
            "nodeboot.install.device=sda nodeboot.install.image-url=http://h/i.raw nodeboot.install.sha256={SHA}"
        );
        let err = format!(
            "{:#}",
            InstallRequest::from_cmdline(&line, "c").unwrap_err()
        );
        assert!(err.contains("absolute"), "{err}");
        let line = format!(
            "nodeboot.install.device=/dev/sda nodeboot.install.image-url=ftp://h/i.raw nodeboot.install.sha256={SHA}"
        );
        let err = format!(
            "{:#}",
            InstallRequest::from_cmdline(&line, "c").unwrap_err()
        );
        assert!(err.contains("unsupported scheme `ftp`"), "{err}");
        let line = "nodeboot.install.device=/dev/sda nodeboot.install.image-url=http://h/i.raw nodeboot.install.sha256=abc";
        let err = format!("{:#}", InstallRequest::from_cmdline(line, "c").unwrap_err());
        assert!(err.contains("not a sha256 digest"), "{err}");
        let line = format!(
            "nodeboot.install.device=/dev/sda nodeboot.install.image-url=http://h/i.raw nodeboot.install.sha256={SHA} nodeboot.install.wipe=maybe"
        );
        let err = format!(
            "{:#}",
            InstallRequest::from_cmdline(&line, "c").unwrap_err()
        );
        assert!(err.contains("not a boolean"), "{err}");
    }
}
