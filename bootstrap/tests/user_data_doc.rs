//! docs/user-data.md documents every field of the schema. The field lists come from the parser
//! itself (the "expected one of …" of an unknown-key error), so a new field fails this test until
//! it is documented. Every example in the doc must also validate.

mod common;

use std::path::Path;

use common::config_text;
use nodeboot::config::parse_node_config;

fn doc() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/user-data.md"))
        .unwrap()
}

/// Field names the parser expects where `probe` (an unknown key) was inserted.
fn expected_fields(text: &str) -> Vec<String> {
    let e = parse_node_config(text, "probe").unwrap_err().message;
    let list = e.split("expected").nth(1).unwrap_or_else(|| panic!("{e}"));
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_schema_field_is_documented() {
    let store = Path::new("/s");
    let base = config_text("init", store, "");
    let join_base = config_text("join-worker", store, "");
    let vault = |auth: &str| {
        base.replace(
            "kind = \"file\"\ndir = \"/s\"\n",
            &format!("kind = \"vault\"\naddress = \"https://v:8200\"\n[secrets.store.auth]\n{auth}\nprobe = 1\n"),
        )
    };
    let probes: Vec<(&str, String)> = vec![
        (
            "",
            base.replace("role = \"init\"", "role = \"init\"\nprobe = 1"),
        ),
        (
            "cluster.",
            base.replace("[cluster]\n", "[cluster]\nprobe = 1\n"),
        ),
        ("node.", base.replace("[node]\n", "[node]\nprobe = 1\n")),
        (
            "node.taints.",
            base.replace(
                "[node]\n",
                "[node]\ntaints = [{ key = \"a\", effect = \"NoSchedule\", probe = 1 }]\n",
            ),
        ),
        (
            "secrets.",
            base.replace("[secrets]\n", "[secrets]\nprobe = 1\n"),
        ),
        ("timeouts.", format!("{base}\n[timeouts]\nprobe = 1\n")),
        ("join.", format!("{join_base}\n[join]\nprobe = 1\n")),
        (
            "secrets.store.",
            base.replace("dir = \"/s\"", "dir = \"/s\"\nprobe = 1"),
        ),
        (
            "secrets.store.",
            base.replace(
                "kind = \"file\"\ndir = \"/s\"",
                "kind = \"aws\"\nregion = \"r\"\nprobe = 1",
            ),
        ),
        (
            "secrets.store.",
            base.replace(
                "kind = \"file\"\ndir = \"/s\"",
                "kind = \"vault\"\naddress = \"a\"\nprobe = 1",
            ),
        ),
        (
            "secrets.store.auth.",
            vault("method = \"token\"\ntoken-file = \"/t\""),
        ),
        (
            "secrets.store.auth.",
            vault("method = \"approle\"\nrole-id-file = \"/r\"\nsecret-id-file = \"/s\""),
        ),
    ];
    let doc = doc();
    let mut checked = 0;
    for (prefix, text) in probes {
        let fields = expected_fields(&text);
        assert!(!fields.is_empty(), "no field list for `{prefix}`");
        for f in fields {
            let path = format!("{prefix}{f}");
            assert!(
                !f.contains('_'),
                "`{path}` is not kebab-case like the rest of the schema (secrets::VaultAuth needs `#[serde(rename_all_fields = \"kebab-case\")]`)"
            );
            assert!(
                doc.contains(&format!("`{path}`")),
                "docs/user-data.md does not document `{path}`"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 35,
        "only {checked} fields found: the probes are broken"
    );
    for tag in ["secrets.store.kind", "secrets.store.auth.method"] {
        assert!(doc.contains(&format!("`{tag}")), "{tag}");
    }
}

#[test]
fn every_toml_example_in_the_doc_validates() {
    let doc = doc();
    let examples: Vec<&str> = doc
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert!(examples.len() >= 4);
    for ex in examples {
        parse_node_config(ex, "docs/user-data.md").unwrap_or_else(|e| panic!("{e}\n{ex}"));
    }
}
