//! The PXE inventory: which machine (by MAC address) gets which hostname and node role.
//!
//! ```toml
//! version = 1
//!
//! [roles.init]
//! user-data = "cp-init.toml"        # nodeboot config for this role, relative to this file
//!
//! [[node]]
//! mac = "52:54:00:12:34:56"
//! hostname = "cp-1"
//! role = "init"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer};

pub const INVENTORY_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Inventory {
    pub version: u32,
    /// Per-role defaults, keyed by nodeboot role (`init`, `join-control-plane`, `join-worker`).
    #[serde(default)]
    pub roles: BTreeMap<Role, RoleDefaults>,
    #[serde(default, rename = "node")]
    pub nodes: Vec<InventoryNode>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RoleDefaults {
    /// nodeboot config embedded for machines of this role (relative to the inventory file).
    #[serde(default)]
    pub user_data: Option<PathBuf>,
    /// A URL the node fetches its config from instead (`nodeboot.config=` on the kernel line).
    #[serde(default)]
    pub config_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InventoryNode {
    pub mac: MacAddr,
    pub hostname: Hostname,
    pub role: Role,
    /// Overrides the role's user-data for this machine.
    #[serde(default)]
    pub user_data: Option<PathBuf>,
    /// Install target for the built-in installer; default `--install-device`.
    #[serde(default)]
    pub install_device: Option<String>,
}

/// Roles are nodeboot's own: the inventory must name the same ones the user-data declares.
pub use nodeboot::config::Role;

/// A MAC address, normalised to lower-case colon form.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr([u8; 6]);

impl MacAddr {
    /// `52-54-00-12-34-56`: the form iPXE's `${net0/mac:hexhyp}` and pxelinux use.
    pub fn hyphenated(&self) -> String {
        self.0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join("-")
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s: Vec<String> = self.0.iter().map(|b| format!("{b:02x}")).collect();
        f.write_str(&s.join(":"))
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        let bad = || {
            format!("`{s}` is not a MAC address (expected six hex pairs, e.g. 52:54:00:12:34:56)")
        };
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(&parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(MacAddr(out))
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An RFC 1123 hostname (labels of letters, digits and `-`, at most 253 characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostname(String);

impl Hostname {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Hostname {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if ok {
            Ok(Hostname(s.to_ascii_lowercase()))
        } else {
            Err(format!("`{s}` is not a valid hostname"))
        }
    }
}

impl<'de> Deserialize<'de> for Hostname {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Inventory {
    /// Read and check an inventory file: version, unique MACs and hostnames, relative paths
    /// resolved against the file.
    pub fn load(path: &Path) -> Result<Inventory> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading inventory {}", path.display()))?;
        let mut inv: Inventory = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}",
                path.display(),
                crate::kickstart::toml_error(&text, &e)
            )
        })?;
        if inv.version != INVENTORY_VERSION {
            bail!(
                "{}: inventory version {} is not supported (this nodeimg reads version {INVENTORY_VERSION})",
                path.display(),
                inv.version
            );
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        for r in inv.roles.values_mut() {
            if let Some(p) = &r.user_data {
                r.user_data = Some(dir.join(p));
            }
        }
        let mut macs = BTreeMap::new();
        let mut names = BTreeMap::new();
        for n in &mut inv.nodes {
            if let Some(p) = &n.user_data {
                n.user_data = Some(dir.join(p));
            }
            if let Some(prev) = macs.insert(n.mac.clone(), n.hostname.as_str().to_owned()) {
                bail!(
                    "{}: MAC {} is listed twice (hosts `{prev}` and `{}`)",
                    path.display(),
                    n.mac,
                    n.hostname.as_str()
                );
            }
            if names.insert(n.hostname.as_str().to_owned(), ()).is_some() {
                bail!(
                    "{}: hostname `{}` is listed twice",
                    path.display(),
                    n.hostname.as_str()
                );
            }
        }
        Ok(inv)
    }

    /// The inventory entry for `mac`, or an error listing what is known.
    pub fn node(&self, mac: &MacAddr) -> Result<&InventoryNode> {
        self.nodes.iter().find(|n| &n.mac == mac).ok_or_else(|| {
            let known: Vec<String> = self.nodes.iter().map(|n| n.mac.to_string()).collect();
            anyhow::anyhow!(
                "MAC {mac} is not in the inventory (known: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_forms() {
        let m: MacAddr = "52-54-00-AB-cd-0F".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!(m.hyphenated(), "52-54-00-ab-cd-0f");
        assert!("52:54:00:ab:cd".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:zz".parse::<MacAddr>().is_err());
    }

    #[test]
    fn hostnames() {
        assert!("cp-1.example.org".parse::<Hostname>().is_ok());
        assert!("-bad".parse::<Hostname>().is_err());
        assert!("under_score".parse::<Hostname>().is_err());
    }

    #[test]
    fn duplicate_mac_rejected() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("inv.toml");
        std::fs::write(
            &p,
            "version = 1\n[[node]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"a\"\nrole = \"init\"\n\
             [[node]]\nmac = \"52-54-00-00-00-01\"\nhostname = \"b\"\nrole = \"join-worker\"\n",
        )
        .unwrap();
        let err = Inventory::load(&p).unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn unknown_key_has_position() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("inv.toml");
        std::fs::write(
            &p,
            "version = 1\n[[node]]\nmac = \"52:54:00:00:00:01\"\nhost = \"a\"\n",
        )
        .unwrap();
        let err = Inventory::load(&p).unwrap_err().to_string();
        assert!(err.contains("inv.toml") && err.contains(":4:"), "{err}");
    }
}
