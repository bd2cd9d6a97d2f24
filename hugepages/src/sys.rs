//! Thin wrappers over `mmap`, `munmap`, `madvise` and `sysconf`.

use std::{io, ptr, ptr::NonNull};

/// Maps `len` bytes of private, anonymous, zero-filled read-write memory with extra `flags`.
pub(crate) fn mmap_anon(len: usize, flags: libc::c_int) -> io::Result<NonNull<u8>> {
    // SAFETY: a new anonymous mapping at an address the kernel chooses aliases no existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned address 0"))
}

/// Unmaps `len` bytes at `ptr`; a zero `len` is a no-op.
///
/// # Safety
///
/// `ptr..ptr + len` must be a page-aligned range this crate mapped; nothing may use it afterwards.
pub(crate) unsafe fn munmap(ptr: *mut u8, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: the caller guarantees the range is ours and no longer referenced.
    let rc = unsafe { libc::munmap(ptr.cast(), len) };
    debug_assert_eq!(rc, 0, "munmap failed: {}", io::Error::last_os_error());
}

/// Asks the kernel to back `ptr..ptr + len` with transparent hugepages.
pub(crate) fn madvise_hugepage(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: MADV_HUGEPAGE only sets a flag on the VMA; it never changes the contents, and on an
    // unmapped range it fails with ENOMEM instead of touching memory.
    match unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_HUGEPAGE) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// The base page size, normally 4 KiB.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}
