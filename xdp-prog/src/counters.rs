//! The program's per-CPU outcome counters: [`Counter`] (one per disposition, from the C enum through the
//! skeleton) and [`Counters`] (summed over CPUs).
use std::fmt;

/// The program's counters: indexes of the per-CPU `counters` map.
///
/// Each frame increments exactly one disposition (every counter but
/// [`Counter::VlanFromMetadata`]). The values come from `enum counter` in `src/bpf/canvas.bpf.c`
/// through the generated skeleton, so the two cannot drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Counter {
    /// UDP to the port (and VLAN); `bpf_redirect_map` found a socket in `xsks[rx_queue_index]`.
    /// A map hit, not a delivery: a full RX ring, an empty fill ring or a socket bound to another
    /// queue drops the frame after this point (see the socket's `XDP_STATISTICS`).
    Redirected = C::COUNTER_REDIRECTED.0,
    /// UDP to the port (and VLAN), but `xsks[rx_queue_index]` was empty: passed to the kernel.
    RedirectFailed = C::COUNTER_REDIRECT_FAILED.0,
    /// UDP to another port: passed.
    PassedNotUdpPort = C::COUNTER_PASSED_NOT_UDP_PORT.0,
    /// UDP to the port, but another VLAN (or untagged) while a VLAN is configured: passed.
    PassedOtherVlan = C::COUNTER_PASSED_OTHER_VLAN.0,
    /// Neither IPv4 nor IPv6 (ARP, LLDP, stacked tags): passed.
    PassedNotIp = C::COUNTER_PASSED_NOT_IP.0,
    /// IP but not UDP (TCP, ICMP, IPv6 extension headers): passed.
    PassedNotUdp = C::COUNTER_PASSED_NOT_UDP.0,
    /// An IPv4 fragment or an IPv6 fragment header: passed, the kernel reassembles.
    IpFragment = C::COUNTER_IP_FRAGMENT.0,
    /// Shorter than an Ethernet header (or its announced VLAN tag): passed.
    MalformedEth = C::COUNTER_MALFORMED_ETH.0,
    /// Truncated or inconsistent IP header: passed.
    MalformedIp = C::COUNTER_MALFORMED_IP.0,
    /// Truncated UDP header or UDP length < 8: passed.
    MalformedUdp = C::COUNTER_MALFORMED_UDP.0,
    /// Not a disposition: frames to the port whose VLAN tag was read from receive metadata.
    VlanFromMetadata = C::COUNTER_VLAN_FROM_METADATA.0,
    /// UDP to the port (and VLAN) from a source outside the allowlist: dropped.
    DroppedNotAllowed = C::COUNTER_DROPPED_NOT_ALLOWED.0,
}

use crate::skel::plain::types::counter as C;
const _: () = assert!(Counter::ALL.len() == C::COUNTER_MAX.0 as usize, "a C counter is missing in Rust");

impl Counter {
    /// All counters, in map order.
    pub const ALL: [Counter; 12] = [
        Counter::Redirected,
        Counter::RedirectFailed,
        Counter::PassedNotUdpPort,
        Counter::PassedOtherVlan,
        Counter::PassedNotIp,
        Counter::PassedNotUdp,
        Counter::IpFragment,
        Counter::MalformedEth,
        Counter::MalformedIp,
        Counter::MalformedUdp,
        Counter::VlanFromMetadata,
        Counter::DroppedNotAllowed,
    ];

    /// The name of the C enumerator (`COUNTER_REDIRECTED`, ...).
    /// The short name used in reports and metrics: `redirected`, `passed_not_ip`, …
    pub fn name(self) -> String {
        self.c_name().trim_start_matches("COUNTER_").to_ascii_lowercase()
    }

    pub fn c_name(self) -> &'static str {
        match self {
            Counter::Redirected => "COUNTER_REDIRECTED",
            Counter::RedirectFailed => "COUNTER_REDIRECT_FAILED",
            Counter::PassedNotUdpPort => "COUNTER_PASSED_NOT_UDP_PORT",
            Counter::PassedOtherVlan => "COUNTER_PASSED_OTHER_VLAN",
            Counter::PassedNotIp => "COUNTER_PASSED_NOT_IP",
            Counter::PassedNotUdp => "COUNTER_PASSED_NOT_UDP",
            Counter::IpFragment => "COUNTER_IP_FRAGMENT",
            Counter::MalformedEth => "COUNTER_MALFORMED_ETH",
            Counter::MalformedIp => "COUNTER_MALFORMED_IP",
            Counter::MalformedUdp => "COUNTER_MALFORMED_UDP",
            Counter::VlanFromMetadata => "COUNTER_VLAN_FROM_METADATA",
            Counter::DroppedNotAllowed => "COUNTER_DROPPED_NOT_ALLOWED",
        }
    }
}

/// A snapshot of the counters, summed over CPUs. Counters only grow; use [`Counters::since`] for
/// rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub(crate) values: [u64; Counter::ALL.len()],
}

impl Counters {
    /// One counter.
    pub fn get(&self, counter: Counter) -> u64 {
        self.values[counter as usize]
    }

    /// Datagrams that matched port (and VLAN): `Redirected + RedirectFailed`.
    pub fn redirect_attempts(&self) -> u64 {
        self.get(Counter::Redirected) + self.get(Counter::RedirectFailed)
    }

    /// Every frame the program saw (the sum of the dispositions).
    pub fn frames(&self) -> u64 {
        Counter::ALL.iter().filter(|&&c| c != Counter::VlanFromMetadata).map(|&c| self.get(c)).sum()
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &Counters) -> Counters {
        let mut values = [0; Counter::ALL.len()];
        for (i, value) in values.iter_mut().enumerate() {
            *value = self.values[i].wrapping_sub(earlier.values[i]);
        }
        Counters { values }
    }

    /// (counter, value) pairs in map order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.iter().map(move |&c| (c, self.get(c)))
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (counter, value) in self.iter() {
            write!(f, "{}{}={value}", if first { "" } else { " " }, counter.name())?;
            first = false;
        }
        Ok(())
    }
}
