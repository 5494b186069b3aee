//! The node config the installer places into the installed system: fetched from
//! `nodeboot.config=URL` with the same HTTP client, limits and `${mac}`/`${uuid}`/`${hostname}`
//! substitution as the first-boot `cmdline` source, decoded and checked against the schema
//! before anything is written to the disk.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::config::{parse_node_config, NodeConfig};
use crate::sources::cmdline::{substitute, HostVars};
use crate::sources::decode::{decode, read_file_limited, MAX_RAW_USER_DATA};
use crate::sources::http::{self, HttpError};
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
    let parsed = url::Url::parse(&url).with_context(|| format!("`{url}` is not a URL"))?;
    let raw = match parsed.scheme() {
        "file" => {
            let path = parsed
                .to_file_path()
                .map_err(|()| anyhow::anyhow!("`{url}` is not a local file URL"))?;
            read_file_limited(&path, MAX_RAW_USER_DATA)
                .with_context(|| format!("reading the node config {}", path.display()))?
        }
        "http" | "https" => {
            let client = http::client(net.timeout, true).map_err(|e| anyhow::anyhow!(e))?;
            let reply = http::send(&url, &net.retry, MAX_RAW_USER_DATA, || {
                client.get(parsed.clone())
            })
            .map_err(|e| match e {
                HttpError::TooLarge { .. } => anyhow::anyhow!("{url}: {e}"),
                HttpError::Transport(m) => anyhow::anyhow!(m),
            })
            .context("fetching the node config")?;
            if reply.status != 200 {
                bail!("fetching the node config {url}: HTTP {}", reply.status);
            }
            reply.body
        }
        other => {
            bail!("node config URL `{url}`: unsupported scheme `{other}` (use http, https or file)")
        }
    };
    let bytes = decode(&raw).with_context(|| format!("decoding the node config from {url}"))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("the node config from {url} is not UTF-8 text: {e}"))?;
    let config = parse_node_config(&text, &url)?;
    Ok(FetchedConfig { config, text, url })
}
