//! Golden files for everything the deploy stage renders: the static `/boot/grub/grub.cfg`,
//! the generated `loader.N/grub.cfg` (from BLS entries in `testdata/deploy/entries/`) and the
//! image's `/usr/sbin/grub-mkconfig` shim. `UPDATE_GOLDEN=1` rewrites the files.

use std::path::{Path, PathBuf};

use nodeimg_builder::deploy::{bls, grub_menu};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/deploy")
}

fn check_golden(name: &str, actual: &str) {
    let path = testdata().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        nodeimg_common::fsutil::atomic_write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from the rendered output (UPDATE_GOLDEN=1 to accept):\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[test]
fn static_boot_grub_cfg() {
    check_golden("boot-grub.cfg", &grub_menu::render_static_grub_cfg());
}

#[test]
fn loader_menu_from_two_deployments() {
    let entries = bls::read_entries(&testdata().join("entries")).unwrap();
    // Newest deployment (highest version) first: it is the default, the previous one is the
    // second menu entry, where a later boot-counting fallback will point.
    assert_eq!(
        entries.iter().map(|e| e.version).collect::<Vec<_>>(),
        [2, 1]
    );
    let menu = grub_menu::render_loader_menu(&entries);
    check_golden("loader-grub.cfg", &menu);
}

#[test]
fn grub_mkconfig_shim() {
    check_golden("grub-mkconfig", &grub_menu::render_mkconfig_shim());
}

#[test]
fn shim_is_valid_posix_shell() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("grub-mkconfig");
    std::fs::write(&p, grub_menu::render_mkconfig_shim()).unwrap();
    // `sh -n` parses without running: catches quoting mistakes in the template.
    nodeimg_common::Cmd::new("sh")
        .arg("-n")
        .arg(&p)
        .run()
        .unwrap();
    // Without -o it must refuse rather than print a menu somewhere.
    let err = nodeimg_common::Cmd::new("sh").arg(&p).run().unwrap_err();
    assert_eq!(err.exit_code(), Some(2), "{err}");
    assert!(err.to_string().contains("-o FILE is required"), "{err}");
}
