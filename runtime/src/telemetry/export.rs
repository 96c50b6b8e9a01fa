//! Spans out of the process without ever holding a request up: finished
//! spans go into a bounded queue (a full queue drops the span and counts
//! it), and one task sends them in batches over OTLP/gRPC. A collector that
//! is down, slow or black-holing connections costs the requests nothing.
//!
//! In the all-in-one run each span is sent under its own service's
//! resource: the runtime's spans say their service (`nws.service`), the
//! services' own spans are known by their crate (`target`).

use std::{fmt, sync::Arc, time::Duration};

use opentelemetry::{Context, Key, Value};
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{Span, SpanData, SpanExporter as _, SpanProcessor},
};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

use super::{Service, Services};

/// Spans waiting to be sent; past it, new ones are dropped (and counted).
const QUEUE_LENGTH: usize = 4096;
/// Most spans in one export request.
const BATCH_LENGTH: usize = 512;
/// Longest a finished span waits for its batch to fill.
const BATCH_DELAY: Duration = Duration::from_millis(500);

/// The attribute naming the service a runtime span belongs to.
pub(crate) const SERVICE_ATTRIBUTE: &str = "nws.service";

pub(crate) struct Exporting {
    spans: mpsc::Sender<SpanData>,
    /// The `service` label of the spans' counts: the process's first service.
    process: &'static str,
    closing: CancellationToken,
    finished: tokio::task::JoinHandle<()>,
}

impl Exporting {
    /// One exporter per service (they differ only in their resource); the
    /// endpoint, headers, timeout and compression come from the standard
    /// `OTEL_EXPORTER_OTLP_*` variables.
    pub(crate) fn start(services: Services, resource: impl Fn(Service) -> Resource) -> anyhow::Result<Self> {
        let exporters = services
            .0
            .iter()
            .map(|service| {
                let mut exporter = SpanExporter::builder()
                    .with_tonic()
                    .with_timeout(export_timeout())
                    .build()?;
                exporter.set_resource(&resource(*service));
                Ok((*service, exporter))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for outcome in [
            "exported",
            "dropped_queue_full",
            "dropped_export_failed",
            "dropped_shutdown",
        ] {
            // Counters exist from the start, so a rate over them starts at zero.
            spans_counter(services.0[0].name, outcome).absolute(0);
        }
        let (spans, queue) = mpsc::channel(QUEUE_LENGTH);
        let closing = CancellationToken::new();
        let finished = tokio::spawn(send_batches(queue, Arc::new(exporters), closing.clone()));
        Ok(Self {
            spans,
            process: services.0[0].name,
            closing,
            finished,
        })
    }

    pub(crate) fn processor(&self) -> Queue {
        Queue {
            spans: self.spans.clone(),
            process: self.process,
        }
    }

    /// Sends what is queued, for at most `timeout`.
    pub(crate) async fn finish(self, timeout: Duration) {
        self.closing.cancel();
        if tokio::time::timeout(timeout, self.finished).await.is_err() {
            tracing::warn!(?timeout, "spans still queued at exit were not all sent");
        }
    }
}

/// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` or `OTEL_EXPORTER_OTLP_TIMEOUT`
/// (milliseconds), else 10 s, as the specification says. Read here because
/// one slow export holds the batch behind it.
fn export_timeout() -> Duration {
    ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// The span processor: hands finished, sampled spans to the sending task.
pub(crate) struct Queue {
    spans: mpsc::Sender<SpanData>,
    process: &'static str,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.spans.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => spans_counter(self.process, "dropped_queue_full").increment(1),
            Err(TrySendError::Closed(_)) => spans_counter(self.process, "dropped_shutdown").increment(1),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Sending is asynchronous; `Telemetry::shutdown` flushes.
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

fn spans_counter(process: &'static str, outcome: &'static str) -> metrics::Counter {
    metrics::counter!("nws_trace_spans_total", "service" => process, "outcome" => outcome)
}

async fn send_batches(
    mut queue: mpsc::Receiver<SpanData>,
    exporters: Arc<Vec<(Service, SpanExporter)>>,
    closing: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH_LENGTH);
    loop {
        let closed = tokio::select! {
            received = queue.recv_many(&mut batch, BATCH_LENGTH) => received == 0,
            () = closing.cancelled() => true,
        };
        if !closed && batch.len() < BATCH_LENGTH {
            // Let the batch fill for a moment: one request per span would
            // cost the collector (and us) far more.
            let deadline = tokio::time::sleep(BATCH_DELAY);
            tokio::pin!(deadline);
            while batch.len() < BATCH_LENGTH {
                let room = BATCH_LENGTH - batch.len();
                tokio::select! {
                    received = queue.recv_many(&mut batch, room) => if received == 0 { break },
                    () = &mut deadline => break,
                    () = closing.cancelled() => break,
                }
            }
        }
        if closed || closing.is_cancelled() {
            while let Ok(span) = queue.try_recv() {
                batch.push(span);
            }
        }
        for chunk in std::mem::take(&mut batch).chunks(BATCH_LENGTH) {
            send(&exporters, chunk.to_vec()).await;
        }
        if closed || closing.is_cancelled() {
            return;
        }
    }
}

/// Sends a batch, split by service. Failures are counted and logged at
/// debug level: a missing collector must not fill the logs.
async fn send(exporters: &[(Service, SpanExporter)], batch: Vec<SpanData>) {
    let process = exporters[0].0.name;
    let mut groups: Vec<Vec<SpanData>> = exporters.iter().map(|_| Vec::new()).collect();
    if exporters.len() == 1 {
        groups[0] = batch;
    } else {
        for span in batch {
            let index = service_of(&span, exporters).unwrap_or(0);
            groups[index].push(span);
        }
    }
    for ((service, exporter), group) in exporters.iter().zip(groups) {
        if group.is_empty() {
            continue;
        }
        let count = group.len() as u64;
        match exporter.export(group).await {
            Ok(()) => spans_counter(process, "exported").increment(count),
            Err(error) => {
                spans_counter(process, "dropped_export_failed").increment(count);
                tracing::debug!(service = service.name, %error, spans = count, "spans not exported");
            }
        }
    }
}

/// Which service a span belongs to: the one it names, else the one whose
/// crate made it.
fn service_of(span: &SpanData, exporters: &[(Service, SpanExporter)]) -> Option<usize> {
    let attribute = |key: &'static str| {
        span.attributes
            .iter()
            .find(|attribute| attribute.key == Key::from_static_str(key))
            .and_then(|attribute| match &attribute.value {
                Value::String(value) => Some(value.as_str().to_owned()),
                _ => None,
            })
    };
    if let Some(name) = attribute(SERVICE_ATTRIBUTE) {
        return exporters.iter().position(|(service, _)| service.name == name);
    }
    let target = attribute("target")?;
    let crate_name = target.split("::").next()?;
    exporters
        .iter()
        .position(|(service, _)| service.crate_name == crate_name)
}
