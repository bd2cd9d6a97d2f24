//! The few libc calls the standard library and socket2 do not wrap; the only unsafe code of the crate.
#![allow(unsafe_code)]

use socket2::Socket;

/// Set a socket buffer size with `SO_RCVBUFFORCE`/`SO_SNDBUFFORCE` (ignores `net.core.*mem_max`; needs
/// CAP_NET_ADMIN), reporting whether it worked.
#[cfg(target_os = "linux")]
pub fn set_force(sock: &Socket, opt: libc::c_int, size: usize) -> bool {
    use std::os::fd::AsRawFd;
    let val = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: `sock` owns a valid open descriptor for the duration of the call; the option value pointer
    // refers to a live `c_int` and the length passed is exactly its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// Without the FORCE options: never works.
#[cfg(not(target_os = "linux"))]
pub fn set_force(_: &Socket, _: i32, _: usize) -> bool {
    false
}

/// CPU time and peak memory of this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// User CPU seconds.
    pub user_s: f64,
    /// System CPU seconds.
    pub sys_s: f64,
    /// Peak resident set size in MiB.
    pub max_rss_mib: f64,
}

/// Resource usage of the whole process so far (all threads).
#[cfg(unix)]
pub fn usage() -> Usage {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` points to writable memory of the size of `rusage`; RUSAGE_SELF is always valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return Usage::default();
    }
    // SAFETY: getrusage succeeded, so it initialised the struct (and it was zeroed before anyway).
    let ru = unsafe { ru.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    // Linux reports ru_maxrss in KiB.
    Usage { user_s: secs(ru.ru_utime), sys_s: secs(ru.ru_stime), max_rss_mib: ru.ru_maxrss as f64 / 1024.0 }
}

/// Not available: zeros.
#[cfg(not(unix))]
pub fn usage() -> Usage {
    Usage::default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn usage_is_plausible() {
        let u = super::usage();
        // The test process has run, so it has used some CPU time and memory.
        assert!(u.max_rss_mib > 0.0 && u.user_s + u.sys_s > 0.0, "{u:?}");
    }
}
