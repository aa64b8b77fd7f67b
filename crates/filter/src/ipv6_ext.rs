//! IPv6 extension headers: skipped to reach the transport header, so a
//! hop-by-hop or fragment header cannot hide a packet's ports.

use crate::packet::{FragmentHeader, IpHeader, PacketError, array_at, be16};

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTHENTICATION: u8 = 51;
const DESTINATION_OPTIONS: u8 = 60;

/// Extension headers walked before giving up; real packets carry one or two.
const MAX_EXTENSION_HEADERS: usize = 8;

/// Advances `header.proto`/`header.payload` past the extension headers and
/// records a fragment header in `header.fragment`. Stops at the first
/// non-extension protocol, or right after the fragment header of a
/// non-first fragment (what follows is fragment data).
pub(crate) fn walk_extension_headers(header: &mut IpHeader<'_>) -> Result<(), PacketError> {
    let mut seen_fragment = false;
    for _ in 0..MAX_EXTENSION_HEADERS {
        let kind = header.proto;
        let bad = PacketError::BadExtensionHeader { next_header: kind };
        let payload = header.payload;
        let length = match kind {
            HOP_BY_HOP | ROUTING | DESTINATION_OPTIONS => {
                (usize::from(*payload.get(1).ok_or(bad)?) + 1) * 8
            }
            AUTHENTICATION => (usize::from(*payload.get(1).ok_or(bad)?) + 2) * 4,
            FRAGMENT => {
                let (Some(&next), Some(offset_flags), Some(id), false) = (
                    payload.first(),
                    be16(payload, 2),
                    array_at::<4>(payload, 4),
                    seen_fragment,
                ) else {
                    return Err(bad);
                };
                seen_fragment = true;
                // An atomic fragment (offset 0, M clear) is a whole packet.
                if offset_flags & 0xfff9 != 0 {
                    header.fragment = Some(FragmentHeader {
                        offset: offset_flags >> 3,
                        id: u32::from_be_bytes(id),
                        proto: next,
                    });
                }
                8
            }
            _ => return Ok(()),
        };
        let (Some(&next), Some(rest)) = (payload.first(), payload.get(length..)) else {
            return Err(bad);
        };
        header.proto = next;
        header.payload = rest;
        if header.fragment.is_some_and(|f| f.offset != 0) {
            return Ok(());
        }
    }
    Err(PacketError::TooManyExtensionHeaders)
}
