//! Reading a guest's serial log: raw bytes with ANSI escapes and carriage returns, turned into
//! plain text for matching.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result};
use regex::Regex;

fn ansi() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // CSI sequences (colours, cursor moves, `ESC[=3h` from OVMF) and two-byte escapes.
    RE.get_or_init(|| Regex::new(r"\x1b(\[[0-9;?=]*[A-Za-z]|[()][0-9A-Za-z]|[78=>cDEHM])").unwrap())
}

/// Serial output as text: lossy UTF-8, escapes and `\r` removed.
pub fn clean(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    ansi().replace_all(&text, "").replace('\r', "")
}

/// The cleaned text of a serial log file; an absent file reads as empty (qemu creates it
/// only once it starts).
pub fn read_clean(path: &Path) -> Result<String> {
    match std::fs::read(path) {
        Ok(b) => Ok(clean(&b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading serial log {}", path.display())),
    }
}

/// The last `n` lines of `text`, for error messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Values of the console lines `PREFIX: value` (prefix without the colon), in order. A guest
/// test unit prints e.g. `E2E-BOOTED: <commit>`; with `StandardOutput=journal+console` the
/// line carries a `[ time] unit[pid]: ` prefix, which is skipped.
pub fn report_values<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    let tag = format!("{prefix}:");
    text.lines()
        .filter_map(|l| l.find(&tag).map(|at| l[at + tag.len()..].trim()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_values_skip_noise() {
        let text =
            "[  3.1] foo\nE2E-BOOTED: abc\n[ 4.0] x[1]: E2E-FAILED-COUNT: 0\nE2E-BOOTEDX: no\n";
        assert_eq!(report_values(text, "E2E-BOOTED"), ["abc"]);
        assert_eq!(report_values(text, "E2E-FAILED-COUNT"), ["0"]);
        assert!(report_values(text, "E2E-MISSING").is_empty());
    }

    #[test]
    fn strips_escapes_and_carriage_returns() {
        let raw = b"\x1b[=3h\x1b[0;32m  OK  \x1b[0m] Reached target\r\nBdsDxe: x\x1b[2J\r\n";
        assert_eq!(clean(raw), "  OK  ] Reached target\nBdsDxe: x\n");
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
