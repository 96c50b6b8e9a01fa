//! gRPC: the one way every server in the mesh is built ([`GrpcServer`]),
//! the channels it uses to call others ([`client`]), and statuses whose
//! message is safe to show an end user ([`status`]).

pub mod balance;
pub mod client;
mod observe;
mod policy;
mod server;
pub mod status;
pub mod target;

pub use observe::{Observed, ObservedService};
pub use policy::Enforced;
pub use server::{CheckFuture, GrpcServer, HEALTH_SERVICE};
