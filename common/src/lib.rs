//! Shared building blocks for `nodeimg` (the image builder) and `nodeboot` (the on-node agent).
//!
//! Everything here exists exactly once in the workspace so that the rules it enforces hold
//! everywhere: external commands are run and checked one way ([`cmd`]), final outputs are
//! written one way ([`fsutil::atomic_write`]), and secret values have one type that refuses to
//! print itself ([`secret::Secret`]).

pub mod cmd;
pub mod digest;
pub mod fsutil;
pub mod golden;
pub mod logging;
pub mod secret;

pub use cmd::Cmd;
pub use secret::Secret;
