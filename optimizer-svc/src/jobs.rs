//! Durable jobs rendered here: the consumer (`nws_jobs::consumer`) takes
//! them from RabbitMQ, and this renders each on the shared worker pool at
//! QUEUED priority (after every waiting caller), reading the original from
//! Storage and keeping the result there before the job is acknowledged.

use std::sync::Arc;

use nws_jobs::{
    consumer::{Rendered, Renderer},
    message::Failure,
};
use nws_runtime::http::code_name;
use nws_watermark::render::{RenderJob, ResultKey};
use tokio_util::sync::CancellationToken;

use crate::{OptimizeError, service::OptimizerService};

pub(crate) struct QueuedRenders(pub Arc<OptimizerService>);

impl Renderer for QueuedRenders {
    async fn render(&self, job: RenderJob, cancel: CancellationToken) -> Result<Rendered, Failure> {
        // Delivered again after its result was kept (an ack lost, a
        // consumer killed after the write): nothing to do.
        if self.0.result_exists(job.key()).await.map_err(failure)? {
            tracing::info!(result_key = %job.key(), "job already done: its result is in storage");
            return Ok(Rendered {
                key: job.key(),
                stages: None,
            });
        }
        let header = self.0.render_queued(&job, cancel).await.map_err(failure)?;
        Ok(Rendered {
            key: ResultKey::parse(&header.result_key).unwrap_or_else(|| job.key()),
            stages: header.timings,
        })
    }
}

/// A failed attempt as the queue records it: the code, the words a user
/// may read (the details stay in this log), and whether trying again can
/// ever help.
fn failure(error: OptimizeError) -> Failure {
    tracing::warn!(%error, "job attempt failed");
    let permanent = error.is_permanent();
    let status = tonic::Status::from(error);
    Failure {
        code: code_name(status.code()).to_owned(),
        reason: nws_runtime::grpc::status::user_message(&status)
            .unwrap_or_else(|| status.message().to_owned()),
        permanent,
    }
}
