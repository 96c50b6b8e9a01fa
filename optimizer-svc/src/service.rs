//! The `watermark.v1.Optimizer` gRPC service: collects the upload, runs the
//! pipeline on a bounded pool of blocking workers, streams the result.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, stream};
use nws_watermark::{
    chunk, media,
    pb::{
        OptimizeHeader, OptimizeRequest, OptimizeResponse, ProbeRequest, ProbeResponse, StageTimings,
        optimize_request, optimize_response, optimizer_server::Optimizer,
    },
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    OptimizeError, OptimizerConfig,
    pipeline::{self, Limits, Options, Output},
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
}

/// A call's place in the optimizer; leaving it (however the call ends)
/// frees the place and stops work nobody will read.
struct Admission {
    admitted: Arc<AtomicUsize>,
    cancel: CancellationToken,
    finished: bool,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
        if !self.finished {
            // The call's future was dropped: the client went away or its
            // deadline (grpc-timeout) passed.
            tracing::info!("call cancelled by the client or its deadline; its work stops");
            self.cancel.cancel();
        }
    }
}

impl OptimizerService {
    pub fn new(config: &OptimizerConfig) -> Self {
        let workers = config.worker_count();
        let queue = config.queue_length();
        tracing::info!(workers, queue, "optimizer worker pool");
        Self {
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: workers + queue,
            limits: Limits {
                max_input_bytes: config.max_input_bytes,
                max_pixels: config.max_pixels,
                max_side: config.max_side,
            },
            workers: Arc::new(Semaphore::new(workers)),
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

    /// Takes a place, or refuses the call at once when there is none.
    fn admit(&self) -> Result<Admission, OptimizeError> {
        let before = self.admitted.fetch_add(1, Ordering::AcqRel);
        let admission = Admission {
            admitted: Arc::clone(&self.admitted),
            cancel: CancellationToken::new(),
            finished: false,
        };
        if before >= self.capacity {
            let mut refused = admission;
            refused.finished = true;
            return Err(OptimizeError::Busy { admitted: before });
        }
        Ok(admission)
    }

    async fn process(
        &self,
        input: Bytes,
        options: Options,
        cancel: CancellationToken,
    ) -> Result<Output, OptimizeError> {
        let permit = Arc::clone(&self.workers)
            .acquire_owned()
            .await
            .map_err(|e| OptimizeError::Internal(e.into()))?;
        let limits = self.limits;
        let job = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            pipeline::run(&input, &options, &limits, &cancel)
        });
        match job.await {
            Ok(result) => result,
            // A codec panic must not take the process down: it becomes this
            // call's INTERNAL error, with the cause in the log.
            Err(join_error) => Err(OptimizeError::Internal(anyhow::anyhow!(
                "pipeline panicked: {}",
                panic_message(join_error)
            ))),
        }
    }
}

fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned()),
        Err(error) => error.to_string(),
    }
}

fn micros(duration: std::time::Duration) -> u64 {
    duration.as_micros().try_into().unwrap_or(u64::MAX)
}

type OptimizeStream = Pin<Box<dyn Stream<Item = Result<OptimizeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Optimizer for OptimizerService {
    type OptimizeStream = OptimizeStream;

    async fn optimize(
        &self,
        request: Request<Streaming<OptimizeRequest>>,
    ) -> Result<Response<Self::OptimizeStream>, Status> {
        let mut admission = self.admit()?;
        let cancel = admission.cancel.clone();
        let work = async {
            let mut upload = request.into_inner();
            let (options, input) = self.receive(&mut upload).await?;
            let input_bytes = input.len();
            Ok::<_, OptimizeError>((input_bytes, self.process(input, options, cancel).await?))
        };
        // Reached only if the call was not dropped half-way.
        let result = work.await;
        admission.finished = true;
        if let Err(error @ (OptimizeError::Upload(_) | OptimizeError::ShortUpload { .. })) = &result {
            // An upload reset or cut short is the client going away before
            // the pipeline could start: the same event as a dropped call.
            tracing::info!(%error, "call cancelled by the client: its upload broke off; no work was done");
        }
        let (input_bytes, output) = result?;
        let (display_width, display_height) = output.source.display_size();
        tracing::info!(
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
        let header = OptimizeHeader {
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
            pipeline_version: nws_watermark::options::PIPELINE_VERSION.to_owned(),
        };
        let header = OptimizeResponse {
            payload: Some(optimize_response::Payload::Header(header)),
        };
        let chunks = chunk::split(Bytes::from(output.bytes)).map(|chunk| OptimizeResponse {
            payload: Some(optimize_response::Payload::Chunk(chunk)),
        });
        let messages = std::iter::once(header).chain(chunks).map(Ok);
        Ok(Response::new(Box::pin(stream::iter(messages))))
    }

    async fn probe(&self, request: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        let bytes = request.into_inner().header;
        let header = tokio::task::spawn_blocking(move || pipeline::probe(&bytes))
            .await
            .map_err(|e| {
                OptimizeError::Internal(anyhow::anyhow!("probe panicked: {}", panic_message(e)))
            })??;
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
