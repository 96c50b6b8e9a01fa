//! Logs, traces and metrics, set up in one place for every binary.
//!
//! - Logs: `RUST_LOG` filters (default `info`); JSON lines carry the
//!   `trace_id` and `span_id` of the span they were written in.
//! - Traces: every `tracing` span is an OpenTelemetry span. W3C context is
//!   read from and written to every call by the runtime's layer stacks
//!   ([`propagation`]). Spans are exported over OTLP/gRPC only when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
//!   is set, from a bounded queue that drops (and counts) rather than wait
//!   ([`export`]). Sampling follows `OTEL_TRACES_SAMPLER`/`_ARG` (default
//!   `parentbased_always_on`; with no exporter, `parentbased_always_off`:
//!   nothing this process starts is recorded, a caller's sampled trace
//!   still is); the resource follows `OTEL_SERVICE_NAME` and
//!   `OTEL_RESOURCE_ATTRIBUTES`.
//! - Metrics: one Prometheus registry per process ([`metrics`]).

mod export;
mod logs;
pub mod metrics;
pub mod propagation;

use std::time::Duration;

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_sdk::{
    Resource,
    trace::{Sampler, SdkTracerProvider},
};
use tracing_subscriber::{
    EnvFilter, Layer as _, filter::LevelFilter, fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

use crate::config::LogFormat;

/// The services a process runs, each reported under its own `service.name`
/// (the all-in-one binary runs three). The first is the process's own name,
/// for what belongs to no service in particular.
#[derive(Debug, Clone, Copy)]
pub struct Services(pub &'static [Service]);

/// A service of the mesh: its short name (the `service` label of its
/// metrics, the `nws.service` attribute of the runtime's spans) and the
/// crate whose spans are its own.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    pub name: &'static str,
    pub crate_name: &'static str,
}

pub const GATEWAY: Service = Service {
    name: "gateway",
    crate_name: "gateway",
};
pub const OPTIMIZER: Service = Service {
    name: "optimizer",
    crate_name: "optimizer_svc",
};
pub const STORAGE: Service = Service {
    name: "storage",
    crate_name: "storage_svc",
};

/// What [`init`] set up; [`Telemetry::shutdown`] sends the spans still
/// queued before the process exits.
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: Option<export::Exporting>,
}

/// Installs logging, the tracer and the metrics registry for the process.
/// Calling it again (tests that build several services in one process) is
/// harmless: the first set-up stays.
pub fn init(services: Services, format: LogFormat) -> anyhow::Result<Telemetry> {
    let env = |name: &str| std::env::var(name).ok().filter(|value| !value.trim().is_empty());
    // First, so that everything set up below can count.
    metrics::install();

    let (propagator, unknown) = propagation::from_env(env("OTEL_PROPAGATORS").as_deref());
    opentelemetry::global::set_text_map_propagator(propagator);

    let exporting = if env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
    {
        Some(export::Exporting::start(services, |service| {
            resource(services, service, env("OTEL_SERVICE_NAME"))
        })?)
    } else {
        None
    };
    let mut provider = SdkTracerProvider::builder().with_resource(resource(
        services,
        services.0[0],
        env("OTEL_SERVICE_NAME"),
    ));
    match &exporting {
        Some(exporting) => provider = provider.with_span_processor(exporting.processor()),
        // Nowhere to send spans: record none this process starts (recording
        // is most of what a span costs), but keep a caller's sampled trace
        // sampled, so services that do export still see it whole. Trace ids
        // are still made, logged and answered either way.
        None if env("OTEL_TRACES_SAMPLER").is_none() => {
            provider = provider.with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)));
        }
        None => {}
    }
    let provider = provider.build();
    let tracer = provider.tracer("nws-watermark");
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_level(false)
        // Per-span busy/idle times would cost a clock read on every poll
        // of every instrumented future; the span's own duration is enough.
        .with_tracked_inactivity(false)
        // Nothing here reads OpenTelemetry's thread-local current context
        // (propagation asks the span itself), so entering a span, which
        // happens on every poll, need not set it.
        .with_context_activation(false)
        // The span's module path: how the all-in-one run tells its
        // services' spans apart; one service alone needs none.
        .with_target(services.0.len() > 1);

    // RUST_LOG chooses what is logged, not what is traced: spans (all at
    // `info`) and their events are traced whatever the log level.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let log_lines = match format {
        LogFormat::Text => fmt::layer().with_target(true).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .event_format(logs::WithTraceIds::new(fmt::format().json().flatten_event(true)))
            .boxed(),
    };
    let subscriber = tracing_subscriber::registry()
        .with(traces.with_filter(LevelFilter::INFO))
        .with(log_lines.with_filter(filter));
    let dispatch = tracing::Dispatch::new(subscriber);
    if dispatch.clone().try_init().is_ok() {
        logs::remember(&dispatch);
        for service in services.0 {
            metrics::build_info(service.name);
        }
    }

    for name in unknown {
        tracing::warn!(propagator = %name, "OTEL_PROPAGATORS names a format this build does not speak; ignored");
    }
    if let Some(problem) = sampler_problem(
        env("OTEL_TRACES_SAMPLER").as_deref(),
        env("OTEL_TRACES_SAMPLER_ARG").as_deref(),
    ) {
        // The SDK falls back to its default, as the specification says;
        // say so, since nothing else would.
        tracing::warn!("{problem}; sampling with parentbased_always_on");
    }
    match &exporting {
        Some(_) => tracing::info!("traces: exported over OTLP/gRPC (OTEL_EXPORTER_OTLP_*)"),
        None => tracing::debug!("traces: propagated, not exported (no OTEL_EXPORTER_OTLP_ENDPOINT)"),
    }
    Ok(Telemetry { provider, exporting })
}

impl Telemetry {
    /// Sends what is still queued, for at most `timeout`, then stops the
    /// exporter.
    pub async fn shutdown(self, timeout: Duration) {
        if let Some(exporting) = self.exporting {
            exporting.finish(timeout).await;
        }
        let _ = self.provider.shutdown();
    }
}

/// Why `OTEL_TRACES_SAMPLER`/`_ARG` will not be followed, if they won't.
fn sampler_problem(sampler: Option<&str>, arg: Option<&str>) -> Option<String> {
    let ratio = |arg: Option<&str>| {
        arg.and_then(|a| a.trim().parse::<f64>().ok())
            .filter(|r| (0.0..=1.0).contains(r))
    };
    match sampler? {
        "always_on" | "always_off" | "parentbased_always_on" | "parentbased_always_off" => None,
        "traceidratio" | "parentbased_traceidratio" if ratio(arg).is_some() => None,
        name @ ("traceidratio" | "parentbased_traceidratio") => Some(format!(
            "OTEL_TRACES_SAMPLER={name} needs OTEL_TRACES_SAMPLER_ARG, a ratio from 0 to 1 (got {arg:?}); the SDK samples every trace instead"
        )),
        other => Some(format!(
            "OTEL_TRACES_SAMPLER={other:?} is not a sampler this build knows"
        )),
    }
}

/// Adds an attribute to `span`'s OpenTelemetry span that its `tracing`
/// fields did not declare (e.g. set by code the span's maker does not know).
pub fn set_attribute(span: &tracing::Span, key: &'static str, value: impl Into<opentelemetry::Value>) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    span.set_attribute(key, value);
}

/// The resource a service's spans are reported under. One service alone
/// takes `OTEL_SERVICE_NAME` as it is (default `nws-<service>`); in the
/// all-in-one run each service is `<OTEL_SERVICE_NAME, default nws>-<service>`.
/// `OTEL_RESOURCE_ATTRIBUTES` adds the rest (a `service.name` there counts
/// when `OTEL_SERVICE_NAME` is unset, as the specification says).
fn resource(services: Services, service: Service, otel_service_name: Option<String>) -> Resource {
    let detected = Resource::builder().build();
    let detected_name = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .map(|value| value.to_string())
        .filter(|name| !name.starts_with("unknown_service"));
    let name = match (services.0.len(), otel_service_name.or(detected_name)) {
        (1, Some(name)) => name,
        (1, None) => format!("nws-{}", service.name),
        (_, Some(prefix)) => format!("{prefix}-{}", service.name),
        (_, None) => format!("nws-{}", service.name),
    };
    Resource::builder()
        .with_service_name(name)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samplers_this_build_does_not_follow_are_named() {
        assert_eq!(sampler_problem(None, None), None);
        assert_eq!(sampler_problem(Some("parentbased_always_on"), None), None);
        assert_eq!(
            sampler_problem(Some("parentbased_traceidratio"), Some("0.25")),
            None
        );
        let missing = sampler_problem(Some("traceidratio"), None).unwrap();
        assert!(missing.contains("OTEL_TRACES_SAMPLER_ARG"), "{missing}");
        assert!(sampler_problem(Some("traceidratio"), Some("2")).is_some());
        let unknown = sampler_problem(Some("jaeger_remote"), None).unwrap();
        assert!(unknown.contains("jaeger_remote"), "{unknown}");
    }
}
