//! The life of a service process, the same for every binary: telemetry
//! first, then the servers until SIGTERM/SIGINT, the admin listener until
//! they have drained (metrics stay scrapable while they do), and the spans
//! still queued sent before exit.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    admin::AdminServer,
    config::{CommonConfig, EX_USAGE, exit_code},
    telemetry::{self, Services},
};

/// How long queued spans may take to leave at exit.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `serve` (given a token cancelled at the first SIGINT or SIGTERM) as
/// the process `services` names; `admin_default` is where the admin
/// listener goes when NWS_ADMIN_ADDR is unset.
pub async fn run<F>(
    services: Services,
    common: &CommonConfig,
    admin_default: Option<SocketAddr>,
    serve: impl FnOnce(CancellationToken) -> F,
) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let telemetry = match telemetry::init(services, common.log_format) {
        Ok(telemetry) => telemetry,
        // A bad OTEL_* value is a configuration error, like a bad NWS_* one.
        Err(error) => {
            eprintln!("error: telemetry: {error:#}");
            return ExitCode::from(EX_USAGE as u8);
        }
    };
    let run = async {
        let admin = match common.admin_addr_or(admin_default) {
            Some(addr) => Some(AdminServer::bind(addr).await?),
            None => None,
        };
        let admin_stop = CancellationToken::new();
        let admin =
            admin.map(|admin| tokio::spawn(admin.run_until_stopped(admin_stop.clone().cancelled_owned())));
        let served = serve(crate::shutdown::on_signal()).await;
        admin_stop.cancel();
        if let Some(admin) = admin {
            admin.await??;
        }
        served
    };
    let code = exit_code(run.await);
    telemetry.shutdown(FLUSH_TIMEOUT).await;
    code
}
