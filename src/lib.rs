//! NWS Watermark contracts: what the wire says, shared by every service and
//! every client written in Rust.
//!
//! - [`pb`]: the code generated from `proto/` (`watermark.v1`);
//! - [`options`]: processing options, their validation and canonical form,
//!   and [`params`], their names in HTTP queries and forms;
//! - [`render`]: what names a result ([`render::ResultKey`]) and the unit of
//!   work that makes one ([`render::RenderJob`]);
//! - [`access`]: the scope each RPC needs and the rate limit it counts against;
//! - [`media`]: formats judged from the bytes; [`chunk`]: bounded chunks;
//!   [`stream`]: the streams that carry a description, then bytes.
//!
//! Server plumbing lives in `nws-runtime`, not here: a client of the API
//! needs none of it.
#![forbid(unsafe_code)]

pub mod access;
pub mod chunk;
pub mod media;
pub mod options;
pub mod params;
pub mod render;
pub mod stream;

/// Code generated from `proto/`: `watermark.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("watermark.v1");

    /// Encoded descriptors of every file under `proto/` and its imports, for
    /// server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/watermark_descriptor.bin"));
}
