//! Per-phase state markers under /var/lib/nodeboot: resume after a crash, no-op when done.
