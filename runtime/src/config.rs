//! Configuration shared by every binary: flags with environment fallbacks,
//! and the fail-fast rule for bad values.

use std::{fmt, time::Duration};

use clap::{
    Args, CommandFactory, Parser, ValueEnum,
    error::{ContextKind, ContextValue, ErrorKind},
};

pub use crate::grpc::target::parse_upstream_url;

/// Exit status for a configuration error (BSD `EX_USAGE`).
pub const EX_USAGE: i32 = 64;

/// Settings every service process has.
#[derive(Debug, Clone, Args)]
pub struct CommonConfig {
    /// How long in-flight calls may take to finish after SIGTERM/SIGINT
    /// before the process exits anyway (e.g. `25s`, `500ms`). Keep it below
    /// Kubernetes' terminationGracePeriodSeconds.
    #[arg(long, env = "NWS_DRAIN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// After SIGTERM/SIGINT, how long servers keep accepting while they
    /// report themselves not ready (gRPC health NOT_SERVING, `/readyz`
    /// 503), so load balancers stop sending before the port closes. A few
    /// seconds behind a Kubernetes Service; `0s` when nothing balances.
    #[arg(long, env = "NWS_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// Log line format; the level filter comes from `RUST_LOG` (default `info`).
    #[arg(long, env = "NWS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Address of the admin listener: Prometheus `/metrics` and `/healthz`,
    /// never on the public port. Unset: the binary's default (all-in-one
    /// 127.0.0.1:9464, optimizer-svc 127.0.0.1:9465, storage-svc
    /// 127.0.0.1:9466; the gateway serves `/metrics` on its HTTP port and
    /// has none); empty: off.
    #[arg(long, env = "NWS_ADMIN_ADDR", value_parser = parse_admin_addr)]
    pub admin_addr: Option<AdminAddr>,

    /// How often an upstream given as `dns:///host:port` is resolved
    /// again, so new addresses get calls and vanished ones stop getting
    /// them (a failed connection also takes an address out of turn at once).
    #[arg(long, env = "NWS_RESOLVE_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub resolve_interval: Duration,

    #[command(flatten)]
    pub policy: crate::policy::PolicyConfig,

    #[command(flatten)]
    pub tls: crate::tls::TlsConfig,

    #[command(flatten)]
    pub upstream_tls: crate::tls::UpstreamTlsConfig,
}

/// Where the admin listener listens, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminAddr(pub Option<std::net::SocketAddr>);

fn parse_admin_addr(value: &str) -> Result<AdminAddr, String> {
    match value.trim() {
        "" => Ok(AdminAddr(None)),
        addr => addr
            .parse()
            .map(|addr| AdminAddr(Some(addr)))
            .map_err(|e| format!("{e}; expected host:port such as 127.0.0.1:9465, or empty for none")),
    }
}

impl CommonConfig {
    /// The admin listener's address: the configured one, else `default`.
    pub fn admin_addr_or(&self, default: Option<std::net::SocketAddr>) -> Option<std::net::SocketAddr> {
        self.admin_addr.map_or(default, |AdminAddr(addr)| addr)
    }

    /// How the process's servers stop.
    pub fn drain(&self) -> crate::shutdown::Drain {
        crate::shutdown::Drain {
            delay: self.shutdown_delay,
            timeout: self.drain_timeout,
        }
    }
}

/// How log lines are written to standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Parses a human duration such as `30s`, `250ms` or `2m`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value).map_err(|e| format!("not a duration ({e}); try e.g. 30s"))
}

/// Parses the command line and environment into `T`. A bad value ends the
/// process with one line naming the setting and the value, and `EX_USAGE`.
pub fn parse_or_exit<T: Parser>() -> T {
    match T::try_parse() {
        Ok(config) => config,
        Err(error) => match error.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => error.exit(),
            _ => {
                eprintln!("{}", one_line::<T>(&error));
                std::process::exit(EX_USAGE);
            }
        },
    }
}

/// The process exit status for a service's result: on failure, one line
/// with the whole cause chain (`error: optimizer: cannot listen on
/// 127.0.0.1:50051: Address already in use`), never a backtrace; `EX_USAGE`
/// when the cause is an [`InvalidSetting`].
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "exiting");
            eprintln!("error: {error:#}");
            if error.chain().any(|cause| cause.is::<InvalidSetting>()) {
                std::process::ExitCode::from(EX_USAGE as u8)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// A setting whose value parsed but cannot be used, found once the process
/// reads what it names (a certificate file holding no certificate, a key
/// that is not the certificate's): start-up stops as for a bad value, with
/// the setting's name and `EX_USAGE`.
#[derive(Debug)]
pub struct InvalidSetting {
    setting: &'static str,
    message: String,
}

impl InvalidSetting {
    pub fn new(setting: &'static str, message: impl Into<String>) -> Self {
        Self {
            setting,
            message: message.into(),
        }
    }

    /// About the file `path` that `setting` names.
    pub fn file(setting: &'static str, path: &std::path::Path, problem: impl fmt::Display) -> Self {
        Self::new(setting, format!("{}: {problem}", path.display()))
    }

    /// The environment variable at fault, e.g. `NWS_TLS_CERT`.
    pub fn setting(&self) -> &'static str {
        self.setting
    }
}

impl fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.setting, self.message)
    }
}

impl std::error::Error for InvalidSetting {}

/// clap's message names the flag; settings mostly arrive through the
/// environment, so name the variable too: `invalid value 'x' for
/// NWS_HTTP_ADDR (--http-addr): invalid socket address syntax`.
fn one_line<T: CommandFactory>(error: &clap::Error) -> String {
    let rendered = error.to_string();
    let first_line = rendered
        .lines()
        .next()
        .unwrap_or("invalid configuration")
        .to_owned();
    let command = T::command();
    // The flag (without `--`) of an argument as clap renders it, e.g.
    // `--http-addr <HTTP_ADDR>`, and the argument itself.
    let argument = |rendered: &str| {
        let long = rendered
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .trim_start_matches("--")
            .to_owned();
        let found = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()));
        let env = found
            .and_then(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned());
        let secret = found.is_some_and(|a| a.is_hide_env_values_set());
        (long, env, secret)
    };
    if error.kind() == ErrorKind::MissingRequiredArgument
        && let Some(ContextValue::Strings(missing)) = error.get(ContextKind::InvalidArg)
    {
        let named: Vec<String> = missing
            .iter()
            .map(|rendered| match argument(rendered) {
                (long, Some(env), _) => format!("{env} (--{long})"),
                (long, None, _) => format!("--{long}"),
            })
            .collect();
        return format!("error: missing setting: {}", named.join(", "));
    }
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) = (
        error.get(ContextKind::InvalidArg),
        error.get(ContextKind::InvalidValue),
    ) else {
        return first_line;
    };
    let (long, env, secret) = argument(arg);
    let reason = first_line.rsplit_once("': ").map_or("", |(_, reason)| reason);
    // A setting that can hold a secret is never echoed, not even when wrong.
    match (env, secret) {
        (Some(env), true) => format!("error: invalid value for {env} (--{long}): {reason}"),
        (Some(env), false) => format!("error: invalid value '{value}' for {env} (--{long}): {reason}"),
        (None, _) => first_line,
    }
}

/// `NWS_REDIS_URL`, read by every process that talks to Redis.
pub fn parse_redis_url(value: &str) -> Result<SecretUrl, String> {
    match value.split_once("://") {
        Some(("redis" | "rediss" | "redis+unix" | "unix", rest)) if !rest.is_empty() => {
            Ok(SecretUrl::new(value))
        }
        _ => Err("expected redis://[:password@]host:port[/db]".to_owned()),
    }
}

/// `NWS_AMQP_URL`: a RabbitMQ broker over plain AMQP 0-9-1. `amqps://` is
/// refused rather than silently sent in clear: this build links one TLS
/// provider (ring) and the AMQP client's TLS would bring a second.
pub fn parse_amqp_url(value: &str) -> Result<SecretUrl, String> {
    match value.split_once("://") {
        Some(("amqp", rest)) if !rest.is_empty() => Ok(SecretUrl::new(value)),
        Some(("amqps", _)) => Err(
            "amqps:// is not supported by this build; reach the broker over a trusted network or a TLS sidecar with amqp://"
                .to_owned(),
        ),
        _ => Err("expected amqp://user:password@host:5672/vhost".to_owned()),
    }
}

/// A URL that may carry a password (`redis://:secret@redis:6379/0`): the
/// whole URL for the code that connects, and a form with the password
/// masked for everything else (`Debug`, `Display`, error messages).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for the client that connects with it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split_once(':').map_or("", |(user, _)| user);
                let masked = if userinfo.contains(':') {
                    format!("{user}:***")
                } else {
                    "***".to_owned()
                };
                format!("{scheme}://{masked}@{host}{path}")
            }
            None => self.0.clone(),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_urls_show_no_password() {
        let cases = [
            ("redis://:hunter2@redis:6379/0", "redis://:***@redis:6379/0"),
            ("redis://app:hunter2@redis/1", "redis://app:***@redis/1"),
            ("rediss://token@cache.example", "rediss://***@cache.example"),
            ("redis://redis:6379", "redis://redis:6379"),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ];
        for (url, shown) in cases {
            let secret = SecretUrl::new(url);
            assert_eq!(secret.to_string(), shown);
            assert_eq!(format!("{secret:?}"), format!("{shown:?}"));
            assert_eq!(secret.expose(), url);
        }
    }

    #[test]
    fn durations_parse_or_explain() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").unwrap_err().contains("not a duration"));
    }
}

/// Parses a byte size: a plain number of bytes, or one with a unit suffix
/// (`KiB`, `MiB`, `GiB`, or decimal `KB`, `MB`, `GB`), e.g. `25MiB`.
pub fn parse_size(value: &str) -> Result<u64, String> {
    let trimmed = value.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("unknown size unit {other:?}; use e.g. 25MiB")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .filter(|n| *n > 0)
        .ok_or_else(|| "not a positive size; use e.g. 25MiB".to_owned())
}

/// As [`parse_size`], where `0` means "none" (e.g. a cache turned off).
pub fn parse_size_or_zero(value: &str) -> Result<u64, String> {
    if value.trim() == "0" {
        Ok(0)
    } else {
        parse_size(value)
    }
}

#[cfg(test)]
mod size_tests {
    use super::{parse_size, parse_size_or_zero};

    #[test]
    fn sizes_parse_or_explain() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("25MiB"), Ok(25 << 20));
        assert_eq!(parse_size_or_zero("0"), Ok(0));
        assert_eq!(parse_size_or_zero("1KiB"), Ok(1024));
        assert!(parse_size("0").is_err());
        assert_eq!(parse_size("2 GB"), Ok(2_000_000_000));
        assert!(parse_size("0").is_err());
        assert!(parse_size("big").is_err());
        assert!(parse_size("3 parsecs").unwrap_err().contains("unknown size unit"));
    }
}
