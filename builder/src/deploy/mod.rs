//! Stage `deploy`: a staged sysroot with the commit deployed and the boot menu generated.

use std::path::Path;

/// Put into the OS tree (while `/etc` is still `/etc`) what the booted system needs to keep
/// its boot menu right on later deploys (the `grub-mkconfig` replacement libostree calls).
/// Called by `compose::ostreeify` before `/etc` moves to `/usr/etc`.
pub fn install_boot_hooks(_tree: &Path) -> anyhow::Result<()> {
    // Filled in by the deploy stage's implementation.
    Ok(())
}
