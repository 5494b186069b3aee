//! The measuring half of `ci/bench-export` (not a correctness test: it is ignored by
//! `cargo test` and run by that script in release mode). Exports the raw image named by
//! `NODEIMG_BENCH_RAW` into `NODEIMG_BENCH_OUT` with each writer and prints one
//! tab-separated `BENCH` line per run: tool, format, seconds, output bytes.

use std::path::PathBuf;
use std::time::Instant;

use nodeimg_builder::export::{self, Compression, ExportOptions};
use nodeimg_builder::recipe::schema::Format;

#[test]
#[ignore = "benchmark; run by ci/bench-export"]
fn bench_export() {
    let raw = PathBuf::from(std::env::var_os("NODEIMG_BENCH_RAW").expect("set NODEIMG_BENCH_RAW"));
    let dir = PathBuf::from(std::env::var_os("NODEIMG_BENCH_OUT").expect("set NODEIMG_BENCH_OUT"));
    nodeimg_builder::progress::set_quiet(true);
    for (label, format, compression) in [
        ("raw", Format::Raw, Compression::None),
        ("qcow2", Format::Qcow2, Compression::None),
        ("qcow2-zlib", Format::Qcow2, Compression::Zlib),
        ("qcow2-zstd", Format::Qcow2, Compression::Zstd),
        ("vhd-fixed", Format::Vhd, Compression::None),
    ] {
        let out = dir.join(format!("ours.{label}"));
        let opts = ExportOptions {
            compression,
            timestamp: None,
        };
        let started = Instant::now();
        let report = export::write(format, &raw, &out, &opts).expect("export");
        let secs = started.elapsed().as_secs_f64();
        println!("BENCH\tnodeimg\t{label}\t{secs:.3}\t{}", report.size);
        std::fs::remove_file(&out).expect("removing the output");
    }
}
