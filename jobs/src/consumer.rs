//! Taking jobs from the work queue: a bounded number at once (the prefetch),
//! each acknowledged only once its result is stored, or once it has been
//! handed on (to a delay queue for another attempt, or to the dead-letter
//! queue) with the broker's confirm. A consumer that dies holding a job
//! leaves it unacknowledged, and the broker gives it to another.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::StreamExt as _;
use lapin::{
    BasicProperties,
    message::Delivery,
    options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::FieldTable,
};
use nws_runtime::telemetry::propagation::continue_trace;
use nws_watermark::{
    pb::StageTimings,
    render::{RenderJob, ResultKey},
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    Broker, JobsConfig,
    message::{self, Failure, Queued},
    status::{Record, State, StatusStore, Timings},
};

/// What renders a job and stores its result.
pub trait Renderer: Send + Sync + 'static {
    /// Renders `job` and keeps the result in Storage; returns the key it
    /// is kept under, with the pipeline's stage times when it rendered it
    /// (none when the result was kept already). Stops early, with any
    /// failure, once `cancel` fires.
    fn render(
        &self,
        job: RenderJob,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<Rendered, Failure>> + Send;
}

/// A job's result, kept.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub key: ResultKey,
    pub stages: Option<StageTimings>,
}

/// Everything a consumer needs.
pub struct Consumer<R> {
    pub broker: Broker,
    pub status: Option<StatusStore>,
    pub renderer: Arc<R>,
    pub config: JobsConfig,
    /// Jobs at once (the prefetch).
    pub concurrency: usize,
    /// The `service` label of its metrics.
    pub service: &'static str,
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        "nws_jobs_total",
        "Job deliveries handled by consumers, by outcome (done, retried, dead, requeued)"
    );
    describe_histogram!(
        "nws_job_wait_seconds",
        Unit::Seconds,
        "Time from a job's first publication to the start of an attempt"
    );
    describe_histogram!(
        "nws_job_attempt_duration_seconds",
        Unit::Seconds,
        "Time of one attempt at a job"
    );
}

impl<R: Renderer> Consumer<R> {
    /// Consumes until `stop`, following the broker through reconnections.
    /// Then it takes no new job, gives those in hand `drain` to finish, and
    /// hands the rest back to the broker (nack, requeue).
    pub async fn run(self, stop: CancellationToken, drain: Duration) {
        describe_metrics();
        let this = Arc::new(self);
        loop {
            let link = tokio::select! {
                () = stop.cancelled() => return,
                link = this.broker.connected() => link,
            };
            match Arc::clone(&this).consume(&link, &stop, drain).await {
                Ok(()) if stop.is_cancelled() => return,
                Ok(()) => {}
                Err(error) => {
                    tracing::warn!(%error, "job consumer stopped; starting again once the broker is back");
                    // Not a hot loop on a channel error while still connected.
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }

    async fn consume(
        self: Arc<Self>,
        link: &crate::Link,
        stop: &CancellationToken,
        drain: Duration,
    ) -> lapin::Result<()> {
        let channel = link.connection.create_channel().await?;
        let prefetch = u16::try_from(self.concurrency.max(1)).unwrap_or(u16::MAX);
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let tag = format!("nws-{}-{}", self.service, std::process::id());
        let mut deliveries = channel
            .basic_consume(
                self.broker.topology().work.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %self.broker.topology().work, prefetch, "consuming jobs");
        let in_hand = CancellationToken::new();
        let mut jobs = JoinSet::new();
        let lost = loop {
            tokio::select! {
                () = stop.cancelled() => break false,
                () = self.broker.lost(link) => break true,
                Some(_) = jobs.join_next(), if !jobs.is_empty() => {}
                delivery = deliveries.next() => match delivery {
                    Some(Ok(delivery)) => {
                        let this = Arc::clone(&self);
                        let cancel = in_hand.child_token();
                        jobs.spawn(async move { this.handle(delivery, cancel).await });
                    }
                    Some(Err(error)) => {
                        in_hand.cancel();
                        return Err(error);
                    }
                    None => break true,
                },
            }
        };
        if lost {
            // Its deliveries go back to the queue with the connection; stop
            // working on them.
            in_hand.cancel();
            jobs.shutdown().await;
            return Ok(());
        }
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
        if !jobs.is_empty() {
            tracing::info!(
                jobs = jobs.len(),
                ?drain,
                "finishing the jobs in hand before stopping"
            );
        }
        let finished = tokio::time::timeout(drain, async { while jobs.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            tracing::warn!(
                jobs = jobs.len(),
                "drain deadline passed: handing the jobs in hand back to the queue"
            );
            in_hand.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while jobs.join_next().await.is_some() {}
            })
            .await;
            if !jobs.is_empty() {
                // Mid-stage (an encode cannot be interrupted): unacknowledged,
                // they go back to the queue as the channel closes.
                tracing::warn!(
                    jobs = jobs.len(),
                    "jobs still running are handed back as the connection closes"
                );
            }
        }
        let _ = channel.close(200, "stopping".into()).await;
        Ok(())
    }

    async fn handle(&self, delivery: Delivery, cancel: CancellationToken) {
        let queued = match message::decode(&delivery.data, &delivery.properties) {
            Ok(queued) => queued,
            Err(reason) => {
                tracing::warn!(%reason, "a message on the work queue is no job: dead-lettered");
                let failure = Failure {
                    code: "INVALID_ARGUMENT".to_owned(),
                    reason: format!("not a job: {reason}"),
                    permanent: true,
                };
                let properties = message::with_failure(delivery.properties.clone(), &failure);
                let dead = self.broker.topology().dead.clone();
                self.hand_on(&delivery, &dead, &delivery.data, properties, "dead")
                    .await;
                return;
            }
        };
        let attempt = queued.attempts + 1;
        let span = tracing::info_span!(
            "job.render",
            nws.job.id = %queued.id,
            nws.job.attempt = attempt,
            nws.job.redelivered = delivery.redelivered,
        );
        continue_trace(&span, &queued.trace);
        self.attempt(delivery, queued, attempt, cancel)
            .instrument(span)
            .await;
    }

    async fn attempt(&self, delivery: Delivery, queued: Queued, attempt: u32, cancel: CancellationToken) {
        let service = ("service", self.service);
        if let Some(queued_at) = queued.queued_at {
            let waited = SystemTime::now().duration_since(queued_at).unwrap_or_default();
            metrics::histogram!("nws_job_wait_seconds", &[service]).record(waited);
        }
        let id = queued.id.to_string();
        self.set_status(Record::new(&id, State::Processing, attempt))
            .await;
        let started = std::time::Instant::now();
        let outcome = self.renderer.render(queued.job.clone(), cancel.clone()).await;
        metrics::histogram!("nws_job_attempt_duration_seconds", &[service]).record(started.elapsed());
        match outcome {
            Ok(Rendered { key, stages }) => {
                let mut done = Record::new(&id, State::Done, attempt);
                done.result_key = Some(key.to_string());
                done.timings = stages.map(|stages| Timings {
                    render_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    decode_us: stages.decode_micros,
                    resize_us: stages.resize_micros,
                    watermark_us: stages.watermark_micros,
                    encode_us: stages.encode_micros,
                });
                self.set_status(done).await;
                match delivery.acker.ack(BasicAckOptions::default()).await {
                    Ok(_) => {
                        tracing::info!(result_key = %key, attempt, "job done");
                        count("done", self.service);
                    }
                    // The result is stored: a redelivery finds it there.
                    Err(error) => {
                        tracing::warn!(%error, "job done, but its ack was lost; it will be redelivered and found done")
                    }
                }
            }
            Err(_) if cancel.is_cancelled() => {
                tracing::info!("job handed back to the queue unfinished (stopping, or the broker went away)");
                self.requeue(&delivery).await;
            }
            Err(failure) => self.failed(delivery, queued, attempt, failure).await,
        }
    }

    /// After a failed attempt: another one after a backoff, or the
    /// dead-letter queue when it can never succeed or has had its attempts.
    async fn failed(&self, delivery: Delivery, queued: Queued, attempt: u32, failure: Failure) {
        let id = queued.id.to_string();
        let queued_at = queued.queued_at.unwrap_or_else(SystemTime::now);
        let retry = (!failure.permanent)
            .then(|| self.broker.topology().retry_queue(attempt))
            .flatten()
            .filter(|_| attempt < self.config.max_attempts)
            .map(str::to_owned);
        let (body, properties) = message::encode(
            &queued.job,
            queued.id,
            attempt,
            queued_at,
            Some(&failure),
            &queued.trace,
        );
        let mut record;
        match retry {
            Some(queue) => {
                let delay = self.config.backoff(attempt + 1);
                let properties = properties.with_expiration(delay.as_millis().to_string().into());
                tracing::warn!(code = %failure.code, reason = %failure.reason, attempt, ?delay, "job attempt failed; retrying after a backoff");
                if !self
                    .hand_on(&delivery, &queue, &body, properties, "retried")
                    .await
                {
                    return;
                }
                record = Record::new(&id, State::Retrying, attempt);
                record.retry_at =
                    Some(humantime::format_rfc3339_millis(SystemTime::now() + delay).to_string());
            }
            None => {
                tracing::error!(code = %failure.code, reason = %failure.reason, attempt, permanent = failure.permanent, "job failed for good: dead-lettered");
                let dead = self.broker.topology().dead.clone();
                if !self.hand_on(&delivery, &dead, &body, properties, "dead").await {
                    return;
                }
                record = Record::new(&id, State::Failed, attempt);
            }
        }
        record.error_code = Some(failure.code);
        record.error = Some(failure.reason);
        self.set_status(record).await;
    }

    /// Publishes the job to `queue` and, once the broker confirmed it,
    /// acknowledges the delivery. When the publish fails the delivery goes
    /// back to the work queue as it was.
    async fn hand_on(
        &self,
        delivery: &Delivery,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
        outcome: &'static str,
    ) -> bool {
        match self.broker.publish(queue, body, properties).await {
            Ok(()) => {
                if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                    tracing::warn!(%error, queue, "job handed on, but its ack was lost: it may run once more");
                }
                count(outcome, self.service);
                true
            }
            Err(error) => {
                tracing::warn!(%error, queue, "could not hand the job on; it goes back to the work queue");
                self.requeue(delivery).await;
                false
            }
        }
    }

    /// Hands the delivery back to the work queue as it was.
    async fn requeue(&self, delivery: &Delivery) {
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        if let Err(error) = delivery.acker.nack(requeue).await {
            tracing::debug!(%error, "nack lost; the broker requeues the job as the channel closes");
        }
        count("requeued", self.service);
    }

    async fn set_status(&self, record: Record) {
        if let Some(status) = &self.status
            && let Err(error) = status.record(&record).await
        {
            tracing::warn!(%error, id = %record.id, state = ?record.state, "could not record a job's status");
        }
    }
}

fn count(outcome: &'static str, service: &'static str) {
    metrics::counter!("nws_jobs_total", "service" => service, "outcome" => outcome).increment(1);
}
