//! `manifest.json` (what went into a build) and the SPDX 2.3 SBOM.
