//! Thin, checked wrappers over the libbpf and libc calls the loader makes; all of the crate's FFI.

use std::ffi::{c_void, CStr, CString};
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use libbpf_rs::libbpf_sys as sys;

/// libbpf ≥ 1.0 returns `-errno` (and sets errno) from its low-level API.
fn check(ret: i32) -> io::Result<i32> {
    if ret < 0 {
        Err(io::Error::from_raw_os_error(-ret))
    } else {
        Ok(ret)
    }
}

/// `if_nametoindex(3)` in the calling thread's network namespace; `None` when there is no such name.
pub(crate) fn ifindex_of(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// `if_indextoname(3)` in the calling thread's network namespace; `None` when there is no such index.
pub(crate) fn ifname_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write, including the NUL.
    let ret = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if ret.is_null() {
        return None;
    }
    // SAFETY: on success if_indextoname wrote a NUL-terminated name into `buf`.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// `uname -r`: the running kernel's release (from /proc, no FFI), or "unknown".
pub(crate) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// What `bpf_xdp_query` reports for one interface.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct XdpQuery {
    pub(crate) drv_prog_id: u32,
    pub(crate) skb_prog_id: u32,
    pub(crate) hw_prog_id: u32,
}

/// `bpf_xdp_query`: the XDP programs attached to `ifindex`, per mode (netlink, calling thread's netns).
pub(crate) fn xdp_query(ifindex: u32) -> io::Result<XdpQuery> {
    let mut opts =
        sys::bpf_xdp_query_opts { sz: mem::size_of::<sys::bpf_xdp_query_opts>() as _, ..Default::default() };
    // SAFETY: `opts` is a properly sized, initialised bpf_xdp_query_opts that libbpf only writes into.
    check(unsafe { sys::bpf_xdp_query(ifindex as i32, 0, &mut opts) })?;
    Ok(XdpQuery { drv_prog_id: opts.drv_prog_id, skb_prog_id: opts.skb_prog_id, hw_prog_id: opts.hw_prog_id })
}

/// `BPF_LINK_CREATE` for `BPF_XDP`: attaches `prog` to `ifindex` in the mode `flags` selects
/// (`XDP_FLAGS_DRV_MODE` or `XDP_FLAGS_SKB_MODE`). The program stays attached while the returned
/// link fd (or a dup of it) is open, or until [`link_detach`]. The kernel refuses (EBUSY) when any
/// XDP program is attached already: a link never replaces one.
pub(crate) fn xdp_link_create(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let opts = sys::bpf_link_create_opts {
        sz: mem::size_of::<sys::bpf_link_create_opts>() as _,
        flags,
        ..Default::default()
    };
    // SAFETY: `prog` is an open BPF program fd for the duration of the call; `opts` is a properly
    // sized bpf_link_create_opts with no pointers set.
    let fd = check(unsafe { sys::bpf_link_create(prog.as_raw_fd(), ifindex as i32, sys::BPF_XDP, &opts) })?;
    // SAFETY: on success bpf_link_create returns a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_LINK_DETACH`: detaches the link's program now, even if other processes hold dups of the fd.
pub(crate) fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: `link` is an open BPF link fd for the duration of the call.
    check(unsafe { sys::bpf_link_detach(link.as_raw_fd()) }).map(drop)
}

/// The kernel-wide id of a loaded program (what `ip link` and `bpftool prog` show).
pub(crate) fn prog_id(prog: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: bpf_prog_info is plain old data; all-zeroes is a valid value.
    let mut info: sys::bpf_prog_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<sys::bpf_prog_info>() as u32;
    // SAFETY: `info` is writable for `len` bytes; `prog` is an open fd for the duration of the call.
    check(unsafe { sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len) })?;
    Ok(info.id)
}

/// `BPF_MAP_UPDATE_ELEM` with a 4-byte key and a 4-byte value (the XSKMAP).
pub(crate) fn map_update_u32(map: BorrowedFd<'_>, key: u32, value: u32) -> io::Result<()> {
    // SAFETY: key and value point to 4 readable bytes each, the map's key and value sizes.
    check(unsafe {
        sys::bpf_map_update_elem(
            map.as_raw_fd(),
            (&key as *const u32).cast::<c_void>(),
            (&value as *const u32).cast::<c_void>(),
            u64::from(sys::BPF_ANY),
        )
    })
    .map(drop)
}

/// `SO_ATTACH_REUSEPORT_EBPF` on `socket`: `prog` (an SK_REUSEPORT program) selects the socket for each
/// datagram of `socket`'s reuseport group from then on.
pub(crate) fn attach_reuseport_prog(socket: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let fd: libc::c_int = prog.as_raw_fd();
    // SAFETY: `socket` is an open socket fd; the option value is a readable c_int of the size passed.
    let ret = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_EBPF,
            (&fd as *const libc::c_int).cast::<c_void>(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `BPF_MAP_DELETE_ELEM` with a 4-byte key.
pub(crate) fn map_delete_u32(map: BorrowedFd<'_>, key: u32) -> io::Result<()> {
    // SAFETY: key points to 4 readable bytes, the map's key size.
    check(unsafe { sys::bpf_map_delete_elem(map.as_raw_fd(), (&key as *const u32).cast::<c_void>()) })
        .map(drop)
}

/// `BPF_MAP_LOOKUP_ELEM` on a per-CPU array of u64: one value per possible CPU, into `out`.
pub(crate) fn percpu_lookup_u64(map: BorrowedFd<'_>, key: u32, out: &mut [u64]) -> io::Result<()> {
    assert_eq!(out.len(), possible_cpus()?, "one u64 per possible CPU");
    // SAFETY: the kernel writes one 8-byte-aligned u64 per possible CPU, exactly `out`'s length
    // (asserted above); key points to 4 readable bytes.
    check(unsafe {
        sys::bpf_map_lookup_elem(
            map.as_raw_fd(),
            (&key as *const u32).cast::<c_void>(),
            out.as_mut_ptr().cast::<c_void>(),
        )
    })
    .map(drop)
}

/// Number of possible CPUs (the per-CPU map value count), as libbpf reads it from sysfs.
pub(crate) fn possible_cpus() -> io::Result<usize> {
    // SAFETY: no arguments; libbpf caches the answer in a static.
    check(unsafe { sys::libbpf_num_possible_cpus() }).map(|n| n as usize)
}
