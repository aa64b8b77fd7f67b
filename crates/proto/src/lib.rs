//! ztmesh protobuf messages and their conversions into domain types.
//!
//! Prost types stop here: the server and the agent convert with the functions
//! below, and every conversion of bytes that came from the network returns an
//! error value instead of panicking.

/// Generated `ztmesh.v1` messages.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/ztmesh.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every ztmesh .proto file: served by
/// gRPC reflection, and the list of RPCs the admin role table is checked
/// against.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ztmesh_descriptor.bin"));

mod convert;
mod token;

pub use token::{JoinToken, TokenError};

pub use convert::{
    ConversionError, filter_from_proto, filter_to_proto, parse_cidrs, parse_public_key,
};
