//! Changes to the installed root file system, made without mounting it: e2fsprogs open the
//! ext4 file system inside the whole-disk target through their `DEVICE?offset=BYTES` syntax
//! (so neither loop devices nor partition device nodes are needed, in tests or in the
//! installer). `resize2fs` grows it to the grown partition; `debugfs` places the node config.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nodeimg_common::Cmd;

/// Where the installed system's nodeboot looks for its config when no other source has one.
pub const CONFIG_PATH_IN_ETC: &str = "nodeboot/config.toml";

/// The ext4 root file system at `offset` bytes into `device`.
#[derive(Debug)]
pub struct RootFs<'a> {
    device: &'a Path,
    offset: u64,
}

impl<'a> RootFs<'a> {
    pub fn new(device: &'a Path, offset: u64) -> Self {
        RootFs { device, offset }
    }

    /// The e2fsprogs "device with I/O options" spelling.
    fn spec(&self) -> OsString {
        let mut s = self.device.as_os_str().to_owned();
        s.push(format!("?offset={}", self.offset));
        s
    }

    /// Grow the file system to `len` bytes. resize2fs does not check the size against the
    /// partition when an offset is given, so `len` must be the partition's exact size.
    pub fn grow(&self, len: u64) -> Result<()> {
        Cmd::new("resize2fs")
            .arg(self.spec())
            .arg(format!("{}K", len / 1024))
            .run()
            .with_context(|| {
                format!(
                    "growing the root file system at offset {} of {} to {len} bytes",
                    self.offset,
                    self.device.display()
                )
            })
    }

    fn debugfs(&self, request: &str) -> Result<String> {
        // -R runs one read-only request; debugfs exits 0 even when the request fails, so
        // callers check what it printed.
        Ok(Cmd::new("debugfs")
            .arg("-R")
            .arg(request)
            .arg(self.spec())
            .output()
            .with_context(|| format!("debugfs `{request}` on {}", self.device.display()))?
            .stdout_str())
    }

    /// Names of the directories in `dir`, from `ls -p` (`/inode/mode/uid/gid/name/size/`).
    fn subdirs(&self, dir: &str) -> Result<Vec<String>> {
        let listing = self.debugfs(&format!("ls -p {dir}"))?;
        let mut out = Vec::new();
        for line in listing.lines() {
            let fields: Vec<&str> = line.split('/').collect();
            if fields.len() < 7 {
                continue;
            }
            let (mode, name) = (fields[2], fields[5]);
            let is_dir = u32::from_str_radix(mode, 8).is_ok_and(|m| m & 0o170000 == 0o040000);
            if is_dir && name != "." && name != ".." {
                out.push(name.to_owned());
            }
        }
        Ok(out)
    }

    /// The `/etc` of the image's only OSTree deployment, as a path inside the file system.
    pub fn deployment_etc(&self) -> Result<String> {
        let osnames = self.subdirs("/ostree/deploy")?;
        let [os] = osnames.as_slice() else {
            bail!(
                "expected exactly one OS under /ostree/deploy in the root file system, found {osnames:?}"
            );
        };
        let dir = format!("/ostree/deploy/{os}/deploy");
        let deployments: Vec<String> = self
            .subdirs(&dir)?
            .into_iter()
            .filter(|d| is_deployment_name(d))
            .collect();
        let [dep] = deployments.as_slice() else {
            bail!(
                "expected exactly one deployment in {dir} of the root file system, found {deployments:?}"
            );
        };
        let etc = format!("{dir}/{dep}/etc");
        if self.subdirs(&etc)?.is_empty() {
            bail!("the deployment's {etc} has no subdirectories: not an OSTree deployment /etc");
        }
        Ok(etc)
    }

    /// Write `content` as `<deployment>/etc/nodeboot/config.toml`, mode 0600, owned by
    /// root, and read it back. Returns the path inside the file system.
    pub fn place_config(&self, content: &[u8]) -> Result<String> {
        let etc = self.deployment_etc()?;
        let dir = format!("{etc}/nodeboot");
        let dest = format!("{etc}/{CONFIG_PATH_IN_ETC}");
        // The config may carry inline join material: stage it in a private directory.
        let tmp = tempfile::Builder::new()
            .prefix("nodeboot-install.")
            .tempdir()
            .context("creating a private temporary directory")?;
        let staged = tmp.path().join("config.toml");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staged)
            .with_context(|| format!("creating {}", staged.display()))?;
        f.write_all(content)
            .with_context(|| format!("writing {}", staged.display()))?;
        drop(f);
        // `mkdir` fails harmlessly when the directory exists, `rm` when the file does not.
        let script = format!(
            "mkdir {dir}\nrm {dest}\nwrite {} {dest}\nsif {dest} mode 0100600\nsif {dest} uid 0\nsif {dest} gid 0\n",
            staged.display()
        );
        let script_path = tmp.path().join("commands");
        std::fs::write(&script_path, script)
            .with_context(|| format!("writing {}", script_path.display()))?;
        Cmd::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script_path)
            .arg(self.spec())
            .run()
            .with_context(|| format!("writing {dest} into the root file system with debugfs"))?;
        let back = Cmd::new("debugfs")
            .arg("-R")
            .arg(format!("cat {dest}"))
            .arg(self.spec())
            .output()
            .with_context(|| format!("reading {dest} back"))?;
        if back.stdout != content {
            bail!(
                "{dest} reads back differently from what was written ({} of {} bytes): debugfs did not write it",
                back.stdout.len(),
                content.len()
            );
        }
        let stat = self.debugfs(&format!("stat {dest}"))?;
        if !stat.contains("Mode:  0600") {
            bail!(
                "{dest} did not get mode 0600: {}",
                stat.lines().next().unwrap_or("")
            );
        }
        Ok(dest)
    }
}

/// `<64 hex>.<serial>`, libostree's deployment directory name.
fn is_deployment_name(name: &str) -> bool {
    match name.split_once('.') {
        Some((csum, serial)) => {
            csum.len() == 64
                && csum.bytes().all(|b| b.is_ascii_hexdigit())
                && !serial.is_empty()
                && serial.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_names() {
        assert!(is_deployment_name(&format!("{}.0", "a".repeat(64))));
        assert!(!is_deployment_name(&format!("{}.origin", "a".repeat(64))));
        assert!(!is_deployment_name("abc.0"));
    }
}
