//! Human progress on stderr for long steps: one line when a stage starts, one when it ends
//! with its elapsed time. Silent when `--json` asks for machine output only.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silence progress lines (machine-readable mode).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// A running step. Ends with [`Step::done`] (or a note via [`Step::done_with`]); dropped
/// unfinished it reports failure.
#[derive(Debug)]
pub struct Step {
    name: String,
    started: Instant,
    finished: bool,
}

/// Start a step and print `==> name`.
pub fn step(name: impl Into<String>) -> Step {
    let name = name.into();
    line(&format!("==> {name}"));
    tracing::info!(step = %name, "started");
    Step {
        name,
        started: Instant::now(),
        finished: false,
    }
}

impl Step {
    pub fn elapsed_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Print an intermediate message under this step.
    pub fn note(&self, msg: impl AsRef<str>) {
        line(&format!("    {}", msg.as_ref()));
    }

    pub fn done(self) -> f64 {
        self.done_with("")
    }

    /// Finish with a short note (e.g. "cached" or the produced checksum). Returns seconds.
    pub fn done_with(mut self, note: &str) -> f64 {
        self.finished = true;
        let secs = self.elapsed_secs();
        let sep = if note.is_empty() { "" } else { ", " };
        line(&format!("    {} done in {secs:.1}s{sep}{note}", self.name));
        tracing::info!(step = %self.name, secs, note, "finished");
        secs
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if !self.finished {
            line(&format!(
                "    {} FAILED after {:.1}s",
                self.name,
                self.elapsed_secs()
            ));
        }
    }
}

fn line(s: &str) {
    if !QUIET.load(Ordering::Relaxed) {
        let mut e = std::io::stderr().lock();
        let _ = writeln!(e, "{s}");
    }
}
