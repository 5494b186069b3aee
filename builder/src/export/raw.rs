//! Raw export: a sparse copy of the disk image (holes and all-zero blocks stay unallocated).

use std::path::Path;

use anyhow::{Context, Result};
use nodeimg_common::digest::Sha256Hex;
use nodeimg_common::fsutil::AtomicFile;
use sha2::{Digest, Sha256};

use super::sparse::{self, Piece};
use super::{input_len, ExportReport, Meter};
use crate::progress::Step;
use crate::recipe::schema::Format;

pub fn write(raw: &Path, out: &Path, step: &Step) -> Result<ExportReport> {
    let (src, len) = input_len(raw)?;
    let mut dst = AtomicFile::create(out)?;
    dst.file()
        .set_len(len)
        .with_context(|| format!("sizing {}", dst.temp_path().display()))?;
    let mut hasher = Sha256::new();
    let mut meter = Meter::new(step, len);
    let file = dst
        .file()
        .try_clone()
        .context("duplicating the output handle")?;
    sparse::walk(&src, len, 4096, 4 << 20, |piece| {
        match piece {
            Piece::Data { offset, bytes } => {
                hasher.update(bytes);
                sparse::write_nonzero(&file, offset, bytes)?;
                meter.at(offset + bytes.len() as u64);
            }
            Piece::Hole { len, .. } => sparse::hash_zeros(&mut hasher, len),
        }
        Ok(())
    })
    .with_context(|| format!("copying {}", raw.display()))?;
    dst.commit()?;
    Ok(ExportReport {
        path: out.to_owned(),
        format: Format::Raw,
        sha256: Sha256Hex::from_hasher(hasher),
        size: len,
        virtual_size: len,
    })
}
