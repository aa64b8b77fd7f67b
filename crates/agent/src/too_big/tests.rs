use super::*;

/// An IPv4 packet of `len` bytes: `proto`, `flags` (DF, offset), from
/// 100.64.0.1 to 100.64.0.2, the payload counting up.
fn v4(len: usize, proto: u8, flags: u16) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|i| i as u8).collect();
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6..8].copy_from_slice(&flags.to_be_bytes());
    p[8] = 63;
    p[9] = proto;
    p[12..16].copy_from_slice(&[100, 64, 0, 1]);
    p[16..20].copy_from_slice(&[100, 64, 0, 2]);
    p
}

/// An IPv6 packet of `len` bytes with next header `next`, fd00::1 to fd00::2.
fn v6(len: usize, next: u8) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|i| i as u8).collect();
    p[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    p[6] = next;
    p[7] = 63;
    p[8..24].copy_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets());
    p[24..40].copy_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
    p
}

/// Whether the one's complement sum of `words`, checksum included, is
/// all ones (a correct checksum), computed the long way.
fn sums_to_ones(parts: &[&[u8]]) -> bool {
    let bytes: Vec<u8> = parts.concat();
    let mut sum: u64 = 0;
    for pair in bytes.chunks(2) {
        let hi = u64::from(pair[0]) << 8;
        let lo = pair.get(1).copied().map_or(0, u64::from);
        sum += hi | lo;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

const TCP: u8 = 6;
const UDP: u8 = 17;

#[test]
fn a_full_size_ipv4_packet_with_df_gets_fragmentation_needed_from_its_destination() {
    let packet = v4(1_420, TCP, DONT_FRAGMENT);
    assert!(must_not_fragment(&packet));
    let mut out = [0u8; 2_048];
    let len = answer(&packet, 1_372, &mut out).unwrap();
    let a = &out[..len];
    assert_eq!(len, 576, "the answer fills the 576 bytes every host takes");
    assert_eq!(a[0], 0x45);
    assert_eq!(u16::from_be_bytes([a[2], a[3]]), 576);
    assert_eq!(a[9], ICMP);
    assert_eq!(a[6..8], [0, 0], "the answer itself may be fragmented");
    assert_eq!(a[12..16], [100, 64, 0, 2], "from the packet's destination");
    assert_eq!(a[16..20], [100, 64, 0, 1], "to its source");
    assert!(sums_to_ones(&[&a[..20]]), "IPv4 header checksum");
    let icmp = &a[20..];
    assert_eq!(
        (icmp[0], icmp[1]),
        (3, 4),
        "fragmentation needed and DF set"
    );
    assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1_372);
    assert!(sums_to_ones(&[icmp]), "ICMP checksum");
    assert_eq!(&icmp[8..], &packet[..548], "quotes the packet's start");
}

#[test]
fn a_short_ipv4_packet_is_quoted_whole() {
    let packet = v4(60, UDP, DONT_FRAGMENT);
    let mut out = [0u8; 2_048];
    let len = answer(&packet, 1_372, &mut out).unwrap();
    assert_eq!(len, 28 + 60);
    assert_eq!(&out[28..len], &packet[..]);
    assert!(sums_to_ones(&[&out[20..len]]));
}

#[test]
fn ipv4_without_df_may_be_fragmented() {
    assert!(!must_not_fragment(&v4(1_420, TCP, 0)));
    assert!(!must_not_fragment(&[]));
    assert!(!must_not_fragment(&[0x45, 0, 0]));
}

#[test]
fn ipv6_packets_always_get_packet_too_big() {
    let packet = v6(1_420, TCP);
    assert!(must_not_fragment(&packet));
    let mut out = [0u8; 2_048];
    let len = answer(&packet, 1_352, &mut out).unwrap();
    let a = &out[..len];
    assert_eq!(len, 1_280, "the answer fills the minimum IPv6 MTU");
    assert_eq!(a[0] >> 4, 6);
    assert_eq!(usize::from(u16::from_be_bytes([a[4], a[5]])), len - 40);
    assert_eq!((a[6], a[7]), (ICMPV6, HOP_LIMIT));
    assert_eq!(a[8..24], packet[24..40], "from the packet's destination");
    assert_eq!(a[24..40], packet[8..24], "to its source");
    let icmp = &a[40..];
    assert_eq!((icmp[0], icmp[1]), (2, 0), "packet too big");
    assert_eq!(u32::from_be_bytes(icmp[4..8].try_into().unwrap()), 1_352);
    assert_eq!(&icmp[8..], &packet[..1_232]);
    // The pseudo-header: source, destination, upper-layer length, next header.
    let length = (icmp.len() as u32).to_be_bytes();
    assert!(sums_to_ones(&[
        &a[8..24],
        &a[24..40],
        &length,
        &[0, 0, 0, ICMPV6],
        icmp
    ]));
}

#[test]
fn errors_are_never_answered_with_errors() {
    let mut out = [0u8; 2_048];
    for (kind, answered) in [(8, true), (0, true), (3, false), (11, false), (12, false)] {
        let mut packet = v4(1_420, ICMP, DONT_FRAGMENT);
        packet[20] = kind;
        assert_eq!(
            answer(&packet, 1_372, &mut out).is_some(),
            answered,
            "ICMP type {kind}"
        );
    }
    for (kind, answered) in [(128, true), (129, true), (1, false), (2, false), (4, false)] {
        let mut packet = v6(1_420, ICMPV6);
        packet[40] = kind;
        assert_eq!(
            answer(&packet, 1_352, &mut out).is_some(),
            answered,
            "ICMPv6 type {kind}"
        );
    }
}

#[test]
fn later_fragments_and_addresses_that_cannot_answer_get_nothing() {
    let mut out = [0u8; 2_048];
    let later = v4(1_420, UDP, DONT_FRAGMENT | 185);
    assert_eq!(answer(&later, 1_372, &mut out), None);
    for (at, addr) in [(12, [0, 0, 0, 0]), (16, [224, 0, 0, 1]), (16, [255; 4])] {
        let mut packet = v4(1_420, UDP, DONT_FRAGMENT);
        packet[at..at + 4].copy_from_slice(&addr);
        assert_eq!(answer(&packet, 1_372, &mut out), None, "{addr:?}");
    }
    let mut multicast = v6(1_420, UDP);
    multicast[24..40].copy_from_slice(&"ff02::1".parse::<Ipv6Addr>().unwrap().octets());
    assert_eq!(answer(&multicast, 1_352, &mut out), None);
}

#[test]
fn truncated_or_foreign_bytes_and_small_buffers_get_nothing() {
    let mut out = [0u8; 2_048];
    let packets = [v4(1_420, TCP, DONT_FRAGMENT), v6(1_420, TCP)];
    for packet in &packets {
        for cut in 0..60 {
            // Never panics; a cut header is never answered.
            let answered = answer(&packet[..cut], 1_372, &mut out);
            let header = if packet[0] >> 4 == 4 { 20 } else { 40 };
            if cut < header {
                assert_eq!(answered, None, "cut at {cut}");
            }
        }
        assert_eq!(answer(packet, 1_372, &mut out[..100]), None);
    }
    assert_eq!(answer(&[0x55; 100], 1_372, &mut out), None);
    // An IPv4 header length below 20 bytes.
    let mut short_ihl = v4(100, TCP, DONT_FRAGMENT);
    short_ihl[0] = 0x44;
    assert_eq!(answer(&short_ihl, 1_372, &mut out), None);
}
