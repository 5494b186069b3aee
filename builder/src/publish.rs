//! Publishing the archive repository to a fleet: after a build moved the ref, a static delta
//! from the ref's previous commit (one download instead of one request per changed object)
//! and a regenerated summary (refs, commits and the delta index), so any static HTTP server
//! can serve `ostree pull` / `ostree admin upgrade` from the directory as it is.

use std::path::Path;

use anyhow::{Context, Result};
use ostree::gio;

use crate::commit;
use crate::manifest::{DeltaRecord, PublishRecord};

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
