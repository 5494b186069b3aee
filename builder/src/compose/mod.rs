//! Stages `rootfs`, `customize` and `ostreeify`: from packages to an OSTree-ready tree.
