//! Where user-data comes from: kernel command line, NoCloud, config drive, cloud metadata
//! services, a local file. Each source is one type implementing [`Source`];
//! [`fetch_user_data`] runs the detection chain and decodes gzip/base64 ([`decode`]).
//!
//! Auto-detection order: `cmdline` (a URL on the kernel command line) > `nocloud` (a
//! `cidata` volume) > `config-drive` (a `config-2` volume) > the platform's metadata service
//! (EC2, GCE or Azure, recognised from DMI; only that one is asked) > `file`. A source that
//! does not apply or has no user-data is skipped (`Absent`); one that applies but fails stops
//! the chain, so a broken seed is reported instead of silently replaced by another source.
//! User-data is never logged, only its size and source.

pub mod cloud;
pub mod cmdline;
pub mod decode;
pub(crate) mod http;
pub mod volume;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

pub use cloud::{detect_platform, ImdsAnswer, ImdsClient, Platform};
pub use decode::{DecodeError, MAX_USER_DATA};

/// Why a source could not deliver. `Absent` is not an error for auto-detection: the next
/// source is tried.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// This source does not apply here or has no user-data (e.g. IMDS 404, no `cidata` volume).
    #[error("{source_name}: no user-data ({detail})")]
    Absent {
        source_name: &'static str,
        detail: String,
    },
    /// The source applies but failed (timeout after retries, malformed answer, ...).
    #[error("{source_name}: {detail}")]
    Failed {
        source_name: &'static str,
        detail: String,
    },
}

/// A user-data provider.
pub trait Source: std::fmt::Debug {
    /// Stable name used by `--source` and in messages (`cmdline`, `nocloud`, `config-drive`,
    /// `ec2`, `gce`, `azure`, `file`).
    fn name(&self) -> &'static str;

    /// Fetch the raw user-data bytes (before gzip/base64 decoding).
    fn fetch(&self) -> Result<Vec<u8>, SourceError>;

    /// Like [`Source::fetch`], plus the instance identity the source knows (NoCloud
    /// meta-data, config-drive `meta_data.json`, `ds=nocloud;h=…;i=…`).
    fn fetch_with_meta(&self) -> Result<(Vec<u8>, SourceMeta), SourceError> {
        Ok((self.fetch()?, SourceMeta::default()))
    }
}

/// Identity data a seed carries next to the user-data. Empty for sources without any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceMeta {
    pub instance_id: Option<String>,
    pub hostname: Option<String>,
}

/// Which source to read, for `--source`. `Auto` tries them in the documented order:
/// cmdline > NoCloud/config-drive > platform (from DMI) > local file.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    #[default]
    Auto,
    Cmdline,
    Nocloud,
    ConfigDrive,
    Ec2,
    Gce,
    Azure,
    File,
}

/// Where the sources look. Every path and base URL is injectable for tests.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    pub kind: SourceKind,
    /// Kernel command line file, default `/proc/cmdline`.
    pub cmdline_path: PathBuf,
    /// Root under which block devices/labels (`dev/disk/by-label`), DMI
    /// (`sys/class/dmi/id`), network interfaces (`sys/class/net`) and the hostname
    /// (`proc/sys/kernel/hostname`) are looked up (default `/`).
    pub root: PathBuf,
    /// Local config file, default `/etc/nodeboot/config.toml`.
    pub local_file: PathBuf,
    /// An already-mounted NoCloud seed directory (`user-data`, `meta-data`): used instead of
    /// looking up and mounting a `cidata` volume.
    pub nocloud_dir: Option<PathBuf>,
    /// An already-mounted config drive (`openstack/latest/user_data`), instead of `config-2`.
    pub config_drive_dir: Option<PathBuf>,
    /// Base URLs of metadata services (default: the real link-local addresses).
    pub ec2_base: String,
    pub gce_base: String,
    pub azure_base: String,
    /// Per-request timeout and retry budget.
    pub timeout: Duration,
    pub retries: u32,
    /// First wait between retries; doubles each time, capped at [`MAX_BACKOFF`].
    pub backoff: Duration,
}

/// Upper bound of one wait between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            kind: SourceKind::Auto,
            cmdline_path: "/proc/cmdline".into(),
            root: "/".into(),
            local_file: "/etc/nodeboot/config.toml".into(),
            nocloud_dir: None,
            config_drive_dir: None,
            ec2_base: "http://169.254.169.254".to_owned(),
            gce_base: "http://metadata.google.internal".to_owned(),
            azure_base: "http://169.254.169.254".to_owned(),
            timeout: Duration::from_secs(5),
            retries: 5,
            backoff: Duration::from_millis(500),
        }
    }
}

/// Timeout and retry policy handed to each network source.
#[derive(Debug, Clone, Copy)]
pub struct Net {
    pub timeout: Duration,
    pub(crate) retry: http::Retry,
}

impl Net {
    pub fn new(timeout: Duration, retries: u32, backoff: Duration) -> Self {
        Net {
            timeout,
            retry: http::Retry {
                retries,
                base: backoff,
                cap: MAX_BACKOFF,
            },
        }
    }

    fn from_opts(opts: &SourceOptions) -> Self {
        Net::new(opts.timeout, opts.retries, opts.backoff)
    }
}

/// User-data as delivered, after gzip/base64 decoding.
#[derive(Debug, Clone)]
pub struct UserData {
    /// The source that delivered it (`Source::name`).
    pub source: &'static str,
    pub bytes: Vec<u8>,
}

/// The source `kind` names, configured from `opts`; `None` for [`SourceKind::Auto`].
pub fn source_for(kind: SourceKind, opts: &SourceOptions) -> Option<Box<dyn Source>> {
    let net = Net::from_opts(opts);
    let boxed: Box<dyn Source> = match kind {
        SourceKind::Auto => return None,
        SourceKind::Cmdline => Box::new(cmdline::Cmdline::new(
            opts.cmdline_path.clone(),
            opts.root.clone(),
            net,
        )),
        SourceKind::Nocloud => Box::new(volume::SeedVolume::new(
            volume::VolumeKind::NoCloud,
            opts.root.clone(),
            opts.nocloud_dir.clone(),
        )),
        SourceKind::ConfigDrive => Box::new(volume::SeedVolume::new(
            volume::VolumeKind::ConfigDrive,
            opts.root.clone(),
            opts.config_drive_dir.clone(),
        )),
        SourceKind::Ec2 => lazy(cloud::Ec2::new(&opts.ec2_base, net), "ec2"),
        SourceKind::Gce => lazy(cloud::Gce::new(&opts.gce_base, net), "gce"),
        SourceKind::Azure => lazy(cloud::Azure::new(&opts.azure_base, net), "azure"),
        SourceKind::File => Box::new(volume::LocalFile::new(opts.local_file.clone())),
    };
    Some(boxed)
}

/// A source whose construction failed reports that failure when asked to fetch.
fn lazy<S: Source + 'static>(built: Result<S, SourceError>, name: &'static str) -> Box<dyn Source> {
    match built {
        Ok(s) => Box::new(s),
        Err(e) => Box::new(Broken {
            name,
            detail: e.to_string(),
        }),
    }
}

#[derive(Debug)]
struct Broken {
    name: &'static str,
    detail: String,
}

impl Source for Broken {
    fn name(&self) -> &'static str {
        self.name
    }
    fn fetch(&self) -> Result<Vec<u8>, SourceError> {
        Err(SourceError::Failed {
            source_name: self.name,
            detail: self.detail.clone(),
        })
    }
}

/// The kinds auto-detection tries, in order, for this machine.
pub fn detection_order(opts: &SourceOptions) -> Vec<SourceKind> {
    let mut kinds = vec![
        SourceKind::Cmdline,
        SourceKind::Nocloud,
        SourceKind::ConfigDrive,
    ];
    match detect_platform(&opts.root) {
        Some(Platform::Ec2) => kinds.push(SourceKind::Ec2),
        Some(Platform::Gce) => kinds.push(SourceKind::Gce),
        Some(Platform::Azure) => kinds.push(SourceKind::Azure),
        None => {}
    }
    kinds.push(SourceKind::File);
    kinds
}

/// Find and fetch user-data as `opts` says.
pub fn fetch_user_data(opts: &SourceOptions) -> anyhow::Result<UserData> {
    fetch_user_data_and_meta(opts).map(|(u, _)| u)
}

/// [`fetch_user_data`], plus the identity data of the source that delivered.
pub fn fetch_user_data_and_meta(opts: &SourceOptions) -> anyhow::Result<(UserData, SourceMeta)> {
    let kinds = match opts.kind {
        SourceKind::Auto => detection_order(opts),
        forced => vec![forced],
    };
    let mut skipped = Vec::new();
    for kind in kinds {
        let Some(source) = source_for(kind, opts) else {
            continue;
        };
        match fetch_decoded(source.as_ref()) {
            Ok(found) => return Ok(found),
            Err(e @ SourceError::Absent { .. }) => {
                tracing::debug!(reason = %e, "user-data source skipped");
                skipped.push(e.to_string());
            }
            Err(e @ SourceError::Failed { .. }) => {
                return Err(anyhow::Error::new(e))
                    .with_context(|| format!("reading user-data from source `{}`", source.name()))
            }
        }
    }
    anyhow::bail!(
        "no user-data found (source {}): {}",
        serde_json::to_value(opts.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        skipped.join("; ")
    )
}

/// Fetch from one source and decode; empty user-data counts as none.
pub fn fetch_decoded(source: &dyn Source) -> Result<(UserData, SourceMeta), SourceError> {
    let name = source.name();
    let (raw, meta) = source.fetch_with_meta()?;
    let bytes = decode::decode(&raw).map_err(|e| SourceError::Failed {
        source_name: name,
        detail: e.to_string(),
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(SourceError::Absent {
            source_name: name,
            detail: "user-data is empty".to_owned(),
        });
    }
    tracing::info!(
        source = name,
        bytes = bytes.len(),
        raw_bytes = raw.len(),
        "user-data found"
    );
    Ok((
        UserData {
            source: name,
            bytes,
        },
        meta,
    ))
}
