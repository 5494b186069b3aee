//! `manifest.json` (what went into a build) and the SPDX 2.3 SBOM, written into the build's
//! output directory `images/<name>-<version>/`.
//!
//! The directory is built under a temporary name ([`OutputDir`]) and appears complete or not
//! at all. Stages after the commit (disk images, PXE material) write their files into
//! [`OutputDir::path`] and [`OutputDir::register`] them; `finish` adds the manifest and the
//! SBOM and renames the directory into place.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nodeimg_common::digest::Sha256Hex;
use nodeimg_common::fsutil::{atomic_write, AtomicDir};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::compose::Package;

/// Bump when a field changes meaning or disappears.
pub const MANIFEST_VERSION: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";
pub const SBOM_FILE: &str = "sbom.spdx.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Manifest {
    pub manifest_version: u32,
    pub nodeimg_version: String,
    pub image: ImageInfo,
    pub recipe: RecipeInfo,
    pub inputs: Inputs,
    pub artifacts: Vec<ArtifactInfo>,
    pub packages: Vec<Package>,
    pub commit: CommitRecord,
    /// Formats asked for (`--format` or the recipe's `image.formats`).
    pub formats: Vec<String>,
    /// Files in the output directory besides the manifest and the SBOM.
    pub outputs: Vec<OutputFile>,
    pub stages: Vec<StageTiming>,
    /// What the build added to the repository for clients pulling from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishRecord>,
    /// Things asked for that this build could not produce, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The repository as a static HTTP server serves it to a fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PublishRecord {
    /// The summary file was regenerated (it lists the refs and the deltas).
    pub summary: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub static_delta: Option<DeltaRecord>,
}

/// A static delta from the ref's previous commit to the built one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeltaRecord {
    pub from: String,
    pub to: String,
    /// Directory of the delta, relative to the repository.
    pub path: String,
    /// Bytes of all its files (superblock and parts): what a client downloads.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ImageInfo {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RecipeInfo {
    pub path: String,
    pub digest: Sha256Hex,
    /// Every recipe file read (the recipe and the ones it extends or includes).
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Inputs {
    pub base_kind: String,
    pub suite: String,
    pub mirrors: Vec<String>,
    pub components: Vec<String>,
    pub kubernetes_version: String,
    pub kernel_version: String,
    /// Cache keys of the stages, for telling why something was rebuilt.
    pub rootfs_key: Sha256Hex,
    pub customize_key: Sha256Hex,
    pub commit_key: Sha256Hex,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ArtifactInfo {
    pub name: String,
    pub url: String,
    pub sha256: Sha256Hex,
    pub size: u64,
    pub dest: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CommitRecord {
    pub checksum: String,
    pub parent: Option<String>,
    #[serde(rename = "ref")]
    pub ostree_ref: String,
    pub repo: String,
    pub timestamp: u64,
    pub version: String,
    /// The commit existed already for these inputs and the ref pointed at it.
    pub reused: bool,
    /// The GPG key that signed the commit (`commit.gpg-key-id`), as published for clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpg_signature: Option<GpgSignatureRecord>,
}

/// The GPG key a commit is signed with and its public key in the repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GpgSignatureRecord {
    pub key_id: String,
    /// The ASCII-armored public key, relative to the repository (`<osname>.asc`): clients
    /// import it into their remote (`ostree remote gpg-import`).
    pub public_key: String,
    pub public_key_sha256: Sha256Hex,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OutputFile {
    pub name: String,
    pub format: String,
    pub sha256: Sha256Hex,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StageTiming {
    pub name: String,
    pub seconds: f64,
    /// The stage's result came from the cache.
    pub cached: bool,
}

/// The output directory of one build, complete only after [`OutputDir::finish`].
#[derive(Debug)]
pub struct OutputDir {
    dir: AtomicDir,
    outputs: Vec<OutputFile>,
}

impl OutputDir {
    /// Start `<output>/<name>-<version>/` (replaced as a whole on finish).
    pub fn create(output: &Path, name: &str, version: &str) -> Result<Self> {
        let dir = AtomicDir::create(output.join(format!("{name}-{version}")))?;
        Ok(OutputDir {
            dir,
            outputs: Vec::new(),
        })
    }

    /// Where stages write their files before [`OutputDir::finish`].
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The final location.
    pub fn target(&self) -> &Path {
        self.dir.target()
    }

    /// Record `name` (a file already written under [`OutputDir::path`], or under a
    /// subdirectory of it such as `pxe/`) in the manifest.
    pub fn register(&mut self, name: &str, format: &str) -> Result<&OutputFile> {
        let p = self.check_name(name)?;
        let sha256 = Sha256Hex::of_file(&p)?;
        self.register_hashed(name, format, sha256)
    }

    /// [`OutputDir::register`] for a file whose writer hashed it while writing (disk images:
    /// hashing several GiB again would double the export time).
    pub fn register_hashed(
        &mut self,
        name: &str,
        format: &str,
        sha256: Sha256Hex,
    ) -> Result<&OutputFile> {
        let p = self.check_name(name)?;
        let size = std::fs::metadata(&p)
            .with_context(|| format!("output {name} was not written"))?
            .len();
        self.outputs.push(OutputFile {
            name: name.to_owned(),
            format: format.to_owned(),
            sha256,
            size,
        });
        Ok(self.outputs.last().expect("just pushed"))
    }

    fn check_name(&self, name: &str) -> Result<PathBuf> {
        let bad = name.is_empty()
            || name.starts_with('/')
            || name
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
            || name == MANIFEST_FILE
            || name == SBOM_FILE;
        if bad {
            bail!("`{name}` cannot be registered as an output file");
        }
        if self.outputs.iter().any(|o| o.name == name) {
            bail!("output `{name}` registered twice");
        }
        Ok(self.path().join(name))
    }

    /// Write the manifest (with the registered outputs) and the SBOM, then move the
    /// directory into place. Returns the final path.
    pub fn finish(self, manifest: &mut Manifest) -> Result<PathBuf> {
        manifest.outputs = self.outputs.clone();
        let text = serde_json::to_string_pretty(manifest).context("serialising the manifest")?;
        atomic_write(self.path().join(MANIFEST_FILE), text + "\n")?;
        let sbom = serde_json::to_string_pretty(&spdx(manifest)).context("serialising the SBOM")?;
        atomic_write(self.path().join(SBOM_FILE), sbom + "\n")?;
        let target = self.target().to_path_buf();
        self.dir.commit()?;
        Ok(target)
    }
}

/// Percent-encode a purl version: everything but unreserved characters and `+`
/// (`:` of an epoch becomes `%3A`).
fn purl_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'~' | b'+') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The package URL of a Debian package.
pub fn deb_purl(p: &Package) -> String {
    format!(
        "pkg:deb/debian/{}@{}?arch={}",
        purl_escape(&p.name),
        purl_escape(&p.version),
        purl_escape(&p.arch)
    )
}

/// An SPDX identifier: letters, digits, `.` and `-` only.
fn spdx_id(prefix: &str, i: usize, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-{prefix}-{i}-{clean}")
}

/// The SPDX 2.3 document: the image, its Debian packages (with purls) and its downloaded
/// artifacts (with download location and SHA256). Deterministic: the creation time is the
/// commit's timestamp, the namespace is derived from the commit checksum.
pub fn spdx(m: &Manifest) -> serde_json::Value {
    let created = time::OffsetDateTime::from_unix_timestamp(m.commit.timestamp as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned());
    let doc_name = format!("{}-{}", m.image.name, m.image.version);
    let mut packages = vec![json!({
        "name": m.image.name,
        "SPDXID": "SPDXRef-Image",
        "versionInfo": m.image.version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "comment": format!("OSTree commit {} on ref {}", m.commit.checksum, m.commit.ostree_ref),
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": "SPDXRef-Image",
    })];
    for (i, p) in m.packages.iter().enumerate() {
        let id = spdx_id("deb", i, &p.name);
        packages.push(json!({
            "name": p.name,
            "SPDXID": id,
            "versionInfo": p.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": deb_purl(p),
            }],
        }));
        relationships.push(json!({
            "spdxElementId": "SPDXRef-Image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    for (i, a) in m.artifacts.iter().enumerate() {
        let id = spdx_id("artifact", i, &a.name);
        packages.push(json!({
            "name": a.name,
            "SPDXID": id,
            "downloadLocation": a.url,
            "filesAnalyzed": false,
            "checksums": [{ "algorithm": "SHA256", "checksumValue": a.sha256.as_str() }],
            "comment": format!("installed at {}", a.dest),
        }));
        relationships.push(json!({
            "spdxElementId": "SPDXRef-Image",
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": doc_name,
        "documentNamespace": format!("https://nodeimg.invalid/spdx/{doc_name}-{}", m.commit.checksum),
        "creationInfo": {
            "created": created,
            "creators": [format!("Tool: nodeimg-{}", m.nodeimg_version)],
        },
        "packages": packages,
        "relationships": relationships,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let d = Sha256Hex::of_bytes("x");
        Manifest {
            manifest_version: MANIFEST_VERSION,
            nodeimg_version: "0.1.0".into(),
            image: ImageInfo {
                name: "k8s-node".into(),
                version: "1.4.0".into(),
                description: None,
            },
            recipe: RecipeInfo {
                path: "recipes/k8s-node.toml".into(),
                digest: d.clone(),
                files: vec!["/r/recipes/k8s-node.toml".into()],
            },
            inputs: Inputs {
                base_kind: "apt".into(),
                suite: "bookworm".into(),
                mirrors: vec!["http://deb.debian.org/debian".into()],
                components: vec!["main".into()],
                kubernetes_version: "1.34.3".into(),
                kernel_version: "6.1.0-50-amd64".into(),
                rootfs_key: d.clone(),
                customize_key: d.clone(),
                commit_key: d.clone(),
            },
            artifacts: vec![ArtifactInfo {
                name: "kubelet".into(),
                url: "https://dl.k8s.io/release/v1.34.3/bin/linux/amd64/kubelet".into(),
                sha256: d.clone(),
                size: 5,
                dest: "/usr/bin/kubelet".into(),
            }],
            packages: vec![
                Package {
                    name: "libstdc++6".into(),
                    version: "12.2.0-14+deb12u1".into(),
                    arch: "amd64".into(),
                },
                Package {
                    name: "openssh-server".into(),
                    version: "1:9.2p1-2+deb12u10".into(),
                    arch: "amd64".into(),
                },
            ],
            commit: CommitRecord {
                checksum: "c".repeat(64),
                parent: None,
                ostree_ref: "nodeimg/k8s-node/x86_64".into(),
                repo: "images/repo".into(),
                timestamp: 1_700_000_000,
                version: "1.4.0".into(),
                reused: false,
                gpg_signature: None,
            },
            formats: vec!["qcow2".into()],
            outputs: vec![],
            stages: vec![StageTiming {
                name: "rootfs".into(),
                seconds: 1.5,
                cached: true,
            }],
            publish: None,
            notes: vec![],
        }
    }

    #[test]
    fn purls() {
        let m = sample();
        assert_eq!(
            deb_purl(&m.packages[0]),
            "pkg:deb/debian/libstdc++6@12.2.0-14+deb12u1?arch=amd64"
        );
        assert_eq!(
            deb_purl(&m.packages[1]),
            "pkg:deb/debian/openssh-server@1%3A9.2p1-2+deb12u10?arch=amd64"
        );
    }

    #[test]
    fn spdx_document_shape() {
        let s = spdx(&sample());
        assert_eq!(s["spdxVersion"], "SPDX-2.3");
        assert_eq!(s["creationInfo"]["created"], "2023-11-14T22:13:20Z");
        let pkgs = s["packages"].as_array().unwrap();
        assert_eq!(pkgs.len(), 4);
        assert_eq!(pkgs[1]["SPDXID"], "SPDXRef-deb-0-libstdc--6");
        assert_eq!(pkgs[3]["checksums"][0]["algorithm"], "SHA256");
        assert_eq!(
            pkgs[3]["downloadLocation"],
            "https://dl.k8s.io/release/v1.34.3/bin/linux/amd64/kubelet"
        );
        // Every SPDXID is unique and well-formed; every relationship points at one.
        let ids: Vec<&str> = pkgs.iter().map(|p| p["SPDXID"].as_str().unwrap()).collect();
        let mut uniq = ids.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), ids.len());
        assert!(ids.iter().all(|i| i
            .strip_prefix("SPDXRef-")
            .unwrap()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')));
        for r in s["relationships"].as_array().unwrap() {
            assert!(ids.contains(&r["relatedSpdxElement"].as_str().unwrap()));
        }
    }

    #[test]
    fn output_dir_is_atomic_and_registers_files() {
        let d = tempfile::tempdir().unwrap();
        let mut m = sample();
        let mut out = OutputDir::create(d.path(), "k8s-node", "1.4.0").unwrap();
        std::fs::write(out.path().join("disk.raw"), b"raw!").unwrap();
        let f = out.register("disk.raw", "raw").unwrap().clone();
        assert_eq!(f.size, 4);
        assert_eq!(f.sha256, Sha256Hex::of_bytes("raw!"));
        assert!(out.register("disk.raw", "raw").is_err());
        assert!(out.register("missing.qcow2", "qcow2").is_err());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "pxe/../../x",
            "a//b",
            MANIFEST_FILE,
        ] {
            assert!(out.register(bad, "raw").is_err(), "{bad}");
        }
        std::fs::create_dir(out.path().join("pxe")).unwrap();
        std::fs::write(out.path().join("pxe/vmlinuz"), b"kernel").unwrap();
        let k = out.register("pxe/vmlinuz", "pxe").unwrap().clone();
        assert_eq!(k.sha256, Sha256Hex::of_bytes("kernel"));
        assert!(!d.path().join("k8s-node-1.4.0").exists());
        let target = out.finish(&mut m).unwrap();
        let back: Manifest =
            serde_json::from_str(&std::fs::read_to_string(target.join(MANIFEST_FILE)).unwrap())
                .unwrap();
        assert_eq!(back.outputs, vec![f, k]);
        assert!(target.join(SBOM_FILE).is_file());
        {
            let _abandoned = OutputDir::create(d.path(), "k8s-node", "1.4.0").unwrap();
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
