//! NWS Watermark durable render jobs: a job is a [`RenderJob`] (original
//! hash + canonical options, named by its result key) kept by RabbitMQ
//! until a consumer has stored its result. The gateway publishes with
//! confirms ([`Broker::submit`]); optimizer-svc consumes ([`consumer`]),
//! retrying through delay queues and dead-lettering what cannot succeed;
//! every change of state is recorded in Redis ([`StatusStore`]) for the
//! gateway's `/v1/jobs/{id}` and its event stream.
//!
//! [`RenderJob`]: nws_watermark::render::RenderJob
#![forbid(unsafe_code)]

mod broker;
mod config;
pub mod consumer;
pub mod message;
pub mod status;
mod topology;

pub use broker::{Broker, DeadLetter, Link, PublishError};
pub use config::JobsConfig;
pub use status::{Record, State, StatusStore, Timings};
pub use topology::Topology;
