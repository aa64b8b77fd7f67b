//! gRPC service stubs (tonic) for the ztmesh control and admin APIs.
//!
//! Message types live in the pure `ztmesh-proto` crate; this crate only adds
//! the client and server glue, so the pure crates stay free of tonic.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

/// Generated `ztmesh.v1` services.
pub mod v1 {
    tonic::include_proto!("ztmesh.v1");
}

pub use ztmesh_proto::v1 as messages;
