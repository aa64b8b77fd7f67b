use super::*;

/// RFC 5769 section 2.2, "Sample IPv4 Response": 192.0.2.1:32853.
const RFC5769_IPV4_RESPONSE: [u8; 80] = [
    0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86,
    0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76, 0x65, 0x63,
    0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43,
    0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9,
    0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
];
const RFC5769_ID: TransactionId = [
    0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
];

/// RFC 5769 section 2.3: the XOR-MAPPED-ADDRESS of the IPv6 response,
/// [2001:db8:1234:5678:11:2233:4455:6677]:32853.
const RFC5769_IPV6_XOR_MAPPED: [u8; 24] = [
    0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79,
    0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
];

#[test]
fn rfc5769_ipv4_response_decodes() {
    let seen = parse_binding_response(&RFC5769_IPV4_RESPONSE, &RFC5769_ID).unwrap();
    assert_eq!(seen, "192.0.2.1:32853".parse().unwrap());
    assert!(is_stun(&RFC5769_IPV4_RESPONSE));
    // Another transaction's answer is not ours.
    let other = [0u8; 12];
    assert_eq!(
        parse_binding_response(&RFC5769_IPV4_RESPONSE, &other),
        Err(StunError::NotStun)
    );
}

#[test]
fn rfc5769_ipv6_address_decodes_and_encodes() {
    let mut message = vec![0x01, 0x01, 0x00, 0x18, 0x21, 0x12, 0xa4, 0x42];
    message.extend_from_slice(&RFC5769_ID);
    message.extend_from_slice(&RFC5769_IPV6_XOR_MAPPED);
    let seen = parse_binding_response(&message, &RFC5769_ID).unwrap();
    let expected: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
        .parse()
        .unwrap();
    assert_eq!(seen, expected);
    // Our encoder writes the same attribute bytes.
    let ours = binding_response(&RFC5769_ID, expected, "ztmesh");
    assert_eq!(ours.get(20..44).unwrap(), &RFC5769_IPV6_XOR_MAPPED);
}

#[test]
fn request_response_round_trip() {
    let id = [7u8; 12];
    let request = binding_request(&id);
    assert!(is_stun(&request));
    assert_eq!(parse_binding_request(&request), Ok(id));
    for seen in ["203.0.113.9:41641", "[2001:db8::9]:51820"] {
        let seen: SocketAddr = seen.parse().unwrap();
        let response = binding_response(&id, seen, "ztmesh 0.1.0");
        assert_eq!(response.len() % 4, 0);
        assert_eq!(parse_binding_response(&response, &id), Ok(seen));
        assert_eq!(
            parse_binding_request(&response),
            Err(StunError::UnexpectedType(0x0101))
        );
    }
}

#[test]
fn wireguard_and_garbage_are_not_stun_and_never_panic() {
    // WireGuard messages start with type 1..=4 and three zero bytes.
    assert!(!is_stun(&[1, 0, 0, 0, 0x21, 0x12, 0xa4, 0x42]));
    assert!(!is_stun(&[4, 0, 0, 0, 9, 9, 9, 9]));
    assert_eq!(parse_binding_request(&[0; 3]), Err(StunError::Truncated));
    let id = [1u8; 12];
    let good = binding_response(&id, "192.0.2.1:1".parse().unwrap(), "x");
    // Every truncation and every single-byte corruption is an error or a
    // clean parse, never a panic.
    for cut in 0..good.len() {
        let _ = parse_binding_response(good.get(..cut).unwrap(), &id);
    }
    for i in 0..good.len() {
        for v in [0u8, 0xff, 0x13] {
            let mut bad = good.clone();
            bad[i] = v;
            let _ = parse_binding_response(&bad, &id);
            let _ = parse_binding_request(&bad);
        }
    }
    // A length that runs past the end.
    let mut long = good.clone();
    long[3] = 0xfc;
    assert_eq!(
        parse_binding_response(&long, &id),
        Err(StunError::Truncated)
    );
}
