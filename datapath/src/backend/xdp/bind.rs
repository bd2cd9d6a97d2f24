//! Binding: the UMEM (hugetlb or small pages), the zero-copy probe, the socket bind in zero-copy or copy
//! mode with its retries, and the errors that say what to do.
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig, XdpFlags,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use super::frames::{Frames, FILL, FREE};
use super::sockopt::{set_tx_budget, xdp_zero_copy};
use super::{
    Neighbours, UmemPages, XdpConfig, XdpSockStats, XdpSocket, ZeroCopy, EBUSY_RETRY, FRAME_SIZE,
    RX_RING_FACTOR, XDP_HEADROOM,
};
use crate::frame;
use crate::netdev;
use crate::seam::BackendStats;

/// An error binding a socket, with what to do about it.
#[derive(Debug)]
pub struct BindError {
    msg: String,
    source: Option<io::Error>,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)?;
        if let Some(e) = &self.source {
            write!(f, " ({e})")?;
        }
        Ok(())
    }
}

impl std::error::Error for BindError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

impl From<BindError> for io::Error {
    fn from(e: BindError) -> io::Error {
        io::Error::other(e.to_string())
    }
}

impl BindError {
    fn errno(&self) -> Option<i32> {
        self.source.as_ref().and_then(|e| e.raw_os_error())
    }

    /// The kernel's error when there is one, else the message.
    pub fn reason(&self) -> String {
        self.source.as_ref().map(|e| e.to_string()).unwrap_or_else(|| self.msg.clone())
    }

    /// The driver or device does not do what was asked (as opposed to permissions, a busy queue, …).
    pub fn is_unsupported(&self) -> bool {
        matches!(self.errno(), Some(libc::EOPNOTSUPP | libc::EINVAL | libc::EPROTONOSUPPORT))
    }
}

/// Whether `iface` queue `queue` grants a zero-copy AF_XDP socket: binds one on a small UMEM on ordinary
/// pages and closes it. A refused bind must not cost a real UMEM: the kernel releases a registered UMEM's
/// pinned pages asynchronously, so its huge pages would not yet be free for the copy-mode bind that
/// follows. `Err` with [`BindError::is_unsupported`] means "no zero-copy here"; any other error would also
/// stop a copy-mode socket.
pub fn probe_zero_copy(iface: &str, queue: u32, listen: SocketAddr) -> Result<(), BindError> {
    let probe =
        XdpConfig { pages: UmemPages::Small, frames: 128, ring: 64, ..XdpConfig::new(iface, queue, listen) };
    XdpSocket::try_bind(&probe, true, &mut Vec::new()).map(drop)
}

fn bind_err(msg: impl Into<String>, source: Option<io::Error>) -> BindError {
    BindError { msg: msg.into(), source }
}

/// The error inside an xsk-rs error, if it carries one.
fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<io::Error> {
    e.source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .and_then(|e| e.raw_os_error())
        .map(io::Error::from_raw_os_error)
}

type Parts = (TxQueue, RxQueue, FillQueue, CompQueue, Umem, Vec<FrameDesc>, bool, bool);

impl XdpSocket {
    /// Create the UMEM, bind an AF_XDP socket to `cfg.iface` queue `cfg.queue`, and fill the fill ring.
    /// The socket receives nothing until its fd is put in the XDP program's `xsks` map at `cfg.queue`.
    pub fn bind(cfg: &XdpConfig) -> Result<XdpSocket, BindError> {
        let mut notes = Vec::new();
        if !cfg.ring.is_power_of_two() || cfg.ring < 64 {
            return Err(bind_err(format!("ring size {} must be a power of two >= 64", cfg.ring), None));
        }
        if cfg.frames < 2 * cfg.ring {
            return Err(bind_err(
                format!(
                    "{} UMEM frames cannot fill a {}-entry fill ring and still transmit: use at least {}",
                    cfg.frames,
                    cfg.ring,
                    2 * cfg.ring
                ),
                None,
            ));
        }
        let (queues, _) = netdev::rx_queues(&cfg.iface).map_err(|e| bind_err(e.to_string(), None))?;
        if cfg.queue >= queues {
            return Err(bind_err(
                format!(
                    "{} has {queues} receive queue(s), so there is no queue {}: use fewer workers (-w {queues}) or more queues (`ethtool -L {} combined N`)",
                    cfg.iface, cfg.queue, cfg.iface
                ),
                None,
            ));
        }
        let mtu = netdev::mtu(&cfg.iface).map_err(|e| bind_err(e.to_string(), None))? as usize;
        // Room for the largest header served: an IPv6 one when IPv6 peers are served (an IPv6 listen
        // address; `[::]` is dual stack: IPv4 frames then move their payload down 20 bytes in `tx_commit`).
        let v6 = cfg.listen.is_ipv6();
        let ip_hdr = if v6 { frame::IPV6_HLEN } else { frame::IPV4_HLEN };
        let hdr_len = frame::header_len(cfg.vlan.is_some(), v6);
        let frame_room = FRAME_SIZE as usize - XDP_HEADROOM;
        let max_payload =
            cfg.max_payload.min(mtu.saturating_sub(ip_hdr + frame::UDP_HLEN)).min(frame_room - hdr_len);
        if max_payload < 1200 {
            return Err(bind_err(
                format!(
                    "{} has MTU {mtu}: a {}-byte UDP payload leaves less than QUIC's 1200 bytes; raise the MTU (`ip link set dev {} mtu 1400`)",
                    cfg.iface, max_payload, cfg.iface
                ),
                None,
            ));
        }
        if max_payload < cfg.max_payload {
            notes.push(format!(
                "UDP payload capped at {max_payload} bytes by the MTU of {} ({mtu})",
                cfg.iface
            ));
        }

        let (tx, rx, fq, cq, umem, descs, zero_copy, hugetlb) = Self::bind_parts(cfg, &mut notes)?;
        let n = descs.len();
        // SAFETY: `descs[0]` came from this UMEM; `data` only forms a slice over its frame.
        let data0 = unsafe { umem.data(&descs[0]) };
        let base = data0.contents().as_ptr().wrapping_sub(descs[0].addr()) as *mut u8;
        let mut s = XdpSocket {
            cfg: cfg.clone(),
            rx,
            tx,
            fq,
            cq,
            umem,
            base,
            umem_len: n * FRAME_SIZE as usize,
            descs,
            frames: Frames::new(n),
            free: (0..n as u32).rev().collect(),
            scratch: vec![FrameDesc::default(); cfg.ring as usize],
            refill: Vec::with_capacity(cfg.ring as usize),
            pending: Vec::with_capacity(cfg.ring as usize),
            slot: None,
            unkicked: false,
            neighbours: Neighbours::default(),
            hdr_len,
            max_payload,
            ip_id: 0,
            zero_copy,
            hugetlb,
            stats: BackendStats::default(),
            xstats: XdpSockStats::default(),
            notes,
        };
        // Give the kernel a full fill ring.
        for _ in 0..cfg.ring {
            let i = s.free.pop().expect("frames >= 2 * ring");
            s.frames.moved(i as usize, FREE, FILL);
            s.refill.push(s.descs[i as usize]);
        }
        s.push_fill();
        if s.frames.count[FILL as usize] != cfg.ring {
            return Err(bind_err(
                format!("the fill ring of {} queue {} took only part of its frames", cfg.iface, cfg.queue),
                None,
            ));
        }
        Ok(s)
    }

    fn bind_parts(cfg: &XdpConfig, notes: &mut Vec<String>) -> Result<Parts, BindError> {
        let zc = match cfg.zero_copy {
            ZeroCopy::Off => false,
            ZeroCopy::Auto | ZeroCopy::On => match probe_zero_copy(&cfg.iface, cfg.queue, cfg.listen) {
                Ok(()) => true,
                Err(e) if !e.is_unsupported() => return Err(e),
                Err(e) if cfg.zero_copy == ZeroCopy::On => {
                    return Err(bind_err(
                        format!(
                            "--zero-copy on: the {} driver of {} refused a zero-copy AF_XDP socket on queue {} ({}); \
                             use --zero-copy auto to fall back to copy mode, or a NIC whose driver supports AF_XDP zero-copy",
                            netdev::driver(&cfg.iface),
                            cfg.iface,
                            cfg.queue,
                            e.reason()
                        ),
                        None,
                    ))
                }
                Err(e) => {
                    let driver = netdev::driver(&cfg.iface);
                    notes.push(format!(
                        "zero-copy refused by the {driver} driver of {} ({}): using copy mode; {}",
                        cfg.iface,
                        e.reason(),
                        netdev::zero_copy_hint(&driver, &netdev::kernel_release())
                    ));
                    false
                }
            },
        };
        // After a successful probe the kernel may hold the queue for ~0.5 s: `try_bind` retries EBUSY.
        Self::try_bind(cfg, zc, notes)
    }

    fn make_umem(
        cfg: &XdpConfig,
        notes: &mut Vec<String>,
    ) -> Result<(Umem, Vec<FrameDesc>, bool), BindError> {
        let ucfg = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).expect("valid frame size"))
            .fill_queue_size(QueueSize::new(cfg.ring).map_err(|e| bind_err(e.to_string(), None))?)
            .comp_queue_size(QueueSize::new(cfg.ring).map_err(|e| bind_err(e.to_string(), None))?)
            .frame_headroom(0)
            .build()
            .map_err(|e| bind_err(e.to_string(), None))?;
        let count = NonZeroU32::new(cfg.frames).ok_or_else(|| bind_err("--xdp-frames must be > 0", None))?;
        let bytes = cfg.frames as usize * FRAME_SIZE as usize;
        let huge_ok = bytes.is_multiple_of(2 << 20);
        if cfg.pages != UmemPages::Small {
            if !huge_ok {
                if cfg.pages == UmemPages::HugeTlb {
                    return Err(bind_err(format!("a UMEM of {} frames is not a whole number of 2 MiB pages: use a multiple of 1024", cfg.frames), None));
                }
            } else {
                match Umem::new(ucfg, count, true) {
                    Ok((u, d)) => {
                        notes.push(format!("UMEM on 2 MiB hugetlb pages ({} MiB)", bytes >> 20));
                        return Ok((u, d, true));
                    }
                    Err(e) if cfg.pages == UmemPages::HugeTlb => {
                        return Err(bind_err(
                            format!(
                                "UMEM of {} MiB on 2 MiB hugetlb pages failed: reserve them first \
                                 (`echo $(( $(cat /proc/sys/vm/nr_hugepages) + {} )) > /proc/sys/vm/nr_hugepages`) or use --hugepages auto",
                                bytes >> 20,
                                bytes >> 21
                            ),
                            os_error(&e),
                        ))
                    }
                    Err(e) => notes.push(format!(
                        "UMEM on 4 KiB pages: no {} free 2 MiB hugetlb pages ({}); reserve them with `echo N > /proc/sys/vm/nr_hugepages`",
                        bytes >> 21,
                        os_error(&e).map(|e| e.to_string()).unwrap_or_else(|| e.to_string())
                    )),
                }
            }
        }
        let (u, d) = Umem::new(ucfg, count, false).map_err(|e| {
            let src = os_error(&e);
            bind_err(format!("cannot create a {} MiB UMEM: {e} (is RLIMIT_MEMLOCK too low? run as root or `ulimit -l unlimited`)", bytes >> 20), src)
        })?;
        if cfg.pages == UmemPages::Small {
            notes.push(format!("UMEM on 4 KiB pages ({} MiB)", bytes >> 20));
        }
        Ok((u, d, false))
    }

    fn try_bind(cfg: &XdpConfig, zc: bool, notes: &mut Vec<String>) -> Result<Parts, BindError> {
        let deadline = Instant::now() + EBUSY_RETRY;
        loop {
            match Self::try_bind_once(cfg, zc, notes) {
                // A just-closed socket on this queue is released asynchronously (~0.5 s).
                Err(e) if e.errno() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) if e.errno() == Some(libc::EBUSY) => {
                    return Err(bind_err(
                        format!(
                            "{} queue {} already has an AF_XDP socket (another server running?)",
                            cfg.iface, cfg.queue
                        ),
                        e.source,
                    ))
                }
                r => return r,
            }
        }
    }

    fn try_bind_once(cfg: &XdpConfig, zc: bool, notes: &mut Vec<String>) -> Result<Parts, BindError> {
        let mut umem_notes = Vec::new();
        let (umem, descs, hugetlb) = Self::make_umem(cfg, &mut umem_notes)?;
        let mut flags = BindFlags::XDP_USE_NEED_WAKEUP;
        flags |= if zc { BindFlags::XDP_ZEROCOPY } else { BindFlags::XDP_COPY };
        let scfg = SocketConfig::builder()
            .rx_queue_size(
                QueueSize::new(cfg.ring * RX_RING_FACTOR).map_err(|e| bind_err(e.to_string(), None))?,
            )
            .tx_queue_size(QueueSize::new(cfg.ring).map_err(|e| bind_err(e.to_string(), None))?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .xdp_flags(XdpFlags::empty())
            .bind_flags(flags)
            .build();
        let ifname: Interface =
            cfg.iface.parse().map_err(|_| bind_err(format!("bad interface name {:?}", cfg.iface), None))?;
        // SAFETY: the UMEM is not shared (each socket makes its own), so the shared-UMEM double-free caveat
        // of `Socket::new` does not apply; INHIBIT_PROG_LOAD is set anyway.
        match unsafe { xsk_rs::Socket::new(scfg, &umem, &ifname, cfg.queue) } {
            Ok((tx, rx, Some((fq, cq)))) => {
                let granted = xdp_zero_copy(rx.fd().as_raw_fd()).unwrap_or(zc);
                if !granted {
                    // Copy mode transmits at most 32 frames per `sendto` unless told otherwise (Linux 6.17+).
                    match set_tx_budget(rx.fd().as_raw_fd(), cfg.ring) {
                        Ok(()) => {
                            umem_notes.push(format!("copy-mode transmit budget {} frames per kick", cfg.ring))
                        }
                        Err(e) => umem_notes.push(format!(
                            "copy-mode transmit budget stays at 32 frames per kick: Linux {} has no \
                             XDP_MAX_TX_SKB_BUDGET (6.17+) ({e}); transmit kicks repeat instead",
                            netdev::kernel_release()
                        )),
                    }
                }
                notes.extend(umem_notes);
                notes.push(format!(
                    "AF_XDP socket on {} queue {} in {} mode",
                    cfg.iface,
                    cfg.queue,
                    if granted { "zero-copy" } else { "copy" }
                ));
                Ok((tx, rx, fq, cq, umem, descs, granted, hugetlb))
            }
            Ok(_) => Err(bind_err("libxdp returned no fill/completion rings for a fresh UMEM", None)),
            Err(e) => {
                let os = os_error(&e);
                let msg = match os.as_ref().and_then(|e| e.raw_os_error()) {
                    Some(libc::EPERM | libc::EACCES) => {
                        "AF_XDP needs root (or CAP_NET_RAW + CAP_NET_ADMIN + CAP_BPF)".to_string()
                    }
                    Some(libc::ENODEV | libc::ENXIO) => {
                        format!("no interface `{}` in this network namespace", cfg.iface)
                    }
                    _ => format!(
                        "cannot bind an AF_XDP socket ({} mode) to {} queue {}: {e}",
                        if zc { "zero-copy" } else { "copy" },
                        cfg.iface,
                        cfg.queue
                    ),
                };
                Err(bind_err(msg, os))
            }
        }
    }
}
