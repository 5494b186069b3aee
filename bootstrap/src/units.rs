//! The systemd units nodeboot ships. `nodeimg` installs them into images from here, so the
//! unit files in `bootstrap/units/` are the single source.

/// First boot: `nodeboot run` until the `done` marker exists.
pub const NODEBOOT_SERVICE: &str = include_str!("../units/nodeboot.service");

/// After an OS change: `nodeboot health` confirms the new deployment or rolls it back. Runs
/// only while `/var/lib/nodeboot/os-change-pending` exists (docs/lifecycle.md).
pub const NODEBOOT_HEALTH_SERVICE: &str = include_str!("../units/nodeboot-health.service");
