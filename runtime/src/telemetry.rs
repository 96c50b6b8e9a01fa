//! Logging set-up, in one place for every binary.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Installs the process-wide subscriber. `RUST_LOG` filters (default `info`).
/// Calling it again (several services in one process) is harmless.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    let _already_set = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
