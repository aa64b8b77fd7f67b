use super::*;

/// Segment buffers as the data plane's read batch has them: the first
/// large enough for any packet, the rest for one segment each.
fn buffers() -> (Vec<Vec<u8>>, Vec<usize>) {
    let mut bufs = vec![vec![0; 2048]; 8];
    bufs[0] = vec![0; 65_535];
    (bufs, vec![0; 8])
}

/// The ones' complement sum of `data` (RFC 1071), not complemented.
fn sum(data: &[u8], mut acc: u32) -> u16 {
    for pair in data.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        acc += hi | pair.get(1).map_or(0, |&lo| u32::from(lo));
    }
    while acc > 0xffff {
        acc = (acc >> 16) + (acc & 0xffff);
    }
    acc as u16
}

/// The IPv4 pseudo-header's sum for a transport segment of `len` bytes.
fn pseudo(packet: &[u8], proto: u8, len: usize) -> u16 {
    let mut head = packet[12..20].to_vec();
    head.extend_from_slice(&[0, proto]);
    head.extend_from_slice(&(len as u16).to_be_bytes());
    sum(&head, 0)
}

/// Whether the packet's IPv4 header and transport checksum are right.
fn checksums_hold(packet: &[u8], proto: u8) -> bool {
    let transport = &packet[20..];
    sum(&packet[..20], 0) == 0xffff
        && sum(transport, u32::from(pseudo(packet, proto, transport.len()))) == 0xffff
}

/// An IPv4 packet from 100.64.0.1 to 100.64.0.2 with a right header
/// checksum and `transport` after it.
fn ipv4(proto: u8, transport: &[u8]) -> Vec<u8> {
    let total = (20 + transport.len()) as u16;
    let mut packet = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    packet[2..4].copy_from_slice(&total.to_be_bytes());
    packet.extend_from_slice(&[100, 64, 0, 1, 100, 64, 0, 2]);
    let check = !sum(&packet, 0);
    packet[10..12].copy_from_slice(&check.to_be_bytes());
    packet.extend_from_slice(transport);
    packet
}

/// As the kernel hands a packet whose checksum it left to the device:
/// the pseudo-header's sum in the transport checksum field.
fn partial(mut packet: Vec<u8>, proto: u8, field: usize) -> Vec<u8> {
    let len = packet.len() - 20;
    let start = pseudo(&packet, proto, len);
    packet[20 + field..22 + field].copy_from_slice(&start.to_be_bytes());
    packet
}

/// A header that leaves the transport checksum to the reader: the sum
/// from `csum_start` goes in the field at `csum_start + csum_offset`.
/// `gso_type` 0 is a lone packet.
fn partial_hdr(
    gso_type: u8,
    hdr_len: u16,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
) -> VirtioNetHdr {
    VirtioNetHdr {
        flags: NEEDS_CSUM,
        gso_type,
        hdr_len,
        gso_size,
        csum_start,
        csum_offset,
    }
}

/// The virtio-net header and the packet, as one read.
fn read(hdr: VirtioNetHdr, packet: &[u8]) -> Vec<u8> {
    let mut raw = vec![0; HEADROOM];
    hdr.encode(&mut raw).expect("header room");
    raw.extend_from_slice(packet);
    raw
}

fn udp(payload: &[u8]) -> Vec<u8> {
    let mut udp = vec![0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 0];
    udp[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(payload);
    udp
}

fn tcp(seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut tcp = vec![0x9c, 0x40, 0x14, 0x51];
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(payload);
    tcp
}

#[test]
fn a_lone_packet_with_its_checksum_done_stays_where_it_was_read_unchanged() {
    let mut packet = ipv4(1, &[8, 0, 0, 0, 0, 7, 0, 1, 0xab, 0xcd]);
    let icmp = !sum(&packet[20..], 0);
    packet[22..24].copy_from_slice(&icmp.to_be_bytes());
    let mut raw = read(VirtioNetHdr::default(), &packet);
    let (mut bufs, mut sizes) = buffers();
    let unpacked = unpack(&mut raw, &mut bufs, &mut sizes).expect("a lone packet");
    assert_eq!(unpacked, Unpacked::InPlace(packet.len()));
    assert_eq!(&raw[HEADROOM..], &packet[..]);
    assert!(
        bufs[0].iter().all(|&b| b == 0),
        "no copy into the first buffer"
    );
}

#[test]
fn a_lone_datagram_gets_the_checksum_the_kernel_left_to_the_device() {
    let datagram = ipv4(17, &udp(b"odd length payload!"));
    let hdr = partial_hdr(0, 0, 0, 20, 6);
    let mut raw = read(hdr, &partial(datagram.clone(), 17, 6));
    let (mut bufs, mut sizes) = buffers();
    let unpacked = unpack(&mut raw, &mut bufs, &mut sizes).expect("a lone datagram");
    assert_eq!(unpacked, Unpacked::InPlace(datagram.len()));
    assert!(checksums_hold(&raw[HEADROOM..], 17));
    // Only the checksum field changed.
    assert_eq!(raw[HEADROOM..HEADROOM + 26], datagram[..26]);
    assert_eq!(raw[HEADROOM + 28..], datagram[28..]);
}

#[test]
fn a_tcp_super_packet_is_split_into_segments_with_their_own_headers_and_checksums() {
    let payload: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
    let packet = partial(ipv4(6, &tcp(1000, &payload)), 6, 16);
    // The header length is not trusted: the TCP header's own is used.
    let hdr = partial_hdr(
        tun_rs::VIRTIO_NET_HDR_GSO_TCPV4,
        packet.len() as u16,
        1000,
        20,
        16,
    );
    let mut raw = read(hdr, &packet);
    let (mut bufs, mut sizes) = buffers();
    let unpacked = unpack(&mut raw, &mut bufs, &mut sizes).expect("a super-packet");
    assert_eq!(unpacked, Unpacked::Split(3));
    assert_eq!(sizes[..3], [1040, 1040, 540]);
    let mut carried = Vec::new();
    for (i, (buf, &len)) in bufs.iter().zip(&sizes).take(3).enumerate() {
        let segment = &buf[..len];
        assert_eq!(
            usize::from(u16::from_be_bytes([segment[2], segment[3]])),
            len
        );
        let seq = u32::from_be_bytes([segment[24], segment[25], segment[26], segment[27]]);
        assert_eq!(seq, 1000 + 1000 * i as u32);
        assert!(checksums_hold(segment, 6), "segment {i}");
        carried.extend_from_slice(&segment[40..]);
    }
    assert_eq!(carried, payload);
}

#[test]
fn a_udp_super_packet_is_split_at_its_segment_size() {
    let payload = vec![7u8; 3000];
    let packet = partial(ipv4(17, &udp(&payload)), 17, 6);
    let hdr = partial_hdr(tun_rs::VIRTIO_NET_HDR_GSO_UDP_L4, 28, 1400, 20, 6);
    let mut raw = read(hdr, &packet);
    let (mut bufs, mut sizes) = buffers();
    let unpacked = unpack(&mut raw, &mut bufs, &mut sizes).expect("a UDP super-packet");
    assert_eq!(unpacked, Unpacked::Split(3));
    assert_eq!(sizes[..3], [1428, 1428, 228]);
    for (buf, &len) in bufs.iter().zip(&sizes).take(3) {
        assert!(checksums_hold(&buf[..len], 17));
    }
}

#[test]
fn reads_the_kernel_could_not_have_made_are_errors_not_panics() {
    let (mut bufs, mut sizes) = buffers();
    let datagram = ipv4(17, &udp(b"x"));
    let lone_csum = |csum_start, csum_offset| partial_hdr(0, 0, 0, csum_start, csum_offset);
    let tso = |packet: &[u8], tcp_offset: u8| {
        let mut packet = packet.to_vec();
        if let Some(offset) = packet.get_mut(32) {
            *offset = tcp_offset;
        }
        read(
            partial_hdr(tun_rs::VIRTIO_NET_HDR_GSO_TCPV4, 40, 100, 20, 16),
            &packet,
        )
    };
    let segment = ipv4(6, &tcp(1, &[0; 300]));
    let mut not_ip = tso(&segment, 0x50);
    not_ip[HEADROOM] = 0x25;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("shorter than its virtio-net header", vec![0; HEADROOM - 1]),
        ("no packet", vec![0; HEADROOM]),
        ("checksum field beyond", read(lone_csum(20, 60), &datagram)),
        ("checksum field beyond", read(lone_csum(4000, 0), &datagram)),
        ("header under 20 bytes", tso(&segment, 0x40)),
        ("shorter than its TCP header", tso(&segment[..30], 0x50)),
        ("neither IPv4 nor IPv6", not_ip),
    ];
    for (what, mut raw) in cases {
        let err = unpack(&mut raw, &mut bufs, &mut sizes).expect_err(what);
        assert_eq!(err.raw_os_error(), None, "{what}");
        assert!(err.to_string().contains(what), "{what}: {err}");
    }
}
