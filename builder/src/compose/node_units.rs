//! Enabling, disabling and masking systemd units in a tree that is not running: the symlinks
//! `systemctl enable/disable/mask` would create, made here from the units' `[Install]`
//! sections so the result does not depend on the build host's systemd.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Unit directories of the image, most specific first, as (path in the tree, path in the image).
const UNIT_DIRS: [(&str, &str); 3] = [
    ("etc/systemd/system", "/etc/systemd/system"),
    ("usr/lib/systemd/system", "/usr/lib/systemd/system"),
    ("lib/systemd/system", "/lib/systemd/system"),
];

fn check_name(unit: &str) -> Result<()> {
    if unit.is_empty() || unit.contains('/') || unit.starts_with('.') || !unit.contains('.') {
        bail!("`{unit}` is not a systemd unit name");
    }
    Ok(())
}

/// The unit file for `unit` (a template's file for an instance) as (path in the tree, path
/// in the image). Symlinks in `etc` (enablement links, masks) are not unit files.
fn find_unit(tree: &Path, unit: &str) -> Option<(PathBuf, String)> {
    let template = unit.split_once('@').and_then(|(prefix, rest)| {
        let suffix = rest.rsplit_once('.').map(|(_, s)| s)?;
        Some(format!("{prefix}@.{suffix}"))
    });
    for name in std::iter::once(unit.to_owned()).chain(template) {
        for (rel, abs) in UNIT_DIRS {
            let p = tree.join(rel).join(&name);
            let is_file = fs::symlink_metadata(&p)
                .map(|m| m.file_type().is_file())
                .unwrap_or(false);
            if is_file {
                return Some((p, format!("{abs}/{name}")));
            }
        }
    }
    None
}

/// Whether the tree has a unit file for `unit`.
pub fn unit_exists(tree: &Path, unit: &str) -> bool {
    find_unit(tree, unit).is_some()
}

/// `(key, value)` pairs of the `[Install]` section, values split on whitespace.
fn install_section(text: &str) -> Vec<(String, String)> {
    let mut in_install = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            for value in v.split_whitespace() {
                out.push((k.trim().to_owned(), value.to_owned()));
            }
        }
    }
    out
}

fn replace_symlink(target: &str, link: &Path) -> Result<()> {
    if let Some(dir) = link.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match fs::symlink_metadata(link) {
        Ok(m) if m.is_dir() => bail!("{} is a directory", link.display()),
        Ok(_) => fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?,
        Err(_) => {}
    }
    symlink(target, link).with_context(|| format!("creating symlink {}", link.display()))
}

/// Enable `unit` as `systemctl enable` would: links in `<target>.wants/` or
/// `<target>.requires/`, aliases, and the units named by `Also=`.
pub fn enable(tree: &Path, unit: &str) -> Result<()> {
    enable_inner(tree, unit, 0)
}

fn enable_inner(tree: &Path, unit: &str, depth: usize) -> Result<()> {
    check_name(unit)?;
    if depth > 8 {
        bail!("`Also=` chain too deep while enabling {unit}");
    }
    let (path, image_path) = find_unit(tree, unit).with_context(|| {
        format!("cannot enable {unit}: no such unit in the image (is its package installed?)")
    })?;
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let install = install_section(&text);
    if install.is_empty() {
        bail!("cannot enable {unit}: its unit file has no [Install] section (it is static or started by another unit)");
    }
    // An instance of a template without an explicit instance uses DefaultInstance=.
    let instance_name = if unit.contains("@.") {
        match install.iter().find(|(k, _)| k == "DefaultInstance") {
            Some((_, inst)) => unit.replacen("@.", &format!("@{inst}."), 1),
            None => bail!("cannot enable template {unit} without an instance"),
        }
    } else {
        unit.to_owned()
    };
    let etc = tree.join("etc/systemd/system");
    for (k, v) in &install {
        match k.as_str() {
            "WantedBy" => replace_symlink(
                &image_path,
                &etc.join(format!("{v}.wants")).join(&instance_name),
            )?,
            "RequiredBy" => replace_symlink(
                &image_path,
                &etc.join(format!("{v}.requires")).join(&instance_name),
            )?,
            "UpheldBy" => replace_symlink(
                &image_path,
                &etc.join(format!("{v}.upholds")).join(&instance_name),
            )?,
            "Alias" => {
                check_name(v)?;
                replace_symlink(&image_path, &etc.join(v))?
            }
            "Also" => enable_inner(tree, v, depth + 1)?,
            _ => {}
        }
    }
    Ok(())
}

/// Disable `unit`: remove every enablement link to it under `/etc/systemd/system` (in
/// `*.wants`, `*.requires`, `*.upholds` and aliases). A mask stays.
pub fn disable(tree: &Path, unit: &str) -> Result<()> {
    check_name(unit)?;
    let etc = tree.join("etc/systemd/system");
    let Ok(dirs) = fs::read_dir(&etc) else {
        return Ok(());
    };
    let points_to_unit = |p: &Path| {
        fs::read_link(p)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
            .is_some_and(|n| n == unit)
    };
    for e in dirs {
        let e = e.with_context(|| format!("listing {}", etc.display()))?;
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let ft = e
            .file_type()
            .with_context(|| format!("reading {}", path.display()))?;
        if ft.is_dir()
            && (name.ends_with(".wants")
                || name.ends_with(".requires")
                || name.ends_with(".upholds"))
        {
            let link = path.join(unit);
            if fs::symlink_metadata(&link).is_ok() {
                fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
            }
        } else if ft.is_symlink() && name != unit && points_to_unit(&path) {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Mask `unit`: `/etc/systemd/system/<unit>` → `/dev/null`.
pub fn mask(tree: &Path, unit: &str) -> Result<()> {
    check_name(unit)?;
    replace_symlink("/dev/null", &tree.join("etc/systemd/system").join(unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let u = d.path().join("usr/lib/systemd/system");
        fs::create_dir_all(&u).unwrap();
        fs::write(
            u.join("a.service"),
            "[Unit]\nDescription=a\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target sockets.target\nAlias=b.service\nAlso=c.socket\n",
        )
        .unwrap();
        fs::write(
            u.join("c.socket"),
            "[Socket]\n[Install]\nRequiredBy=sockets.target\n",
        )
        .unwrap();
        fs::write(u.join("static.service"), "[Service]\nExecStart=/bin/true\n").unwrap();
        fs::write(
            u.join("getty@.service"),
            "[Install]\nWantedBy=getty.target\nDefaultInstance=tty1\n",
        )
        .unwrap();
        d
    }

    fn link(d: &Path, rel: &str) -> String {
        fs::read_link(d.join(rel))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn enable_follows_install_section() {
        let d = tree();
        enable(d.path(), "a.service").unwrap();
        let etc = "etc/systemd/system";
        assert_eq!(
            link(
                d.path(),
                &format!("{etc}/multi-user.target.wants/a.service")
            ),
            "/usr/lib/systemd/system/a.service"
        );
        assert_eq!(
            link(d.path(), &format!("{etc}/sockets.target.wants/a.service")),
            "/usr/lib/systemd/system/a.service"
        );
        assert_eq!(
            link(d.path(), &format!("{etc}/b.service")),
            "/usr/lib/systemd/system/a.service"
        );
        assert_eq!(
            link(d.path(), &format!("{etc}/sockets.target.requires/c.socket")),
            "/usr/lib/systemd/system/c.socket"
        );
        enable(d.path(), "getty@.service").unwrap();
        assert_eq!(
            link(
                d.path(),
                &format!("{etc}/getty.target.wants/getty@tty1.service")
            ),
            "/usr/lib/systemd/system/getty@.service"
        );
        enable(d.path(), "getty@ttyS0.service").unwrap();
        assert_eq!(
            link(
                d.path(),
                &format!("{etc}/getty.target.wants/getty@ttyS0.service")
            ),
            "/usr/lib/systemd/system/getty@.service"
        );

        disable(d.path(), "a.service").unwrap();
        assert!(
            fs::symlink_metadata(d.path().join(etc).join("multi-user.target.wants/a.service"))
                .is_err()
        );
        assert!(fs::symlink_metadata(d.path().join(etc).join("b.service")).is_err());
        // Also= units stay enabled, as with systemctl.
        assert!(
            fs::symlink_metadata(d.path().join(etc).join("sockets.target.requires/c.socket"))
                .is_ok()
        );
    }

    #[test]
    fn errors_are_clear() {
        let d = tree();
        let e = enable(d.path(), "missing.service").unwrap_err().to_string();
        assert!(e.contains("no such unit"), "{e}");
        let e = enable(d.path(), "static.service").unwrap_err().to_string();
        assert!(e.contains("no [Install] section"), "{e}");
        assert!(mask(d.path(), "../x.service").is_err());
    }

    #[test]
    fn mask_replaces_links() {
        let d = tree();
        enable(d.path(), "a.service").unwrap();
        mask(d.path(), "b.service").unwrap();
        assert_eq!(link(d.path(), "etc/systemd/system/b.service"), "/dev/null");
        mask(d.path(), "swap.target").unwrap();
        assert_eq!(
            link(d.path(), "etc/systemd/system/swap.target"),
            "/dev/null"
        );
    }
}
