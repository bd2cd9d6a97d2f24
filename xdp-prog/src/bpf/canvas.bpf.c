// SPDX-License-Identifier: (MIT OR Apache-2.0)
//
// canvas.bpf.c: the XDP program of the canvas server.
//
// Steers UDP datagrams addressed to the server's port into the AF_XDP socket bound to the receive
// queue they arrived on (`xsks[rx_queue_index]`), dropping those from sources outside the allowlist
// when one is configured; everything else (SSH, ARP, ICMP, other ports,
// fragments, malformed frames) goes on to the kernel stack untouched with XDP_PASS. Every frame is
// counted exactly once, under one disposition, in the per-CPU `counters` map.
//
// Frame layout understood: Ethernet, at most one in-band 802.1Q/802.1ad tag, IPv4 (IHL-aware, not
// fragmented) or IPv6 (UDP directly after the fixed header: extension headers are not walked, such
// frames are passed), UDP. Checksums are not verified: veth hands over partial checksums from its
// peer's TX offload, and the consumer (or the kernel, after XDP_PASS) checks what it needs.
//
// VLAN: when `cfg.vlan_match` is set the frame's outermost tag must carry `cfg.vlan_id`. The tag is
// taken from the receive metadata when the NIC stripped it (kfunc bpf_xdp_metadata_rx_vlan_tag,
// Linux 6.8+, only answers in a device-bound program: built with -DCANVAS_VLAN_METADATA and loaded
// with BPF_F_XDP_DEV_BOUND_ONLY), else from the in-band tag. Untagged frames never match a VLAN.
//
// src/lib.rs takes `enum counter` and `struct canvas_config` from the generated skeleton.
//
// Verifier idioms. This program must load on every kernel the server supports, from Debian 12's
// 6.1 on (the VM rig, scripts/vm.sh matrix, loads it on 6.1, 6.12 and the newest backports kernel),
// and verifiers differ in what they can prove. The rules it follows:
//   1. Every value read from the packet is bounded by an explicit comparison before it takes part
//      in pointer arithmetic. Old verifiers (6.1, 6.12, 6.18.15) do not track BPF_END (byte swap):
//      after `bpf_ntohs(x)` the register is unknown to them, and `ptr + x` is refused with "math
//      between pkt pointer and register with unbounded min value is not allowed". clang knows the
//      result is 16 bits wide and would delete a `> 0xffff` check, so the value is first passed
//      through barrier_var() (an empty asm that hides it from the optimiser).
//   2. Every packet access is preceded by a `ptr + size > data_end` check on the same pointer, in
//      the same basic block as the access (no check hoisted into a helper the compiler may split).
//   3. Header lengths come from small bit-fields (IHL * 4 is at most 60) or constants, never from a
//      16-bit field without rule 1.
//   4. Optional kernel features are reached only through weak ksyms guarded by bpf_ksym_exists()
//      and in a separate object (canvas_vlanmeta) that the loader may fail to load and replace with
//      the plain one; the plain object uses nothing newer than bpf_redirect_map with a fallback
//      action in its flags (Linux 5.x).
//   5. No loops, no BPF-to-BPF calls, no global data but the read-only `cfg`: nothing whose
//      verifier support varies across the supported range.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif
#ifndef IPPROTO_FRAGMENT
#define IPPROTO_FRAGMENT 44
#endif

#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF
#define VLAN_VID_MASK 0x0FFF

// One 802.1Q/802.1ad tag as it sits in the frame after the MAC addresses' ethertype.
struct vlan_tag {
	__be16 tci;
	__be16 encapsulated_proto;
};

// Dispositions; each frame increments exactly one of them. Index into `counters`.
enum counter {
	// UDP to the port (and VLAN): bpf_redirect_map found a socket in xsks[rx_queue_index].
	COUNTER_REDIRECTED = 0,
	// UDP to the port (and VLAN), but xsks[rx_queue_index] is empty: passed to the kernel.
	COUNTER_REDIRECT_FAILED = 1,
	// UDP, but to another port.
	COUNTER_PASSED_NOT_UDP_PORT = 2,
	// UDP to the port, but not on the configured VLAN (other tag or untagged).
	COUNTER_PASSED_OTHER_VLAN = 3,
	// Neither IPv4 nor IPv6 (ARP, LLDP, stacked VLAN tags, ...).
	COUNTER_PASSED_NOT_IP = 4,
	// IP, but not UDP (TCP, ICMP, IPv6 extension headers other than a fragment header).
	COUNTER_PASSED_NOT_UDP = 5,
	// IPv4 with MF or a fragment offset, or IPv6 with a fragment header: the kernel reassembles.
	COUNTER_IP_FRAGMENT = 6,
	// Shorter than an Ethernet header (+ tag, when the ethertype announces one).
	COUNTER_MALFORMED_ETH = 7,
	// Truncated IP header, wrong version, IHL < 5, total length shorter than the header or
	// longer than the frame.
	COUNTER_MALFORMED_IP = 8,
	// Truncated UDP header or UDP length < 8.
	COUNTER_MALFORMED_UDP = 9,
	// Not a disposition: of the frames above, how many had their VLAN tag read from metadata.
	COUNTER_VLAN_FROM_METADATA = 10,
	// UDP to the port (and VLAN) from a source outside the allowlist (cfg.allow_match): dropped.
	COUNTER_DROPPED_NOT_ALLOWED = 11,
	COUNTER_MAX = 12,
};

// Set by the loader before load (read-only global: the verifier prunes the branches it disables).
struct canvas_config {
	// UDP destination port, network byte order. 0 never matches.
	__be16 port;
	// 802.1Q VLAN id (1..=4094), only looked at when vlan_match is set.
	__u16 vlan_id;
	// 1: the frame's outermost tag must be vlan_id (program on the parent NIC of a VLAN).
	// 0: the tag is not looked at (program on the VLAN sub-interface, or untagged network).
	__u8 vlan_match;
	// 1: only sources in `allow4`/`allow6` may reach the port; the rest is dropped and counted.
	__u8 allow_match;
	__u8 _pad[2];
};

// The source allowlist (`server --allow CIDR`): longest-prefix-match tries keyed by prefix length
// and address (network order); the value is unused.
struct lpm_key4 {
	__u32 prefixlen;
	__be32 addr;
};

struct lpm_key6 {
	__u32 prefixlen;
	__u8 addr[16];
};

const volatile struct canvas_config cfg = {};

// Never read: puts `enum counter` in BTF, so the generated skeleton carries its values and the
// loader's `Counter` takes them from there.
const volatile enum counter counter_max = COUNTER_MAX;

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1024);
	__type(key, struct lpm_key4);
	__type(value, __u8);
} allow4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1024);
	__type(key, struct lpm_key6);
	__type(value, __u8);
} allow6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32); // an `enum counter`; array keys must be plain ints in BTF
	__type(value, __u64);
} counters SEC(".maps");

#ifdef CANVAS_VLAN_METADATA
// Linux 6.8+. Weak: on older kernels libbpf resolves it to 0 and the verifier drops the call.
extern int bpf_xdp_metadata_rx_vlan_tag(const struct xdp_md *ctx, __be16 *vlan_proto,
					__u16 *vlan_tci) __ksym __weak;
#endif

static __always_inline void count(__u32 which)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &which);

	if (value)
		*value += 1; // per-CPU slot: no other writer, no atomic needed
}

static __always_inline int pass(__u32 which)
{
	count(which);
	return XDP_PASS;
}

// Outermost VLAN id of the frame: from metadata when the NIC stripped the tag, else the in-band
// tag. -1 when untagged.
static __always_inline int outer_vlan_id(struct xdp_md *ctx, int inband_vid)
{
#ifdef CANVAS_VLAN_METADATA
	if (bpf_ksym_exists(bpf_xdp_metadata_rx_vlan_tag)) {
		__be16 proto = 0;
		__u16 tci = 0;

		if (bpf_xdp_metadata_rx_vlan_tag(ctx, &proto, &tci) == 0) {
			count(COUNTER_VLAN_FROM_METADATA);
			return tci & VLAN_VID_MASK;
		}
	}
#endif
	return inband_vid;
}

SEC("xdp")
int canvas_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct udphdr *udp;
	struct lpm_key4 src4 = { .prefixlen = 32 };
	struct lpm_key6 src6 = { .prefixlen = 128 };
	int inband_vid = -1;
	int v6 = 0;
	__be16 proto;
	void *l3;

	if ((void *)(eth + 1) > data_end)
		return pass(COUNTER_MALFORMED_ETH);
	proto = eth->h_proto;
	l3 = eth + 1;

	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_tag *tag = l3;

		if ((void *)(tag + 1) > data_end)
			return pass(COUNTER_MALFORMED_ETH);
		inband_vid = bpf_ntohs(tag->tci) & VLAN_VID_MASK;
		proto = tag->encapsulated_proto;
		l3 = tag + 1;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		__u32 hdr_len, tot_len;

		if ((void *)(ip + 1) > data_end)
			return pass(COUNTER_MALFORMED_IP);
		if (ip->version != 4 || ip->ihl < 5)
			return pass(COUNTER_MALFORMED_IP);
		hdr_len = ip->ihl * 4;
		tot_len = bpf_ntohs(ip->tot_len);
		// Verifier idiom 1 (see "Verifier idioms" above): bound a value read from the packet
		// before it is added to a packet pointer. The 6.1, 6.12 and 6.18.15 verifiers do not
		// track byte swaps (6.18.44 and 7.3.4 do), so `tot_len` is unbounded to them after
		// bpf_ntohs; the barrier keeps clang from deleting this check, which it knows is false.
		barrier_var(tot_len);
		if (tot_len > 0xffff)
			return pass(COUNTER_MALFORMED_IP);
		if (tot_len < hdr_len || (void *)ip + tot_len > data_end)
			return pass(COUNTER_MALFORMED_IP);
		if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
			return pass(COUNTER_IP_FRAGMENT);
		if (ip->protocol != IPPROTO_UDP)
			return pass(COUNTER_PASSED_NOT_UDP);
		src4.addr = ip->saddr;
		udp = (void *)ip + hdr_len;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;

		if ((void *)(ip6 + 1) > data_end)
			return pass(COUNTER_MALFORMED_IP);
		if (ip6->version != 6)
			return pass(COUNTER_MALFORMED_IP);
		if (ip6->nexthdr == IPPROTO_FRAGMENT)
			return pass(COUNTER_IP_FRAGMENT);
		// Hop-by-hop, routing, destination options: not walked; the kernel gets them.
		if (ip6->nexthdr != IPPROTO_UDP)
			return pass(COUNTER_PASSED_NOT_UDP);
		__builtin_memcpy(src6.addr, &ip6->saddr, sizeof(src6.addr));
		v6 = 1;
		udp = (void *)(ip6 + 1);
	} else {
		return pass(COUNTER_PASSED_NOT_IP);
	}

	if ((void *)(udp + 1) > data_end)
		return pass(COUNTER_MALFORMED_UDP);
	if (bpf_ntohs(udp->len) < sizeof(*udp))
		return pass(COUNTER_MALFORMED_UDP);
	if (udp->dest != cfg.port)
		return pass(COUNTER_PASSED_NOT_UDP_PORT);
	if (cfg.vlan_match && outer_vlan_id(ctx, inband_vid) != cfg.vlan_id)
		return pass(COUNTER_PASSED_OTHER_VLAN);
	// The allowlist: traffic to the port from anywhere else never reaches a worker (XDP runs
	// before netfilter, so firewall rules on the host do not protect the port in xdp mode).
	if (cfg.allow_match &&
	    !(v6 ? bpf_map_lookup_elem(&allow6, &src6) : bpf_map_lookup_elem(&allow4, &src4))) {
		count(COUNTER_DROPPED_NOT_ALLOWED);
		return XDP_DROP;
	}

	// Low bits of the flags are the action when xsks[queue] holds no socket: XDP_PASS, so the
	// datagram still reaches a kernel UDP socket (io_uring fallback) instead of being dropped.
	if (bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS) == XDP_REDIRECT) {
		count(COUNTER_REDIRECTED);
		return XDP_REDIRECT;
	}
	return pass(COUNTER_REDIRECT_FAILED);
}

// The kernel lets only GPL-compatible programs call kfuncs (the VLAN metadata one); MIT, one of
// this project's licenses, is, and "Dual MIT/GPL" is the kernel's name for that.
char LICENSE[] SEC("license") = "Dual MIT/GPL";
