//! Facts about a network interface, asked of the kernel in the calling thread's network namespace
//! (ioctls on a UDP socket), not of `/sys/class/net`: sysfs shows the namespace it was mounted in, so a
//! thread that entered another namespace with `setns` would read a different device of the same name.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCGIFMTU: libc::c_ulong = 0x8921;
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
const ETHTOOL_GCHANNELS: u32 = 0x0000_003c;

/// `struct ifreq` with the union as raw bytes (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    union: [u8; 24],
}

#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before it is wrapped.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> io::Result<IfReq> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() >= libc::IFNAMSIZ || b.contains(&0) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")));
    }
    let mut r = IfReq { name: [0; libc::IFNAMSIZ], union: [0; 24] };
    r.name[..b.len()].copy_from_slice(b);
    Ok(r)
}

fn no_such(name: &str, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ENODEV) {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface `{name}` in this network namespace (see `ip link`)"),
        )
    } else {
        e
    }
}

/// Interface index, or a NotFound error naming the interface.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {name:?}")))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(no_such(name, io::Error::from_raw_os_error(libc::ENODEV))),
        i => Ok(i),
    }
}

/// MTU of `name`.
pub fn mtu(name: &str) -> io::Result<u32> {
    let s = socket()?;
    let mut r = ifreq(name)?;
    // SAFETY: SIOCGIFMTU reads the name and writes an int into the union of our ifreq.
    if unsafe { libc::ioctl(s.as_raw_fd(), SIOCGIFMTU as _, &mut r) } < 0 {
        return Err(no_such(name, io::Error::last_os_error()));
    }
    Ok(i32::from_ne_bytes(r.union[..4].try_into().expect("4 bytes")) as u32)
}

fn ethtool<T>(name: &str, data: &mut T) -> io::Result<()> {
    let s = socket()?;
    let mut r = ifreq(name)?;
    let p = data as *mut T as usize;
    r.union[..8].copy_from_slice(&p.to_ne_bytes());
    // SAFETY: SIOCETHTOOL reads the command from `*data` (which the caller initialised with its `cmd`)
    // and writes at most `size_of::<T>()` bytes back into it; `data` outlives the call.
    if unsafe { libc::ioctl(s.as_raw_fd(), SIOCETHTOOL as _, &mut r) } < 0 {
        return Err(no_such(name, io::Error::last_os_error()));
    }
    Ok(())
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The driver of `name` (`veth`, `macvlan`, `mlx5_core`, …) from ETHTOOL_GDRVINFO, or "unknown".
pub fn driver(name: &str) -> String {
    let mut d = EthtoolDrvinfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    match ethtool(name, &mut d) {
        Ok(()) => cstr(&d.driver),
        Err(_) => "unknown".to_string(),
    }
}

/// How many receive queues `name` has, and where the number came from.
///
/// ETHTOOL_GCHANNELS first (rx + combined channels: what a NIC's IRQs serve, what veth reports as its
/// real queue count); for devices without it, sysfs `queues/rx-*` when sysfs shows this namespace's
/// device (its ifindex matches); else 1.
pub fn rx_queues(name: &str) -> io::Result<(u32, &'static str)> {
    let idx = ifindex(name)?;
    let mut ch = EthtoolChannels { cmd: ETHTOOL_GCHANNELS, ..Default::default() };
    if ethtool(name, &mut ch).is_ok() {
        let n = ch.rx_count + ch.combined_count;
        if n > 0 {
            return Ok((n, "ethtool channels"));
        }
    }
    let sys_idx = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    if sys_idx == Some(idx) {
        if let Ok(rd) = std::fs::read_dir(format!("/sys/class/net/{name}/queues")) {
            let n = rd
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count();
            if n > 0 {
                return Ok((n as u32, "sysfs"));
            }
        }
    }
    Ok((1, "assumed (no ethtool channels, sysfs of another namespace)"))
}

/// What to do about a driver that refused an AF_XDP zero-copy socket, per driver (`kernel`: `uname -r`).
/// One sentence, for the server's note and `server doctor`.
pub fn zero_copy_hint(driver: &str, kernel: &str) -> String {
    match driver {
        "veth" => "veth has no AF_XDP zero-copy in any kernel: copy mode is its only mode".into(),
        "virtio_net" => format!(
            "virtio_net grants zero-copy only on kernels whose driver advertises it (seen on 6.18.15 and 7.3, \
             not on 6.1 or 6.12; this kernel is {kernel}) and only when the device offers \
             VIRTIO_F_ACCESS_PLATFORM (QEMU: `-device virtio-net-pci,iommu_platform=on,disable-legacy=on`, \
             without it the bind fails with EINVAL)"
        ),
        d if d.starts_with("802.1Q") || matches!(d, "macvlan" | "ipvlan" | "bridge" | "bond" | "team" | "tun") => format!(
            "{driver} devices have no native XDP queues: attach to the physical NIC (with --vlan for a VLAN) \
             for zero-copy"
        ),
        "mlx5_core" | "ice" | "i40e" | "ixgbe" | "igc" | "igb" | "stmmac" | "bnxt_en" | "mlx4_en" | "idpf" => {
            format!(
                "{driver} supports AF_XDP zero-copy in recent kernels (this one is {kernel}): check `dmesg`, that \
                 the queue count covers the workers (`ethtool -l`), and that no other AF_XDP user holds the queue"
            )
        }
        _ => format!(
            "the {driver} driver has no AF_XDP zero-copy on {kernel}; drivers that have it include mlx5_core, \
             ice, i40e, ixgbe, igc and virtio_net (recent kernels)"
        ),
    }
}

/// `uname -r`, or "unknown".
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_facts() {
        assert_eq!(ifindex("lo").unwrap(), 1);
        assert_eq!(mtu("lo").unwrap(), 65536);
        let (n, how) = rx_queues("lo").unwrap();
        assert!(n >= 1, "{n} {how}");
    }

    #[test]
    fn missing_interface_is_named() {
        let e = mtu("nosuchif0").unwrap_err();
        assert!(e.to_string().contains("nosuchif0"), "{e}");
        assert!(ifindex("nosuchif0").is_err());
        assert!(rx_queues("nosuchif0").is_err());
        assert!(ifindex("way-too-long-interface-name").is_err());
    }

    #[test]
    fn zero_copy_hints_name_the_driver_and_the_way_out() {
        let v = zero_copy_hint("virtio_net", "6.12.95+deb13-amd64");
        assert!(v.contains("iommu_platform=on") && v.contains("6.12.95"), "{v}");
        assert!(!v.contains("mlx5"), "virtio_net's hint is not the Intel/Mellanox list: {v}");
        assert!(zero_copy_hint("veth", "6.18").contains("copy mode is its only mode"));
        assert!(zero_copy_hint("e1000", "6.1").contains("mlx5_core"));
    }
}
