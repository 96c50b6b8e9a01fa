//! What a stopping optimizer does, watched while it happens: health turns
//! NOT_SERVING while calls are still served, then the port closes, the
//! call in flight finishes, and the process exits; or, at the drain
//! deadline, a call that won't finish is cut off.

use std::net::TcpStream;

use tokio::sync::mpsc;
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use nws_runtime::testing::eventually;

use crate::*;

const SERVICE: &str = "watermark.v1.Optimizer";

/// A call that has sent its options and a first chunk, then waits for the
/// test to send the rest.
struct HeldCall {
    rest: mpsc::Sender<OptimizeRequest>,
    call: tokio::task::JoinHandle<Result<(), tonic::Status>>,
}

impl HeldCall {
    async fn start(process: &ServiceProcess, input: &[u8]) -> Self {
        let (rest, upload) = mpsc::channel(4);
        rest.send(OptimizeRequest {
            payload: Some(optimize_request::Payload::Options(OptimizeOptions::default())),
        })
        .await
        .unwrap();
        rest.send(OptimizeRequest {
            payload: Some(optimize_request::Payload::Chunk(input[..1024].to_vec().into())),
        })
        .await
        .unwrap();
        let mut client = client(process).await;
        let call = tokio::spawn(async move {
            let mut responses = client.optimize(ReceiverStream::new(upload)).await?.into_inner();
            while responses.message().await?.is_some() {}
            Ok(())
        });
        process.until_logged("call admitted", 1).await;
        Self { rest, call }
    }

    async fn finish(self, input: &[u8]) -> Result<(), tonic::Status> {
        for chunk in input[1024..].chunks(64 * 1024) {
            self.rest
                .send(OptimizeRequest {
                    payload: Some(optimize_request::Payload::Chunk(chunk.to_vec().into())),
                })
                .await
                .unwrap();
        }
        drop(self.rest);
        self.call.await.unwrap()
    }
}

/// A health client on a connection of its own.
async fn health_client(process: &ServiceProcess) -> Result<HealthClient<Channel>, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(process.url("optimizer"))
        .expect("a URL")
        .connect()
        .await?;
    Ok(HealthClient::new(channel))
}

async fn status_of(health: &mut HealthClient<Channel>) -> ServingStatus {
    let response = health
        .check(HealthCheckRequest {
            service: SERVICE.to_owned(),
        })
        .await
        .expect("health check answered");
    response.into_inner().status()
}

#[tokio::test]
async fn a_stopping_optimizer_turns_not_serving_then_closes_and_finishes_its_calls() {
    // Two seconds of not-ready serving: ample for the checks below, which
    // take milliseconds.
    let mut process = start(&[("NWS_SHUTDOWN_DELAY", "2s"), OBSERVED]);
    let input = jpeg_from_rgb(320, 240, &[90; 320 * 240 * 3]);
    let held = HeldCall::start(&process, &input).await;
    let mut watcher = health_client(&process).await.expect("connect");
    let mut watch = watcher
        .watch(HealthCheckRequest {
            service: SERVICE.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    process.signal("TERM");

    // Watchers (balancers, probes) hear NOT_SERVING at once...
    let next = watch.next().await.expect("the watch goes on").unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    process
        .until_logged("not ready: still serving until the delay ends", 1)
        .await;
    // ...and new connections are still accepted during the delay, and
    // told the same.
    let mut newcomer = health_client(&process)
        .await
        .expect("still accepting during the delay");
    assert_eq!(status_of(&mut newcomer).await, ServingStatus::NotServing);

    // Then the port closes while the held call is still in flight.
    process.until_logged("draining in-flight requests", 1).await;
    let addr = process.addr("optimizer");
    eventually("the port closing", async || {
        TcpStream::connect(addr).is_err().then_some(())
    })
    .await;
    assert!(!process.has_exited(), "the call in flight keeps the process up");

    held.finish(&input).await.expect("the call in flight completes");
    let status = process.wait(std::time::Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    // Its last lines may still be on their way through the pipe.
    process.until_logged("optimized", 1).await;
    assert_eq!(process.count_logged("optimized"), 1);
}

#[tokio::test]
async fn the_drain_deadline_cuts_off_a_call_that_does_not_finish() {
    let mut process = start(&[("NWS_DRAIN_TIMEOUT", "500ms"), OBSERVED]);
    let input = jpeg_from_rgb(320, 240, &[90; 320 * 240 * 3]);
    let held = HeldCall::start(&process, &input).await;

    process.signal("TERM");
    process
        .until_logged(
            "requests still in flight at the drain deadline; abandoning them",
            1,
        )
        .await;
    let status = process.wait(std::time::Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}");
    let HeldCall { rest, call } = held;
    let outcome = call.await.unwrap();
    drop(rest);
    assert!(
        outcome.is_err(),
        "the abandoned call is not answered as a success"
    );
    assert_eq!(process.count_logged("optimized"), 0);
}
