//! The canvas server's XDP program and its loader; and, in [`steer`], the io_uring mode's reuseport
//! program that steers packets to the worker owning their connection.
//!
//! # What the program does
//!
//! `src/bpf/canvas.bpf.c` runs on every frame the interface receives. It parses Ethernet, at most
//! one 802.1Q/802.1ad tag, IPv4 (IHL-aware; fragments go to the kernel) or IPv6 (UDP right after
//! the fixed header; extension headers are not walked), then UDP. A datagram to the configured
//! port (and VLAN, when one is configured) is redirected with
//! `bpf_redirect_map(&xsks, rx_queue_index, XDP_PASS)` into the AF_XDP socket the datapath placed
//! in slot `rx_queue_index` of the `xsks` XSKMAP. When that slot is empty, the redirect falls back
//! to `XDP_PASS`, so the datagram still reaches a kernel UDP socket (the io_uring fallback keeps
//! working while no AF_XDP socket is bound). Everything else — SSH, ARP, ICMP, other ports,
//! fragments, malformed frames — is passed to the kernel untouched. Every frame increments exactly
//! one [`Counter`] in a per-CPU array; [`XdpProgram::counters`] sums the CPUs.
//!
//! # VLANs
//!
//! With [`Config::vlan`] `Some(id)` (program on the parent NIC of a VLAN), the frame's outermost
//! tag must be `id`. A tag the NIC (or veth) stripped into receive metadata is read with the
//! `bpf_xdp_metadata_rx_vlan_tag` kfunc (Linux 6.8+). That kfunc only answers in a *device-bound*
//! program, and device-bound programs cannot run in generic mode, so the loader builds two
//! objects from the same source: `canvas` (no kfunc: any kernel, generic or native) and
//! `canvas_vlanmeta` (`-DCANVAS_VLAN_METADATA`, declared `__weak __ksym` and guarded by
//! `bpf_ksym_exists`, so it also loads on kernels without the kfunc). The second is loaded with
//! `BPF_F_XDP_DEV_BOUND_ONLY` only for a native attach with a VLAN configured and kernel BTF
//! present; if that load fails the plain object is used and [`XdpProgram::notes`] says why.
//! [`XdpProgram::vlan_metadata`] tells which one runs. With `vlan: None` the tag is not looked at
//! (attach to the VLAN sub-interface instead, or use an untagged network).
//!
//! # Kernels
//!
//! The program must load on every kernel the server supports, from Debian 12's 6.1 on; verifiers differ
//! (the 6.1, 6.12 and 6.18.15 ones do not track byte swaps, for one). The idioms that keep it loadable are
//! listed at the top of `src/bpf/canvas.bpf.c`; `scripts/vm.sh matrix` boots Debian's 6.1, 6.12 and newest
//! backports kernels under QEMU and serves through the program on each, so a change that breaks an older
//! verifier fails the suite. When the verifier refuses anyway, [`Error::Load`] carries the kernel release
//! and the last lines of the verifier's log ([`Error::verifier_log`]), captured from libbpf instead of
//! printed. What an older kernel lacks is a fallback with a note, never a failure: no device-bound programs
//! (< 6.3) or no RX VLAN metadata kfunc (< 6.8) → the plain object, tags matched in-band only.
//!
//! # Attaching
//!
//! The program is attached through a BPF link (`BPF_LINK_CREATE`, Linux 5.9+) rather than the
//! netlink `XDP_FLAGS_UPDATE_IF_NOEXIST` call. A link has the same never-replace semantics (the
//! kernel refuses with EBUSY when any XDP program is attached) and two more properties the
//! server wants: the program is detached when the process dies, however it dies, so a crash never
//! leaves a stale program stealing the port's traffic; and nobody can replace or remove it behind
//! the server's back (`ip link set dev IF xdp off` is refused while the link exists). Before
//! attaching, the loader queries the interface and refuses with [`Error::AlreadyAttached`] naming
//! the program id and how to remove it. [`AttachMode::Auto`] tries native (driver) mode and falls
//! back to generic (skb) mode, recording why in [`XdpProgram::notes`]; [`XdpProgram::mode`]
//! reports what it got. Drop detaches; [`XdpProgram::detach`] does the same and reports errors.
//!
//! The loaded program and maps are held by plain file descriptors, so an [`XdpProgram`] is
//! `Send + Sync` and does not care which thread or network namespace drops it; only
//! [`XdpProgram::attach`] and [`query`] resolve interface names and indexes, in the calling
//! thread's network namespace.
//!
//! # Layers
//!
//! `sys` (every FFI call, each `unsafe` with its `SAFETY:` argument) → `skel` (generated at build
//! time by libbpf-cargo into `OUT_DIR`, never committed) → this module (loading, mode selection,
//! attaching), with `config` (what to attach and how), `counters` and `error` beside it.
//!
//! Requirements: Linux ≥ 5.9, root or `CAP_BPF` + `CAP_NET_ADMIN` (`CAP_SYS_ADMIN` before 5.8).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

mod config;
mod counters;
mod error;
pub mod steer;
mod sys;
#[cfg(test)]
mod tests;

pub use config::{AttachMode, Config, Interface, Mode, MAX_ALLOW};
pub use counters::{Counter, Counters};
pub use error::Error;

#[allow(
    clippy::undocumented_unsafe_blocks,
    missing_debug_implementations,
    unused_imports,
    unsafe_op_in_unsafe_fn
)]
mod skel {
    //! libbpf-cargo skeletons of `src/bpf/canvas.bpf.c`, generated by build.rs into `OUT_DIR`.
    pub(crate) mod plain {
        include!(concat!(env!("OUT_DIR"), "/canvas.skel.rs"));
    }
    pub(crate) mod vlanmeta {
        include!(concat!(env!("OUT_DIR"), "/canvas_vlanmeta.skel.rs"));
    }
}

/// Capacity of the `xsks` XSKMAP: queues `0..XSKS_MAX_ENTRIES` can have a socket.
pub const XSKS_MAX_ENTRIES: u32 = 64;

/// Where kernel BTF lives; without it the kfunc variant cannot be loaded.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Device-bound programs (`BPF_F_XDP_DEV_BOUND_ONLY`) appeared in Linux 6.3; older kernels refuse
/// the unknown flag with a bare EINVAL, so the loader does not try.
const DEV_BOUND_MIN: (u32, u32) = (6, 3);

/// `bpf_xdp_metadata_rx_vlan_tag` appeared in Linux 6.8.
const VLAN_KFUNC_MIN: (u32, u32) = (6, 8);

/// What a kernel without RX VLAN metadata means for the operator.
const IN_BAND_ONLY: &str = "VLAN tags are matched in-band only, so keep VLAN stripping off on the NIC \
     (`ethtool -K IF rxvlan off`)";

/// Lines of the verifier log kept in [`Error::Load`].
const VERIFIER_LOG_LINES: usize = 12;

/// `(major, minor)` of a kernel release such as `6.1.0-28-amd64` or `6.18.44-fc-v669` (`uname -r`); the
/// one parser of it (`server doctor` uses it too).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.trim().split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Captures libbpf's messages while an object is opened and loaded.
mod verifier {
    use std::collections::VecDeque;
    use std::sync::{Mutex, MutexGuard};

    use libbpf_rs::PrintLevel;

    /// Serialises captures: libbpf's print callback is process-wide.
    static LOCK: Mutex<()> = Mutex::new(());
    static LINES: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

    /// Bound on the captured lines (a verifier log can be a megabyte): the newest are kept.
    const MAX_LINES: usize = 4096;

    fn record(_level: PrintLevel, msg: String) {
        let mut lines = LINES.lock().unwrap_or_else(|e| e.into_inner());
        for line in msg.lines() {
            if lines.len() == MAX_LINES {
                lines.pop_front();
            }
            lines.push_back(line.to_owned());
        }
    }

    /// While alive, libbpf's messages go to this capture; dropping it restores the previous printer.
    pub(crate) struct Capture {
        previous: Option<(PrintLevel, libbpf_rs::PrintCallback)>,
        _guard: MutexGuard<'static, ()>,
    }

    impl Capture {
        pub(crate) fn start() -> Capture {
            let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
            LINES.lock().unwrap_or_else(|e| e.into_inner()).clear();
            let previous = libbpf_rs::set_print(Some((PrintLevel::Info, record)));
            Capture { previous, _guard: guard }
        }

        /// The last `n` lines between libbpf's `-- BEGIN PROG LOAD LOG --` and `-- END PROG LOAD LOG --`
        /// markers (the verifier's own log), without libbpf's prefixes; empty when there was none.
        pub(crate) fn verifier_tail(&self, n: usize) -> Vec<String> {
            let mut lines = LINES.lock().unwrap_or_else(|e| e.into_inner());
            verifier_tail(lines.make_contiguous(), n)
        }
    }

    pub(crate) fn verifier_tail(lines: &[String], n: usize) -> Vec<String> {
        let Some(begin) = lines.iter().rposition(|l| l.contains("-- BEGIN PROG LOAD LOG --")) else {
            return Vec::new();
        };
        let end = lines[begin..]
            .iter()
            .position(|l| l.contains("-- END PROG LOAD LOG --"))
            .map_or(lines.len(), |i| begin + i);
        let body: Vec<String> = lines[begin + 1..end]
            .iter()
            .map(|l| l.trim_end().to_owned())
            .filter(|l| !l.is_empty() && !l.starts_with("processed ") && !l.starts_with("verification time"))
            .collect();
        body[body.len().saturating_sub(n)..].to_vec()
    }

    impl Drop for Capture {
        fn drop(&mut self) {
            libbpf_rs::set_print(self.previous);
        }
    }
}

/// The XDP program attached to one interface. Dropping it detaches the program.
#[derive(Debug)]
pub struct XdpProgram {
    interface: String,
    ifindex: u32,
    mode: Mode,
    config: Config,
    prog_id: u32,
    vlan_metadata: bool,
    notes: Vec<String>,
    nr_cpus: usize,
    /// The attachment. `None` once detached.
    link: Option<OwnedFd>,
    xsks: OwnedFd,
    counters: OwnedFd,
    /// Keeps the program alive for `prog_id` even between detach and drop.
    _prog: OwnedFd,
}

/// The kernel objects of one loaded program, by file descriptor.
struct Loaded {
    prog: OwnedFd,
    xsks: OwnedFd,
    counters: OwnedFd,
    vlan_metadata: bool,
}

impl XdpProgram {
    /// Loads the program configured by `config` and attaches it to `interface` (resolved in the
    /// calling thread's network namespace). Refuses when an XDP program is attached already.
    pub fn attach(interface: impl Into<Interface>, config: Config) -> Result<Self, Error> {
        config.validate()?;
        let (interface, ifindex) = interface.into().resolve()?;
        if let Some((prog_id, mode)) = query_index(&interface, ifindex)? {
            return Err(Error::AlreadyAttached { interface, prog_id, mode });
        }
        let modes: &[Mode] = match config.mode {
            AttachMode::Auto => &[Mode::Native, Mode::Generic],
            AttachMode::Native => &[Mode::Native],
            AttachMode::Generic => &[Mode::Generic],
        };
        let mut notes = Vec::new();
        let mut native_failure = None;
        for (attempt, &mode) in modes.iter().enumerate() {
            let loaded = load(&config, ifindex, mode, &mut notes)?;
            let link = match sys::xdp_link_create(loaded.prog.as_fd(), ifindex, mode.xdp_flag()) {
                Ok(link) => link,
                Err(errno) => match attach_error(&interface, ifindex, mode, errno, native_failure.take()) {
                    // Auto: a driver that refuses native mode gets generic mode. Privilege and
                    // already-attached errors would repeat there, so they end the attempt.
                    Error::Attach { source, hint, .. } if attempt + 1 < modes.len() => {
                        notes.push(format!(
                            "native attach failed ({source}: {hint}); fell back to generic mode"
                        ));
                        native_failure = Some(source.to_string());
                        continue;
                    }
                    error => return Err(error),
                },
            };
            let prog_id = sys::prog_id(loaded.prog.as_fd())
                .map_err(|source| Error::Io { operation: "reading the program id".into(), source })?;
            let nr_cpus = sys::possible_cpus()
                .map_err(|source| Error::Io { operation: "counting possible CPUs".into(), source })?;
            return Ok(XdpProgram {
                interface,
                ifindex,
                mode,
                config,
                prog_id,
                vlan_metadata: loaded.vlan_metadata,
                notes,
                nr_cpus,
                link: Some(link),
                xsks: loaded.xsks,
                counters: loaded.counters,
                _prog: loaded.prog,
            });
        }
        unreachable!("the last mode returns")
    }

    /// Detaches the program now, reporting errors (Drop does the same, silently).
    pub fn detach(mut self) -> Result<(), Error> {
        self.detach_link()
    }

    fn detach_link(&mut self) -> Result<(), Error> {
        let Some(link) = self.link.take() else { return Ok(()) };
        match sys::link_detach(link.as_fd()) {
            // ENOLINK: the interface went away and took the attachment with it.
            Err(e) if e.raw_os_error() != Some(libc::ENOLINK) => {
                Err(Error::Detach { interface: self.interface.clone(), source: e })
            }
            _ => Ok(()),
        }
    }

    /// Puts the AF_XDP socket `fd` in slot `queue` of the `xsks` map, replacing any socket there.
    /// The socket must be bound to this interface and this queue, or the frames redirected to it
    /// are dropped by the kernel (and still counted as [`Counter::Redirected`]).
    pub fn insert_socket(&self, queue: u32, fd: BorrowedFd<'_>) -> Result<(), Error> {
        if queue >= XSKS_MAX_ENTRIES {
            return Err(Error::QueueOutOfRange { queue });
        }
        let raw = fd.as_raw_fd() as u32;
        sys::map_update_u32(self.xsks.as_fd(), queue, raw).map_err(|source| match source.raw_os_error() {
            Some(libc::EPERM) => Error::PermissionDenied {
                operation: format!("inserting an AF_XDP socket for queue {queue}"),
                source,
            },
            _ => Error::Io {
                operation: format!(
                    "inserting fd {raw} for queue {queue} into the xsks map (it must be an AF_XDP \
                     socket with an RX ring, bound to {} queue {queue})",
                    self.interface
                ),
                source,
            },
        })
    }

    /// Empties slot `queue`: its datagrams go to the kernel again. Idempotent: the kernel's XSKMAP
    /// delete succeeds on an empty slot, and the map cannot be read from user space to tell.
    pub fn remove_socket(&self, queue: u32) -> Result<(), Error> {
        if queue >= XSKS_MAX_ENTRIES {
            return Err(Error::QueueOutOfRange { queue });
        }
        sys::map_delete_u32(self.xsks.as_fd(), queue).map_err(|source| Error::Io {
            operation: format!("removing the socket of queue {queue} from the xsks map"),
            source,
        })
    }

    /// The counters, summed over CPUs (one map lookup per counter).
    pub fn counters(&self) -> Result<Counters, Error> {
        let mut per_cpu = vec![0u64; self.nr_cpus];
        let mut counters = Counters::default();
        for counter in Counter::ALL {
            sys::percpu_lookup_u64(self.counters.as_fd(), counter as u32, &mut per_cpu).map_err(
                |source| Error::Io { operation: format!("reading counter {}", counter.c_name()), source },
            )?;
            counters.values[counter as usize] = per_cpu.iter().sum();
        }
        Ok(counters)
    }

    /// The mode the program runs in (what [`AttachMode::Auto`] got).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The kernel's id of the program (`ip -d link show`, `bpftool prog show id N`).
    pub fn prog_id(&self) -> u32 {
        self.prog_id
    }

    /// The interface name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface index (in the namespace it was attached in).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The configuration it was attached with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the program reads VLAN tags the NIC stripped into receive metadata (device-bound
    /// `canvas_vlanmeta` object), in addition to in-band tags.
    pub fn vlan_metadata(&self) -> bool {
        self.vlan_metadata
    }

    /// Fallbacks taken while attaching, and why (for the server's startup log).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
}

impl Drop for XdpProgram {
    fn drop(&mut self) {
        // Detach explicitly (not only by closing the fd) so that a dup of the link fd inherited
        // by a forked child cannot keep the program attached.
        let _ = self.detach_link();
    }
}

/// The XDP program attached to `interface` (any owner), as (prog id, mode), if any.
pub fn query(interface: impl Into<Interface>) -> Result<Option<(u32, Mode)>, Error> {
    let (name, index) = interface.into().resolve()?;
    query_index(&name, index)
}

fn query_index(interface: &str, ifindex: u32) -> Result<Option<(u32, Mode)>, Error> {
    let q = sys::xdp_query(ifindex).map_err(|source| Error::Io {
        operation: format!("querying the XDP programs of {interface} (bpf_xdp_query)"),
        source,
    })?;
    Ok([(q.drv_prog_id, Mode::Native), (q.skb_prog_id, Mode::Generic), (q.hw_prog_id, Mode::Offload)]
        .into_iter()
        .find(|&(id, _)| id != 0))
}

fn attach_error(
    interface: &str,
    ifindex: u32,
    mode: Mode,
    source: io::Error,
    native_failure: Option<String>,
) -> Error {
    let errno = source.raw_os_error().unwrap_or(0);
    match errno {
        libc::EPERM | libc::EACCES => {
            Error::PermissionDenied { operation: format!("attaching XDP to {interface}"), source }
        }
        libc::ENODEV => Error::InterfaceNotFound { interface: interface.to_owned() },
        // Someone attached between our query and our attach.
        libc::EBUSY | libc::EEXIST => match query_index(interface, ifindex) {
            Ok(Some((prog_id, mode))) => {
                Error::AlreadyAttached { interface: interface.to_owned(), prog_id, mode }
            }
            _ => Error::Attach {
                interface: interface.to_owned(),
                mode,
                source,
                hint: "an XDP program is (or was just) attached; check `ip -d link show`",
                native_failure,
            },
        },
        _ => {
            let hint = match (mode, errno) {
                (Mode::Native, libc::EOPNOTSUPP) => {
                    "the driver has no native XDP support: use AttachMode::Generic (or Auto)"
                }
                (Mode::Native, libc::ERANGE) | (Mode::Native, libc::E2BIG) => {
                    "the MTU is too large for single-buffer XDP on this driver: lower it (1500 works \
                     everywhere) or use AttachMode::Generic"
                }
                (Mode::Native, libc::ENOMEM) | (Mode::Native, libc::ENOSPC) => {
                    "the driver could not set up its XDP queues (virtio_net needs more queue pairs than \
                     CPUs: raise the VM's queues or reduce `ethtool -L IF combined N`), or use \
                     AttachMode::Generic"
                }
                (Mode::Native, _) => {
                    "the driver refused; check `dmesg`, disable LRO (`ethtool -K IF lro off`), use an MTU \
                     ≤ 3498 on veth, or use AttachMode::Generic"
                }
                (_, libc::EINVAL) => {
                    "the kernel may be older than 5.9 (no BPF links for XDP), or the interface type \
                     cannot run XDP; check `dmesg`"
                }
                _ => "check `dmesg` and `ip -d link show`",
            };
            Error::Attach { interface: interface.to_owned(), mode, source, hint, native_failure }
        }
    }
}

/// Loads the object suited to `mode` and the VLAN configuration.
fn load(config: &Config, ifindex: u32, mode: Mode, notes: &mut Vec<String>) -> Result<Loaded, Error> {
    if config.vlan.is_some() {
        if mode != Mode::Native {
            notes.push(
                "generic mode: VLAN tags stripped into metadata cannot be read (XDP metadata kfuncs need \
                 a device-bound native program); only in-band tags match"
                    .into(),
            );
        } else if !Path::new(VMLINUX_BTF).exists() {
            notes.push(format!(
                "no kernel BTF ({VMLINUX_BTF}): VLAN tags stripped into metadata cannot be read; only \
                 in-band tags match"
            ));
        } else {
            let kernel = sys::kernel_release();
            let version = kernel_version(&kernel);
            match version {
                Some(v) if v < DEV_BOUND_MIN => notes.push(format!(
                    "Linux {kernel} has no device-bound XDP programs (6.3+) nor the RX VLAN metadata kfunc \
                     (6.8+): {IN_BAND_ONLY}"
                )),
                _ => match load_vlanmeta(config, ifindex) {
                    Ok(loaded) => {
                        if version.is_some_and(|v| v < VLAN_KFUNC_MIN) {
                            notes.push(format!("Linux {kernel} has no RX VLAN metadata kfunc (6.8+): {IN_BAND_ONLY}"));
                        }
                        return Ok(loaded);
                    }
                    Err(e @ Error::PermissionDenied { .. }) => return Err(e),
                    Err(e) => notes.push(format!(
                        "the device-bound VLAN-metadata object did not load on Linux {kernel} ({e}); using the \
                         plain object: {IN_BAND_ONLY}"
                    )),
                },
            }
        }
    }
    load_plain(config)
}

/// Fills the skeleton's read-only config, optionally marks the program device-bound, loads the
/// object and keeps the program and map fds (the skeleton itself is dropped).
macro_rules! load_skeleton {
    ($module:path, $builder:ident, $object:literal, $config:expr, $dev_bound:expr) => {{
        use libbpf_rs::skel::{OpenSkel as _, SkelBuilder as _};
        use $module as skel_mod;

        let config: &Config = $config;
        let dev_bound: Option<u32> = $dev_bound;
        let load_error = |source: libbpf_rs::Error, log: &verifier::Capture| match source.kind() {
            libbpf_rs::ErrorKind::PermissionDenied => Error::PermissionDenied {
                operation: format!("loading the BPF object {}", $object),
                source: io::Error::from_raw_os_error(libc::EPERM),
            },
            _ => Error::Load {
                object: $object,
                source,
                kernel: sys::kernel_release(),
                verifier_log: log.verifier_tail(VERIFIER_LOG_LINES),
            },
        };
        // libbpf's messages (the verifier log among them) are captured for the error instead of
        // going to stderr: a refused VLAN-metadata object is an expected fallback, not noise.
        let log = verifier::Capture::start();
        let mut storage = MaybeUninit::uninit();
        let mut open = skel_mod::$builder::default().open(&mut storage).map_err(|e| load_error(e, &log))?;
        let rodata = open.maps.rodata_data.as_deref_mut().expect("the object has a .rodata map");
        rodata.cfg.port = config.port.to_be();
        rodata.cfg.vlan_id = config.vlan.unwrap_or(0);
        rodata.cfg.vlan_match = u8::from(config.vlan.is_some());
        rodata.cfg.allow_match = u8::from(!config.allow.is_empty());
        if let Some(ifindex) = dev_bound {
            open.progs.canvas_xdp.set_ifindex(ifindex);
            // SEC("xdp") sets no other load flag.
            open.progs.canvas_xdp.set_flags(libbpf_rs::libbpf_sys::BPF_F_XDP_DEV_BOUND_ONLY);
        }
        let skel = open.load().map_err(|e| load_error(e, &log))?;
        drop(log);
        for &(addr, len) in &config.allow {
            use libbpf_rs::MapCore as _;
            let mut key = u32::from(len).to_ne_bytes().to_vec();
            let map = match addr {
                std::net::IpAddr::V4(a) => {
                    key.extend_from_slice(&a.octets());
                    &skel.maps.allow4
                }
                std::net::IpAddr::V6(a) => {
                    key.extend_from_slice(&a.octets());
                    &skel.maps.allow6
                }
            };
            map.update(&key, &[1], libbpf_rs::MapFlags::ANY).map_err(|e| Error::Io {
                operation: format!("adding {addr}/{len} to the allowlist map"),
                source: io::Error::other(e),
            })?;
        }
        let dup = |fd: BorrowedFd<'_>, what: &str| {
            fd.try_clone_to_owned()
                .map_err(|source| Error::Io { operation: format!("duplicating the {what} fd"), source })
        };
        Loaded {
            prog: dup(skel.progs.canvas_xdp.as_fd(), "program")?,
            xsks: dup(skel.maps.xsks.as_fd(), "xsks map")?,
            counters: dup(skel.maps.counters.as_fd(), "counters map")?,
            vlan_metadata: dev_bound.is_some(),
        }
    }};
}

fn load_plain(config: &Config) -> Result<Loaded, Error> {
    Ok(load_skeleton!(skel::plain, CanvasSkelBuilder, "canvas", config, None))
}

fn load_vlanmeta(config: &Config, ifindex: u32) -> Result<Loaded, Error> {
    Ok(load_skeleton!(skel::vlanmeta, CanvasVlanmetaSkelBuilder, "canvas_vlanmeta", config, Some(ifindex)))
}
