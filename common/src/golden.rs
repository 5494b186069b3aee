//! Golden-file comparison for rendered output (configs, units, kickstarts, grub.cfg).
//! `UPDATE_GOLDEN=1` rewrites the golden file instead of comparing; otherwise any difference
//! fails with both texts shown. Golden files are never edited by hand.

use std::path::Path;

/// Compare `actual` with the file at `path` (or rewrite it under `UPDATE_GOLDEN=1`).
/// Panics on mismatch: meant for tests.
pub fn assert_golden(path: impl AsRef<Path>, actual: &str) {
    let path = path.as_ref();
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("creating golden directory");
        }
        crate::fsutil::atomic_write(path, actual).expect("writing golden file");
        return;
    }
    let expected = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run the test with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || expected.lines().count().min(actual.lines().count()) + 1,
                |i| i + 1,
            );
        panic!(
            "{} differs from the rendered output at line {first} (UPDATE_GOLDEN=1 to accept):\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        );
    }
}
