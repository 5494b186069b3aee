//! `lifecycle::ostree_ops` against a real OSTree repository and a staged sysroot built with
//! the `ostree` CLI; the CLI's `admin status` is the oracle for the deployment order.

mod lifecycle_support;

use lifecycle_support::{Fixture, StaticServer, BRANCH, REMOTE};
use nodeboot::lifecycle::ostree_ops::{self, FetchRequest, Role};
use nodeimg_common::Cmd;

#[test]
fn status_of_a_fresh_sysroot() {
    let fx = Fixture::new();
    let booted = fx.boot_entry(0);
    let status = ostree_ops::status(&fx.spec(booted)).unwrap();
    assert_eq!(status.deployments.len(), 1);
    let d = &status.deployments[0];
    assert_eq!(d.checksum.as_str(), fx.v1);
    assert_eq!(d.version.as_deref(), Some("1"));
    assert_eq!(d.role, Role::Booted);
    assert_eq!(d.refspec.as_deref(), Some("nodeimg:debian/test/x86_64"));
    assert_eq!(d.osname, "debian");
    assert!(status.pending().is_none() && status.rollback().is_none());
}

#[test]
fn upgrade_deploys_in_front_and_rollback_reorders() {
    let fx = Fixture::new();
    let v2 = fx.publish("2", "kernel-a");
    let spec = fx.spec(fx.boot_entry(0));

    let fetched = ostree_ops::fetch(&spec, &FetchRequest::default()).unwrap();
    assert_eq!(fetched.target.commit.as_str(), v2);
    assert_eq!(fetched.target.version.as_deref(), Some("2"));
    assert_eq!(fetched.refspec, format!("{REMOTE}:{BRANCH}"));
    let new = ostree_ops::deploy(&spec, &fetched).unwrap();
    assert_eq!(new.index, 0);
    assert_eq!(new.role, Role::Pending);
    assert_eq!(new.refspec.as_deref(), Some("nodeimg:debian/test/x86_64"));
    assert_eq!(fx.cli_order(), [v2.clone(), fx.v1.clone()]);
    // Kernel arguments come from the booted deployment.
    let opts = fx.entry_options(0);
    assert!(
        opts.starts_with("root=LABEL=root rw console=ttyS0,115200 ostree="),
        "{opts}"
    );
    // /etc is merged from the booted deployment: a local change survives the upgrade.
    let status = ostree_ops::status(&spec).unwrap();
    assert_eq!(status.booted().unwrap().checksum.as_str(), fx.v1);
    assert_eq!(status.pending().unwrap().checksum.as_str(), v2);

    // Boot v2: v1 is the rollback.
    let spec2 = fx.spec(fx.boot_entry(0));
    let status = ostree_ops::status(&spec2).unwrap();
    assert_eq!(status.booted().unwrap().checksum.as_str(), v2);
    assert_eq!(status.rollback().unwrap().checksum.as_str(), fx.v1);

    // Rollback: no pull, v1 first; both deployments kept.
    let after = ostree_ops::rollback(&spec2).unwrap();
    assert_eq!(after.deployments[0].checksum.as_str(), fx.v1);
    assert_eq!(after.deployments[0].role, Role::Pending);
    assert_eq!(fx.cli_order(), [fx.v1.clone(), v2.clone()]);
    // What GRUB boots by default now is v1.
    let spec3 = fx.spec(fx.boot_entry(0));
    let status = ostree_ops::status(&spec3).unwrap();
    assert_eq!(status.booted().unwrap().checksum.as_str(), fx.v1);
    assert_eq!(status.booted().unwrap().index, 0);

    // make_default by commit goes back to v2.
    let after = ostree_ops::make_default(&spec3, &v2.parse().unwrap()).unwrap();
    assert_eq!(after.deployments[0].checksum.as_str(), v2);
    assert_eq!(fx.cli_order(), [v2, fx.v1.clone()]);
}

#[test]
fn etc_changes_are_merged_into_the_new_deployment() {
    let fx = Fixture::new();
    let spec = fx.spec(fx.boot_entry(0));
    let booted = ostree_ops::status(&spec).unwrap().deployments[0].clone();
    let etc = fx.sysroot.join(format!(
        "ostree/deploy/debian/deploy/{}.{}/etc",
        booted.checksum, booted.serial
    ));
    std::fs::write(etc.join("local.conf"), "operator change\n").unwrap();
    let v2 = fx.publish("2", "kernel-b");
    let fetched = ostree_ops::fetch(&spec, &FetchRequest::default()).unwrap();
    let new = ostree_ops::deploy(&spec, &fetched).unwrap();
    let new_etc = fx.sysroot.join(format!(
        "ostree/deploy/debian/deploy/{v2}.{}/etc",
        new.serial
    ));
    assert_eq!(
        std::fs::read_to_string(new_etc.join("local.conf")).unwrap(),
        "operator change\n"
    );
    assert_eq!(
        std::fs::read_to_string(new_etc.join("nodeimg-release")).unwrap(),
        "VERSION=2\n"
    );
}

#[test]
fn discard_pending_removes_only_the_unbooted_deployment() {
    let fx = Fixture::new();
    let spec = fx.spec(fx.boot_entry(0));
    fx.publish("2", "kernel-b");
    let fetched = ostree_ops::fetch(&spec, &FetchRequest::default()).unwrap();
    ostree_ops::deploy(&spec, &fetched).unwrap();
    let removed = ostree_ops::discard_pending(&spec).unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].version.as_deref(), Some("2"));
    assert_eq!(fx.cli_order(), std::slice::from_ref(&fx.v1));
    assert!(ostree_ops::discard_pending(&spec).unwrap().is_empty());
    // Nothing to roll back to now.
    let err = ostree_ops::rollback(&spec).unwrap_err().to_string();
    assert!(err.contains("no rollback deployment"), "{err}");
}

#[test]
fn a_version_is_found_in_the_history() {
    let fx = Fixture::new();
    let v2 = fx.publish("2", "kernel-a");
    let _v3 = fx.publish("3", "kernel-b");
    let spec = fx.spec(fx.boot_entry(0));
    let req = FetchRequest {
        version: Some("2".into()),
        ..FetchRequest::default()
    };
    let fetched = ostree_ops::fetch(&spec, &req).unwrap();
    assert_eq!(fetched.target.commit.as_str(), v2);
    let err = ostree_ops::fetch(
        &spec,
        &FetchRequest {
            version: Some("9".into()),
            ..FetchRequest::default()
        },
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("no commit with version 9"),
        "{err:#}"
    );
}

#[test]
fn pulls_over_http_and_honours_gpg_verification() {
    let fx = Fixture::new();
    let v2 = fx.publish("2", "kernel-b");
    // An update server: the archive repo with a summary, served statically.
    Cmd::new("ostree")
        .arg(format!("--repo={}", fx.repo.display()))
        .args(["summary", "-u"])
        .run()
        .unwrap();
    let server = StaticServer::start(&fx.repo);
    let spec = fx.spec(fx.boot_entry(0));
    // The configured remote points nowhere useful; --remote URL overrides it.
    let srepo = fx.sysroot_repo();
    Cmd::new("ostree")
        .args([&srepo, "remote", "delete", REMOTE])
        .run()
        .unwrap();
    Cmd::new("ostree")
        .args([
            &srepo,
            "remote",
            "add",
            "--no-gpg-verify",
            REMOTE,
            "http://127.0.0.1:9/unreachable",
        ])
        .run()
        .unwrap();
    let req = FetchRequest {
        url_override: Some(server.url.clone()),
        ..FetchRequest::default()
    };
    let fetched = ostree_ops::fetch(&spec, &req).unwrap();
    assert_eq!(fetched.target.commit.as_str(), v2);
    let requests = server.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .any(|p| p == &format!("/objects/{}/{}.commit", &v2[..2], &v2[2..])),
        "{requests:?}"
    );
    let new = ostree_ops::deploy(&spec, &fetched).unwrap();
    assert_eq!(new.checksum.as_str(), v2);

    // A remote that requires signatures refuses the unsigned commit.
    Cmd::new("ostree")
        .args([
            &srepo,
            "remote",
            "add",
            "--set=gpg-verify=true",
            "signed",
            &server.url,
        ])
        .run()
        .unwrap();
    fx.publish("3", "kernel-c");
    let err = ostree_ops::fetch(
        &spec,
        &FetchRequest {
            refspec: Some(format!("signed:{BRANCH}")),
            ..FetchRequest::default()
        },
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.to_lowercase().contains("gpg"), "{msg}");
}

#[test]
fn refusals_name_what_is_missing() {
    let fx = Fixture::new();
    let spec = fx.spec(fx.boot_entry(0));
    let err = ostree_ops::fetch(
        &spec,
        &FetchRequest {
            refspec: Some(BRANCH.into()),
            ..FetchRequest::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("names no remote"), "{err}");
    let err = ostree_ops::fetch(
        &spec,
        &FetchRequest {
            refspec: Some(format!("elsewhere:{BRANCH}")),
            ..FetchRequest::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("remote `elsewhere` is not configured"),
        "{err}"
    );
    // No booted deployment known.
    let bogus = fx.spec(ostree_ops::BootedSelector::Deployment {
        checksum: "0".repeat(64),
        serial: 0,
    });
    let err = ostree_ops::fetch(&bogus, &FetchRequest::default()).unwrap_err();
    assert!(err.to_string().contains("no deployment 000"), "{err}");
}
