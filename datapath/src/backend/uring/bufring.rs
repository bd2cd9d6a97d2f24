//! Memory the kernel reads and writes: an anonymous mapping that unmaps on drop (`Mmap`) and the
//! provided-buffer ring over two of them (`BufRing`: descriptors + buffers, the tail published with a
//! release store).

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;

/// An anonymous private read/write mapping, page-aligned, unmapped on drop.
pub(super) struct Mmap {
    pub(super) ptr: NonNull<u8>,
    pub(super) len: usize,
}

impl Mmap {
    /// Map `len` zeroed bytes (`len` > 0).
    pub(super) fn new(len: usize, what: &str) -> io::Result<Mmap> {
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no existing
        // memory; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("mmap {len} bytes for {what}: {e}")));
        }
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other(format!("mmap for {what} returned null")))?;
        Ok(Mmap { ptr, len })
    }

    /// Base address.
    pub(super) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Give the mapping up without unmapping it (used when the kernel might still write to it).
    pub(super) fn leak(&mut self) {
        self.len = 0;
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: `ptr`/`len` are exactly what mmap returned, and the owner guarantees the kernel no
            // longer uses the memory (see `UringSocket::drop`). An error here would only leak the range.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

/// One entry of a provided-buffer ring: the kernel's `struct io_uring_buf`. Entry 0's `resv` is the tail.
#[repr(C)]
pub(super) struct BufDesc {
    pub(super) addr: u64,
    pub(super) len: u32,
    pub(super) bid: u16,
    pub(super) resv: u16,
}

const _: () = assert!(std::mem::size_of::<BufDesc>() == 16);
/// Byte offset of the ring tail (`io_uring_buf_ring.tail` overlays entry 0's `resv`).
const BUF_RING_TAIL_OFFSET: usize = std::mem::offset_of!(BufDesc, resv);

/// The kernel's provided-buffer ring (`IORING_REGISTER_PBUF_RING`) and the receive buffers it hands out.
/// Each buffer is always either in the ring (the kernel's) or being handed to the callback (ours).
pub(super) struct BufRing {
    /// The ring of [`BufDesc`]; page aligned, as the kernel requires.
    pub(super) ring: Mmap,
    /// `count * size` bytes of buffers.
    pub(super) mem: Mmap,
    pub(super) count: u16,
    pub(super) size: usize,
    /// Our copy of the tail; the kernel's copy is published with a release store.
    pub(super) tail: u16,
}

impl BufRing {
    /// Map the ring and buffers and put every buffer in the ring.
    pub(super) fn new(count: u16, size: usize) -> io::Result<BufRing> {
        let ring = Mmap::new(usize::from(count) * std::mem::size_of::<BufDesc>(), "buffer ring")?;
        let mem_len = usize::from(count)
            .checked_mul(size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "receive buffers too large"))?;
        let mem = Mmap::new(mem_len, "receive buffers")?;
        let mut bufs = BufRing { ring, mem, count, size, tail: 0 };
        for bid in 0..count {
            bufs.push(bid);
        }
        Ok(bufs)
    }

    /// Register the ring with `ring` as buffer group `bgid`.
    pub(super) fn register(&self, ring: &IoUring, bgid: u16) -> io::Result<()> {
        // SAFETY: the ring mapping is page aligned, holds `count` entries and outlives the registration:
        // `UringSocket` drops the io_uring (ending the registration) before this mapping.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(self.ring.as_ptr() as u64, self.count, bgid, 0)
        }
    }

    /// The whole buffer `bid`.
    pub(super) fn buf_mut(&mut self, bid: u16) -> &mut [u8] {
        assert!(bid < self.count, "buffer id {bid} out of range");
        // SAFETY: `bid < count`, so the range lies inside `mem`; the kernel handed this buffer to us in a
        // completion and gets it back only through `push`, so nothing else accesses it meanwhile.
        unsafe {
            std::slice::from_raw_parts_mut(self.mem.as_ptr().add(usize::from(bid) * self.size), self.size)
        }
    }

    /// Give buffer `bid` back to the kernel: write its descriptor at the tail, then publish the tail.
    pub(super) fn push(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        let idx = usize::from(self.tail & (self.count - 1));
        // SAFETY: `idx < count`, so the entry is inside the ring mapping. The kernel reads only entries
        // between its head and the published tail, and this one is past the tail until the store below.
        // Fields are written one by one so entry 0's `resv` (the live tail) is never overwritten.
        unsafe {
            let desc = self.ring.as_ptr().cast::<BufDesc>().add(idx);
            std::ptr::addr_of_mut!((*desc).addr)
                .write(self.mem.as_ptr().add(usize::from(bid) * self.size) as u64);
            std::ptr::addr_of_mut!((*desc).len).write(self.size as u32);
            std::ptr::addr_of_mut!((*desc).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is a naturally aligned u16 inside the ring mapping, which lives as long as
        // `self`; the kernel reads it with an acquire load, so it is only ever accessed atomically.
        let tail = unsafe { AtomicU16::from_ptr(self.ring.as_ptr().add(BUF_RING_TAIL_OFFSET).cast()) };
        tail.store(self.tail, Ordering::Release);
    }
}
