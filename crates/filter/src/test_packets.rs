//! Hand-built IPv4/IPv6 packets for tests (checksums are left zero: the
//! filter does not verify them).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(crate) const V4_A: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1));
pub(crate) const V4_B: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2));
pub(crate) const V4_C: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 64, 0, 3));
pub(crate) const V6_A: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd7a, 0, 0, 0, 0, 0, 0, 1));
pub(crate) const V6_B: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd7a, 0, 0, 0, 0, 0, 0, 2));

/// Builder for one test packet.
pub(crate) struct PacketBuilder {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    /// Transport header without payload.
    transport: Vec<u8>,
    payload: Vec<u8>,
    ipv4_options: Vec<u8>,
    /// IPv4 (identification, flags and fragment offset field).
    ipv4_fragment: (u16, u16),
    /// IPv6 extension headers (kind, bytes); byte 0 is set to the next header.
    ipv6_extensions: Vec<(u8, Vec<u8>)>,
}

impl PacketBuilder {
    fn new(src: IpAddr, dst: IpAddr, proto: u8, transport: Vec<u8>) -> Self {
        PacketBuilder {
            src,
            dst,
            proto,
            transport,
            payload: Vec::new(),
            ipv4_options: Vec::new(),
            ipv4_fragment: (0, 0),
            ipv6_extensions: Vec::new(),
        }
    }

    /// TCP segment with ACK set and a 20-byte header.
    pub(crate) fn tcp(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Self {
        let mut header = vec![0u8; 20];
        header[0..2].copy_from_slice(&src_port.to_be_bytes());
        header[2..4].copy_from_slice(&dst_port.to_be_bytes());
        header[12] = 5 << 4;
        header[13] = 0x10;
        Self::new(src, dst, 6, header)
    }

    /// UDP datagram.
    pub(crate) fn udp(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Self {
        let mut header = vec![0u8; 8];
        header[0..2].copy_from_slice(&src_port.to_be_bytes());
        header[2..4].copy_from_slice(&dst_port.to_be_bytes());
        Self::new(src, dst, 17, header)
    }

    /// ICMP message of the address family's own ICMP version.
    pub(crate) fn icmp(src: IpAddr, dst: IpAddr, icmp_type: u8, code: u8) -> Self {
        let proto = if src.is_ipv6() { 58 } else { 1 };
        Self::new(src, dst, proto, vec![icmp_type, code, 0, 0, 0, 0, 0, 0])
    }

    /// ICMP(v6) echo request with `identifier`.
    pub(crate) fn echo_request(src: IpAddr, dst: IpAddr, identifier: u16) -> Self {
        let icmp_type = if src.is_ipv6() { 128 } else { 8 };
        Self::icmp(src, dst, icmp_type, 0).identifier(identifier)
    }

    /// ICMP(v6) echo reply with `identifier`.
    pub(crate) fn echo_reply(src: IpAddr, dst: IpAddr, identifier: u16) -> Self {
        let icmp_type = if src.is_ipv6() { 129 } else { 0 };
        Self::icmp(src, dst, icmp_type, 0).identifier(identifier)
    }

    /// ICMP error of type `icmp_type` quoting (the start of) `quoted`.
    pub(crate) fn icmp_error(
        src: IpAddr,
        dst: IpAddr,
        icmp_type: u8,
        code: u8,
        quoted: &[u8],
    ) -> Self {
        Self::icmp(src, dst, icmp_type, code).payload(quoted)
    }

    /// Any protocol number with `body` as its whole payload.
    pub(crate) fn raw(src: IpAddr, dst: IpAddr, proto: u8, body: &[u8]) -> Self {
        Self::new(src, dst, proto, body.to_vec())
    }

    fn identifier(mut self, identifier: u16) -> Self {
        self.transport[4..6].copy_from_slice(&identifier.to_be_bytes());
        self
    }

    /// Sets the TCP flags byte.
    pub(crate) fn flags(mut self, flags: u8) -> Self {
        self.transport[13] = flags;
        self
    }

    /// Appends TCP options (multiple of 4 bytes) and bumps the data offset.
    pub(crate) fn tcp_options(mut self, options: &[u8]) -> Self {
        assert_eq!(options.len() % 4, 0);
        self.transport.extend_from_slice(options);
        self.transport[12] = u8::try_from(self.transport.len() / 4).unwrap() << 4;
        self
    }

    /// Sets the application payload.
    pub(crate) fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// IPv4 options (multiple of 4 bytes); raises the IHL.
    pub(crate) fn ipv4_options(mut self, options: &[u8]) -> Self {
        assert_eq!(options.len() % 4, 0);
        self.ipv4_options = options.to_vec();
        self
    }

    /// Marks an IPv4 packet as a fragment (offset in 8-byte units).
    pub(crate) fn ipv4_fragment(mut self, id: u16, offset: u16, more: bool) -> Self {
        self.ipv4_fragment = (id, offset | if more { 0x2000 } else { 0 });
        self
    }

    /// Appends an IPv6 extension header given whole; its first byte is
    /// overwritten with the next header when built.
    pub(crate) fn ipv6_extension(mut self, kind: u8, header: &[u8]) -> Self {
        self.ipv6_extensions.push((kind, header.to_vec()));
        self
    }

    /// Appends an IPv6 fragment header (offset in 8-byte units).
    pub(crate) fn ipv6_fragment(self, id: u32, offset: u16, more: bool) -> Self {
        let mut header = vec![0u8; 8];
        header[2..4].copy_from_slice(&((offset << 3) | u16::from(more)).to_be_bytes());
        header[4..8].copy_from_slice(&id.to_be_bytes());
        self.ipv6_extension(44, &header)
    }

    /// Serializes the packet.
    pub(crate) fn build(&self) -> Vec<u8> {
        let body_len = self.transport.len() + self.payload.len();
        let mut out = match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let header_len = 20 + self.ipv4_options.len();
                let total = u16::try_from(header_len + body_len).unwrap();
                let mut h = vec![0u8; 20];
                h[0] = 0x40 | u8::try_from(header_len / 4).unwrap();
                h[2..4].copy_from_slice(&total.to_be_bytes());
                h[4..6].copy_from_slice(&self.ipv4_fragment.0.to_be_bytes());
                h[6..8].copy_from_slice(&self.ipv4_fragment.1.to_be_bytes());
                h[8] = 64;
                h[9] = self.proto;
                h[12..16].copy_from_slice(&src.octets());
                h[16..20].copy_from_slice(&dst.octets());
                h.extend_from_slice(&self.ipv4_options);
                h
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let kinds: Vec<u8> = self.ipv6_extensions.iter().map(|(k, _)| *k).collect();
                let mut extensions = Vec::new();
                for (i, (_, header)) in self.ipv6_extensions.iter().enumerate() {
                    let mut header = header.clone();
                    header[0] = kinds.get(i + 1).copied().unwrap_or(self.proto);
                    extensions.extend_from_slice(&header);
                }
                let payload_len = u16::try_from(extensions.len() + body_len).unwrap();
                let mut h = vec![0u8; 40];
                h[0] = 0x60;
                h[4..6].copy_from_slice(&payload_len.to_be_bytes());
                h[6] = kinds.first().copied().unwrap_or(self.proto);
                h[7] = 64;
                h[8..24].copy_from_slice(&src.octets());
                h[24..40].copy_from_slice(&dst.octets());
                h.extend_from_slice(&extensions);
                h
            }
            _ => panic!("mixed address families"),
        };
        out.extend_from_slice(&self.transport);
        out.extend_from_slice(&self.payload);
        out
    }
}
