//! The bounded waiting line and deadlines.

use crate::*;

#[tokio::test]
async fn past_the_waiting_line_calls_are_refused_at_once() {
    let process = start(&[
        ("NWS_OPTIMIZER_WORKERS", "1"),
        ("NWS_OPTIMIZER_QUEUE", "1"),
        OBSERVED,
    ]);
    let client = client(&process).await;
    let jpeg = test_image("kleiber_4000x3000.jpg");

    // Two calls hold the worker's place and the queue's: they send their
    // options and a first chunk, then wait.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(OptimizeRequest {
            payload: Some(optimize_request::Payload::Options(OptimizeOptions::default())),
        })
        .await
        .unwrap();
        tx.send(OptimizeRequest {
            payload: Some(optimize_request::Payload::Chunk(jpeg[..65536].to_vec().into())),
        })
        .await
        .unwrap();
        let mut held = client.clone();
        let call = tokio::spawn(async move {
            held.optimize(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
        });
        holders.push((tx, call));
    }
    process.until_logged("call admitted", 2).await;
    assert!(
        holders.iter().all(|(_, call)| !call.is_finished()),
        "holders admitted and waiting"
    );
    let mut third = client.clone();
    let status = optimize(&mut third, OptimizeOptions::default(), &jpeg)
        .await
        .expect_err("a third call is refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("NWS_OPTIMIZER_QUEUE"),
        "{}",
        status.message()
    );

    // Once the holders finish, there is room again.
    for (tx, call) in holders {
        for chunk in jpeg[65536..].chunks(65536) {
            tx.send(OptimizeRequest {
                payload: Some(optimize_request::Payload::Chunk(chunk.to_vec().into())),
            })
            .await
            .unwrap();
        }
        drop(tx);
        call.await.unwrap().expect("the held call completes");
    }
    let mut client = client.clone();
    optimize(&mut client, OptimizeOptions::default(), &jpeg)
        .await
        .expect("room again");
}

#[tokio::test]
async fn a_call_whose_deadline_passes_is_dropped_before_it_runs() {
    let process = start(&[("NWS_OPTIMIZER_WORKERS", "1"), OBSERVED]);
    let client = client(&process).await;
    let photo = test_image("dragonfly_4224x3168_progressive.jpg");

    // The one worker is busy with a slow progressive photo...
    let mut busy = client.clone();
    let busy_photo = photo.clone();
    let first =
        tokio::spawn(async move { optimize(&mut busy, OptimizeOptions::default(), &busy_photo).await });
    process
        .until("the first call's decode", |events| {
            events
                .iter()
                .find(|e| e["message"] == "pipeline stage" && e["stage"] == "decode")
                .cloned()
        })
        .await;
    // ...while a call with a short deadline waits behind it.
    let mut messages = vec![OptimizeRequest {
        payload: Some(optimize_request::Payload::Options(OptimizeOptions::default())),
    }];
    messages.extend(photo.chunks(64 * 1024).map(|chunk| OptimizeRequest {
        payload: Some(optimize_request::Payload::Chunk(chunk.to_vec().into())),
    }));
    let mut request = tonic::Request::new(tokio_stream::iter(messages));
    request.set_timeout(std::time::Duration::from_millis(30));
    let mut hurried = client.clone();
    let status = hurried.optimize(request).await.expect_err("deadline passes");
    // tonic reports its own client-side timer as CANCELLED.
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );

    first.await.unwrap().expect("the first call completes");
    // The server dropped the late call before it reached a worker: one job
    // ran the pipeline, and the late one never started a stage.
    process
        .until_logged("call cancelled by the client or its deadline; its work stops", 1)
        .await;
    // The first call's answer can reach the test before its log line does.
    process.until_logged("optimized", 1).await;
    assert_eq!(process.count_logged("optimized"), 1, "{}", process.logs());
    let decodes = process
        .events()
        .iter()
        .filter(|e| e["message"] == "pipeline stage" && e["stage"] == "decode")
        .count();
    assert_eq!(decodes, 1, "{}", process.logs());
}
