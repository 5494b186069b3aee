//! Stages `rootfs`, `customize` and `ostreeify`: from packages to an OSTree-ready tree.
//!
//! - [`rootfs`]: Debian packages into a tree with `mmdebstrap` (or an existing tarball or
//!   directory), cached by a key over the base and package set;
//! - [`node`]: the Kubernetes node configuration written into a copy of that tree;
//! - [`ostreeify`]: the tree rearranged into the layout libostree deploys.

pub mod node;
mod node_render;
mod node_units;
mod node_users;
pub mod ostreeify;
pub mod rootfs;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use node_render::{render_node_files, RenderedFile};

/// One installed Debian package, as `dpkg-query -W -f '${Package} ${Version} ${Architecture}'`
/// would print it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Package {
    pub name: String,
    pub version: String,
    pub arch: String,
}

/// `path` inside `root`: `/etc/x` and `etc/x` both give `root/etc/x`.
pub fn in_tree(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The kernel version of a tree: the one directory under `usr/lib/modules` (or `lib/modules`
/// in a tree without merged /usr). A tree with no kernel or several kernels is an error:
/// the image boots exactly one.
pub fn kernel_version(tree: &Path) -> Result<String> {
    let modules = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|p| tree.join(p))
        .find(|p| p.is_dir())
        .with_context(|| {
            format!(
                "no kernel in {}: usr/lib/modules does not exist (the recipe must install a \
                 kernel package such as linux-image-amd64)",
                tree.display()
            )
        })?;
    let mut versions = Vec::new();
    for e in fs::read_dir(&modules).with_context(|| format!("listing {}", modules.display()))? {
        let e = e.with_context(|| format!("listing {}", modules.display()))?;
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            versions.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    versions.sort();
    match versions.len() {
        1 => Ok(versions.remove(0)),
        0 => bail!(
            "no kernel in {}: {} is empty (the recipe must install a kernel package such as \
             linux-image-amd64)",
            tree.display(),
            modules.display()
        ),
        _ => bail!(
            "{} holds several kernels ({}); an image boots exactly one: install one \
             linux-image package",
            modules.display(),
            versions.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_version_needs_exactly_one() {
        let d = tempfile::tempdir().unwrap();
        assert!(kernel_version(d.path())
            .unwrap_err()
            .to_string()
            .contains("no kernel"));
        fs::create_dir_all(d.path().join("usr/lib/modules/6.1.0-9-amd64")).unwrap();
        assert_eq!(kernel_version(d.path()).unwrap(), "6.1.0-9-amd64");
        fs::create_dir_all(d.path().join("usr/lib/modules/6.1.0-10-amd64")).unwrap();
        let e = kernel_version(d.path()).unwrap_err().to_string();
        assert!(e.contains("several kernels"), "{e}");
    }
}
