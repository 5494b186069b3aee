//! The CA public key pin joining nodes verify the cluster with: `sha256:` + hex SHA-256 of the
//! DER SubjectPublicKeyInfo of the CA certificate (kubeadm `pubkeypin.Hash`). Works for RSA and
//! ECDSA CAs alike, unlike the common `openssl rsa` recipe.

use std::path::Path;

use anyhow::{Context, Result};
use der::{Decode, Encode};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;

use crate::config::CaCertHash;

/// Hash of the first certificate in the PEM file at `ca_crt` (kubeadm's `pki/ca.crt`).
pub fn ca_cert_hash(ca_crt: &Path) -> Result<CaCertHash> {
    let pem = std::fs::read_to_string(ca_crt)
        .with_context(|| format!("reading the cluster CA {}", ca_crt.display()))?;
    ca_cert_hash_pem(&pem).with_context(|| format!("hashing the cluster CA {}", ca_crt.display()))
}

/// Hash of the first `CERTIFICATE` block in `pem`.
pub fn ca_cert_hash_pem(pem: &str) -> Result<CaCertHash> {
    let start = pem
        .find("-----BEGIN CERTIFICATE-----")
        .context("no PEM `CERTIFICATE` block")?;
    let end_marker = "-----END CERTIFICATE-----";
    let end = pem[start..]
        .find(end_marker)
        .map(|i| start + i + end_marker.len())
        .context("unterminated PEM `CERTIFICATE` block")?;
    let (label, der_bytes) = pem_rfc7468::decode_vec(&pem.as_bytes()[start..end])
        .map_err(|e| anyhow::anyhow!("invalid PEM: {e}"))?;
    anyhow::ensure!(
        label == "CERTIFICATE",
        "PEM block is `{label}`, not a certificate"
    );
    let cert = Certificate::from_der(&der_bytes)
        .map_err(|e| anyhow::anyhow!("invalid X.509 certificate: {e}"))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| anyhow::anyhow!("encoding the public key: {e}"))?;
    Ok(CaCertHash::from_digest(&Sha256::digest(&spki).into()))
}
