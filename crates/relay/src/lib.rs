//! The ztmesh relay: when two devices have no direct path (symmetric NATs
//! on both sides, UDP blocked), their WireGuard packets go through a relay
//! that cannot read them. Devices connect to it over TLS (so it works
//! where only HTTPS gets out, on port 443) with their device certificate;
//! the relay forwards each packet to the device whose WireGuard key it
//! names. It runs inside `ztmesh server` and as `ztmesh relay` on its own.

pub mod client;
pub mod frame;
#[cfg(test)]
mod lab;
mod pem;
pub mod server;
pub mod shared_port;
pub mod sockets;
pub mod udp;

pub use frame::Frame;
pub use server::{Authority, Relay, Stats};
