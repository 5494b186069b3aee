//! Node config schema v1 (user-data), shared with `nodeimg` for build-time validation.
