//! The few things the udp data path does to an IPv4 packet: read its destination, take one off
//! its TTL (keeping the header checksum right), and answer an undeliverable one with ICMP
//! "destination net unreachable". Pure functions over byte slices.

use std::net::Ipv4Addr;

const ICMP: u8 = 1;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_NET_UNREACH: u8 = 0;
/// flannel sends its ICMP errors with TTL 8; they only ever travel back to a local pod.
const ICMP_TTL: u8 = 8;
/// The longest ICMP error built here: our 20-byte header, 8 bytes of ICMP, the offender's
/// header (at most 60 bytes) and 8 bytes of its payload.
pub const ICMP_MAX: usize = 20 + 8 + 60 + 8;

/// The destination of a well-formed IPv4 packet.
pub fn ipv4_dst(p: &[u8]) -> Option<Ipv4Addr> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    if ihl < 20 || ihl > p.len() {
        return None;
    }
    Some(Ipv4Addr::new(p[16], p[17], p[18], p[19]))
}

/// The source of a packet `ipv4_dst` accepted.
pub fn ipv4_src(p: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(p[12], p[13], p[14], p[15])
}

/// Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Decrements the TTL of a packet, updating the checksum incrementally (RFC 1624, eqn. 3).
/// Returns false, leaving the packet as it was, when the TTL would reach zero or the packet
/// is not one `ipv4_dst` accepts: the packet must be dropped.
pub fn decrement_ttl(p: &mut [u8]) -> bool {
    if ipv4_dst(p).is_none() || p[8] <= 1 {
        return false;
    }
    let ttl = p[8];
    let old = u16::from_be_bytes([ttl, p[9]]);
    let new = u16::from_be_bytes([ttl - 1, p[9]]);
    let hc = u16::from_be_bytes([p[10], p[11]]);
    // HC' = ~(~HC + ~m + m')
    let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let hc2 = !(sum as u16);
    p[8] = ttl - 1;
    p[10..12].copy_from_slice(&hc2.to_be_bytes());
    true
}

/// Builds, into `out`, the ICMP "destination net unreachable" answer to `offender`, sent from
/// `from`. Returns its length, or `None` where RFC 1122 (3.2.2) forbids an answer: the
/// offender is itself an ICMP error, a fragment other than the first, or comes from an
/// address that is not one host; and where it is not a packet `ipv4_dst` accepts.
pub fn net_unreachable(offender: &[u8], from: Ipv4Addr, out: &mut [u8; ICMP_MAX]) -> Option<usize> {
    ipv4_dst(offender)?;
    let ihl = usize::from(offender[0] & 0x0f) * 4;
    let src = Ipv4Addr::new(offender[12], offender[13], offender[14], offender[15]);
    if src.is_unspecified() || src.is_broadcast() || src.is_multicast() {
        return None;
    }
    let frag_offset = u16::from_be_bytes([offender[6], offender[7]]) & 0x1fff;
    if frag_offset != 0 {
        return None;
    }
    if offender[9] == ICMP {
        // Only informational messages (echo, timestamp, ...) get an answer; errors never do.
        let kind = offender.get(ihl).copied()?;
        if matches!(kind, 3 | 4 | 5 | 11 | 12) {
            return None;
        }
    }
    let quoted = (ihl + 8).min(offender.len());
    let len = 20 + 8 + quoted;
    out[..len].fill(0);
    out[0] = 0x45;
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    out[8] = ICMP_TTL;
    out[9] = ICMP;
    out[12..16].copy_from_slice(&from.octets());
    out[16..20].copy_from_slice(&src.octets());
    let c = checksum(&out[..20]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    out[20] = ICMP_DEST_UNREACH;
    out[21] = ICMP_NET_UNREACH;
    out[28..len].copy_from_slice(&offender[..quoted]);
    let c = checksum(&out[20..len]);
    out[22..24].copy_from_slice(&c.to_be_bytes());
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 header with a valid checksum and `payload` after it.
    fn packet(proto: u8, ttl: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = ttl;
        p[9] = proto;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let c = checksum(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn destination_of_valid_packets_only() {
        let p = packet(6, 64, [10, 244, 1, 2], [10, 244, 2, 3], &[0; 20]);
        assert_eq!(ipv4_dst(&p), Some(Ipv4Addr::new(10, 244, 2, 3)));
        assert_eq!(ipv4_dst(&p[..19]), None);
        let mut v6 = p.clone();
        v6[0] = 0x60;
        assert_eq!(ipv4_dst(&v6), None);
        let mut bad_ihl = p.clone();
        bad_ihl[0] = 0x44;
        assert_eq!(ipv4_dst(&bad_ihl), None);
        let mut long_ihl = p[..24].to_vec();
        long_ihl[0] = 0x47;
        assert_eq!(ipv4_dst(&long_ihl), None);
    }

    #[test]
    fn ttl_decrement_keeps_the_checksum_valid_for_every_ttl_and_protocol() {
        for ttl in 2..=255u8 {
            for proto in [1u8, 6, 17, 255] {
                let mut p = packet(proto, ttl, [10, 244, 1, 2], [10, 244, 255, 255], &[]);
                assert!(decrement_ttl(&mut p));
                assert_eq!(p[8], ttl - 1);
                assert_eq!(checksum(&p[..20]), 0, "ttl {ttl} proto {proto}");
            }
        }
    }

    #[test]
    fn ttl_of_one_or_zero_means_drop_and_the_packet_is_untouched() {
        for ttl in [0u8, 1] {
            let mut p = packet(6, ttl, [10, 244, 1, 2], [10, 244, 2, 3], &[]);
            let before = p.clone();
            assert!(!decrement_ttl(&mut p));
            assert_eq!(p, before);
        }
    }

    #[test]
    fn short_or_malformed_buffers_are_dropped_not_a_panic() {
        // Found by the fuzz properties udp_ttl_decrement_touches_only_ttl_and_checksum (a
        // buffer of 9 zero bytes) and udp_net_unreachable_answers_within_bounds (an empty
        // one): both indexed the header before checking there was one. The workers check
        // with ipv4_dst first; the functions no longer rely on it.
        let mut out = [0u8; ICMP_MAX];
        let from = Ipv4Addr::new(10, 244, 1, 0);
        for len in [0, 9, 19] {
            let mut p = vec![0u8; len];
            assert!(!decrement_ttl(&mut p));
            assert_eq!(p, vec![0u8; len]);
            assert_eq!(net_unreachable(&p, from, &mut out), None);
        }
        let mut bad_ihl = packet(6, 64, [10, 244, 1, 2], [10, 99, 0, 1], &[]);
        bad_ihl[0] = 0x4f;
        assert!(!decrement_ttl(&mut bad_ihl));
        assert_eq!(net_unreachable(&bad_ihl, from, &mut out), None);
    }

    #[test]
    fn net_unreachable_quotes_the_header_and_eight_bytes() {
        let payload: Vec<u8> = (0..40).collect();
        let offender = packet(6, 63, [10, 244, 1, 2], [10, 99, 0, 1], &payload);
        let mut out = [0u8; ICMP_MAX];
        let n = net_unreachable(&offender, Ipv4Addr::new(10, 244, 1, 0), &mut out).unwrap();
        let icmp = &out[..n];
        assert_eq!(n, 20 + 8 + 20 + 8);
        assert_eq!(icmp[0], 0x45);
        assert_eq!(u16::from_be_bytes([icmp[2], icmp[3]]) as usize, n);
        assert_eq!(icmp[8], 8, "TTL");
        assert_eq!(icmp[9], 1, "protocol ICMP");
        assert_eq!(&icmp[12..16], &[10, 244, 1, 0]);
        assert_eq!(&icmp[16..20], &[10, 244, 1, 2]);
        assert_eq!(checksum(&icmp[..20]), 0);
        assert_eq!((icmp[20], icmp[21]), (3, 0), "destination net unreachable");
        assert_eq!(checksum(&icmp[20..]), 0);
        assert_eq!(&icmp[28..], &offender[..28]);
    }

    #[test]
    fn echo_requests_get_an_answer_errors_fragments_and_broadcasts_do_not() {
        let mut out = [0u8; ICMP_MAX];
        let from = Ipv4Addr::new(10, 244, 1, 0);
        let echo = packet(
            1,
            64,
            [10, 244, 1, 2],
            [10, 99, 0, 1],
            &[8, 0, 0, 0, 0, 1, 0, 1],
        );
        assert!(net_unreachable(&echo, from, &mut out).is_some());
        // A short packet quotes what it has.
        let short = packet(17, 64, [10, 244, 1, 2], [10, 99, 0, 1], &[1, 2]);
        assert_eq!(net_unreachable(&short, from, &mut out), Some(20 + 8 + 22));
        for kind in [3u8, 4, 5, 11, 12] {
            let err = packet(
                1,
                64,
                [10, 244, 1, 2],
                [10, 99, 0, 1],
                &[kind, 0, 0, 0, 0, 0, 0, 0],
            );
            assert_eq!(
                net_unreachable(&err, from, &mut out),
                None,
                "ICMP type {kind}"
            );
        }
        let mut frag = packet(6, 64, [10, 244, 1, 2], [10, 99, 0, 1], &[0; 8]);
        frag[6..8].copy_from_slice(&0x00b9u16.to_be_bytes());
        assert_eq!(net_unreachable(&frag, from, &mut out), None);
        for src in [[0, 0, 0, 0], [255, 255, 255, 255], [224, 0, 0, 1]] {
            let p = packet(6, 64, src, [10, 99, 0, 1], &[0; 8]);
            assert_eq!(net_unreachable(&p, from, &mut out), None);
        }
    }
}

/// Fuzz properties: any buffer, any length, any header field; no panic, no byte changed
/// outside what a function is for, and checksums a reference computation agrees with.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use proptest::sample::Index;
    use proptest::test_runner::RngAlgorithm;

    use super::*;

    /// As tests/fuzz does it: 512 cases or `PROPTEST_CASES`, no regression files, XorShift.
    fn config() -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(512);
        ProptestConfig {
            cases,
            failure_persistence: None,
            rng_algorithm: RngAlgorithm::XorShift,
            ..ProptestConfig::default()
        }
    }

    /// The one's complement sum of 16-bit words, written the slow way: a header (or an ICMP
    /// message) with a correct checksum sums to 0xffff.
    fn reference_sum(data: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for (i, b) in data.iter().enumerate() {
            sum += if i % 2 == 0 {
                u64::from(*b) << 8
            } else {
                u64::from(*b)
            };
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// An IPv4 header of `ihl` words with random fields and options, its checksum made valid.
    /// `negative_zero` picks, when the checksum comes out as 0x0000, the other spelling of
    /// zero, 0xffff, which is as valid and which a sender may well have written.
    fn valid_header(ihl: u8, fields: &[u8], negative_zero: bool) -> Vec<u8> {
        let len = usize::from(ihl) * 4;
        let mut h: Vec<u8> = fields.iter().copied().cycle().take(len).collect();
        h[0] = 0x40 | ihl;
        h[10..12].fill(0);
        let c = !reference_sum(&h);
        let c = if c == 0 && negative_zero { 0xffff } else { c };
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h
    }

    prop_compose! {
        /// A valid header (IHL 5 to 15; a later fragment one time in five) and a payload of
        /// 0 to 100 bytes.
        fn valid_packet()(
            ihl in 5u8..=15,
            mut fields in prop::collection::vec(any::<u8>(), 20..=60),
            fragment in prop::bool::weighted(0.2),
            negative_zero in any::<bool>(),
            payload in prop::collection::vec(any::<u8>(), 0..=100),
        ) -> Vec<u8> {
            if !fragment {
                fields[6] &= 0xe0;
                fields[7] = 0;
            }
            let mut p = valid_header(ihl, &fields, negative_zero);
            p.extend(payload);
            p
        }
    }

    /// A header forced to sum to 0xffff without its checksum, so that its checksum is 0x0000
    /// or 0xffff: the corner of RFC 1624.
    fn zero_checksum_packet() -> impl Strategy<Value = Vec<u8>> {
        (valid_packet(), any::<bool>()).prop_map(|(mut p, negative_zero)| {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            p[10..12].fill(0);
            p[4..6].fill(0);
            let id = !reference_sum(&p[..ihl]);
            p[4..6].copy_from_slice(&id.to_be_bytes());
            let c: u16 = if negative_zero { 0xffff } else { 0 };
            p[10..12].copy_from_slice(&c.to_be_bytes());
            p
        })
    }

    /// What the TUN device or a peer could hand over: bytes of any length up to 2000, or a
    /// valid packet then damaged (cut short, IHL or version changed, fragment offset, ICMP
    /// with any type, odd source addresses).
    fn buffer() -> impl Strategy<Value = Vec<u8>> {
        let damaged = (
            valid_packet(),
            any::<Index>(),
            any::<u8>(),
            any::<[u8; 6]>(),
            0u8..8,
        )
            .prop_map(|(mut p, cut, byte, b, how)| {
                match how {
                    0 => p.truncate(cut.index(p.len() + 1)),
                    1 => p[0] = byte,
                    2 => p[6..8].copy_from_slice(&b[..2]),
                    3 => {
                        let odd = [[0; 4], [255; 4], [224, 0, 0, 1], [239, 1, 2, 3], [b[0]; 4]];
                        p[12..16].copy_from_slice(&odd[usize::from(b[1]) % odd.len()]);
                    }
                    4 => {
                        p[9] = ICMP;
                        let ihl = usize::from(p[0] & 0x0f) * 4;
                        p.truncate(ihl + usize::from(b[2] % 3));
                        if let Some(t) = p.get_mut(ihl) {
                            *t = b[3] % 20;
                        }
                    }
                    5 => p[8] = b[4] % 3,
                    _ => {}
                }
                p
            });
        prop_oneof![
            1 => prop::collection::vec(any::<u8>(), 0..=2000),
            1 => prop::collection::vec(any::<u8>(), 0..=40),
            4 => damaged,
            1 => zero_checksum_packet(),
        ]
    }

    /// The checks of an ICMP answer `net_unreachable` built from `offender`: within `out`,
    /// both checksums right, the offender quoted, sent back to its source.
    fn check_answer(
        offender: &[u8],
        out: &[u8; ICMP_MAX],
        len: usize,
    ) -> Result<(), TestCaseError> {
        let ihl = usize::from(offender[0] & 0x0f) * 4;
        prop_assert!((20 + 8 + 20..=ICMP_MAX).contains(&len));
        prop_assert!(
            out[len..].iter().all(|b| *b == 0xa5),
            "written past the answer"
        );
        prop_assert_eq!(usize::from(u16::from_be_bytes([out[2], out[3]])), len);
        prop_assert_eq!(reference_sum(&out[..20]), 0xffff, "IP header checksum");
        prop_assert_eq!(reference_sum(&out[20..len]), 0xffff, "ICMP checksum");
        prop_assert_eq!(&out[16..20], &offender[12..16]);
        prop_assert_eq!(&out[28..len], &offender[..(ihl + 8).min(offender.len())]);
        let frag = u16::from_be_bytes([offender[6], offender[7]]) & 0x1fff;
        prop_assert_eq!(frag, 0, "answered a later fragment");
        let src = Ipv4Addr::new(offender[12], offender[13], offender[14], offender[15]);
        prop_assert!(!(src.is_unspecified() || src.is_broadcast() || src.is_multicast()));
        if offender[9] == ICMP {
            prop_assert!(!matches!(
                offender.get(ihl),
                Some(3 | 4 | 5 | 11 | 12) | None
            ));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(config())]

        /// Any bytes: a destination only for a whole IPv4 header, read from its place.
        #[test]
        fn udp_ipv4_dst_reads_only_whole_headers(p in buffer()) {
            if let Some(dst) = ipv4_dst(&p) {
                let ihl = usize::from(p[0] & 0x0f) * 4;
                prop_assert!(p.len() >= 20 && p[0] >> 4 == 4 && (20..=p.len()).contains(&ihl));
                prop_assert_eq!(dst.octets(), [p[16], p[17], p[18], p[19]]);
            }
        }

        /// Any bytes: the TTL goes down by one in a packet `ipv4_dst` accepts whose TTL is
        /// above 1, only the TTL and checksum bytes change, and nothing else is touched.
        #[test]
        fn udp_ttl_decrement_touches_only_ttl_and_checksum(p in buffer()) {
            let before = p.clone();
            let mut p = p;
            if decrement_ttl(&mut p) {
                prop_assert!(ipv4_dst(&before).is_some() && before[8] > 1);
                prop_assert_eq!(p[8], before[8] - 1);
                for (i, (a, b)) in before.iter().zip(&p).enumerate() {
                    prop_assert!(a == b || [8, 10, 11].contains(&i), "byte {} changed", i);
                }
            } else {
                prop_assert_eq!(p, before);
            }
        }

        /// A valid header (any IHL, options, TTL, and the checksum's two spellings of zero)
        /// stays valid after the decrement, by a checksum computed from scratch.
        #[test]
        fn udp_ttl_decrement_keeps_the_checksum_valid(
            p in prop_oneof![valid_packet(), zero_checksum_packet()],
        ) {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            prop_assert_eq!(reference_sum(&p[..ihl]), 0xffff);
            let mut q = p.clone();
            if decrement_ttl(&mut q) {
                prop_assert_eq!(reference_sum(&q[..ihl]), 0xffff, "before {:?}", &p[..ihl]);
            } else {
                prop_assert!(p[8] <= 1);
            }
        }

        /// Any bytes: an ICMP answer only where RFC 1122 allows one, never longer than
        /// `ICMP_MAX` nor written past its length, with valid checksums.
        #[test]
        fn udp_net_unreachable_answers_within_bounds(p in buffer(), from in any::<[u8; 4]>()) {
            let mut out = [0xa5u8; ICMP_MAX];
            if let Some(len) = net_unreachable(&p, Ipv4Addr::from(from), &mut out) {
                prop_assert!(ipv4_dst(&p).is_some());
                check_answer(&p, &out, len)?;
            }
        }
    }
}
