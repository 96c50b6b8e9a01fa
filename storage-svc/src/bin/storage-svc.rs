use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;
use nws_runtime::{
    config::{CommonConfig, parse_or_exit},
    policy::{Policy, Role},
    telemetry::{STORAGE, Services},
};
use storage_svc::StorageConfig;

// Every allocation through jemalloc, the C codecs' too: it hands idle memory
// back to the system (BENCHMARKS.md, "Memory").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// NWS Watermark Storage service.
#[derive(Parser)]
#[command(name = "storage-svc", version)]
struct Cli {
    #[command(flatten)]
    storage: StorageConfig,
    #[command(flatten)]
    common: CommonConfig,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = parse_or_exit();
    let admin = SocketAddr::from(([127, 0, 0, 1], 9466));
    nws_runtime::process::run(Services(&[STORAGE]), &cli.common, Some(admin), async |shutdown| {
        let tls = cli.common.tls.load()?;
        let policy = Policy::build(&cli.common.policy, Role::Service, shutdown.clone()).await?;
        let app = storage_svc::build(cli.storage)
            .await?
            .with_tls(tls)
            .with_policy(policy);
        app.run_until_stopped(shutdown.cancelled_owned(), cli.common.drain())
            .await
    })
    .await
}
