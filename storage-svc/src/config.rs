use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use nws_runtime::config::{parse_duration, parse_size};

/// Storage settings; flags with `NWS_*` environment fallbacks.
#[derive(Debug, Clone, Args)]
pub struct StorageConfig {
    /// Address the Storage gRPC server listens on.
    #[arg(long, env = "NWS_STORAGE_ADDR", default_value = "127.0.0.1:50052")]
    pub storage_addr: SocketAddr,

    /// Where objects are kept: `fs` (under NWS_DATA_DIR) or `s3`.
    #[arg(long, env = "NWS_STORAGE_BACKEND", value_enum, default_value_t = BackendKind::Fs)]
    pub storage_backend: BackendKind,

    /// Directory that holds the stored objects (created when missing).
    #[arg(long, env = "NWS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Largest object a Put accepts (e.g. `1GiB`).
    #[arg(long, env = "NWS_STORAGE_MAX_OBJECT_BYTES", default_value = "1GiB", value_parser = parse_size)]
    pub max_object_bytes: u64,

    /// Deadline for each backend operation (a chunk written, an object
    /// opened, a commit); past it the call fails with UNAVAILABLE.
    #[arg(long, env = "NWS_STORAGE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub storage_timeout: Duration,

    /// How often the backend's reachability is checked for health reports.
    #[arg(long, env = "NWS_STORAGE_HEALTH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub storage_health_interval: Duration,

    #[command(flatten)]
    pub s3: S3Config,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// The local filesystem, under NWS_DATA_DIR.
    Fs,
    /// An S3-compatible object store (AWS S3, MinIO, …).
    S3,
}

/// Settings of the S3 backend, read only when NWS_STORAGE_BACKEND=s3.
#[derive(Clone, Args)]
pub struct S3Config {
    /// S3 endpoint, e.g. `http://minio:9000`; unset means AWS S3 in NWS_S3_REGION.
    #[arg(long, env = "NWS_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// Region to sign requests for.
    #[arg(long, env = "NWS_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,

    /// Bucket that holds the objects.
    #[arg(long, env = "NWS_S3_BUCKET", default_value = "nws-watermark")]
    pub s3_bucket: String,

    /// Create the bucket when it does not exist.
    #[arg(long, env = "NWS_S3_CREATE_BUCKET", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_create_bucket: bool,

    /// Objects larger than this are sent as a multipart upload, in parts of
    /// this size (at least 5MiB, S3's minimum part size).
    #[arg(long, env = "NWS_S3_PART_SIZE", default_value = "8MiB", value_parser = parse_part_size)]
    pub s3_part_size: u64,

    /// Access key; with the secret key below, it signs every request.
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub aws_access_key_id: Option<String>,

    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub aws_secret_access_key: Option<String>,

    /// Session token for temporary credentials.
    #[arg(long, env = "AWS_SESSION_TOKEN", hide_env_values = true)]
    pub aws_session_token: Option<String>,
}

/// Credentials never reach the logs.
impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |value: &Option<String>| value.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Config")
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_bucket", &self.s3_bucket)
            .field("s3_create_bucket", &self.s3_create_bucket)
            .field("s3_part_size", &self.s3_part_size)
            .field("aws_access_key_id", &redacted(&self.aws_access_key_id))
            .field("aws_secret_access_key", &redacted(&self.aws_secret_access_key))
            .field("aws_session_token", &redacted(&self.aws_session_token))
            .finish()
    }
}

/// S3 refuses parts under 5 MiB (except the last) and over 5 GiB.
fn parse_part_size(value: &str) -> Result<u64, String> {
    const MIN: u64 = 5 * 1024 * 1024;
    const MAX: u64 = 5 * 1024 * 1024 * 1024;
    let size = parse_size(value)?;
    if (MIN..=MAX).contains(&size) {
        Ok(size)
    } else {
        Err(format!("{value} is outside S3's part sizes, 5MiB to 5GiB"))
    }
}
