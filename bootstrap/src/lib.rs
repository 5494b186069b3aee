//! `nodeboot`: the agent baked into every nodeimg image.
//!
//! First boot: user-data from a [`sources`] provider → validated [`config::NodeConfig`] →
//! join material from a [`secrets`] store → `kubeadm init`/`join` → per-phase state markers.
//! The config schema is public so `nodeimg` can validate configs it embeds in images.

pub mod cli;
pub mod config;
pub mod firstboot;
pub mod install;
pub mod join;
pub mod kubeadm;
pub mod lifecycle;
pub mod secrets;
pub mod sources;
pub mod state;
pub mod units;
