//! JSON log lines that name their trace: `trace_id` and `span_id` of the
//! span an event was written in, first in the object, so a line found in
//! the logs leads to its trace and back.

use std::{fmt, sync::OnceLock};

use opentelemetry::trace::TraceContextExt as _;
use tracing::{Event, Subscriber, dispatcher::WeakDispatch};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// The process's subscriber, which holds the spans' OpenTelemetry contexts.
/// Formatting runs inside it, where it is no longer the current dispatcher.
static DISPATCH: OnceLock<WeakDispatch> = OnceLock::new();

pub(super) fn remember(dispatch: &tracing::Dispatch) {
    let _ = DISPATCH.set(dispatch.downgrade());
}

/// Wraps a JSON event format, prefixing each object with the trace ids.
pub(super) struct WithTraceIds<F> {
    inner: F,
}

impl<F> WithTraceIds<F> {
    pub(super) fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let ids = ctx.parent_span().and_then(|span| {
            let dispatch = DISPATCH.get()?.upgrade()?;
            let context = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
            let span_context = context.span().span_context().clone();
            span_context.is_valid().then_some(span_context)
        });
        let Some(ids) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{}\",\"span_id\":\"{}\",{rest}",
                ids.trace_id(),
                ids.span_id()
            ),
            None => writer.write_str(&line),
        }
    }
}
