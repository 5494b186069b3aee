//! Publishing the archive repository to a fleet: after a build moved the ref, a static delta
//! from the ref's previous commit (one download instead of one request per changed object)
//! and a regenerated summary (refs, commits and the delta index), so any static HTTP server
//! can serve `ostree pull` / `ostree admin upgrade` from the directory as it is. For a
//! GPG-signed commit, also the public key clients verify it with.

use std::path::Path;

use anyhow::{Context, Result};
use ostree::gio;

use crate::commit::{self, GpgKey};
use crate::manifest::{DeltaRecord, GpgSignatureRecord, PublishRecord};

/// What to publish for a build's commit.
#[derive(Debug, Clone)]
pub struct PublishRequest<'a> {
    pub repo: &'a Path,
    /// The commit the ref pointed at before this build, if any.
    pub parent: Option<&'a str>,
    pub checksum: &'a str,
    pub static_delta: bool,
}

/// Generate the delta (when asked and there is a parent) and regenerate the summary.
pub fn publish(req: &PublishRequest<'_>) -> Result<PublishRecord> {
    let _libostree = commit::libostree_lock();
    let repo = commit::open_or_create_repo(req.repo)?;
    let cancel = gio::Cancellable::NONE;
    let static_delta = match (req.static_delta, req.parent) {
        (true, Some(from)) => {
            // libostree reads the params dictionary unconditionally: pass an empty one, not
            // NULL (which crashes it).
            let params = glib::VariantDict::new(None).end();
            repo.static_delta_generate(
                ostree::StaticDeltaGenerateOpt::Major,
                Some(from),
                req.checksum,
                None,
                Some(&params),
                cancel,
            )
            .with_context(|| {
                format!(
                    "generating the static delta {from} -> {} in {}",
                    req.checksum,
                    req.repo.display()
                )
            })?;
            let rel = delta_path(Some(from), req.checksum)?;
            let size = dir_size(&req.repo.join(&rel))?;
            Some(DeltaRecord {
                from: from.to_owned(),
                to: req.checksum.to_owned(),
                path: rel,
                size,
            })
        }
        _ => None,
    };
    repo.regenerate_summary(None, cancel)
        .with_context(|| format!("updating the summary of {}", req.repo.display()))?;
    Ok(PublishRecord {
        summary: true,
        static_delta,
    })
}

/// Undo a build's publication after a later stage failed: the ref goes back to `parent`
/// (removed when the build made it), the static delta made for `checksum` is deleted, and
/// the summary is regenerated — so clients that follow the repository never see a commit
/// whose images failed to build. Only when the ref still points at `checksum` (another
/// build may have moved it meanwhile). The commit's objects stay: unreferenced, they are
/// what a retry of the same build commits again, and `ostree prune` removes them.
pub fn withdraw(
    repo_path: &Path,
    ostree_ref: &str,
    checksum: &str,
    parent: Option<&str>,
) -> Result<()> {
    let _libostree = commit::libostree_lock();
    let repo = commit::open_or_create_repo(repo_path)?;
    if commit::ref_target(&repo, ostree_ref)?.as_deref() != Some(checksum) {
        return Ok(());
    }
    repo.set_ref_immediate(None, ostree_ref, parent, gio::Cancellable::NONE)
        .with_context(|| {
            format!(
                "moving {ostree_ref} in {} back to {}",
                repo_path.display(),
                parent.unwrap_or("(no commit)")
            )
        })?;
    let delta = repo_path.join(delta_path(parent, checksum)?);
    if delta.exists() {
        std::fs::remove_dir_all(&delta)
            .with_context(|| format!("removing the static delta {}", delta.display()))?;
    }
    repo.regenerate_summary(None, gio::Cancellable::NONE)
        .with_context(|| format!("updating the summary of {}", repo_path.display()))?;
    Ok(())
}

/// The public key's file name in the repository directory: served with it, so a node or a
/// kickstart fetches it from `<repo URL>/<osname>.asc`. Not `.gpg`: libostree reads every
/// `*.gpg` file in a repository directory as a binary keyring when it verifies there
/// without a remote, and an armored file among them hides every key.
pub fn gpg_key_file_name(osname: &str) -> String {
    format!("{osname}.asc")
}

/// Export the public part of `key` to `<repo>/<osname>.asc` (atomically) and check that
/// `checksum` in the repository carries a good signature by it: what a client pulling with
/// `gpg-verify=true` and that key imported will check.
pub fn publish_gpg_key(
    repo_path: &Path,
    osname: &str,
    checksum: &str,
    key: &GpgKey<'_>,
) -> Result<GpgSignatureRecord> {
    let name = gpg_key_file_name(osname);
    let dest = repo_path.join(&name);
    let sha = commit::export_public_key(key, &dest)?;
    let repo = commit::open_or_create_repo(repo_path)?;
    commit::verify_signed_by(&repo, checksum, key)
        .with_context(|| format!("checking the signature in {}", repo_path.display()))?;
    Ok(GpgSignatureRecord {
        key_id: key.key_id.to_owned(),
        public_key: name,
        public_key_sha256: sha,
    })
}

/// Where libostree stores the delta `from` → `to`, relative to the repository: under
/// `deltas/`, the checksums in OSTree's modified base64 (`_` for `/`, no padding), the first
/// two characters of the first one as a fan-out directory.
pub fn delta_path(from: Option<&str>, to: &str) -> Result<String> {
    let b64 = |hex: &str| -> Result<String> {
        Ok(ostree::Checksum::from_hex(hex)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("`{hex}` is not a commit checksum"))?
            .to_base64())
    };
    let to = b64(to)?;
    Ok(match from {
        Some(from) => {
            let from = b64(from)?;
            format!("deltas/{}/{}-{to}", &from[..2], &from[2..])
        }
        None => format!("deltas/{}/{}", &to[..2], &to[2..]),
    })
}

fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e.with_context(|| format!("listing {}", dir.display()))?;
        let meta = e
            .metadata()
            .with_context(|| format!("inspecting {}", e.path().display()))?;
        total += if meta.is_dir() {
            dir_size(&e.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_paths_use_modified_base64_with_fanout() {
        // The all-0xff checksum is `/` in plain base64: OSTree writes `_`.
        let ff = "f".repeat(64);
        let zero = "0".repeat(64);
        let p = delta_path(Some(&zero), &ff).unwrap();
        assert_eq!(
            p,
            format!("deltas/AA/{}-{}", "A".repeat(41), "_".repeat(42) + "8")
        );
        assert_eq!(
            delta_path(None, &ff).unwrap(),
            format!("deltas/__/{}", "_".repeat(40) + "8")
        );
        assert!(delta_path(None, "xyz").is_err());
    }
}
