//! docs/recipe.md documents every field of the schema, and the per-file check accepts every
//! field the typed schema has. The recipe below is built with struct literals without
//! `..Default::default()`, so adding a schema field breaks this test's build until the field
//! is set here, and then fails the test until it is documented.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use nodeimg_builder::recipe::schema::*;

fn populated(dir: &Path) -> Recipe {
    Recipe {
        version: 1,
        image: Image {
            name: "full".parse().unwrap(),
            version: "1.2.3".parse().unwrap(),
            osname: "acme".parse().unwrap(),
            ostree_ref: Some("acme/full/x86_64".to_owned()),
            arch: Arch::X86_64,
            description: Some("every field".to_owned()),
            formats: vec![Format::Raw, Format::Vhd],
        },
        base: Base {
            kind: BaseKind::Apt,
            distro: Distro::Debian,
            suite: "bookworm".to_owned(),
            mirrors: vec!["http://deb.debian.org/debian".parse().unwrap()],
            components: vec!["main".to_owned()],
            packages: vec!["systemd".to_owned(), "sudo".to_owned()],
            extra_packages: vec!["jq".to_owned()],
            exclude: vec!["rsyslog".to_owned()],
            path: None,
        },
        kubernetes: Kubernetes {
            version: "1.34.3".parse().unwrap(),
            runtime: Runtime::Containerd,
            cgroup_driver: CgroupDriver::Systemd,
            sandbox_image: Some("registry.k8s.io/pause:3.10.1".to_owned()),
        },
        artifacts: vec![Artifact {
            name: "cni-plugins".parse().unwrap(),
            url: "https://example.com/cni.tgz".parse().unwrap(),
            sha256: "ab3bda535f9d90766cccc90d3dddb5482003dd744d7f22bcf98186bf8eea8be6"
                .parse()
                .unwrap(),
            dest: "/usr/lib/cni".parse().unwrap(),
            mode: Mode(0o755),
            unpack: Some(ArchiveKind::TarGz),
            strip_components: 1,
        }],
        os: Os {
            hostname: Some("node".to_owned()),
            kernel_modules: vec!["overlay".to_owned()],
            sysctls: BTreeMap::from([("net.ipv4.ip_forward".to_owned(), SysctlValue::Int(1))]),
            swap: Swap::Off,
            kernel_args: vec!["quiet".to_owned()],
            root_password_hash: Some("!".to_owned()),
            time_sync: TimeSync {
                service: TimeSyncService::SystemdTimesyncd,
                servers: vec!["time.example.com".to_owned()],
            },
            journald: Journald {
                system_max_use: Size(1 << 30),
                storage: JournalStorage::Volatile,
            },
            container_logs: ContainerLogs {
                max_size: Size(20 << 20),
                max_files: 3,
            },
            files: vec![File {
                path: "/etc/motd".parse().unwrap(),
                content: None,
                source: Some(dir.join("motd")),
                mode: Mode(0o644),
                owner: "root".to_owned(),
                group: "root".to_owned(),
            }],
            users: vec![User {
                name: "core".parse().unwrap(),
                uid: Some(1000),
                groups: vec!["adm".to_owned()],
                shell: "/bin/sh".parse().unwrap(),
                ssh_authorized_keys: vec![
                    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoq core".to_owned(),
                ],
                sudo: true,
            }],
            units: Units {
                enable: vec!["containerd.service".to_owned()],
                disable: vec!["apt-daily.timer".to_owned()],
                mask: vec!["getty@tty1.service".to_owned()],
            },
        },
        nodeboot: Nodeboot {
            enabled: true,
            binary: Some(dir.join("nodeboot")),
            config: Some(dir.join("node.toml")),
        },
        disk: Disk {
            size: Some(Size(8 << 30)),
            boot_size: Size(512 << 20),
            esp_size: Size(64 << 20),
            firmware: vec![Firmware::Uefi],
        },
        commit: Commit {
            timestamp: Some(1_700_000_000),
            sign_key: Some(dir.join("key")),
            gpg_key_id: Some("0123456789ABCDEF0123456789ABCDEF01234567".parse().unwrap()),
            gpg_homedir: Some(dir.join("gnupg")),
            static_delta: true,
        },
    }
}

/// Field paths as the docs write them: `os.file.path` for a field of an `[[os.file]]` entry;
/// maps (`os.sysctls`) are one field.
fn field_paths(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) if path != "os.sysctls" => field_paths(&path, t, out),
            toml::Value::Array(items)
                if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
            {
                out.push(path.clone());
                for item in items {
                    if let toml::Value::Table(t) = item {
                        field_paths(&path, t, out);
                    }
                }
            }
            _ => out.push(path),
        }
    }
}

fn docs() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/recipe.md");
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn every_schema_field_is_documented() {
    let dir = PathBuf::from("/recipes");
    let value = toml::Value::try_from(populated(&dir)).unwrap();
    let mut paths = vec!["extends".to_owned(), "include".to_owned()];
    field_paths("", value.as_table().unwrap(), &mut paths);
    paths.sort();
    paths.dedup();
    assert!(paths.len() > 60, "walked too few fields: {paths:?}");
    let docs = docs();
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !docs.contains(&format!("`{p}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "fields missing from docs/recipe.md (write each as `path`): {missing:?}"
    );
}

#[test]
fn the_file_check_accepts_every_schema_field() {
    // The per-file schema mirrors the typed one; a populated recipe written out as a file must
    // load back unchanged (apart from extra-packages, which resolving folds into packages).
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("motd"), "hello\n").unwrap();
    let node_config =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/recipes/v1/files/node-config.toml");
    fs::copy(node_config, d.path().join("node.toml")).unwrap();
    let recipe = populated(d.path());
    let text = toml::to_string(&recipe).unwrap();
    let file = d.path().join("full.toml");
    fs::write(&file, &text).unwrap();
    let loaded = nodeimg_builder::recipe::load(&file)
        .unwrap_or_else(|e| panic!("{e:#}\n--- recipe ---\n{text}"));
    let mut expected = recipe;
    let extra = std::mem::take(&mut expected.base.extra_packages);
    expected.base.packages.extend(extra);
    assert_eq!(loaded.recipe, expected);
}

#[test]
fn the_docs_worked_example_is_a_valid_recipe() {
    // The first ```toml block after "## Worked example" is a complete recipe.
    let docs = docs();
    let start = docs
        .find("## Worked example")
        .expect("a worked example section");
    let block = docs[start..]
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a toml block in the worked example");
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("example.toml");
    fs::write(&file, block).unwrap();
    let loaded = nodeimg_builder::recipe::load(&file).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!loaded.recipe.artifacts.is_empty());
}
