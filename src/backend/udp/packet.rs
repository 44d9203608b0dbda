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

/// Decrements the TTL of a packet `ipv4_dst` accepted, updating the checksum incrementally
/// (RFC 1624, eqn. 3). Returns false, leaving the packet as it was, when the TTL would reach
/// zero: the packet must be dropped.
pub fn decrement_ttl(p: &mut [u8]) -> bool {
    let ttl = p[8];
    if ttl <= 1 {
        return false;
    }
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

/// Builds, into `out`, the ICMP "destination net unreachable" answer to `offender` (a packet
/// `ipv4_dst` accepted), sent from `from`. Returns its length, or `None` where RFC 1122
/// (3.2.2) forbids an answer: the offender is itself an ICMP error, a fragment other than the
/// first, or comes from an address that is not one host.
pub fn net_unreachable(offender: &[u8], from: Ipv4Addr, out: &mut [u8; ICMP_MAX]) -> Option<usize> {
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
