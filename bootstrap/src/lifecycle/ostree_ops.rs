//! The node's deployments through libostree (the `ostree` crate, libostree 2022.7).
//!
//! ostree 2022.7's CLI has no `rollback` and `undeploy` refuses the booted deployment, so
//! everything here uses the library: `deploy_tree` + `write_deployments` to add a deployment
//! in front of the booted one (what `ostree admin deploy` does), and `write_deployments` with
//! a reordered list to roll back without pulling anything. Each public function runs all its
//! libostree calls on one dedicated thread ([`on_ostree_thread`]): GLib objects are not
//! `Send`, and pulls use the calling thread's default main context.
//!
//! Which deployment is booted comes from [`BootedSelector`]: libostree's own detection on a
//! running node, or a given deployment in a staged sysroot (tests), where nothing is booted.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::glib;
use serde::Serialize;

use super::os_state::{Commit, Target};

/// How the booted deployment is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootedSelector {
    /// libostree's detection on the running system (`/run/ostree-booted`, device and inode of
    /// `/` against each deployment).
    Running,
    /// The deployment directory `<checksum>.<serial>` (staged sysroots; see
    /// [`deployment_for_karg`] for what a boot of a BLS entry would select).
    Deployment { checksum: String, serial: i32 },
}

/// A sysroot and how to read it.
#[derive(Debug, Clone)]
pub struct SysrootSpec {
    /// `/` on a node (libostree finds `/sysroot` itself), a staged sysroot directory in tests.
    pub path: PathBuf,
    pub booted: BootedSelector,
}

impl SysrootSpec {
    /// The running node.
    pub fn running() -> Self {
        SysrootSpec {
            path: PathBuf::from("/"),
            booted: BootedSelector::Running,
        }
    }
}

/// Where a deployment stands relative to the booted one (as `ostree admin status` shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Booted,
    /// Before the booted one: becomes the booted one at the next boot.
    Pending,
    /// Right after the booted one: where a rollback goes.
    Rollback,
    Other,
}

/// One deployment, as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct DeploymentInfo {
    pub index: usize,
    pub osname: String,
    pub checksum: Commit,
    /// Distinguishes deployments of one commit (`<checksum>.<serial>`).
    pub serial: i32,
    /// The commit's `version` metadata.
    pub version: Option<String>,
    /// Origin refspec (`remote:ref`): what upgrades follow.
    pub refspec: Option<String>,
    pub role: Role,
}

impl DeploymentInfo {
    pub fn target(&self) -> Target {
        Target {
            commit: self.checksum.clone(),
            version: self.version.clone(),
        }
    }
}

/// All deployments in boot order (index 0 is the default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub deployments: Vec<DeploymentInfo>,
}

impl Status {
    pub fn booted(&self) -> Option<&DeploymentInfo> {
        self.with_role(Role::Booted)
    }
    pub fn pending(&self) -> Option<&DeploymentInfo> {
        self.with_role(Role::Pending)
    }
    pub fn rollback(&self) -> Option<&DeploymentInfo> {
        self.with_role(Role::Rollback)
    }
    pub fn default_deployment(&self) -> Option<&DeploymentInfo> {
        self.deployments.first()
    }
    fn with_role(&self, role: Role) -> Option<&DeploymentInfo> {
        self.deployments.iter().find(|d| d.role == role)
    }
    /// Whether some deployment holds `commit`.
    pub fn has_commit(&self, commit: &Commit) -> bool {
        self.deployments.iter().any(|d| &d.checksum == commit)
    }
    /// The deployment a rollback makes the default: the booted one when an upgrade is
    /// pending, else the one after the booted one (what `rpm-ostree rollback` picks).
    pub fn rollback_target(&self) -> Option<&DeploymentInfo> {
        match self.booted() {
            Some(b) if b.index > 0 => Some(b),
            _ => self.rollback(),
        }
    }
}

/// What to pull.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchRequest {
    /// `remote:ref` or `ref` to follow; default: the booted deployment's origin.
    pub refspec: Option<String>,
    /// Pick the commit of the ref's history whose `version` metadata is this.
    pub version: Option<String>,
    /// Pull from this URL instead of the remote's configured one, keeping the remote's
    /// verification settings (`gpg-verify`, `sign-verify`).
    pub url_override: Option<String>,
}

/// A pulled commit, ready to deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub target: Target,
    /// The refspec the new deployment's origin will name.
    pub refspec: String,
}

/// Run `f` on a fresh thread and wait for it.
fn on_ostree_thread<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("ostree".into())
            .spawn_scoped(s, f)
            .context("starting the ostree thread")?
            .join()
            .map_err(|_| anyhow!("the ostree thread panicked"))?
    })
}

fn load(spec: &SysrootSpec) -> Result<ostree::Sysroot> {
    // libostree reports pruning with g_print ("Freed objects: ..."), i.e. on stdout, where it
    // would corrupt `--json` output: route GLib's print output into the log instead.
    static PRINT_TO_LOG: std::sync::Once = std::sync::Once::new();
    PRINT_TO_LOG.call_once(|| {
        glib::set_print_handler(|msg| tracing::info!(target: "libostree", "{}", msg.trim_end()));
    });
    let sysroot = ostree::Sysroot::new(Some(&gio::File::for_path(&spec.path)));
    sysroot
        .load(gio::Cancellable::NONE)
        .with_context(|| format!("loading the OSTree sysroot {}", spec.path.display()))?;
    Ok(sysroot)
}

fn booted_of(sysroot: &ostree::Sysroot, spec: &SysrootSpec) -> Option<ostree::Deployment> {
    match &spec.booted {
        BootedSelector::Running => sysroot.booted_deployment(),
        BootedSelector::Deployment { checksum, serial } => sysroot
            .deployments()
            .into_iter()
            .find(|d| d.csum() == checksum.as_str() && d.deployserial() == *serial),
    }
}

fn require_booted(sysroot: &ostree::Sysroot, spec: &SysrootSpec) -> Result<ostree::Deployment> {
    booted_of(sysroot, spec).with_context(|| match &spec.booted {
        BootedSelector::Running => format!(
            "{} is not booted into an OSTree deployment",
            spec.path.display()
        ),
        BootedSelector::Deployment { checksum, serial } => format!(
            "no deployment {checksum}.{serial} in {}",
            spec.path.display()
        ),
    })
}

fn commit_version(repo: &ostree::Repo, checksum: &str) -> Option<String> {
    let (commit, _) = repo.load_commit(checksum).ok()?;
    let meta = commit.child_value(0);
    glib::VariantDict::new(Some(&meta))
        .lookup::<String>("version")
        .ok()
        .flatten()
}

fn refspec_of(d: &ostree::Deployment) -> Option<String> {
    d.origin()
        .and_then(|o| o.string("origin", "refspec").ok())
        .map(|s| s.to_string())
}

fn status_of(sysroot: &ostree::Sysroot, spec: &SysrootSpec) -> Result<Status> {
    let repo = sysroot.repo();
    let deployments = sysroot.deployments();
    let booted = booted_of(sysroot, spec);
    let booted_index = booted
        .as_ref()
        .and_then(|b| deployments.iter().position(|d| d.equal(b)));
    let mut out = Vec::with_capacity(deployments.len());
    for (index, d) in deployments.iter().enumerate() {
        let role = match booted_index {
            Some(b) if index == b => Role::Booted,
            Some(b) if index < b => Role::Pending,
            Some(b) if index == b + 1 => Role::Rollback,
            _ => Role::Other,
        };
        let checksum: Commit = d
            .csum()
            .parse()
            .with_context(|| format!("deployment {index} has checksum `{}`", d.csum()))?;
        out.push(DeploymentInfo {
            index,
            osname: d.osname().to_string(),
            version: commit_version(&repo, &checksum.to_string()),
            checksum,
            serial: d.deployserial(),
            refspec: refspec_of(d),
            role,
        });
    }
    Ok(Status { deployments: out })
}

/// The deployments, like `ostree admin status`.
pub fn status(spec: &SysrootSpec) -> Result<Status> {
    on_ostree_thread(|| status_of(&load(spec)?, spec))
}

/// Split `remote:ref`; a plain ref has no remote.
pub fn split_refspec(refspec: &str) -> (Option<&str>, &str) {
    match refspec.split_once(':') {
        Some((remote, r)) if !remote.is_empty() => (Some(remote), r),
        _ => (None, refspec),
    }
}

/// Pull what `req` names (default: the booted deployment's origin) and return the commit to
/// deploy. Verification is libostree's: a remote with `gpg-verify=true` or `sign-verify`
/// rejects commits without a valid signature.
pub fn fetch(spec: &SysrootSpec, req: &FetchRequest) -> Result<Fetched> {
    on_ostree_thread(|| {
        let sysroot = load(spec)?;
        let booted = require_booted(&sysroot, spec)?;
        let refspec = match &req.refspec {
            Some(r) => r.clone(),
            None => refspec_of(&booted).with_context(|| {
                format!(
                    "the booted deployment {}.{} has no origin refspec; pass --ref",
                    booted.csum(),
                    booted.deployserial()
                )
            })?,
        };
        let (remote, branch) = split_refspec(&refspec);
        let Some(remote) = remote else {
            bail!("`{refspec}` names no remote, so there is nothing to pull from; follow `REMOTE:{refspec}` (configure it with `ostree remote add`)");
        };
        let repo = sysroot.repo();
        anyhow::ensure!(
            repo.remote_list().iter().any(|r| r.as_str() == remote),
            "remote `{remote}` is not configured in {}",
            spec.path.display()
        );
        let from = req.url_override.clone().unwrap_or_else(|| {
            repo.remote_get_url(remote)
                .map(|u| u.to_string())
                .unwrap_or_default()
        });
        let commit = match &req.version {
            None => pull(
                &repo,
                remote,
                branch,
                req,
                ostree::RepoPullFlags::NONE,
                None,
            )
            .with_context(|| format!("pulling {refspec} from {from}"))?,
            Some(v) => {
                // The history's commit objects only, to find the version; then that commit.
                let head = pull(
                    &repo,
                    remote,
                    branch,
                    req,
                    ostree::RepoPullFlags::COMMIT_ONLY,
                    Some(-1),
                )
                .with_context(|| format!("pulling the history of {refspec} from {from}"))?;
                let found = find_version(&repo, &head, v)?.with_context(|| {
                    format!("no commit with version {v} in the history of {refspec} at {from}")
                })?;
                pull(
                    &repo,
                    remote,
                    &found,
                    req,
                    ostree::RepoPullFlags::NONE,
                    None,
                )
                .with_context(|| format!("pulling version {v} ({found}) from {from}"))?;
                found
            }
        };
        let version = commit_version(&repo, &commit);
        Ok(Fetched {
            target: Target {
                commit: commit
                    .parse()
                    .with_context(|| format!("pulled `{commit}` is not a checksum"))?,
                version,
            },
            refspec,
        })
    })
}

/// Pull `what` (a ref or a checksum) from `remote`; returns the ref's commit.
fn pull(
    repo: &ostree::Repo,
    remote: &str,
    what: &str,
    req: &FetchRequest,
    flags: ostree::RepoPullFlags,
    depth: Option<i32>,
) -> Result<String> {
    let options = glib::VariantDict::new(None);
    options.insert("refs", vec![what.to_owned()]);
    options.insert("flags", flags.bits() as i32);
    if let Some(d) = depth {
        options.insert("depth", d);
    }
    if let Some(url) = &req.url_override {
        options.insert("override-url", url.as_str());
    }
    repo.pull_with_options(remote, &options.end(), None, gio::Cancellable::NONE)
        .map_err(|e| anyhow!("{e}"))?;
    if what.len() == 64 && what.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(what.to_owned());
    }
    repo.resolve_rev(&format!("{remote}:{what}"), false)
        .with_context(|| format!("resolving {remote}:{what}"))?
        .map(|c| c.to_string())
        .with_context(|| format!("{remote}:{what} does not exist after the pull"))
}

/// Walk the parents of `head` for a commit whose `version` is `version`.
fn find_version(repo: &ostree::Repo, head: &str, version: &str) -> Result<Option<String>> {
    let mut next = Some(head.to_owned());
    while let Some(checksum) = next {
        let Ok((commit, _)) = repo.load_commit(&checksum) else {
            return Ok(None);
        };
        let meta = commit.child_value(0);
        let v = glib::VariantDict::new(Some(&meta))
            .lookup::<String>("version")
            .ok()
            .flatten();
        if v.as_deref() == Some(version) {
            return Ok(Some(checksum));
        }
        next = ostree::commit_get_parent(&commit).map(|p| p.to_string());
    }
    Ok(None)
}

/// Deploy `fetched` as the new default with the booted deployment kept right after it as
/// the rollback, other deployments dropped (what `ostree admin deploy` does): `/etc` merged
/// from the booted deployment, kernel arguments inherited from it, origin = the refspec so
/// later upgrades follow it.
pub fn deploy(spec: &SysrootSpec, fetched: &Fetched) -> Result<DeploymentInfo> {
    on_ostree_thread(|| {
        let sysroot = load(spec)?;
        sysroot
            .lock()
            .with_context(|| format!("locking the sysroot {}", spec.path.display()))?;
        let result = (|| {
            let booted = require_booted(&sysroot, spec)?;
            let commit = fetched.target.commit.to_string();
            let origin = sysroot.origin_new_from_refspec(&fetched.refspec);
            let opts = ostree::SysrootDeployTreeOpts::default();
            let new = sysroot
                .deploy_tree_with_options(
                    Some(booted.osname().as_str()),
                    &commit,
                    Some(&origin),
                    Some(&booted),
                    Some(&opts),
                    gio::Cancellable::NONE,
                )
                .with_context(|| format!("deploying {commit}"))?;
            sysroot
                .write_deployments(&[new.clone(), booted], gio::Cancellable::NONE)
                .with_context(|| format!("writing the deployments with {commit} first"))?;
            Ok::<_, anyhow::Error>((new.csum().to_string(), new.deployserial()))
        })();
        sysroot.unlock();
        let (csum, serial) = result?;
        // Reload for the indexes and roles libostree assigned.
        let status = status_of(&load(spec)?, spec)?;
        status
            .deployments
            .into_iter()
            .find(|d| d.checksum.as_str() == csum && d.serial == serial)
            .with_context(|| format!("deployment {csum}.{serial} missing after the deploy"))
    })
}

/// Make the deployment of `commit` the default, keeping the others in their order; nothing is
/// pulled or deleted. Takes effect at the next boot. Returns the new order.
pub fn make_default(spec: &SysrootSpec, commit: &Commit) -> Result<Status> {
    reorder(spec, |list| {
        // The first deployment of that commit (the newest, in libostree's order).
        list.iter()
            .position(|d| d.csum() == commit.as_str())
            .with_context(|| format!("no deployment of {commit} to make the default"))
    })
}

/// Make the rollback target ([`Status::rollback_target`]) the default.
pub fn rollback(spec: &SysrootSpec) -> Result<Status> {
    let status = status(spec)?;
    let target = status
        .rollback_target()
        .context("there is no rollback deployment")?
        .clone();
    reorder(spec, |list| {
        list.iter()
            .position(|d| d.csum() == target.checksum.as_str() && d.deployserial() == target.serial)
            .context("the rollback deployment disappeared")
    })
}

fn reorder(
    spec: &SysrootSpec,
    pick: impl FnOnce(&[ostree::Deployment]) -> Result<usize> + Send,
) -> Result<Status> {
    on_ostree_thread(|| {
        let sysroot = load(spec)?;
        sysroot
            .lock()
            .with_context(|| format!("locking the sysroot {}", spec.path.display()))?;
        let result = (|| {
            let mut list = sysroot.deployments();
            let i = pick(&list)?;
            if i != 0 {
                let d = list.remove(i);
                list.insert(0, d);
                sysroot
                    .write_deployments(&list, gio::Cancellable::NONE)
                    .context("writing the reordered deployments")?;
            }
            Ok::<_, anyhow::Error>(())
        })();
        sysroot.unlock();
        result?;
        status_of(&load(spec)?, spec)
    })
}

/// Remove deployments before the booted one (a deployed but not yet booted upgrade), like
/// `ostree admin undeploy 0`. Returns what was removed.
pub fn discard_pending(spec: &SysrootSpec) -> Result<Vec<DeploymentInfo>> {
    on_ostree_thread(|| {
        let sysroot = load(spec)?;
        let before = status_of(&sysroot, spec)?;
        let booted = require_booted(&sysroot, spec)?;
        let list = sysroot.deployments();
        let keep_from = list
            .iter()
            .position(|d| d.equal(&booted))
            .context("the booted deployment is not in the deployment list")?;
        if keep_from == 0 {
            return Ok(Vec::new());
        }
        sysroot
            .lock()
            .with_context(|| format!("locking the sysroot {}", spec.path.display()))?;
        let written = sysroot
            .write_deployments(&list[keep_from..], gio::Cancellable::NONE)
            .context("writing the deployments without the pending one");
        sysroot.unlock();
        written?;
        Ok(before.deployments[..keep_from].to_vec())
    })
}

/// The deployment a boot with kernel argument `ostree=...` (from a BLS entry's `options` or
/// `/proc/cmdline`) runs, resolved through the sysroot's boot links as the initramfs does.
/// Valid until the next bootloader swap renames those links.
pub fn deployment_for_karg(sysroot: &Path, cmdline: &str) -> Result<BootedSelector> {
    let arg = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("ostree="))
        .with_context(|| format!("no ostree= argument in `{cmdline}`"))?;
    let link = sysroot.join(arg.trim_start_matches('/'));
    let target =
        std::fs::canonicalize(&link).with_context(|| format!("resolving {}", link.display()))?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} is not a deployment directory", target.display()))?;
    let (checksum, serial) = name
        .rsplit_once('.')
        .with_context(|| format!("`{name}` is not `<checksum>.<serial>`"))?;
    Ok(BootedSelector::Deployment {
        checksum: checksum.to_owned(),
        serial: serial
            .parse()
            .with_context(|| format!("`{name}` is not `<checksum>.<serial>`"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refspecs() {
        assert_eq!(
            split_refspec("nodeimg:debian/x"),
            (Some("nodeimg"), "debian/x")
        );
        assert_eq!(split_refspec("debian/x"), (None, "debian/x"));
        assert_eq!(split_refspec(":debian/x"), (None, ":debian/x"));
    }

    fn info(index: usize, c: char, role: Role) -> DeploymentInfo {
        DeploymentInfo {
            index,
            osname: "debian".into(),
            checksum: c.to_string().repeat(64).parse().unwrap(),
            serial: 0,
            version: None,
            refspec: None,
            role,
        }
    }

    #[test]
    fn rollback_target_follows_rpm_ostree() {
        let settled = Status {
            deployments: vec![info(0, 'b', Role::Booted), info(1, 'a', Role::Rollback)],
        };
        assert_eq!(settled.rollback_target().unwrap().index, 1);
        let pending = Status {
            deployments: vec![
                info(0, 'c', Role::Pending),
                info(1, 'b', Role::Booted),
                info(2, 'a', Role::Rollback),
            ],
        };
        assert_eq!(pending.rollback_target().unwrap().index, 1);
        let single = Status {
            deployments: vec![info(0, 'a', Role::Booted)],
        };
        assert!(single.rollback_target().is_none());
    }
}
