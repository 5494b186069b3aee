//! Node config schema v1: every role parses, bad values are refused with origin, line:column and
//! field, inline material needs `insecure-inline`, oversize user-data is refused.

mod common;

use std::path::Path;

use common::{config_text, CERT_KEY, TOKEN};
use nodeboot::config::{parse_node_config, ConfigError, Role, TaintEffect};

fn parse(text: &str) -> Result<nodeboot::config::NodeConfig, ConfigError> {
    parse_node_config(text, "test.toml")
}

fn store() -> &'static Path {
    Path::new("/var/lib/store")
}

#[test]
fn each_role_parses_with_defaults() {
    for (role, expect) in [
        ("init", Role::Init),
        ("join-control-plane", Role::JoinControlPlane),
        ("join-worker", Role::JoinWorker),
    ] {
        let cfg = parse(&config_text(role, store(), "")).unwrap();
        assert_eq!(cfg.role, expect);
        assert_eq!(cfg.cluster.service_subnet.to_string(), "10.96.0.0/12");
        assert_eq!(cfg.cluster.dns_domain, "cluster.local");
        assert_eq!(
            cfg.node.cri_socket.as_str(),
            "unix:///var/run/containerd/containerd.sock"
        );
        assert_eq!(
            cfg.node.taints, None,
            "absent taints stay absent (kubeadm default)"
        );
        assert_eq!(cfg.timeouts.wait_for_join_material.get().as_secs(), 1800);
        let s = cfg.secrets.unwrap();
        assert_eq!(s.key.as_str(), "clusters/prod/join");
        assert_eq!(s.token_ttl.get().as_secs(), 86400);
    }
}

#[test]
fn taints_absent_empty_and_listed_are_distinct() {
    let empty =
        parse(&config_text("init", store(), "").replace("[node]\n", "[node]\ntaints = []\n"))
            .unwrap();
    assert_eq!(empty.node.taints, Some(vec![]));
    let listed = parse(&config_text("join-worker", store(), "").replace(
        "[node]\n",
        "[node]\ntaints = [{ key = \"dedicated\", value = \"gpu\", effect = \"NoSchedule\" }]\n",
    ))
    .unwrap();
    let t = listed.node.taints.unwrap();
    assert_eq!(t[0].effect, TaintEffect::NoSchedule);
    assert_eq!(t[0].value.as_ref().unwrap().as_str(), "gpu");
}

#[test]
fn unknown_key_is_reported_with_line_column_and_field() {
    let text =
        config_text("init", store(), "").replace("[node]\nname", "[node]\nnmae = \"x\"\nname");
    let e = parse(&text).unwrap_err();
    let line = text.lines().position(|l| l.starts_with("nmae")).unwrap() + 1;
    assert_eq!(e.line_col, Some((line, 1)), "{e}");
    assert_eq!(e.field.as_deref(), Some("node.nmae"));
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "test.toml:{line}:1: field `node.nmae`: unknown field `nmae`"
        )),
        "{msg}"
    );
}

#[test]
fn bad_values_name_the_field_and_never_echo_secrets() {
    let cases = [
        (
            "control-plane-endpoint = \"k8s-api.example.internal:6443\"",
            "control-plane-endpoint = \"k8s-api\"",
            "cluster.control-plane-endpoint",
            "host:port",
        ),
        (
            "pod-subnet = \"10.244.0.0/16\"",
            "pod-subnet = \"10.244.0.1/16\"",
            "cluster.pod-subnet",
            "bits set",
        ),
        (
            "kubernetes-version = \"v1.31.2\"",
            "kubernetes-version = \"latest\"",
            "cluster.kubernetes-version",
            "vMAJOR",
        ),
        (
            "name = \"node-1\"",
            "name = \"Node_1\"",
            "node.name",
            "DNS-1123",
        ),
        (
            "key = \"clusters/prod/join\"",
            "key = \"../etc/passwd\"",
            "secrets.key",
            "segments",
        ),
    ];
    for (from, to, field, needle) in cases {
        let text = config_text("init", store(), "").replace(from, to);
        let e = parse(&text).unwrap_err();
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
        let line = text.lines().position(|l| l.contains(to)).unwrap() + 1;
        assert_eq!(e.line_col.map(|l| l.0), Some(line), "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }
    let bad_secrets = [
        ("token", "\"abcdef.0123456789ABCDEF\"", "0123456789ABCDEF"),
        ("token", "\"abcdef0123456789abcdefg\"", "0123456789abcdefg"),
        (
            "certificate-key",
            &format!("\"{}\"", &CERT_KEY[..62]),
            &CERT_KEY[..62],
        ),
        ("ca-cert-hashes", "[\"sha256:1234\"]", "never-a-secret"),
    ];
    for (field, value, secret) in bad_secrets {
        let extra = format!("\n[join]\ninsecure-inline = true\n{field} = {value}\n");
        let text = config_text("join-worker", store(), &extra).replace("[secrets]\nkey = \"clusters/prod/join\"\n\n[secrets.store]\nkind = \"file\"\ndir = \"/var/lib/store\"\n", "");
        let e = parse(&text).unwrap_err();
        assert!(
            e.field
                .as_deref()
                .unwrap_or("")
                .starts_with(&format!("join.{field}")),
            "{e}"
        );
        let line = text.lines().position(|l| l.starts_with(field)).unwrap() + 1;
        assert_eq!(e.line_col.map(|l| l.0), Some(line), "{e}");
        assert!(!e.to_string().contains(secret), "secret echoed: {e}");
    }
}

#[test]
fn inline_material_needs_insecure_inline() {
    let inline = format!(
        "\n[join]\ntoken = \"{TOKEN}\"\nca-cert-hashes = [\"sha256:{}\"]\n",
        "ab".repeat(32)
    );
    let no_store = |t: String| {
        t.replace("[secrets]\nkey = \"clusters/prod/join\"\n\n[secrets.store]\nkind = \"file\"\ndir = \"/var/lib/store\"\n", "")
    };
    let e = parse(&no_store(config_text("join-worker", store(), &inline))).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("join.token"));
    assert!(e.to_string().contains("insecure-inline = true"), "{e}");
    assert!(!e.to_string().contains("0123456789abcdef"), "{e}");

    let allowed = inline.replace("[join]\n", "[join]\ninsecure-inline = true\n");
    let cfg = parse(&no_store(config_text("join-worker", store(), &allowed))).unwrap();
    let j = cfg.inline_join().unwrap();
    assert_eq!(j.token.as_ref().unwrap().get_ref().id(), "abcdef");
    // A control-plane join also needs the certificate key.
    let e = parse(&no_store(config_text(
        "join-control-plane",
        store(),
        &allowed,
    )))
    .unwrap_err();
    assert_eq!(e.field.as_deref(), Some("join.certificate-key"), "{e}");
    let with_key = format!("{allowed}certificate-key = \"{CERT_KEY}\"\n");
    parse(&no_store(config_text(
        "join-control-plane",
        store(),
        &with_key,
    )))
    .unwrap();
    // Role init never takes a [join] table.
    let e = parse(&config_text("init", store(), &allowed)).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("join"), "{e}");
}

#[test]
fn join_roles_need_a_store_or_inline_material() {
    let text = config_text("join-worker", store(), "").replace(
        "[secrets]\nkey = \"clusters/prod/join\"\n\n[secrets.store]\nkind = \"file\"\ndir = \"/var/lib/store\"\n",
        "",
    );
    let e = parse(&text).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("secrets"));
    // Init without a store is a single-node cluster: allowed.
    parse(&text.replace("join-worker", "init")).unwrap();
}

#[test]
fn version_and_reserved_labels() {
    let e =
        parse(&config_text("init", store(), "").replace("version = 1", "version = 2")).unwrap_err();
    assert_eq!(
        (e.field.as_deref(), e.line_col),
        (Some("version"), Some((1, 11))),
        "{e}"
    );
    let e = parse(&config_text("init", store(), "").replace(
        "[node]\n",
        "[node]\nlabels = { \"node-role.kubernetes.io/worker\" = \"\" }\n",
    ))
    .unwrap_err();
    assert_eq!(
        e.field.as_deref(),
        Some("node.labels.node-role.kubernetes.io/worker"),
        "{e}"
    );
    assert!(e.to_string().contains("kubectl"), "{e}");
}

#[test]
fn oversize_user_data_is_refused_before_parsing() {
    let mut text = config_text("init", store(), "");
    text.push_str(&format!("# {}\n", "x".repeat(10 * 1024 * 1024)));
    let started = std::time::Instant::now();
    let e = parse(&text).unwrap_err();
    assert!(e.to_string().contains("limit of 65536 bytes"), "{e}");
    assert!(
        started.elapsed().as_millis() < 500,
        "size check must come before parsing"
    );

    // Through the CLI, from a file: refused without reading it all.
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("big.toml");
    std::fs::write(&f, &text).unwrap();
    let e = nodeboot::cli::run_with(
        vec!["nodeboot".into(), "validate".into(), f.clone().into()],
        &mut Vec::new(),
    )
    .unwrap_err();
    assert_eq!(nodeboot::cli::exit_code(&e), 2);
    assert!(format!("{e:#}").contains("limit of 65536 bytes"), "{e:#}");
}

#[test]
fn malformed_toml_reports_position() {
    let e = parse("version = 1\nrole = \"init\"\n[cluster\n").unwrap_err();
    assert_eq!(e.line_col.map(|l| l.0), Some(3), "{e}");
    assert!(e.to_string().starts_with("test.toml:3:"), "{e}");
    let e = parse("version = 1\nrole = \"leader\"\n").unwrap_err();
    assert_eq!(e.field.as_deref(), Some("role"), "{e}");
    assert_eq!(e.line_col, Some((2, 8)), "{e}");
}
