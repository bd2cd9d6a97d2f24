//! The two `SOL_XDP` socket options xsk-rs has no wrapper for: the copy-mode TX budget and the zero-copy bit.

use std::io;

/// `SOL_XDP` socket option level.
const SOL_XDP: libc::c_int = 283;

/// `XDP_MAX_TX_SKB_BUDGET` (Linux 6.17+): frames one copy-mode `sendto` may transmit, 32..=TX ring size.
pub(super) fn set_tx_budget(fd: i32, budget: u32) -> io::Result<()> {
    const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;
    // SAFETY: a u32 option value of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            SOL_XDP,
            XDP_MAX_TX_SKB_BUDGET,
            (&budget as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `XDP_OPTIONS` → zero-copy bit.
pub(super) fn xdp_zero_copy(fd: i32) -> Option<bool> {
    const XDP_OPTIONS: libc::c_int = 8;
    const XDP_OPTIONS_ZEROCOPY: u32 = 1;
    let mut opts: u32 = 0;
    let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
    // SAFETY: `opts` and `len` are valid for writes of the sizes given.
    let r = unsafe { libc::getsockopt(fd, SOL_XDP, XDP_OPTIONS, (&mut opts as *mut u32).cast(), &mut len) };
    (r == 0).then_some(opts & XDP_OPTIONS_ZEROCOPY != 0)
}
