// SPDX-License-Identifier: (MIT OR Apache-2.0)
//
// steer.bpf.c: the io_uring mode's SO_REUSEPORT program (BPF_PROG_TYPE_SK_REUSEPORT).
//
// Every worker binds the server's UDP port with SO_REUSEPORT; by default the kernel picks a worker's
// socket from a hash of the 4-tuple, so a client whose address changes (NAT rebinding) lands on a
// worker that does not know its connection. This program picks the socket from the QUIC packet
// instead: a short-header packet's destination connection id starts with the owning worker's index
// (two bytes, big-endian; the server's `endpoint::cid_owner`), and `workers[index]` holds that
// worker's socket. Long-header packets (handshakes: the client's first DCID is its own random
// choice), packets too short to read and ids naming no worker are left to the kernel's hash
// (SK_PASS without a selection). Nothing is ever dropped here.
//
// The context's data starts at the UDP header; bpf_skb_load_bytes reads past the linear part too.
// Each packet increments exactly one disposition in the per-CPU `counters` map, plus STEER_MOVED for
// a steered packet the 4-tuple hash would have sent to another worker (the kernel's default choice
// is reciprocal_scale(hash, sockets), see reuseport_select_sock_by_hash).
//
// Needs Linux 4.19+ (SK_REUSEPORT programs, REUSEPORT_SOCKARRAY). No loops, no global data but the
// read-only `cfg`.

#include <linux/bpf.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>

// Capacity of `workers` (the server's --workers maximum).
#define STEER_MAX_WORKERS 1024

// Per-CPU counters; src/steer.rs mirrors them through the generated skeleton.
enum steer_counter {
	// Short header whose DCID names a worker: its socket selected.
	STEER_BY_CID = 0,
	// Not a disposition: of STEER_BY_CID, those the 4-tuple hash would have given another worker.
	STEER_MOVED = 1,
	// Long header (handshake, version negotiation): left to the hash.
	STEER_HASH_LONG_HEADER = 2,
	// Short header whose DCID names no worker (not one of our ids, or a slot without a socket).
	STEER_HASH_UNKNOWN_CID = 3,
	// Too short to hold a short header's first bytes.
	STEER_HASH_SHORT = 4,
	STEER_COUNTER_MAX = 5,
};

struct steer_config {
	// Sockets in the group: the workers, in `workers` slots 0..workers.
	__u32 workers;
};

const volatile struct steer_config cfg = {};

// Never read: puts `enum steer_counter` in BTF for the skeleton.
const volatile enum steer_counter steer_counter_max = STEER_COUNTER_MAX;

struct {
	__uint(type, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY);
	__uint(max_entries, STEER_MAX_WORKERS);
	__type(key, __u32);
	__type(value, __u32);
} workers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STEER_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 c)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &c);

	if (v)
		*v += 1;
}

SEC("sk_reuseport")
int canvas_steer(struct sk_reuseport_md *ctx)
{
	// QUIC first byte, then the DCID's first two bytes (a short header has no length byte).
	__u8 b[3];
	__u32 worker;
	__u32 by_hash;

	if (bpf_skb_load_bytes(ctx, sizeof(struct udphdr), b, sizeof(b)) < 0) {
		count(STEER_HASH_SHORT);
		return SK_PASS;
	}
	if (b[0] & 0x80) {
		count(STEER_HASH_LONG_HEADER);
		return SK_PASS;
	}
	worker = ((__u32)b[1] << 8) | b[2];
	if (worker >= cfg.workers || worker >= STEER_MAX_WORKERS) {
		count(STEER_HASH_UNKNOWN_CID);
		return SK_PASS;
	}
	if (bpf_sk_select_reuseport(ctx, &workers, &worker, 0) < 0) {
		count(STEER_HASH_UNKNOWN_CID);
		return SK_PASS;
	}
	count(STEER_BY_CID);
	by_hash = (__u32)(((__u64)ctx->hash * cfg.workers) >> 32);
	if (by_hash != worker)
		count(STEER_MOVED);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
