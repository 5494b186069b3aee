//! The systemd units nodeboot ships. `nodeimg` installs them into images from here, so the
//! unit files in `bootstrap/units/` are the single source.

/// First boot: `nodeboot run` until the `done` marker exists.
pub const NODEBOOT_SERVICE: &str = include_str!("../units/nodeboot.service");
