//! `nodeimg`: turns a TOML recipe into an OSTree commit of a Kubernetes node OS, bootable disk
//! images (raw, qcow2, vhd) and PXE/kickstart install material.
//!
//! The pipeline is a chain of stages, each a module with a typed input and output and its own
//! content-addressed cache key (see DESIGN.md):
//! `recipe` → `fetch` → `compose::rootfs` → `compose::node` → `compose::ostreeify` →
//! `commit` → `deploy` → `disk` → `export` / `kickstart`.

pub mod boot;
pub mod build;
pub mod cache;
pub mod cli;
pub mod commit;
pub mod compose;
pub mod deploy;
pub mod disk;
pub mod export;
pub mod fetch;
pub mod kickstart;
pub mod manifest;
pub mod progress;
pub mod publish;
pub mod recipe;
