//! Hand-built IPv4 packets for the tests.

use std::net::Ipv4Addr;

/// TCP SYN flag.
pub const SYN: u8 = 0x02;
/// TCP SYN+ACK flags.
pub const SYN_ACK: u8 = 0x12;

/// An IPv4 TCP segment with the given flags and no payload.
pub fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    ipv4(src, dst, 6, &tcp)
}

/// An ICMP echo request.
pub fn ping(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
    echo(8, src, dst, id)
}

/// The ICMP echo reply to [`ping`]`(dst, src, id)`.
pub fn pong(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
    echo(0, src, dst, id)
}

fn echo(kind: u8, src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
    let mut icmp = vec![kind, 0, 0, 0, 0, 0, 0, 1];
    icmp[4..6].copy_from_slice(&id.to_be_bytes());
    let sum = checksum(&icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    ipv4(src, dst, 1, &icmp)
}

fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
