//! The two GRUB configuration files on the `/boot` partition, and the image-side
//! `grub-mkconfig` replacement that keeps the generated one current after in-VM deploys.
//!
//! - `/boot/grub/grub.cfg` is static: serial + console, find the partition labelled `boot`,
//!   hand over to `loader/grub.cfg`. It never changes after the build.
//! - `/boot/loader.N/grub.cfg` is the menu, one `menuentry` per BLS entry. It lives inside the
//!   directory libostree swaps atomically (`loader -> loader.N`), so the menu and the entries
//!   always change together. At build time [`render_loader_menu`] writes it; in the booted
//!   system libostree runs `/usr/sbin/grub-mkconfig -o /boot/loader.N/grub.cfg` on every
//!   deploy/undeploy, and [`render_mkconfig_shim`] is that program. Both produce the same text
//!   (proven by a test that runs the shim on the host against a staged sysroot).
//!
//! Boot counting: the menu's default is chosen only in [`menu_header`] (nodeboot's grubenv
//! counter block) and every entry keeps its position (`ostree-0-boot` = newest, `ostree-1-boot`
//! = previous), so falling back is `set default=1` and the entries stay untouched.

use std::fmt::Write as _;

use super::bls::BlsEntry;

/// Filesystem label of the `/boot` partition; GRUB finds its root by it.
pub const BOOT_LABEL: &str = "boot";

/// The id libostree's `grub2-generate` appends to each entry id (`GRUB2_BOOT_DEVICE_ID`).
const BOOT_DEVICE_ID: &str = "boot";

/// First lines of every generated menu. `load_video` is called by each entry (the form
/// `grub2-generate` emits) but there is no display to set up: serial console only.
///
/// The default entry comes from nodeboot's boot-counting block: entry 0 (the newest
/// deployment) normally, entry 1 (the previous one) once an upgraded deployment has used up
/// its tries without the health gate confirming it.
pub fn menu_header() -> String {
    let snippet = nodeboot::lifecycle::bootcount::grub_snippet();
    let sep = if snippet.ends_with('\n') { "" } else { "\n" };
    format!("{snippet}{sep}set timeout=1\nfunction load_video {{ true; }}\n")
}

/// How each entry selects the partition its paths are relative to.
fn prepare_root() -> String {
    format!("search --no-floppy --label --set=root {BOOT_LABEL}")
}

/// The static `/boot/grub/grub.cfg` (loaded by the GRUB cores the disk stage builds, whose
/// embedded config sets `prefix=($root)/grub`).
pub fn render_static_grub_cfg() -> String {
    format!(
        "serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         {}\n\
         configfile ($root)/loader/grub.cfg\n",
        prepare_root()
    )
}

/// The generated `/boot/loader.N/grub.cfg` for `entries` in menu order (see
/// `bls::read_entries`). The layout matches `ostree admin instutil grub2-generate` after the
/// shim's rewrites: `linux`/`initrd` (work on both i386-pc and x86_64-efi, unlike `linux16`)
/// and `gfxpayload=text` (there is no display; `keep` makes UEFI GRUB print an error).
pub fn render_loader_menu(entries: &[BlsEntry]) -> String {
    let mut out = menu_header();
    for (index, e) in entries.iter().enumerate() {
        let title = e.title.as_deref().unwrap_or("(Untitled)");
        let id = format!("ostree-{index}-{BOOT_DEVICE_ID}");
        // `write!` into a String cannot fail.
        let _ = writeln!(
            out,
            "menuentry {} --class gnu-linux --class gnu --class os --unrestricted {} {{",
            shell_quote(title),
            shell_quote(&id)
        );
        out.push_str("load_video\nset gfxpayload=text\ninsmod gzio\n");
        out.push_str(&prepare_root());
        out.push('\n');
        let _ = write!(out, "linux {}", e.linux);
        if let Some(opts) = &e.options {
            let _ = write!(out, " {opts}");
        }
        out.push('\n');
        if !e.initrd.is_empty() {
            let paths: Vec<&str> = e.initrd.iter().map(|p| p.as_str()).collect();
            let _ = writeln!(out, "initrd {}", paths.join(" "));
        }
        out.push_str("}\n");
    }
    out
}

/// Quote like GLib's `g_shell_quote`, which `grub2-generate` uses for titles and ids: always
/// single quotes, an embedded `'` becomes `'\''`. GRUB's parser reads this the same way.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Path of the shim inside the OS tree; libostree on Debian is built with
/// `GRUB2_MKCONFIG_PATH=/usr/sbin/grub-mkconfig`.
pub const MKCONFIG_SHIM_PATH: &str = "usr/sbin/grub-mkconfig";

/// The `/usr/sbin/grub-mkconfig` shipped in the image.
///
/// A shell script around `ostree admin instutil grub2-generate`, not a `nodeboot`
/// subcommand: this runs inside libostree's deploy transaction, and a broken menu makes the
/// node unbootable, so it depends only on what every image has (`/bin/sh`, `sed`, `grep` and
/// the `ostree` CLI that ships with libostree) and not on the node agent being present and
/// healthy. libostree's own generator reads the BLS entries with the parser the in-image
/// libostree writes them with; the script only normalises its output to the build-time form.
pub fn render_mkconfig_shim() -> String {
    let header_lines: String = menu_header()
        .lines()
        .map(|l| format!(" '{}'", l.replace('\'', r"'\''")))
        .collect();
    format!(
        r#"#!/bin/sh
# grub-mkconfig replacement installed by nodeimg (builder/src/deploy/grub_menu.rs).
#
# libostree runs `grub-mkconfig -o /boot/loader.N/grub.cfg` with _OSTREE_GRUB2_BOOTVERSION=N
# on every deploy and undeploy. Debian's GRUB 2.06 cannot read BLS entries itself, so this
# turns /boot/loader.N/entries into menuentry blocks with `ostree admin instutil
# grub2-generate` and rewrites them to the form the image builder writes: `linux`/`initrd`
# (linux16/linuxefi do not work on both BIOS and UEFI) and `gfxpayload=text` (no display).
# NODEIMG_SYSROOT (tests on the build host only) points at a staged sysroot.
set -eu

out=
while [ $# -gt 0 ]; do
    case "$1" in
        -o) [ $# -ge 2 ] || {{ echo "grub-mkconfig (nodeimg): -o needs a file" >&2; exit 2; }}
            out=$2; shift 2 ;;
        --output=*) out=${{1#--output=}}; shift ;;
        *) echo "grub-mkconfig (nodeimg): unsupported argument: $1" >&2; exit 2 ;;
    esac
done
[ -n "$out" ] || {{ echo "grub-mkconfig (nodeimg): -o FILE is required" >&2; exit 2; }}

set --
if [ -n "${{NODEIMG_SYSROOT:-}}" ]; then
    set -- "$@" --sysroot="$NODEIMG_SYSROOT"
fi
# Without a boot version (a manual run) grub2-generate reads the current loader directory.
if [ -n "${{_OSTREE_GRUB2_BOOTVERSION:-}}" ]; then
    set -- "$@" "$_OSTREE_GRUB2_BOOTVERSION"
fi

entries="$out.entries.tmp"
tmp="$out.tmp"
trap 'rm -f "$entries" "$tmp"' EXIT
GRUB2_BOOT_DEVICE_ID={device_id} \
GRUB2_PREPARE_ROOT_CACHE='{prepare_root}' \
    ostree admin instutil grub2-generate "$@" > "$entries"
# An empty menu would leave the machine unbootable: fail, so libostree aborts the deploy.
grep -q '^menuentry ' "$entries" || {{
    echo "grub-mkconfig (nodeimg): no boot entries generated" >&2; exit 1; }}
{{
    printf '%s\n'{header_lines}
    sed -e 's/^set gfxpayload=keep$/set gfxpayload=text/' \
        -e 's/^linux16 /linux /' -e 's/^linuxefi /linux /' \
        -e 's/^initrd16 /initrd /' -e 's/^initrdefi /initrd /' "$entries"
}} > "$tmp"
sync "$tmp" 2>/dev/null || true
mv -f "$tmp" "$out"
"#,
        device_id = BOOT_DEVICE_ID,
        prepare_root = prepare_root(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn entry(version: u64, title: &str, serial: u32) -> BlsEntry {
        BlsEntry::parse(
            &format!(
                "title {title}\nversion {version}\n\
                 options root=LABEL=root rw ostree=/ostree/boot.1/debian/abc/{serial}\n\
                 linux /ostree/debian-abc/vmlinuz-6.1\ninitrd /ostree/debian-abc/initramfs-6.1.img\n"
            ),
            Path::new("e.conf"),
        )
        .unwrap()
    }

    #[test]
    fn quoting_matches_glib() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn entries_are_numbered_in_the_given_order() {
        let menu = render_loader_menu(&[entry(2, "new", 0), entry(1, "old", 1)]);
        let ids: Vec<&str> = menu
            .lines()
            .filter(|l| l.starts_with("menuentry "))
            .map(|l| l.rsplit(' ').nth(1).unwrap())
            .collect();
        assert_eq!(ids, ["'ostree-0-boot'", "'ostree-1-boot'"]);
        assert!(menu.starts_with(&menu_header()));
        assert!(!menu.contains("linux16") && !menu.contains("gfxpayload=keep"));
    }

    #[test]
    fn entry_without_options_or_initrd() {
        let e = BlsEntry::parse("version 1\nlinux /k\n", Path::new("x.conf")).unwrap();
        let menu = render_loader_menu(&[e]);
        assert!(menu.contains("menuentry '(Untitled)' "), "{menu}");
        assert!(menu.contains("\nlinux /k\n}\n"), "{menu}");
        assert!(!menu.contains("initrd"), "{menu}");
    }
}
