//! `nodeboot upgrade|rollback|health|status` as a user runs them, on a staged sysroot (the
//! hidden `--sysroot`/`--booted-deployment`/... options and `NODEBOOT_*` variables stand in
//! for the running node), and the shipped `nodeboot-health.service`.

mod lifecycle_support;

use std::path::Path;

use lifecycle_support::{systemctl_double, Fixture, Kubelet};
use nodeimg_common::cmd::CmdError;
use nodeimg_common::Cmd;

fn nodeboot(env: &[(&str, String)], args: &[&str]) -> Result<String, String> {
    let mut cmd = Cmd::new(env!("CARGO_BIN_EXE_nodeboot")).args(args);
    for (k, v) in env {
        cmd = cmd.env(k, v);
    }
    match cmd.output() {
        Ok(o) => Ok(String::from_utf8(o.stdout).unwrap()),
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn health_unit_is_rendered_and_verifies() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("units/nodeboot-health.service");
    let unit = nodeboot::lifecycle::command::render_health_unit();
    nodeimg_common::golden::assert_golden(&path, &unit);
    assert!(unit
        .lines()
        .any(|l| l == "ConditionPathExists=/var/lib/nodeboot/os-change-pending"));
    let d = tempfile::tempdir().unwrap();
    let copy = d.path().join("nodeboot-health.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/nodeboot", env!("CARGO_BIN_EXE_nodeboot")),
    )
    .unwrap();
    let out = Cmd::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output();
    let text = match out {
        Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
        // Not installed or not startable: the unit was not checked, which must not pass.
        Err(e @ (CmdError::NotFound { .. } | CmdError::Spawn { .. })) => {
            panic!("systemd-analyze could not run: {e}")
        }
        Err(e) => e.to_string(),
    };
    assert!(
        !text.contains("nodeboot-health.service"),
        "systemd-analyze complained:\n{text}"
    );
}

#[test]
fn upgrade_status_rollback_and_health_from_the_command_line() {
    let fx = Fixture::new();
    let t = tempfile::tempdir().unwrap();
    let st = t.path();
    std::fs::create_dir_all(st.join("boot/grub")).unwrap();
    std::fs::write(st.join("boot_id"), "boot-1\n").unwrap();
    let booted = Fixture::selector_arg(&fx.boot_entry(0));
    let env = vec![
        ("NODEBOOT_SYSROOT", fx.sysroot.display().to_string()),
        ("NODEBOOT_BOOTED_DEPLOYMENT", booted),
        (
            "NODEBOOT_GRUBENV",
            st.join("boot/grub/grubenv").display().to_string(),
        ),
        (
            "NODEBOOT_BOOT_ID_FILE",
            st.join("boot_id").display().to_string(),
        ),
        (
            "NODEBOOT_REBOOT_COMMAND",
            format!("touch {}", st.join("rebooted").display()),
        ),
    ];
    let state = st.join("state").display().to_string();
    let v2 = fx.publish("2", "kernel-b");

    let out = nodeboot(&env, &["upgrade", "--json", "--state-dir", &state]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["result"], "deployed");
    assert_eq!(v["to"]["checksum"], v2.as_str());
    assert_eq!(v["to"]["version"], "2");
    assert_eq!(v["boot-counting"], true);

    let err = nodeboot(&env, &["upgrade", "--state-dir", &state]).unwrap_err();
    assert!(
        err.contains("already deployed and waits for a reboot"),
        "{err}"
    );

    let out = nodeboot(&env, &["status", "--json", "--state-dir", &state]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let os = &v["os"];
    assert_eq!(os["deployments"][0]["role"], "pending", "{os}");
    assert_eq!(os["deployments"][1]["role"], "booted", "{os}");
    assert_eq!(os["state"]["state"]["state"], "pending", "{os}");
    assert_eq!(os["boot-counter"], 3, "{os}");
    let text = nodeboot(&env, &["status", "--state-dir", &state]).unwrap();
    assert!(text.contains("\npending   2 "), "{text}");
    assert!(text.contains("\nbooted    1 "), "{text}");
    assert!(text.contains("boot counter: armed, 3 tries left"), "{text}");

    // The gate before the reboot has nothing to check.
    let out = nodeboot(&env, &["health", "--state-dir", &state]).unwrap();
    assert!(out.contains("nothing to check before the reboot"), "{out}");

    let out = nodeboot(&env, &["rollback", "--json", "--state-dir", &state]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["result"], "discarded-pending");
    assert_eq!(fx.cli_order(), std::slice::from_ref(&fx.v1));
    assert!(!st.join("rebooted").exists());

    // Nothing in flight: `health` just reports, and fails when the node is unhealthy.
    let k = Kubelet::start(&st.join("fault"), &[]);
    let systemctl = systemctl_double(st).display().to_string();
    let kubeconfig = st.join("absent.conf").display().to_string();
    let health = |extra: &[&str]| {
        let mut args = vec![
            "health",
            "--state-dir",
            &state,
            "--systemctl",
            &systemctl,
            "--kubelet-healthz",
            &k.healthz,
            "--kubeconfig",
            &kubeconfig,
            "--deadline",
            "0",
        ];
        args.extend_from_slice(extra);
        nodeboot(&env, &args)
    };
    let out = health(&[]).unwrap();
    assert!(out.contains("ok    kubelet-healthz"), "{out}");
    std::fs::write(st.join("kubelet"), "failed").unwrap();
    let err = health(&[]).unwrap_err();
    assert!(err.contains("units: unit kubelet is failed"), "{err}");
}

/// libostree prints "Freed objects: ..." when a deploy prunes an unreferenced commit; that
/// must not end up in the JSON on stdout.
#[test]
fn json_output_stays_clean_when_libostree_prunes() {
    let fx = Fixture::new();
    let t = tempfile::tempdir().unwrap();
    let st = t.path();
    std::fs::write(st.join("boot_id"), "boot-1\n").unwrap();
    let env = vec![
        ("NODEBOOT_SYSROOT", fx.sysroot.display().to_string()),
        (
            "NODEBOOT_BOOTED_DEPLOYMENT",
            Fixture::selector_arg(&fx.boot_entry(0)),
        ),
        (
            "NODEBOOT_GRUBENV",
            st.join("no-grub/grubenv").display().to_string(),
        ),
        (
            "NODEBOOT_BOOT_ID_FILE",
            st.join("boot_id").display().to_string(),
        ),
    ];
    fx.publish("2", "kernel-b");
    let a = st.join("a").display().to_string();
    nodeboot(&env, &["upgrade", "--json", "--state-dir", &a]).unwrap();
    // A second, independent state dir so the state machine does not refuse: replacing the
    // pending v2 by v3 leaves v2 unreferenced, and libostree prunes it.
    let v3 = fx.publish("3", "kernel-c");
    let b = st.join("b").display().to_string();
    let out = nodeboot(&env, &["upgrade", "--json", "--state-dir", &b]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["to"]["checksum"], v3.as_str());
    assert_eq!(v["boot-counting"], false, "no GRUB directory here");
}

#[test]
fn help_lists_the_lifecycle_commands() {
    let out = nodeboot(&[], &["--help"]).unwrap();
    for c in ["upgrade", "rollback", "health"] {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(c)),
            "{c}: {out}"
        );
    }
    let out = nodeboot(&[], &["upgrade", "--help"]).unwrap();
    for f in [
        "--version <V>",
        "--ref <R>",
        "--remote <URL>",
        "--reboot",
        "--json",
    ] {
        assert!(out.contains(f), "{f}: {out}");
    }
}
