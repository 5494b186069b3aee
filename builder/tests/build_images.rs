//! `nodeimg build` past the commit, on the small fixture rootfs (fake kernel, not bootable):
//! deploy → disk → raw/qcow2/vhd checked with `qemu-img` and `sgdisk`, the disk cache,
//! byte-identical rebuilds, clean failures, PXE material, and publishing (static delta +
//! summary) proven by a real `ostree pull` over HTTP that must use the delta.

mod build_support;

use std::fs;
use std::path::Path;

use build_support::{ostree, serve, skip_reason, Fixture, KVER, REF};
use nodeimg_builder::build::{build, BuildOutcome};
use nodeimg_builder::manifest::Manifest;
use nodeimg_builder::recipe::schema::Format;
use nodeimg_common::digest::Sha256Hex;
use nodeimg_common::Cmd;

const ALL: [Format; 3] = [Format::Raw, Format::Qcow2, Format::Vhd];

/// `qemu-img info` with the format given: a fixed VHD has its footer only at the end, which
/// qemu's format probe does not look at (it would say `raw`).
fn qemu_img_info(p: &Path, format: &str) -> serde_json::Value {
    let out = Cmd::new("qemu-img")
        .args(["info", "--output=json", "-f", format])
        .arg(p)
        .stdout_string()
        .unwrap();
    serde_json::from_str(&out).unwrap()
}

fn stage<'a>(m: &'a Manifest, name: &str) -> Option<&'a nodeimg_builder::manifest::StageTiming> {
    m.stages.iter().find(|s| s.name == name)
}

fn image_files(o: &BuildOutcome) -> Vec<(String, Sha256Hex)> {
    o.manifest
        .outputs
        .iter()
        .map(|f| (f.name.clone(), f.sha256.clone()))
        .collect()
}

/// Append a table to the fixture recipe (its last table is `[nodeboot]`).
fn append(recipe: &Path, text: &str) {
    let mut s = fs::read_to_string(recipe).unwrap();
    s.push_str(text);
    fs::write(recipe, s).unwrap();
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn disk_images_are_exported_registered_cached_and_reproducible() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let fx = Fixture::new();
    let recipe = fx.write_recipe(1, r#"kernel-args = ["console=ttyS0,115200", "quiet"]"#);
    let mut opts = fx.options(&recipe, "repo", "cache");
    opts.formats = Some(ALL.to_vec());
    let first = build(&opts).unwrap();
    let m = &first.manifest;

    let names: Vec<&str> = m.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "fixture-node-1.0.0.raw",
            "fixture-node-1.0.0.qcow2",
            "fixture-node-1.0.0.vhd"
        ]
    );
    let raw_size = m.outputs[0].size;
    for (o, qemu_format) in m.outputs.iter().zip(["raw", "qcow2", "vpc"]) {
        let p = first.output_dir.join(&o.name);
        assert_eq!(o.sha256, Sha256Hex::of_file(&p).unwrap(), "{}", o.name);
        assert_eq!(o.size, fs::metadata(&p).unwrap().len(), "{}", o.name);
        assert_eq!(o.format, o.name.rsplit('.').next().unwrap());
        let info = qemu_img_info(&p, qemu_format);
        assert_eq!(info["format"], qemu_format, "{info}");
        assert_eq!(info["virtual-size"], raw_size, "{}: {info}", o.name);
    }
    Cmd::new("qemu-img")
        .arg("check")
        .arg(first.output_dir.join("fixture-node-1.0.0.qcow2"))
        .run()
        .unwrap();
    // The layout: BIOS boot, ESP, /boot, root; the disk GUID derives from the commit.
    let gpt = Cmd::new("sgdisk")
        .arg("-p")
        .arg(first.output_dir.join("fixture-node-1.0.0.raw"))
        .stdout_string()
        .unwrap();
    assert_eq!(
        gpt.lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .count(),
        4,
        "{gpt}"
    );
    for s in ["deploy", "disk", "export-raw", "export-qcow2", "export-vhd"] {
        assert!(!stage(m, s).unwrap().cached, "{s}");
    }
    // The manifest on disk says the same.
    let on_disk: Manifest =
        serde_json::from_str(&fs::read_to_string(first.output_dir.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk.outputs, m.outputs);

    // Unchanged input: the commit and the raw image come from the cache; same bytes.
    let second = build(&opts).unwrap();
    assert!(stage(&second.manifest, "disk").unwrap().cached);
    assert!(stage(&second.manifest, "deploy").is_none());
    assert_eq!(image_files(&second), image_files(&first));

    // Fresh repository, fresh cache, another output directory: byte-identical images.
    let mut fresh = fx.options(&recipe, "repo-b", "cache-b");
    fresh.formats = Some(ALL.to_vec());
    fresh.output = fx.path().join("images-b");
    let third = build(&fresh).unwrap();
    assert!(!stage(&third.manifest, "disk").unwrap().cached);
    assert_eq!(image_files(&third), image_files(&first));

    // A kernel argument change is a new disk key: deployed again, the menu has it.
    let recipe = fx.write_recipe(1, r#"kernel-args = ["console=ttyS0,115200"]"#);
    opts.recipe = recipe.clone();
    let fourth = build(&opts).unwrap();
    assert!(!stage(&fourth.manifest, "disk").unwrap().cached);
    assert_ne!(image_files(&fourth)[0], image_files(&first)[0]);
    // Two raw images kept in the cache at most.
    let disks = dir_names(&fx.path().join("cache/disk"));
    assert_eq!(disks.len(), 2, "{disks:?}");

    // Disk too small: a clear error, the previous output intact, nothing half-written.
    // The recipe check catches a size below the fixed partitions, naming file and line...
    let text = fs::read_to_string(&recipe).unwrap();
    append(&recipe, "\n[disk]\nsize = \"64MiB\"\n");
    let err = format!("{:#}", build(&opts).unwrap_err());
    assert!(
        err.contains("node.toml:") && err.contains("disk.size: 64MiB leaves no room"),
        "{err}"
    );
    // ...and the disk stage one whose root partition cannot hold the deployment.
    fs::write(&recipe, text).unwrap();
    append(&recipe, "\n[disk]\nsize = \"515MiB\"\n");
    let err = format!("{:#}", build(&opts).unwrap_err());
    assert!(err.contains("planning the disk"), "{err}");
    eprintln!("disk too small: {err}");
    assert_eq!(dir_names(&fx.path().join("images")), ["fixture-node-1.0.0"]);
    let kept: Manifest = serde_json::from_str(
        &fs::read_to_string(fx.path().join("images/fixture-node-1.0.0/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(kept.outputs, fourth.manifest.outputs);
    assert_eq!(
        dir_names(&fx.path().join("cache/tmp")),
        Vec::<String>::new()
    );
    assert_eq!(dir_names(&fx.path().join("cache/disk")).len(), 2);

    // A new commit (another sysctl value) whose images fail: the ref goes back to the previous
    // commit and the summary, which clients follow, names that one again.
    let published = fourth.manifest.commit.checksum.clone();
    let recipe = fx.write_recipe(2, r#"kernel-args = ["console=ttyS0,115200"]"#);
    append(&recipe, "\n[disk]\nsize = \"515MiB\"\n");
    opts.recipe = recipe.clone();
    let err = format!("{:#}", build(&opts).unwrap_err());
    assert!(err.contains("planning the disk"), "{err}");
    assert_eq!(ostree(&opts.repo, &["rev-parse", REF]), published);
    let summary = ostree(&opts.repo, &["summary", "--view"]);
    assert!(summary.contains(&published), "{summary}");
    // Retried with room on the disk: committed on top of the published commit.
    let recipe = fx.write_recipe(2, r#"kernel-args = ["console=ttyS0,115200"]"#);
    opts.recipe = recipe;
    let fifth = build(&opts).unwrap();
    assert_eq!(
        fifth.manifest.commit.parent.as_deref(),
        Some(published.as_str())
    );
    assert_eq!(
        ostree(&opts.repo, &["rev-parse", REF]),
        fifth.manifest.commit.checksum
    );
}

#[test]
fn unknown_format_is_a_usage_error() {
    let err = nodeimg_builder::cli::run(
        ["nodeimg", "build", "r.toml", "--format", "raw,iso"]
            .iter()
            .map(Into::into)
            .collect(),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown format `iso` (expected one of: raw, qcow2, vhd, vhd-dynamic, pxe)"),
        "{err}"
    );
}

#[test]
fn pxe_material_with_kernel_and_raw_image() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let fx = Fixture::new();
    let recipe = fx.write_recipe(1, "");
    let mut opts = fx.options(&recipe, "repo", "cache");

    // PXE flags without the pxe format: refused, not ignored.
    opts.formats = Some(vec![Format::Raw]);
    opts.pxe.install_device = Some("/dev/vda".into());
    let err = format!("{:#}", build(&opts).unwrap_err());
    assert!(err.contains("only apply to the pxe format"), "{err}");
    opts.pxe.install_device = None;

    // No --http-base: refused before anything is built.
    opts.formats = Some(vec![Format::Pxe]);
    let err = format!("{:#}", build(&opts).unwrap_err());
    assert!(err.contains("--format pxe needs --http-base"), "{err}");
    assert!(!fx.path().join("cache").exists(), "nothing may run first");

    opts.formats = Some(vec![Format::Raw, Format::Pxe]);
    opts.pxe.http_base = Some("http://192.0.2.10/k8s/fixture-node-1.0.0/".into());
    opts.pxe.install_device = Some("/dev/vda".into());
    let built = build(&opts).unwrap();
    let m = &built.manifest;
    let pxe = built.output_dir.join("pxe");
    assert_eq!(
        fs::read_to_string(pxe.join("vmlinuz")).unwrap(),
        "fake kernel for tests\n"
    );
    let raw = m
        .outputs
        .iter()
        .find(|o| o.name == "fixture-node-1.0.0.raw")
        .unwrap();
    let ipxe = fs::read_to_string(pxe.join("boot.ipxe")).unwrap();
    assert!(
        ipxe.contains(&format!(
            "nodeboot.install.image-url=http://192.0.2.10/k8s/fixture-node-1.0.0/fixture-node-1.0.0.raw nodeboot.install.sha256={}",
            raw.sha256
        )),
        "{ipxe}"
    );
    assert!(ipxe.contains("nodeboot.install.device=/dev/vda"), "{ipxe}");
    let ks = fs::read_to_string(pxe.join("fixture-node.ks")).unwrap();
    assert!(ks.contains(&m.commit.checksum), "{ks}");
    assert!(
        ks.contains("--url=http://192.0.2.10/k8s/fixture-node-1.0.0/repo"),
        "{ks}"
    );
    let mut pxe_names: Vec<&str> = m
        .outputs
        .iter()
        .filter(|o| o.format == "pxe")
        .map(|o| o.name.as_str())
        .collect();
    pxe_names.sort();
    assert_eq!(
        pxe_names,
        [
            "pxe/boot.ipxe",
            "pxe/fixture-node.ks",
            "pxe/grub.cfg",
            "pxe/pxelinux.cfg/default",
            "pxe/vmlinuz"
        ]
    );
    for o in m.outputs.iter().filter(|o| o.format == "pxe") {
        assert_eq!(
            o.sha256,
            Sha256Hex::of_file(&built.output_dir.join(&o.name)).unwrap()
        );
    }
    // The fixture has no dracut, so no installer initramfs: a note, not a fake file.
    assert!(!pxe.join("installer.img").exists());
    assert!(
        m.notes
            .iter()
            .any(|n| n.contains("installer.img was not produced: the image has no dracut")),
        "{:?}",
        m.notes
    );
    // --http-base also gives the image its update remote.
    let raw_path = built.output_dir.join(&raw.name);
    assert!(raw_path.is_file());
    let _ = KVER;
}

#[test]
fn publish_writes_a_static_delta_a_client_pulls() {
    if let Some(why) = skip_reason() {
        eprintln!("skipping: {why}");
        return;
    }
    let fx = Fixture::new();
    let recipe = fx.write_recipe(1, "");
    let mut opts = fx.options(&recipe, "repo", "cache");
    opts.static_delta = true;
    let first = build(&opts).unwrap();
    let c1 = first.manifest.commit.checksum.clone();
    let p1 = first.manifest.publish.clone().unwrap();
    assert!(p1.summary && p1.static_delta.is_none(), "{p1:?}");
    assert!(opts.repo.join("summary").is_file());

    let recipe = fx.write_recipe(2, "");
    opts.recipe = recipe;
    let second = build(&opts).unwrap();
    let c2 = second.manifest.commit.checksum.clone();
    let delta = second
        .manifest
        .publish
        .clone()
        .unwrap()
        .static_delta
        .unwrap();
    assert_eq!(
        (delta.from.as_str(), delta.to.as_str()),
        (c1.as_str(), c2.as_str())
    );
    assert!(opts.repo.join(&delta.path).join("superblock").is_file());
    assert!(delta.size > 0);
    let list = ostree(&opts.repo, &["static-delta", "list"]);
    assert!(list.contains(&format!("{c1}-{c2}")), "{list}");
    // The summary lists the new ref target.
    let summary = ostree(&opts.repo, &["summary", "--view"]);
    assert!(summary.contains(REF) && summary.contains(&c2), "{summary}");

    // A client holding c1 upgrades over HTTP and must get c2 through the delta.
    let url = serve(opts.repo.clone());
    let client = fx.path().join("client");
    ostree(&client, &["init", "--mode=bare-user"]);
    ostree(
        &client,
        &["remote", "add", "--no-gpg-verify", "fleet", &url],
    );
    ostree(&client, &["pull", "fleet", &format!("{REF}@{c1}")]);
    ostree(&client, &["pull", "--require-static-deltas", "fleet", REF]);
    assert_eq!(ostree(&client, &["rev-parse", &format!("fleet:{REF}")]), c2);
    ostree(&client, &["fsck"]);

    // Unchanged rebuild: nothing new to publish.
    let third = build(&opts).unwrap();
    assert!(third.manifest.commit.reused);
    assert!(third.manifest.publish.is_none());
}
