//! The build cache: where each stage keeps its outputs, keyed by the digest of its inputs.
