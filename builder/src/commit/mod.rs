//! Stage `commit`: the OSTree-ready tree into an archive-mode repository with metadata.
//! (Named `commit`, not `ostree` as in DESIGN.md, so it does not shadow the `ostree` crate.)
