//! Boot counting through the GRUB environment block: the fallback for a new deployment that
//! never reaches userspace (kernel panic, initramfs or systemd failure), where the health
//! gate cannot run.
//!
//! When an upgrade is deployed, nodeboot *arms* the counter in `/boot/grub/grubenv`
//! (`boot_success=0`, `boot_counter=N`). The GRUB menu ([`grub_snippet`], included by the
//! deploy stage in the menu header in place of `set default=0`) spends one try per boot of
//! the new default entry; with no try left it boots entry 1, the previous deployment. The
//! health gate *disarms* it (`boot_success=1`, no counter) before it confirms or rolls back,
//! so a settled node always boots entry 0.
//!
//! This needs the node to actually reboot when the new deployment hangs or panics: the image
//! should carry `panic=10` on the kernel command line and a watchdog (see docs/lifecycle.md).
//!
//! The environment block format is GRUB's (`grub-core/lib/envblk.c`): exactly
//! [`GRUBENV_SIZE`] bytes, the signature line, `name=value` lines (`\` and newline in a value
//! escaped with a `\`), other lines starting with `#` kept as comments, padded with `#` to the
//! end. [`GrubEnv`] edits it the way `grub-editenv` does (values replaced in place, new
//! variables appended, comments kept), so the result is byte-identical.

use std::path::Path;

use anyhow::{bail, Context, Result};
use nodeimg_common::fsutil::atomic_write;

/// Size of every GRUB environment block written by `grub-editenv` (and `save_env` keeps it).
pub const GRUBENV_SIZE: usize = 1024;
/// First line of a GRUB environment block.
pub const SIGNATURE: &str = "# GRUB Environment Block\n";
/// Where the block lives on a node (the `/boot` partition, found by GRUB by its label).
pub const DEFAULT_GRUBENV: &str = "/boot/grub/grubenv";
/// Tries a new deployment gets before GRUB falls back.
pub const DEFAULT_TRIES: u32 = 3;
/// The menu snippet decrements with literal cases, so the count is bounded.
pub const MAX_TRIES: u32 = 5;

/// Variable set to `0` while a new deployment is unconfirmed, `1` once the gate disarmed it.
pub const VAR_SUCCESS: &str = "boot_success";
/// Tries left for the new default entry.
pub const VAR_COUNTER: &str = "boot_counter";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// A line starting with `#` (without its newline), kept as is.
    Comment(String),
    /// `name=value`, the value in its escaped on-disk form.
    Var { name: String, raw: String },
}

/// A GRUB environment block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GrubEnv {
    lines: Vec<Line>,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '\\' || c == '\n' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl GrubEnv {
    /// Parse a block; `origin` names it in errors.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Self> {
        let text = std::str::from_utf8(bytes)
            .with_context(|| format!("{origin}: the GRUB environment block is not UTF-8"))?;
        let Some(body) = text.strip_prefix(SIGNATURE) else {
            bail!(
                "{origin}: not a GRUB environment block (no `{}` line)",
                SIGNATURE.trim_end()
            );
        };
        let mut lines = Vec::new();
        let mut rest = body;
        let mut line_no = 1;
        while !rest.is_empty() {
            line_no += 1;
            // A value may contain an escaped newline: a line ends at an unescaped one.
            let mut end = None;
            let mut escaped = false;
            for (i, b) in rest.bytes().enumerate() {
                match b {
                    _ if escaped => escaped = false,
                    b'\\' => escaped = true,
                    b'\n' => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let Some(end) = end else {
                // The padding: `#` up to the end, no newline.
                if rest.bytes().all(|b| b == b'#') {
                    break;
                }
                bail!("{origin}:{line_no}: unterminated line in the GRUB environment block");
            };
            let line = &rest[..end];
            rest = &rest[end + 1..];
            if line.starts_with('#') {
                lines.push(Line::Comment(line.to_owned()));
                continue;
            }
            let Some((name, raw)) = line.split_once('=') else {
                bail!("{origin}:{line_no}: `{line}` is not `name=value`");
            };
            if !valid_name(name) {
                bail!("{origin}:{line_no}: `{name}` is not a GRUB variable name");
            }
            lines.push(Line::Var {
                name: name.to_owned(),
                raw: raw.to_owned(),
            });
        }
        Ok(GrubEnv { lines })
    }

    /// The block, padded to [`GRUBENV_SIZE`] bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = String::from(SIGNATURE);
        for line in &self.lines {
            match line {
                Line::Comment(c) => out.push_str(c),
                Line::Var { name, raw } => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(raw);
                }
            }
            out.push('\n');
        }
        if out.len() > GRUBENV_SIZE {
            bail!(
                "the GRUB environment block would need {} bytes; GRUB's is {GRUBENV_SIZE}",
                out.len()
            );
        }
        let mut bytes = out.into_bytes();
        bytes.resize(GRUBENV_SIZE, b'#');
        Ok(bytes)
    }

    pub fn get(&self, name: &str) -> Option<String> {
        self.lines.iter().find_map(|l| match l {
            Line::Var { name: n, raw } if n == name => Some(unescape(raw)),
            _ => None,
        })
    }

    /// Set `name` (in place when it exists, else appended), like `grub-editenv set`.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        if !valid_name(name) {
            bail!("`{name}` is not a GRUB variable name");
        }
        let raw = escape(value);
        for line in &mut self.lines {
            if let Line::Var { name: n, raw: r } = line {
                if n == name {
                    *r = raw;
                    return Ok(());
                }
            }
        }
        self.lines.push(Line::Var {
            name: name.to_owned(),
            raw,
        });
        Ok(())
    }

    /// Remove `name`, like `grub-editenv unset`.
    pub fn unset(&mut self, name: &str) {
        self.lines
            .retain(|l| !matches!(l, Line::Var { name: n, .. } if n == name));
    }

    /// The variables in order, values unescaped.
    pub fn vars(&self) -> Vec<(String, String)> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Var { name, raw } => Some((name.clone(), unescape(raw))),
                Line::Comment(_) => None,
            })
            .collect()
    }
}

/// Read the block at `path`; `None` when there is none yet.
pub fn read(path: &Path) -> Result<Option<GrubEnv>> {
    match std::fs::read(path) {
        Ok(bytes) => GrubEnv::parse(&bytes, &path.display().to_string()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write(path: &Path, env: &GrubEnv) -> Result<()> {
    atomic_write(path, env.to_bytes()?).with_context(|| format!("writing {}", path.display()))
}

/// Whether boot counting is possible here: the GRUB directory on `/boot` exists (it does not
/// on systemd-boot images or hosts without GRUB).
pub fn available(path: &Path) -> bool {
    path.parent().is_some_and(Path::is_dir)
}

/// Give the new default deployment `tries` boots to reach the health gate.
pub fn arm(path: &Path, tries: u32) -> Result<()> {
    if !(1..=MAX_TRIES).contains(&tries) {
        bail!("boot tries must be between 1 and {MAX_TRIES}, not {tries}");
    }
    let mut env = read(path)?.unwrap_or_default();
    env.set(VAR_SUCCESS, "0")?;
    env.set(VAR_COUNTER, &tries.to_string())?;
    write(path, &env)
}

/// Stop counting: the default entry boots from now on. No block: nothing to do.
pub fn disarm(path: &Path) -> Result<()> {
    let Some(mut env) = read(path)? else {
        return Ok(());
    };
    if env.get(VAR_SUCCESS).as_deref() == Some("1") && env.get(VAR_COUNTER).is_none() {
        return Ok(());
    }
    env.set(VAR_SUCCESS, "1")?;
    env.unset(VAR_COUNTER);
    write(path, &env)
}

/// Counter state for `nodeboot status`: `None` when not armed, else the tries left.
pub fn armed(path: &Path) -> Result<Option<u32>> {
    let Some(env) = read(path)? else {
        return Ok(None);
    };
    if env.get(VAR_SUCCESS).as_deref() != Some("0") {
        return Ok(None);
    }
    Ok(env.get(VAR_COUNTER).and_then(|c| c.parse().ok()))
}

/// The GRUB script that replaces `set default=0` in the generated menu's header. Entry 0 is
/// the newest deployment, entry 1 the previous one (libostree's order). It finds the `/boot`
/// partition by its label itself, so it does not depend on what the static `grub.cfg` left
/// in `$root`. `save_env` works on the ext4 `/boot` (GRUB rewrites the block's sectors in
/// place).
pub fn grub_snippet() -> &'static str {
    r#"# Boot counting (nodeboot, docs/lifecycle.md): after an upgrade nodeboot sets
# boot_success=0 and boot_counter=N in /boot/grub/grubenv; each boot of the new entry 0
# spends one try; with none left entry 1, the previous deployment, boots instead. The
# health gate sets boot_success=1 and removes the counter.
set default=0
search --no-floppy --label --set=nodeimg_boot boot
if [ -f (${nodeimg_boot})/grub/grubenv ]; then
  load_env --file (${nodeimg_boot})/grub/grubenv boot_success boot_counter
fi
if [ "${boot_success}" = "0" ]; then
  if [ "${boot_counter}" = "5" ]; then
    set boot_counter=4
    save_env --file (${nodeimg_boot})/grub/grubenv boot_counter
  elif [ "${boot_counter}" = "4" ]; then
    set boot_counter=3
    save_env --file (${nodeimg_boot})/grub/grubenv boot_counter
  elif [ "${boot_counter}" = "3" ]; then
    set boot_counter=2
    save_env --file (${nodeimg_boot})/grub/grubenv boot_counter
  elif [ "${boot_counter}" = "2" ]; then
    set boot_counter=1
    save_env --file (${nodeimg_boot})/grub/grubenv boot_counter
  elif [ "${boot_counter}" = "1" ]; then
    set boot_counter=0
    save_env --file (${nodeimg_boot})/grub/grubenv boot_counter
  else
    set default=1
  fi
fi
"#
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodeimg_common::Cmd;

    #[test]
    fn writes_the_exact_layout() {
        let mut env = GrubEnv::default();
        env.set("boot_success", "0").unwrap();
        env.set("boot_counter", "3").unwrap();
        let bytes = env.to_bytes().unwrap();
        assert_eq!(bytes.len(), GRUBENV_SIZE);
        let head = b"# GRUB Environment Block\nboot_success=0\nboot_counter=3\n";
        assert_eq!(&bytes[..head.len()], head);
        assert!(bytes[head.len()..].iter().all(|&b| b == b'#'));
        assert_eq!(GrubEnv::parse(&bytes, "x").unwrap(), env);
    }

    #[test]
    fn escapes_like_grub() {
        let mut env = GrubEnv::default();
        env.set("v", "a\\b\nc").unwrap();
        let bytes = env.to_bytes().unwrap();
        assert!(bytes.starts_with(b"# GRUB Environment Block\nv=a\\\\b\\\nc\n#"));
        let back = GrubEnv::parse(&bytes, "x").unwrap();
        assert_eq!(back.get("v").as_deref(), Some("a\\b\nc"));
    }

    #[test]
    fn edits_in_place_and_keeps_comments() {
        let mut text = String::from(SIGNATURE);
        text.push_str("# WARNING: keep me\nsaved_entry=x\nboot_counter=3\n");
        let mut bytes = text.into_bytes();
        bytes.resize(GRUBENV_SIZE, b'#');
        let mut env = GrubEnv::parse(&bytes, "x").unwrap();
        env.set("saved_entry", "y").unwrap();
        env.unset("boot_counter");
        env.set("boot_success", "1").unwrap();
        let out = env.to_bytes().unwrap();
        assert!(out.starts_with(
            b"# GRUB Environment Block\n# WARNING: keep me\nsaved_entry=y\nboot_success=1\n#"
        ));
    }

    #[test]
    fn rejects_bad_blocks() {
        assert!(GrubEnv::parse(b"hello", "f").is_err());
        let mut b = SIGNATURE.as_bytes().to_vec();
        b.extend_from_slice(b"novalue\n");
        let err = GrubEnv::parse(&b, "/boot/grub/grubenv")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/boot/grub/grubenv:2:"), "{err}");
        let mut b = SIGNATURE.as_bytes().to_vec();
        b.extend_from_slice(b"a=1");
        assert!(GrubEnv::parse(&b, "f").is_err(), "unterminated");
        let mut env = GrubEnv::default();
        assert!(env.set("bad name", "1").is_err());
        env.set("big", &"x".repeat(1000)).unwrap();
        assert!(env.to_bytes().is_err(), "over 1024 bytes");
    }

    #[test]
    fn arm_and_disarm() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grubenv");
        assert_eq!(armed(&path).unwrap(), None);
        disarm(&path).unwrap();
        assert!(!path.exists(), "disarming nothing writes nothing");
        arm(&path, 3).unwrap();
        assert_eq!(armed(&path).unwrap(), Some(3));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), GRUBENV_SIZE as u64);
        disarm(&path).unwrap();
        assert_eq!(armed(&path).unwrap(), None);
        let env = read(&path).unwrap().unwrap();
        assert_eq!(env.vars(), [("boot_success".to_owned(), "1".to_owned())]);
        assert!(arm(&path, 0).is_err());
        assert!(arm(&path, MAX_TRIES + 1).is_err());
    }

    /// `grub-editenv` (grub-common) is the oracle: our edits of a block it created are
    /// byte-identical to its own, and it reads what we write from scratch.
    #[test]
    fn byte_identical_to_grub_editenv() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("theirs");
        let ours = dir.path().join("ours");
        Cmd::new("grub-editenv")
            .arg(&theirs)
            .arg("create")
            .run()
            .unwrap();
        std::fs::copy(&theirs, &ours).unwrap();
        Cmd::new("grub-editenv")
            .arg(&theirs)
            .args(["set", "saved_entry=0", "boot_success=0", "boot_counter=3"])
            .run()
            .unwrap();
        Cmd::new("grub-editenv")
            .arg(&theirs)
            .args(["unset", "saved_entry"])
            .run()
            .unwrap();
        let mut env = read(&ours).unwrap().unwrap();
        env.set("saved_entry", "0").unwrap();
        env.set("boot_success", "0").unwrap();
        env.set("boot_counter", "3").unwrap();
        env.unset("saved_entry");
        assert_eq!(env.to_bytes().unwrap(), std::fs::read(&theirs).unwrap());

        let fresh = dir.path().join("fresh");
        arm(&fresh, 2).unwrap();
        let listed = Cmd::new("grub-editenv")
            .arg(&fresh)
            .arg("list")
            .stdout_string()
            .unwrap();
        assert_eq!(listed, "boot_success=0\nboot_counter=2");
    }

    #[test]
    fn snippet_matches_golden_and_passes_grub_script_check() {
        let golden =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/lifecycle/grub-bootcount.cfg");
        nodeimg_common::golden::assert_golden(golden, grub_snippet());
        Cmd::new("grub-script-check")
            .stdin(grub_snippet())
            .run()
            .unwrap();
        // Every count `arm` accepts has a decrement case.
        for n in 1..=MAX_TRIES {
            assert!(
                grub_snippet().contains(&format!(
                    "= \"{n}\" ]; then\n    set boot_counter={}",
                    n - 1
                )),
                "{n}"
            );
        }
    }
}
