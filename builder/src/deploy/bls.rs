//! Boot Loader Specification (type #1) entries as libostree writes them into
//! `/boot/loader.N/entries/ostree-<n>-<osname>.conf`.
//!
//! Debian's GRUB 2.06 has no `blscfg` module, so these entries have to be turned into GRUB
//! `menuentry` blocks (see `grub_menu`). Only the keys the menu needs are typed; the BLS spec
//! tells boot loaders to ignore keys they do not know, and so does this parser (libostree may
//! add keys such as `aboot` or `devicetree` in later versions).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// One parsed entry file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlsEntry {
    /// The file the entry came from (for error messages and ordering ties).
    pub source: PathBuf,
    /// Menu title; libostree writes `<PRETTY_NAME> (ostree:<index>)`.
    pub title: Option<String>,
    /// libostree writes `n - index` here, so the default deployment has the highest version.
    pub version: u64,
    /// Kernel command line, including the `ostree=` argument libostree appends.
    pub options: Option<String>,
    /// Kernel path relative to the root of the `/boot` file system.
    pub linux: BootPath,
    /// Initramfs paths (BLS allows several `initrd` lines; libostree writes one).
    pub initrd: Vec<BootPath>,
}

/// A path on the `/boot` file system as written in an entry: absolute, no whitespace (GRUB
/// would split it), no `..` (it must stay on the boot partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPath(String);

impl BootPath {
    pub fn parse(s: &str) -> Result<Self> {
        if !s.starts_with('/') {
            bail!("boot path `{s}` is not absolute");
        }
        if s.chars().any(char::is_whitespace) {
            bail!("boot path `{s}` contains whitespace");
        }
        if s.split('/').any(|c| c == "..") {
            bail!("boot path `{s}` leaves the boot partition (`..`)");
        }
        Ok(BootPath(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BootPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl BlsEntry {
    /// Parse the text of one entry. `source` is only used in error messages.
    pub fn parse(text: &str, source: &Path) -> Result<Self> {
        let mut title = None;
        let mut version = None;
        let mut options = None;
        let mut linux = None;
        let mut initrd = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            let lineno = idx + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = || format!("{}:{lineno}", source.display());
            let (key, value) = match line.split_once(char::is_whitespace) {
                Some((k, v)) => (k, v.trim()),
                None => (line, ""),
            };
            match key {
                "title" => set_once(&mut title, value.to_owned(), key, &at)?,
                "version" => {
                    let v: u64 = value.parse().with_context(|| {
                        format!("{}: field `version`: `{value}` is not a number", at())
                    })?;
                    set_once(&mut version, v, key, &at)?;
                }
                "options" => set_once(&mut options, value.to_owned(), key, &at)?,
                "linux" => {
                    let p = BootPath::parse(value)
                        .with_context(|| format!("{}: field `linux`", at()))?;
                    set_once(&mut linux, p, key, &at)?;
                }
                "initrd" => initrd.push(
                    BootPath::parse(value).with_context(|| format!("{}: field `initrd`", at()))?,
                ),
                other => {
                    tracing::debug!(file = %source.display(), line = lineno, key = other,
                        "ignoring BLS key the GRUB menu does not use");
                }
            }
        }
        let linux = linux.with_context(|| {
            format!(
                "{}: field `linux` is missing (every entry needs a kernel)",
                source.display()
            )
        })?;
        let version = version.with_context(|| {
            format!(
                "{}: field `version` is missing (it orders the menu)",
                source.display()
            )
        })?;
        Ok(BlsEntry {
            source: source.to_owned(),
            title: title.filter(|t| !t.is_empty()),
            version,
            options: options.filter(|o| !o.is_empty()),
            linux,
            initrd,
        })
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, key: &str, at: &dyn Fn() -> String) -> Result<()> {
    if slot.is_some() {
        bail!("{}: field `{key}` appears twice", at());
    }
    *slot = Some(value);
    Ok(())
}

/// Read every `*.conf` in `entries_dir` and return the entries in menu order: highest
/// `version` first, which is libostree's deployment order (index 0 = default).
pub fn read_entries(entries_dir: &Path) -> Result<Vec<BlsEntry>> {
    let mut entries = Vec::new();
    let dir = std::fs::read_dir(entries_dir)
        .with_context(|| format!("reading BLS entries in {}", entries_dir.display()))?;
    for item in dir {
        let item =
            item.with_context(|| format!("reading BLS entries in {}", entries_dir.display()))?;
        let path = item.path();
        if path.extension().and_then(|e| e.to_str()) != Some("conf") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading BLS entry {}", path.display()))?;
        entries.push(BlsEntry::parse(&text, &path)?);
    }
    sort_menu_order(&mut entries)?;
    Ok(entries)
}

/// Sort into menu order and reject two entries with the same version (the order would then
/// be arbitrary, and the default entry ambiguous).
pub fn sort_menu_order(entries: &mut [BlsEntry]) -> Result<()> {
    entries.sort_by(|a, b| b.version.cmp(&a.version).then(a.source.cmp(&b.source)));
    for pair in entries.windows(2) {
        if pair[0].version == pair[1].version {
            bail!(
                "BLS entries {} and {} both have version {}",
                pair[0].source.display(),
                pair[1].source.display(),
                pair[0].version
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENTRY: &str = "title Debian GNU/Linux 12 (bookworm) (ostree:0)
version 1
options root=LABEL=root rw ostree=/ostree/boot.1/debian/abc/0
linux /ostree/debian-abc/vmlinuz-6.1.0-50-amd64
initrd /ostree/debian-abc/initramfs-6.1.0-50-amd64.img
";

    fn parse(text: &str) -> Result<BlsEntry> {
        BlsEntry::parse(text, Path::new("loader.1/entries/ostree-1-debian.conf"))
    }

    #[test]
    fn parses_libostree_entry() {
        let e = parse(ENTRY).unwrap();
        assert_eq!(
            e.title.as_deref(),
            Some("Debian GNU/Linux 12 (bookworm) (ostree:0)")
        );
        assert_eq!(e.version, 1);
        assert_eq!(
            e.options.as_deref(),
            Some("root=LABEL=root rw ostree=/ostree/boot.1/debian/abc/0")
        );
        assert_eq!(
            e.linux.as_str(),
            "/ostree/debian-abc/vmlinuz-6.1.0-50-amd64"
        );
        assert_eq!(e.initrd.len(), 1);
        assert_eq!(
            e.initrd[0].as_str(),
            "/ostree/debian-abc/initramfs-6.1.0-50-amd64.img"
        );
    }

    #[test]
    fn ignores_comments_blank_lines_and_unknown_keys_and_tabs() {
        let e = parse("# c\n\ntitle\tT\nversion 3\nlinux   /k\ndevicetree /dtb\n").unwrap();
        assert_eq!(e.title.as_deref(), Some("T"));
        assert_eq!(e.version, 3);
        assert_eq!(e.linux.as_str(), "/k");
        assert!(e.initrd.is_empty());
        assert!(e.options.is_none());
    }

    #[test]
    fn missing_linux_names_file_and_field() {
        let err = parse("title T\nversion 1\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("ostree-1-debian.conf"), "{msg}");
        assert!(msg.contains("`linux`"), "{msg}");
    }

    #[test]
    fn bad_version_names_line() {
        let err = parse("title T\nversion one\nlinux /k\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("ostree-1-debian.conf:2"), "{msg}");
        assert!(msg.contains("`version`"), "{msg}");
    }

    #[test]
    fn duplicate_key_rejected() {
        let err = parse("version 1\nlinux /a\nlinux /b\n").unwrap_err();
        assert!(format!("{err:#}").contains(":3: field `linux` appears twice"));
    }

    #[test]
    fn relative_or_escaping_paths_rejected() {
        assert!(parse("version 1\nlinux vmlinuz\n").is_err());
        assert!(parse("version 1\nlinux /ostree/../../etc\n").is_err());
        let err = parse("version 1\nlinux /k\ninitrd /a b\n").unwrap_err();
        assert!(format!("{err:#}").contains(":3: field `initrd`"), "{err:#}");
    }

    #[test]
    fn menu_order_is_highest_version_first_and_rejects_ties() {
        let mk = |v: u64, name: &str| {
            BlsEntry::parse(&format!("version {v}\nlinux /k{v}\n"), Path::new(name)).unwrap()
        };
        let mut entries = vec![mk(1, "a.conf"), mk(3, "c.conf"), mk(2, "b.conf")];
        sort_menu_order(&mut entries).unwrap();
        let order: Vec<u64> = entries.iter().map(|e| e.version).collect();
        assert_eq!(order, [3, 2, 1]);
        let mut tie = vec![mk(1, "a.conf"), mk(1, "b.conf")];
        assert!(sort_menu_order(&mut tie).is_err());
    }
}
