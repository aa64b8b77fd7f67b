//! Packet batches between the data plane and its I/O: a TUN read (one read
//! can carry a TSO super-packet split into many segments), the decrypted
//! packets waiting to be written to the TUN (coalesced there with GRO), and
//! the encrypted datagrams waiting to go out on the UDP socket (sent with
//! UDP GSO). Every buffer is allocated once, when the batch is made; a
//! packet never allocates.

use std::net::SocketAddr;

/// Room before each packet in a TUN buffer: the virtio-net header that an
/// offload-capable TUN device reads and writes in front of every packet.
pub const HEADROOM: usize = tun_rs::VIRTIO_NET_HDR_LEN;
/// Largest IP packet (a TSO or GRO super-packet).
pub const MAX_PACKET: usize = 65_535;
/// Packets in one batch (wireguard-go's and tun-rs's figure).
pub const BATCH: usize = tun_rs::IDEAL_BATCH_SIZE;
/// A buffer for one segment: an overlay MTU packet with room to spare.
const SEGMENT_BUF: usize = 2_048;
/// WireGuard's data message overhead: 16 bytes of header, 16 of tag.
pub const WIREGUARD_OVERHEAD: usize = 32;
/// Largest datagram a packet of [`SEGMENT_BUF`] can become (and the least
/// boringtun wants as room for a handshake message).
const MAX_DATAGRAM: usize = SEGMENT_BUF + WIREGUARD_OVERHEAD;
/// Most bytes one GSO send may carry: the kernel builds it as one UDP
/// datagram first, so it must fit in 65,535 bytes with the outer IPv6 and
/// UDP headers (a larger send fails with EMSGSIZE and is lost whole).
pub const MAX_GSO_BYTES: usize = 65_535 - 40 - 8;

/// The packets of one TUN read.
pub struct TunReadBatch {
    /// The raw read: virtio-net header and the unsplit packet.
    pub(crate) original: Vec<u8>,
    /// The read's one packet was left in `original`, after the header:
    /// its length. A lone packet (a ping, a request, a datagram) needs
    /// no split, so it is neither copied nor another buffer touched.
    in_place: Option<usize>,
    /// One packet each; the first is large enough for any unsplit packet.
    pub(crate) bufs: Vec<Vec<u8>>,
    /// Length of the packet in each buffer.
    pub(crate) sizes: Vec<usize>,
    /// How many buffers hold a packet.
    pub(crate) count: usize,
    /// How many of them were handled (a full UDP send buffer can stop
    /// the data plane in the middle of a read).
    taken: usize,
}

impl Default for TunReadBatch {
    fn default() -> Self {
        let mut bufs = vec![vec![0; SEGMENT_BUF]; BATCH];
        if let Some(first) = bufs.first_mut() {
            *first = vec![0; MAX_PACKET];
        }
        Self {
            original: vec![0; HEADROOM + MAX_PACKET],
            in_place: None,
            bufs,
            sizes: vec![0; BATCH],
            count: 0,
            taken: 0,
        }
    }
}

impl TunReadBatch {
    /// The packets read, in order.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.count).filter_map(|i| self.packet(i))
    }

    /// The next packet not yet handled ([`advance`](Self::advance)).
    pub fn pending(&self) -> Option<&[u8]> {
        if self.taken >= self.count {
            return None;
        }
        self.packet(self.taken)
    }

    /// The read's packet `i`, where it lies.
    fn packet(&self, i: usize) -> Option<&[u8]> {
        match self.in_place {
            Some(len) if i == 0 => self.original.get(HEADROOM..HEADROOM.checked_add(len)?),
            _ => self.bufs.get(i)?.get(..*self.sizes.get(i)?),
        }
    }

    /// The pending packet was handled.
    pub fn advance(&mut self) {
        self.taken += 1;
    }

    /// Whether a packet of the last read waits to be handled.
    pub fn has_pending(&self) -> bool {
        self.taken < self.count
    }

    /// A new read's packets, none handled yet, in the split buffers.
    pub(crate) fn set_count(&mut self, count: usize) {
        self.count = count;
        self.taken = 0;
        self.in_place = None;
    }

    /// A new read's one packet, `len` bytes left in `original` after the
    /// virtio-net header.
    pub(crate) fn set_in_place(&mut self, len: usize) {
        self.count = 1;
        self.taken = 0;
        self.in_place = Some(len);
    }

    /// The buffer a device without offloads reads its one packet into.
    pub(crate) fn single_buffer(&mut self) -> &mut [u8] {
        self.set_count(0);
        self.bufs.first_mut().map_or(&mut [][..], Vec::as_mut_slice)
    }

    /// Records that the single buffer holds a packet of `len` bytes.
    pub(crate) fn set_single(&mut self, len: usize) {
        if let Some(size) = self.sizes.first_mut() {
            *size = len;
            self.set_count(1);
        }
    }
}

/// Decrypted packets waiting for the TUN, each after [`HEADROOM`] bytes.
/// A device with offloads coalesces consecutive segments of one TCP flow
/// into one write, which is why a buffer can hold a whole super-packet.
pub struct TunWriteBatch {
    pub(crate) bufs: Vec<Vec<u8>>,
    pub(crate) count: usize,
    pub(crate) gro: tun_rs::GROTable,
    /// A packet committed since the last [`take_answered`](Self::take_answered)
    /// may be answered by the local stack while it is written.
    answered: bool,
}

impl Default for TunWriteBatch {
    fn default() -> Self {
        Self {
            bufs: (0..BATCH)
                .map(|_| Vec::with_capacity(HEADROOM + MAX_PACKET))
                .collect(),
            count: 0,
            gro: tun_rs::GROTable::default(),
            answered: false,
        }
    }
}

impl TunWriteBatch {
    /// Whether another packet fits.
    pub fn is_full(&self) -> bool {
        self.count >= self.bufs.len()
    }

    /// Whether no packet is waiting.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Room for the next packet, at least `room` bytes (at most
    /// [`MAX_PACKET`]); `None` when the batch is full. What is written
    /// there counts only after [`commit`](Self::commit).
    pub fn slot(&mut self, room: usize) -> Option<&mut [u8]> {
        let buf = self.bufs.get_mut(self.count)?;
        buf.resize(HEADROOM + room.min(MAX_PACKET), 0);
        buf.get_mut(HEADROOM..)
    }

    /// Keeps the first `len` bytes written into the current slot as a packet.
    /// Inlined into the receive path: out of line (as the compiler left it)
    /// a ping round trip ran its code on one page more (`footprint.sh`).
    #[inline(always)]
    pub fn commit(&mut self, len: usize) {
        if let Some(buf) = self.bufs.get_mut(self.count) {
            buf.truncate(HEADROOM + len);
            self.answered |=
                ztmesh_filter::answered_at_once(buf.get(HEADROOM..).unwrap_or_default());
            self.count += 1;
        }
    }

    /// Whether a packet committed since the last call may have been
    /// answered by the local stack while it was written (an echo request,
    /// a TCP segment), so that a read of the device right after the write
    /// finds the answer without waiting for epoll; clears it.
    pub fn take_answered(&mut self) -> bool {
        std::mem::take(&mut self.answered)
    }

    /// The waiting packets, in order (without their headroom).
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs
            .iter()
            .take(self.count)
            .filter_map(|b| b.get(HEADROOM..))
    }

    /// Forgets the waiting packets (after they were written).
    pub fn clear(&mut self) {
        self.count = 0;
    }
}

/// Encrypted datagrams waiting for the UDP socket, back to back in one
/// buffer. Consecutive datagrams to one endpoint with one size (the last
/// may be shorter) go out as one GSO send. A flush that finds the socket's
/// buffer full stops and goes on later from the first datagram not sent.
pub struct UdpSendBatch {
    buf: Vec<u8>,
    used: usize,
    datagrams: Vec<Datagram>,
    /// Datagrams already sent, from the front.
    sent: usize,
}

/// Where one datagram of a [`UdpSendBatch`] lies and where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Datagram {
    start: usize,
    len: usize,
    to: SocketAddr,
}

/// A run of datagrams sent with one system call.
#[derive(Debug, PartialEq, Eq)]
pub struct Run<'a> {
    /// Where they go.
    pub to: SocketAddr,
    /// The datagrams, back to back.
    pub contents: &'a [u8],
    /// Size of each but the last, which may be shorter; `None` for one datagram.
    pub segment_size: Option<usize>,
    /// How many datagrams it holds.
    pub count: usize,
}

impl Default for UdpSendBatch {
    fn default() -> Self {
        Self {
            buf: vec![0; MAX_PACKET + MAX_DATAGRAM],
            used: 0,
            datagrams: Vec::with_capacity(BATCH),
            sent: 0,
        }
    }
}

impl UdpSendBatch {
    /// Whether another datagram of up to `len` bytes may not fit: flush first.
    pub fn needs_flush(&self, len: usize) -> bool {
        self.datagrams.len() >= BATCH
            || self.buf.len() - self.used < (len + WIREGUARD_OVERHEAD).max(MAX_DATAGRAM)
    }

    /// Room to encrypt the next datagram into.
    pub fn room(&mut self) -> &mut [u8] {
        self.buf.get_mut(self.used..).unwrap_or_default()
    }

    /// Keeps the first `len` bytes written into [`room`](Self::room) as a
    /// datagram for `to`.
    pub fn commit(&mut self, len: usize, to: SocketAddr) {
        let len = len.min(self.buf.len() - self.used);
        self.datagrams.push(Datagram {
            start: self.used,
            len,
            to,
        });
        self.used += len;
    }

    /// Whether nothing waits to be sent.
    pub fn is_empty(&self) -> bool {
        self.sent >= self.datagrams.len()
    }

    /// The one waiting datagram and where it goes, when exactly one waits.
    pub fn lone(&self) -> Option<(SocketAddr, &[u8])> {
        match self.datagrams.get(self.sent..)? {
            [one] => Some((one.to, self.buf.get(one.start..one.start + one.len)?)),
            _ => None,
        }
    }

    /// The datagrams not yet sent, grouped into runs of at most
    /// `max_segments`.
    pub fn runs(&self, max_segments: usize) -> Runs<'_> {
        Runs {
            batch: self,
            next: self.sent,
            max_segments: max_segments.max(1),
        }
    }

    /// The first `count` datagrams not yet sent went out (or are given up).
    pub fn mark_sent(&mut self, count: usize) {
        self.sent = (self.sent + count).min(self.datagrams.len());
    }

    /// Forgets the waiting datagrams (after they were sent).
    pub fn clear(&mut self) {
        self.used = 0;
        self.sent = 0;
        self.datagrams.clear();
    }
}

/// Iterator over the GSO runs of a [`UdpSendBatch`].
pub struct Runs<'a> {
    batch: &'a UdpSendBatch,
    next: usize,
    max_segments: usize,
}

impl<'a> Iterator for Runs<'a> {
    type Item = Run<'a>;

    fn next(&mut self) -> Option<Run<'a>> {
        let datagrams = self.batch.datagrams.get(self.next..)?;
        let first = *datagrams.first()?;
        let mut count = 1;
        let mut end = first.start + first.len;
        for d in datagrams.iter().skip(1).take(self.max_segments - 1) {
            // Contiguous, same endpoint, not longer than the first; a
            // shorter one ends the run.
            if d.to != first.to
                || d.len > first.len
                || d.start != end
                || end - first.start + d.len > MAX_GSO_BYTES
            {
                break;
            }
            count += 1;
            end += d.len;
            if d.len < first.len {
                break;
            }
        }
        self.next += count;
        let contents = self.batch.buf.get(first.start..end)?;
        Some(Run {
            to: first.to,
            contents,
            segment_size: (count > 1).then_some(first.len),
            count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(batch: &mut UdpSendBatch, len: usize, to: SocketAddr, fill: u8) {
        batch.room()[..len].fill(fill);
        batch.commit(len, to);
    }

    #[test]
    fn datagrams_of_one_size_to_one_endpoint_make_one_run_ending_at_a_shorter_one() {
        let a: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:51820".parse().unwrap();
        let mut batch = UdpSendBatch::default();
        for i in 0..3 {
            push(&mut batch, 100, a, i);
        }
        push(&mut batch, 40, a, 9); // shorter: ends the run
        push(&mut batch, 100, a, 10); // starts a new one
        push(&mut batch, 100, b, 11); // other endpoint
        push(&mut batch, 120, b, 12); // longer: its own run
        let runs: Vec<_> = batch.runs(64).collect();
        let shape: Vec<_> = runs
            .iter()
            .map(|r| (r.to, r.contents.len(), r.segment_size))
            .collect();
        assert_eq!(
            shape,
            vec![
                (a, 340, Some(100)),
                (a, 100, None),
                (b, 100, None),
                (b, 120, None)
            ]
        );
        assert_eq!(runs[0].contents[300], 9);
        assert_eq!(runs[3].contents[0], 12);
        // The segment limit splits long runs.
        let limited: Vec<_> = batch.runs(2).map(|r| r.contents.len()).collect();
        assert_eq!(limited, vec![200, 140, 100, 100, 120]);
        batch.clear();
        // So does the kernel's limit on the bytes of one send.
        while !batch.needs_flush(1_420) {
            push(&mut batch, 1_452, a, 1);
        }
        let runs: Vec<_> = batch.runs(64).collect();
        assert!(
            runs.len() >= 2,
            "{} datagrams in one run",
            runs[0].contents.len()
        );
        for run in &runs {
            assert!(
                run.contents.len() <= MAX_GSO_BYTES,
                "{}",
                run.contents.len()
            );
            assert_eq!(run.contents.len() % 1_452, 0);
        }
        batch.clear();
        assert!(batch.is_empty());
        assert_eq!(batch.runs(64).count(), 0);
    }

    #[test]
    fn a_full_batch_asks_to_be_flushed() {
        let a: SocketAddr = "192.0.2.1:51820".parse().unwrap();
        let mut batch = UdpSendBatch::default();
        let mut pushed = 0;
        while !batch.needs_flush(1_420) {
            // While no flush is asked for, the next datagram fits.
            assert!(batch.room().len() >= 1_452);
            push(&mut batch, 1_452, a, 0);
            pushed += 1;
        }
        // 64 KiB of 1,452-byte datagrams.
        assert!(pushed >= 44, "{pushed}");
    }

    #[test]
    fn tun_write_slots_count_only_when_committed() {
        let mut batch = TunWriteBatch::default();
        let slot = batch.slot(1_500).unwrap();
        assert_eq!(slot.len(), 1_500);
        slot[..3].copy_from_slice(&[1, 2, 3]);
        assert!(batch.is_empty());
        batch.commit(3);
        // An uncommitted slot is reused.
        batch.slot(10).unwrap()[0] = 7;
        let packets: Vec<_> = batch.packets().collect();
        assert_eq!(packets, vec![&[1u8, 2, 3][..]]);
        for _ in 1..BATCH {
            batch.slot(1).unwrap();
            batch.commit(1);
        }
        assert!(batch.is_full());
        assert!(batch.slot(1).is_none());
        batch.clear();
        assert!(batch.is_empty());
    }

    /// An IPv4 packet of `proto` whose transport header starts with `first`.
    fn v4(proto: u8, first: u8) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[9] = proto;
        p[20] = first;
        p
    }

    #[test]
    fn the_batch_remembers_an_answerable_packet_until_asked() {
        let mut batch = TunWriteBatch::default();
        for packet in [v4(17, 0), v4(1, 0)] {
            batch
                .slot(packet.len())
                .expect("room")
                .copy_from_slice(&packet);
            batch.commit(packet.len());
        }
        assert!(!batch.take_answered(), "UDP and an echo reply");
        let request = v4(1, 8);
        batch
            .slot(request.len())
            .expect("room")
            .copy_from_slice(&request);
        batch.commit(request.len());
        batch.clear();
        assert!(batch.take_answered(), "kept across the write");
        assert!(!batch.take_answered(), "taken");
    }

    #[test]
    fn a_read_left_in_place_is_one_packet_until_the_next_read() {
        let mut batch = TunReadBatch::default();
        batch.original[HEADROOM..HEADROOM + 3].copy_from_slice(&[4, 5, 6]);
        batch.bufs[0][..2].copy_from_slice(&[1, 2]);
        batch.set_in_place(3);
        assert_eq!(batch.packets().collect::<Vec<_>>(), vec![&[4u8, 5, 6][..]]);
        assert_eq!(batch.pending(), Some(&[4u8, 5, 6][..]));
        batch.advance();
        assert!(!batch.has_pending());
        // A read that was split is read from the buffers again.
        batch.sizes[0] = 2;
        batch.set_count(1);
        assert_eq!(batch.pending(), Some(&[1u8, 2][..]));
        batch.set_in_place(HEADROOM + MAX_PACKET);
        assert_eq!(batch.pending(), None, "longer than the buffer: nothing");
    }
}
