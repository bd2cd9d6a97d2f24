//! What to attach and how: [`AttachMode`], the [`Mode`] it got, the [`Config`] (port, VLAN), and the
//! [`Interface`] by name or index.
use std::fmt;

use crate::sys;
use crate::Error;

/// How to attach the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Native (driver) mode, and if the driver refuses, generic mode.
    #[default]
    Auto,
    /// Native (driver) mode only (`XDP_FLAGS_DRV_MODE`): the fast path, needed for AF_XDP zero-copy.
    Native,
    /// Generic (skb) mode only (`XDP_FLAGS_SKB_MODE`): works on every interface, VLAN
    /// sub-interfaces included, after the kernel has built an skb; AF_XDP in copy mode only.
    Generic,
}

/// The mode an XDP program runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In the driver, before an skb exists.
    Native,
    /// In the core receive path, on an skb.
    Generic,
    /// On the NIC. Only ever reported by [`query`](crate::query) about someone else's program.
    Offload,
}

impl Mode {
    pub(crate) fn xdp_flag(self) -> u32 {
        match self {
            Mode::Native => libbpf_rs::libbpf_sys::XDP_FLAGS_DRV_MODE,
            Mode::Generic => libbpf_rs::libbpf_sys::XDP_FLAGS_SKB_MODE,
            Mode::Offload => libbpf_rs::libbpf_sys::XDP_FLAGS_HW_MODE,
        }
    }

    /// The `ip link set dev IF <word> off` word that removes a program in this mode (plain `xdp`
    /// means native on drivers that have it, so a generic program needs `xdpgeneric`).
    pub fn ip_link_word(self) -> &'static str {
        match self {
            Mode::Native => "xdp",
            Mode::Generic => "xdpgeneric",
            Mode::Offload => "xdpoffload",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Native => "native",
            Mode::Generic => "generic",
            Mode::Offload => "offload",
        })
    }
}

/// Source prefixes the allowlist can hold per address family (the size of each LPM trie).
pub const MAX_ALLOW: usize = 1024;

/// What to steer and how to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// UDP destination port, host byte order (the loader converts).
    pub port: u16,
    /// `Some(id)`: only frames whose outermost 802.1Q tag is `id` (1..=4094) are redirected —
    /// attach to the parent NIC. `None`: tags are not looked at — attach to the VLAN
    /// sub-interface (generic mode only) or use an untagged network.
    pub vlan: Option<u16>,
    /// Native, generic, or native-then-generic.
    pub mode: AttachMode,
    /// Source allowlist as (network address, prefix length): when not empty, datagrams to the port from
    /// any other source are dropped in XDP and counted ([`crate::Counter::DroppedNotAllowed`]).
    pub allow: Vec<(std::net::IpAddr, u8)>,
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.port == 0 {
            return Err(Error::InvalidConfig("UDP port 0 cannot be matched".into()));
        }
        for &(addr, len) in &self.allow {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if len > max {
                return Err(Error::InvalidConfig(format!("allow prefix {addr}/{len}: longer than {max}")));
            }
        }
        for v4 in [true, false] {
            let n = self.allow.iter().filter(|(a, _)| a.is_ipv4() == v4).count();
            if n > MAX_ALLOW {
                return Err(Error::InvalidConfig(format!(
                    "{n} allow prefixes of one family: at most {MAX_ALLOW}"
                )));
            }
        }
        if let Some(vlan) = self.vlan {
            if !(1..=4094).contains(&vlan) {
                return Err(Error::InvalidConfig(format!("VLAN id {vlan} is outside 1..=4094")));
            }
        }
        Ok(())
    }
}

/// An interface, by name or by index, in the calling thread's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interface {
    /// E.g. `eth1`.
    Name(String),
    /// E.g. 3.
    Index(u32),
}

impl From<&str> for Interface {
    fn from(name: &str) -> Self {
        Interface::Name(name.to_owned())
    }
}

impl From<String> for Interface {
    fn from(name: String) -> Self {
        Interface::Name(name)
    }
}

impl From<u32> for Interface {
    fn from(index: u32) -> Self {
        Interface::Index(index)
    }
}

impl Interface {
    /// (name, index), or [`Error::InterfaceNotFound`].
    pub(crate) fn resolve(&self) -> Result<(String, u32), Error> {
        match self {
            Interface::Name(name) => sys::ifindex_of(name)
                .map(|index| (name.clone(), index))
                .ok_or_else(|| Error::InterfaceNotFound { interface: name.clone() }),
            Interface::Index(index) => sys::ifname_of(*index)
                .map(|name| (name, *index))
                .ok_or_else(|| Error::InterfaceNotFound { interface: format!("index {index}") }),
        }
    }
}
