//! `Server-Timing`: where a response's time went, one entry per step, so
//! browser devtools show the pipeline next to the network timings; and the
//! request's trace id (`trace;desc="…"`), to find its trace.

use std::time::{Duration, Instant};

use http::HeaderValue;
use nws_watermark::pb::StageTimings;

#[derive(Debug)]
pub struct ServerTiming {
    started: Instant,
    entries: Vec<(&'static str, &'static str, Duration)>,
}

impl ServerTiming {
    /// Starts the clock for the `total` entry.
    pub fn start() -> Self {
        Self {
            started: Instant::now(),
            entries: Vec::with_capacity(8),
        }
    }

    /// Records a step: a metric name and a description shown by devtools.
    pub fn add(&mut self, name: &'static str, description: &'static str, took: Duration) {
        self.entries.push((name, description, took));
    }

    /// Records a step that began at `since` and ends now.
    pub fn since(&mut self, name: &'static str, description: &'static str, since: Instant) {
        self.add(name, description, since.elapsed());
    }

    /// The optimizer's own stage times.
    pub fn add_stages(&mut self, stages: &StageTimings) {
        for (name, description, micros) in [
            ("decode", "optimizer: decode", stages.decode_micros),
            ("resize", "optimizer: resize", stages.resize_micros),
            ("watermark", "optimizer: watermark", stages.watermark_micros),
            ("encode", "optimizer: encode", stages.encode_micros),
        ] {
            self.add(name, description, Duration::from_micros(micros));
        }
    }

    pub fn header_value(&self) -> HeaderValue {
        use std::fmt::Write as _;
        let mut value = String::with_capacity(32 * (self.entries.len() + 1));
        let entries =
            self.entries
                .iter()
                .copied()
                .chain([("total", "gateway: whole request", self.started.elapsed())]);
        // The request's trace, for devtools users to look it up.
        if let Some((trace_id, _)) = nws_runtime::telemetry::propagation::ids(&tracing::Span::current()) {
            let _ = write!(value, "trace;desc=\"{trace_id}\", ");
        }
        for (index, (name, description, took)) in entries.enumerate() {
            let separator = if index == 0 { "" } else { ", " };
            // Milliseconds with three decimals, in integers: cheaper than
            // float formatting on every response.
            let micros = took.as_micros();
            let _ = write!(
                value,
                "{separator}{name};desc=\"{description}\";dur={}.{:03}",
                micros / 1000,
                micros % 1000
            );
        }
        HeaderValue::try_from(value).expect("names and descriptions are ASCII")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_follow_the_server_timing_syntax() {
        let mut timing = ServerTiming::start();
        timing.add("l1", "cache: memory", Duration::from_micros(12));
        timing.add_stages(&StageTimings {
            decode_micros: 28_600,
            resize_micros: 4_200,
            watermark_micros: 190,
            encode_micros: 2_700,
        });
        let value = timing.header_value();
        let value = value.to_str().unwrap();
        assert!(value.starts_with(
            "l1;desc=\"cache: memory\";dur=0.012, decode;desc=\"optimizer: decode\";dur=28.600"
        ));
        assert!(
            value.contains(", total;desc=\"gateway: whole request\";dur="),
            "{value}"
        );
    }
}
