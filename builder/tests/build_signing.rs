//! GPG signing end to end with the real `gpg` and `ostree`: `nodeimg build` with
//! `commit.gpg-key-id` signs the commit in the archive repository, publishes the public key,
//! gives the disk image a verifying remote, and a client pulling over HTTP with
//! `gpg-verify=true` accepts the commit only with that key imported. A bad key id fails the
//! build without moving the ref.

mod build_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use build_support::{ostree, serve, skip_reason, Fixture, REF};
use nodeimg_builder::build::build;
use nodeimg_builder::deploy::{self, DeployRequest};
use nodeimg_builder::recipe::schema::Format;
use nodeimg_common::digest::Sha256Hex;
use nodeimg_common::Cmd;

/// A throwaway GnuPG home with one passphrase-less signing key; its agent is stopped on drop.
struct Keyring {
    home: PathBuf,
    fingerprint: String,
}

impl Keyring {
    fn new(home: PathBuf, name: &str) -> Keyring {
        fs::create_dir_all(&home).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
        gpg(&home)
            .args(["--passphrase", "", "--quick-gen-key"])
            .arg(format!("{name} <{name}@example.invalid>"))
            .args(["ed25519", "sign", "never"])
            .run()
            .unwrap();
        let listing = gpg(&home)
            .args(["--with-colons", "--list-secret-keys"])
            .stdout_string()
            .unwrap();
        let fingerprint = listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| f.len() == 40))
            .unwrap()
            .to_owned();
        Keyring { home, fingerprint }
    }

    fn export_binary(&self) -> Vec<u8> {
        gpg(&self.home)
            .args(["--export", &self.fingerprint])
            .output()
            .unwrap()
            .stdout
    }

    fn export_armored(&self) -> String {
        gpg(&self.home)
            .args(["--export", "--armor", &self.fingerprint])
            .stdout_string()
            .unwrap()
    }
}

impl Drop for Keyring {
    fn drop(&mut self) {
        let _ = Cmd::new("gpgconf")
            .arg("--homedir")
            .arg(&self.home)
            .args(["--kill", "gpg-agent"])
            .run();
    }
}

fn gpg(home: &Path) -> Cmd {
    Cmd::new("gpg").arg("--batch").arg("--homedir").arg(home)
}

fn sign_with(recipe: &Path, key_id: &str, homedir: &str) {
    let mut text = fs::read_to_string(recipe).unwrap();
    text.push_str(&format!(
        "\n[commit]\ngpg-key-id = \"{key_id}\"\ngpg-homedir = \"{homedir}\"\n"
    ));
    fs::write(recipe, text).unwrap();
}

/// `debugfs -R "cat <path>"` on every partition of `image`; the first that has it.
fn cat_from_image(image: &Path, path: &str) -> Option<String> {
    let table: serde_json::Value = serde_json::from_str(
        &Cmd::new("sfdisk")
            .arg("--json")
            .arg(image)
            .stdout_string()
            .unwrap(),
    )
    .unwrap();
    let sector = table["partitiontable"]["sectorsize"]
        .as_u64()
        .unwrap_or(512);
    table["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|p| {
            let offset = p["start"].as_u64().unwrap() * sector;
            Cmd::new("debugfs")
                .args(["-R", &format!("cat {path}")])
                .arg(format!("{}?offset={offset}", image.display()))
                .stdout_string()
                .ok()
                .filter(|s| !s.is_empty())
        })
}

#[test]
fn signed_build_publishes_the_key_and_the_image_verifies() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let fx = Fixture::new();
    let keys = Keyring::new(fx.path().join("gnupg"), "signer");
    let recipe = fx.write_recipe(1, "");
    // Relative homedir: resolved against the recipe's directory.
    sign_with(&recipe, &keys.fingerprint, "gnupg");
    let mut opts = fx.options(&recipe, "repo", "cache");
    opts.formats = Some(vec![Format::Raw, Format::Pxe]);
    // The kickstart names `<http-base>/repo`: serve the fixture directory (the repository
    // appears under it during the build) so the kickstart's own scripts can be run against it.
    assert_eq!(opts.repo, fx.path().join("repo"));
    let base = serve(fx.path().to_path_buf());
    opts.pxe.http_base = Some(base.clone());
    let built = build(&opts).unwrap();
    let m = &built.manifest;
    let checksum = m.commit.checksum.clone();
    let repo = &opts.repo;

    // The archive repository holds a good signature by the key (it went through the stage
    // repository first). `ostree show --gpg-homedir` reads `*.gpg` keyring files there (not
    // GnuPG's pubring.kbx): give it the key alone, as a client would have it.
    let trusted = fx.path().join("trusted");
    fs::create_dir(&trusted).unwrap();
    fs::write(trusted.join("signer.gpg"), keys.export_binary()).unwrap();
    let show = ostree(
        repo,
        &["show", &format!("--gpg-homedir={}", trusted.display()), REF],
    );
    assert!(show.contains("Good signature"), "{show}");
    assert!(show.contains(&keys.fingerprint[24..]), "{show}");

    // The public key is published next to the repository and recorded in the manifest.
    let sig = m
        .commit
        .gpg_signature
        .clone()
        .expect("gpg-signature record");
    assert_eq!(sig.key_id, keys.fingerprint);
    assert_eq!(sig.public_key, "nodeimg.asc");
    let published = fs::read_to_string(repo.join("nodeimg.asc")).unwrap();
    assert_eq!(published.trim_end(), keys.export_armored().trim_end());
    assert_eq!(sig.public_key_sha256, Sha256Hex::of_bytes(&published));

    // The image's remote verifies, with the key imported into its own keyring.
    let raw = built.output_dir.join("fixture-node-1.0.0.raw");
    let config = cat_from_image(&raw, "/ostree/repo/config").expect("repo config in the image");
    assert!(config.contains("[remote \"nodeimg\"]"), "{config}");
    assert!(config.contains("gpg-verify=true"), "{config}");
    assert!(
        cat_from_image(&raw, "/ostree/repo/nodeimg.trustedkeys.gpg").is_some(),
        "no remote keyring in the image"
    );

    // A client pulling over HTTP with gpg-verify=true: refused without the key, accepted
    // once the kickstart's %pre has trusted it the way Anaconda's environment would see it
    // (the global keyring directory, bind-mounted privately so the host is untouched), and
    // accepted by the installed system's remote after the kickstart's %post import.
    let ks = fs::read_to_string(built.output_dir.join("pxe/fixture-node.ks")).unwrap();
    assert!(!ks.contains("--nogpg"), "{ks}");
    let url = format!("{base}/repo");
    assert!(
        ks.contains(&format!(
            "ostreesetup --osname=nodeimg --remote=nodeimg --url={url} --ref={REF}\n"
        )),
        "{ks}"
    );
    let section = |start: &str, from: &str, to: &str| -> String {
        let body = &ks[ks
            .find(start)
            .unwrap_or_else(|| panic!("no `{start}` in\n{ks}"))..];
        let body = &body[body.find(from).unwrap()..];
        body[..body.find(to).unwrap() + to.len()].to_owned()
    };
    let pre = section("%pre --erroronfail", "set -eu", "NODEIMG_KEY\n");
    let post_import = section(
        "%post --erroronfail --log=/root/",
        "base64 -d > /run/nodeimg-key.gpg",
        "rm -f /run/nodeimg-key.gpg\n",
    );
    let scripts = fx.path().join("ks-scripts");
    fs::create_dir_all(&scripts).unwrap();
    fs::write(scripts.join("pre.sh"), &pre).unwrap();
    fs::write(scripts.join("post-import.sh"), &post_import).unwrap();

    let client = fx.path().join("client");
    ostree(&client, &["init", "--mode=archive"]);
    ostree(
        &client,
        &[
            "remote",
            "add",
            "--set=gpg-verify=true",
            "--set=gpg-verify-summary=false",
            "nodeimg",
            &url,
        ],
    );
    // `unshare -m`: a private mount namespace, so the bind mount and tmpfs stay in it.
    let in_namespace = |script: &str| {
        Cmd::new("unshare")
            .args(["-m", "sh", "-ec", script, "sh"])
            .arg(fx.path())
            .arg(&client)
            .arg(REF)
            .run()
    };
    let trusted_dir = "/usr/share/ostree/trusted.gpg.d";
    assert!(
        Path::new(trusted_dir).is_dir(),
        "libostree's global keyring directory is missing"
    );
    let empty_global = format!(
        "mkdir -p \"$1/global\"; mount --bind \"$1/global\" {trusted_dir}; \
         ostree --repo=\"$2\" pull nodeimg \"$3\""
    );
    let err = in_namespace(&empty_global).expect_err("an unknown signer must be refused");
    assert!(
        err.to_string().to_lowercase().contains("gpg")
            || err.to_string().to_lowercase().contains("signature"),
        "{err}"
    );
    let with_pre = format!(
        "mkdir -p \"$1/global-pre\"; mount --bind \"$1/global-pre\" {trusted_dir}; \
         sh -e \"$1/ks-scripts/pre.sh\"; ostree --repo=\"$2\" pull nodeimg \"$3\""
    );
    in_namespace(&with_pre).unwrap();
    assert_eq!(
        ostree(&client, &["rev-parse", &format!("nodeimg:{REF}")]),
        checksum
    );

    // The installed system: only its remote's keyring trusts the key (the global directory
    // stays empty), after the %post import.
    let installed = fx.path().join("installed");
    ostree(&installed, &["init", "--mode=archive"]);
    let with_post = format!(
        "mkdir -p \"$1/global-post\"; mount --bind \"$1/global-post\" {trusted_dir}; \
         mount -t tmpfs tmpfs /run; OSTREE_REPO=\"$1/installed\" sh -e \"$1/ks-scripts/post-import.sh\"; \
         ostree --repo=\"$1/installed\" pull nodeimg \"$3\""
    );
    in_namespace(&with_post).unwrap();
    let remote_config = fs::read_to_string(installed.join("config")).unwrap();
    assert!(remote_config.contains("gpg-verify=true"), "{remote_config}");
    assert_eq!(
        ostree(&installed, &["rev-parse", &format!("nodeimg:{REF}")]),
        checksum
    );

    // A deploy told to trust another key refuses: the image could never upgrade.
    let other = Keyring::new(fx.path().join("other-gnupg"), "other");
    let other_key = fx.path().join("other.gpg");
    fs::write(&other_key, other.export_armored()).unwrap();
    let work = fx.path().join("deploy-work");
    fs::create_dir_all(&work).unwrap();
    let err = deploy::deploy(&DeployRequest {
        repo: repo.clone(),
        ref_name: REF.into(),
        osname: "nodeimg".into(),
        kernel_args: Vec::new(),
        remote: Some(("nodeimg".into(), url.clone())),
        gpg_key: Some(other_key),
        workdir: work,
    })
    .map(|_| ())
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("has no good signature by remote nodeimg's keys"),
        "{err:#}"
    );
}

#[test]
fn a_key_that_cannot_sign_leaves_the_ref_alone() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let fx = Fixture::new();
    let keys = Keyring::new(fx.path().join("gnupg"), "signer");
    let recipe = fx.write_recipe(1, "");
    let opts = fx.options(&recipe, "repo", "cache");
    let unsigned = build(&opts).unwrap();
    let before = unsigned.manifest.commit.checksum.clone();
    assert_eq!(unsigned.manifest.commit.gpg_signature, None);
    assert!(!opts.repo.join("nodeimg.asc").exists());

    // A well-formed id of a key the home does not hold.
    let recipe = fx.write_recipe(2, "");
    sign_with(
        &recipe,
        "0123456789ABCDEF",
        &keys.home.display().to_string(),
    );
    let err = format!("{:#}", build(&opts).unwrap_err());
    assert!(err.contains("0123456789ABCDEF"), "{err}");
    assert!(err.contains("signing commit"), "{err}");
    assert_eq!(ostree(&opts.repo, &["rev-parse", REF]), before);
    assert!(!opts.repo.join("nodeimg.asc").exists());

    // A malformed id is a recipe error naming the field.
    let recipe = fx.write_recipe(3, "");
    sign_with(&recipe, "CAFE", "gnupg");
    let err = format!("{:#}", build(&opts).unwrap_err());
    assert!(err.contains("gpg-key-id"), "{err}");
    assert!(err.contains("16 hex digits"), "{err}");
    assert_eq!(ostree(&opts.repo, &["rev-parse", REF]), before);
}
