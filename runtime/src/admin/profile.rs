//! CPU profiles of the running process, sampled by `pprof` (SIGPROF, 99 Hz)
//! for `seconds=N` (1 to 60, default 10): `/debug/pprof/profile` answers
//! Go's pprof protobuf (`go tool pprof`, Pyroscope, Speedscope read it),
//! `/debug/pprof/flamegraph` an SVG to open in a browser. One profile at a
//! time: the sampling signal is process-wide.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    extract::{Query, State},
    response::{IntoResponse, Response},
};
use http::{StatusCode, header};
use pprof::protos::Message as _;
use tokio::sync::Semaphore;
use tonic::Code;

use crate::http::json_error;

const DEFAULT_SECONDS: u64 = 10;
const MAX_SECONDS: u64 = 60;
const FREQUENCY_HZ: i32 = 99;

/// Whether a profile is being taken.
#[derive(Clone)]
pub(super) struct Profiler {
    one_at_a_time: Arc<Semaphore>,
}

impl Profiler {
    pub(super) fn new() -> Self {
        Self {
            one_at_a_time: Arc::new(Semaphore::new(1)),
        }
    }
}

#[derive(Clone, Copy)]
enum Output {
    Pprof,
    Flamegraph,
}

pub(super) async fn pprof(state: State<Profiler>, query: Query<HashMap<String, String>>) -> Response {
    profile(state, query, Output::Pprof).await
}

pub(super) async fn flamegraph(state: State<Profiler>, query: Query<HashMap<String, String>>) -> Response {
    profile(state, query, Output::Flamegraph).await
}

async fn profile(
    State(profiler): State<Profiler>,
    Query(query): Query<HashMap<String, String>>,
    output: Output,
) -> Response {
    let seconds = match query.get("seconds").map(|value| value.parse::<u64>()) {
        None => DEFAULT_SECONDS,
        Some(Ok(seconds)) if (1..=MAX_SECONDS).contains(&seconds) => seconds,
        Some(_) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                &format!("seconds must be a whole number from 1 to {MAX_SECONDS}"),
            );
        }
    };
    let Ok(_taking) = profiler.one_at_a_time.try_acquire() else {
        return json_error(
            StatusCode::CONFLICT,
            Code::Aborted,
            "a profile is already being taken; retry when it is done",
        );
    };
    let sampled = tokio::task::spawn_blocking(move || sample(Duration::from_secs(seconds), output)).await;
    match sampled {
        Ok(Ok((content_type, body))) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Ok(Err(error)) => {
            tracing::warn!(%error, "CPU profile failed");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Internal,
                "the CPU profile could not be taken",
            )
        }
        Err(join_error) => {
            tracing::error!(error = %crate::panic::join_error_message(join_error), "CPU profiler panicked");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Internal,
                "the CPU profile could not be taken",
            )
        }
    }
}

/// Samples the whole process for `duration` on this (blocking) thread: the
/// profiler's guard must not be held across an `.await`.
fn sample(duration: Duration, output: Output) -> anyhow::Result<(&'static str, Vec<u8>)> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(FREQUENCY_HZ)
        // Unwinding through these can fault; their frames say little.
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()?;
    std::thread::sleep(duration);
    let report = guard.report().build()?;
    match output {
        Output::Pprof => Ok(("application/octet-stream", report.pprof()?.write_to_bytes()?)),
        Output::Flamegraph => {
            // Folded stacks, root first: `thread;outer;…;inner count`.
            let lines: Vec<String> = report
                .data
                .iter()
                .map(|(frames, count)| {
                    let mut stack = frames.thread_name_or_id();
                    for symbol in frames.frames.iter().rev().flatten() {
                        stack.push(';');
                        stack.push_str(&symbol.name());
                    }
                    format!("{stack} {count}")
                })
                .collect();
            if lines.is_empty() {
                // inferno draws nothing from no samples; say so instead.
                let svg = format!(
                    "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"40\">\
                     <text x=\"10\" y=\"25\">No CPU samples in {} s: the process was idle.</text></svg>",
                    duration.as_secs()
                );
                return Ok(("image/svg+xml", svg.into_bytes()));
            }
            let mut options = inferno::flamegraph::Options::default();
            options.title = format!("CPU, {} s at {FREQUENCY_HZ} Hz", duration.as_secs());
            let mut svg = Vec::new();
            inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)?;
            Ok(("image/svg+xml", svg))
        }
    }
}
