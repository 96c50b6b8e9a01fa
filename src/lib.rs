//! NWS Watermark: the protobuf contracts (`pb`) and the plumbing every service
//! shares: configuration, telemetry, the gRPC server builder and shutdown.
#![forbid(unsafe_code)]

pub mod chunk;
pub mod config;
pub mod grpc;
pub mod media;
pub mod options;
pub mod shutdown;
pub mod telemetry;

/// Code generated from `proto/`: `watermark.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("watermark.v1");

    /// Encoded descriptors of every file under `proto/` and its imports, for
    /// server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/watermark_descriptor.bin"));
}

#[cfg(feature = "test-support")]
pub mod testing;
