//! The `watermark.v1.Optimizer` gRPC service: takes an image (from the call,
//! or from Storage by its hash), runs the pipeline on a bounded pool of
//! blocking workers, streams the result (and, for Render, keeps it in
//! Storage). The job consumer renders queued jobs through the same pool
//! ([`OptimizerService::render_queued`]).
//!
//! # Who gets a worker
//!
//! Every call shares one pool (NWS_OPTIMIZER_WORKERS), by priority:
//!
//! - **interactive** (Optimize; Render UNSPECIFIED or INTERACTIVE): a
//!   caller waits. The call is admitted while its expected start (the
//!   interactive calls ahead of it, uploading or reading their original or
//!   waiting for a worker, ÷ workers × the measured time a call holds a
//!   worker) is within NWS_QUEUE_WAIT, and refused at once otherwise with
//!   RESOURCE_EXHAUSTED, a `RetryInfo` (when the line will have room) and
//!   a `LocalizedMessage`. Admitted, it takes a worker first come, first
//!   served.
//! - **background** (Render BACKGROUND): only on a worker idle at
//!   admission; refused otherwise.
//! - **queued** (durable jobs; Render QUEUED): never refused by the time
//!   bound (the job consumer's prefetch bounds them). It waits for a worker
//!   as long as it takes, but takes one only while no interactive call is
//!   waiting for one. So queued work delays a waiting caller by at most the
//!   jobs already running when it came (one per worker), never by a line
//!   of them.
//!
//! Every priority counts toward the memory bound, NWS_OPTIMIZER_WORKERS +
//! NWS_OPTIMIZER_QUEUE calls admitted at once (each holds its input bytes).

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
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
use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument as _, field::Empty};

use crate::{
    OptimizeError, OptimizerConfig,
    mark_images::MarkImages,
    pipeline::{self, Limits, Options, Output},
    storage::OriginalStore,
};

/// The time a call is taken to hold a worker until one is measured.
const SEED_SERVICE_TIME: Duration = Duration::from_millis(200);

/// The weight of the latest call in the mean service time: about the last
/// ten calls count.
const LATEST_WEIGHT: f64 = 0.2;

/// The shortest retry delay a refusal gives: sooner would only be refused
/// again.
const MIN_RETRY: Duration = Duration::from_millis(100);

pub struct OptimizerService {
    limits: Limits,
    line: Arc<Line>,
    store: Option<OriginalStore>,
    marks: MarkImages,
}

/// How a call takes a worker; the module's doc states the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    Interactive,
    Background,
    Queued,
}

impl From<RenderPriority> for Priority {
    fn from(priority: RenderPriority) -> Self {
        match priority {
            RenderPriority::Unspecified | RenderPriority::Interactive => Self::Interactive,
            RenderPriority::Background => Self::Background,
            RenderPriority::Queued => Self::Queued,
        }
    }
}

impl Priority {
    fn name(self) -> &'static str {
        match self {
            Self::Interactive => "interactive",
            Self::Background => "background",
            Self::Queued => "queued",
        }
    }
}

/// The mean time a call holds a worker, weighted toward the latest calls;
/// the seed until the first is measured.
#[derive(Debug, Clone, Copy)]
struct ServiceTime {
    mean: Duration,
    measured: bool,
}

impl ServiceTime {
    const fn seed() -> Self {
        Self {
            mean: SEED_SERVICE_TIME,
            measured: false,
        }
    }

    fn record(&mut self, held: Duration) {
        self.mean = if self.measured {
            self.mean.mul_f64(1.0 - LATEST_WEIGHT) + held.mul_f64(LATEST_WEIGHT)
        } else {
            held
        };
        self.measured = true;
    }

    /// The mean, never zero: the line's arithmetic divides by it.
    fn mean(&self) -> Duration {
        self.mean.max(Duration::from_micros(1))
    }
}

/// The pool's workers, taken by priority: interactive calls first come,
/// first served; a queued call only while no interactive call is waiting
/// for a worker; a background call only a worker idle right now.
///
/// The rule rests on two facts: a queued call never waits inside the
/// semaphore (only `try_acquire`, so it never holds a place in its line),
/// and a worker freed while interactive calls wait goes to the first of
/// them (the semaphore hands it over), so a queued call cannot take it.
struct Workers {
    permits: Arc<Semaphore>,
    count: usize,
    shared: Arc<WorkersShared>,
}

struct WorkersShared {
    /// Interactive calls waiting for a worker right now.
    interactive_waiting: AtomicUsize,
    /// Woken when a worker is freed, and when no interactive call waits
    /// any more: what a waiting queued call waits for.
    changed: Notify,
    service_time: Mutex<ServiceTime>,
}

/// A worker held, until dropped.
struct Worker {
    permit: Option<OwnedSemaphorePermit>,
    shared: Arc<WorkersShared>,
}

impl Worker {
    /// Counts `took`, the time a call's pipeline held this worker, into
    /// the mean service time.
    fn record(&self, took: Duration) {
        let mean = {
            let mut service_time = lock(&self.shared.service_time);
            service_time.record(took);
            service_time.mean()
        };
        service_time_gauge().set(mean.as_secs_f64());
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Freed first, then announced: a queued call woken now finds it.
        drop(self.permit.take());
        self.shared.changed.notify_waiters();
    }
}

/// An interactive call counted as waiting while this lives.
struct InteractiveWaiting<'a>(&'a WorkersShared);

impl<'a> InteractiveWaiting<'a> {
    fn enter(shared: &'a WorkersShared) -> Self {
        shared.interactive_waiting.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for InteractiveWaiting<'_> {
    fn drop(&mut self) {
        if self.0.interactive_waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

impl Workers {
    fn new(count: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(count)),
            count,
            shared: Arc::new(WorkersShared {
                interactive_waiting: AtomicUsize::new(0),
                changed: Notify::new(),
                service_time: Mutex::new(ServiceTime::seed()),
            }),
        }
    }

    fn worker(&self, permit: OwnedSemaphorePermit) -> Worker {
        Worker {
            permit: Some(permit),
            shared: Arc::clone(&self.shared),
        }
    }

    /// The mean time a call holds a worker.
    fn service_time(&self) -> Duration {
        lock(&self.shared.service_time).mean()
    }

    /// A worker for an interactive call: in line, first come, first served.
    async fn interactive(&self) -> Worker {
        let _waiting = InteractiveWaiting::enter(&self.shared);
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .expect("the workers' semaphore is never closed");
        self.worker(permit)
    }

    /// A worker for a queued call: as long as it takes, but only while no
    /// interactive call is waiting for one.
    async fn queued(&self) -> Worker {
        loop {
            // Registered before the check, so no change between the check
            // and the wait is missed.
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.shared.interactive_waiting.load(Ordering::SeqCst) == 0
                && let Some(worker) = self.idle()
            {
                return worker;
            }
            changed.await;
        }
    }

    /// A worker right now, if `priority` may take one without waiting.
    fn at_once(&self, priority: Priority) -> Option<Worker> {
        match priority {
            Priority::Queued if self.shared.interactive_waiting.load(Ordering::SeqCst) > 0 => None,
            // An interactive call finds a worker idle only when no other
            // waits: the semaphore hands freed workers to the waiting.
            _ => self.idle(),
        }
    }

    /// A worker idle right now, if any.
    fn idle(&self) -> Option<Worker> {
        let permit = Arc::clone(&self.permits).try_acquire_owned().ok()?;
        Some(self.worker(permit))
    }
}

/// When a call arriving behind `ahead` others would start: they drain at
/// `workers` calls per `service_time`.
fn expected_start(ahead: usize, service_time: Duration, workers: usize) -> Duration {
    let nanos = service_time.as_nanos() * ahead as u128 / workers.max(1) as u128;
    Duration::from_nanos(nanos.try_into().unwrap_or(u64::MAX))
}

/// How long until a line of `ahead` calls has drained enough for one more
/// to start within `limit`: the calls past the most that fit drain first.
fn retry_after(ahead: usize, service_time: Duration, workers: usize, limit: Duration) -> Duration {
    let fit = limit.as_nanos() * workers.max(1) as u128 / service_time.as_nanos().max(1);
    let over = (ahead as u128).saturating_sub(fit).max(1);
    expected_start(over.try_into().unwrap_or(usize::MAX), service_time, workers).max(MIN_RETRY)
}

/// The admission side of the pool: who is admitted, and how many are ahead.
struct Line {
    workers: Workers,
    /// NWS_QUEUE_WAIT.
    queue_wait: Duration,
    /// NWS_OPTIMIZER_WORKERS + NWS_OPTIMIZER_QUEUE.
    ceiling: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Calls admitted, of every priority: uploading, waiting or running.
    admitted: usize,
    /// Interactive calls admitted that hold no worker yet: the line a new
    /// interactive call would stand behind.
    ahead: usize,
}

impl Line {
    fn new(workers: usize, queue_wait: Duration, ceiling: usize) -> Self {
        Self {
            workers: Workers::new(workers),
            queue_wait,
            ceiling,
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Admits a call or refuses it at once, by the rule in the module's doc.
    /// `cancel` stops the call's work between stages.
    fn admit(
        self: &Arc<Self>,
        priority: Priority,
        cancel: CancellationToken,
    ) -> Result<Ticket, OptimizeError> {
        let mut counts = lock(&self.counts);
        let service_time = self.workers.service_time();
        let refuse = |reason: &'static str, error: OptimizeError| {
            refused(reason).increment(1);
            tracing::debug!(priority = priority.name(), reason, %error, "call refused at admission");
            Err(error)
        };
        if counts.admitted >= self.ceiling {
            let retry_after = expected_start(1, service_time, self.workers.count).max(MIN_RETRY);
            return refuse(
                "busy",
                OptimizeError::Busy {
                    admitted: counts.admitted,
                    retry_after,
                },
            );
        }
        let mut worker = None;
        match priority {
            Priority::Interactive => {
                let expected = expected_start(counts.ahead, service_time, self.workers.count);
                if expected > self.queue_wait {
                    let retry_after =
                        retry_after(counts.ahead, service_time, self.workers.count, self.queue_wait);
                    return refuse(
                        "queue_wait",
                        OptimizeError::LineTooLong {
                            expected,
                            limit: self.queue_wait,
                            retry_after,
                        },
                    );
                }
                counts.ahead += 1;
            }
            Priority::Background => match self.workers.idle() {
                Some(idle) => worker = Some(idle),
                None => return refuse("no_idle_worker", OptimizeError::NoIdleWorker),
            },
            Priority::Queued => {}
        }
        counts.admitted += 1;
        tracing::debug!(
            priority = priority.name(),
            admitted = counts.admitted,
            ahead = counts.ahead,
            "call admitted"
        );
        self.publish(&counts, service_time);
        Ok(Ticket {
            line: Arc::clone(self),
            priority,
            in_line: priority == Priority::Interactive,
            worker,
            cancel,
            finished: false,
        })
    }

    fn publish(&self, counts: &Counts, service_time: Duration) {
        admitted_gauge().set(counts.admitted as f64);
        metrics::gauge!("nws_optimizer_expected_wait_seconds", "service" => OPTIMIZER.name)
            .set(expected_start(counts.ahead, service_time, self.workers.count).as_secs_f64());
    }

    fn update(&self, change: impl FnOnce(&mut Counts)) {
        let mut counts = lock(&self.counts);
        change(&mut counts);
        self.publish(&counts, self.workers.service_time());
    }
}

/// A call's place in the optimizer; leaving it (however the call ends)
/// frees the place and stops work nobody will read.
struct Ticket {
    line: Arc<Line>,
    priority: Priority,
    /// Counted among the calls ahead of a newcomer: an interactive call
    /// until it holds a worker.
    in_line: bool,
    /// A worker taken at admission (background renders only run on one
    /// that is idle then); others take one when their input is in.
    worker: Option<Worker>,
    cancel: CancellationToken,
    finished: bool,
}

impl Ticket {
    /// Waits for a worker by the call's priority, or until the call is
    /// cancelled.
    async fn worker(&mut self) -> Result<Worker, OptimizeError> {
        if let Some(worker) = self.worker.take() {
            return Ok(worker);
        }
        let workers = &self.line.workers;
        let worker = if let Some(worker) = workers.at_once(self.priority) {
            worker
        } else {
            let _waiting =
                Gauge::raise(metrics::gauge!("nws_optimizer_waiting_calls", "service" => OPTIMIZER.name));
            tracing::debug!(priority = self.priority.name(), "waiting for a worker");
            let wait = async {
                match self.priority {
                    Priority::Queued => workers.queued().await,
                    Priority::Interactive | Priority::Background => workers.interactive().await,
                }
            };
            tokio::select! {
                worker = wait => worker,
                () = self.cancel.cancelled() => return Err(OptimizeError::Cancelled { stage: "decode" }),
            }
        };
        tracing::debug!(priority = self.priority.name(), "worker taken");
        self.leave_line();
        Ok(worker)
    }

    /// Runs `work` (a read from Storage, say) unless the call is cancelled
    /// first.
    async fn unless_cancelled<T>(
        &self,
        stage: &'static str,
        work: impl Future<Output = Result<T, OptimizeError>>,
    ) -> Result<T, OptimizeError> {
        tokio::select! {
            result = work => result,
            () = self.cancel.cancelled() => Err(OptimizeError::Cancelled { stage }),
        }
    }

    fn leave_line(&mut self) {
        if std::mem::take(&mut self.in_line) {
            self.line.update(|counts| counts.ahead -= 1);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let in_line = std::mem::take(&mut self.in_line);
        self.line.update(|counts| {
            counts.admitted -= 1;
            if in_line {
                counts.ahead -= 1;
            }
        });
        if !self.finished {
            // The call's future was dropped: the client went away or its
            // deadline (grpc-timeout) passed.
            tracing::info!("call cancelled by the client or its deadline; its work stops");
            self.cancel.cancel();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned one still holds
    // good counts.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl OptimizerService {
    pub fn new(config: &OptimizerConfig, store: Option<OriginalStore>) -> Self {
        let workers = config.worker_count();
        let ceiling = config.call_ceiling();
        tracing::info!(
            workers,
            queue_wait = ?config.queue_wait,
            ceiling,
            "optimizer worker pool"
        );
        describe_metrics();
        metrics::gauge!("nws_optimizer_workers", "service" => OPTIMIZER.name).set(workers as f64);
        // Counters exist from the start, so a rate over them starts at zero.
        for reason in ["queue_wait", "busy", "no_idle_worker"] {
            refused(reason).absolute(0);
        }
        metrics::gauge!("nws_optimizer_call_capacity", "service" => OPTIMIZER.name).set(ceiling as f64);
        metrics::gauge!("nws_optimizer_queue_wait_limit_seconds", "service" => OPTIMIZER.name)
            .set(config.queue_wait.as_secs_f64());
        metrics::gauge!("nws_optimizer_expected_wait_seconds", "service" => OPTIMIZER.name).set(0.0);
        // Gauges moved by increments exist from the start, at zero, so a
        // dashboard finds them before the first call waits or runs.
        for gauge in ["nws_optimizer_waiting_calls", "nws_optimizer_busy_workers"] {
            metrics::gauge!(gauge, "service" => OPTIMIZER.name).set(0.0);
        }
        service_time_gauge().set(SEED_SERVICE_TIME.as_secs_f64());
        Self {
            limits: Limits {
                max_input_bytes: config.max_input_bytes,
                max_pixels: config.max_pixels,
                max_side: config.max_side,
                max_animation_pixels: config.max_animation_pixels,
            },
            line: Arc::new(Line::new(workers, config.queue_wait, ceiling)),
            marks: MarkImages::new(store.clone()),
            store,
        }
    }

    /// Renders a durable job taken from the queue: reads the original from
    /// Storage, runs the pipeline at the queued priority (it waits for a
    /// worker as long as it takes, yielding to every waiting caller), and
    /// keeps the result in Storage, returning once it is kept: the job may
    /// be acknowledged then. `cancel` stops the work between stages, as a
    /// dropped call does; a write to Storage already started finishes.
    pub(crate) async fn render_queued(
        &self,
        job: &RenderJob,
        cancel: CancellationToken,
    ) -> Result<OptimizeHeader, OptimizeError> {
        let store = self.store.as_ref().ok_or(OptimizeError::NoStorage)?;
        let key = job.key();
        let (input_bytes, output) = self
            .admitted(Priority::Queued, cancel.child_token(), async |ticket| {
                let read = store.original(job.original_sha256(), self.limits.max_input_bytes);
                let input = ticket.unless_cancelled("decode", read).await?;
                let input_bytes = input.len();
                let output = self.process(input, job.options().clone(), ticket).await?;
                Ok((input_bytes, output))
            })
            .await?;
        let header = describe("job", input_bytes, &output, Some(key));
        if cancel.is_cancelled() {
            return Err(OptimizeError::Cancelled { stage: "keep" });
        }
        store
            .keep_result(key, Bytes::from(output.bytes))
            .instrument(tracing::info_span!("result.keep", nws.result_key = %key))
            .await?;
        Ok(header)
    }

    /// Whether Storage keeps a result under `key` already: a job delivered
    /// again after its result was kept need not be rendered twice.
    pub(crate) async fn result_exists(&self, key: ResultKey) -> Result<bool, OptimizeError> {
        let store = self.store.as_ref().ok_or(OptimizeError::NoStorage)?;
        store.has_result(key).await
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

    async fn process(
        &self,
        input: Bytes,
        options: Options,
        ticket: &mut Ticket,
    ) -> Result<Output, OptimizeError> {
        let span = tracing::info_span!(
            "optimize",
            nws.input.bytes = input.len(),
            nws.priority = ticket.priority.name(),
            nws.queue_wait_ms = Empty,
        );
        // The mark's image before a worker: a bad one is refused without
        // taking a worker's time, and a worker never waits on Storage.
        let mark_image = match &options.image_sha256 {
            Some(sha256) => Some(
                ticket
                    .unless_cancelled("watermark", self.marks.get(sha256))
                    .instrument(span.clone())
                    .await?,
            ),
            None => None,
        };
        let waiting = Instant::now();
        let worker = ticket.worker().instrument(span.clone()).await?;
        let waited = waiting.elapsed();
        span.record("nws.queue_wait_ms", waited.as_millis() as u64);
        metrics::histogram!("nws_optimizer_queue_wait_seconds", "service" => OPTIMIZER.name).record(waited);
        let limits = self.limits;
        let cancel = ticket.cancel.clone();
        off_the_runtime("pipeline", move || {
            let _busy =
                Gauge::raise(metrics::gauge!("nws_optimizer_busy_workers", "service" => OPTIMIZER.name));
            let started = Instant::now();
            // The blocking pool's thread works inside the call's trace.
            let output =
                span.in_scope(|| pipeline::run(&input, &options, mark_image.as_deref(), &limits, &cancel));
            // A cancelled run says nothing of how long a call takes.
            if !matches!(output, Err(OptimizeError::Cancelled { .. })) {
                worker.record(started.elapsed());
            }
            output
        })
        .await
    }

    /// Runs `work` as an admitted call: a call dropped half-way (its client
    /// gone, its deadline passed) cancels the work between stages, and so
    /// does `cancel`.
    async fn admitted<T>(
        &self,
        priority: Priority,
        cancel: CancellationToken,
        work: impl AsyncFnOnce(&mut Ticket) -> Result<T, OptimizeError>,
    ) -> Result<T, OptimizeError> {
        let mut ticket = self.line.admit(priority, cancel)?;
        let result = work(&mut ticket).await;
        // Reached only if the call was not dropped half-way.
        ticket.finished = true;
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
    describe_gauge!(
        "nws_optimizer_call_capacity",
        "Calls admitted at once, at most (NWS_OPTIMIZER_WORKERS + NWS_OPTIMIZER_QUEUE)"
    );
    describe_gauge!(
        "nws_optimizer_expected_wait_seconds",
        Unit::Seconds,
        "Expected wait for a worker of a call for a waiting caller admitted now"
    );
    describe_gauge!(
        "nws_optimizer_queue_wait_limit_seconds",
        Unit::Seconds,
        "Longest expected wait a call for a waiting caller is admitted with (NWS_QUEUE_WAIT)"
    );
    describe_gauge!(
        "nws_optimizer_service_time_seconds",
        Unit::Seconds,
        "Mean time a call holds a worker, weighted toward the latest calls"
    );
    describe_counter!(
        "nws_optimizer_refused_calls_total",
        "Calls refused at admission, by reason: queue_wait (expected wait over NWS_QUEUE_WAIT), \
         busy (NWS_OPTIMIZER_WORKERS + NWS_OPTIMIZER_QUEUE calls admitted), no_idle_worker (background)"
    );
}

/// The mean time a call holds a worker.
fn service_time_gauge() -> metrics::Gauge {
    metrics::gauge!("nws_optimizer_service_time_seconds", "service" => OPTIMIZER.name)
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
        result_key = result_key.as_ref().map(tracing::field::display),
        input_bytes,
        output_bytes = output.bytes.len(),
        width = output.width,
        height = output.height,
        format = ?output.format,
        frames = output.frames,
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
        frames: output.frames,
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
            .admitted(Priority::Interactive, CancellationToken::new(), async |ticket| {
                let (options, input) = self.receive(&mut upload).await?;
                let input_bytes = input.len();
                Ok((input_bytes, self.process(input, options, ticket).await?))
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
        let priority = Priority::from(request.priority());
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
            .admitted(priority, CancellationToken::new(), async |ticket| {
                let input = store
                    .original(job.original_sha256(), self.limits.max_input_bytes)
                    .await?;
                let input_bytes = input.len();
                let output = self.process(input, job.options().clone(), ticket).await?;
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

/// Keeps a rendered result in Storage; a failure is logged (in the
/// `result.keep` span, with the key) and ends the caller's stream with
/// UNAVAILABLE (the bytes it got are still good).
async fn keep(store: OriginalStore, key: ResultKey, bytes: Bytes) -> Result<(), Status> {
    store.keep_result(key, bytes).await.map_err(Status::from)
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

/// The priority rule and the time bound, on tokio's paused clock: nothing
/// here waits for real time, and every duration is exact.
#[cfg(test)]
mod pool_tests {
    use super::*;

    /// Lets every other task run until all of them wait.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    fn spawn_interactive(workers: &Arc<Workers>) -> tokio::task::JoinHandle<Worker> {
        let workers = Arc::clone(workers);
        tokio::spawn(async move { workers.interactive().await })
    }

    fn spawn_queued(workers: &Arc<Workers>) -> tokio::task::JoinHandle<Worker> {
        let workers = Arc::clone(workers);
        tokio::spawn(async move { workers.queued().await })
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_call_does_not_get_a_worker_while_an_interactive_call_waits() {
        let workers = Arc::new(Workers::new(1));
        let running = workers.interactive().await;
        // The job started waiting first, the caller second...
        let job = spawn_queued(&workers);
        settle().await;
        let caller = spawn_interactive(&workers);
        settle().await;
        assert_eq!(workers.shared.interactive_waiting.load(Ordering::SeqCst), 1);

        // ...yet the freed worker goes to the caller.
        drop(running);
        let callers = caller.await.unwrap();
        settle().await;
        assert!(!job.is_finished(), "the job waits while the caller runs");

        // Nobody waits now: the job takes the next worker freed.
        drop(callers);
        let _jobs = job.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_call_gets_a_worker_when_no_interactive_call_waits() {
        let workers = Arc::new(Workers::new(2));
        let _running = workers.interactive().await;
        // An idle worker: taken at once.
        let first = spawn_queued(&workers);
        let first = first.await.unwrap();
        // None idle: the job waits for one, however long that is.
        let second = spawn_queued(&workers);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!second.is_finished());
        drop(first);
        let _second = second.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_stops_waiting_lets_the_queued_call_through() {
        let workers = Arc::new(Workers::new(1));
        let running = workers.interactive().await;
        let job = spawn_queued(&workers);
        let caller = spawn_interactive(&workers);
        settle().await;
        // The caller leaves (its client went away) before a worker is free.
        caller.abort();
        let Err(left) = caller.await else {
            panic!("the caller got a worker")
        };
        assert!(left.is_cancelled());
        assert_eq!(workers.shared.interactive_waiting.load(Ordering::SeqCst), 0);
        assert!(!job.is_finished());
        drop(running);
        let _jobs = job.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn interactive_calls_take_workers_first_come_first_served() {
        let workers = Arc::new(Workers::new(1));
        let running = workers.interactive().await;
        let first = spawn_interactive(&workers);
        settle().await;
        let second = spawn_interactive(&workers);
        settle().await;
        drop(running);
        let firsts = first.await.unwrap();
        settle().await;
        assert!(!second.is_finished());
        drop(firsts);
        let _seconds = second.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_background_call_takes_only_an_idle_worker() {
        let workers = Workers::new(1);
        let idle = workers.idle().expect("the worker is idle");
        assert!(workers.idle().is_none(), "no worker is idle now");
        drop(idle);
        assert!(workers.idle().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn the_service_time_is_the_seed_until_measured_then_follows_the_latest_calls() {
        let workers = Workers::new(1);
        assert_eq!(
            workers.service_time(),
            SEED_SERVICE_TIME,
            "the seed, until measured"
        );
        let worker = workers.interactive().await;
        // The first measurement replaces the seed...
        worker.record(Duration::from_millis(300));
        assert_eq!(workers.service_time(), Duration::from_millis(300));
        // ...the next ones move the mean a fifth of the way.
        worker.record(Duration::from_millis(800));
        let mean = workers.service_time();
        assert!(
            mean.abs_diff(Duration::from_millis(400)) < Duration::from_micros(1),
            "{mean:?}"
        );
    }

    #[test]
    fn the_expected_start_and_the_retry_delay_follow_the_line() {
        let ms = Duration::from_millis;
        // Four calls ahead, two workers, 300 ms each: the fifth starts in 600 ms.
        assert_eq!(expected_start(4, ms(300), 2), ms(600));
        assert_eq!(expected_start(0, ms(300), 2), Duration::ZERO);
        // With a 500 ms limit three calls fit ahead (450 ms): of nine ahead,
        // six must start first, three per worker, 900 ms.
        assert_eq!(retry_after(9, ms(300), 2, ms(500)), ms(900));
        // One over: 150 ms.
        assert_eq!(retry_after(4, ms(300), 2, ms(500)), ms(150));
        // Never sooner than MIN_RETRY.
        assert_eq!(retry_after(4, ms(10), 1, ms(35)), MIN_RETRY);
    }

    fn line(workers: usize, queue_wait: Duration, ceiling: usize) -> Arc<Line> {
        Arc::new(Line::new(workers, queue_wait, ceiling))
    }

    fn admit(line: &Arc<Line>, priority: Priority) -> Result<Ticket, OptimizeError> {
        line.admit(priority, CancellationToken::new()).map(|mut ticket| {
            // Dropped by the test, not by a client going away.
            ticket.finished = true;
            ticket
        })
    }

    #[tokio::test(start_paused = true)]
    async fn callers_are_admitted_while_their_expected_start_is_within_the_limit() {
        // One worker, 200 ms a call (the seed), 500 ms of waiting allowed.
        let line = line(1, Duration::from_millis(500), 100);
        // Expected starts 0, 200 and 400 ms: admitted.
        let mut tickets: Vec<_> = (0..3)
            .map(|_| admit(&line, Priority::Interactive).expect("admitted"))
            .collect();
        // 600 ms: refused, and told to come back when one call has started.
        let refused = admit(&line, Priority::Interactive).err().expect("refused");
        let OptimizeError::LineTooLong {
            expected,
            retry_after,
            ..
        } = refused
        else {
            panic!("{refused:?}");
        };
        assert_eq!(expected, Duration::from_millis(600));
        assert_eq!(retry_after, Duration::from_millis(200));
        // A queued job is not bound by the wait.
        let _job = admit(&line, Priority::Queued).expect("a queued job is admitted");

        // Once a call ahead holds a worker, there is room for one more.
        let _worker = tickets[0].worker().await.unwrap();
        let _fourth = admit(&line, Priority::Interactive).expect("room again");
        assert!(admit(&line, Priority::Interactive).is_err());
        // And when a call leaves without a worker (its client gone), too.
        tickets.pop();
        let _fifth = admit(&line, Priority::Interactive).expect("room again");
    }

    #[tokio::test(start_paused = true)]
    async fn the_ceiling_bounds_calls_of_every_priority() {
        let line = line(1, Duration::from_secs(3600), 2);
        let _first = admit(&line, Priority::Queued).unwrap();
        let second = admit(&line, Priority::Interactive).unwrap();
        for priority in [Priority::Interactive, Priority::Queued, Priority::Background] {
            let refused = admit(&line, priority).err().expect("refused");
            assert!(
                matches!(refused, OptimizeError::Busy { admitted: 2, .. }),
                "{refused:?}"
            );
            assert_eq!(refused.retry_after(), Some(SEED_SERVICE_TIME));
        }
        drop(second);
        let _third = admit(&line, Priority::Interactive).expect("room again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_background_call_is_admitted_only_with_an_idle_worker() {
        let line = line(1, Duration::from_secs(2), 10);
        let mut background = admit(&line, Priority::Background).expect("the worker is idle");
        let worker = background.worker().await.unwrap();
        let refused = admit(&line, Priority::Background).err().expect("refused");
        assert!(matches!(refused, OptimizeError::NoIdleWorker), "{refused:?}");
        drop(worker);
        let _again = admit(&line, Priority::Background).expect("idle again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_call_stops_waiting_for_a_worker() {
        let line = line(1, Duration::from_secs(2), 10);
        let _running = line.workers.interactive().await;
        let cancel = CancellationToken::new();
        let mut job = line.admit(Priority::Queued, cancel.clone()).unwrap();
        job.finished = true;
        let waiting = tokio::spawn(async move { job.worker().await.map(drop) });
        settle().await;
        cancel.cancel();
        let error = waiting.await.unwrap().unwrap_err();
        assert!(matches!(error, OptimizeError::Cancelled { .. }), "{error:?}");
    }
}

/// The job consumer's entry points, against a real Storage service.
#[cfg(test)]
mod queued_tests {
    use std::net::SocketAddr;

    use nws_runtime::{
        testing::{ServiceProcess, test_image, workspace_binary},
        tls::UpstreamTls,
    };
    use nws_watermark::pb::{Namespace, PutRequest, StatRequest, put_request, storage_client::StorageClient};

    use super::*;

    struct Storage {
        process: ServiceProcess,
        _dir: tempfile::TempDir,
    }

    impl Storage {
        fn start() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let process = ServiceProcess::start(
                &workspace_binary("storage-svc"),
                &[
                    ("NWS_STORAGE_ADDR", "127.0.0.1:0"),
                    ("NWS_DATA_DIR", dir.path().to_str().unwrap()),
                ],
                &["storage"],
            );
            Self { process, _dir: dir }
        }

        async fn client(&self) -> StorageClient<tonic::transport::Channel> {
            StorageClient::connect(self.process.url("storage")).await.unwrap()
        }

        /// Stores `bytes` as an original and returns its hash.
        async fn put(&self, bytes: &[u8]) -> String {
            let chunks: Vec<PutRequest> = bytes
                .chunks(64 * 1024)
                .map(|chunk| PutRequest {
                    payload: Some(put_request::Payload::Chunk(chunk.to_vec().into())),
                })
                .collect();
            let put = self.client().await.put(tokio_stream::iter(chunks)).await;
            put.expect("put").into_inner().sha256
        }

        /// The size of the result kept under `key`.
        async fn result_size(&self, key: ResultKey) -> u64 {
            let mut client = self.client().await;
            let stat = client.stat(StatRequest {
                sha256: key.to_string(),
                namespace: Namespace::Results.into(),
            });
            stat.await.expect("stat").into_inner().info.unwrap().size
        }

        fn service(&self) -> OptimizerService {
            let url = self.process.url("storage").parse().unwrap();
            let store = OriginalStore::connect_lazy(url, &UpstreamTls::default()).unwrap();
            OptimizerService::new(&config(), Some(store))
        }
    }

    fn config() -> OptimizerConfig {
        OptimizerConfig {
            optimizer_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_input_bytes: 25 << 20,
            max_pixels: 50_000_000,
            max_side: 40_000,
            max_animation_pixels: 100_000_000,
            workers: 1,
            queue_wait: Duration::from_secs(2),
            queue: 0,
        }
    }

    fn job(sha256: String, quality: u32) -> RenderJob {
        let options = nws_watermark::pb::OptimizeOptions {
            quality,
            ..Default::default()
        };
        RenderJob::new(sha256, Options::try_from(options).unwrap())
    }

    #[tokio::test]
    async fn a_queued_job_returns_once_its_result_is_kept() {
        let storage = Storage::start();
        let service = storage.service();
        let sha256 = storage.put(&test_image("tiny_16x16.jpg")).await;
        let job = job(sha256, 70);
        assert!(!service.result_exists(job.key()).await.unwrap());

        let header = service
            .render_queued(&job, CancellationToken::new())
            .await
            .expect("rendered");
        assert_eq!(header.result_key, job.key().to_string());
        // Kept before render_queued returned: the job may be acknowledged.
        assert!(service.result_exists(job.key()).await.unwrap());
        assert_eq!(storage.result_size(job.key()).await, header.size);
    }

    #[tokio::test]
    async fn a_queued_job_fails_permanently_without_its_original_and_transiently_when_cancelled() {
        let storage = Storage::start();
        let service = storage.service();
        let missing = service
            .render_queued(&job("ab".repeat(32), 70), CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            matches!(missing, OptimizeError::OriginalNotFound(_)),
            "{missing:?}"
        );
        assert!(missing.is_permanent());
        assert_eq!(missing.code(), tonic::Code::NotFound);

        // A consumer stopping: the job is left for another delivery, and
        // nothing is kept.
        let sha256 = storage.put(&test_image("tiny_16x16.jpg")).await;
        let job = job(sha256, 71);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let cancelled = service.render_queued(&job, cancel).await.unwrap_err();
        assert!(
            matches!(cancelled, OptimizeError::Cancelled { .. }),
            "{cancelled:?}"
        );
        assert!(!cancelled.is_permanent());
        assert!(!service.result_exists(job.key()).await.unwrap());
        // The cancelled job left its place: the line is empty again.
        let counts = lock(&service.line.counts);
        assert_eq!((counts.admitted, counts.ahead), (0, 0));
    }

    #[tokio::test]
    async fn without_storage_queued_jobs_fail_transiently() {
        let service = OptimizerService::new(&config(), None);
        let error = service
            .render_queued(&job("ab".repeat(32), 70), CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(error, OptimizeError::NoStorage), "{error:?}");
        assert!(!error.is_permanent());
    }
}
