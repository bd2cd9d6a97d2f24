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
}
