//! GPG signing of commits, the signing scheme Debian 12's libostree (2022.7, built with gpgme
//! but without libsodium) supports. The signature is a detached metadata entry
//! (`ostree.gpgsigs`, stored as `<commit>.commitmeta` next to the commit object).

use std::path::Path;

use anyhow::{bail, Context, Result};
use nodeimg_common::digest::Sha256Hex;
use nodeimg_common::fsutil::atomic_write;
use nodeimg_common::Cmd;
use ostree::gio;

/// The GPG key a build signs with.
#[derive(Debug, Clone, Copy)]
pub struct GpgKey<'a> {
    /// Key id (16 hex digits) or fingerprint (40).
    pub key_id: &'a str,
    /// GnuPG home holding the secret key; `None`: `GNUPGHOME` or `~/.gnupg`, as gpg decides.
    pub homedir: Option<&'a Path>,
}

impl GpgKey<'_> {
    fn homedir_str(&self) -> Result<Option<&str>> {
        let Some(dir) = self.homedir else {
            return Ok(None);
        };
        if !dir.is_dir() {
            bail!(
                "commit.gpg-homedir {} is not a directory (the GnuPG home holding the key {})",
                dir.display(),
                self.key_id
            );
        }
        dir.to_str()
            .map(Some)
            .with_context(|| format!("commit.gpg-homedir {} is not UTF-8", dir.display()))
    }

    fn describe(&self) -> String {
        match self.homedir {
            Some(h) => format!("GPG key {} from {}", self.key_id, h.display()),
            None => format!("GPG key {} from the default GnuPG home", self.key_id),
        }
    }
}

/// Add a GPG signature of `checksum` to its detached metadata. Inside a transaction the
/// signature is staged with it, so it lands together with the ref or not at all.
pub(super) fn sign(repo: &ostree::Repo, checksum: &str, key: &GpgKey<'_>) -> Result<()> {
    let homedir = key.homedir_str()?;
    repo.sign_commit(checksum, key.key_id, homedir, gio::Cancellable::NONE)
        .map_err(|e| {
            // gpgme reports a key that is not there as a bare "End of file".
            let hint = if e.message().contains("End of file") || e.message().contains("No such") {
                " (no such secret key: check commit.gpg-key-id against `gpg --list-secret-keys`)"
            } else {
                ""
            };
            anyhow::anyhow!("{}{hint}", e.message())
        })
        .with_context(|| format!("signing commit {checksum} with {}", key.describe()))
}

/// Copy the detached metadata (signatures) of `checksum` from `from` to `to`, so a pull from
/// `to` carries them too.
pub fn copy_signatures(from: &ostree::Repo, to: &ostree::Repo, checksum: &str) -> Result<()> {
    let cancel = gio::Cancellable::NONE;
    let meta = from
        .read_commit_detached_metadata(checksum, cancel)
        .with_context(|| format!("reading the signatures of commit {checksum}"))?;
    if let Some(meta) = meta {
        to.write_commit_detached_metadata(checksum, Some(&meta), cancel)
            .with_context(|| format!("copying the signatures of commit {checksum}"))?;
    }
    Ok(())
}

/// Export the public part of `key`, ASCII armored, to `dest` (atomically). Returns its
/// sha256. Fails when the key is not in the keyring: an empty export is not a key.
pub fn export_public_key(key: &GpgKey<'_>, dest: &Path) -> Result<Sha256Hex> {
    let armored = export(key, true)?;
    atomic_write(dest, &armored)?;
    Ok(Sha256Hex::of_bytes(&armored))
}

/// The public key as a binary OpenPGP keyring (what libostree's global keyring directory,
/// `/usr/share/ostree/trusted.gpg.d/*.gpg`, accepts: an armored file there is not read).
pub fn public_key_binary(key: &GpgKey<'_>) -> Result<Vec<u8>> {
    export(key, false)
}

fn export(key: &GpgKey<'_>, armor: bool) -> Result<Vec<u8>> {
    let mut cmd = Cmd::new("gpg").arg("--batch");
    if let Some(h) = key.homedir {
        cmd = cmd.arg("--homedir").arg(h);
    }
    if armor {
        cmd = cmd.arg("--armor");
    }
    let out = cmd
        .args(["--export", key.key_id])
        .output()
        .with_context(|| format!("exporting the public {}", key.describe()))?;
    // gpg exits 0 and prints nothing for a key it does not have.
    if out.stdout.is_empty() {
        bail!(
            "exporting the public {}: gpg exported nothing (no such key)",
            key.describe()
        );
    }
    Ok(out.stdout)
}

/// Check that commit `checksum` carries a good signature by `key`, the way a client with only
/// that public key checks it.
pub fn verify_signed_by(repo: &ostree::Repo, checksum: &str, key: &GpgKey<'_>) -> Result<()> {
    // libostree concatenates extra keyrings into a temporary pubring.gpg, so it needs the
    // binary form (an armored file there reads as no key at all).
    let dir = tempfile::tempdir().context("creating a temporary directory for a keyring")?;
    let keyring = dir.path().join("signer.gpg");
    std::fs::write(&keyring, export(key, false)?)
        .with_context(|| format!("writing {}", keyring.display()))?;
    let result = repo
        .verify_commit_ext(
            checksum,
            gio::File::NONE,
            Some(&gio::File::for_path(&keyring)),
            gio::Cancellable::NONE,
        )
        .with_context(|| {
            format!(
                "verifying the GPG signatures of commit {checksum} with {}",
                key.describe()
            )
        })?;
    result
        .require_valid_signature()
        .map_err(|e| anyhow::anyhow!("{}", e.message()))
        .with_context(|| {
            format!(
                "commit {checksum} has no good signature by {} ({} signature(s) in all)",
                key.describe(),
                result.count_all()
            )
        })
}
