//! The export writers against qemu's own tools: `qemu-img check` and `qemu-img compare` for
//! qcow2 (uncompressed, zlib, zstd), `qemu-img info -f vpc` and `compare` for VHD, and
//! reproducibility of every format.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nodeimg_builder::export::{self, Compression, ExportOptions};
use nodeimg_builder::recipe::schema::Format;
use nodeimg_common::digest::Sha256Hex;

const MIB: u64 = 1 << 20;

/// A raw image with the shapes that matter: holes, allocated zero clusters, compressible
/// text, incompressible noise, data straddling a cluster boundary, a 512-byte tail past the
/// last full cluster, and data in a second L2 range (beyond 512 MiB).
fn synthetic_raw(dir: &Path) -> PathBuf {
    let p = dir.join("synthetic.raw");
    let f = File::create(&p).unwrap();
    let len = 600 * MIB + 512;
    f.set_len(len).unwrap();
    let text: Vec<u8> = (0..4 * MIB)
        .flat_map(|i| format!("line {i} of a compressible log file\n").into_bytes())
        .take(4 * MIB as usize)
        .collect();
    f.write_all_at(&text, MIB).unwrap();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let noise: Vec<u8> = (0..3 * MIB)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    f.write_all_at(&noise, 10 * MIB).unwrap();
    f.write_all_at(&vec![0u8; 2 * MIB as usize], 20 * MIB)
        .unwrap(); // allocated zeros
    f.write_all_at(b"straddling a cluster boundary", 30 * MIB - 10)
        .unwrap();
    f.write_all_at(&text[..MIB as usize], 550 * MIB).unwrap();
    f.write_all_at(b"last sector", len - 512).unwrap();
    f.sync_all().unwrap();
    p
}

fn qemu_img(args: &[&str], paths: &[&Path]) -> (bool, String) {
    let out = Command::new("qemu-img")
        .args(args)
        .args(paths)
        .output()
        .expect("qemu-img (package qemu-utils) must be installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn export(
    format: Format,
    raw: &Path,
    out: &Path,
    compression: Compression,
) -> export::ExportReport {
    export::write(
        format,
        raw,
        out,
        &ExportOptions {
            compression,
            timestamp: None,
            disk_id: None,
        },
    )
    .unwrap()
}

#[test]
fn qcow2_is_clean_and_identical_to_raw_in_every_compression() {
    let d = tempfile::tempdir().unwrap();
    let raw = synthetic_raw(d.path());
    let mut sizes = Vec::new();
    for (name, c) in [
        ("none", Compression::None),
        ("zlib", Compression::Zlib),
        ("zstd", Compression::Zstd),
    ] {
        let out = d.path().join(format!("{name}.qcow2"));
        let rep = export(Format::Qcow2, &raw, &out, c);
        let (ok, check) = qemu_img(&["check", "-f", "qcow2"], &[&out]);
        assert!(
            ok && check.contains("No errors were found"),
            "{name}: {check}"
        );
        assert!(!check.contains("leaked"), "{name}: {check}");
        let (ok, cmp) = qemu_img(&["compare", "-f", "raw", "-F", "qcow2"], &[&raw, &out]);
        assert!(ok && cmp.contains("Images are identical"), "{name}: {cmp}");
        let (_, info) = qemu_img(&["info", "-f", "qcow2", "--output=json"], &[&out]);
        assert!(
            info.contains(&format!("\"virtual-size\": {}", 600 * MIB + 512)),
            "{info}"
        );
        let expected_type = if c == Compression::Zstd {
            "zstd"
        } else {
            "zlib"
        };
        assert!(
            info.contains(&format!("\"compression-type\": \"{expected_type}\"")),
            "{info}"
        );
        assert_eq!(rep.size, fs::metadata(&out).unwrap().len());
        assert_eq!(rep.sha256, Sha256Hex::of_file(&out).unwrap());
        assert_eq!(rep.virtual_size, 600 * MIB + 512);
        sizes.push(rep.size);
    }
    // Data: 4 + 3 + 1 MiB text/noise + two small pieces; zero clusters are not stored.
    assert!(
        sizes[0] > 8 * MIB && sizes[0] < 9 * MIB,
        "uncompressed size {}",
        sizes[0]
    );
    assert!(
        sizes[1] < sizes[0] / 2 + 3 * MIB,
        "zlib must shrink the text: {sizes:?}"
    );
    assert!(
        sizes[2] < sizes[0] / 2 + 3 * MIB,
        "zstd must shrink the text: {sizes:?}"
    );
}

/// qemu reads `vhd` as a disk of `size` bytes with the content of `raw`. (`qemu-img check`
/// does not support vpc: `compare` reads every block through qemu's BAT and bitmap handling.)
fn assert_vpc_reads_as_raw(vhd: &Path, raw: &Path, size: u64) {
    let (ok, info) = qemu_img(&["info", "-f", "vpc", "--output=json"], &[vhd]);
    assert!(ok, "{info}");
    assert!(
        info.contains(&format!("\"virtual-size\": {size}")),
        "{info}"
    );
    let (ok, cmp) = qemu_img(&["compare", "-f", "raw", "-F", "vpc"], &[raw, vhd]);
    assert!(ok && cmp.contains("Images are identical"), "{cmp}");
}

#[test]
fn vhd_has_raw_size_and_content() {
    let d = tempfile::tempdir().unwrap();
    let raw = synthetic_raw(d.path());
    let out = d.path().join("disk.vhd");
    let rep = export(Format::Vhd, &raw, &out, Compression::None);
    let rounded = 601 * MIB; // Azure rule: virtual size rounded up to 1 MiB
    assert_eq!(rep.virtual_size, rounded);
    assert_eq!(fs::metadata(&out).unwrap().len(), rounded + 512);
    assert_vpc_reads_as_raw(&out, &raw, rounded);
    assert!(
        fs::metadata(&out).unwrap().blocks() * 512 < 64 * MIB,
        "fixed VHD keeps holes sparse on the host"
    );
    let bytes = fs::read(&out).unwrap();
    let footer = &bytes[rounded as usize..];
    assert_eq!(&footer[0..8], b"conectix");
    assert_eq!(&footer[28..32], b"win ");
    assert_eq!(rep.sha256, Sha256Hex::of_bytes(&bytes));
}

#[test]
fn dynamic_vhd_holds_only_data_blocks_and_reads_as_the_raw() {
    let d = tempfile::tempdir().unwrap();
    let raw = synthetic_raw(d.path());
    let out = d.path().join("disk.dynamic.vhd");
    let rep = export(Format::VhdDynamic, &raw, &out, Compression::None);
    let rounded = 601 * MIB;
    assert_eq!(rep.virtual_size, rounded);
    assert_vpc_reads_as_raw(&out, &raw, rounded);
    // Blocks with data in the synthetic image (2 MiB each): text at 1-5 MiB (blocks 0-2),
    // noise at 10-13 MiB (5-6), the bytes straddling 30 MiB (14-15), text at 550 MiB (275),
    // the last sector (300); the allocated zeros at 20 MiB take no block.
    let blocks = 3 + 2 + 2 + 1 + 1;
    let header = 512 + 1024 + (301u64 * 4).div_ceil(512) * 512;
    assert_eq!(rep.size, header + blocks * (512 + 2 * MIB) + 512);
    assert_eq!(fs::metadata(&out).unwrap().len(), rep.size);
    let bytes = fs::read(&out).unwrap();
    assert_eq!(rep.sha256, Sha256Hex::of_bytes(&bytes));
    // Footer copy at the start equals the footer at the end; type 3 (dynamic).
    assert_eq!(&bytes[..512], &bytes[bytes.len() - 512..]);
    assert_eq!(&bytes[0..8], b"conectix");
    assert_eq!(u32::from_be_bytes(bytes[60..64].try_into().unwrap()), 3);
    assert_eq!(&bytes[512..520], b"cxsparse");
    // Fixed and dynamic exports of one disk carry the same unique id.
    let fixed = d.path().join("disk.vhd");
    export(Format::Vhd, &raw, &fixed, Compression::None);
    let fixed_bytes = fs::read(&fixed).unwrap();
    assert_eq!(
        &bytes[68..84],
        &fixed_bytes[fixed_bytes.len() - 512 + 68..fixed_bytes.len() - 512 + 84]
    );
    // With the id a build passes: the same file but for the id (and the footers' checksums),
    // written without the content pass.
    let given = d.path().join("given.dynamic.vhd");
    let rep2 = export::write(
        Format::VhdDynamic,
        &raw,
        &given,
        &ExportOptions {
            disk_id: Some([0xab; 16]),
            ..Default::default()
        },
    )
    .unwrap();
    assert_vpc_reads_as_raw(&given, &raw, rounded);
    let given_bytes = fs::read(&given).unwrap();
    assert_eq!(rep2.sha256, Sha256Hex::of_bytes(&given_bytes));
    assert_eq!(&given_bytes[68..84], &[0xab; 16]);
    let body = |b: &[u8]| b[512..b.len() - 512].to_vec();
    assert!(
        body(&given_bytes) == body(&bytes),
        "header, BAT and blocks differ"
    );
}

#[test]
fn raw_copy_is_sparse_and_identical() {
    let d = tempfile::tempdir().unwrap();
    let raw = synthetic_raw(d.path());
    let out = d.path().join("copy.raw");
    let rep = export(Format::Raw, &raw, &out, Compression::None);
    assert_eq!(rep.sha256, Sha256Hex::of_file(&raw).unwrap());
    assert_eq!(rep.sha256, Sha256Hex::of_file(&out).unwrap());
    let allocated = fs::metadata(&out).unwrap().blocks() * 512;
    assert!(
        allocated < 10 * MIB,
        "allocated {allocated}: zeros must stay holes"
    );
}

#[test]
fn every_format_is_reproducible() {
    let d = tempfile::tempdir().unwrap();
    let raw = synthetic_raw(d.path());
    for (format, c) in [
        (Format::Raw, Compression::None),
        (Format::Qcow2, Compression::None),
        (Format::Qcow2, Compression::Zlib),
        (Format::Qcow2, Compression::Zstd),
        (Format::Vhd, Compression::None),
        (Format::VhdDynamic, Compression::None),
    ] {
        let a = export(format, &raw, &d.path().join("a.out"), c);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = export(format, &raw, &d.path().join("b.out"), c);
        assert_eq!(a.sha256, b.sha256, "{format} {c:?}");
        assert_eq!(
            Sha256Hex::of_file(&d.path().join("a.out")).unwrap(),
            Sha256Hex::of_file(&d.path().join("b.out")).unwrap()
        );
    }
}

/// The bytes of the uncompressed exports are pinned (compressed ones depend on the zlib and
/// zstd library versions): a faster writer must not change its output, and a deliberate
/// layout change shows up here and is accepted with `UPDATE_GOLDEN=1`.
#[test]
fn uncompressed_export_bytes_are_pinned() {
    let d = tempfile::tempdir().unwrap();
    let raw = synthetic_raw(d.path());
    let mut listing = String::new();
    for (name, format) in [
        ("raw", Format::Raw),
        ("qcow2", Format::Qcow2),
        ("vhd", Format::Vhd),
        ("vhd-dynamic", Format::VhdDynamic),
    ] {
        let out = d.path().join(format!("pinned.{name}"));
        let rep = export(format, &raw, &out, Compression::None);
        assert_eq!(rep.sha256, Sha256Hex::of_file(&out).unwrap(), "{name}");
        listing += &format!("{name} {} {}\n", rep.size, rep.sha256);
    }
    nodeimg_common::golden::assert_golden(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/export/synthetic.sha256"),
        &listing,
    );
}

#[test]
fn bad_input_fails_clearly_and_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let outdir = d.path().join("out");
    fs::create_dir(&outdir).unwrap();
    let raw = synthetic_raw(d.path());

    let err = "vhdx".parse::<Format>().unwrap_err();
    assert!(
        err.contains("unknown format `vhdx`") && err.contains("qcow2"),
        "{err}"
    );
    let err = "lz4".parse::<Compression>().unwrap_err();
    assert!(
        err.to_string().contains("unknown compression `lz4`"),
        "{err}"
    );

    let opts = ExportOptions::default();
    let err = export::write(Format::Pxe, &raw, &outdir.join("x.pxe"), &opts).unwrap_err();
    assert!(
        format!("{err:#}").contains("not a disk image format"),
        "{err:#}"
    );

    let zstd = ExportOptions {
        compression: Compression::Zstd,
        ..Default::default()
    };
    let err = export::write(Format::Vhd, &raw, &outdir.join("x.vhd"), &zstd).unwrap_err();
    assert!(
        format!("{err:#}").contains("only supported for qcow2"),
        "{err:#}"
    );

    let missing = d.path().join("missing.raw");
    for f in [Format::Raw, Format::Qcow2, Format::Vhd] {
        let err = export::write(f, &missing, &outdir.join(format!("x.{f}")), &opts).unwrap_err();
        assert!(format!("{err:#}").contains("missing.raw"), "{err:#}");
    }

    let odd = d.path().join("odd.raw");
    fs::write(&odd, vec![1u8; 1000]).unwrap();
    let err = export::write(Format::Qcow2, &odd, &outdir.join("odd.qcow2"), &opts).unwrap_err();
    assert!(format!("{err:#}").contains("multiple of 512"), "{err:#}");

    let tiny = d.path().join("tiny.raw");
    fs::write(&tiny, vec![1u8; 4096]).unwrap();
    let err = export::write(Format::Vhd, &tiny, &outdir.join("tiny.vhd"), &opts).unwrap_err();
    assert!(format!("{err:#}").contains("20 MiB"), "{err:#}");

    assert_eq!(
        fs::read_dir(&outdir).unwrap().count(),
        0,
        "nothing left behind"
    );
}
