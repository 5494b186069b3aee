//! Stage `pxe`: kickstart and network boot configurations that install the built commit on
//! bare metal, from the same recipe and the same commit as the disk images.
//!
//! Two install paths share one set of boot configs (iPXE, GRUB netboot, pxelinux):
//! - Anaconda (Fedora/RHEL installer) with a kickstart whose `ostreesetup` pulls the commit
//!   from the archive repository over HTTP and lays it out like nodeimg's disk images;
//! - nodeboot's built-in installer, which streams the published raw image onto the disk.
//!
//! Templates live in `kickstart/` at the repository root and are compiled in, so the binary
//! renders the same output wherever it runs. Every rendered file is golden-tested.

pub mod installer;
pub mod inventory;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::recipe::Recipe;
use inventory::{Inventory, InventoryNode, Role};

const KS_TEMPLATE: &str = include_str!("../../../kickstart/node.ks.in");
const IPXE_TEMPLATE: &str = include_str!("../../../kickstart/pxe.ipxe.in");
const GRUB_TEMPLATE: &str = include_str!("../../../kickstart/grub-netboot.cfg.in");
const PXELINUX_TEMPLATE: &str = include_str!("../../../kickstart/pxelinux.cfg.in");

/// Everything the PXE material is rendered from.
#[derive(Debug, Clone)]
pub struct PxeRequest {
    pub image: String,
    pub version: String,
    pub osname: String,
    pub ref_name: String,
    /// The commit the kickstart installs (pinned in a comment and checked by `%post`).
    pub commit: String,
    /// Base URL everything is served from (`--http-base`); the archive repo is expected at
    /// `<http_base>/repo` unless `repo_url` says otherwise.
    pub http_base: String,
    pub repo_url: String,
    /// Kernel arguments of the installed system (the recipe's, without `root=`/`rw`, which
    /// Anaconda sets itself).
    pub kernel_args: Vec<String>,
    /// GPG verification: `None` renders `--nogpg` (unsigned commit); `Some(key)` (the
    /// public key as a binary OpenPGP keyring) keeps verification on: a `%pre` trusts the key
    /// in the installer before `ostreesetup` pulls, `%post` imports it for the installed
    /// system's remote.
    pub gpg_key: Option<Vec<u8>>,
    /// `/boot` size in MiB, as in the disk image layout.
    pub boot_mib: u64,
    /// nodeboot config embedded for every machine without inventory-specific user-data
    /// (already validated, see [`validate_user_data`]).
    pub user_data: Option<String>,
    /// Or a config URL passed as `nodeboot.config=` on the installed system's kernel line.
    pub config_url: Option<String>,
    /// Raw image path relative to `http_base` for the built-in installer, and its sha256.
    pub raw_image: Option<(String, String)>,
    pub install_device: String,
    pub anaconda: AnacondaPaths,
}

/// Where the Anaconda installer's kernel, initrd and stage2 are served, relative to
/// `http_base` (they come from a Fedora/RHEL/CentOS Stream netinstall tree, not from nodeimg).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnacondaPaths {
    pub kernel: String,
    pub initrd: String,
    pub stage2: String,
}

impl Default for AnacondaPaths {
    fn default() -> Self {
        AnacondaPaths {
            kernel: "anaconda/images/pxeboot/vmlinuz".to_owned(),
            initrd: "anaconda/images/pxeboot/initrd.img".to_owned(),
            stage2: "anaconda".to_owned(),
        }
    }
}

impl PxeRequest {
    /// The parts that come from the recipe and the built commit; URLs and user-data are set
    /// by the caller.
    pub fn from_recipe(recipe: &Recipe, commit: &str, http_base: &str) -> PxeRequest {
        let base = http_base.trim_end_matches('/').to_owned();
        PxeRequest {
            image: recipe.image.name.to_string(),
            version: recipe.image.version.to_string(),
            osname: recipe.image.osname.to_string(),
            ref_name: recipe.image.ref_name(),
            commit: commit.to_owned(),
            repo_url: format!("{base}/repo"),
            http_base: base,
            kernel_args: recipe.os.kernel_args.clone(),
            gpg_key: None,
            boot_mib: recipe.disk.boot_size.bytes() / (1024 * 1024),
            user_data: None,
            config_url: None,
            raw_image: None,
            install_device: "/dev/sda".to_owned(),
            anaconda: AnacondaPaths::default(),
        }
    }
}

/// Check user-data before it is embedded: it must be a valid nodeboot config and must not
/// carry join material inline (a kickstart is served unauthenticated over HTTP).
pub fn validate_user_data(text: &str, origin: &Path) -> Result<()> {
    let origin = origin.display().to_string();
    let config = nodeboot::config::parse_node_config(text, &origin)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("user-data {origin} is not a valid nodeboot config"))?;
    if config.join.is_some() {
        bail!(
            "user-data {origin} carries join material inline; a kickstart is served over plain HTTP, \
             so nodeimg never embeds secrets: reference a secret store in [secrets] instead"
        );
    }
    Ok(())
}

/// Fill `{{key}}` placeholders; every placeholder must be known and every key used.
fn fill(template: &str, vars: &[(&str, String)]) -> Result<String> {
    let mut out = template.to_owned();
    for (k, v) in vars {
        let needle = format!("{{{{{k}}}}}");
        out = out.replace(&needle, v);
    }
    if let Some(pos) = out.find("{{") {
        let end = out[pos..].find("}}").map_or(out.len(), |e| pos + e + 2);
        bail!("template placeholder {} has no value", &out[pos..end]);
    }
    Ok(out)
}

fn common_vars(req: &PxeRequest) -> Vec<(&'static str, String)> {
    vec![
        ("nodeimg_version", env!("CARGO_PKG_VERSION").to_owned()),
        ("image", req.image.clone()),
        ("version", req.version.clone()),
        ("commit", req.commit.clone()),
        ("repo_url", req.repo_url.clone()),
        ("ref", req.ref_name.clone()),
        ("osname", req.osname.clone()),
        ("http_base", req.http_base.clone()),
    ]
}

/// libostree's global keyring directory: every `*.gpg` file (binary keyring) in it is trusted
/// for every remote.
const TRUSTED_GPG_DIR: &str = "/usr/share/ostree/trusted.gpg.d";

/// `bytes` in base64, 76 characters a line, each line ended.
fn base64_lines(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = String::with_capacity(b64.len() + b64.len() / 76 + 1);
    for chunk in b64.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out
}

/// The user-data goes into a quoted heredoc: only its terminator line could break out.
fn heredoc_safe(content: &str) -> Result<()> {
    if content.lines().any(|l| l == "NODEIMG_EOF") {
        bail!("user-data contains the line NODEIMG_EOF, which would end the embedded heredoc");
    }
    Ok(())
}

/// The kickstart for one machine (`node` from the inventory) or the generic one.
pub fn render_kickstart(
    req: &PxeRequest,
    node: Option<(&InventoryNode, Option<&str>)>,
) -> Result<String> {
    let mut vars = common_vars(req);
    let hostname = node.map(|(n, _)| format!(" --hostname={}", n.hostname.as_str()));
    vars.push((
        "network",
        format!(
            "network --bootproto=dhcp --activate{}",
            hostname.unwrap_or_default()
        ),
    ));
    vars.push(("boot_mib", req.boot_mib.to_string()));
    vars.push(("drives", String::new()));
    vars.push(("ignoredisk", String::new()));
    vars.push(("ondisk", String::new()));
    let mut kargs = req.kernel_args.clone();
    if let Some(url) = &req.config_url {
        kargs.push(format!("nodeboot.config={url}"));
    }
    vars.push(("kernel_args", kargs.join(" ")));
    let ostreesetup = format!(
        "ostreesetup --osname={} --remote={} --url={} --ref={}{}",
        req.osname,
        req.osname,
        req.repo_url,
        req.ref_name,
        if req.gpg_key.is_some() {
            ""
        } else {
            " --nogpg"
        }
    );
    let mut post = String::new();
    match &req.gpg_key {
        None => vars.push(("ostreesetup", ostreesetup)),
        Some(key) => {
            let key_b64 = base64_lines(key);
            let trusted = format!("{TRUSTED_GPG_DIR}/nodeimg-{}.gpg", req.osname);
            let mut pre = String::new();
            writeln!(
                pre,
                "# The commit is signed and ostreesetup verifies it while pulling, with the keys in\n\
                 # the installer's global OSTree keyring directory: trust the builder's key there\n\
                 # first (embedded here, not fetched from the server that serves the commits)."
            )?;
            writeln!(pre, "%pre --erroronfail --log=/tmp/nodeimg-ks-pre.log")?;
            writeln!(pre, "set -eu")?;
            writeln!(pre, "install -d -m 0755 {TRUSTED_GPG_DIR}")?;
            writeln!(pre, "base64 -d > {trusted} <<'NODEIMG_KEY'")?;
            pre.push_str(&key_b64);
            writeln!(pre, "NODEIMG_KEY")?;
            writeln!(pre, "%end")?;
            writeln!(pre)?;
            pre.push_str(&ostreesetup);
            vars.push(("ostreesetup", pre));
            // Later upgrades verify with the remote's own keyring in the installed system.
            writeln!(post, "base64 -d > /run/nodeimg-key.gpg <<'NODEIMG_KEY'")?;
            post.push_str(&key_b64);
            writeln!(post, "NODEIMG_KEY")?;
            writeln!(
                post,
                "ostree remote add --if-not-exists --set=gpg-verify=true {} {}",
                req.osname, req.repo_url
            )?;
            writeln!(
                post,
                "ostree remote gpg-import --keyring=/run/nodeimg-key.gpg {}",
                req.osname
            )?;
            writeln!(post, "rm -f /run/nodeimg-key.gpg")?;
        }
    }

    let user_data = node.and_then(|(_, ud)| ud).or(req.user_data.as_deref());
    if let Some(ud) = user_data {
        heredoc_safe(ud)?;
        writeln!(post, "umask 077")?;
        writeln!(post, "cat > /etc/nodeboot/config.toml <<'NODEIMG_EOF'")?;
        post.push_str(ud);
        if !ud.ends_with('\n') {
            post.push('\n');
        }
        writeln!(post, "NODEIMG_EOF")?;
    }
    if let Some((n, _)) = node {
        writeln!(post, "echo '{}' > /etc/hostname", n.hostname.as_str())?;
    }
    vars.push(("post", post.trim_end().to_owned()));
    fill(KS_TEMPLATE, &vars)
}

fn boot_vars(req: &PxeRequest, by_mac: bool) -> Vec<(&'static str, String)> {
    let mut vars = common_vars(req);
    let generic = format!("{}.ks", req.image);
    vars.push(("ks_generic", generic.clone()));
    vars.push((
        "ks_by_mac",
        if by_mac {
            "nodes/${net0/mac:hexhyp}.ks".to_owned()
        } else {
            generic
        },
    ));
    vars.push(("anaconda_kernel", req.anaconda.kernel.clone()));
    vars.push(("anaconda_initrd", req.anaconda.initrd.clone()));
    vars.push(("anaconda_stage2", req.anaconda.stage2.clone()));
    vars.push(("console", "console=ttyS0,115200".to_owned()));
    vars.push((
        "default_entry",
        if req.raw_image.is_some() {
            "nodeimg"
        } else {
            "anaconda"
        }
        .to_owned(),
    ));
    let mut args = vec![format!("nodeboot.install.device={}", req.install_device)];
    if let Some((path, sha)) = &req.raw_image {
        args.push(format!(
            "nodeboot.install.image-url={}/{}",
            req.http_base, path
        ));
        args.push(format!("nodeboot.install.sha256={sha}"));
    }
    if let Some(url) = &req.config_url {
        args.push(format!("nodeboot.config={url}"));
    }
    vars.push(("installer_args", args.join(" ")));
    vars
}

pub fn render_ipxe(req: &PxeRequest, by_mac: bool) -> Result<String> {
    fill(IPXE_TEMPLATE, &boot_vars(req, by_mac))
}

pub fn render_grub_netboot(req: &PxeRequest) -> Result<String> {
    fill(GRUB_TEMPLATE, &boot_vars(req, false))
}

pub fn render_pxelinux(req: &PxeRequest) -> Result<String> {
    fill(PXELINUX_TEMPLATE, &boot_vars(req, false))
}

/// One rendered file, relative to the output's `pxe/` directory.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub path: PathBuf,
    pub content: String,
}

/// Render every PXE file: the generic kickstart, one kickstart per inventory node, and the
/// three boot configs. Pure: the caller writes them (atomically, into the build's output dir).
pub fn render_all(req: &PxeRequest, inventory: Option<&Inventory>) -> Result<Vec<Rendered>> {
    let mut out = vec![Rendered {
        path: PathBuf::from(format!("{}.ks", req.image)),
        content: render_kickstart(req, None)?,
    }];
    if let Some(inv) = inventory {
        for node in &inv.nodes {
            let ud_path = node
                .user_data
                .clone()
                .or_else(|| inv.roles.get(&node.role).and_then(|r| r.user_data.clone()));
            let ud = match &ud_path {
                Some(p) => {
                    let text = std::fs::read_to_string(p).with_context(|| {
                        format!("reading user-data {} for {}", p.display(), node.mac)
                    })?;
                    validate_user_data(&text, p)?;
                    check_role(&text, p, node.role)?;
                    Some(text)
                }
                None => None,
            };
            let mut node_req = req.clone();
            if let Some(url) = inv.roles.get(&node.role).and_then(|r| r.config_url.clone()) {
                node_req.config_url = Some(url);
            }
            out.push(Rendered {
                path: PathBuf::from(format!("nodes/{}.ks", node.mac.hyphenated())),
                content: render_kickstart(&node_req, Some((node, ud.as_deref())))?,
            });
        }
    }
    let by_mac = inventory.is_some_and(|i| !i.nodes.is_empty());
    out.push(Rendered {
        path: PathBuf::from("boot.ipxe"),
        content: render_ipxe(req, by_mac)?,
    });
    out.push(Rendered {
        path: PathBuf::from("grub.cfg"),
        content: render_grub_netboot(req)?,
    });
    out.push(Rendered {
        path: PathBuf::from("pxelinux.cfg/default"),
        content: render_pxelinux(req)?,
    });
    Ok(out)
}

/// The inventory's role for a machine must match the role its user-data declares.
fn check_role(text: &str, origin: &Path, role: Role) -> Result<()> {
    let config = nodeboot::config::parse_node_config(text, &origin.display().to_string())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if config.role != role {
        bail!(
            "user-data {} declares role `{}` but the inventory gives this machine role `{role}`",
            origin.display(),
            config.role
        );
    }
    Ok(())
}

/// Write the rendered files under `dir` (the build's `pxe/` directory), each atomically.
pub fn write_all(dir: &Path, files: &[Rendered]) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for f in files {
        let path = dir.join(&f.path);
        nodeimg_common::fsutil::atomic_write(&path, &f.content)
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// `file:line:column: message` for a TOML parse error.
pub(crate) fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let (line, col) = crate::recipe::location::line_col(text, span.start);
            format!("{line}:{col}: {}", e.message())
        }
        None => e.message().to_owned(),
    }
}

#[cfg(test)]
mod tests;
