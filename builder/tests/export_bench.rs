//! The measuring half of `ci/bench-export` (not a correctness test: it is ignored by
//! `cargo test` and run by that script in release mode). Exports the raw image named by
//! `NODEIMG_BENCH_RAW` into `NODEIMG_BENCH_OUT` with each writer (or those named,
//! comma-separated, in `NODEIMG_BENCH_FORMATS`: raw, qcow2, qcow2-zlib, qcow2-zstd, vhd-fixed,
//! vhd-dynamic) and prints one tab-separated `BENCH` line per run: tool, format, wall
//! seconds, CPU seconds (user + system, all threads), output bytes, sha256 (so runs and code
//! changes can be checked for identical output). Only the export is timed, not removing its output after.

use std::path::PathBuf;
use std::time::Instant;

use nodeimg_builder::export::{self, Compression, ExportOptions};
use nodeimg_builder::recipe::schema::Format;

/// User + system CPU seconds of this process so far, all threads included.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("reading /proc/self/stat");
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th
    // fields of the line, counted in USER_HZ ticks, which Linux fixes at 100 per second.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

#[test]
#[ignore = "benchmark; run by ci/bench-export"]
fn bench_export() {
    let raw = PathBuf::from(std::env::var_os("NODEIMG_BENCH_RAW").expect("set NODEIMG_BENCH_RAW"));
    let dir = PathBuf::from(std::env::var_os("NODEIMG_BENCH_OUT").expect("set NODEIMG_BENCH_OUT"));
    let only = std::env::var("NODEIMG_BENCH_FORMATS").ok();
    let wanted = |label: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|f| f == label))
    };
    nodeimg_builder::progress::set_quiet(true);
    let mut ran = 0;
    for (label, format, compression) in [
        ("raw", Format::Raw, Compression::None),
        ("qcow2", Format::Qcow2, Compression::None),
        ("qcow2-zlib", Format::Qcow2, Compression::Zlib),
        ("qcow2-zstd", Format::Qcow2, Compression::Zstd),
        ("vhd-fixed", Format::Vhd, Compression::None),
        ("vhd-dynamic", Format::VhdDynamic, Compression::None),
    ] {
        if !wanted(label) {
            continue;
        }
        ran += 1;
        let out = dir.join(format!("ours.{label}"));
        let opts = ExportOptions {
            compression,
            timestamp: None,
            // As in a build, which passes an id derived from the disk stage key (without one,
            // a dynamic VHD reads its data twice to derive the id from the content).
            disk_id: Some([0x5a; 16]),
        };
        let (started, cpu0) = (Instant::now(), cpu_seconds());
        let report = export::write(format, &raw, &out, &opts).expect("export");
        let (secs, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
        println!(
            "BENCH\tnodeimg\t{label}\t{secs:.3}\t{cpu:.2}\t{}\t{}",
            report.size, report.sha256
        );
        std::fs::remove_file(&out).expect("removing the output");
    }
    assert!(
        ran > 0,
        "NODEIMG_BENCH_FORMATS={only:?} names no known format"
    );
}
