// 802.1Q VLAN 4000 on the host side of the VM rig's tap, for host kernels without 8021q and without the tc
// vlan action (scripts/vm.sh; the same programs as scripts/testbed.sh's `--vlan bpf`). tc direct-action
// programs, no headers needed:
//   tap egress   push tag 4000 on everything untagged (what eth1.4000, the passthru macvlan on it, sends);
//   tap ingress  pass only VLAN 4000 (the kernel has moved the in-band tag into the skb metadata before the
//                tc ingress hook) and pop the tag, so eth1.4000 receives untagged frames.
typedef unsigned short __u16;
typedef unsigned int __u32;
struct __sk_buff { /* UAPI prefix of struct __sk_buff */
  __u32 len, pkt_type, mark, queue_mapping, protocol, vlan_present, vlan_tci, vlan_proto;
};
#define SEC(n) __attribute__((section(n), used))
#define BE16(x) ((__u16)__builtin_bswap16(x))
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define ETH_P_8021Q 0x8100
#ifndef VID
#define VID 4000
#endif
static long (*skb_vlan_push)(struct __sk_buff *, __u16, __u16) = (void *)18; /* BPF_FUNC_skb_vlan_push */
static long (*skb_vlan_pop)(struct __sk_buff *) = (void *)19;                /* BPF_FUNC_skb_vlan_pop */

SEC("tc/tap_egress") int tap_egress(struct __sk_buff *s) {
  if (s->vlan_present || s->protocol == BE16(ETH_P_8021Q)) return TC_ACT_OK;
  return skb_vlan_push(s, BE16(ETH_P_8021Q), VID) ? TC_ACT_SHOT : TC_ACT_OK;
}

SEC("tc/tap_ingress") int tap_ingress(struct __sk_buff *s) {
  if (!(s->vlan_present && s->vlan_proto == BE16(ETH_P_8021Q) && (s->vlan_tci & 0x0fff) == VID))
    return TC_ACT_SHOT;
  return skb_vlan_pop(s) ? TC_ACT_SHOT : TC_ACT_OK;
}
char _license[] SEC("license") = "GPL";
