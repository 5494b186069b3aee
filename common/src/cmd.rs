//! The one wrapper for running external programs.
//!
//! Rules it enforces for every caller:
//! - the exit status is always checked; a failure carries the last lines of stderr;
//! - a program that is not installed is reported together with the Debian package providing it;
//! - secrets never go on a command line: pass them with [`Cmd::stdin`] or in a 0600 file.
//!   Argument values are logged, so the type offers no way to mark one as secret.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How many trailing stderr lines an error keeps.
const STDERR_TAIL_LINES: usize = 25;

/// Debian packages that provide the external tools the project calls. Used only to turn
/// "No such file or directory" into an actionable hint.
const PACKAGE_HINTS: &[(&str, &str)] = &[
    ("mmdebstrap", "mmdebstrap"),
    ("ostree", "ostree"),
    ("mkfs.ext4", "e2fsprogs"),
    ("mke2fs", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("fsck.ext4", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("mkfs.vfat", "dosfstools"),
    ("fsck.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("mmd", "mtools"),
    ("mdir", "mtools"),
    ("grub-mkimage", "grub-common"),
    ("sgdisk", "gdisk"),
    ("sfdisk", "fdisk"),
    ("qemu-img", "qemu-utils"),
    ("socat", "socat"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("genisoimage", "genisoimage"),
    ("xorriso", "xorriso"),
    ("zstd", "zstd"),
    ("chattr", "e2fsprogs"),
    ("dracut", "dracut"),
    ("lsinitrd", "dracut"),
    ("unshare", "util-linux"),
    ("blkid", "util-linux"),
    ("systemctl", "systemd"),
    ("ksvalidator", "pykickstart (pip)"),
];

/// The Debian package that ships `program`, if the project knows it.
pub fn package_for(program: &str) -> Option<&'static str> {
    let base = Path::new(program)
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or(program);
    PACKAGE_HINTS
        .iter()
        .find(|(tool, _)| *tool == base)
        .map(|(_, pkg)| *pkg)
}

/// Why an external command did not succeed. Callers branch on the variant (for example
/// nodeboot maps a failed kubeadm to its own exit code), hence `thiserror`.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("`{program}` is not installed{}", hint(.package))]
    NotFound {
        program: String,
        package: Option<&'static str>,
    },
    #[error("could not start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}){}", tail(.stderr_tail))]
    Failed {
        command: String,
        status: ExitStatus,
        /// The last lines the program wrote to stderr.
        stderr_tail: String,
        stdout: Vec<u8>,
    },
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    TimedOut { command: String, timeout: Duration },
    #[error("I/O with `{command}`: {source}")]
    Io {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

impl CmdError {
    /// The exit code when the program ran and exited non-zero.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            CmdError::Failed { status, .. } => status.code(),
            _ => None,
        }
    }
}

fn hint(package: &Option<&'static str>) -> String {
    match package {
        Some(p) => format!(" (install the Debian package `{p}`)"),
        None => String::new(),
    }
}

fn tail(stderr_tail: &str) -> String {
    if stderr_tail.trim().is_empty() {
        String::new()
    } else {
        format!(":\n{}", stderr_tail.trim_end())
    }
}

/// What a finished command produced.
#[derive(Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// Stdout as UTF-8 (lossy), trailing whitespace trimmed.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).trim_end().to_owned()
    }
}

/// How the child's stderr is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StderrMode {
    /// Captured; its tail goes into the error.
    Capture,
    /// Forwarded line by line to our stderr (progress of long steps) and its tail kept.
    Forward,
}

/// A command to run. Build it, then call [`Cmd::run`] or [`Cmd::output`].
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
    env_clear: bool,
    cwd: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    stderr: StderrMode,
    timeout: Option<Duration>,
    /// Filter applied to every forwarded or captured stderr line (redaction of program output
    /// that may echo secrets, e.g. kubeadm printing a token).
    filter: Option<fn(&str) -> String>,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            env_clear: false,
            cwd: None,
            stdin: None,
            stderr: StderrMode::Capture,
            timeout: None,
            filter: None,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env_remove.push(key.as_ref().to_owned());
        self
    }

    /// Start from an empty environment (only what [`Cmd::env`] sets is passed).
    pub fn env_clear(mut self) -> Self {
        self.env_clear = true;
        self
    }

    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Bytes written to the child's stdin: the way to hand a program a secret.
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// Forward the child's stderr to ours as it arrives (for long steps whose own progress
    /// output is useful), still keeping its tail for the error.
    pub fn forward_stderr(mut self) -> Self {
        self.stderr = StderrMode::Forward;
        self
    }

    /// Kill the child and fail when it runs longer than this.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Rewrite each stderr line (forwarded and kept) through `f`, e.g. to redact secrets.
    pub fn filter_stderr(mut self, f: fn(&str) -> String) -> Self {
        self.filter = Some(f);
        self
    }

    pub fn program(&self) -> &OsStr {
        &self.program
    }

    pub fn get_args(&self) -> &[OsString] {
        &self.args
    }

    /// Run, requiring exit status 0; stdout is discarded.
    pub fn run(&self) -> Result<(), CmdError> {
        self.output().map(|_| ())
    }

    /// Run, requiring exit status 0; returns stdout trimmed, as UTF-8 (lossy).
    pub fn stdout_string(&self) -> Result<String, CmdError> {
        self.output().map(|o| o.stdout_str())
    }

    /// Run, requiring exit status 0; returns what the program printed.
    pub fn output(&self) -> Result<Output, CmdError> {
        let command = self.to_string();
        tracing::debug!(%command, "running");
        let started = Instant::now();
        let mut child = self.build().spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                let program = self.program.to_string_lossy().into_owned();
                CmdError::NotFound {
                    package: package_for(&program),
                    program,
                }
            } else {
                CmdError::Spawn {
                    command: command.clone(),
                    source,
                }
            }
        })?;

        let io_err = |source| CmdError::Io {
            command: command.clone(),
            source,
        };

        // Feed stdin from a thread so a child that writes a lot before reading cannot
        // deadlock against us.
        let stdin_thread = match (self.stdin.clone(), child.stdin.take()) {
            (Some(data), Some(mut pipe)) => Some(std::thread::spawn(move || {
                let r = pipe.write_all(&data);
                drop(pipe);
                r
            })),
            _ => None,
        };
        let mut stdout_pipe = child.stdout.take();
        let stdout_thread = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(p) = stdout_pipe.as_mut() {
                p.read_to_end(&mut buf)?;
            }
            Ok::<_, std::io::Error>(buf)
        });
        let stderr_pipe = child.stderr.take();
        let mode = self.stderr;
        let filter = self.filter;
        let stderr_thread = std::thread::spawn(move || {
            let mut all = Vec::new();
            if let Some(p) = stderr_pipe {
                let mut reader = BufReader::new(p);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    if reader.read_until(b'\n', &mut line)? == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&line);
                    let text = match filter {
                        Some(f) => f(text.trim_end_matches('\n')) + "\n",
                        None => text.into_owned(),
                    };
                    if mode == StderrMode::Forward {
                        let mut err = std::io::stderr().lock();
                        let _ = err.write_all(text.as_bytes());
                    }
                    all.extend_from_slice(text.as_bytes());
                }
            }
            Ok::<_, std::io::Error>(all)
        });

        let status = match self.timeout {
            None => child.wait().map_err(io_err)?,
            Some(limit) => loop {
                if let Some(status) = child.try_wait().map_err(io_err)? {
                    break status;
                }
                if started.elapsed() > limit {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CmdError::TimedOut {
                        command,
                        timeout: limit,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            },
        };
        if let Some(t) = stdin_thread {
            match t.join() {
                // A child that exits without reading all input closes the pipe: not our error
                // to report if it succeeded, and its own status says enough if it failed.
                Ok(Err(e)) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(io_err(e)),
                _ => {}
            }
        }
        let stdout = join_io(stdout_thread).map_err(io_err)?;
        let stderr = join_io(stderr_thread).map_err(io_err)?;
        tracing::debug!(%command, elapsed_ms = started.elapsed().as_millis() as u64, %status, "finished");
        if !status.success() {
            return Err(CmdError::Failed {
                command,
                status,
                stderr_tail: last_lines(&stderr, STDERR_TAIL_LINES),
                stdout,
            });
        }
        Ok(Output { stdout, stderr })
    }

    fn build(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        if self.env_clear {
            c.env_clear();
        }
        for k in &self.env_remove {
            c.env_remove(k);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(dir) = &self.cwd {
            c.current_dir(dir);
        }
        c.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        c.stdout(Stdio::piped());
        c.stderr(Stdio::piped());
        c
    }
}

fn join_io(handle: std::thread::JoinHandle<std::io::Result<Vec<u8>>>) -> std::io::Result<Vec<u8>> {
    handle
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("reader thread panicked")))
}

/// The last `n` lines of `bytes` as text.
fn last_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Shell-like rendering for logs and error messages. Arguments are quoted when needed.
impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", quote(&self.program))?;
        for a in &self.args {
            write!(f, " {}", quote(a))?;
        }
        Ok(())
    }
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_returns_stdout() {
        let out = Cmd::new("sh")
            .args(["-c", "printf 'hello\\n'"])
            .stdout_string()
            .unwrap();
        assert_eq!(out, "hello");
    }

    #[test]
    fn failure_carries_status_and_stderr_tail() {
        let err = Cmd::new("sh")
            .args([
                "-c",
                "for i in $(seq 1 40); do echo line$i >&2; done; exit 3",
            ])
            .run()
            .unwrap_err();
        assert_eq!(err.exit_code(), Some(3));
        let msg = err.to_string();
        assert!(msg.contains("line40"), "{msg}");
        assert!(!msg.contains("line15\n"), "tail should be bounded: {msg}");
    }

    #[test]
    fn missing_tool_names_package() {
        let err = Cmd::new("mmdebstrap-definitely-missing").run().unwrap_err();
        assert!(matches!(err, CmdError::NotFound { .. }));
        let err = Cmd::new("/nonexistent/bin/sgdisk").run().unwrap_err();
        assert!(err.to_string().contains("gdisk"), "{err}");
    }

    #[test]
    fn stdin_reaches_child() {
        let out = Cmd::new("cat")
            .stdin("secret-bytes")
            .stdout_string()
            .unwrap();
        assert_eq!(out, "secret-bytes");
    }

    #[test]
    fn timeout_kills() {
        let err = Cmd::new("sleep")
            .arg("5")
            .timeout(Duration::from_millis(200))
            .run()
            .unwrap_err();
        assert!(matches!(err, CmdError::TimedOut { .. }), "{err}");
    }

    #[test]
    fn stderr_filter_applies() {
        fn redact(l: &str) -> String {
            l.replace("abcdef.0123456789abcdef", "<redacted>")
        }
        // The secret arrives on stdin (never in argv, which the error message shows).
        let err = Cmd::new("sh")
            .args(["-c", "printf 'token '; cat >&2; exit 1"])
            .stdin("abcdef.0123456789abcdef\n")
            .filter_stderr(redact)
            .run()
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("<redacted>") && !msg.contains("0123456789abcdef"),
            "{msg}"
        );
    }

    #[test]
    fn display_quotes() {
        let c = Cmd::new("echo").args(["a b", "c"]);
        assert_eq!(c.to_string(), "echo 'a b' c");
    }
}
