//! What one read from a TUN device with offloads holds: the virtio-net
//! header, then either one packet, left where it was read, or a TCP or
//! UDP super-packet, split into its segments.
//!
//! tun-rs's `recv_multiple` copies even a lone packet out of the read's
//! buffer into the first segment buffer; on a cold wake-up (a ping, a
//! request) that is one more buffer's page and lines to fetch. Here a
//! lone packet stays in place, its partial checksum completed there; a
//! super-packet goes through tun-rs's own splitter, with the header
//! length taken from the packet as tun-rs does.

use std::io;

use tun_rs::{VirtioNetHdr, gso_split};

use crate::batch::HEADROOM;

/// `VIRTIO_NET_HDR_GSO_NONE` (linux/virtio_net.h): not a super-packet.
const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_ECN`: a flag on a TCP super-packet's type.
const GSO_ECN: u8 = 0x80;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the transport checksum holds only the
/// pseudo-header's sum; the rest is the reader's to add (from
/// `csum_start`, into the field at `csum_start + csum_offset`).
const NEEDS_CSUM: u8 = 1;
/// A UDP header's length.
const UDP_HEADER: u16 = 8;

/// Where a read's packets are.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unpacked {
    /// One packet of this length, right after the header.
    InPlace(usize),
    /// This many segments, one per buffer.
    Split(usize),
}

/// Takes apart `raw`, one read from the device (header and packet). A
/// read the kernel could not have made (too short, a checksum field or a
/// header beyond the packet) is an error with no OS code: the caller
/// drops that packet and goes on.
pub(super) fn unpack(
    raw: &mut [u8],
    bufs: &mut [Vec<u8>],
    sizes: &mut [usize],
) -> io::Result<Unpacked> {
    let Some((head, packet)) = raw.split_at_mut_checked(HEADROOM) else {
        return Err(invalid("a read shorter than its virtio-net header"));
    };
    let mut hdr = VirtioNetHdr::decode(head)?;
    let Some(&first) = packet.first() else {
        return Err(invalid("a read with a virtio-net header and no packet"));
    };
    if hdr.gso_type == GSO_NONE {
        if hdr.flags & NEEDS_CSUM != 0 {
            complete_checksum(packet, hdr.csum_start, hdr.csum_offset)?;
        }
        return Ok(Unpacked::InPlace(packet.len()));
    }
    let is_v6 = match first >> 4 {
        4 => false,
        6 => true,
        _ => return Err(invalid("a super-packet that is neither IPv4 nor IPv6")),
    };
    // The kernel's header length can be the whole first packet (on a
    // forwarding path): the transport header's own length decides.
    hdr.hdr_len = headers_len(packet, &hdr)?;
    gso_split(packet, hdr, bufs, sizes, 0, is_v6).map(Unpacked::Split)
}

/// The IP and transport headers' length of a super-packet: its
/// transport header starts at `csum_start`.
fn headers_len(packet: &[u8], hdr: &VirtioNetHdr) -> io::Result<u16> {
    let transport = if hdr.gso_type & !GSO_ECN == tun_rs::VIRTIO_NET_HDR_GSO_UDP_L4 {
        UDP_HEADER
    } else {
        let offset = usize::from(hdr.csum_start) + 12;
        let words = packet
            .get(offset)
            .ok_or_else(|| invalid("a TCP super-packet shorter than its TCP header"))?;
        let len = u16::from(words >> 4) * 4;
        if len < 20 {
            return Err(invalid("a TCP super-packet with a header under 20 bytes"));
        }
        len
    };
    hdr.csum_start
        .checked_add(transport)
        .ok_or_else(|| invalid("a super-packet's headers longer than 64 KiB"))
}

/// Adds the sum of `packet[start..]` to the pseudo-header sum the kernel
/// left in the field at `start + offset`, as the checksum offload would.
fn complete_checksum(packet: &mut [u8], start: u16, offset: u16) -> io::Result<()> {
    let start = usize::from(start);
    let at = start + usize::from(offset);
    let Some(&[hi, lo]) = packet.get(at..at + 2) else {
        return Err(invalid("a checksum field beyond the packet"));
    };
    let initial = u16::from_be_bytes([hi, lo]);
    write_u16(packet, at, 0);
    // Covers the field: `at` is past `start`.
    let covered = packet.get(start..).unwrap_or_default();
    let sum = !tun_rs::checksum(covered, u64::from(initial));
    write_u16(packet, at, sum);
    Ok(())
}

/// Writes `value` big-endian at `at` (checked by the caller).
fn write_u16(packet: &mut [u8], at: usize, value: u16) {
    if let Some(field) = packet.get_mut(at..at + 2) {
        field.copy_from_slice(&value.to_be_bytes());
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

#[cfg(test)]
mod tests;
