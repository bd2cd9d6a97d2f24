//! Setup: the worker's `SO_REUSEPORT` UDP socket (dual stack, buffer sizes, forced past the sysctl caps
//! as root), the ring with its depth fallbacks, and pushing and submitting SQEs.
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{squeue, IoUring};
use socket2::{Domain, Protocol, Socket, Type};

use super::{UringConfig, FALLBACK_SQ_DEPTH};

/// A socket about to bind `[::]` serves IPv4 peers too (as v4-mapped addresses), whatever
/// `net.ipv6.bindv6only` says: the server serves both families on one port in every mode.
pub fn dual_stack(socket: &Socket, addr: SocketAddr) -> io::Result<()> {
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false).map_err(|e| context(e, format!("IPV6_V6ONLY off on UDP {addr}")))?;
    }
    Ok(())
}

/// Make sure no other socket serves `addr`'s port before the workers bind it with `SO_REUSEPORT` (which
/// would let a second server of the same user share the port silently, splitting clients between two
/// canvases): bind it once without `SO_REUSEPORT`, which fails while any socket holds the port, and let go.
/// The error names the processes holding the port. Port 0 (pick one) is never shared.
pub fn claim_port(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| context(e, format!("creating UDP socket for {addr}")))?;
    dual_stack(&socket, addr)?;
    socket.bind(&addr.into()).map_err(|e| bind_error(e, addr))
}

/// A process holding a UDP socket on a port (see [`port_holders`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortHolder {
    /// Its pid.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`).
    pub comm: String,
}

impl std::fmt::Display for PortHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({})", self.pid, self.comm)
    }
}

/// One local address of `/proc/net/udp{,6}` ("0100007F:115C"; IPv6 as four 32-bit words, each in host
/// byte order), or None when it does not parse.
fn proc_net_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => std::net::IpAddr::from(word(0)?),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            std::net::IpAddr::from(b)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether a socket bound to `a` and one bound to `b` (same port) would receive the same datagrams: the
/// same address (an IPv4-mapped IPv6 one counts as the IPv4 one), or either the wildcard of its family.
/// (A dual-stack `[::]` overlaps every IPv4 address too; a v6-only one does not, which this does not
/// know: it errs on the side of overlap.)
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |ip: std::net::IpAddr| ip.to_canonical();
    a.port() == b.port() && {
        let (x, y) = (canon(a.ip()), canon(b.ip()));
        x == y || x.is_unspecified() || y.is_unspecified()
    }
}

/// Processes with a UDP socket bound to an address that overlaps `addr` (same port, same address or a
/// wildcard on either side; IPv4 or IPv6): empty when nothing is found, or when /proc cannot say
/// (another user's processes need root to be seen).
pub fn port_holders(addr: SocketAddr) -> Vec<PortHolder> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            let Some(local) = f.get(1).and_then(|l| proc_net_addr(l)) else { continue };
            if overlaps(local, addr) {
                if let Some(inode) = f.get(9).filter(|i| **i != "0") {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    let mut users = Vec::new();
    if inodes.is_empty() {
        return users;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else { return users };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|t| inodes.iter().any(|i| t.as_os_str() == i.as_str()))
        });
        if holds {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            users.push(PortHolder { pid, comm: comm.trim().to_string() });
        }
    }
    users.sort_by_key(|u| u.pid);
    users
}

/// Create, tune and bind the worker's UDP socket.
pub(super) fn open_socket(cfg: &UringConfig) -> io::Result<Socket> {
    let addr = cfg.listen;
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| context(e, format!("creating UDP socket for {addr}")))?;
    dual_stack(&socket, addr)?;
    let fd = socket.as_raw_fd();
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
        .map_err(|e| context(e, format!("SO_REUSEPORT on UDP {addr}")))?;
    set_buf_size(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, cfg.recv_buf)
        .map_err(|e| context(e, format!("SO_RCVBUF {} on UDP {addr}", cfg.recv_buf)))?;
    set_buf_size(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, cfg.send_buf)
        .map_err(|e| context(e, format!("SO_SNDBUF {} on UDP {addr}", cfg.send_buf)))?;
    socket.set_nonblocking(true).map_err(|e| context(e, format!("O_NONBLOCK on UDP {addr}")))?;
    socket.bind(&addr.into()).map_err(|e| bind_error(e, addr))?;
    Ok(socket)
}

/// A bind error that says what to do about it (a port in use names the processes holding it).
pub fn bind_error(e: io::Error, addr: SocketAddr) -> io::Error {
    let msg = match e.raw_os_error() {
        Some(libc::EADDRINUSE) => {
            let users = port_holders(addr);
            let by = if users.is_empty() {
                String::new()
            } else {
                format!(" by {}", users.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
            };
            format!(
                "UDP {addr} is already in use{by}: stop that server, pick another --listen, or hand the port \
                 over deliberately with --take-over (two servers on one port would split the clients between \
                 two canvases)"
            )
        }
        Some(libc::EADDRNOTAVAIL) => {
            format!("UDP {addr}: no such local address on this host: pick --listen")
        }
        Some(libc::EACCES) => {
            format!("UDP {addr}: permission denied (ports below 1024 need privileges)")
        }
        _ => format!("binding UDP {addr}: {e}"),
    };
    io::Error::new(e.kind(), msg)
}

/// Set a socket buffer size, trying the privileged `*FORCE` option (beyond `net.core.*mem_max`) first.
fn set_buf_size(fd: RawFd, force: libc::c_int, plain: libc::c_int, size: usize) -> io::Result<()> {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX / 2);
    set_int_opt(fd, libc::SOL_SOCKET, force, size).or_else(|_| set_int_opt(fd, libc::SOL_SOCKET, plain, size))
}

/// `setsockopt` of an int option.
fn set_int_opt(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its size is passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Build the ring: the configured depth with cooperative task running, then without it, then at
/// [`FALLBACK_SQ_DEPTH`]; the CQ holds every send and receive that can be in flight.
pub(super) fn setup_ring(cfg: &UringConfig) -> io::Result<IoUring> {
    let in_flight = cfg.tx_batches.saturating_mul(cfg.max_segments) + usize::from(cfg.buf_count) + 64;
    let mut depths = vec![cfg.sq_depth];
    if cfg.sq_depth > FALLBACK_SQ_DEPTH {
        depths.push(FALLBACK_SQ_DEPTH);
    }
    let mut last = None;
    for depth in depths {
        let cq = (depth as usize * 2).max(in_flight).min(u32::MAX as usize) as u32;
        for coop in [true, false] {
            let mut builder = IoUring::builder();
            builder.setup_cqsize(cq).setup_clamp();
            if coop {
                builder.setup_coop_taskrun().setup_taskrun_flag();
            }
            match builder.build(depth) {
                Ok(ring) => return Ok(ring),
                Err(e) => last = Some(e),
            }
        }
    }
    let e = last.unwrap_or_else(|| io::Error::other("no ring depth to try"));
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) => {
            " (io_uring is disabled or filtered: check `sysctl kernel.io_uring_disabled` (0 allows it) and \
             the container's seccomp profile, or use --mode xdp)"
        }
        Some(libc::ENOSYS) => " (this kernel has no io_uring: use --mode xdp)",
        Some(libc::ENOMEM) => " (raise the locked-memory limit, `ulimit -l`, or lower --io-uring-sq-depth)",
        _ => "",
    };
    Err(context(e, format!("io_uring_setup with {} entries for UDP {}{hint}", cfg.sq_depth, cfg.listen)))
}

/// Push one SQE, submitting first if the queue is full.
pub(super) fn push_sqe(ring: &mut IoUring, entry: &squeue::Entry) -> io::Result<()> {
    // SAFETY: every SQE built here points only at memory owned by the `UringSocket` that owns `ring`
    // (msghdrs in boxed slots, mapped buffers), which stays put until the completion is reaped or the
    // ring is gone (see `UringSocket::drop`).
    if unsafe { ring.submission().push(entry) }.is_ok() {
        return Ok(());
    }
    submit(ring).map_err(|e| context(e, "io_uring submit with a full SQ".into()))?;
    // SAFETY: as above.
    unsafe { ring.submission().push(entry) }
        .map_err(|_| io::Error::new(io::ErrorKind::WouldBlock, "io_uring submission queue full"))
}

/// Submit queued SQEs; a busy kernel (`EBUSY`/`EAGAIN`/`EINTR`) leaves them for the next try.
pub(super) fn submit(ring: &IoUring) -> io::Result<()> {
    match ring.submit() {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN | libc::EINTR)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `e` with a description of what failed, keeping its kind.
pub(super) fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_parse() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(proc_net_addr("0100007F:115C"), Some(a("127.0.0.1:4444")));
        assert_eq!(proc_net_addr("00000000:115C"), Some(a("0.0.0.0:4444")));
        assert_eq!(proc_net_addr("00000000000000000000000001000000:115C"), Some(a("[::1]:4444")));
        assert_eq!(
            proc_net_addr("0000000000000000FFFF00000100007F:115C"),
            Some(a("[::ffff:127.0.0.1]:4444"))
        );
        assert_eq!(proc_net_addr("B80D0120000000000000000010000000:01BB"), Some(a("[2001:db8::10]:443")));
        for bad in ["", "0100007F", "0100007F:", "0100007:115C", "zz00007F:115C", "0100007F:1FFFF"] {
            assert_eq!(proc_net_addr(bad), None, "{bad}");
        }
    }

    #[test]
    fn overlapping_addresses() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("127.0.0.1:4433"), a("127.0.0.1:4433")));
        assert!(overlaps(a("0.0.0.0:4433"), a("127.0.0.1:4433")));
        assert!(overlaps(a("127.0.0.1:4433"), a("[::]:4433")));
        assert!(overlaps(a("[::ffff:10.0.1.10]:4433"), a("10.0.1.10:4433")));
        assert!(!overlaps(a("127.0.0.1:4433"), a("127.0.0.2:4433")));
        assert!(!overlaps(a("127.0.0.1:4433"), a("127.0.0.1:4434")));
        assert!(!overlaps(a("[::1]:4433"), a("127.0.0.1:4433")));
    }

    #[test]
    fn a_held_port_names_this_process() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        let me = std::process::id();
        assert!(port_holders(addr).iter().any(|h| h.pid == me), "{:?}", port_holders(addr));
        let other = SocketAddr::new("127.0.0.2".parse().unwrap(), addr.port());
        assert!(port_holders(other).iter().all(|h| h.pid != me), "another address on the same port");
        let e = bind_error(io::Error::from_raw_os_error(libc::EADDRINUSE), addr).to_string();
        assert!(e.contains(&format!("pid {me} (")) && e.contains("--take-over"), "{e}");
    }
}
