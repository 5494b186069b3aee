//! Bad recipes are rejected with the file, line, column and field of the problem. The
//! expected messages are spelled out: they are the user interface of `nodeimg recipe check`.

use std::path::Path;

fn error_of(rel: &str) -> String {
    // Integration tests run in the crate directory, so this relative path is also what the
    // messages show.
    let p = Path::new("testdata/recipes").join(rel);
    match nodeimg_builder::recipe::load(&p) {
        Ok(_) => panic!("{rel} should be rejected"),
        Err(e) => format!("{e:#}"),
    }
}

#[track_caller]
fn assert_error(rel: &str, expected: &str) {
    let got = error_of(rel);
    assert_eq!(got, expected, "\n got: {got}\nwant: {expected}");
}

#[test]
fn unknown_key() {
    assert_error(
        "bad/unknown-key.toml",
        "testdata/recipes/bad/unknown-key.toml:6:1: image.colour: unknown key `colour`, \
         expected one of `name`, `version`, `osname`, `ref`, `arch`, `description`, `formats`",
    );
}

#[test]
fn wrong_type() {
    assert_error(
        "bad/wrong-type.toml",
        "testdata/recipes/bad/wrong-type.toml:4:18: os.kernel-modules: invalid type: string \
         \"overlay\", expected a sequence",
    );
}

#[test]
fn bad_sha256() {
    assert_error(
        "bad/bad-sha256.toml",
        "testdata/recipes/bad/bad-sha256.toml:6:10: artifact[0].sha256: `abc123` is not a \
         sha256 digest (expected 64 hex characters)",
    );
}

#[test]
fn bad_version() {
    assert_error(
        "bad/bad-version.toml",
        "testdata/recipes/bad/bad-version.toml:1:11: version: recipe format version 2 is not \
         supported; this nodeimg understands version 1 only",
    );
    assert_error(
        "bad/missing-version.toml",
        "testdata/recipes/bad/missing-version.toml:1:1: version: missing; every recipe file \
         must start with `version = 1`",
    );
}

#[test]
fn bad_mode() {
    assert_error(
        "bad/bad-mode.toml",
        "testdata/recipes/bad/bad-mode.toml:6:8: os.file[0].mode: `0999` is not a file mode \
         (expected an octal string such as \"0644\")",
    );
    assert_error(
        "bad/bad-mode-integer.toml",
        "testdata/recipes/bad/bad-mode-integer.toml:6:8: os.file[0].mode: write the mode as a \
         quoted octal string such as \"0644\" (the bare integer 644 would be read as a decimal \
         number)",
    );
}

#[test]
fn bad_size() {
    assert_error(
        "bad/bad-size.toml",
        "testdata/recipes/bad/bad-size.toml:4:8: disk.size: `4 parsecs` is not a size \
         (examples: 4096, \"512MiB\", \"4GiB\", \"10M\")",
    );
}

#[test]
fn syntax_error() {
    assert_error(
        "bad/syntax.toml",
        "testdata/recipes/bad/syntax.toml:3:4: unclosed table, expected `]`",
    );
}

#[test]
fn include_cycle_shows_the_chain() {
    assert_error(
        "bad/cycle-a.toml",
        "testdata/recipes/bad/cycle-b.toml:2:11: extends: cycle in extends/include: \
         testdata/recipes/bad/cycle-a.toml -> testdata/recipes/bad/cycle-b.toml -> \
         testdata/recipes/bad/cycle-a.toml",
    );
}

#[test]
fn missing_include() {
    assert_error(
        "bad/missing-include.toml",
        "testdata/recipes/bad/missing-include.toml:2:12: include[0]: cannot read \
         testdata/recipes/bad/fragments/nope.toml: No such file or directory (os error 2)",
    );
}

#[test]
fn duplicate_artifact_in_one_file() {
    assert_error(
        "bad/duplicate-artifact.toml",
        "testdata/recipes/bad/duplicate-artifact.toml:10:8: artifact[1].name: duplicate name \
         `kubelet` in artifact (first defined on line 4)",
    );
}

#[test]
fn required_field_missing_after_merge() {
    assert_error(
        "bad/fragment-only.toml",
        "testdata/recipes/bad/fragment-only.toml: image.name: required, but not set in any \
         recipe file (read: testdata/recipes/bad/fragment-only.toml)",
    );
}

#[test]
fn single_value_rules_report_every_problem_in_file_order() {
    assert_error(
        "bad/values.toml",
        "testdata/recipes/bad/values.toml:6:24: base.packages[1]: `curl,wget` is not a Debian \
         package name (lower-case letters, digits, `+`, `-`, `.`; at least two characters)\n\
         testdata/recipes/bad/values.toml:9:33: os.kernel-args[1]: `quiet splash` is not a \
         single kernel argument (no spaces; list each argument separately)\n\
         testdata/recipes/bad/values.toml:12:1: os.sysctls.ip_forward: `ip_forward` does not \
         look like a sysctl name (e.g. `net.ipv4.ip_forward`)\n\
         testdata/recipes/bad/values.toml:15:11: os.units.enable[0]: `containerd` is not a \
         systemd unit name (it needs a type suffix: .service, .socket, .timer, .target, .mount, \
         .automount, .path, .slice, .scope, .swap, .device)",
    );
}

#[test]
fn semantic_rules_point_at_the_file_that_set_the_field() {
    assert_error(
        "bad/semantic.toml",
        "testdata/recipes/bad/semantic.toml:6:8: base.kind: kind = \"tar\" and kind = \"dir\" \
         need base.path (the existing rootfs)\n\
         testdata/recipes/bad/semantic.toml:10:7: artifact[\"kubelet\"].url: the URL names \
         v1.33.0 but kubernetes.version is 1.34.3\n\
         testdata/recipes/bad/semantic.toml:18:8: artifact[\"tool\"].dest: /usr/bin/kubelet is \
         also the destination of artifact `kubelet`\n\
         testdata/recipes/bad/semantic.toml:20:1: os.file[\"/etc/both\"]: set either content \
         or source, not both\n\
         testdata/recipes/bad/semantic.toml:26:8: os.file[\"/opt/tool.conf\"].path: \
         /opt/tool.conf: only /usr and /etc are part of an OSTree image (/var, /opt, /home, ... \
         are created at boot and not updated by upgrades)",
    );
}

#[test]
fn a_semantic_error_in_a_parent_points_into_the_parent() {
    // The variant is fine; the value it inherits is not: the message must name the parent.
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("parent.toml"),
        "version = 1\n[image]\nname = \"p\"\nversion = \"1.0.0\"\n[base]\n\
         [kubernetes]\nversion = \"1.34.3\"\n[os.container-logs]\nmax-files = 1\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("child.toml"),
        "version = 1\nextends = \"parent.toml\"\n[image]\nname = \"c\"\n",
    )
    .unwrap();
    let err = format!(
        "{:#}",
        nodeimg_builder::recipe::load(&d.path().join("child.toml")).unwrap_err()
    );
    let parent = d.path().join("parent.toml");
    assert_eq!(
        err,
        format!(
            "{}:9:13: os.container-logs.max-files: the kubelet requires containerLogMaxFiles >= 2",
            parent.display()
        )
    );
}

#[test]
fn more_cross_field_rules() {
    assert_error(
        "bad/semantic-2.toml",
        "testdata/recipes/bad/semantic-2.toml:6:11: image.formats: list each format at most \
         once, and at least one\n\
         testdata/recipes/bad/semantic-2.toml:10:12: base.exclude[0]: `rsyslog` is both in the \
         package list and excluded\n\
         testdata/recipes/bad/semantic-2.toml:14:11: os.time-sync.servers: servers are set but \
         service = \"none\"\n\
         testdata/recipes/bad/semantic-2.toml:18:7: os.user[\"ops\"].uid: uid 0 is root\n\
         testdata/recipes/bad/semantic-2.toml:19:8: os.user[\"ops\"].sudo: sudo = true needs \
         the `sudo` package (add it to base.extra-packages)\n\
         testdata/recipes/bad/semantic-2.toml:23:10: nodeboot.config: a config is set but \
         nodeboot.enabled = false\n\
         testdata/recipes/bad/semantic-2.toml:26:8: disk.size: 300MiB leaves no room for the \
         root partition (ESP + /boot + 3MiB = 403MiB)\n\
         testdata/recipes/bad/semantic-2.toml:27:12: disk.esp-size: 16MiB is too small for \
         FAT32 (minimum 32MiB)\n\
         testdata/recipes/bad/semantic-2.toml:28:12: disk.firmware: list each firmware (bios, \
         uefi) at most once, and at least one",
    );
}

#[test]
fn baked_nodeboot_config_is_validated_with_the_nodeboot_schema() {
    let err = error_of("bad/nodeboot-schema.toml");
    let (head, tail) = err.split_once(" nodeboot.config: ").expect(&err);
    assert_eq!(head, "testdata/recipes/bad/nodeboot-schema.toml:5:10:");
    assert!(
        tail.ends_with(
            "files/bad-role.toml:2:8: field `role`: unknown variant `leader`, expected one of \
             `init`, `join-control-plane`, `join-worker`"
        ),
        "{err}"
    );

    let err = error_of("bad/nodeboot-inline.toml");
    assert!(
        err.starts_with("testdata/recipes/bad/nodeboot-inline.toml:5:10: nodeboot.config: "),
        "{err}"
    );
    assert!(
        err.ends_with(
            "files/inline-join.toml carries inline join material ([join] insecure-inline); an \
             image is copied to every node and registry, so join secrets must come from the \
             secret store at boot"
        ),
        "{err}"
    );
}
