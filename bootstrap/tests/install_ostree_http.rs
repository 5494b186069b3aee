//! OSTree over plain HTTP, as the PXE kickstart path uses it (`ostreesetup --url=<base>/repo`):
//! an archive-mode repository served as static files from 127.0.0.1 is pulled with the real
//! `ostree` CLI, and the pulled ref resolves to exactly the commit that was published. A
//! tampered object is refused.

use std::path::{Path, PathBuf};
use std::process::Command;

fn ostree(args: &[&str]) -> String {
    let out = Command::new("ostree")
        .args(args)
        .output()
        .expect("ostree (Debian package ostree)");
    assert!(
        out.status.success(),
        "ostree {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Serve `root` as static files (404 for anything missing); returns the base URL.
fn serve_dir(root: PathBuf) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let base = format!("http://{}", server.server_addr().to_ip().unwrap());
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let rel = req
                .url()
                .split('?')
                .next()
                .unwrap_or("")
                .trim_start_matches('/');
            let path = root.join(rel);
            let inside = !rel.split('/').any(|c| c == "..");
            let _ = match std::fs::read(&path) {
                Ok(body) if inside && path.is_file() => req.respond(
                    tiny_http::Response::from_data(body).with_chunked_threshold(usize::MAX),
                ),
                _ => req.respond(tiny_http::Response::empty(404)),
            };
        }
    });
    base
}

fn publish(dir: &Path) -> (PathBuf, String) {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
    std::fs::create_dir_all(tree.join("usr/etc")).unwrap();
    std::fs::write(tree.join("usr/bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
    std::fs::write(tree.join("usr/etc/os-release"), "ID=debian\n").unwrap();
    let served = dir.join("www");
    let repo = served.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let repo_arg = format!("--repo={}", repo.display());
    ostree(&[&repo_arg, "init", "--mode=archive"]);
    let commit = ostree(&[
        &repo_arg,
        "commit",
        "--branch=debian/bookworm/x86_64",
        "--subject=test",
        "--add-metadata-string=version=1",
        &format!("--tree=dir={}", tree.display()),
    ]);
    ostree(&[&repo_arg, "summary", "-u"]);
    (served, commit)
}

fn pull(dir: &Path, url: &str) -> Result<String, String> {
    let local = dir.join("local");
    let _ = std::fs::remove_dir_all(&local);
    let repo_arg = format!("--repo={}", local.display());
    ostree(&[&repo_arg, "init", "--mode=bare-user"]);
    ostree(&[
        &repo_arg,
        "remote",
        "add",
        "--no-gpg-verify",
        "nodeimg",
        url,
    ]);
    let out = Command::new("ostree")
        .args([&repo_arg, "pull", "nodeimg", "debian/bookworm/x86_64"])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(ostree(&[
        &repo_arg,
        "rev-parse",
        "nodeimg:debian/bookworm/x86_64",
    ]))
}

#[test]
fn archive_repo_pulls_over_http_to_the_published_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (served, commit) = publish(dir.path());
    let base = serve_dir(served);
    let pulled = pull(dir.path(), &format!("{base}/repo")).unwrap();
    assert_eq!(pulled, commit);
    let local = format!("--repo={}", dir.path().join("local").display());
    let listing = ostree(&[&local, "ls", "-R", &commit, "/usr/bin"]);
    assert!(listing.contains("/usr/bin/hello"), "{listing}");
}

#[test]
fn tampered_object_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (served, _) = publish(dir.path());
    // Corrupt the content object of /usr/bin/hello (archive mode: zlib .filez files).
    let objects = served.join("repo/objects");
    let mut filez: Vec<PathBuf> = walk(&objects)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "filez"))
        .collect();
    filez.sort();
    assert!(!filez.is_empty());
    for f in &filez {
        let mut bytes = std::fs::read(f).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0xff;
        std::fs::write(f, bytes).unwrap();
    }
    let base = serve_dir(served);
    let err = pull(dir.path(), &format!("{base}/repo")).unwrap_err();
    assert!(
        err.contains("Corrupted") || err.to_lowercase().contains("checksum"),
        "{err}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
