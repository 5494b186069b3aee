//! The node config the installer places into the installed system: fetched from
//! `nodeboot.config=URL` with the same HTTP client, limits and `${mac}`/`${uuid}`/`${hostname}`
//! substitution as the first-boot `cmdline` source, decoded and checked against the schema
//! before anything is written to the disk.

use std::path::Path;

use anyhow::{Context, Result};

use crate::config::{parse_node_config, NodeConfig};
use crate::sources::cmdline::{fetch_url, substitute, HostVars};
use crate::sources::decode::decode;
use crate::sources::Net;

/// A validated node config and its decoded text (what is written to the disk).
#[derive(Debug)]
pub struct FetchedConfig {
    pub config: NodeConfig,
    pub text: String,
    /// The URL after substitution.
    pub url: String,
}

/// Fetch the config `template` names; `cmdline_path` and `root` feed the substitution
/// (`BOOTIF=` from the command line, interfaces and DMI under `root`).
pub fn fetch(template: &str, cmdline_path: &Path, root: &Path, net: Net) -> Result<FetchedConfig> {
    let vars = HostVars { root, cmdline_path };
    let url = substitute(template, &vars)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("expanding the node config URL `{template}`"))?;
    let raw = fetch_url(&url, &net)
        .map_err(|e| anyhow::anyhow!(e))
        .context("fetching the node config")?;
    let bytes = decode(&raw).with_context(|| format!("decoding the node config from {url}"))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("the node config from {url} is not UTF-8 text: {e}"))?;
    let config = parse_node_config(&text, &url)?;
    Ok(FetchedConfig { config, text, url })
}
