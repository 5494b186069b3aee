use super::*;
use time::macros::datetime;

fn commit(c: char) -> Commit {
    c.to_string().repeat(64).parse().unwrap()
}

const T0: OffsetDateTime = datetime!(2025-01-01 10:00 UTC);
const GATE: time::Duration = time::Duration::minutes(10);

fn booted(c: char, version: &str, boot: &str) -> Booted {
    Booted {
        commit: commit(c),
        version: Some(version.to_owned()),
        boot_id: boot.to_owned(),
    }
}

fn target(c: char, version: &str) -> Target {
    Target {
        commit: commit(c),
        version: Some(version.to_owned()),
    }
}

fn confirmed_v1() -> OsStateFile {
    OsStateFile::default().with_state(OsState::Confirmed {
        commit: commit('a'),
        version: Some("1".into()),
        at: T0,
    })
}

/// v1 booted in boot-1, upgrade to v2 deployed.
fn pending_v2() -> OsStateFile {
    match confirmed_v1()
        .begin_upgrade(
            &booted('a', "1", "boot-1"),
            &target('b', "2"),
            false,
            true,
            T0,
        )
        .unwrap()
    {
        UpgradeDecision::Deploy(doc) => *doc,
        other => panic!("{other:?}"),
    }
}

/// v2 booted in boot-2, the gate running.
fn unconfirmed_v2() -> OsStateFile {
    match pending_v2().on_boot(&booted('b', "2", "boot-2"), true, T0, GATE) {
        BootDecision::RunGate(doc) => doc,
        other => panic!("{other:?}"),
    }
}

#[test]
fn upgrade_from_settled_states_goes_pending() {
    let doc = pending_v2();
    let OsState::Pending {
        change,
        boot_id,
        reboot_requested,
    } = &doc.state
    else {
        panic!("{doc:?}")
    };
    assert_eq!(change.from, commit('a'));
    assert_eq!(change.to, commit('b'));
    assert_eq!(change.to_version.as_deref(), Some("2"));
    assert_eq!(boot_id, "boot-1");
    assert!(reboot_requested);
    assert!(doc.state.in_flight());

    for start in [
        OsStateFile::default(),
        OsStateFile::default().with_state(OsState::Failed {
            commit: commit('a'),
            version: None,
            reason: "x".into(),
            at: T0,
        }),
    ] {
        let d = start
            .begin_upgrade(&booted('a', "1", "b1"), &target('b', "2"), false, false, T0)
            .unwrap();
        assert!(matches!(d, UpgradeDecision::Deploy(ref s) if s.state.name() == "pending"));
    }
}

#[test]
fn upgrade_to_the_booted_commit_is_a_no_op() {
    let d = confirmed_v1()
        .begin_upgrade(&booted('a', "1", "b1"), &target('a', "1"), false, false, T0)
        .unwrap();
    assert_eq!(d, UpgradeDecision::AlreadyBooted);
}

#[test]
fn upgrade_refused_while_a_change_is_in_flight() {
    let err = pending_v2()
        .begin_upgrade(
            &booted('a', "1", "boot-1"),
            &target('c', "3"),
            false,
            false,
            T0,
        )
        .unwrap_err();
    assert_eq!(err, Refusal::PendingReboot { to: commit('b') });

    let err = unconfirmed_v2()
        .begin_upgrade(
            &booted('b', "2", "boot-2"),
            &target('c', "3"),
            false,
            false,
            T0,
        )
        .unwrap_err();
    assert!(
        matches!(err, Refusal::Unconfirmed { ref to, .. } if *to == commit('b')),
        "{err}"
    );
    assert!(err.to_string().contains("2025-01-01T10:10:00Z"), "{err}");

    let (rolled, _) = unconfirmed_v2()
        .on_health(Err("kubelet down".into()), T0, "boot-2")
        .unwrap();
    let err = rolled
        .begin_upgrade(
            &booted('b', "2", "boot-2"),
            &target('c', "3"),
            false,
            false,
            T0,
        )
        .unwrap_err();
    assert_eq!(
        err,
        Refusal::RollbackInFlight {
            restored: commit('a'),
            reboot_needed: true
        }
    );
    // Even the booted commit is refused: the check comes first.
    assert!(pending_v2()
        .begin_upgrade(
            &booted('a', "1", "boot-1"),
            &target('a', "1"),
            false,
            false,
            T0
        )
        .is_err());
}

#[test]
fn health_pass_confirms() {
    let (doc, action) = unconfirmed_v2().on_health(Ok(()), T0, "boot-2").unwrap();
    assert_eq!(action, GateAction::Confirm);
    assert_eq!(
        doc.state,
        OsState::Confirmed {
            commit: commit('b'),
            version: Some("2".into()),
            at: T0
        }
    );
    assert!(!doc.state.in_flight());
    assert!(doc.failures.is_empty());
}

#[test]
fn health_fail_rolls_back_once_and_records_the_version() {
    let (doc, action) = unconfirmed_v2()
        .on_health(Err("unit kubelet is failed".into()), T0, "boot-2")
        .unwrap();
    assert_eq!(action, GateAction::RollBackAndReboot);
    let OsState::RolledBack {
        change,
        reason,
        automatic,
        boot_id,
        ..
    } = &doc.state
    else {
        panic!("{doc:?}")
    };
    assert_eq!((&change.from, &change.to), (&commit('a'), &commit('b')));
    assert_eq!(reason, "unit kubelet is failed");
    assert!(automatic);
    assert_eq!(boot_id, "boot-2");
    assert_eq!(doc.failures.len(), 1);
    assert_eq!(doc.failures[0].automatic_rollbacks, 1);
    assert_eq!(doc.failures[0].failures, 1);
}

#[test]
fn a_failed_version_is_not_retried_without_being_asked() {
    let (rolled, _) = unconfirmed_v2()
        .on_health(Err("healthz 500".into()), T0, "boot-2")
        .unwrap();
    // Reboot into v1 and verify it.
    let BootDecision::RunGate(verifying) =
        rolled.on_boot(&booted('a', "1", "boot-3"), true, T0, GATE)
    else {
        panic!()
    };
    let (settled, action) = verifying.on_health(Ok(()), T0, "boot-3").unwrap();
    assert_eq!(action, GateAction::Confirm);
    assert_eq!(settled.state.name(), "confirmed");

    let v1 = booted('a', "1", "boot-3");
    let err = settled
        .begin_upgrade(&v1, &target('b', "2"), false, false, T0)
        .unwrap_err();
    assert!(matches!(err, Refusal::KnownBad { .. }), "{err}");
    assert!(err.to_string().contains("healthz 500"), "{err}");
    // A rebuilt commit of the same version is the same bad version.
    let err = settled
        .begin_upgrade(&v1, &target('c', "2"), false, false, T0)
        .unwrap_err();
    assert!(matches!(err, Refusal::KnownBad { .. }), "{err}");
    // Another version is fine.
    assert!(settled
        .begin_upgrade(&v1, &target('d', "3"), false, false, T0)
        .is_ok());
    // Explicitly asked: allowed, and a second failure gives up instead of looping.
    let UpgradeDecision::Deploy(retry) = settled
        .begin_upgrade(&v1, &target('b', "2"), true, false, T0)
        .unwrap()
    else {
        panic!()
    };
    let BootDecision::RunGate(gate) = retry.on_boot(&booted('b', "2", "boot-4"), true, T0, GATE)
    else {
        panic!()
    };
    let (failed, action) = gate
        .on_health(Err("node not Ready".into()), T0, "boot-4")
        .unwrap();
    assert_eq!(action, GateAction::GiveUp);
    let OsState::Failed {
        commit: c, reason, ..
    } = &failed.state
    else {
        panic!("{failed:?}")
    };
    assert_eq!(*c, commit('b'));
    assert!(reason.contains("node not Ready") && reason.contains("no further automatic"));
    assert_eq!(failed.failures[0].failures, 2);
    assert_eq!(failed.failures[0].automatic_rollbacks, 1);
    assert!(
        !failed.state.in_flight(),
        "no marker, so no gate on later boots"
    );
    assert_eq!(
        failed.on_boot(&booted('b', "2", "boot-5"), true, T0, GATE),
        BootDecision::NothingInFlight
    );
}

#[test]
fn a_restored_deployment_that_fails_is_not_rolled_back_again() {
    let (rolled, _) = unconfirmed_v2()
        .on_health(Err("x".into()), T0, "boot-2")
        .unwrap();
    let BootDecision::RunGate(verifying) =
        rolled.on_boot(&booted('a', "1", "boot-3"), true, T0, GATE)
    else {
        panic!()
    };
    let (doc, action) = verifying
        .on_health(Err("unit containerd is inactive".into()), T0, "boot-3")
        .unwrap();
    assert_eq!(action, GateAction::GiveUp);
    let OsState::Failed { commit: c, .. } = &doc.state else {
        panic!("{doc:?}")
    };
    assert_eq!(*c, commit('a'));
}

#[test]
fn boot_decisions() {
    let pending = pending_v2();
    // Same boot: nothing yet.
    assert_eq!(
        pending.on_boot(&booted('a', "1", "boot-1"), true, T0, GATE),
        BootDecision::AwaitReboot
    );
    // Rebooted into v2: the gate starts with a deadline.
    let BootDecision::RunGate(doc) = pending.on_boot(&booted('b', "2", "boot-2"), true, T0, GATE)
    else {
        panic!()
    };
    assert!(
        matches!(doc.state, OsState::BootedUnconfirmed { deadline, .. } if deadline == T0 + GATE)
    );
    // Interrupted gate on a later boot keeps its deadline.
    let later = T0 + time::Duration::minutes(3);
    assert_eq!(
        doc.on_boot(&booted('b', "2", "boot-3"), true, later, GATE),
        BootDecision::RunGate(doc.clone())
    );
    // Rebooted but GRUB fell back to v1: recorded as an automatic rollback.
    let BootDecision::FellBack(fell) = pending.on_boot(&booted('a', "1", "boot-2"), true, T0, GATE)
    else {
        panic!()
    };
    assert!(
        matches!(fell.state, OsState::RolledBack { automatic: true, ref boot_id, .. } if boot_id == "boot-2")
    );
    assert_eq!(fell.failures[0].automatic_rollbacks, 1);
    // ...and the gate then verifies v1 right away, in the same boot.
    assert!(matches!(
        fell.on_boot(&booted('a', "1", "boot-2"), true, T0, GATE),
        BootDecision::RunGate(_)
    ));
    // Fell back from an unconfirmed state too (crash during the gate, counter ran out).
    assert!(matches!(
        doc.on_boot(&booted('a', "1", "boot-9"), true, T0, GATE),
        BootDecision::FellBack(_)
    ));
    // v2 deployment gone (interrupted upgrade): back to idle, no failure recorded.
    let BootDecision::Abandoned(idle) =
        pending.on_boot(&booted('a', "1", "boot-2"), false, T0, GATE)
    else {
        panic!()
    };
    assert_eq!(
        idle.state,
        OsState::Idle {
            confirmed: Some(commit('a'))
        }
    );
    assert!(idle.failures.is_empty());
    // Something else booted.
    assert!(matches!(
        pending.on_boot(&booted('e', "9", "boot-2"), true, T0, GATE),
        BootDecision::Unexpected(ref d) if d.state.name() == "failed"
    ));
    // Settled states.
    assert_eq!(
        confirmed_v1().on_boot(&booted('a', "1", "x"), true, T0, GATE),
        BootDecision::NothingInFlight
    );
}

#[test]
fn rollback_waits_for_its_reboot() {
    let (rolled, _) = unconfirmed_v2()
        .on_health(Err("x".into()), T0, "boot-2")
        .unwrap();
    assert_eq!(
        rolled.on_boot(&booted('b', "2", "boot-2"), true, T0, GATE),
        BootDecision::AwaitReboot
    );
    // Rebooted, but still on v2: the rollback did not take effect.
    assert!(matches!(
        rolled.on_boot(&booted('b', "2", "boot-3"), true, T0, GATE),
        BootDecision::Unexpected(_)
    ));
}

#[test]
fn health_result_without_a_gate_is_a_bug() {
    let err = confirmed_v1().on_health(Ok(()), T0, "b").unwrap_err();
    assert_eq!(err.state, "confirmed");
    assert!(pending_v2().on_health(Err("x".into()), T0, "b").is_err());
}

#[test]
fn manual_rollback_paths() {
    // Not rebooted yet: discard the pending deployment.
    let d = pending_v2()
        .manual_rollback(&booted('a', "1", "boot-1"), Some(&target('b', "2")), T0)
        .unwrap();
    assert_eq!(
        d,
        ManualRollback::DiscardPending(OsStateFile::default().with_state(OsState::Idle {
            confirmed: Some(commit('a'))
        }))
    );
    // Booted v2 (gate running or confirmed): reorder to v1.
    for start in [
        unconfirmed_v2(),
        unconfirmed_v2().on_health(Ok(()), T0, "b").unwrap().0,
    ] {
        let ManualRollback::Reorder(doc) = start
            .manual_rollback(&booted('b', "2", "boot-2"), Some(&target('a', "1")), T0)
            .unwrap()
        else {
            panic!()
        };
        let OsState::RolledBack {
            change, automatic, ..
        } = &doc.state
        else {
            panic!()
        };
        assert!(!automatic);
        assert_eq!((&change.from, &change.to), (&commit('a'), &commit('b')));
        assert!(
            doc.failures.is_empty(),
            "manual rollbacks do not mark a version bad"
        );
    }
    // Nothing to go back to.
    assert_eq!(
        confirmed_v1()
            .manual_rollback(&booted('a', "1", "b"), None, T0)
            .unwrap_err(),
        Refusal::NoRollbackTarget
    );
    assert_eq!(
        confirmed_v1()
            .manual_rollback(&booted('a', "1", "b"), Some(&target('a', "1")), T0)
            .unwrap_err(),
        Refusal::NoRollbackTarget
    );
    // A rollback already written in this boot.
    let (rolled, _) = unconfirmed_v2()
        .on_health(Err("x".into()), T0, "boot-2")
        .unwrap();
    assert!(matches!(
        rolled.manual_rollback(&booted('b', "2", "boot-2"), Some(&target('a', "1")), T0),
        Err(Refusal::RollbackInFlight { .. })
    ));
}

#[test]
fn round_trips_every_state_and_keeps_the_marker_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let store = OsStateStore::new(dir.path());
    assert_eq!(store.load().unwrap(), OsStateFile::default());
    let (rolled, _) = unconfirmed_v2()
        .on_health(Err("x".into()), T0, "boot-2")
        .unwrap();
    let failed = unconfirmed_v2().with_state(OsState::Failed {
        commit: commit('b'),
        version: None,
        reason: "r".into(),
        at: T0,
    });
    for doc in [
        OsStateFile::default(),
        pending_v2(),
        unconfirmed_v2(),
        unconfirmed_v2().on_health(Ok(()), T0, "b").unwrap().0,
        rolled,
        failed,
    ] {
        store.save(&doc).unwrap();
        assert_eq!(store.load().unwrap(), doc);
        assert_eq!(
            store.marker_path().exists(),
            doc.state.in_flight(),
            "{}",
            doc.state.name()
        );
    }
    let text = std::fs::read_to_string(store.path()).unwrap();
    assert!(text.contains("\"state\": \"failed\""), "{text}");
    assert!(text.contains("\"version\": 1"), "{text}");
}

#[test]
fn parse_errors_name_file_line_and_field() {
    let p = Path::new("/var/lib/nodeboot/os-state.json");
    let err = parse(
        "{\n  \"version\": 1,\n  \"state\": {\"state\": \"idle\", \"confirmed\": null, \"colour\": 1}\n}",
        p,
    )
    .unwrap_err()
    .to_string();
    // The tagged state object is read whole, so the position is where it ends.
    assert!(
        err.starts_with(
            "/var/lib/nodeboot/os-state.json:4:1: field `state`: unknown field `colour`"
        ),
        "{err}"
    );

    let err = parse(
        "{\"version\": 1, \"state\": {\"state\": \"confirmed\", \"commit\": \"xyz\", \"version\": null, \"at\": \"2025-01-01T00:00:00Z\"}}",
        p,
    )
    .unwrap_err()
    .to_string();
    // Inside the tagged state object serde reports the object, and the value names itself.
    assert!(
        err.contains("field `state`: `xyz` is not a sha256 digest"),
        "{err}"
    );

    let err = parse(
        "{\"version\": 2, \"state\": {\"state\": \"idle\", \"confirmed\": null}}",
        p,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("unsupported OS state version 2"), "{err}");
}
