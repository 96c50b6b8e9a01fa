//! The job status store against a real Redis (NWS_TEST_REDIS_URL).

use std::time::Duration;

use nws_jobs::{Record, State, StatusStore};
use nws_runtime::{
    config::SecretUrl,
    testing::{redis_url, unique_queue},
};
use tokio_util::sync::CancellationToken;

fn store() -> StatusStore {
    let prefix = format!("{}:", unique_queue("status"));
    StatusStore::new(
        &SecretUrl::new(redis_url()),
        &prefix,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .unwrap()
}

#[tokio::test]
async fn changes_are_kept_in_order_announced_and_never_go_back_in_time() {
    let store = store();
    let stop = CancellationToken::new();
    let announcements = store.watch(stop.clone());
    let mut announced = announcements.subscribe();
    // The subscription is made in the background: wait until a change
    // published now is heard.
    let id = "ab".repeat(32);
    let probe = "cd".repeat(32);
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            store
                .record(&Record::new(&probe, State::Queued, 0))
                .await
                .unwrap();
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), announced.recv()).await {
                break;
            }
        }
    })
    .await
    .expect("subscribed");
    while announced.try_recv().is_ok() {}

    assert_eq!(
        store.record(&Record::new(&id, State::Queued, 0)).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        store
            .record(&Record::new(&id, State::Processing, 1))
            .await
            .unwrap(),
        Some(2)
    );
    // A publisher's late `queued` does not undo a running job.
    assert_eq!(
        store.record(&Record::new(&id, State::Queued, 0)).await.unwrap(),
        None
    );
    let mut done = Record::new(&id, State::Done, 1);
    done.result_key = Some(id.clone());
    assert_eq!(store.record(&done).await.unwrap(), Some(3));
    // Nothing follows done.
    assert_eq!(
        store
            .record(&Record::new(&id, State::Processing, 2))
            .await
            .unwrap(),
        None
    );

    let latest = store.get(&id).await.unwrap().unwrap();
    assert_eq!((latest.state, latest.seq), (State::Done, 3));
    let after_first: Vec<(State, u64)> = store
        .changes_after(&id, 1)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.state, r.seq))
        .collect();
    assert_eq!(after_first, [(State::Processing, 2), (State::Done, 3)]);
    let mut heard = Vec::new();
    while heard.len() < 3 {
        let record = tokio::time::timeout(Duration::from_secs(5), announced.recv())
            .await
            .unwrap()
            .unwrap();
        if record.id == id {
            heard.push((record.state, record.seq));
        }
    }
    assert_eq!(
        heard,
        [(State::Queued, 1), (State::Processing, 2), (State::Done, 3)]
    );
    assert_eq!(store.get(&"ef".repeat(32)).await.unwrap(), None);
    stop.cancel();
}

#[tokio::test]
async fn a_failed_job_can_be_queued_again() {
    let store = store();
    let id = "12".repeat(32);
    store.record(&Record::new(&id, State::Failed, 3)).await.unwrap();
    assert!(
        store
            .record(&Record::new(&id, State::Queued, 0))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.get(&id).await.unwrap().unwrap().state, State::Queued);
}
