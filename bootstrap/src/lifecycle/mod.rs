//! OS lifecycle of a node: atomic upgrade, Kubernetes-aware health gate, automatic rollback.
//!
//! - [`os_state`]: the state machine persisted in `/var/lib/nodeboot/os-state.json`;
//! - [`ostree_ops`]: status, pull + deploy, reorder-based rollback through libostree;
//! - [`health`]: the checks (systemd units, kubelet healthz, Node `Ready`) with a deadline;
//! - [`bootcount`]: GRUB environment block and the menu snippet that falls back to the
//!   previous deployment when a new one cannot reach userspace;
//! - [`gate`]: the flows that tie them together (upgrade, rollback, health gate, status);
//! - [`command`]: the `nodeboot upgrade|rollback|health` arguments and output.
//!
//! See docs/lifecycle.md.

pub mod bootcount;
pub mod command;
pub mod gate;
pub mod health;
pub mod os_state;
pub mod ostree_ops;
