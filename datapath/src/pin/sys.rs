//! The system as read: CPU lists, the calling thread's affinity (get and set), and the files the plan
//! reads (`/sys/class/net/IFACE/device`, `msi_irqs`, `/proc/interrupts`, IRQ affinities, CPU siblings)
//! gathered into a `SysView`.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;

use super::fmt_list;
use super::irq::parse_interrupts;
use super::MAX_CPUS;

/// Pin the calling thread to `cpu` (sched_setaffinity via libc, which is a dependency). Error says which
/// CPU and why.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= MAX_CPUS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("pin thread to CPU {cpu}: beyond the {MAX_CPUS} CPUs this code handles"),
        ));
    }
    let bits = libc::c_ulong::BITS as usize;
    let mut mask: Vec<libc::c_ulong> = vec![0; cpu / bits + 1];
    mask[cpu / bits] |= 1 << (cpu % bits);
    let bytes = std::mem::size_of_val(mask.as_slice());
    let this_thread: libc::c_long = 0;
    // SAFETY: `mask` is a live buffer of exactly `bytes` bytes; the kernel only reads `bytes` bytes from it
    // and keeps no reference. pid 0 means the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_sched_setaffinity, this_thread, bytes, mask.as_ptr()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        let hint = match allowed_cpus() {
            Ok(a) if !a.contains(&cpu) => {
                format!(" (CPU {cpu} is not among the allowed CPUs {})", fmt_list(&a))
            }
            _ => String::new(),
        };
        return Err(io::Error::new(
            e.kind(),
            format!("pin thread to CPU {cpu}: sched_setaffinity: {e}{hint}"),
        ));
    }
    Ok(())
}

/// The CPUs this process may run on (sched_getaffinity), ascending.
///
/// This is the calling thread's mask, which is the process's until some thread pins itself.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let word = std::mem::size_of::<libc::c_ulong>();
    let bits = libc::c_ulong::BITS as usize;
    let mut words = 1024 / bits;
    loop {
        let mut mask: Vec<libc::c_ulong> = vec![0; words];
        let bytes = words * word;
        let this_thread: libc::c_long = 0;
        // SAFETY: `mask` is a live, writable buffer of exactly `bytes` bytes; the kernel writes at most
        // `bytes` bytes into it and keeps no reference. pid 0 means the calling thread.
        let r = unsafe { libc::syscall(libc::SYS_sched_getaffinity, this_thread, bytes, mask.as_mut_ptr()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // EINVAL: the kernel's mask is larger than ours.
            if e.raw_os_error() == Some(libc::EINVAL) && words * bits < MAX_CPUS {
                words *= 2;
                continue;
            }
            return Err(io::Error::new(e.kind(), format!("sched_getaffinity: {e}")));
        }
        // The syscall returns the number of bytes it wrote.
        let written = (r as usize).min(bytes) / word;
        let cpus = mask[..written]
            .iter()
            .enumerate()
            .flat_map(|(i, &w)| (0..bits).filter(move |b| w >> b & 1 == 1).map(move |b| i * bits + b))
            .collect();
        return Ok(cpus);
    }
}

/// Parse a Linux cpu list such as "0-3,8,10-11".
///
/// Surrounding whitespace is ignored and an empty list is `Some(vec![])` (an IRQ's effective affinity can
/// be empty). The result is ascending without duplicates. `None` for anything malformed, a reversed range,
/// or a CPU number of 65536 or more.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let s = s.trim();
    let mut out = BTreeSet::new();
    if s.is_empty() {
        return Some(Vec::new());
    }
    for part in s.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (parse_cpu(a)?, parse_cpu(b)?),
            None => {
                let c = parse_cpu(part)?;
                (c, c)
            }
        };
        if lo > hi {
            return None;
        }
        out.extend(lo..=hi);
    }
    Some(out.into_iter().collect())
}

fn parse_cpu(s: &str) -> Option<usize> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&c| c < MAX_CPUS)
}

/// One IRQ's affinity files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct IrqAffinity {
    /// `/proc/irq/N/effective_affinity_list`, when present and parsable.
    pub(super) effective: Option<Vec<usize>>,
    /// `/proc/irq/N/smp_affinity_list`, when present and parsable.
    pub(super) smp: Option<Vec<usize>>,
}

impl IrqAffinity {
    /// The effective affinity when known and non-empty, else smp_affinity_list; with its source's name.
    /// An effective affinity outside smp_affinity_list is a move still pending (an MSI's new affinity takes
    /// effect at its next interrupt, e.g. right after `pin_irqs.sh`): smp_affinity_list is where it goes.
    pub(super) fn cpus(&self) -> (&[usize], &'static str) {
        match (&self.effective, &self.smp) {
            (Some(e), Some(s)) if !e.is_empty() && !s.is_empty() && !e.iter().all(|c| s.contains(c)) => {
                (s, "smp_affinity_list (move pending)")
            }
            (Some(e), _) if !e.is_empty() => (e, "effective affinity"),
            (_, Some(s)) => (s, "smp_affinity_list"),
            _ => (&[], "affinity"),
        }
    }
}

/// Everything [`plan_from`](super::plan_from) looks at, already read.
#[derive(Clone, Debug, Default)]
pub(super) struct SysView {
    /// `/proc/interrupts`.
    pub(super) interrupts: String,
    /// Per IRQ number: its affinity files.
    pub(super) irq_affinity: BTreeMap<u32, IrqAffinity>,
    /// The device's `msi_irqs` (empty when unknown).
    pub(super) msi_irqs: BTreeSet<u32>,
    /// No `/sys/class/net/IFACE/device`: no IRQs of its own.
    pub(super) is_virtual: bool,
    /// Basename of the device directory, e.g. "0000:3b:00.0" or "virtio2".
    pub(super) dev_name: Option<String>,
    /// PCI address of the device or of its PCI parent.
    pub(super) pci_addr: Option<String>,
    /// Per CPU: its `thread_siblings_list` (including itself).
    pub(super) siblings: BTreeMap<usize, Vec<usize>>,
    /// `/sys/devices/system/cpu/online`.
    pub(super) online: Option<Vec<usize>>,
    /// `sched_getaffinity`.
    pub(super) allowed: Vec<usize>,
}

fn with_ctx(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn read_list(path: &Path) -> Option<Vec<usize>> {
    std::fs::read_to_string(path).ok().and_then(|s| parse_cpu_list(&s))
}

fn is_pci_addr(s: &str) -> bool {
    // dddd:bb:dd.f (the domain may be longer on some platforms).
    let hex = |r: &str| !r.is_empty() && r.bytes().all(|b| b.is_ascii_hexdigit());
    let Some((rest, func)) = s.rsplit_once('.') else { return false };
    let parts: Vec<&str> = rest.split(':').collect();
    hex(func) && parts.len() == 3 && parts.iter().all(|p| hex(p))
}

fn read_msi(dir: &Path) -> BTreeSet<u32> {
    std::fs::read_dir(dir.join("msi_irqs"))
        .map(|rd| rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Read everything about `iface` and this machine that [`plan_from`](super::plan_from) needs.
pub(super) fn read_sys(iface: &str) -> io::Result<SysView> {
    if iface.is_empty() || iface == "." || iface == ".." || iface.contains('/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad interface name {iface:?}")));
    }
    let net = Path::new("/sys/class/net").join(iface);
    if !net.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no network interface {iface} ({} is missing)", net.display()),
        ));
    }
    let mut sys = SysView { allowed: allowed_cpus()?, ..SysView::default() };
    let cpu_dir = Path::new("/sys/devices/system/cpu");
    sys.online = read_list(&cpu_dir.join("online"));
    for &c in &sys.allowed {
        if let Some(s) = read_list(&cpu_dir.join(format!("cpu{c}/topology/thread_siblings_list"))) {
            sys.siblings.insert(c, s);
        }
    }
    let dev_link = net.join("device");
    if !dev_link.exists() {
        sys.is_virtual = true;
        return Ok(sys);
    }
    let dev = std::fs::canonicalize(&dev_link).map_err(|e| with_ctx(e, dev_link.display()))?;
    let name = dev.file_name().and_then(|n| n.to_str()).map(str::to_owned);
    if name.as_deref().is_some_and(is_pci_addr) {
        sys.pci_addr = name.clone();
        sys.msi_irqs = read_msi(&dev);
    } else if let Some(parent) = dev.parent() {
        let pname = parent.file_name().and_then(|n| n.to_str());
        if pname.is_some_and(is_pci_addr) {
            sys.pci_addr = pname.map(str::to_owned);
            sys.msi_irqs = read_msi(parent);
        }
    }
    sys.dev_name = name;
    sys.interrupts =
        std::fs::read_to_string("/proc/interrupts").map_err(|e| with_ctx(e, "read /proc/interrupts"))?;
    for line in parse_interrupts(&sys.interrupts) {
        let dir = Path::new("/proc/irq").join(line.irq.to_string());
        let aff = IrqAffinity {
            effective: read_list(&dir.join("effective_affinity_list")),
            smp: read_list(&dir.join("smp_affinity_list")),
        };
        sys.irq_affinity.insert(line.irq, aff);
    }
    Ok(sys)
}
