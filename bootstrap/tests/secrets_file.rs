//! The file secret store through `secrets::open`: create-only under a thread race, modes,
//! no partial files, no values in errors.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Barrier};

use nodeboot::secrets::{open, CreateOutcome, FileConfig, StoreConfig, StoreError};
use nodeimg_common::Secret;

fn store(dir: &std::path::Path) -> Box<dyn nodeboot::secrets::SecretStore> {
    open(&StoreConfig::File(FileConfig {
        dir: dir.to_path_buf(),
    }))
    .unwrap()
}

#[test]
fn concurrent_creates_have_exactly_one_winner() {
    let d = tempfile::tempdir().unwrap();
    const RACERS: usize = 16;
    for round in 0..20 {
        let key = format!("clusters/demo/join-{round}");
        let barrier = Arc::new(Barrier::new(RACERS));
        let handles: Vec<_> = (0..RACERS)
            .map(|i| {
                let (dir, key, barrier) =
                    (d.path().to_path_buf(), key.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    let s = store(&dir);
                    // A large value makes a torn write visible if it could happen.
                    let value = Secret::new(format!("{i:02}").repeat(64 * 1024));
                    barrier.wait();
                    (i, s.create(&key, &value).unwrap())
                })
            })
            .collect();
        let results: Vec<(usize, CreateOutcome)> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<usize> = results
            .iter()
            .filter(|(_, o)| *o == CreateOutcome::Created)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let stored = store(d.path()).get(&key).unwrap();
        assert_eq!(
            stored.expose(),
            format!("{:02}", winners[0]).repeat(64 * 1024),
            "the winner's complete value"
        );
    }
    // Losers' temporary files are gone; every key is 0600.
    for e in fs::read_dir(d.path().join("clusters/demo")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(name.starts_with("join-"), "leftover {name}");
        assert_eq!(e.metadata().unwrap().mode() & 0o777, 0o600);
    }
    assert_eq!(
        fs::metadata(d.path().join("clusters")).unwrap().mode() & 0o777,
        0o700
    );
}

#[test]
fn update_replaces_and_errors_hold_no_value() {
    let d = tempfile::tempdir().unwrap();
    let s = store(d.path());
    let value = Secret::new("abcdef.0123456789abcdef");
    let err = s.update("k", &value).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));
    assert_eq!(s.create("k", &value).unwrap(), CreateOutcome::Created);
    s.update("k", &Secret::new("second")).unwrap();
    assert_eq!(s.get("k").unwrap().expose(), "second");
    // A key whose parent is a file cannot be created; the message names paths, not values.
    let err = s.create("k/child", &value).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("file store"), "{msg}");
    assert!(!msg.contains("0123456789abcdef"), "{msg}");
    assert!(!format!("{err:?}").contains("0123456789abcdef"));
    assert!(s.describe().contains(&d.path().display().to_string()));
}
