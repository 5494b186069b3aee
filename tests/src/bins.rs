//! The doubles' executables for tests in other crates (integration tests of this crate get
//! them from Cargo as `CARGO_BIN_EXE_<name>`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use nodeimg_common::Cmd;

/// The `nodeimg-tests` binary `name` (`kubeadm-double`, `kubelet-double`, ...), built on first
/// use in the calling test's profile (debug or release), so a stale copy is never tested.
pub fn built(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    // A test executable lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test executable under <target>/<profile>/deps")
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Cmd::new(cargo)
        .args(["build", "-q", "-p", "nodeimg-tests", "--bin", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd = cmd.arg("--release");
    }
    cmd.run()
        .unwrap_or_else(|e| panic!("building the {name} binary: {e:#}"));
    let p = profile_dir.join(name);
    assert!(p.exists(), "{} missing after the build", p.display());
    built.insert(name.to_owned(), p.clone());
    p
}
