//! The `watermark.v1.Optimizer` gRPC service: takes an image (from the call,
//! or from Storage by its hash), runs the pipeline on a bounded pool of
//! blocking workers, streams the result (and, for Render, keeps it in
//! Storage).

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt as _, stream};
use nws_runtime::telemetry::{OPTIMIZER, propagation::follows_current};
use nws_watermark::{
    chunk, media,
    options::PIPELINE_VERSION,
    pb::{
        OptimizeHeader, OptimizeRequest, OptimizeResponse, ProbeRequest, ProbeResponse, RenderPriority,
        RenderRequest, RenderResponse, StageTimings, optimize_request, optimize_response,
        optimizer_server::Optimizer, render_response,
    },
    render::{RenderJob, ResultKey, is_sha256_hex},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument as _, field::Empty};

use crate::{
    OptimizeError, OptimizerConfig,
    pipeline::{self, Limits, Options, Output},
    storage::OriginalStore,
};

pub struct OptimizerService {
    limits: Limits,
    /// One permit per worker: at most that many images are decoded at once,
    /// which also bounds the memory they take.
    workers: Arc<Semaphore>,
    /// Calls admitted (uploading, waiting or running) and the most allowed:
    /// past it a call is refused before its upload is read.
    admitted: Arc<AtomicUsize>,
    capacity: usize,
    store: Option<OriginalStore>,
}

/// A call's place in the optimizer; leaving it (however the call ends)
/// frees the place and stops work nobody will read.
struct Admission {
    admitted: Arc<AtomicUsize>,
    cancel: CancellationToken,
    /// A worker taken at admission (background renders only run on one
    /// that is idle then); others take one when their input is in.
    worker: Option<OwnedSemaphorePermit>,
    finished: bool,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let now = self.admitted.fetch_sub(1, Ordering::AcqRel) - 1;
        admitted_gauge().set(now as f64);
        if !self.finished {
            // The call's future was dropped: the client went away or its
            // deadline (grpc-timeout) passed.
            tracing::info!("call cancelled by the client or its deadline; its work stops");
            self.cancel.cancel();
        }
    }
}

impl OptimizerService {
    pub fn new(config: &OptimizerConfig, store: Option<OriginalStore>) -> Self {
        let workers = config.worker_count();
        let queue = config.queue_length();
        tracing::info!(workers, queue, "optimizer worker pool");
        describe_metrics();
        metrics::gauge!("nws_optimizer_workers", "service" => OPTIMIZER.name).set(workers as f64);
        // Counters exist from the start, so a rate over them starts at zero.
        for reason in ["busy", "no_idle_worker"] {
            refused(reason).absolute(0);
        }
        metrics::gauge!("nws_optimizer_call_capacity", "service" => OPTIMIZER.name)
            .set((workers + queue) as f64);
        Self {
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: workers + queue,
            limits: Limits {
                max_input_bytes: config.max_input_bytes,
                max_pixels: config.max_pixels,
                max_side: config.max_side,
            },
            workers: Arc::new(Semaphore::new(workers)),
            store,
        }
    }

    /// Reads the options message, then the image bytes up to the input limit,
    /// refusing non-images as soon as their first bytes arrive.
    async fn receive(
        &self,
        upload: &mut Streaming<OptimizeRequest>,
    ) -> Result<(Options, Bytes), OptimizeError> {
        let (options, declared) = match upload.message().await.map_err(OptimizeError::Upload)? {
            Some(OptimizeRequest {
                payload: Some(optimize_request::Payload::Options(options)),
            }) => {
                let declared = options.input_size;
                (Options::try_from(options)?, declared)
            }
            Some(_) => {
                return Err(OptimizeError::BadStream(
                    "the first message must carry the options",
                ));
            }
            None => return Err(OptimizeError::Empty),
        };
        let mut input = BytesMut::new();
        while let Some(message) = upload.message().await.map_err(OptimizeError::Upload)? {
            let Some(optimize_request::Payload::Chunk(chunk)) = message.payload else {
                return Err(OptimizeError::BadStream(
                    "only the first message may carry options",
                ));
            };
            let total = (input.len() + chunk.len()) as u64;
            if declared != 0 && total > declared {
                return Err(OptimizeError::BadStream(
                    "the upload carries more bytes than its input_size announced",
                ));
            }
            if total > self.limits.max_input_bytes {
                return Err(OptimizeError::TooManyBytes {
                    limit: self.limits.max_input_bytes,
                });
            }
            let had = input.len();
            input.extend_from_slice(&chunk);
            if had < media::SNIFF_LEN && input.len() >= media::SNIFF_LEN && media::sniff(&input).is_none() {
                return Err(OptimizeError::UnsupportedFormat);
            }
        }
        if declared != 0 && input.len() as u64 != declared {
            return Err(OptimizeError::ShortUpload {
                received: input.len() as u64,
                declared,
            });
        }
        Ok((options, input.freeze()))
    }

    /// Takes a place, or refuses the call at once when there is none. A
    /// background call also needs a worker that is idle right now, so it
    /// never waits in line ahead of a caller.
    fn admit(&self, priority: RenderPriority) -> Result<Admission, OptimizeError> {
        let before = self.admitted.fetch_add(1, Ordering::AcqRel);
        let mut admission = Admission {
            admitted: Arc::clone(&self.admitted),
            cancel: CancellationToken::new(),
            worker: None,
            finished: false,
        };
        if before >= self.capacity {
            admission.finished = true;
            refused("busy").increment(1);
            return Err(OptimizeError::Busy { admitted: before });
        }
        admitted_gauge().set((before + 1) as f64);
        tracing::debug!(admitted = before + 1, capacity = self.capacity, "call admitted");
        if priority == RenderPriority::Background {
            match Arc::clone(&self.workers).try_acquire_owned() {
                Ok(worker) => admission.worker = Some(worker),
                Err(_) => {
                    admission.finished = true;
                    refused("no_idle_worker").increment(1);
                    return Err(OptimizeError::NoIdleWorker);
                }
            }
        }
        Ok(admission)
    }

    async fn process(
        &self,
        input: Bytes,
        options: Options,
        cancel: CancellationToken,
        worker: Option<OwnedSemaphorePermit>,
    ) -> Result<Output, OptimizeError> {
        let span = tracing::info_span!(
            "optimize",
            nws.input.bytes = input.len(),
            nws.queue_wait_ms = Empty,
        );
        let waiting = Instant::now();
        let worker = match worker {
            Some(worker) => worker,
            None => {
                let _in_line =
                    Gauge::raise(metrics::gauge!("nws_optimizer_waiting_calls", "service" => OPTIMIZER.name));
                Arc::clone(&self.workers)
                    .acquire_owned()
                    .instrument(span.clone())
                    .await
                    .map_err(|e| OptimizeError::Internal(e.into()))?
            }
        };
        let waited = waiting.elapsed();
        span.record("nws.queue_wait_ms", waited.as_millis() as u64);
        metrics::histogram!("nws_optimizer_queue_wait_seconds", "service" => OPTIMIZER.name).record(waited);
        let limits = self.limits;
        off_the_runtime("pipeline", move || {
            let _worker = worker;
            let _busy =
                Gauge::raise(metrics::gauge!("nws_optimizer_busy_workers", "service" => OPTIMIZER.name));
            // The blocking pool's thread works inside the call's trace.
            span.in_scope(|| pipeline::run(&input, &options, &limits, &cancel))
        })
        .await
    }

    /// Runs `work` as an admitted call: a call dropped half-way (its client
    /// gone, its deadline passed) cancels the work between stages.
    async fn admitted<T>(
        &self,
        priority: RenderPriority,
        work: impl AsyncFnOnce(CancellationToken, Option<OwnedSemaphorePermit>) -> Result<T, OptimizeError>,
    ) -> Result<T, OptimizeError> {
        let mut admission = self.admit(priority)?;
        let cancel = admission.cancel.clone();
        let worker = admission.worker.take();
        let result = work(cancel, worker).await;
        // Reached only if the call was not dropped half-way.
        admission.finished = true;
        if let Err(error @ (OptimizeError::Upload(_) | OptimizeError::ShortUpload { .. })) = &result {
            // An upload reset or cut short is the client going away before
            // the pipeline could start: the same event as a dropped call.
            tracing::info!(%error, "call cancelled by the client: its upload broke off; no work was done");
        }
        result
    }
}

/// Runs codec work on the blocking pool. A codec panic must not take the
/// process down: it becomes this call's INTERNAL error, with the cause in
/// the log.
async fn off_the_runtime<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, OptimizeError> + Send + 'static,
) -> Result<T, OptimizeError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join_error) => Err(OptimizeError::Internal(anyhow::anyhow!(
            "{what} panicked: {}",
            nws_runtime::panic::join_error_message(join_error)
        ))),
    }
}

/// `# HELP` for the optimizer's series.
fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "nws_optimizer_stage_duration_seconds",
        Unit::Seconds,
        "Time in each pipeline stage"
    );
    describe_histogram!("nws_optimizer_input_bytes", Unit::Bytes, "Images read, by format");
    describe_histogram!(
        "nws_optimizer_output_bytes",
        Unit::Bytes,
        "Images made, by format"
    );
    describe_histogram!(
        "nws_optimizer_queue_wait_seconds",
        Unit::Seconds,
        "Time an admitted call waited for a worker"
    );
    describe_gauge!("nws_optimizer_workers", "Images processed at once, at most");
    describe_gauge!("nws_optimizer_busy_workers", "Workers running a pipeline");
    describe_gauge!("nws_optimizer_waiting_calls", "Calls waiting for a worker");
    describe_gauge!(
        "nws_optimizer_admitted_calls",
        "Calls uploading, waiting or running"
    );
    describe_gauge!("nws_optimizer_call_capacity", "Calls admitted at once, at most");
    describe_counter!(
        "nws_optimizer_refused_calls_total",
        "Calls refused at admission, by reason"
    );
}

/// Calls admitted: uploading, waiting for a worker or running.
fn admitted_gauge() -> metrics::Gauge {
    metrics::gauge!("nws_optimizer_admitted_calls", "service" => OPTIMIZER.name)
}

/// The count of calls refused at admission, by why.
fn refused(reason: &'static str) -> metrics::Counter {
    metrics::counter!("nws_optimizer_refused_calls_total", "service" => OPTIMIZER.name, "reason" => reason)
}

/// A gauge raised while this lives.
struct Gauge(metrics::Gauge);

impl Gauge {
    fn raise(gauge: metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

fn micros(duration: std::time::Duration) -> u64 {
    duration.as_micros().try_into().unwrap_or(u64::MAX)
}

/// The result's description, logged once as `optimized`.
fn describe(
    rpc: &'static str,
    input_bytes: usize,
    output: &Output,
    result_key: Option<ResultKey>,
) -> OptimizeHeader {
    let (display_width, display_height) = output.source.display_size();
    tracing::info!(
        rpc,
        input_bytes,
        output_bytes = output.bytes.len(),
        width = output.width,
        height = output.height,
        format = ?output.format,
        ink = ?output.ink,
        decode_us = micros(output.timings.decode),
        resize_us = micros(output.timings.resize),
        watermark_us = micros(output.timings.watermark),
        encode_us = micros(output.timings.encode),
        "optimized"
    );
    let service = ("service", OPTIMIZER.name);
    for (stage, took) in [
        ("decode", output.timings.decode),
        ("resize", output.timings.resize),
        ("watermark", output.timings.watermark),
        ("encode", output.timings.encode),
    ] {
        metrics::histogram!(
            "nws_optimizer_stage_duration_seconds",
            &[service, ("stage", stage)]
        )
        .record(took);
    }
    metrics::histogram!(
        "nws_optimizer_input_bytes",
        &[service, ("format", media::media_type(output.source.format))]
    )
    .record(input_bytes as f64);
    metrics::histogram!(
        "nws_optimizer_output_bytes",
        &[service, ("format", media::media_type(output.format))]
    )
    .record(output.bytes.len() as f64);
    OptimizeHeader {
        format: output.format as i32,
        media_type: media::media_type(output.format).to_owned(),
        width: output.width,
        height: output.height,
        size: output.bytes.len() as u64,
        timings: Some(StageTimings {
            decode_micros: micros(output.timings.decode),
            resize_micros: micros(output.timings.resize),
            watermark_micros: micros(output.timings.watermark),
            encode_micros: micros(output.timings.encode),
        }),
        source_format: output.source.format as i32,
        source_width: display_width,
        source_height: display_height,
        pipeline_version: PIPELINE_VERSION.to_owned(),
        result_key: result_key.map(|key| key.to_string()).unwrap_or_default(),
    }
}

type OptimizeStream = Pin<Box<dyn Stream<Item = Result<OptimizeResponse, Status>> + Send>>;
type RenderStream = Pin<Box<dyn Stream<Item = Result<RenderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Optimizer for OptimizerService {
    type OptimizeStream = OptimizeStream;
    type RenderStream = RenderStream;

    async fn optimize(
        &self,
        request: Request<Streaming<OptimizeRequest>>,
    ) -> Result<Response<Self::OptimizeStream>, Status> {
        let mut upload = request.into_inner();
        let (input_bytes, output) = self
            .admitted(RenderPriority::Interactive, async |cancel, worker| {
                let (options, input) = self.receive(&mut upload).await?;
                let input_bytes = input.len();
                Ok((input_bytes, self.process(input, options, cancel, worker).await?))
            })
            .await?;
        let header = describe("Optimize", input_bytes, &output, None);
        let header = OptimizeResponse {
            payload: Some(optimize_response::Payload::Header(header)),
        };
        let chunks = chunk::split(Bytes::from(output.bytes)).map(|chunk| OptimizeResponse {
            payload: Some(optimize_response::Payload::Chunk(chunk)),
        });
        let messages = std::iter::once(header).chain(chunks).map(Ok);
        Ok(Response::new(Box::pin(stream::iter(messages))))
    }

    async fn render(&self, request: Request<RenderRequest>) -> Result<Response<Self::RenderStream>, Status> {
        let request = request.into_inner();
        let priority = request.priority();
        let store = self.store.clone().ok_or(OptimizeError::NoStorage)?;
        if !is_sha256_hex(&request.original_sha256) {
            return Err(OptimizeError::BadOptions(format!(
                "original_sha256 {:?} is not a SHA-256 (64 lowercase hex characters)",
                request.original_sha256
            ))
            .into());
        }
        let options = Options::try_from(request.options.unwrap_or_default()).map_err(OptimizeError::from)?;
        let job = RenderJob::new(request.original_sha256, options);
        let (input_bytes, output) = self
            .admitted(priority, async |cancel, worker| {
                let input = store
                    .original(job.original_sha256(), self.limits.max_input_bytes)
                    .await?;
                let input_bytes = input.len();
                let output = self.process(input, job.options().clone(), cancel, worker).await?;
                Ok((input_bytes, output))
            })
            .await?;
        let key = job.key();
        let header = describe("Render", input_bytes, &output, Some(key));
        let bytes = Bytes::from(output.bytes);
        // Kept by a task of its own: a caller that stops reading after the
        // bytes does not cut the write short.
        let kept = request.store_result.then(|| {
            let span =
                follows_current(tracing::info_span!(parent: None, "result.keep", nws.result_key = %key));
            // With the caller's token, when Storage checks them.
            tokio::spawn(
                nws_runtime::policy::on_behalf_of_caller(keep(store, key, bytes.clone())).instrument(span),
            )
        });
        let header = RenderResponse {
            payload: Some(render_response::Payload::Header(header)),
        };
        let chunks = chunk::split(bytes).map(|chunk| RenderResponse {
            payload: Some(render_response::Payload::Chunk(chunk)),
        });
        let outcome = stream::iter(kept).filter_map(|kept| async move {
            match kept.await {
                Ok(Ok(())) => None,
                Ok(Err(status)) => Some(Err(status)),
                Err(join_error) => Some(Err(Status::internal(format!(
                    "keeping the result failed: {}",
                    nws_runtime::panic::join_error_message(join_error)
                )))),
            }
        });
        let messages = stream::iter(std::iter::once(header).chain(chunks).map(Ok)).chain(outcome);
        Ok(Response::new(Box::pin(messages)))
    }

    async fn probe(&self, request: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let bytes = request.into_inner().header;
        let header = off_the_runtime("probe", move || pipeline::probe(&bytes)).await?;
        let (display_width, display_height) = header.display_size();
        Ok(Response::new(ProbeResponse {
            format: header.format as i32,
            media_type: media::media_type(header.format).to_owned(),
            width: header.width,
            height: header.height,
            orientation: u32::from(header.orientation.to_exif()),
            display_width,
            display_height,
        }))
    }
}

/// Keeps a rendered result in Storage; a failure is logged here and ends
/// the caller's stream with UNAVAILABLE (the bytes it got are still good).
async fn keep(store: OriginalStore, key: ResultKey, bytes: Bytes) -> Result<(), Status> {
    store.keep_result(key, bytes).await.map_err(|error| {
        tracing::warn!(%key, %error, "could not keep a result in storage");
        Status::unavailable(format!("the result could not be kept in storage: {error}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_codec_panic_becomes_the_calls_internal_error() {
        let error = off_the_runtime::<()>("pipeline", || panic!("decoder bug: index 7 out of range"))
            .await
            .expect_err("the panic is an error");
        let OptimizeError::Internal(cause) = &error else {
            panic!("not INTERNAL: {error:?}");
        };
        // The cause, for the log, names what panicked and why.
        assert_eq!(
            cause.to_string(),
            "pipeline panicked: decoder bug: index 7 out of range"
        );
        let status = Status::from(error);
        assert_eq!(status.code(), tonic::Code::Internal);
        // The caller gets a short message, not the panic's words.
        assert_eq!(status.message(), "the image could not be processed");
        // The pool is still there for the next call.
        let next = off_the_runtime("pipeline", || Ok(7)).await.unwrap();
        assert_eq!(next, 7);
    }
}
