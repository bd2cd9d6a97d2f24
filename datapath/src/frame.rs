//! Raw frames for the AF_XDP backend: parse Ethernet [802.1Q] IPv4/IPv6 UDP in place, build the headers in
//! front of a payload quiche wrote, and the Internet checksum (RFC 1071) they need.
//!
//! Parsing does not verify checksums: veth passes partial ones from its peer (TX offload), real NICs have
//! verified them already, and every QUIC packet is authenticated by its AEAD tag, which catches corruption
//! far more strongly than a 16-bit sum. Lengths are verified: the payload range never leaves the frame.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

/// Ethernet header without a tag.
pub const ETH_HLEN: usize = 14;
/// One 802.1Q / 802.1ad tag.
pub const VLAN_HLEN: usize = 4;
/// IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// IPv6 fixed header.
pub const IPV6_HLEN: usize = 40;
/// UDP header.
pub const UDP_HLEN: usize = 8;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_UDP: u8 = 17;
/// Default TTL / hop limit of frames we build.
pub const TTL: u8 = 64;

/// Why a frame was not delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Shorter than the headers it announces.
    Truncated,
    /// Not IPv4/IPv6 (after at most two VLAN tags).
    NotIp,
    /// IP, but not UDP (or IPv6 with extension headers).
    NotUdp,
    /// An IPv4 fragment.
    Fragment,
    /// IP or UDP length fields inconsistent with each other or the frame.
    BadLength,
}

/// A parsed UDP frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Udp {
    /// Source MAC (the peer's, or its router's).
    pub src_mac: [u8; 6],
    /// Destination MAC (ours as the peer knows it).
    pub dst_mac: [u8; 6],
    /// VLAN ID of the innermost in-band tag, if the frame carried one.
    pub vlan: Option<u16>,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// The UDP payload within the frame.
    pub payload: Range<usize>,
}

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parse an Ethernet frame carrying UDP over IPv4 or IPv6, with up to two VLAN tags.
pub fn parse(f: &[u8]) -> Result<Udp, Malformed> {
    if f.len() < ETH_HLEN {
        return Err(Malformed::Truncated);
    }
    let mut dst_mac = [0; 6];
    let mut src_mac = [0; 6];
    dst_mac.copy_from_slice(&f[0..6]);
    src_mac.copy_from_slice(&f[6..12]);
    let mut proto = be16(f, 12);
    let mut off = ETH_HLEN;
    let mut vlan = None;
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        if f.len() < off + VLAN_HLEN {
            return Err(Malformed::Truncated);
        }
        vlan = Some(be16(f, off) & 0x0fff);
        proto = be16(f, off + 2);
        off += VLAN_HLEN;
    }
    let (src_ip, dst_ip, udp_off, ip_end) = match proto {
        ETH_P_IP => {
            if f.len() < off + IPV4_HLEN {
                return Err(Malformed::Truncated);
            }
            let ip = &f[off..];
            if ip[0] >> 4 != 4 {
                return Err(Malformed::NotIp);
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(be16(ip, 2));
            if ihl < IPV4_HLEN || total < ihl || off + total > f.len() {
                return Err(Malformed::BadLength);
            }
            if ip[9] != IPPROTO_UDP {
                return Err(Malformed::NotUdp);
            }
            // MF set or a non-zero offset.
            if be16(ip, 6) & 0x3fff != 0 {
                return Err(Malformed::Fragment);
            }
            let s = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let d = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (IpAddr::V4(s), IpAddr::V4(d), off + ihl, off + total)
        }
        ETH_P_IPV6 => {
            if f.len() < off + IPV6_HLEN {
                return Err(Malformed::Truncated);
            }
            let ip = &f[off..];
            if ip[0] >> 4 != 6 {
                return Err(Malformed::NotIp);
            }
            if ip[6] != IPPROTO_UDP {
                return Err(Malformed::NotUdp);
            }
            let plen = usize::from(be16(ip, 4));
            if off + IPV6_HLEN + plen > f.len() {
                return Err(Malformed::BadLength);
            }
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s.copy_from_slice(&ip[8..24]);
            d.copy_from_slice(&ip[24..40]);
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                off + IPV6_HLEN,
                off + IPV6_HLEN + plen,
            )
        }
        _ => return Err(Malformed::NotIp),
    };
    if udp_off + UDP_HLEN > ip_end {
        return Err(Malformed::Truncated);
    }
    let udp_len = usize::from(be16(f, udp_off + 4));
    if udp_len < UDP_HLEN || udp_off + udp_len > ip_end {
        return Err(Malformed::BadLength);
    }
    Ok(Udp {
        src_mac,
        dst_mac,
        vlan,
        src: SocketAddr::new(src_ip, be16(f, udp_off)),
        dst: SocketAddr::new(dst_ip, be16(f, udp_off + 2)),
        payload: udp_off + UDP_HLEN..udp_off + udp_len,
    })
}

/// The layer-2 part of a path: who we send to, as whom, and in which VLAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2 {
    /// Our MAC.
    pub src: [u8; 6],
    /// The next hop's MAC.
    pub dst: [u8; 6],
    /// Insert an 802.1Q tag with this VLAN ID.
    pub vlan: Option<u16>,
}

/// Bytes of headers in front of a UDP payload.
pub const fn header_len(vlan: bool, ipv6: bool) -> usize {
    ETH_HLEN + if vlan { VLAN_HLEN } else { 0 } + if ipv6 { IPV6_HLEN } else { IPV4_HLEN } + UDP_HLEN
}

/// Write Ethernet [802.1Q] IP UDP headers into `f[..header_len]` in front of the `payload_len` bytes of UDP
/// payload already at `f[header_len..]`, with both checksums. `src` and `dst` must be the same family.
/// Returns the frame length. `ip_id` is the IPv4 identification (ignored for IPv6).
pub fn build(
    f: &mut [u8],
    l2: &L2,
    src: SocketAddr,
    dst: SocketAddr,
    payload_len: usize,
    ip_id: u16,
) -> usize {
    let v6 = src.is_ipv6();
    debug_assert_eq!(v6, dst.is_ipv6(), "mixed address families");
    let hlen = header_len(l2.vlan.is_some(), v6);
    let udp_len = UDP_HLEN + payload_len;
    f[0..6].copy_from_slice(&l2.dst);
    f[6..12].copy_from_slice(&l2.src);
    let mut off = 12;
    if let Some(vid) = l2.vlan {
        f[12..14].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        f[14..16].copy_from_slice(&(vid & 0x0fff).to_be_bytes());
        off = 16;
    }
    let udp_off;
    let mut sum;
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f[off..off + 2].copy_from_slice(&ETH_P_IP.to_be_bytes());
            let ip = &mut f[off + 2..off + 2 + IPV4_HLEN];
            ip[0] = 0x45;
            ip[1] = 0;
            ip[2..4].copy_from_slice(&((IPV4_HLEN + udp_len) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
            ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
            ip[8] = TTL;
            ip[9] = IPPROTO_UDP;
            ip[10..12].fill(0);
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let c = !fold(sum_ne(0, ip));
            ip[10..12].copy_from_slice(&c.to_ne_bytes());
            // Pseudo-header: addresses, zero + protocol, UDP length.
            sum = sum_ne(0, &ip[12..20]);
            udp_off = off + 2 + IPV4_HLEN;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f[off..off + 2].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
            let ip = &mut f[off + 2..off + 2 + IPV6_HLEN];
            ip[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
            ip[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
            ip[6] = IPPROTO_UDP;
            ip[7] = TTL;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            sum = sum_ne(0, &ip[8..40]);
            udp_off = off + 2 + IPV6_HLEN;
        }
        _ => panic!("frame::build: {src} and {dst} are of different address families"),
    }
    debug_assert_eq!(udp_off + UDP_HLEN, hlen);
    sum = sum_ne(sum, &[0, IPPROTO_UDP]);
    sum = sum_ne(sum, &(udp_len as u16).to_be_bytes());
    let udp = &mut f[udp_off..udp_off + udp_len];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[6..8].fill(0);
    let mut c = !fold(sum_ne(sum, udp));
    if c == 0 {
        // RFC 768: a computed zero is sent as all ones (zero means "no checksum").
        c = 0xffff;
    }
    udp[6..8].copy_from_slice(&c.to_ne_bytes());
    hlen + payload_len
}

/// Add `data` to a one's-complement sum kept in native byte order (RFC 1071 §2(B): the sum is byte-order
/// independent, so the words are read in native order and the folded result stored with `to_ne_bytes`).
/// `data` must start at an even offset of the checksummed stream; an odd length is only allowed for the
/// last piece.
#[inline]
pub fn sum_ne(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(32);
    for c in &mut chunks {
        // Four 64-bit words per round with end-around carry.
        for w in c.chunks_exact(8) {
            let v = u64::from_ne_bytes(w.try_into().expect("8 bytes"));
            let (s, carry) = acc.overflowing_add(v);
            acc = s + u64::from(carry);
        }
    }
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_ne_bytes(w.try_into().expect("8 bytes"));
        let (s, carry) = acc.overflowing_add(v);
        acc = s + u64::from(carry);
    }
    let mut tail = [0u8; 8];
    let r = words.remainder();
    tail[..r.len()].copy_from_slice(r);
    let v = u64::from_ne_bytes(tail);
    let (s, carry) = acc.overflowing_add(v);
    s + u64::from(carry)
}

/// Fold a 64-bit one's-complement sum to 16 bits (native order, not inverted).
#[inline]
pub fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The Internet checksum of `data` as it is stored on the wire (big-endian value).
pub fn checksum(data: &[u8]) -> u16 {
    u16::from_be_bytes((!fold(sum_ne(0, data))).to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// RFC 1071 done the obvious way, as the reference.
    fn reference(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in data.chunks(2) {
            let w =
                if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from_be_bytes([c[0], 0]) };
            s += u32::from(w);
        }
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn checksum_matches_reference_on_random_lengths() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for len in (0..200).chain([1199, 1200, 1350, 1371, 1372, 1500]) {
            for _ in 0..20 {
                let mut v = vec![0u8; len];
                rng.fill(&mut v[..]);
                assert_eq!(checksum(&v), reference(&v), "len {len}");
            }
            // Worst case for carries.
            let v = vec![0xffu8; len];
            assert_eq!(checksum(&v), reference(&v), "len {len} all ones");
        }
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2 (checksum 220d).
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0x220d);
    }

    fn roundtrip(src: SocketAddr, dst: SocketAddr, vlan: Option<u16>, payload_len: usize) {
        let l2 = L2 { src: [2, 0, 0, 0, 0, 1], dst: [2, 0, 0, 0, 0, 2], vlan };
        let hlen = header_len(vlan.is_some(), src.is_ipv6());
        let mut f = vec![0u8; hlen + payload_len + 3];
        for (i, b) in f[hlen..hlen + payload_len].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let n = build(&mut f, &l2, src, dst, payload_len, 0x1234);
        assert_eq!(n, hlen + payload_len);
        let p = parse(&f[..n + 3]).expect("parses (with trailing padding)");
        assert_eq!((p.src, p.dst, p.vlan), (src, dst, vlan));
        assert_eq!((p.src_mac, p.dst_mac), (l2.src, l2.dst));
        assert_eq!(p.payload, hlen..hlen + payload_len);
        let ip_off = ETH_HLEN + if vlan.is_some() { VLAN_HLEN } else { 0 };
        let udp_off = ip_off + if src.is_ipv6() { IPV6_HLEN } else { IPV4_HLEN };
        if src.is_ipv4() {
            // A correct header sums to zero.
            assert_eq!(checksum(&f[ip_off..ip_off + IPV4_HLEN]), 0);
        }
        // Verify the UDP checksum the way a receiver does: pseudo-header + segment sums to zero.
        let mut pseudo = Vec::new();
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                pseudo.extend(s.octets());
                pseudo.extend(d.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                pseudo.extend(s.octets());
                pseudo.extend(d.octets());
            }
            _ => unreachable!(),
        }
        pseudo.extend([0, IPPROTO_UDP]);
        pseudo.extend(((UDP_HLEN + payload_len) as u16).to_be_bytes());
        pseudo.extend(&f[udp_off..n]);
        assert_eq!(reference(&pseudo), 0, "UDP checksum verifies");
    }

    #[test]
    fn build_then_parse_v4_v6_tagged_untagged() {
        let a4: SocketAddr = "10.0.1.10:4433".parse().unwrap();
        let b4: SocketAddr = "10.0.1.21:50000".parse().unwrap();
        let a6: SocketAddr = "[fd00::10]:4433".parse().unwrap();
        let b6: SocketAddr = "[fd00::21]:50000".parse().unwrap();
        for len in [0, 1, 2, 3, 1200, 1201, 1350] {
            for vlan in [None, Some(4000)] {
                roundtrip(a4, b4, vlan, len);
                roundtrip(a6, b6, vlan, len);
            }
        }
    }

    #[test]
    fn qinq_and_truncation_and_fragments() {
        let l2 = L2 { src: [2; 6], dst: [4; 6], vlan: Some(4000) };
        let a: SocketAddr = "10.0.1.10:4433".parse().unwrap();
        let b: SocketAddr = "10.0.1.21:5000".parse().unwrap();
        let mut f = vec![0u8; 200];
        let n = build(&mut f, &l2, a, b, 100, 1);
        // Wrap in an outer 802.1ad tag: the inner VLAN is reported.
        let mut q = f[..12].to_vec();
        q.extend(ETH_P_8021AD.to_be_bytes());
        q.extend(100u16.to_be_bytes());
        q.extend(&f[12..n]);
        let p = parse(&q).unwrap();
        assert_eq!(p.vlan, Some(4000));
        assert_eq!(p.dst, b);
        // Every truncation is rejected, never panics.
        for cut in 0..n {
            assert!(parse(&f[..cut]).is_err(), "cut at {cut}");
        }
        // A fragment.
        let ip = ETH_HLEN + VLAN_HLEN;
        f[ip + 6] |= 0x20;
        assert_eq!(parse(&f[..n]), Err(Malformed::Fragment));
        f[ip + 6] &= !0x20;
        // Not UDP.
        f[ip + 9] = 6;
        assert_eq!(parse(&f[..n]), Err(Malformed::NotUdp));
        f[ip + 9] = IPPROTO_UDP;
        // UDP length beyond the IP packet.
        let udp = ip + IPV4_HLEN;
        f[udp + 4..udp + 6].copy_from_slice(&2000u16.to_be_bytes());
        assert_eq!(parse(&f[..n]), Err(Malformed::BadLength));
        // ARP.
        let mut arp = vec![0u8; 60];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse(&arp), Err(Malformed::NotIp));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
        let mut f = [0u8; 128];
        for i in 0..20_000 {
            rng.fill(&mut f[..]);
            // Make a good share look like IPv4/IPv6 so the deeper checks run.
            match i % 3 {
                0 => f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes()),
                1 => f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes()),
                _ => {}
            }
            let len = rng.random_range(0..=f.len());
            if let Ok(p) = parse(&f[..len]) {
                assert!(p.payload.end <= len);
            }
        }
    }
}
