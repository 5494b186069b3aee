//! Recognising gzip and base64 user-data, with a size limit that also holds for what a gzip
//! stream expands to.
//!
//! The rule, applied to the bytes a source delivered:
//! 1. starts with the gzip magic `1f 8b` → gunzip (invalid gzip is an error);
//! 2. otherwise, the whole payload with ASCII whitespace removed is canonical standard base64
//!    (RFC 4648 alphabet, `=` padding) **and** decodes to either gzip (→ gunzip) or UTF-8 text
//!    that parses as TOML → the decoded bytes. Requiring both keeps a plain TOML document from
//!    ever being mistaken for base64 (real TOML has `=` inside, which base64 only allows at the
//!    end, and must still parse after decoding);
//! 3. otherwise the bytes are returned unchanged (the schema parser reports what is wrong).
//!
//! The result is limited to [`MAX_USER_DATA`] bytes; gunzip stops reading one byte past it.

use base64::Engine;

use super::http::{read_bounded, BoundedError};

/// Largest decoded user-data accepted (Azure's own limit is 64 KB; the config is far smaller).
pub const MAX_USER_DATA: usize = 64 * 1024;

/// Largest payload read from a source before decoding: base64 of [`MAX_USER_DATA`] plus line
/// breaks fits in it.
pub const MAX_RAW_USER_DATA: usize = MAX_USER_DATA * 3 / 2;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Why a payload could not be decoded. The text never contains payload bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("user-data looks gzip-compressed (starts with 1f 8b) but is not valid gzip: {0}")]
    BadGzip(String),
    #[error("user-data is larger than {MAX_USER_DATA} bytes{0}")]
    TooLarge(&'static str),
    #[error("user-data is not valid base64: {0}")]
    BadBase64(String),
}

/// Decode `raw` by the rule in the module documentation.
pub fn decode(raw: &[u8]) -> Result<Vec<u8>, DecodeError> {
    if raw.starts_with(&GZIP_MAGIC) {
        return gunzip(raw);
    }
    if let Some(decoded) = try_base64(raw) {
        if decoded.starts_with(&GZIP_MAGIC) {
            return gunzip(&decoded);
        }
        if std::str::from_utf8(&decoded).is_ok_and(|t| t.parse::<toml::Table>().is_ok()) {
            return limit(decoded);
        }
    }
    limit(raw.to_vec())
}

/// Decode a payload the source declares as base64 (Azure `userData`, GCE
/// `user-data-encoding: base64`): invalid base64 is an error here, not a fallback.
pub fn decode_declared_base64(raw: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let compact: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .map_err(|e| DecodeError::BadBase64(e.to_string()))
}

fn try_base64(raw: &[u8]) -> Option<Vec<u8>> {
    let compact: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .ok()
}

fn gunzip(data: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let dec = flate2::read::MultiGzDecoder::new(data);
    match read_bounded(dec, MAX_USER_DATA) {
        Ok(out) => Ok(out),
        Err(BoundedError::TooLarge) => Err(DecodeError::TooLarge(" after gunzip")),
        Err(BoundedError::Io(e)) => Err(DecodeError::BadGzip(e.to_string())),
    }
}

fn limit(data: Vec<u8>) -> Result<Vec<u8>, DecodeError> {
    if data.len() > MAX_USER_DATA {
        return Err(DecodeError::TooLarge(""));
    }
    Ok(data)
}

/// Read `r` fully but not more than `limit` bytes (a file or mounted volume).
pub(crate) fn read_file_limited(path: &std::path::Path, limit: usize) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    match read_bounded(f, limit) {
        Ok(v) => Ok(v),
        Err(BoundedError::TooLarge) => Err(std::io::Error::other(format!(
            "larger than the limit of {limit} bytes"
        ))),
        Err(BoundedError::Io(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const DOC: &str = "version = 1\n[node]\nrole = \"join-worker\"\n";

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn b64(data: &[u8]) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .encode(data)
            .into_bytes()
    }

    #[test]
    fn plain_toml_is_untouched() {
        assert_eq!(decode(DOC.as_bytes()).unwrap(), DOC.as_bytes());
    }

    #[test]
    fn gzip_and_base64_forms() {
        assert_eq!(decode(&gz(DOC.as_bytes())).unwrap(), DOC.as_bytes());
        assert_eq!(decode(&b64(DOC.as_bytes())).unwrap(), DOC.as_bytes());
        assert_eq!(decode(&b64(&gz(DOC.as_bytes()))).unwrap(), DOC.as_bytes());
        // `base64` wraps at 76 columns; the line breaks must not defeat detection.
        let mut wrapped = Vec::new();
        for chunk in b64(DOC.as_bytes()).chunks(20) {
            wrapped.extend_from_slice(chunk);
            wrapped.push(b'\n');
        }
        assert_eq!(decode(&wrapped).unwrap(), DOC.as_bytes());
    }

    #[test]
    fn base64_that_is_not_toml_stays_raw() {
        // "hello world" base64-decodes fine, but not to gzip or TOML: keep the original text.
        let raw = b"aGVsbG8gd29ybGQ=";
        assert_eq!(decode(raw).unwrap(), raw);
        // A short word that happens to be valid base64 is not decoded either.
        assert_eq!(decode(b"abcd").unwrap(), b"abcd");
    }

    #[test]
    fn broken_gzip_is_an_error() {
        let mut bad = gz(DOC.as_bytes());
        bad.truncate(bad.len() / 2);
        assert!(matches!(decode(&bad), Err(DecodeError::BadGzip(_))));
        assert!(matches!(
            decode(&[0x1f, 0x8b, 0, 0, 0]),
            Err(DecodeError::BadGzip(_))
        ));
        // base64 of broken gzip: declared gzip, so an error rather than raw bytes.
        assert!(matches!(
            decode(&b64(&[0x1f, 0x8b, 8, 0, 1, 2, 3])),
            Err(DecodeError::BadGzip(_))
        ));
    }

    #[test]
    fn gzip_bomb_is_refused() {
        let bomb = gz(&vec![b'a'; 10 * 1024 * 1024]);
        assert!(
            bomb.len() < 64 * 1024,
            "test premise: small compressed form"
        );
        assert_eq!(decode(&bomb), Err(DecodeError::TooLarge(" after gunzip")));
        let at_limit = gz(&vec![b'#'; MAX_USER_DATA]);
        assert_eq!(decode(&at_limit).unwrap().len(), MAX_USER_DATA);
    }

    #[test]
    fn oversize_plain_is_refused() {
        assert_eq!(
            decode(&vec![b'#'; MAX_USER_DATA + 1]),
            Err(DecodeError::TooLarge(""))
        );
    }

    #[test]
    fn declared_base64_must_be_valid() {
        assert_eq!(
            decode_declared_base64(&b64(b"x = 1")).unwrap(),
            b"x = 1".to_vec()
        );
        assert!(matches!(
            decode_declared_base64(b"not*base64"),
            Err(DecodeError::BadBase64(_))
        ));
    }
}
