//! The Storage binary, started for real over each backend (the filesystem,
//! and a real S3 server) and called over gRPC.

mod contract;
mod fs;
mod harness;
mod s3;
